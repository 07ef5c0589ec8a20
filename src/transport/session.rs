//! One client connection's I/O, from adoption to close: the WebSocket over
//! the adopted socket, the connect use case, then a writer (this task) and a
//! reader (a child task, started before the snapshot call so that a client
//! who leaves early cancels it).

use std::cell::Cell;
use std::future::pending;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use tracing::Instrument;

use crate::application::connect::{self, Connected, Interruption, Registration};
use crate::application::outbox::Outbox;
use crate::application::ports::{SnapshotRequest, SnapshotSource};
use crate::domain::frame::Frame;
use crate::domain::protocol::{self, CloseCode};
use crate::telemetry::METRICS;
use crate::telemetry::events::SessionClosed;

use super::context::ShardState;
use super::mailbox::HandedOff;
use super::rate::TokenBucket;

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// A deadline that never comes in practice, without overflowing `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);
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
    registration: Registration,
    _session_guard: mpsc::Sender<()>,
) {
    // Held to the end: the registration leaves the hub and the permit frees
    // the session's place when this task ends, however it ends.
    let HandedOff { stream, read_buf, section, token, claims, client, permit: _permit } = handed_off;
    let connections = METRICS.connections.with_label_values(&[&state.index.to_string()]);
    connections.inc();
    let span = tracing::info_span!(
        "session",
        %section,
        shard = state.index,
        sub = %claims.subject,
        client = %client.addr,
        request_id = %client.request_id,
    );
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
        let request =
            SnapshotRequest { section, token: &token, client_addr: client.addr, request_id: &client.request_id };
        serve(&state, socket, registration.outbox(), request, claims.expires_at).await;
        Ok::<(), std::io::Error>(())
    }
    .instrument(span)
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "could not adopt the socket");
    }
    connections.dec();
}

async fn serve<S: SnapshotSource>(
    state: &ShardState<S>,
    socket: WebSocketStream<TcpStream>,
    outbox: &Rc<Outbox>,
    request: SnapshotRequest<'_>,
    expires_at: Option<u64>,
) {
    let (mut sink, stream) = socket.split();
    let last_pong = Rc::new(Cell::new(None));
    let mut reader = tokio::task::spawn_local(read_client(
        stream,
        Rc::clone(outbox),
        Rc::clone(&last_pong),
        state.ctx.session.client_messages_per_second,
    ));
    // Dropping a JoinHandle detaches the task: a reader still waiting on a
    // peer that went silent would keep the socket open, and the outbox
    // alive, until that peer sent something: for a dead peer, never. The
    // session is over once the writer is: end it too.
    let reader_abort = reader.abort_handle();

    let interrupted = async {
        tokio::select! {
            () = state.ctx.shutdown.triggered() => Interruption::Shutdown,
            _ = &mut reader => Interruption::ClientGone,
        }
    };
    let (reports, floor) = (&state.section_reports, &state.ctx.floor);
    let connected = connect::fetch_snapshot(&state.snapshots, reports, floor, outbox, request, interrupted).await;
    if connected != Connected::Interrupted(Interruption::ClientGone) {
        let liveness = Liveness { last_pong: &last_pong, expires_at };
        write_live(state, &mut sink, outbox, liveness, reader).await;
    }
    reader_abort.abort();
}

/// What tells the writer that its client is still there and still allowed.
struct Liveness<'a> {
    /// When the reader last saw a pong.
    last_pong: &'a Cell<Option<Instant>>,
    /// The token's `exp`, in seconds since the epoch.
    expires_at: Option<u64>,
}

/// One I/O step of the writer. Pings and frames are buffered (`feed`) and
/// flushed once nothing is left to buffer.
enum Step {
    Ping,
    Frame { seq: u64, frame: Frame },
    Flush,
    Idle,
}

/// Writes queued frames until a close is requested or the peer goes away.
///
/// Nothing here waits on the socket outside the one I/O step per turn, and
/// every timer stays armed while that step waits, so a client that stops
/// reading cannot stall the pings, the pong deadline, the token's expiry, a
/// requested close or shutdown. A step that makes no progress for
/// `WS_WRITE_TIMEOUT` drops the client.
async fn write_live<S>(
    state: &ShardState<S>,
    sink: &mut Sink,
    outbox: &Outbox,
    liveness: Liveness<'_>,
    mut reader: JoinHandle<()>,
) {
    let settings = &state.ctx.session;
    let shutdown = &state.ctx.shutdown;
    let shutdown_triggered = shutdown.triggered();
    tokio::pin!(shutdown_triggered);
    let mut ping = tokio::time::interval_at(Instant::now() + settings.ping_interval, settings.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let expiry = sleep_until(expiry_instant(liveness.expires_at, settings.token_leeway));
    tokio::pin!(expiry);
    // When the oldest unanswered ping was buffered, and when that ping's
    // pong is due.
    let mut ping_sent: Option<Instant> = None;
    let pong_deadline = sleep_until(Instant::now() + FAR_FUTURE);
    tokio::pin!(pong_deadline);
    // Armed while there is something to write. Progress only moves
    // `progressed_at`; the timer catches up when it fires, so a busy
    // connection does not touch the timer wheel once per frame.
    let write_deadline = sleep_until(Instant::now() + FAR_FUTURE);
    tokio::pin!(write_deadline);
    let mut writing = false;
    let mut progressed_at = Instant::now();
    let mut ping_due = false;
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
        let step = if ping_due {
            Step::Ping
        } else if let Some(next) = outbox.front() {
            Step::Frame { seq: next.seq, frame: next.frame }
        } else if unflushed {
            Step::Flush
        } else {
            Step::Idle
        };
        match (&step, writing) {
            (Step::Idle, _) => writing = false,
            (_, false) => {
                writing = true;
                progressed_at = Instant::now();
                write_deadline.as_mut().reset(progressed_at + settings.write_timeout);
            }
            (_, true) => {}
        }
        // `feed` takes a message only once it is buffered, and a flush
        // resumes where it stopped, so losing a race to another branch
        // drops nothing.
        let io_step = async {
            match &step {
                Step::Ping => sink.feed(Message::Ping(Bytes::new())).await,
                Step::Frame { frame, .. } => sink.feed(text(frame)).await,
                Step::Flush => sink.flush().await,
                Step::Idle => pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut reader, if !reader_done => reader_done = true,
            () = &mut shutdown_triggered, if !shutting_down => {}
            () = &mut expiry => outbox.request_close(CloseCode::TOKEN_EXPIRED, false),
            () = &mut write_deadline, if writing => {
                let due = progressed_at + settings.write_timeout;
                if due > Instant::now() {
                    write_deadline.as_mut().reset(due);
                } else {
                    tracing::info!(timeout = ?settings.write_timeout, "socket took no bytes; dropping");
                    return;
                }
            }
            () = &mut pong_deadline, if ping_sent.is_some() => {
                if liveness.last_pong.get() < ping_sent {
                    tracing::info!("peer stopped answering pings; dropping");
                    return;
                }
                ping_sent = None;
            }
            _ = ping.tick() => ping_due = true,
            written = io_step => {
                if written.is_err() {
                    return;
                }
                progressed_at = Instant::now();
                match step {
                    Step::Ping => {
                        ping_due = false;
                        unflushed = true;
                        if ping_sent.is_none() {
                            let now = Instant::now();
                            ping_sent = Some(now);
                            pong_deadline.as_mut().reset(now + settings.pong_timeout);
                        }
                    }
                    Step::Frame { seq, .. } => {
                        if let Some(routed_at) = outbox.pop_written(seq) {
                            METRICS.delivery_seconds.observe(routed_at.elapsed().as_secs_f64());
                        }
                        METRICS.frames_sent.inc();
                        unflushed = true;
                    }
                    Step::Flush => unflushed = false,
                    Step::Idle => {}
                }
            }
            () = outbox.changed() => {}
        }
    }
}

/// When a token expiring at `exp` (plus the leeway) ends the session. Any
/// `exp`, however far out, gives an instant that exists.
fn expiry_instant(expires_at: Option<u64>, leeway: Duration) -> Instant {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let remaining = match expires_at {
        // A token without `exp` never verifies (it is a required claim).
        None => FAR_FUTURE,
        Some(exp) => Duration::from_secs(exp.saturating_add(leeway.as_secs()).saturating_sub(now)).min(FAR_FUTURE),
    };
    Instant::now() + remaining
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

/// Reads client frames until the peer closes or misbehaves. Every frame,
/// control frames included, counts against the client's rate: a flood of
/// pings would otherwise burn the shard thread every section on it shares.
async fn read_client(
    mut stream: SplitStream<WebSocketStream<TcpStream>>,
    outbox: Rc<Outbox>,
    last_pong: Rc<Cell<Option<Instant>>>,
    messages_per_second: u32,
) {
    let mut bucket = TokenBucket::new(messages_per_second);
    let count = |kind: &str| METRICS.client_messages.with_label_values(&[kind]).inc();
    while let Some(message) = stream.next().await {
        let refusal = match message {
            Ok(Message::Close(_)) => break,
            Ok(_) if !bucket.allow() => {
                count("rate_limited");
                Some(CloseCode::POLICY_VIOLATION)
            }
            Ok(Message::Text(text)) => {
                if protocol::is_application_ping(&text) {
                    count("ping");
                    outbox.push_control(PONG);
                } else {
                    count("ignored");
                }
                None
            }
            Ok(Message::Binary(_)) => {
                count("binary");
                Some(CloseCode::UNSUPPORTED_DATA)
            }
            Ok(Message::Pong(_)) => {
                last_pong.set(Some(Instant::now()));
                None
            }
            // Pings are answered by tungstenite.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn any_expiry_gives_an_instant_that_exists() {
        let leeway = Duration::from_secs(5);
        let far = Instant::now() + FAR_FUTURE;
        assert_eq!(expiry_instant(Some(u64::MAX), leeway), far, "exp near u64::MAX saturates");
        assert_eq!(expiry_instant(None, leeway), far);
        assert_eq!(expiry_instant(Some(0), leeway), Instant::now(), "long expired: at once");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let in_a_minute = expiry_instant(Some(now + 60), leeway) - Instant::now();
        assert!((Duration::from_secs(64)..=Duration::from_secs(65)).contains(&in_a_minute), "{in_a_minute:?}");
    }
}
