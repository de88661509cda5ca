//! Rules: which plugins serve which topics and channels, with which parameters and policies,
//! read from a rules file (or the `[rules]` table of the config file), loaded into the
//! broker's [`Hooks`](crate::broker::Hooks), and reloaded while the broker runs.
//!
//! - [`file`](mod@file): the TOML model, parsed and validated into a [`RulesSpec`] (pure).
//! - [`set`]: a [`RuleSet`] of bound plugins behind the hook traits, and the swappable
//!   [`Rules`] handle the broker holds.
//! - [`reload`]: the [`Reloader`]: file watching, SIGHUP, `POST /rules/reload`, status.
//!
//! This module names no wasmtime type: it uses [`crate::plugin`]'s.

pub mod file;
pub mod reload;
pub mod set;

use std::path::Path;

pub use file::{OnFailure, RulesError, RulesSource, RulesSpec, Unrouted};
pub use reload::{ClearedFailure, ReloadFailure, Reloader, RulesStatus};
pub use set::{BindingStatus, NoGrants, RuleSet, Rules};

use crate::plugin::{PluginHost, PluginLimits};

/// What `quiver rules check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One line per binding that loaded and accepted its parameters.
    pub bindings: Vec<String>,
    /// Every problem found; empty when the rules are good.
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads the rules file at `path`, loads every plugin it names and runs each binding's
/// `init` with its params, with no broker and no compile cache. Blocking.
pub fn check(path: &Path, limits: PluginLimits) -> Report {
    let mut report = Report::default();
    let spec = match RulesSource::File(path.to_owned()).read() {
        Ok(spec) => spec,
        Err(e) => {
            report.problems = e.problems();
            return report;
        }
    };
    let host = match PluginHost::new(limits, None) {
        Ok(host) => host,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    match RuleSet::build(&host, spec, None) {
        Ok((set, _)) => {
            report.bindings = set.bindings().map(describe).collect();
        }
        Err(e) => report.problems = e.problems(),
    }
    report
}

/// One line for a binding: where, what, and its policy.
fn describe(bound: &set::Bound) -> String {
    let place = match &bound.channel {
        Some(channel) => format!("{}/{channel}", bound.topic),
        None => bound.topic.to_string(),
    };
    let plugin = bound.binding.plugin();
    let hash = plugin.hash().get(..12).unwrap_or(plugin.hash());
    let params: Vec<String> = bound
        .spec
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!(
        "ok  {place}  {} {} ({hash})  on_failure={}  params: {}",
        plugin.kind(),
        plugin.name(),
        bound.spec.on_failure.as_str(),
        if params.is_empty() {
            "-".to_owned()
        } else {
            params.join(" ")
        }
    )
}
