//! The `[nsq]` section: the NSQ TCP and nsqd HTTP listeners and nsqd's options.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{byte_size, duration, off_or_addr};
use crate::broker::BrokerConfig;
use crate::message::MAX_BODY_LEN;

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
    pub(super) fn validate(&self, broker: &BrokerConfig) -> Result<(), (String, String)> {
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
