//! WebSocket clients for talking to the gateway, with bounded waits on every read.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};

/// Bound on the TCP connect plus the upgrade handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code reported when the connection ended without a close frame (RFC 6455 §7.1.5).
pub const ABNORMAL_CLOSURE: u16 = 1006;
/// Close code reported for a close frame without a code (RFC 6455 §7.1.5).
pub const NO_STATUS: u16 = 1005;

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    response: Response,
}

impl WsClient {
    /// An upgrade request for `url` with the handshake headers already set; add your own
    /// (`Authorization`, `Sec-WebSocket-Protocol`, …) and pass it to [`WsClient::connect_with`].
    pub fn request(url: &str) -> Request {
        url.into_client_request().unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"))
    }

    /// Connects; `Err((status, body))` when the server answers the upgrade with plain HTTP.
    /// Panics on anything else (unreachable server, broken handshake, timeout).
    pub async fn connect(url: &str) -> Result<WsClient, (u16, String)> {
        Self::connect_with(Self::request(url)).await
    }

    /// Like [`WsClient::connect`] with a prepared request (see [`WsClient::request`]).
    pub async fn connect_with(request: Request) -> Result<WsClient, (u16, String)> {
        let target = request.uri().to_string();
        let connecting = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => panic!("WebSocket connect to {target}: no answer within {CONNECT_TIMEOUT:?}"),
            Ok(Ok((stream, response))) => Ok(WsClient { stream, response }),
            Ok(Err(Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.into_body().unwrap_or_default();
                Err((status, String::from_utf8_lossy(&body).into_owned()))
            }
            Ok(Err(e)) => panic!("WebSocket connect to {target}: {e}"),
        }
    }

    /// Connects and returns the HTTP status and body the upgrade was refused with; panics if
    /// the upgrade succeeds.
    pub async fn expect_rejected(request: Request) -> (u16, String) {
        let target = request.uri().to_string();
        match Self::connect_with(request).await {
            Ok(_) => panic!("the upgrade to {target} was expected to be refused but succeeded"),
            Err(rejection) => rejection,
        }
    }

    /// The server's handshake response (e.g. its `Sec-WebSocket-Protocol`).
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// The next text frame, parsed as JSON (ping/pong are skipped). Panics on timeout, on a
    /// close, on a binary frame or on text that is not JSON.
    pub async fn next_json(&mut self, timeout: Duration) -> Value {
        match self.try_next(timeout).await {
            None => panic!("no frame within {timeout:?}"),
            Some(Message::Text(text)) => {
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {text}"))
            }
            Some(other) => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// The next frame other than ping/pong, or `None` if none arrives within `timeout` (for
    /// asserting silence). A connection that ends without a close frame panics.
    pub async fn try_next(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()?;
            match frame {
                // tungstenite queues the pong reply itself; it goes out with the next read/write.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(e)) => panic!("WebSocket read failed: {e}"),
                None => panic!("the connection ended (after any close frame) while reading"),
            }
        }
    }

    /// Expects the next non-ping/pong frame to be a close frame; returns its code and reason.
    /// A connection that drops without one reports [`ABNORMAL_CLOSURE`]. Panics if a data frame
    /// comes first, or nothing within `timeout`.
    pub async fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        let (frames, code, reason) = self.frames_until_close(timeout).await;
        assert!(frames.is_empty(), "expected a close ({code} {reason:?}) but first got {frames:?}");
        (code, reason)
    }

    /// Reads until the server closes, returning the data frames received before the close and
    /// the close code and reason (see [`WsClient::expect_close`]).
    pub async fn frames_until_close(&mut self, timeout: Duration) -> (Vec<Message>, u16, String) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let Ok(frame) = tokio::time::timeout_at(deadline, self.stream.next()).await else {
                panic!("no close within {timeout:?}; received meanwhile: {frames:?}");
            };
            match frame {
                Some(Ok(Message::Close(close))) => {
                    let (code, reason) = close.map_or((NO_STATUS, String::new()), describe);
                    return (frames, code, reason);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(message)) => frames.push(message),
                Some(Err(_)) | None => return (frames, ABNORMAL_CLOSURE, String::new()),
            }
        }
    }

    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.unwrap_or_else(|e| panic!("WebSocket send failed: {e}"));
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.send(Message::text(text.into())).await;
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    /// Starts a normal client-side close (1000).
    pub async fn close(&mut self) {
        self.stream.close(None).await.unwrap_or_else(|e| panic!("WebSocket close failed: {e}"));
    }
}

fn describe(frame: CloseFrame) -> (u16, String) {
    (u16::from(frame.code), frame.reason.to_string())
}

/// The code of the first close frame the server sends on `url`, read off the
/// wire (1005 for a close without a code). tungstenite 0.30 predates 1014
/// (Bad Gateway, registered with IANA after RFC 6455, and the protocol's code
/// for an unavailable API): it reports a close frame carrying 1014 as 1002,
/// so neither [`WsClient`] nor a tokio-tungstenite stream can see it. Hence
/// a hand-made client: the upgrade request, then unmasked server frames.
pub async fn close_code_on_the_wire(url: &str, timeout: Duration) -> u16 {
    let (authority, path) = url.strip_prefix("ws://").and_then(|rest| rest.split_once('/')).expect("a ws:// URL");
    let exchange = async {
        let mut tcp = TcpStream::connect(authority).await.expect("connect");
        let request = format!(
            "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("send the upgrade");
        let mut received = Vec::new();
        let mut upgraded = false;
        loop {
            let mut chunk = [0; 4096];
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the connection ended without a close frame");
            received.extend_from_slice(&chunk[..n]);
            if !upgraded {
                let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&received[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
                received.drain(..end + 4);
                upgraded = true;
            }
            while let Some((opcode, payload, used)) = server_frame(&received) {
                if opcode == 0x8 {
                    return match payload {
                        [high, low, ..] => u16::from_be_bytes([*high, *low]),
                        _ => NO_STATUS,
                    };
                }
                received.drain(..used);
            }
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| panic!("no close frame within {timeout:?}"))
}

/// One whole unmasked frame at the start of `bytes`: (opcode, payload, its length).
fn server_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (len, at) = match second & 0x7f {
        126 => (usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)), 4),
        127 => (usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?, 10),
        len => (usize::from(len), 2),
    };
    Some((first & 0x0f, bytes.get(at..at + len)?, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use serde_json::json;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{
        ErrorResponse, Request as ServerRequest, Response as ServerResponse,
    };
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// A one-connection server: refuses without `Authorization`, otherwise pings, sends one
    /// JSON frame, echoes one frame back as JSON and closes with 4404.
    #[expect(clippy::result_large_err, reason = "tungstenite's handshake callback signature")]
    async fn server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let check = |request: &ServerRequest, response: ServerResponse| {
                if request.headers().contains_key("authorization") {
                    Ok(response)
                } else {
                    let mut refusal = ErrorResponse::new(Some("no token".into()));
                    *refusal.status_mut() = StatusCode::UNAUTHORIZED;
                    Err(refusal)
                }
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
                return;
            };
            ws.send(Message::Ping(Default::default())).await.unwrap();
            ws.send(Message::text(json!({"event": "section.snapshot"}).to_string())).await.unwrap();
            // The client's automatic pong arrives first.
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Text(text) = frame {
                    ws.send(Message::text(json!({"echo": text.as_str()}).to_string())).await.unwrap();
                    break;
                }
            }
            let close = CloseFrame { code: CloseCode::from(4404), reason: "gone".into() };
            ws.close(Some(close)).await.unwrap();
            while ws.next().await.is_some() {}
        });
        url
    }

    #[tokio::test]
    async fn refused_upgrade_reports_status_and_body() {
        let url = server().await;
        let (status, body) = WsClient::expect_rejected(WsClient::request(&url)).await;
        assert_eq!((status, body.as_str()), (401, "no token"));
    }

    #[tokio::test]
    async fn reads_json_skipping_pings_then_the_close() {
        let url = server().await;
        let mut request = WsClient::request(&url);
        request.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
        let mut client = WsClient::connect_with(request).await.expect("upgrade");
        assert_eq!(client.next_json(Duration::from_secs(5)).await, json!({"event": "section.snapshot"}));
        client.send_text("hi").await;
        assert_eq!(client.next_json(Duration::from_secs(5)).await, json!({"echo": "hi"}));
        assert_eq!(client.expect_close(Duration::from_secs(5)).await, (4404, "gone".to_owned()));
    }

    #[tokio::test]
    async fn frames_before_the_close_are_returned() {
        let url = server().await;
        let mut request = WsClient::request(&url);
        request.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
        let mut client = WsClient::connect_with(request).await.expect("upgrade");
        client.send_text("x").await;
        let (frames, code, _) = client.frames_until_close(Duration::from_secs(5)).await;
        assert_eq!(frames.len(), 2);
        assert_eq!(code, 4404);
    }

    #[tokio::test]
    async fn try_next_is_none_on_silence() {
        let url = server().await;
        let mut request = WsClient::request(&url);
        request.headers_mut().insert("authorization", "Bearer t".parse().unwrap());
        let mut client = WsClient::connect_with(request).await.expect("upgrade");
        client.next_json(Duration::from_secs(5)).await;
        // The server now waits for a frame from us: nothing comes.
        assert!(client.try_next(Duration::from_millis(100)).await.is_none());
    }
}
