//! Integration tests: a real broker on loopback QUIC, real clients, temp directories.

#![allow(clippy::unwrap_used)]

mod cli;
mod client;
mod delivery;
mod errors;
mod support;
