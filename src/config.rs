//! Typed configuration: defaults that run a development broker with no flags, a TOML file,
//! command-line overrides, and one `validate()` that names the bad field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{BrokerConfig, MIN_MSG_TIMEOUT};
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
        }
    }
}

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
}

impl Config {
    /// Reads a TOML file; missing fields take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
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
