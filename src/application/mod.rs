//! Use cases and the ports they depend on. Nothing here knows about Kafka,
//! HTTP or sockets: adapters implement [`ports`] and transport drives the
//! per-shard pieces ([`hub`], [`outbox`]).

pub mod authorize;
pub mod delivery;
pub mod hub;
pub mod outbox;
pub mod ports;
pub mod readiness;
pub mod router;
