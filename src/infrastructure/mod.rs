//! Adapters: what the application's ports are made of, plus configuration.

pub mod config;
pub mod jwt;
pub mod kafka;
pub mod snapshot_http;
