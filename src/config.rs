//! Typed configuration: defaults that run a development broker with no flags, a TOML file,
//! command-line overrides, and one `validate()` that names the bad field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::broker::{BrokerConfig, MIN_MSG_TIMEOUT};
use crate::message::MAX_BODY_LEN;
use crate::plugin::PluginLimits;
use crate::rules::RulesSource;
use crate::storage::StorageConfig;

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

/// Bounds on every plugin instance, and the compile cache. The defaults suit a per-message
/// filter on the hot path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Most CPU time one decision may use (the calling thread's, so a busy machine does not
    /// time a plugin out).
    #[serde(with = "duration")]
    pub call_timeout: Duration,
    /// Longest one decision may take in wall-clock time, however little CPU the machine gave
    /// it: the backstop that keeps a starved call from holding a message. Default 10 ×
    /// `call_timeout`.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub wall_timeout: Option<Duration>,
    /// Most linear memory one instance may have: bytes, or a string like `"16MiB"`.
    #[serde(with = "byte_size")]
    pub memory: u64,
    /// Longest instantiation plus `init` may run.
    #[serde(with = "duration")]
    pub init_timeout: Duration,
    /// Where compiled plugins are cached. Default `<data_dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        let limits = PluginLimits::default();
        PluginsConfig {
            call_timeout: limits.call_timeout,
            wall_timeout: limits.wall_timeout,
            memory: limits.memory_bytes,
            init_timeout: limits.init_timeout,
            cache_dir: None,
        }
    }
}

impl PluginsConfig {
    pub fn limits(&self) -> PluginLimits {
        PluginLimits {
            call_timeout: self.call_timeout,
            wall_timeout: self.wall_timeout,
            memory_bytes: self.memory,
            init_timeout: self.init_timeout,
        }
    }

    /// The compile cache directory: `cache_dir`, or `<data_dir>/plugin-cache`.
    pub fn cache_dir(&self, data_dir: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("plugin-cache"))
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, why: &str| Err((format!("plugins.{field}"), why.to_owned()));
        if self.call_timeout.is_zero() {
            return invalid("call_timeout", "must be more than 0");
        }
        if self
            .wall_timeout
            .is_some_and(|wall| wall < self.call_timeout)
        {
            return invalid("wall_timeout", "must be at least plugins.call_timeout");
        }
        if self.init_timeout.is_zero() {
            return invalid("init_timeout", "must be more than 0");
        }
        if self.memory < MIN_PLUGIN_MEMORY {
            return invalid("memory", "must be at least 1MiB");
        }
        Ok(())
    }
}

/// The smallest memory cap accepted: a Rust guest needs more than this to start.
const MIN_PLUGIN_MEMORY: u64 = 1 << 20;

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

/// The NSQ compatibility listeners: NSQ TCP protocol V2 and the nsqd HTTP API, on nsqd's
/// default ports on loopback. Either may be `"off"`. The other fields are nsqd's options of
/// the same names, with nsqd's defaults; those the broker also limits (RDY, timeouts) may
/// only be stricter than `[broker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NsqConfig {
    /// NSQ TCP protocol V2 (`nsqd --tcp-address`).
    #[serde(with = "off_or_addr")]
    pub tcp: Option<SocketAddr>,
    /// The nsqd HTTP API (`nsqd --http-address`).
    #[serde(with = "off_or_addr")]
    pub http: Option<SocketAddr>,
    /// Highest RDY a consumer may send; more is a fatal `E_INVALID`. At most `broker.max_rdy`.
    pub max_rdy_count: u32,
    /// Largest message body (PUB, DPUB, each MPUB message). At most 1MiB.
    #[serde(with = "byte_size")]
    pub max_msg_size: u64,
    /// Largest command body (MPUB, IDENTIFY, AUTH).
    #[serde(with = "byte_size")]
    pub max_body_size: u64,
    /// Longest message timeout a client may IDENTIFY with. At most `broker.max_msg_timeout`.
    #[serde(with = "duration")]
    pub max_msg_timeout: Duration,
    /// Longest REQ delay (longer ones are clamped) and DPUB delay (refused). At most
    /// `broker.max_req_delay` and `broker.max_defer`.
    #[serde(with = "duration")]
    pub max_req_timeout: Duration,
    /// Heartbeat interval of clients that ask for none. A client that sends nothing for two
    /// intervals is disconnected.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// Longest heartbeat interval a client may ask for.
    #[serde(with = "duration")]
    pub max_heartbeat_interval: Duration,
    /// Output buffer of clients that ask for none: frames are written once this much is
    /// waiting, or when nothing more is ready.
    #[serde(with = "byte_size")]
    pub output_buffer_size: u64,
    /// Largest output buffer a client may ask for.
    #[serde(with = "byte_size")]
    pub max_output_buffer_size: u64,
    /// Output buffer timeout reported to clients that ask for none. Frames never wait longer:
    /// they are written as soon as nothing more is ready.
    #[serde(with = "duration")]
    pub output_buffer_timeout: Duration,
    /// Range of output buffer timeouts a client may ask for.
    #[serde(with = "duration")]
    pub min_output_buffer_timeout: Duration,
    #[serde(with = "duration")]
    pub max_output_buffer_timeout: Duration,
    /// Grant `snappy` compression when asked.
    pub snappy: bool,
    /// Grant `deflate` compression when asked.
    pub deflate: bool,
    /// Highest deflate level a client gets (1 to 9).
    pub max_deflate_level: u32,
    /// Grant the `tls_v1` upgrade (with the broker's certificate, and client certificates
    /// checked against `tls.client_ca` when that is set).
    pub tls: bool,
    /// Refuse every command but IDENTIFY until the connection has upgraded to TLS
    /// (`nsqd --tls-required`).
    pub tls_required: bool,
}

impl Default for NsqConfig {
    fn default() -> Self {
        NsqConfig {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], 4150))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 4151))),
            max_rdy_count: 2500,
            max_msg_size: 1 << 20,
            max_body_size: 5 << 20,
            max_msg_timeout: Duration::from_secs(15 * 60),
            max_req_timeout: Duration::from_secs(3600),
            heartbeat_interval: Duration::from_secs(30),
            max_heartbeat_interval: Duration::from_secs(60),
            output_buffer_size: 16 << 10,
            max_output_buffer_size: 64 << 10,
            output_buffer_timeout: Duration::from_millis(250),
            min_output_buffer_timeout: Duration::from_millis(25),
            max_output_buffer_timeout: Duration::from_secs(30),
            snappy: true,
            deflate: true,
            max_deflate_level: 6,
            tls: true,
            tls_required: false,
        }
    }
}

impl NsqConfig {
    fn validate(&self, broker: &BrokerConfig) -> Result<(), (String, String)> {
        let invalid = |field: &str, why: String| Err((format!("nsq.{field}"), why));
        if self.max_rdy_count == 0 || self.max_rdy_count > broker.max_rdy {
            return invalid(
                "max_rdy_count",
                format!("must be between 1 and broker.max_rdy ({})", broker.max_rdy),
            );
        }
        if self.max_msg_size == 0 || self.max_msg_size > MAX_BODY_LEN as u64 {
            return invalid(
                "max_msg_size",
                format!("must be between 1 and {MAX_BODY_LEN}"),
            );
        }
        if self.max_body_size < self.max_msg_size || self.max_body_size > i32::MAX as u64 {
            return invalid(
                "max_body_size",
                "must be at least nsq.max_msg_size and under 2GiB".into(),
            );
        }
        if self.max_msg_timeout < broker.msg_timeout
            || self.max_msg_timeout > broker.max_msg_timeout
        {
            return invalid(
                "max_msg_timeout",
                "must be between broker.msg_timeout and broker.max_msg_timeout".into(),
            );
        }
        if self.max_req_timeout > broker.max_req_delay || self.max_req_timeout > broker.max_defer {
            return invalid(
                "max_req_timeout",
                "must be at most broker.max_req_delay and broker.max_defer".into(),
            );
        }
        if self.heartbeat_interval < Duration::from_secs(1)
            || self.heartbeat_interval > self.max_heartbeat_interval
        {
            return invalid(
                "heartbeat_interval",
                "must be between 1s and nsq.max_heartbeat_interval".into(),
            );
        }
        if self.output_buffer_size < 64 || self.output_buffer_size > self.max_output_buffer_size {
            return invalid(
                "output_buffer_size",
                "must be between 64 bytes and nsq.max_output_buffer_size".into(),
            );
        }
        if self.min_output_buffer_timeout > self.output_buffer_timeout
            || self.output_buffer_timeout > self.max_output_buffer_timeout
        {
            return invalid(
                "output_buffer_timeout",
                "must be between nsq.min_output_buffer_timeout and nsq.max_output_buffer_timeout"
                    .into(),
            );
        }
        if !(1..=9).contains(&self.max_deflate_level) {
            return invalid("max_deflate_level", "must be between 1 and 9".into());
        }
        if self.tls_required && !self.tls {
            return invalid("tls_required", "needs nsq.tls".into());
        }
        Ok(())
    }
}

/// Parses a listen address, or `off` for none.
pub fn parse_off_or_addr(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|e| format!("{text:?} is neither `off` nor an address: {e}")),
    }
}

/// Serde for an optional listen address written as `"host:port"` or `"off"`.
pub mod off_or_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.serialize_str(&addr.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_off_or_addr(&text).map_err(serde::de::Error::custom)
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
    /// Reads a TOML file; missing fields take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
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
        self.storage
            .validate()
            .map_err(|(field, why)| ConfigError::Invalid { field, why })
    }
}

/// Parses durations like `250ms`, `10s`, `5m`, `1h` (and `0`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "{text:?} has unknown unit {unit:?} (use ms, s, m or h)"
        )),
    }
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Serde adapter for human-readable durations.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses sizes like `16MiB`, `512KiB`, `1GiB` or a plain number of bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?} has unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Serde adapter for sizes: a number of bytes, or a string [`parse_byte_size`] reads.
pub mod byte_size {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        struct Size;
        impl Visitor<'_> for Size {
            type Value = u64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of bytes or a size like \"16MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                super::parse_byte_size(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Size)
    }
}

/// Serde adapter for optional human-readable durations.
pub mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
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
