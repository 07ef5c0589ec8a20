//! Adapters: what the application's ports are made of.

pub mod jwt;
pub mod kafka;
pub mod recent_snapshots;
pub mod resume_token;
pub mod snapshot_http;
