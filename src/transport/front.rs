//! What every HTTP connection gets before any upgrade, on the public port
//! and the admin listener alike: accepts that survive running out of
//! descriptors, hyper's HTTP/1 with bounded request heads and the header
//! read timeout, and a way to be closed when the registry of pending
//! connections (`application::pending`) evicts it.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::application::pending::{Close, PendingConnections, Place};
use crate::telemetry::events::PendingClosed;

pub type Body = Full<Bytes>;

/// The connections of one listener that have not upgraded.
pub type Pending = PendingConnections<CloseSignal>;
pub type PendingPlace = Place<CloseSignal>;

/// Request heads longer are answered 431: what Node, which serves the API
/// behind, accepts. A JWT in the path and another in a header fit many times.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// Request heads with more header lines are answered 431. A browser's
/// upgrade has about 15; proxies and meshes add up to as many again.
const MAX_HEADERS: usize = 48;
/// The most a connection buffers of what it reads (hyper's default is
/// about 400 KiB): a head at its limit and what may follow it, so that a
/// head just over the limit is read whole and answered 431 rather than cut
/// off.
const MAX_READ_BUFFER: usize = 2 * MAX_HEAD_BYTES;
/// How long a client may take to send a whole request head, the first or
/// the next one on a kept-alive connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept (e.g. out of descriptors), so that the
/// loop does not spin on it.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Closes a connection from another task, or another shard: its serving
/// task waits on it beside the connection.
#[derive(Clone, Default)]
pub struct CloseSignal(Arc<Notify>);

impl Close for CloseSignal {
    fn close(&self) {
        // Kept until the task waits, if it has not started to yet.
        self.0.notify_one();
    }
}

/// The next connection, with `TCP_NODELAY` set for its whole life (it stays
/// set through a hand-off to another shard). Accept errors are logged and
/// retried after a pause.
pub async fn accept(listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(error) => {
                tracing::warn!(%error, listener = ?listener.local_addr().ok(), "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Serves HTTP/1 on `stream` until the connection ends, upgrades or is
/// closed through `close`.
pub async fn serve<S>(stream: TcpStream, service: S, close: CloseSignal)
where
    S: HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let served = tokio::select! {
        served = connection => served,
        // Dropping the connection closes its socket.
        () = close.0.notified() => Ok(()),
    };
    match served {
        Err(error) if error.is_parse_too_large() => PendingClosed::HeadersTooLarge.emit(),
        Err(error) => tracing::debug!(%error, "http connection ended with an error"),
        Ok(()) => {}
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

pub fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found\n")
}
