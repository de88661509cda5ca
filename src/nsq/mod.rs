//! NSQ compatibility: the NSQ TCP protocol V2 ([`tcp`]) and the nsqd HTTP API ([`http`]),
//! mapped onto the same broker calls as the QUIC sessions, so that NSQ clients and tools
//! work unchanged against the same topics and channels.
//!
//! NSQ messages carry no headers: NSQ publishes are stored with none, and the headers of
//! QUIC-published messages are not shown to NSQ consumers.

pub mod http;
pub mod tcp;

/// The version both surfaces report (IDENTIFY's `version`, `/info`, `/stats`): the nsqd
/// release they follow, with Quiver's version as semver build metadata, so that tools which
/// compare versions (nsqadmin picks endpoints by version) treat Quiver as nsqd 1.3.0.
pub const NSQD_VERSION: &str = concat!("1.3.0+quiver.", env!("CARGO_PKG_VERSION"));
