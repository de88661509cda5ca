//! Integration tests: a real broker on loopback QUIC, real clients, temp directories.

mod cli;
mod client;
mod delivery;
mod errors;
mod support;
