//! IDENTIFY: a client's settings and feature negotiation, pure. The JSON body is checked the
//! way nsqd's `clientV2.Identify` checks it, and the reply is the JSON nsqd sends.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::wire::NsqError;
use crate::config::NsqConfig;

pub use crate::nsq::NSQD_VERSION as VERSION;

/// One connection's settings: nsqd's defaults until IDENTIFY changes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// None: heartbeats off (the client asked for -1).
    pub heartbeat: Option<Duration>,
    pub output_buffer_size: usize,
    /// Zero: no buffering delay.
    pub output_buffer_timeout: Duration,
    /// Percent of messages delivered; 0 delivers all.
    pub sample_rate: u8,
    /// None: the channel's (or the broker's) default.
    pub msg_timeout: Option<Duration>,
    pub client_id: String,
    pub hostname: String,
    pub user_agent: String,
}

impl ClientSettings {
    pub fn new(config: &NsqConfig) -> ClientSettings {
        ClientSettings {
            heartbeat: Some(config.heartbeat_interval),
            output_buffer_size: config.output_buffer_size as usize,
            output_buffer_timeout: config.output_buffer_timeout,
            sample_rate: 0,
            msg_timeout: None,
            client_id: String::new(),
            hostname: String::new(),
            user_agent: String::new(),
        }
    }
}

/// The IDENTIFY body. Every field is optional and may be `null`, as Go's decoder allows.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Body {
    client_id: Option<String>,
    short_id: Option<String>,
    hostname: Option<String>,
    user_agent: Option<String>,
    feature_negotiation: Option<bool>,
    heartbeat_interval: Option<i64>,
    output_buffer_size: Option<i64>,
    output_buffer_timeout: Option<i64>,
    tls_v1: Option<bool>,
    snappy: Option<bool>,
    deflate: Option<bool>,
    deflate_level: Option<i64>,
    sample_rate: Option<i32>,
    msg_timeout: Option<i64>,
}

/// The upgrades agreed on, applied in this order after the reply: TLS, then compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Upgrades {
    pub tls: bool,
    pub snappy: bool,
    /// The deflate level, when deflate was agreed on.
    pub deflate: Option<u32>,
}

/// What IDENTIFY does to a connection.
#[derive(Debug)]
pub struct Identified {
    pub settings: ClientSettings,
    /// The reply: `OK`, or the negotiation JSON.
    pub reply: Vec<u8>,
    pub upgrades: Upgrades,
}

/// The broker-wide facts the reply reports.
#[derive(Debug, Clone, Copy)]
pub struct Offer {
    /// Tokens or an auth server are configured: clients must AUTH (nsqd's `auth_required`).
    pub auth_required: bool,
    /// A TLS config is loaded, so `tls_v1` can be granted.
    pub tls: bool,
    /// The default message timeout consumers get.
    pub msg_timeout: Duration,
}

#[derive(Serialize)]
struct Reply<'a> {
    max_rdy_count: u32,
    version: &'a str,
    max_msg_timeout: u64,
    msg_timeout: u64,
    tls_v1: bool,
    deflate: bool,
    deflate_level: u32,
    max_deflate_level: u32,
    snappy: bool,
    sample_rate: u8,
    auth_required: bool,
    output_buffer_size: usize,
    output_buffer_timeout: u64,
}

/// Applies an IDENTIFY body to `current`. Errors are nsqd's, all fatal.
pub fn identify(
    body: &[u8],
    current: &ClientSettings,
    config: &NsqConfig,
    offer: Offer,
) -> Result<Identified, NsqError> {
    let data: Body = serde_json::from_slice(body)
        .map_err(|_| NsqError::fatal("E_BAD_BODY", "IDENTIFY failed to decode JSON body"))?;
    let settings = apply(&data, current, config)
        .map_err(|why| NsqError::fatal("E_BAD_BODY", format!("IDENTIFY {why}")))?;
    if !data.feature_negotiation.unwrap_or(false) {
        return Ok(Identified {
            settings,
            reply: super::wire::OK.to_vec(),
            upgrades: Upgrades::default(),
        });
    }
    let tls = offer.tls && data.tls_v1.unwrap_or(false);
    let deflate = config.deflate && data.deflate.unwrap_or(false);
    let asked = data.deflate_level.unwrap_or(0);
    let level = if deflate && asked > 0 { asked } else { 6 };
    let level = level.min(i64::from(config.max_deflate_level)) as u32;
    let snappy = config.snappy && data.snappy.unwrap_or(false);
    if deflate && snappy {
        return Err(NsqError::fatal(
            "E_IDENTIFY_FAILED",
            "cannot enable both deflate and snappy compression",
        ));
    }
    let msg_timeout = settings.msg_timeout.unwrap_or(offer.msg_timeout);
    let reply = Reply {
        max_rdy_count: config.max_rdy_count,
        version: VERSION,
        max_msg_timeout: config.max_msg_timeout.as_millis() as u64,
        msg_timeout: msg_timeout.as_millis() as u64,
        tls_v1: tls,
        deflate,
        deflate_level: level,
        max_deflate_level: config.max_deflate_level,
        snappy,
        sample_rate: settings.sample_rate,
        auth_required: offer.auth_required,
        output_buffer_size: settings.output_buffer_size,
        output_buffer_timeout: settings.output_buffer_timeout.as_millis() as u64,
    };
    let reply = serde_json::to_vec(&reply)
        .map_err(|e| NsqError::fatal("E_IDENTIFY_FAILED", format!("IDENTIFY failed {e}")))?;
    Ok(Identified {
        settings,
        reply,
        upgrades: Upgrades {
            tls,
            snappy,
            deflate: deflate.then_some(level),
        },
    })
}

/// `clientV2.Identify`: each setting in turn, 0 keeping the default and -1 turning it off
/// where that is allowed.
fn apply(
    data: &Body,
    current: &ClientSettings,
    config: &NsqConfig,
) -> Result<ClientSettings, String> {
    let ms = |d: Duration| d.as_millis() as i64;
    let mut s = current.clone();
    s.client_id = data
        .client_id
        .clone()
        .or_else(|| data.short_id.clone())
        .unwrap_or_default();
    s.hostname = data.hostname.clone().unwrap_or_default();
    s.user_agent = data.user_agent.clone().unwrap_or_default();

    match data.heartbeat_interval.unwrap_or(0) {
        -1 => s.heartbeat = None,
        0 => {}
        n if (1000..=ms(config.max_heartbeat_interval)).contains(&n) => {
            s.heartbeat = Some(Duration::from_millis(n as u64));
        }
        n => return Err(format!("heartbeat interval ({n}) is invalid")),
    }

    let (size, timeout) = (
        data.output_buffer_size.unwrap_or(0),
        data.output_buffer_timeout.unwrap_or(0),
    );
    match timeout {
        -1 => s.output_buffer_timeout = Duration::ZERO,
        0 => {}
        n if (ms(config.min_output_buffer_timeout)..=ms(config.max_output_buffer_timeout))
            .contains(&n) =>
        {
            s.output_buffer_timeout = Duration::from_millis(n as u64);
        }
        n => return Err(format!("output buffer timeout ({n}) is invalid")),
    }
    match size {
        -1 => {
            s.output_buffer_size = 1;
            s.output_buffer_timeout = Duration::ZERO;
        }
        0 => {}
        n if (64..=config.max_output_buffer_size as i64).contains(&n) => {
            s.output_buffer_size = n as usize;
        }
        n => return Err(format!("output buffer size ({n}) is invalid")),
    }

    match data.sample_rate.unwrap_or(0) {
        n @ 0..=99 => s.sample_rate = n as u8,
        n => return Err(format!("sample rate ({n}) is invalid")),
    }

    match data.msg_timeout.unwrap_or(0) {
        0 => {}
        n if (1000..=ms(config.max_msg_timeout)).contains(&n) => {
            s.msg_timeout = Some(Duration::from_millis(n as u64));
        }
        n => return Err(format!("msg timeout ({n}) is invalid")),
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            auth_required: false,
            tls: true,
            msg_timeout: Duration::from_secs(60),
        }
    }

    fn run(json: &str) -> Result<Identified, NsqError> {
        let config = NsqConfig::default();
        identify(
            json.as_bytes(),
            &ClientSettings::new(&config),
            &config,
            offer(),
        )
    }

    #[test]
    fn without_negotiation_the_reply_is_ok() {
        let id = run(r#"{"client_id":"c","heartbeat_interval":5000}"#).unwrap();
        assert_eq!(id.reply, b"OK");
        assert_eq!(id.settings.heartbeat, Some(Duration::from_secs(5)));
        assert_eq!(id.settings.client_id, "c");
        assert_eq!(id.upgrades, Upgrades::default());
    }

    #[test]
    fn negotiation_replies_with_nsqd_fields() {
        let id = run(
            r#"{"feature_negotiation":true,"snappy":true,"tls_v1":true,"msg_timeout":2000,
                "sample_rate":null,"client_id":null,"unknown":[1]}"#,
        )
        .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&id.reply).unwrap();
        assert_eq!(reply["max_rdy_count"], 2500);
        assert_eq!(reply["msg_timeout"], 2000);
        assert_eq!(reply["max_msg_timeout"], 900_000);
        assert_eq!(reply["snappy"], true);
        assert_eq!(reply["tls_v1"], true);
        assert_eq!(reply["deflate"], false);
        assert_eq!(reply["deflate_level"], 6);
        assert_eq!(reply["auth_required"], false);
        assert_eq!(reply["output_buffer_size"], 16384);
        assert_eq!(reply["output_buffer_timeout"], 250);
        assert_eq!(id.upgrades.deflate, None);
        assert!(id.upgrades.snappy && id.upgrades.tls);
    }

    #[test]
    fn deflate_level_is_capped() {
        let id = run(r#"{"feature_negotiation":true,"deflate":true,"deflate_level":9}"#).unwrap();
        assert_eq!(id.upgrades.deflate, Some(6));
        let both = run(r#"{"feature_negotiation":true,"deflate":true,"snappy":true}"#);
        assert_eq!(
            both.unwrap_err().to_string(),
            "E_IDENTIFY_FAILED cannot enable both deflate and snappy compression"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_nsqd_texts() {
        let cases = [
            (
                r#"{"heartbeat_interval":999}"#,
                "E_BAD_BODY IDENTIFY heartbeat interval (999) is invalid",
            ),
            (
                r#"{"heartbeat_interval":60001}"#,
                "E_BAD_BODY IDENTIFY heartbeat interval (60001) is invalid",
            ),
            (
                r#"{"output_buffer_size":63}"#,
                "E_BAD_BODY IDENTIFY output buffer size (63) is invalid",
            ),
            (
                r#"{"output_buffer_timeout":1}"#,
                "E_BAD_BODY IDENTIFY output buffer timeout (1) is invalid",
            ),
            (
                r#"{"sample_rate":100}"#,
                "E_BAD_BODY IDENTIFY sample rate (100) is invalid",
            ),
            (
                r#"{"msg_timeout":10}"#,
                "E_BAD_BODY IDENTIFY msg timeout (10) is invalid",
            ),
            (
                r#"{"heartbeat_interval":"x"}"#,
                "E_BAD_BODY IDENTIFY failed to decode JSON body",
            ),
            ("nope", "E_BAD_BODY IDENTIFY failed to decode JSON body"),
        ];
        for (json, expected) in cases {
            let err = run(json).unwrap_err();
            assert!(err.fatal);
            assert_eq!(err.to_string(), expected, "{json}");
        }
    }

    #[test]
    fn minus_one_turns_heartbeats_and_buffering_off() {
        let id = run(r#"{"heartbeat_interval":-1,"output_buffer_size":-1}"#).unwrap();
        assert_eq!(id.settings.heartbeat, None);
        assert_eq!(id.settings.output_buffer_size, 1);
        assert_eq!(id.settings.output_buffer_timeout, Duration::ZERO);
    }
}
