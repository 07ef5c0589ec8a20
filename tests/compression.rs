//! End to end: permessage-deflate (SPEC §2.9). Accepted when offered, with
//! `server_no_context_takeover`; events and snapshots compressed once for all
//! the clients that negotiated it, small frames sent as they are; client
//! messages inflated, a decompression bomb closed with 1009; declined with
//! `WS_COMPRESSION=off`, and never forced on a client that does not offer it.
//! Python's `websockets` and Node's `ws`, with their defaults, read it all;
//! Chromium's check is in the client library's browser test
//! (`clients/js/e2e/browser.test.ts`), which drives it with Playwright.
//!
//! Real gateway binary, real tansu broker, real stand-in API, real sockets.
//! The Python and Node clients: `INTEROP_PYTHON` (a Python with
//! tests/interop/requirements.txt installed; scripts/test.sh makes one) or
//! `python3`, and clients/js's `ws` (`npm ci` there).

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use mesaya_testkit::fixtures::v2;
use mesaya_testkit::wait;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TABLES: &str = "mesa-ya.tables.events";
const COMPRESSED: &str = "mesaya_frames_compressed_total";
const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const RSV1: u8 = 0x40;

/// A section with 50 tables: a snapshot worth compressing.
fn serve_fifty_tables(stack: &Stack, section: &str) {
    let tables = (0..50).map(|n| table(&new_id(), section, n)).collect();
    stack.serve_section(section, tables);
}

/// A WebSocket client that speaks permessage-deflate itself (tungstenite
/// knows no extension): the handshake, then frames as they are on the wire.
struct DeflateClient {
    stream: TcpStream,
    /// What the server answered in `Sec-WebSocket-Extensions`.
    extensions: Option<String>,
    buffered: Vec<u8>,
}

/// A server frame: its first byte (FIN, RSV1, opcode), its payload as sent,
/// and that payload inflated when RSV1 is set.
struct ServerFrame {
    first: u8,
    wire: Vec<u8>,
    text: Vec<u8>,
}

impl ServerFrame {
    fn compressed(&self) -> bool {
        self.first & RSV1 != 0
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

impl DeflateClient {
    async fn connect(stack: &Stack, section: &str, offer: Option<&str>) -> DeflateClient {
        let mut stream = TcpStream::connect(("127.0.0.1", stack.gateway.port())).await.unwrap();
        let offer = offer.map(|offer| format!("Sec-WebSocket-Extensions: {offer}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws/restaurant/{section}/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n",
            token()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffered = Vec::new();
        let end = loop {
            if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("a handshake answer").unwrap();
            assert!(n > 0, "the gateway closed during the handshake");
            buffered.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffered[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, value)| value.trim().to_string());
        let buffered = buffered[end + 4..].to_vec();
        DeflateClient { stream, extensions, buffered }
    }

    async fn fill(&mut self, at_least: usize) {
        while self.buffered.len() < at_least {
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("a frame").unwrap();
            assert!(n > 0, "the connection ended");
            self.buffered.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next data or close frame (pings are skipped).
    async fn next(&mut self) -> ServerFrame {
        loop {
            self.fill(2).await;
            let (len, header) = match self.buffered[1] {
                126 => {
                    self.fill(4).await;
                    (usize::from(u16::from_be_bytes([self.buffered[2], self.buffered[3]])), 4)
                }
                127 => {
                    self.fill(10).await;
                    (u64::from_be_bytes(self.buffered[2..10].try_into().unwrap()) as usize, 10)
                }
                short => (usize::from(short), 2),
            };
            self.fill(header + len).await;
            let first = self.buffered[0];
            let wire: Vec<u8> = self.buffered.drain(..header + len).skip(header).collect();
            if first & 0x0f == 0x9 {
                continue;
            }
            let text = if first & RSV1 != 0 { inflate(&wire) } else { wire.clone() };
            return ServerFrame { first, wire, text };
        }
    }

    /// Sends a masked client frame.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }
}

/// A message as RFC 7692 §7.2.1 has a sender compress it.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut stream = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 1024);
    stream.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    out
}

/// A compressed message inflated as RFC 7692 §7.2.2 has a receiver do it.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let message = [payload, &TAIL].concat();
    let mut out = Vec::with_capacity(64 * message.len() + 1024);
    Decompress::new(false).decompress_vec(&message, &mut out, FlushDecompress::Sync).unwrap();
    out
}

#[tokio::test]
async fn events_and_snapshots_are_compressed_once_for_every_client_that_negotiated_it() {
    let stack = Stack::start_with(&[("WS_COMPRESSION_MIN_BYTES", "1024".into())]).await;
    let section = new_id();
    serve_fifty_tables(&stack, &section);

    let mut first = DeflateClient::connect(&stack, &section, Some(OFFER)).await;
    assert_eq!(first.extensions.as_deref(), Some(ACCEPTED));
    let snapshot = first.next().await;
    assert!(snapshot.compressed(), "the snapshot frame has RSV1 set");
    assert_eq!(snapshot.json()["payload"]["tables"].as_array().unwrap().len(), 50);
    assert!(snapshot.wire.len() * 3 < snapshot.text.len(), "{} of {} bytes", snapshot.wire.len(), snapshot.text.len());
    let mut second = DeflateClient::connect(&stack, &section, Some(OFFER)).await;
    assert_eq!(second.next().await.wire, snapshot.wire, "the same body, the same compressed bytes");
    let (mut plain, plain_snapshot) = stack.watch(&section).await;
    assert!(plain.response().headers().get("sec-websocket-extensions").is_none(), "no offer, no extension");
    assert_eq!(plain_snapshot["payload"], snapshot.json()["payload"]);
    assert_eq!(stack.metric(COMPRESSED, "").await, 1.0, "one body, compressed once");

    let table_id = new_id();
    let big = big_table(&table_id, &section, 100, 1200);
    stack.publish(TABLES, &v2("updated", &table_id, big.clone())).await;
    let expected = json!({"event": "table.updated", "payload": big});
    for client in [&mut first, &mut second] {
        let event = client.next().await;
        assert!(event.compressed());
        assert_eq!(event.json(), expected);
    }
    assert_eq!(plain.next_json(WAIT).await, expected, "a client that offered nothing reads it as text");
    assert_eq!(stack.metric(COMPRESSED, "").await, 2.0, "the event once, not once per subscriber");

    let small = table(&table_id, &section, 101);
    assert!(small.to_string().len() < 1000);
    stack.publish(TABLES, &v2("updated", &table_id, small.clone())).await;
    let event = first.next().await;
    assert!(!event.compressed(), "under WS_COMPRESSION_MIN_BYTES: sent as it is");
    assert_eq!(event.json(), json!({"event": "table.updated", "payload": small}));
    let (before, after) = (
        stack.metric("mesaya_compression_bytes_before_total", "").await,
        stack.metric("mesaya_compression_bytes_after_total", "").await,
    );
    assert!(after < before / 2.0, "bytes written before and after compression: {before} and {after}");
}

#[tokio::test]
async fn compressed_client_messages_are_read_and_a_bomb_closes_1009() {
    let stack = Stack::start_with(&[("WS_MAX_FRAME_BYTES", (64 << 10).to_string())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut client = DeflateClient::connect(&stack, &section, Some("permessage-deflate")).await;
    assert_eq!(client.next().await.json()["event"], "section.snapshot");

    let ping = format!(r#"{{"event":"ping","padding":"{}"}}"#, "p".repeat(4000));
    client.send(0x81 | RSV1, &deflate(ping.as_bytes())).await;
    assert_eq!(client.next().await.json(), json!({"event": "pong"}));
    // In two fragments, the second after a ping of the client's own.
    let compressed = deflate(ping.as_bytes());
    let (head, tail) = compressed.split_at(compressed.len() / 2);
    client.send(0x01 | RSV1, head).await;
    client.send(0x89, b"hi").await;
    client.send(0x80, tail).await;
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let frame = client.next().await;
        answers.push(if frame.first & 0x0f == 0xA { json!("ws pong") } else { frame.json() });
    }
    // The control frame was answered at once, the message once complete: in
    // either order, as the writer meets them.
    answers.sort_by_key(Value::to_string);
    assert_eq!(answers, vec![json!("ws pong"), json!({"event": "pong"})]);

    let bomb = deflate(&vec![b' '; 8 << 20]);
    assert!(bomb.len() < 64 << 10, "{} compressed bytes: under the frame limit", bomb.len());
    client.send(0x81 | RSV1, &bomb).await;
    let close = client.next().await;
    assert_eq!(close.first & 0x0f, 0x8, "a close frame");
    assert_eq!(u16::from_be_bytes([close.wire[0], close.wire[1]]), 1009);
    assert_eq!(stack.metric("mesaya_client_messages_total", r#"kind="too_large""#).await, 1.0);
}

#[tokio::test]
async fn with_compression_off_an_offer_is_declined_and_frames_are_text() {
    let stack = Stack::start_with(&[("WS_COMPRESSION", "off".into())]).await;
    let section = new_id();
    serve_fifty_tables(&stack, &section);
    let mut client = DeflateClient::connect(&stack, &section, Some(OFFER)).await;
    assert_eq!(client.extensions, None);
    let snapshot = client.next().await;
    assert!(!snapshot.compressed());
    assert_eq!(snapshot.json()["payload"]["tables"].as_array().unwrap().len(), 50);
    // One at a time (started in the loop): each reads the first event after its snapshot.
    let clients: [(&str, StartInterop); 2] = [("python", python), ("node", node)];
    for (who, start) in clients {
        let mut interop = start(&stack, &section, "offer");
        let hello = interop.line().await;
        assert_eq!((hello["step"].as_str(), &hello["extensions"]), (Some("snapshot"), &Value::Null), "{who}");
        let table_id = new_id();
        stack.publish(TABLES, &v2("updated", &table_id, big_table(&table_id, &section, 1, 600))).await;
        interop.finish(&table_id).await;
    }
    assert_eq!(stack.metric(COMPRESSED, "").await, 0.0, "nothing compressed at all");
}

#[tokio::test]
async fn python_websockets_and_node_ws_read_compressed_frames_and_send_compressed_messages() {
    let stack = Stack::start().await;
    let section = new_id();
    serve_fifty_tables(&stack, &section);
    let clients: [(&str, &str, StartInterop); 4] = [
        ("python", "offer", python),
        ("node", "offer", node),
        ("python", "no-offer", python),
        ("node", "no-offer", node),
    ];
    // One at a time: each reads the first event after its snapshot.
    for (who, offer, start) in clients {
        let mut interop = start(&stack, &section, offer);
        let hello = interop.line().await;
        assert_eq!(hello["step"], "snapshot", "{who}");
        assert_eq!(hello["tables"], 50, "{who}");
        let negotiated = hello["extensions"].as_str().is_some_and(|ext| ext.starts_with("permessage-deflate"));
        assert_eq!(negotiated, offer == "offer", "{who} {offer}: {hello}");
        let table_id = new_id();
        stack.publish(TABLES, &v2("updated", &table_id, big_table(&table_id, &section, 1, 600))).await;
        interop.finish(&table_id).await;
    }
    let (before, after) = (
        stack.metric("mesaya_compression_bytes_before_total", "").await,
        stack.metric("mesaya_compression_bytes_after_total", "").await,
    );
    assert!(after > 0.0 && after < before / 2.0, "compressed bytes went out: {before} before, {after} after");
}

/// Starts an interop client (Python or Node) on a section, with an offer mode.
type StartInterop = fn(&Stack, &str, &str) -> Interop;

/// A Python or Node client script running against the stack; its stdout
/// lines are read on a thread of their own.
struct Interop {
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Interop {
    fn start(mut command: Command) -> Interop {
        let mut child =
            command.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        Interop { child, lines }
    }

    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.recv()).await.expect("the client's next step");
        let line = line.unwrap_or_else(|| panic!("the client ended early (its stderr is above)"));
        serde_json::from_str(&line).unwrap()
    }

    /// The event after the snapshot, then the pong to its compressed ping,
    /// then a clean exit.
    async fn finish(mut self, table_id: &str) {
        let event = self.line().await;
        assert_eq!((event["event"].as_str(), event["id"].as_str()), (Some("table.updated"), Some(table_id)));
        assert_eq!(self.line().await, json!({"step": "pong", "event": "pong"}));
        wait::until(WAIT, "the client exits", || self.child.try_wait().unwrap().is_some()).await;
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

impl Drop for Interop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python(stack: &Stack, section: &str, offer: &str) -> Interop {
    let python = std::env::var_os("INTEROP_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let mut command = Command::new(python);
    command.arg(repo().join("tests/interop/python_client.py")).arg(stack.ws_url(section, &token())).arg(offer);
    Interop::start(command)
}

fn node(stack: &Stack, section: &str, offer: &str) -> Interop {
    let modules = repo().join("clients/js/node_modules");
    assert!(modules.join("ws").is_dir(), "Node's ws is missing: run `npm ci` in clients/js");
    let mut command = Command::new("node");
    command
        .arg(repo().join("tests/interop/node_client.cjs"))
        .arg(stack.ws_url(section, &token()))
        .arg(offer)
        .env("NODE_PATH", modules);
    Interop::start(command)
}
