//! Use cases and the ports they depend on. Nothing here knows about Kafka,
//! HTTP or sockets (but for the name of the header that carries a client's
//! address, [`ports::X_FORWARDED_FOR`], which the upgrade reads and the
//! snapshot call sends): adapters implement [`ports`], and transport and the
//! Kafka adapter call the two use cases, [`connect`] and [`ingest`].

pub mod admission;
pub mod authorize;
pub mod compression;
pub mod connect;
pub mod delivery;
pub mod expiring;
pub mod floor;
pub mod hub;
pub mod ingest;
pub mod outbox;
pub mod pending;
pub mod ports;
pub mod readiness;
pub mod refresh;
pub mod restaurants;
pub mod resume;
pub mod resume_buffer;
pub mod router;
