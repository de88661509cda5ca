//! Quiver: a message broker and router over QUIC, with NSQ's delivery model.
//!
//! # Layout
//! - [`message`]: names, ids, headers and messages, validated once and shared by every layer.
//! - [`protocol`]: the pure wire codec (frames, commands, replies, wire errors).
//! - [`storage`]: the segmented log per topic and each channel's durable state.
//! - [`broker`]: topics, channels and delivery, over storage; who may do what is asked of
//!   its access hook, the one front door every entry point goes through.
//! - [`auth`]: who callers are, from tokens, client certificates or nsqd's auth server
//!   protocol; and the grants of the rules file.
//! - [`plugin`]: the WebAssembly plugin host (the only module that names wasmtime).
//! - [`rules`]: the rules file, bound plugins behind the broker's hooks, and hot reload.
//! - [`session`], [`transport`], [`server`], [`http`], [`client`], [`bench`](mod@bench): the surfaces.
//! - [`cluster`]: nodes that replicate durable topics through Raft: the `[cluster]`
//!   settings, the cluster CA and node certificates, and the peer QUIC endpoint.
//! - [`to_http`]: `quiver to-http`, the HTTP push bridge (nsq_to_http over QUIC).
//! - [`authoring`]: `quiver plugin new|build|test`, for writing plugins without a broker.
//! - [`log_limit`]: a rate limit per key for log lines that messages, requests or plugin
//!   calls cause, with a count of what it suppressed.
pub mod auth;
pub mod authoring;
pub mod bench;
pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod http;
pub mod log_limit;
pub mod message;
pub mod nsq;
pub mod plugin;
pub mod protocol;
pub mod rules;
pub mod server;
pub mod session;
pub mod storage;
pub mod to_http;
pub mod transport;
