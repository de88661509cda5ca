//! The rules file: its TOML model, and its parsing and validation into a [`RulesSpec`].
//! Pure: it reads the file and checks that plugin files exist, nothing more.
//!
//! Every validation problem is reported, not just the first, each naming the table and field
//! it is about. Plugin paths are resolved against the directory of the file they are written
//! in (the rules file, or the config file for inline rules).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::acl::{Acl, RawGrant};
use crate::broker::MIN_MSG_TIMEOUT;
use crate::config::parse_duration;
use crate::message::{ChannelName, OrderBy, TopicName};
use crate::plugin::PluginKind;

/// Where a rule set is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesSource {
    /// A rules file: `[[topic]]` and `[[channel]]` tables at its top level.
    File(PathBuf),
    /// A config file whose `[rules]` table holds them: `[[rules.topic]]`, `[[rules.channel]]`.
    Inline(PathBuf),
}

impl RulesSource {
    /// The file to read (and watch).
    pub fn path(&self) -> &Path {
        match self {
            RulesSource::File(path) | RulesSource::Inline(path) => path,
        }
    }

    /// Reads and validates the rules.
    pub fn read(&self) -> Result<RulesSpec, RulesError> {
        let path = self.path();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw = match self {
            RulesSource::File(_) => toml::from_str::<RawRules>(&text),
            RulesSource::Inline(_) => toml::from_str::<Section>(&text).map(|s| s.rules),
        }
        .map_err(|source| RulesError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        raw.validate(base).map_err(|problems| RulesError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }
}

/// Why a rule set could not be read or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse rules file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("rules file {} is invalid: {}", path.display(), problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("rules could not be loaded: {}", problems.join("; "))]
    Load { problems: Vec<String> },
    #[error("rules could not be applied: {0}")]
    Apply(String),
}

impl RulesError {
    /// Each problem on its own, for `quiver rules check`.
    pub fn problems(&self) -> Vec<String> {
        match self {
            RulesError::Invalid { problems, .. } | RulesError::Load { problems } => {
                problems.clone()
            }
            other => vec![other.to_string()],
        }
    }
}

/// A validated rule set, before any plugin is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesSpec {
    pub topics: Vec<TopicSpec>,
    pub channels: Vec<ChannelSpec>,
    /// The grants (`[[grant]]`, `[groups]`).
    pub acl: Acl,
}

/// A `[[topic]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: TopicName,
    pub unrouted: Unrouted,
    pub router: Option<PluginSpec>,
    /// The publish dedup window; None: the broker's `dedup_window`; zero: off.
    pub dedup_window: Option<Duration>,
}

/// A `[[channel]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSpec {
    pub topic: TopicName,
    pub name: ChannelName,
    pub max_attempts: Option<u16>,
    pub msg_timeout: Option<Duration>,
    /// `ordering` with `order_key_header`; None leaves the channel's ordering as it is.
    pub ordering: Option<OrderBy>,
    /// None: `<topic>.dead`.
    pub dead_letter_topic: Option<TopicName>,
    /// Filters and samplers, applied in order.
    pub plugins: Vec<PluginSpec>,
}

/// One plugin bound with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    pub kind: PluginKind,
    /// Resolved against the directory of the file it was written in.
    pub path: PathBuf,
    /// Flattened to dotted keys, in the order written.
    pub params: Vec<(String, String)>,
    pub on_failure: OnFailure,
}

impl RulesSpec {
    /// Every plugin file the rules name, each once.
    pub fn plugin_files(&self) -> Vec<PathBuf> {
        let routers = self.topics.iter().filter_map(|t| t.router.as_ref());
        let gates = self.channels.iter().flat_map(|c| &c.plugins);
        let mut seen = HashSet::new();
        routers
            .chain(gates)
            .filter(|p| seen.insert(p.path.clone()))
            .map(|p| p.path.clone())
            .collect()
    }
}

/// What happens to a message when its plugin faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Fail open: a router's message goes to every channel; a filter's answer counts as keep.
    #[default]
    Deliver,
    /// A router's message is dropped; a channel skips it.
    Skip,
    /// The message goes to the dead-letter topic.
    DeadLetter,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Deliver => "deliver",
            OnFailure::Skip => "skip",
            OnFailure::DeadLetter => "dead-letter",
        }
    }
}

/// What happens to a message its router sends nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unrouted {
    Drop,
    /// The default: nothing is lost.
    #[default]
    DeadLetter,
    /// The publish is refused.
    Reject,
}

/// The file as written. Every table refuses unknown fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRules {
    #[serde(default)]
    topic: Vec<RawTopic>,
    #[serde(default)]
    channel: Vec<RawChannel>,
    /// Who may publish, subscribe and administer what.
    #[serde(default)]
    grant: Vec<RawGrant>,
    /// Group name → member identities, for grants to `group:NAME`.
    #[serde(default)]
    groups: HashMap<String, Vec<String>>,
}

/// A config file, of which only `[rules]` is read here.
#[derive(Debug, Deserialize)]
struct Section {
    #[serde(default)]
    rules: RawRules,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: String,
    #[serde(default)]
    unrouted: Unrouted,
    router: Option<RawRouter>,
    dedup_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    plugin: PathBuf,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    on_failure: OnFailure,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    topic: String,
    name: String,
    max_attempts: Option<u16>,
    msg_timeout: Option<String>,
    ordering: Option<String>,
    order_key_header: Option<String>,
    dead_letter_topic: Option<String>,
    #[serde(default)]
    plugins: Vec<RawGatePlugin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatePlugin {
    kind: String,
    plugin: PathBuf,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    on_failure: OnFailure,
}

/// Collects problems while validating, each prefixed with where it is.
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, at: &str, why: impl std::fmt::Display) {
        self.0.push(format!("{at}: {why}"));
    }
}

impl RawRules {
    /// Validates every table, resolving plugin paths against `base`.
    fn validate(self, base: &Path) -> Result<RulesSpec, Vec<String>> {
        let mut problems = Problems(Vec::new());
        let mut spec = RulesSpec::default();
        let mut topics_seen = HashSet::new();
        for (i, raw) in self.topic.into_iter().enumerate() {
            let at = format!("topic[{i}] {:?}", raw.name);
            let Ok(name) = TopicName::new(&raw.name).map_err(|e| problems.add(&at, e)) else {
                continue;
            };
            if !topics_seen.insert(name.clone()) {
                problems.add(&at, "this topic is listed more than once");
            }
            let router = raw.router.and_then(|r| {
                let at = format!("{at} router");
                plugin_spec(PluginKind::Router, r.plugin, r.params, r.on_failure).resolve(
                    base,
                    &at,
                    &mut problems,
                )
            });
            let dedup_window = raw.dedup_window.and_then(|text| {
                parse_duration(&text)
                    .map_err(|e| problems.add(&format!("{at} dedup_window"), e))
                    .ok()
            });
            spec.topics.push(TopicSpec {
                name,
                unrouted: raw.unrouted,
                router,
                dedup_window,
            });
        }
        let mut channels_seen = HashSet::new();
        for (i, raw) in self.channel.into_iter().enumerate() {
            let at = format!("channel[{i}] {:?}/{:?}", raw.topic, raw.name);
            if !channels_seen.insert((raw.topic.clone(), raw.name.clone())) {
                problems.add(&at, "this channel is listed more than once");
            }
            spec.channels.extend(raw.validate(base, &at, &mut problems));
        }
        match Acl::new(&self.grant, &self.groups) {
            Ok(acl) => spec.acl = acl,
            Err(list) => problems.0.extend(list),
        }
        if problems.0.is_empty() {
            Ok(spec)
        } else {
            Err(problems.0)
        }
    }
}

impl RawChannel {
    fn validate(self, base: &Path, at: &str, problems: &mut Problems) -> Option<ChannelSpec> {
        let topic = TopicName::new(&self.topic).map_err(|e| problems.add(at, e));
        let name = ChannelName::new(&self.name).map_err(|e| problems.add(at, e));
        let msg_timeout = self.msg_timeout.map(|text| {
            parse_duration(&text)
                .and_then(|d| {
                    (d >= MIN_MSG_TIMEOUT)
                        .then_some(d)
                        .ok_or_else(|| format!("must be at least {MIN_MSG_TIMEOUT:?}"))
                })
                .map_err(|why| problems.add(&format!("{at} msg_timeout"), why))
        });
        let ordering =
            OrderBy::parse_setting(self.ordering.as_deref(), self.order_key_header.as_deref())
                .map_err(|why| problems.add(&format!("{at} ordering"), why));
        let dead_letter_topic = self.dead_letter_topic.map(|text| {
            TopicName::new(&text).map_err(|e| problems.add(&format!("{at} dead_letter_topic"), e))
        });
        let mut plugins = Vec::new();
        for (i, raw) in self.plugins.into_iter().enumerate() {
            let at = format!("{at} plugins[{i}]");
            let kind = match raw.kind.parse::<PluginKind>() {
                Ok(PluginKind::Router) => {
                    problems.add(
                        &format!("{at} kind"),
                        "a router binds to a topic ([topic.router]), not to a channel",
                    );
                    continue;
                }
                Ok(kind) => kind,
                Err(e) => {
                    problems.add(&format!("{at} kind"), e);
                    continue;
                }
            };
            let plugin = plugin_spec(kind, raw.plugin, raw.params, raw.on_failure);
            plugins.extend(plugin.resolve(base, &at, problems));
        }
        Some(ChannelSpec {
            topic: topic.ok()?,
            name: name.ok()?,
            max_attempts: self.max_attempts,
            msg_timeout: msg_timeout.transpose().ok()?,
            ordering: ordering.ok()?,
            dead_letter_topic: dead_letter_topic.transpose().ok()?,
            plugins,
        })
    }
}

/// A plugin's fields before its path and params are checked.
struct RawPluginSpec {
    kind: PluginKind,
    path: PathBuf,
    params: toml::Table,
    on_failure: OnFailure,
}

fn plugin_spec(
    kind: PluginKind,
    path: PathBuf,
    params: toml::Table,
    on_failure: OnFailure,
) -> RawPluginSpec {
    RawPluginSpec {
        kind,
        path,
        params,
        on_failure,
    }
}

impl RawPluginSpec {
    fn resolve(self, base: &Path, at: &str, problems: &mut Problems) -> Option<PluginSpec> {
        let path = base.join(&self.path);
        let mut ok = true;
        if !path.is_file() {
            problems.add(
                &format!("{at} plugin"),
                format_args!("plugin file {} does not exist", path.display()),
            );
            ok = false;
        }
        let mut params = Vec::new();
        if let Err(why) = flatten("", &self.params, &mut params) {
            problems.add(&format!("{at} params"), why);
            ok = false;
        }
        ok.then_some(PluginSpec {
            kind: self.kind,
            path,
            params,
            on_failure: self.on_failure,
        })
    }
}

/// Flattens nested tables to dotted keys (`route.eu`), in the order written. Strings stay
/// as they are; numbers, booleans and dates become their TOML text. Arrays are refused.
pub(crate) fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let text = match value {
            toml::Value::Table(inner) => {
                flatten(&key, inner, out)?;
                continue;
            }
            toml::Value::Array(_) => {
                return Err(format!(
                    "{key}: arrays are not supported; use one key per value"
                ))
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
        };
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("{key} is given more than once"));
        }
        out.push((key, text));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "file_tests.rs"]
mod tests;
