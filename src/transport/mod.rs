//! The HTTP/WebSocket server and the shard threads that run it.
//!
//! Every shard accepts on the shared listener and answers HTTP (ops
//! endpoints, upgrade checks) itself; an upgraded socket is then handed, as a
//! plain `std::net::TcpStream`, to the shard that owns its section, which
//! registers it with its own reactor and serves it to the end.

pub mod http;
pub mod rate;
pub mod session;
pub mod shard;
pub mod upgrade;
