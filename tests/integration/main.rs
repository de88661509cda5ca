//! Integration tests: a real broker on loopback QUIC, real clients, temp directories.

#![allow(clippy::unwrap_used)]

mod access;
mod access_auth_server;
mod access_nsq;
mod auth_server;
mod authoring;
mod cli;
mod client;
mod cluster;
mod cluster_failover;
mod cluster_members;
mod cluster_nsq;
mod cluster_peer;
mod cluster_sub;
mod cluster_topics;
mod crash;
mod dedup;
mod delivery;
mod disk_full;
mod durability;
mod errors;
mod guests;
mod log_limit;
mod nsq_http;
mod nsq_tcp;
mod nsq_tcp_quic;
mod nsq_tcp_raw;
mod nsq_tcp_tls;
mod ordering;
mod plugin_isolation;
mod plugins;
mod process;
mod reload;
mod retry;
mod rules;
mod support;
mod to_http;
mod wasm;
