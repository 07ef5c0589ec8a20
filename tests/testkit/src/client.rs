//! A minimal plain-HTTP/1 client for probing servers under test (one connection per request).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound on connecting, sending and reading a whole response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET url` → `(status, body)`. Panics if the server cannot be reached or does not answer
/// within 10 s.
pub async fn get(url: &str) -> (u16, String) {
    get_with(url, &[]).await
}

/// `GET url` with extra request headers → `(status, body)`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(url, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no complete answer within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Returns an error instead of panicking when the server is unreachable, for pollers.
pub(crate) async fn try_get(url: &str) -> Result<(u16, String), String> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(url, &[]))
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

async fn exchange(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let authority = uri.authority().ok_or("URL has no host")?.clone();
    let stream = TcpStream::connect(authority.as_str()).await.map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    // The connection future performs the I/O; it ends when the exchange is over.
    tokio::spawn(connection);

    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::get(path).header(header::HOST, authority.as_str());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| format!("bad request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
