//! The HTTP/WebSocket server and the shard threads that run it. I/O only:
//! what a connection means is the connect use case's business
//! (`application::connect`).
//!
//! Every shard accepts on the shared listener and answers HTTP (ops
//! endpoints, upgrade checks) itself ([`http`], [`upgrade`]); an upgraded
//! socket is then handed, as a plain `std::net::TcpStream`, through the
//! owning shard's [`mailbox`] to that shard ([`shard`]), which serves it to
//! the end ([`session`]). What every connection gets before its upgrade
//! (bounded heads, a place among the pending connections) is [`front`]'s;
//! the operations endpoints ([`ops`]) are answered on the public port or on
//! the [`admin`] listener.

pub mod admin;
pub mod context;
pub mod deflate_offer;
pub mod frame_meter;
pub mod front;
pub mod http;
pub mod inflate;
pub mod mailbox;
pub mod ops;
pub mod rate;
pub mod section_reports;
pub mod session;
pub mod shard;
pub mod upgrade;
pub mod wire;
