//! Typed configuration: defaults that run a development broker with no flags, a TOML file,
//! command-line overrides, and one `validate()` that names the bad field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::broker::{BrokerConfig, MIN_MSG_TIMEOUT};
use crate::cluster::settings::ClusterSettings;
use crate::rules::RulesSource;
use crate::storage::StorageConfig;

mod nsq;
mod plugins;
mod units;

pub use nsq::NsqConfig;
pub use plugins::PluginsConfig;
pub use units::{
    byte_size, duration, format_duration, off_or_addr, opt_duration, parse_byte_size,
    parse_duration, parse_off_or_addr,
};

/// Everything `quiver serve` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the dev certificate and (later) the logs live.
    pub data_dir: PathBuf,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub broker: BrokerConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    /// The NSQ compatibility listeners (`[nsq]`).
    pub nsq: NsqConfig,
    /// Limits for every plugin instance and where compiles are cached. Fixed at start.
    pub plugins: PluginsConfig,
    /// How callers authenticate (`[auth]`). What they may do is granted in the rules file.
    pub auth: AuthConfig,
    /// A rules file (see `rules::file`). Relative to the working directory.
    pub rules_file: Option<PathBuf>,
    /// Rules inline, with the rules file's tables under `[rules]`: `[[rules.topic]]`,
    /// `[[rules.channel]]`. Parsed (and reloaded) from the config file by `rules`; kept
    /// here only so that the config file may hold them.
    pub rules: Option<InlineRules>,
    /// The node's place in a cluster (`[cluster]`). None: a single node, as before clustering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSettings>,
    /// The file this config was read from, if any; set by [`Config::from_file`].
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("quiver-data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            broker: BrokerConfig::default(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            nsq: NsqConfig::default(),
            plugins: PluginsConfig::default(),
            auth: AuthConfig::default(),
            rules_file: None,
            rules: None,
            cluster: None,
            file: None,
        }
    }
}

/// The `[rules]` table of a config file, unparsed: the `rules` module reads it from the
/// file itself, on start and on every reload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InlineRules(pub toml::Table);

// Compared only to tell configs apart; a NaN parameter would make a config unequal to itself,
// which nothing relies on.
impl Eq for InlineRules {}

/// Listening addresses. Loopback by default: exposing a broker is a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// QUIC (UDP).
    pub quic: SocketAddr,
    /// HTTP admin API (TCP).
    pub http: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            quic: SocketAddr::from(([127, 0, 0, 1], 7400)),
            http: SocketAddr::from(([127, 0, 0, 1], 7401)),
        }
    }
}

/// The broker's certificate. With neither `cert` nor `key`, a self-signed development
/// certificate is made in `<data_dir>/tls` on first start and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Resource limits, tuned for one broker on a small machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Concurrent QUIC connections; more are refused.
    pub max_connections: usize,
    /// How long graceful shutdown waits for sessions before closing them.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// A configuration that can't be used, and which field says so.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config field `{field}`: {why}")]
    Invalid { field: String, why: String },
    #[error(
        "refusing to serve {listener} on {addr} without authentication: anyone who can reach \
         it could publish, consume and delete topics. Configure authentication ([[auth.token]] \
         entries made with `quiver auth token NAME`, [auth] auth_http_address, or \
         tls.client_ca) with [[grant]] tables in the rules file, listen on a loopback address, \
         or set [auth] allow_anonymous = true (--allow-anonymous) to accept the risk"
    )]
    Insecure {
        listener: &'static str,
        addr: SocketAddr,
    },
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults. Relative paths in `[cluster]`
    /// are made relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if let Some(cluster) = &mut config.cluster {
            cluster.resolve_paths(path.parent().unwrap_or(Path::new("")));
        }
        config.file = Some(path.to_owned());
        Ok(config)
    }

    /// Where the rules come from: `rules_file`, or the `[rules]` table of the config file.
    /// None when there are no rules (and so no hooks).
    pub fn rules_source(&self) -> Option<RulesSource> {
        if let Some(path) = &self.rules_file {
            return Some(RulesSource::File(path.clone()));
        }
        match (&self.rules, &self.file) {
            (Some(_), Some(file)) => Some(RulesSource::Inline(file.clone())),
            _ => None,
        }
    }

    /// Whether callers authenticate: tokens, an auth server, or client certificates.
    pub fn authenticates(&self) -> bool {
        self.auth.is_configured(self.tls.client_ca.is_some())
    }

    /// The listeners bound to a non-loopback address while no authentication is
    /// configured: anyone on the network could use them.
    pub fn exposed_without_auth(&self) -> Vec<(&'static str, SocketAddr)> {
        if self.authenticates() {
            return Vec::new();
        }
        let listeners = [
            ("the QUIC listener", Some(self.listen.quic)),
            ("the HTTP API", Some(self.listen.http)),
            ("the NSQ TCP listener", self.nsq.tcp),
            ("the nsqd HTTP API", self.nsq.http),
        ];
        listeners
            .into_iter()
            .filter_map(|(name, addr)| addr.filter(|a| !a.ip().is_loopback()).map(|a| (name, a)))
            .collect()
    }

    /// Checks every field once; the broker trusts the config after this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, why: String| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                why,
            })
        };
        let b = &self.broker;
        if b.max_msg_timeout < MIN_MSG_TIMEOUT {
            return invalid(
                "broker.max_msg_timeout",
                format!("must be at least {MIN_MSG_TIMEOUT:?}"),
            );
        }
        if b.msg_timeout < MIN_MSG_TIMEOUT || b.msg_timeout > b.max_msg_timeout {
            return invalid(
                "broker.msg_timeout",
                format!(
                    "must be between {MIN_MSG_TIMEOUT:?} and broker.max_msg_timeout ({:?})",
                    b.max_msg_timeout
                ),
            );
        }
        if b.max_rdy == 0 {
            return invalid("broker.max_rdy", "must be at least 1".into());
        }
        if b.dedup_max_ids == 0 {
            return invalid(
                "broker.dedup_max_ids",
                "must be at least 1 (set broker.dedup_window = \"0\" to turn dedup off)".into(),
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid(
                "tls.cert",
                "tls.cert and tls.key must be set together".into(),
            );
        }
        if self.limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".into());
        }
        if self.rules_file.is_some() && self.rules.is_some() {
            return invalid(
                "rules_file",
                "give rules either in a rules_file or inline under [rules], not both".into(),
            );
        }
        if self.rules.is_some() && self.file.is_none() {
            return invalid(
                "rules",
                "inline rules are read from the config file; load the config with from_file".into(),
            );
        }
        self.plugins
            .validate()
            .map_err(|(field, why)| ConfigError::Invalid { field, why })?;
        self.auth
            .validate()
            .map_err(|(field, why)| ConfigError::Invalid { field, why })?;
        if let Some((listener, addr)) = self.exposed_without_auth().first() {
            if !self.auth.allow_anonymous {
                return Err(ConfigError::Insecure {
                    listener,
                    addr: *addr,
                });
            }
        }
        self.nsq
            .validate(&self.broker)
            .map_err(|(field, why)| ConfigError::Invalid { field, why })?;
        self.validate_cluster()?;
        self.storage
            .validate()
            .map_err(|(field, why)| ConfigError::Invalid { field, why })
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        cluster
            .validate()
            .map_err(|(field, why)| ConfigError::Invalid {
                field: format!("cluster.{field}"),
                why,
            })?;
        if cluster.listen == self.listen.quic && cluster.listen.port() != 0 {
            return Err(ConfigError::Invalid {
                field: "cluster.listen".into(),
                why: format!(
                    "{} is also listen.quic; peers and clients need separate UDP ports",
                    cluster.listen
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let config = Config::default();
        config.validate().unwrap();
        assert!(config.listen.quic.ip().is_loopback());
        assert_eq!(config.listen.quic.port(), 7400);
        assert_eq!(config.listen.http.port(), 7401);
    }

    #[test]
    fn durations_parse_and_format() {
        for text in ["10ms", "90s", "15m", "1h", "0"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("x1s").is_err());
    }

    #[test]
    fn toml_overrides_take_defaults_for_the_rest() {
        let config: Config = toml::from_str(
            "data_dir = \"/tmp/q\"\n[broker]\nmsg_timeout = \"30s\"\nmax_attempts = 5\n",
        )
        .unwrap();
        assert_eq!(config.broker.msg_timeout, Duration::from_secs(30));
        assert_eq!(config.broker.max_attempts, 5);
        assert_eq!(config.broker.max_rdy, 2500);
        assert_eq!(config.listen, ListenConfig::default());
    }

    #[test]
    fn plugin_limits_read_sizes_and_durations() {
        let config: Config = toml::from_str(
            "[plugins]\ncall_timeout = \"20ms\"\nmemory = \"32MiB\"\ninit_timeout = \"2s\"\n",
        )
        .unwrap();
        let limits = config.plugins.limits();
        assert_eq!(limits.call_timeout, Duration::from_millis(20));
        assert_eq!(limits.memory_bytes, 32 << 20);
        assert_eq!(limits.init_timeout, Duration::from_secs(2));
        assert_eq!(limits.wall_timeout, None);
        assert_eq!(limits.call_wall_timeout(), Duration::from_millis(200));
        let config: Config = toml::from_str("[plugins]\nmemory = 2097152\n").unwrap();
        assert_eq!(config.plugins.memory, 2 << 20);
        assert!(toml::from_str::<Config>("[plugins]\nmemory = \"2MB\"\n").is_err());
        let mut config = Config::default();
        config.plugins.memory = 1000;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("plugins.memory"), "{err}");
        assert_eq!(
            Config::default().plugins.cache_dir(Path::new("d")),
            Path::new("d/plugin-cache")
        );
    }

    #[test]
    fn plugin_wall_timeout_is_a_backstop_at_least_the_cpu_budget() {
        let config: Config =
            toml::from_str("[plugins]\ncall_timeout = \"5ms\"\nwall_timeout = \"1s\"\n").unwrap();
        config.validate().unwrap();
        let limits = config.plugins.limits();
        assert_eq!(limits.wall_timeout, Some(Duration::from_secs(1)));
        assert_eq!(limits.call_wall_timeout(), Duration::from_secs(1));
        let config: Config =
            toml::from_str("[plugins]\ncall_timeout = \"50ms\"\nwall_timeout = \"10ms\"\n")
                .unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("plugins.wall_timeout"), "{err}");
        let text = serde_json::to_string(&Config::default().plugins).unwrap();
        assert!(!text.contains("wall_timeout"), "unset, so derived: {text}");
    }

    #[test]
    fn rules_come_from_a_file_or_inline_not_both() {
        let config: Config = toml::from_str("rules_file = \"r.toml\"\n").unwrap();
        assert_eq!(
            config.rules_source(),
            Some(RulesSource::File("r.toml".into()))
        );
        let mut config: Config =
            toml::from_str("rules_file = \"r.toml\"\n[[rules.topic]]\nname = \"t\"\n").unwrap();
        config.file = Some("q.toml".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("rules_file"), "{err}");
        config.rules_file = None;
        config.validate().unwrap();
        assert_eq!(
            config.rules_source(),
            Some(RulesSource::Inline("q.toml".into()))
        );
        assert_eq!(Config::default().rules_source(), None);
    }

    #[test]
    fn nsq_options_take_nsqd_defaults_and_stay_within_the_broker() {
        let config: Config = toml::from_str(
            "[nsq]\ntcp = \"off\"\nmax_msg_size = \"512KiB\"\nheartbeat_interval = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(config.nsq.tcp, None);
        assert_eq!(config.nsq.max_msg_size, 512 << 10);
        assert_eq!(config.nsq.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(config.nsq.max_rdy_count, 2500);
        config.validate().unwrap();
        let mut config = Config::default();
        config.nsq.max_rdy_count = 2501;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("nsq.max_rdy_count"), "{err}");
        let mut config = Config::default();
        config.nsq.heartbeat_interval = Duration::from_secs(61);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("nsq.heartbeat_interval"), "{err}");
        let mut config = Config::default();
        config.nsq.max_msg_size = 2 << 20;
        assert!(config.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(toml::from_str::<Config>("[broker]\nmsg_timout = \"30s\"\n").is_err());
    }

    #[test]
    fn dedup_settings_parse_and_are_checked() {
        let config: Config =
            toml::from_str("[broker]\ndedup_window = \"5s\"\ndedup_max_ids = 10\n").unwrap();
        assert_eq!(config.broker.dedup_window, Duration::from_secs(5));
        assert_eq!(config.broker.dedup_max_ids, 10);
        let off: Config = toml::from_str("[broker]\ndedup_window = \"0\"\n").unwrap();
        assert!(off.broker.dedup_window.is_zero());
        assert_eq!(
            Config::default().broker.dedup_window,
            Duration::from_secs(120)
        );
        let mut config = Config::default();
        config.broker.dedup_max_ids = 0;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("broker.dedup_max_ids"), "{err}");
    }

    #[test]
    fn a_cluster_section_is_optional_and_checked_with_its_prefix() {
        assert_eq!(Config::default().cluster, None);
        let text = "[cluster]\nnode_id = 1\ncluster_id = \"c1\"\nca = \"ca.pem\"\n\
                    cert = \"n1.pem\"\nkey = \"n1.key\"\nmembers = [\"1@127.0.0.1:7500\"]\n";
        let config: Config = toml::from_str(text).unwrap();
        config.validate().unwrap();
        let mut bad = config.clone();
        if let Some(cluster) = &mut bad.cluster {
            cluster.members[0].id = 2;
        }
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("cluster.members"), "{err}");
        let mut clash = config;
        if let Some(cluster) = &mut clash.cluster {
            cluster.listen = clash.listen.quic;
            cluster.members[0].addr = clash.listen.quic.to_string();
        }
        let err = clash.validate().unwrap_err().to_string();
        assert!(err.contains("cluster.listen"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::from_file(&path).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.ca, dir.path().join("ca.pem"));
        assert_eq!(cluster.key, dir.path().join("n1.key"));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let mut config = Config::default();
        config.broker.msg_timeout = Duration::from_millis(10);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("broker.msg_timeout"), "{err}");
        let mut config = Config::default();
        config.tls.cert = Some("c.pem".into());
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("tls.cert"));
    }
}
