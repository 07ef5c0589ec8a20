//! One client connection's I/O, from adoption to close: the WebSocket over
//! the adopted socket, the connect use case, then a writer (this task) and a
//! reader (a child task, started before the snapshot call so that a client
//! who leaves early cancels it).

use std::cell::{Cell, RefCell};
use std::future::pending;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tracing::Instrument;

use crate::application::connect::{self, Connected, Interruption, Registration, SnapshotPorts};
use crate::application::outbox::{DirectWriter, Outbox, PushOutcome};
use crate::application::ports::{SnapshotRequest, SnapshotSource};
use crate::application::refresh::{self, RefreshRules, TokenRefreshed};
use crate::application::resume::{self, NoPosition, Now, PositionFor, PositionSchedule, ResumeSettings};
use crate::domain::access::Claims;
use crate::domain::audience::{UserId, Viewer};
use crate::domain::frame::Frame;
use crate::domain::ids::SectionId;
use crate::domain::protocol::{self, ClientMessage, CloseCode};
use crate::telemetry::events::{PositionsWithheld, SessionClosed};
use crate::telemetry::{Counted, METRICS};

use super::context::{ServerContext, ShardState};
use super::frame_meter::{FrameMeter, Metered};
use super::inflate::Inflating;
use super::mailbox::HandedOff;
use super::wire::{ReadOnly, WireWriter};

/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// A deadline that never comes in practice, without overflowing `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(365 * 24 * 3600);
/// tungstenite allocates its read buffer eagerly, 128 KiB by default: 125 MiB
/// per thousand clients. Clients here only send the occasional ping, and
/// the buffer still grows for a larger message (up to the frame cap).
const READ_BUFFER_BYTES: usize = 256;
const PONG: Frame = Frame::from_static(protocol::PONG_FRAME);

/// A client adopted by its shard: registered on its section, and resumed
/// already if the resume buffer could serve it.
pub struct Admitted {
    pub handed_off: HandedOff,
    /// Who it is, for its audience (decided when it goes live).
    pub viewer: Viewer,
    pub registration: Registration,
    /// Served from the resume buffer already (no snapshot call), continuing
    /// a chain of resumes begun then (seconds since the epoch).
    pub resumed_chain: Option<u64>,
}

/// Starts a client's session on this shard: its reader task now, and the
/// returned future (spawned by the caller) for everything else.
///
/// The setup is done here, outside any future, because a task's future
/// reserves room for everything it ever holds until the session ends: the
/// returned one keeps only what a live session needs, so that an idle
/// connection costs little memory and a connect moves few bytes.
pub fn start<S: SnapshotSource + 'static>(state: Rc<ShardState<S>>, admitted: Admitted) -> impl Future<Output = ()> {
    let Admitted { handed_off, viewer, registration, resumed_chain } = admitted;
    let HandedOff { stream, read_buf, section, token, claims, client, permit, resume, deflate } = handed_off;
    // Only what the session needs from here on is kept: the rest (roles,
    // permissions, a resume token) is freed now.
    let Claims { expires_at, .. } = claims;
    let opted_in = resume.is_some();
    drop(resume);
    let log = SessionLog {
        section,
        shard: state.index,
        sub: viewer.subject.clone(),
        client: client.addr,
        request_id: client.request_id,
    };
    // TCP_NODELAY was set when it was accepted and stays with the socket.
    let client = TcpStream::from_std(stream).map(|socket| {
        let socket = Rc::new(socket);
        let settings = &state.ctx.session;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(settings.max_frame_bytes))
            .max_frame_size(Some(settings.max_frame_bytes));
        // A copy of the few pipelined bytes, so that hyper's whole read
        // buffer, which `read_buf` is a slice of, is freed now.
        let incoming = Incoming { reading: ReadOnly(Rc::clone(&socket)), pipelined: read_buf.to_vec(), config };
        // The reader starts before the snapshot call, so that a client who
        // leaves early cancels it. It makes the WebSocket stream itself, so
        // the session's future never holds one.
        let heard = Rc::new(Heard::default());
        let outbox = Rc::clone(registration.outbox());
        let meter = FrameMeter::new(settings.client_messages_per_second, settings.pong_timeout);
        let refresher = Rc::new(Refresher { ctx: Arc::clone(&state.ctx), section, holder: viewer.subject.clone() });
        let peer = Peer { outbox: Rc::clone(&outbox), heard: Rc::clone(&heard), refresher: Rc::clone(&refresher) };
        let inflate_up_to = deflate.then_some(settings.max_frame_bytes);
        let reader = spawn_reader(incoming, peer, meter, inflate_up_to);
        let writer = Rc::new(WireWriter::new(socket, deflate));
        Client { reader, heard, writer, outbox, refresher, token, viewer, expires_at, resumed_chain, opted_in, deflate }
    });
    // Held to the end: the registration leaves the hub, and the permit frees
    // the session's place (a draining shard waits for every place to be
    // free) when this future ends, however it ends.
    let held = (registration, permit);
    async move {
        let _held = held;
        match client {
            Ok(client) => {
                let connections = METRICS.connections.with_label_values(&[&state.index.to_string()]);
                let _counted = Counted::new(&connections);
                serve(&state, client, &log).await;
            }
            Err(error) => log.span().in_scope(|| tracing::warn!(%error, "could not adopt the socket")),
        }
    }
}

/// Who a session's log lines are about. A span is made around each line
/// (and around the snapshot call) rather than kept for the session's life:
/// a span the subscriber holds costs kilobytes per connection.
struct SessionLog {
    section: SectionId,
    shard: usize,
    /// The token's `sub`, in the spelling positions are bound to.
    sub: UserId,
    client: IpAddr,
    /// Also sent to the API as `X-Request-Id`.
    request_id: String,
}

impl SessionLog {
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "session",
            section = %self.section,
            shard = self.shard,
            sub = self.sub.as_str(),
            client = %self.client,
            request_id = %self.request_id,
        )
    }
}

/// The connection's parts the session drives once the reader runs.
struct Client {
    reader: JoinHandle<ReaderEnd>,
    heard: Rc<Heard>,
    writer: Rc<WireWriter>,
    outbox: Rc<Outbox>,
    refresher: Rc<Refresher>,
    /// Needed only for the snapshot call, and freed after it.
    token: String,
    viewer: Viewer,
    expires_at: Option<u64>,
    /// Served from the resume buffer already: see [`Admitted`].
    resumed_chain: Option<u64>,
    /// Asked for `section.position` frames (`?resume=`).
    opted_in: bool,
    /// Negotiated permessage-deflate: its snapshot is sent compressed.
    deflate: bool,
}

async fn serve<S: SnapshotSource>(state: &ShardState<S>, client: Client, log: &SessionLog) {
    let Client {
        mut reader,
        heard,
        writer,
        outbox,
        refresher,
        token,
        viewer,
        expires_at,
        resumed_chain,
        opted_in,
        deflate,
    } = client;
    // Dropping a JoinHandle detaches the task: a reader still waiting on a
    // peer that went silent would keep the socket open, and the outbox
    // alive, until that peer sent something: for a dead peer, never. The
    // session is over once the writer is: end it too.
    let reader_abort = reader.abort_handle();

    let ports = SnapshotPorts {
        snapshots: &state.snapshots,
        reports: &state.section_reports,
        floor: &state.ctx.floor,
        owners: &state.ctx.restaurants,
        deflater: state.snapshot_deflater.as_ref().filter(|_| deflate),
    };
    let request =
        SnapshotRequest { section: log.section, token: &token, client_addr: log.client, request_id: &log.request_id };
    // How the reader ended, if it did during the snapshot call.
    let reader_end = Cell::new(None);
    let connected = if resumed_chain.is_some() {
        Connected::Live { skipped: 0 }
    } else {
        let interrupted = async {
            tokio::select! {
                () = state.ctx.shutdown.triggered() => Interruption::Shutdown,
                end = &mut reader => {
                    reader_end.set(Some(end.unwrap_or(ReaderEnd::Done)));
                    Interruption::ClientGone
                }
            }
        };
        // Boxed: the HTTP call's future is large and lives only until the
        // snapshot arrives, while the session's own future lives for hours.
        Box::pin(connect::fetch_snapshot(ports, &outbox, request, &viewer, interrupted)).instrument(log.span()).await
    };
    drop((token, viewer));
    if connected != Connected::Interrupted(Interruption::ClientGone) {
        let audience = matches!(connected, Connected::Live { .. })
            .then(|| METRICS.audience_connections.with_label_values(&[outbox.audience().label()]));
        let _counted = audience.as_ref().map(Counted::new);
        // Positions only for clients that asked, on an instance that signs them.
        // A snapshot begins a chain of resumes; a resume carries its own on.
        let chain_started = resumed_chain.unwrap_or_else(|| Now::current().unix_secs);
        let positions =
            state.ctx.resume.as_ref().filter(|_| opted_in).map(|settings| PositionTerms { settings, chain_started });
        // The shard's loop writes this client's events itself; a client with
        // positions keeps them to its writer task, which times them.
        if positions.is_none() {
            outbox.attach(Rc::clone(&writer) as Rc<dyn DirectWriter>);
        }
        // A refresh sent during the snapshot call is answered now.
        if let Some(token) = heard.pending_refresh.take() {
            refresher.answer(token.as_deref(), &outbox, &heard);
        }
        let terms = LiveTerms { expires_at, positions };
        write_live(state, &writer, &outbox, &heard, terms, reader, log).await;
        outbox.detach();
    } else if let Some(code) = close_before_live(reader_end.get(), &outbox) {
        log.span().in_scope(|| SessionClosed { code }.emit());
        let _ = tokio::time::timeout(CLOSE_GRACE, writer.close(code)).await;
    }
    reader_abort.abort();
}

/// The close frame owed to a client whose reader ended during the snapshot
/// call: the answer to its own close, or the code its frames earned.
fn close_before_live(reader_end: Option<ReaderEnd>, outbox: &Outbox) -> Option<CloseCode> {
    match reader_end {
        Some(ReaderEnd::PeerClosed) => Some(CloseCode::CLOSE_ACKNOWLEDGED),
        _ => outbox.close_request().map(|close| close.code),
    }
}

/// What the reader heard that the writer must act on.
#[derive(Default)]
struct Heard {
    /// When the last pong came.
    last_pong: Cell<Option<Instant>>,
    /// The payload of the latest unanswered ping (only the latest needs an
    /// answer).
    ping: RefCell<Option<Bytes>>,
    /// A refresh took: the token's new `exp`.
    refreshed: Cell<Option<u64>>,
    /// The latest refresh sent before the connection went live, with its
    /// token (if it had one): answered once it is.
    pending_refresh: RefCell<Option<Option<String>>>,
}

/// What the reader answers a client with.
struct Peer {
    outbox: Rc<Outbox>,
    heard: Rc<Heard>,
    refresher: Rc<Refresher>,
}

/// Answers a connection's `auth.refresh` frames (SPEC §2.8): the decision is
/// the refresh use case's; this only carries its frames.
struct Refresher {
    ctx: Arc<ServerContext>,
    section: SectionId,
    /// The connection's user: a refresh must be of the same.
    holder: UserId,
}

impl Refresher {
    fn answer(&self, token: Option<&str>, outbox: &Outbox, heard: &Heard) {
        let ctx = &self.ctx;
        let rules =
            RefreshRules { authorizer: &ctx.authorizer, staff_roles: &ctx.staff_roles, owners: &ctx.restaurants };
        let outcome = refresh::refresh(&rules, self.section, &self.holder, token);
        let frame = match &outcome {
            Ok(refreshed) => {
                outbox.set_audience(refreshed.audience.clone());
                heard.refreshed.set(Some(refreshed.expires_at));
                Frame::auth_refreshed(refreshed.expires_at)
            }
            Err(failure) => Frame::auth_refresh_failed(failure.label()),
        };
        outbox.push_control(frame);
        TokenRefreshed { outcome: outcome.map(|refreshed| refreshed.expires_at) }.emit();
    }
}

/// How the reader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderEnd {
    /// The client sent a close frame: it gets one back.
    PeerClosed,
    /// The connection broke, or the close handshake the server began ended.
    Done,
}

/// What a live session owes its client besides frames.
struct LiveTerms<'a> {
    /// The token's `exp`: the session ends then (4401).
    expires_at: Option<u64>,
    /// `section.position` frames, for a client that opted in.
    positions: Option<PositionTerms<'a>>,
}

/// What a client's `section.position` frames are made of.
#[derive(Clone, Copy)]
struct PositionTerms<'a> {
    settings: &'a ResumeSettings,
    /// When its chain of resumes began.
    chain_started: u64,
}

/// Writes queued frames until a close is requested or the peer goes away.
///
/// Nothing here waits on the socket outside the one I/O step per turn
/// (waiting until it takes bytes), and every timer stays armed while that
/// step waits, so a client that stops reading cannot stall the pings, the
/// pong deadline, the token's expiry, a requested close or shutdown. A
/// socket that takes no bytes for `WS_WRITE_TIMEOUT` drops the client.
async fn write_live<S>(
    state: &ShardState<S>,
    writer: &WireWriter,
    outbox: &Outbox,
    heard: &Heard,
    terms: LiveTerms<'_>,
    mut reader: JoinHandle<ReaderEnd>,
    log: &SessionLog,
) {
    let LiveTerms { mut expires_at, positions } = terms;
    let settings = &state.ctx.session;
    // Shutdown has no future of its own here (one per idle session is
    // memory): the shard wakes every outbox when it is triggered.
    let shutdown = &state.ctx.shutdown;
    let mut deadlines = Deadlines {
        ping: Instant::now() + settings.ping_interval,
        pong: None,
        expiry: Some(expiry_instant(expires_at, settings.token_leeway)),
        notice: notice_instant(expires_at, settings.refresh_notice),
        write: None,
        position: None,
    };
    let window = positions.map_or(FAR_FUTURE, |terms| terms.settings.window);
    let mut position_schedule = PositionSchedule::new(window, Instant::now().into_std());
    // One timer for every deadline: each armed timer costs an idle
    // connection its memory, and each wake-up polls every armed one.
    let timer = sleep_until(deadlines.next());
    tokio::pin!(timer);
    // When the oldest unanswered ping was queued.
    let mut ping_sent: Option<Instant> = None;
    // Progress (the writer's, whether this task or the shard's loop wrote)
    // does not move the write deadline: the deadline catches up when it
    // comes, so a busy connection does not touch the timer wheel once per
    // write. `output_since` is when the current wait for the socket began.
    let mut output_since = Instant::now();
    let mut reader_end = None;
    let mut shutting_down = false;

    loop {
        if !shutting_down && shutdown.is_triggered() {
            shutting_down = true;
            // The last position, behind everything queued, right before the
            // 1001: the client resumes elsewhere from exactly there.
            if let Some(terms) = positions {
                queue_position(state, terms, outbox, log);
            }
            outbox.request_close(CloseCode::GOING_AWAY, true);
        }
        if let Some(close) = outbox.close_request()
            && (!close.after_drain || (!outbox.has_writable() && !writer.has_started()))
        {
            log.span().in_scope(|| SessionClosed { code: close.code }.emit());
            let _ = tokio::time::timeout(CLOSE_GRACE, writer.close(close.code)).await;
            if reader_end.is_none() {
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
            }
            return;
        }
        match reader_end {
            // Nothing asked for a close frame; the peer's own gets its answer.
            Some(ReaderEnd::PeerClosed) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, writer.close(CloseCode::CLOSE_ACKNOWLEDGED)).await;
                return;
            }
            Some(ReaderEnd::Done) => return,
            None => {}
        }
        if let Some(payload) = heard.ping.take() {
            writer.queue_pong(payload);
        }
        // A refresh moves the one expiry deadline, and the notice with it.
        if let Some(exp) = heard.refreshed.take() {
            expires_at = Some(exp);
            deadlines.expiry = Some(expiry_instant(expires_at, settings.token_leeway));
            deadlines.notice = notice_instant(expires_at, settings.refresh_notice);
        }
        let has_output = writer.has_started() || outbox.has_writable();
        match (has_output, deadlines.write) {
            (true, None) => {
                output_since = Instant::now();
                deadlines.write = Some(output_since + settings.write_timeout);
            }
            (false, Some(_)) => deadlines.write = None,
            _ => {}
        }
        if positions.is_some() {
            deadlines.position = position_schedule.due().map(Instant::from_std);
        }
        let next = deadlines.next();
        if timer.deadline() != next {
            timer.as_mut().reset(next);
        }
        let io_step = async { if has_output { writer.writable().await } else { pending().await } };
        tokio::select! {
            biased;
            end = &mut reader, if reader_end.is_none() => reader_end = Some(end.unwrap_or(ReaderEnd::Done)),
            () = &mut timer => {
                let now = Instant::now();
                if deadlines.expiry.is_some_and(|due| due <= now) {
                    deadlines.expiry = None;
                    outbox.request_close(CloseCode::TOKEN_EXPIRED, false);
                }
                if let Some(exp) = expires_at
                    && deadlines.notice.is_some_and(|due| due <= now)
                {
                    // Once per token: a refresh arms the next one.
                    deadlines.notice = None;
                    outbox.push_control(Frame::auth_expiring(exp));
                }
                if deadlines.write.is_some_and(|due| due <= now) {
                    let caught_up = output_since.max(writer.progressed_at()) + settings.write_timeout;
                    if caught_up <= now {
                        let timeout = settings.write_timeout;
                        log.span().in_scope(|| tracing::info!(?timeout, "socket took no bytes; dropping"));
                        return;
                    }
                    deadlines.write = Some(caught_up);
                }
                if deadlines.pong.is_some_and(|due| due <= now) {
                    if heard.last_pong.get() < ping_sent {
                        log.span().in_scope(|| tracing::info!("peer stopped answering pings; dropping"));
                        return;
                    }
                    ping_sent = None;
                    deadlines.pong = None;
                }
                if let Some(terms) = positions
                    && deadlines.position.is_some_and(|due| due <= now)
                {
                    queue_position(state, terms, outbox, log);
                    position_schedule.queued(now.into_std());
                }
                if deadlines.ping <= now {
                    deadlines.ping = now + settings.ping_interval;
                    writer.queue_ping();
                    if ping_sent.is_none() {
                        ping_sent = Some(now);
                        deadlines.pong = Some(now + settings.pong_timeout);
                    }
                }
            }
            ready = io_step => {
                if ready.is_err() {
                    return;
                }
                let now = Instant::now();
                let position_rides_along = positions
                    .filter(|_| position_schedule.rides_along(now.into_std()))
                    .map(|terms| queue_position(state, terms, outbox, log))
                    .is_some();
                let written = match writer.write_ready(outbox) {
                    Ok(written) => written,
                    Err(_) => return,
                };
                if position_rides_along {
                    position_schedule.queued(now.into_std());
                } else if written.events > 0 {
                    position_schedule.events_written(now.into_std());
                }
            }
            () = outbox.changed() => {}
        }
    }
}

/// The session's deadlines, served by one timer.
struct Deadlines {
    /// The next ping.
    ping: Instant,
    /// When the oldest unanswered ping's pong is due.
    pong: Option<Instant>,
    /// When the token expires (plus the leeway); `None` once it has.
    expiry: Option<Instant>,
    /// When `auth.expiring` is due; `None` once sent.
    notice: Option<Instant>,
    /// While there is something to write: when the socket must have taken
    /// bytes (possibly stale: it is checked against the progress when it comes).
    write: Option<Instant>,
    /// When the next `section.position` is queued, once one is due.
    position: Option<Instant>,
}

impl Deadlines {
    fn next(&self) -> Instant {
        [self.pong, self.expiry, self.notice, self.write, self.position]
            .into_iter()
            .flatten()
            .fold(self.ping, Instant::min)
    }
}

/// Queues a `section.position` behind everything queued for the client.
fn queue_position<S>(state: &ShardState<S>, terms: PositionTerms<'_>, outbox: &Outbox, log: &SessionLog) {
    let buffer = state.resume_buffer.borrow();
    let holder = PositionFor { section: log.section, sub: log.sub.as_str(), chain_started: terms.chain_started };
    match resume::position_frame(terms.settings, &buffer, outbox, holder, Now::current()) {
        Ok(frame) => {
            if outbox.push_control(frame) == PushOutcome::Queued {
                METRICS.positions_sent.inc();
            }
        }
        Err(NoPosition::NotYet) => {}
        Err(NoPosition::TooManyPartitions) => log.span().in_scope(|| PositionsWithheld.emit()),
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

/// When `auth.expiring` is due for a token expiring at `exp`: `notice`
/// before it, or at once when that has passed.
fn notice_instant(expires_at: Option<u64>, notice: Duration) -> Option<Instant> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let due = expires_at?.saturating_sub(notice.as_secs());
    Some(Instant::now() + Duration::from_secs(due.saturating_sub(now)).min(FAR_FUTURE))
}

/// Closes a socket that no shard will serve, on the thread that holds it.
pub async fn close_unadopted(stream: std::net::TcpStream, code: CloseCode) {
    let Ok(stream) = TcpStream::from_std(stream) else { return };
    let _ = tokio::time::timeout(CLOSE_GRACE, WireWriter::new(Rc::new(stream), false).close(code)).await;
}

/// The client's side of the socket, before the WebSocket stream is made.
struct Incoming {
    reading: ReadOnly,
    /// Bytes the client sent right behind its handshake.
    pipelined: Vec<u8>,
    config: WebSocketConfig,
}

/// Starts the client's reader: through [`Inflating`] for a connection that
/// negotiated compression (its frames inflated up to `inflate_up_to`
/// bytes), straight from the meter for the others, so that they carry no
/// inflating state at all.
fn spawn_reader(
    incoming: Incoming,
    peer: Peer,
    meter: FrameMeter,
    inflate_up_to: Option<usize>,
) -> JoinHandle<ReaderEnd> {
    let Incoming { reading, pipelined, config } = incoming;
    let meter = Rc::new(RefCell::new(meter));
    if let Err(code) = meter.borrow_mut().observe(&pipelined) {
        return tokio::task::spawn_local(async move { refused(&peer.outbox, code) });
    }
    let metered = Metered::new(reading, Rc::clone(&meter));
    match inflate_up_to {
        Some(max_bytes) => {
            let inflating = Inflating::new(metered, Rc::clone(&meter), max_bytes, &pipelined);
            tokio::task::spawn_local(read_client(inflating, Vec::new(), config, peer, meter))
        }
        None => tokio::task::spawn_local(read_client(metered, pipelined, config, peer, meter)),
    }
}

/// Reads client frames until the peer closes or misbehaves. Every frame as
/// it comes off the wire, control and continuation frames included, counts
/// against the client's rate ([`FrameMeter`], under `reading`): a flood of
/// pings or of empty fragments would otherwise burn the shard thread every
/// section on it shares.
async fn read_client<R: AsyncRead + AsyncWrite + Unpin>(
    reading: R,
    pipelined: Vec<u8>,
    config: WebSocketConfig,
    peer: Peer,
    meter: Rc<RefCell<FrameMeter>>,
) -> ReaderEnd {
    let Peer { outbox, heard, refresher } = peer;
    // Boxed: making the stream is a large future that ends at once, and this
    // task's future lives as long as the connection.
    let mut stream =
        Box::pin(WebSocketStream::from_partially_read(reading, pipelined, Role::Server, Some(config))).await;
    let count = |kind: &str| METRICS.client_messages.with_label_values(&[kind]).inc();
    loop {
        let message = stream.next().await;
        // The meter ends the stream at a frame that broke its rules.
        if let Some(code) = meter.borrow().violation() {
            count(match code {
                CloseCode::POLICY_VIOLATION => "rate_limited",
                CloseCode::TOO_LARGE => "too_large",
                _ => "malformed",
            });
            return refused(&outbox, code);
        }
        let Some(message) = message else { break };
        let refusal = match message {
            Ok(Message::Close(_)) => return ReaderEnd::PeerClosed,
            Ok(Message::Text(text)) => {
                match ClientMessage::parse(&text) {
                    ClientMessage::Ping => {
                        count("ping");
                        outbox.push_control(PONG);
                    }
                    ClientMessage::Refresh(token) => {
                        count("refresh");
                        if outbox.is_live() {
                            refresher.answer(token.as_deref(), &outbox, &heard);
                        } else {
                            heard.pending_refresh.replace(Some(token));
                        }
                    }
                    ClientMessage::Other => count("ignored"),
                }
                None
            }
            Ok(Message::Binary(_)) => {
                count("binary");
                Some(CloseCode::UNSUPPORTED_DATA)
            }
            Ok(Message::Ping(payload)) => {
                heard.ping.replace(Some(payload));
                outbox.nudge();
                None
            }
            Ok(Message::Pong(_)) => {
                heard.last_pong.set(Some(Instant::now()));
                None
            }
            Ok(Message::Frame(_)) => None,
            Err(WsError::Capacity(_)) => {
                count("too_large");
                Some(CloseCode::TOO_LARGE)
            }
            Err(WsError::Utf8(_)) => {
                count("invalid_utf8");
                Some(CloseCode::INVALID_PAYLOAD)
            }
            Err(WsError::Protocol(_)) => {
                count("malformed");
                Some(CloseCode::PROTOCOL_ERROR)
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
            return ReaderEnd::Done;
        }
    }
    ReaderEnd::Done
}

/// The reader's end after a frame the meter refused: the writer closes with
/// `code`, and nothing more is read.
fn refused(outbox: &Outbox, code: CloseCode) -> ReaderEnd {
    outbox.request_close(code, false);
    ReaderEnd::Done
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
