//! Test toolkit for `mesaya-realtime`.
//!
//! Everything here is real: a Kafka-protocol broker process ([`broker`], tansu), an HTTP server
//! standing in for the MesaYa Nest API ([`api`]), the gateway binary itself ([`gateway`]),
//! WebSocket clients ([`ws`]), the floor-plan page ([`page`]) and a Prometheus server scraping the
//! gateway ([`prometheus`]). [`sample`] holds a sample restaurant and a simulator of its upstream
//! traffic. Waiting is always bounded polling on a condition ([`wait`]), and everything binds or
//! connects to 127.0.0.1 only.
//!
//! The `mesaya-dev` binary (`scripts/dev.sh`) puts these pieces together for a person to try, and,
//! with `--driven`, for the client library's end-to-end and browser tests (`clients/js/e2e`).
//!
//! Processes (tansu, the gateway) log to files under `$TMPDIR/mesaya-testkit/`; a file
//! is removed when its owner is dropped normally and kept (its path printed) when the test is
//! panicking.

pub mod api;
pub mod broker;
pub mod client;
pub mod fixtures;
pub mod gateway;
pub mod page;
pub mod producer;
pub mod prometheus;
pub mod sample;
pub mod tokens;
pub mod wait;
pub mod ws;

mod process;
mod server;
