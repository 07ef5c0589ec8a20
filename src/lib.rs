//! mesaya-realtime: the realtime gateway of MesaYa.
//!
//! A client opens `/ws/restaurant/{sectionId}`; the gateway verifies its
//! JWT, fetches the section's snapshot once from the MesaYa API with the
//! client's own token, and from then on pushes every change straight from
//! Kafka.
//!
//! # The life of an event
//! One verb per hop:
//! 1. **consume** — `infrastructure/kafka.rs`: the ingest thread polls a
//!    record and hands it to the ingest use case.
//! 2. **parse** — `domain/envelope.rs`: v1 or v2 envelope → `EntityEvent`.
//! 3. **route** — `application/router.rs`: the sections it concerns; the
//!    frame bytes are built once (`application/ingest.rs` drives 2-4).
//! 4. **dispatch** — `transport/mailbox.rs`: onto the mailbox of the shard
//!    that owns each section (the `Dispatch` port), stamped with its Kafka
//!    position (`domain/position.rs`).
//! 5. **fan out** — `transport/shard.rs` → `application/hub.rs`: the shard
//!    keeps the frame in its resume buffer (`application/resume_buffer.rs`)
//!    and queues the same bytes on every subscriber of the section.
//! 6. **queue** — `application/outbox.rs`: per client, bounded, conflating;
//!    held until the client's snapshot is out.
//! 7. **write** — `transport/wire.rs`: once the shard's turn has fanned
//!    out all its events, the shard writes each client's new frames itself,
//!    headers and shared payloads in one gathered write; the client's writer task
//!    (`transport/session.rs`) is woken only for what the socket left.
//!
//! # The life of a connection
//! 1. **accept** — `transport/http.rs`: any shard accepts on the shared
//!    listener and serves HTTP.
//! 2. **authorize** — `transport/upgrade.rs` finds the section and token;
//!    `application/authorize.rs` checks them (401/403 before any upgrade).
//! 3. **upgrade** — `transport/http.rs` answers 101 and takes the raw socket
//!    back from hyper.
//! 4. **hand off** — `transport/mailbox.rs`: the socket goes to the shard
//!    that owns the section, which registers the client there
//!    (`application/connect.rs`, `register`) before anything else.
//! 5. **snapshot** — `application/connect.rs`, `fetch_snapshot`: the one REST
//!    call (`infrastructure/snapshot_http.rs`), then the handoff. Or
//!    **resume** — `application/resume.rs`: a client with a resume token
//!    (`infrastructure/resume_token.rs`) gets what it missed from the resume
//!    buffer instead (a catch-up), decided in the turn that registered it.
//! 6. **live** — `transport/session.rs`: writer and reader until a close;
//!    `section.position` frames for clients that opted in.
//!
//! # Layers
//! Inward only: [`domain`] (pure rules) ← [`application`] (use cases and
//! ports) ← [`infrastructure`] (adapters behind the ports) and [`transport`]
//! (the server). [`config`], [`shutdown`] and [`telemetry`] are read by all
//! and read nothing above [`domain`] (an outcome event of a use case lives
//! beside its type in [`application`]); no arrow goes from [`application`] or
//! [`transport`] to [`infrastructure`], and none closes a circle
//! (`scripts/module-graph.py` checks);
//! wiring happens in `main.rs` only, and in [`config_check`], the
//! `--check-config` command, which puts the configuration and two adapters
//! together without starting anything.

pub mod application;
pub mod config;
pub mod config_check;
pub mod domain;
pub mod infrastructure;
pub mod shutdown;
pub mod telemetry;
pub mod transport;
