//! One client connection's I/O, from adoption to close: the WebSocket over
//! the adopted socket, the connect use case, then a writer (this task) and a
//! reader (a child task).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::Instrument;

use crate::application::connect;
use crate::application::outbox::Outbox;
use crate::application::ports::SnapshotSource;
use crate::domain::frame::Frame;
use crate::domain::ids::SectionId;
use crate::domain::protocol::{self, CloseCode};
use crate::telemetry::METRICS;
use crate::telemetry::events::SessionClosed;

use super::context::ShardState;
use super::mailbox::HandedOff;
use super::rate::TokenBucket;

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// tungstenite allocates its read buffer eagerly, 128 KiB by default: 250 MiB
/// per thousand clients with the write buffer. Clients here only send pings,
/// and the buffer still grows for a larger message (up to the frame cap).
const READ_BUFFER_BYTES: usize = 4 << 10;
/// Frames are written out once this much is buffered, and at every flush
/// (the writer flushes whenever its queue runs empty).
const WRITE_BUFFER_BYTES: usize = 16 << 10;
const PONG: Frame = Frame::from_static(protocol::PONG_FRAME);

fn text(frame: &Frame) -> Message {
    // SAFETY: `Frame` is only ever built from `&str`, so its bytes are UTF-8;
    // skipping re-validation keeps the shared bytes a refcount bump per client.
    Message::Text(unsafe { Utf8Bytes::from_bytes_unchecked(frame.utf8_bytes().clone()) })
}

pub async fn run<S: SnapshotSource + 'static>(
    state: Rc<ShardState<S>>,
    handed_off: HandedOff,
    outbox: Rc<Outbox>,
    _session_guard: mpsc::Sender<()>,
) {
    let HandedOff { stream, read_buf, section, token, claims } = handed_off;
    let shard_label = state.index.to_string();
    let connections = METRICS.connections.with_label_values(&[&shard_label]);
    connections.inc();
    let span = tracing::info_span!("session", %section, shard = state.index, sub = %claims.subject);

    let result = async {
        let stream = TcpStream::from_std(stream)?;
        stream.set_nodelay(true)?;
        let settings = &state.ctx.session;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_message_size(Some(settings.max_frame_bytes))
            .max_frame_size(Some(settings.max_frame_bytes));
        let socket = WebSocketStream::from_partially_read(stream, read_buf.to_vec(), Role::Server, Some(config)).await;
        serve(&state, socket, &outbox, section, &token, claims.expires_at).await;
        Ok::<(), std::io::Error>(())
    }
    .instrument(span)
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "could not adopt the socket");
    }
    state.hub.borrow_mut().unsubscribe(section, &outbox);
    connections.dec();
}

async fn serve<S: SnapshotSource>(
    state: &ShardState<S>,
    socket: WebSocketStream<TcpStream>,
    outbox: &Rc<Outbox>,
    section: SectionId,
    token: &str,
    expires_at: Option<u64>,
) {
    let (mut sink, stream) = socket.split();
    let shutdown = &state.ctx.shutdown;
    connect::fetch_snapshot(&state.snapshots, &state.ctx.table_reports, outbox, section, token, shutdown.triggered())
        .await;

    let heard = Rc::new(Cell::new(Instant::now()));
    let reader = tokio::task::spawn_local(read_client(
        stream,
        Rc::clone(outbox),
        Rc::clone(&heard),
        state.ctx.session.client_messages_per_second,
    ));
    // Dropping a JoinHandle detaches the task: a reader still waiting on a
    // peer that went silent (no pongs, full socket) would keep the socket
    // open, and the outbox alive, until that peer sent something — for a
    // dead peer, never. The session is over once the writer is: end it too.
    let reader_abort = reader.abort_handle();
    write_live(state, &mut sink, outbox, &heard, expires_at, reader).await;
    reader_abort.abort();
}

/// Writes queued frames until a close is requested or the peer goes away.
/// Pings, the pong deadline and token expiry are served on every turn, so a
/// client whose queue never empties is still pinged and still expires.
async fn write_live<S>(
    state: &ShardState<S>,
    sink: &mut Sink,
    outbox: &Outbox,
    heard: &Cell<Instant>,
    expires_at: Option<u64>,
    mut reader: tokio::task::JoinHandle<()>,
) {
    let settings = &state.ctx.session;
    let shutdown = &state.ctx.shutdown;
    let shutdown_triggered = shutdown.triggered();
    tokio::pin!(shutdown_triggered);
    let mut ping = tokio::time::interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let expiry = sleep_until(expiry_instant(expires_at, settings.token_leeway));
    tokio::pin!(expiry);
    let mut reader_done = false;
    let mut shutting_down = false;
    let mut unflushed = false;

    loop {
        if !shutting_down && shutdown.is_triggered() {
            shutting_down = true;
            outbox.request_close(CloseCode::GOING_AWAY, true);
        }
        if let Some(close) = outbox.close_request()
            && (!close.after_drain || outbox.front().is_none())
        {
            SessionClosed { code: close.code }.emit();
            let _ = tokio::time::timeout(CLOSE_GRACE, send_close(sink, close.code)).await;
            if !reader_done {
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            }
            return;
        }
        if reader_done {
            return; // the peer is gone and nothing asked for a close frame
        }
        let front = outbox.front();
        // One I/O step per turn: buffer the next frame, or flush once the
        // queue is empty. `feed` takes a message only once it is buffered and
        // a flush resumes where it stopped, so losing a race to another
        // branch drops nothing that was queued.
        let io_step = async {
            match &front {
                Some(frame) => sink.feed(text(frame)).await.map(|()| true),
                None if unflushed => sink.flush().await.map(|()| false),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut reader, if !reader_done => reader_done = true,
            () = &mut shutdown_triggered, if !shutting_down => {}
            _ = &mut expiry => outbox.request_close(CloseCode::TOKEN_EXPIRED, false),
            _ = ping.tick() => {
                if heard.get().elapsed() > settings.ping_interval + settings.pong_timeout {
                    tracing::info!("peer stopped answering pings; dropping");
                    return;
                }
                if sink.feed(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
                unflushed = true;
            }
            step = io_step => match step {
                Ok(true) => {
                    if let Some(routed_at) = outbox.pop_front() {
                        METRICS.delivery_seconds.observe(routed_at.elapsed().as_secs_f64());
                    }
                    METRICS.frames_sent.inc();
                    unflushed = true;
                }
                Ok(false) => unflushed = false,
                Err(_) => return,
            },
            _ = outbox.changed() => {}
        }
    }
}

fn expiry_instant(expires_at: Option<u64>, leeway: Duration) -> Instant {
    // A token without `exp` never verifies (it is a required claim); the far
    // future keeps the type simple.
    let Some(exp) = expires_at else { return Instant::now() + Duration::from_secs(86400 * 365) };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let remaining = (exp + leeway.as_secs()).saturating_sub(now);
    Instant::now() + Duration::from_secs(remaining)
}

/// Closes a socket that no shard will serve, on the thread that holds it.
pub async fn close_unadopted(stream: std::net::TcpStream, code: CloseCode) {
    let Ok(stream) = TcpStream::from_std(stream) else { return };
    let socket = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
    let (mut sink, _) = socket.split();
    let _ = tokio::time::timeout(CLOSE_GRACE, send_close(&mut sink, code)).await;
}

async fn send_close(sink: &mut Sink, code: CloseCode) {
    let frame = CloseFrame { code: code.code.into(), reason: code.reason.into() };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

async fn read_client(
    mut stream: SplitStream<WebSocketStream<TcpStream>>,
    outbox: Rc<Outbox>,
    heard: Rc<Cell<Instant>>,
    messages_per_second: u32,
) {
    let mut bucket = TokenBucket::new(messages_per_second);
    let count = |kind: &str| METRICS.client_messages.with_label_values(&[kind]).inc();
    while let Some(message) = stream.next().await {
        heard.set(Instant::now());
        let refusal = match message {
            Ok(Message::Text(text)) => {
                if !bucket.allow() {
                    count("rate_limited");
                    Some(CloseCode::POLICY_VIOLATION)
                } else if protocol::is_application_ping(&text) {
                    count("ping");
                    outbox.push_control(PONG);
                    None
                } else {
                    count("ignored");
                    None
                }
            }
            Ok(Message::Binary(_)) => {
                count("binary");
                Some(CloseCode::UNSUPPORTED_DATA)
            }
            Ok(Message::Close(_)) => break,
            // Pings are answered by tungstenite; pongs only prove liveness.
            Ok(_) => None,
            Err(WsError::Capacity(_)) => {
                count("too_large");
                Some(CloseCode::TOO_LARGE)
            }
            Err(WsError::Utf8(_)) => {
                count("invalid_utf8");
                Some(CloseCode::INVALID_PAYLOAD)
            }
            Err(_) => break,
        };
        if let Some(code) = refusal {
            outbox.request_close(code, false);
            // Keep reading until the peer answers our close frame.
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
            return;
        }
    }
}
