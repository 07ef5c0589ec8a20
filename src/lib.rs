//! mesaya-realtime: the realtime gateway of MesaYa.
//!
//! A client opens `/ws/restaurant/{sectionId}`; the gateway verifies its JWT,
//! registers it on the shard that owns the section, fetches the section's
//! snapshot once from the MesaYa API with the client's token, and from then on
//! pushes every change straight from Kafka.
//!
//! Layers point inward (see README, "Architecture"):
//! - [`domain`]: ids, entities, envelopes, frames, access rules. Pure.
//! - [`application`]: use cases (authorize, route, hand off, queue) and the
//!   ports they need.
//! - [`infrastructure`]: the adapters behind those ports (Kafka, HTTP client,
//!   JWT) and the process-wide concerns (configuration, metrics).
//! - [`transport`]: the HTTP/WebSocket server and the shard threads.
//!
//! - [`telemetry`]: metrics, cross-cutting like logging.
//!
//! Wiring happens in `main.rs` only.

pub mod application;
pub mod domain;
pub mod infrastructure;
pub mod telemetry;
pub mod transport;
