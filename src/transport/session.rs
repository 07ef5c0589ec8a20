//! One client connection's I/O, from adoption to close: the WebSocket over
//! the adopted socket, the connect use case, then a writer (this task) and a
//! reader (a child task, started before the snapshot call so that a client
//! who leaves early cancels it).

use std::cell::{Cell, RefCell};
use std::future::pending;
use std::net::IpAddr;
use std::ops::ControlFlow::{self, Break, Continue};
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
use crate::config::SessionSettings;
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
        let client_side = ClientSide { reading: ReadOnly(Rc::clone(&socket)), pipelined: read_buf.to_vec(), config };
        // The reader starts before the snapshot call, so that a client who
        // leaves early cancels it. It makes the WebSocket stream itself, so
        // the session's future never holds one.
        let heard = Rc::new(Heard::default());
        let outbox = Rc::clone(registration.outbox());
        let meter = FrameMeter::new(settings.client_messages_per_second, settings.pong_timeout);
        let refresher = Rc::new(Refresher { ctx: Arc::clone(&state.ctx), section, holder: viewer.subject.clone() });
        let peer = Peer { outbox: Rc::clone(&outbox), heard: Rc::clone(&heard), refresher: Rc::clone(&refresher) };
        let inflate_up_to = deflate.then_some(settings.max_frame_bytes);
        let reader = spawn_reader(client_side, peer, meter, inflate_up_to);
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

    // How the reader ended, if it did during the snapshot call.
    let reader_end = Cell::new(None);
    let connected = if resumed_chain.is_some() {
        Connected::Live { skipped: 0 }
    } else {
        let phase = SnapshotPhase { outbox: &outbox, token: &token, viewer: &viewer, deflate };
        phase.fetch(state, &mut reader, &reader_end, log).await
    };
    drop((token, viewer));
    if connected != Connected::Interrupted(Interruption::ClientGone) {
        let audience = matches!(connected, Connected::Live { .. })
            .then(|| METRICS.audience_connections.with_label_values(&[outbox.audience().label()]));
        let _counted = audience.as_ref().map(Counted::new);
        let positions = position_terms(state, opted_in, resumed_chain);
        attach_direct_writer(&outbox, &writer, positions.is_some());
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

/// What the snapshot call of a session needs of it.
struct SnapshotPhase<'a> {
    outbox: &'a Outbox,
    token: &'a str,
    viewer: &'a Viewer,
    deflate: bool,
}

impl SnapshotPhase<'_> {
    /// The one snapshot call, cut short by shutdown or by the reader's end
    /// (kept in `reader_end`).
    async fn fetch<S: SnapshotSource>(
        self,
        state: &ShardState<S>,
        reader: &mut JoinHandle<ReaderEnd>,
        reader_end: &Cell<Option<ReaderEnd>>,
        log: &SessionLog,
    ) -> Connected {
        let ports = SnapshotPorts {
            snapshots: &state.snapshots,
            reports: &state.section_reports,
            floor: &state.ctx.floor,
            owners: &state.ctx.restaurants,
            deflater: state.snapshot_deflater.as_ref().filter(|_| self.deflate),
        };
        let request = SnapshotRequest {
            section: log.section,
            token: self.token,
            client_addr: log.client,
            request_id: &log.request_id,
        };
        let interrupted = async {
            tokio::select! {
                () = state.ctx.shutdown.triggered() => Interruption::Shutdown,
                end = reader => {
                    reader_end.set(Some(end.unwrap_or(ReaderEnd::Done)));
                    Interruption::ClientGone
                }
            }
        };
        // Boxed: the HTTP call's future is large and lives only until the
        // snapshot arrives, while the session's own future lives for hours.
        let fetch = connect::fetch_snapshot(ports, self.outbox, request, self.viewer, interrupted);
        Box::pin(fetch).instrument(log.span()).await
    }
}

/// Positions only for clients that asked, on an instance that signs them.
/// A snapshot begins a chain of resumes; a resume carries its own on.
fn position_terms<S>(state: &ShardState<S>, opted_in: bool, resumed_chain: Option<u64>) -> Option<PositionTerms<'_>> {
    let chain_started = resumed_chain.unwrap_or_else(|| Now::current().unix_secs);
    state.ctx.resume.as_ref().filter(|_| opted_in).map(|settings| PositionTerms { settings, chain_started })
}

/// Two writers, one socket, one outbox: the shard's loop writes what the
/// socket takes at once after each turn (no wake-up of the session's
/// task), and the session's writer task writes what is left when the
/// socket is ready again. A client with positions keeps every write to its
/// writer task: a position is scheduled from the events each write carried
/// (`PositionSchedule`), which the shard's write would bypass.
fn attach_direct_writer(outbox: &Outbox, writer: &Rc<WireWriter>, has_positions: bool) {
    if !has_positions {
        outbox.attach(Rc::clone(writer) as Rc<dyn DirectWriter>);
    }
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
///
/// Each turn: shutdown, a requested close, the reader's end, what the
/// reader heard, the deadlines re-armed; then one wait for whichever comes
/// first. Each rule is a step of [`Live`].
async fn write_live<S>(
    state: &ShardState<S>,
    writer: &WireWriter,
    outbox: &Outbox,
    heard: &Heard,
    terms: LiveTerms<'_>,
    mut reader: JoinHandle<ReaderEnd>,
    log: &SessionLog,
) {
    let mut live = Live::new(state, writer, outbox, terms, log);
    // One timer for every deadline: each armed timer costs an idle
    // connection its memory, and each wake-up polls every armed one.
    let timer = sleep_until(live.deadlines.next());
    tokio::pin!(timer);
    let mut reader_end = None;
    loop {
        live.notice_shutdown();
        if let Some(code) = live.close_due() {
            live.close(code, (reader_end.is_none()).then_some(&mut reader)).await;
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
        live.take_heard(heard);
        let has_output = live.arm_write_deadline();
        live.arm_position_deadline();
        let next = live.deadlines.next();
        if timer.deadline() != next {
            timer.as_mut().reset(next);
        }
        let io_step = async { if has_output { writer.writable().await } else { pending().await } };
        let step = tokio::select! {
            biased;
            end = &mut reader, if reader_end.is_none() => {
                reader_end = Some(end.unwrap_or(ReaderEnd::Done));
                Continue(())
            }
            () = &mut timer => live.deadlines_passed(heard, Instant::now()),
            ready = io_step => match ready {
                Ok(()) => live.write_ready(),
                Err(_) => Break(()),
            },
            () = outbox.changed() => Continue(()),
        };
        if step.is_break() {
            return;
        }
    }
}

/// A live session between two turns of [`write_live`]: its deadlines and
/// what they wait on. A step that returns `Break` drops the client without
/// a close frame (its socket or its peer has stopped answering).
struct Live<'a, S> {
    state: &'a ShardState<S>,
    writer: &'a WireWriter,
    outbox: &'a Outbox,
    log: &'a SessionLog,
    positions: Option<PositionTerms<'a>>,
    /// The token's `exp`, moved by each refresh.
    expires_at: Option<u64>,
    deadlines: Deadlines,
    position_schedule: PositionSchedule,
    /// When the oldest unanswered ping was queued.
    ping_sent: Option<Instant>,
    /// When the current wait for the socket began. Progress (the writer's,
    /// whether this task or the shard's loop wrote) does not move the write
    /// deadline: the deadline catches up when it comes, so a busy
    /// connection does not touch the timer wheel once per write.
    output_since: Instant,
    shutting_down: bool,
}

impl<'a, S> Live<'a, S> {
    fn new(
        state: &'a ShardState<S>,
        writer: &'a WireWriter,
        outbox: &'a Outbox,
        terms: LiveTerms<'a>,
        log: &'a SessionLog,
    ) -> Self {
        let LiveTerms { expires_at, positions } = terms;
        let settings = &state.ctx.session;
        let now = Instant::now();
        let deadlines = Deadlines {
            ping: now + settings.ping_interval,
            pong: None,
            expiry: Some(expiry_instant(expires_at, settings.token_leeway)),
            notice: notice_instant(expires_at, settings.refresh_notice),
            write: None,
            position: None,
        };
        let window = positions.map_or(FAR_FUTURE, |terms| terms.settings.window);
        Self {
            state,
            writer,
            outbox,
            log,
            positions,
            expires_at,
            deadlines,
            position_schedule: PositionSchedule::new(window, now.into_std()),
            ping_sent: None,
            output_since: now,
            shutting_down: false,
        }
    }

    fn settings(&self) -> &'a SessionSettings {
        &self.state.ctx.session
    }

    /// Shutdown has no future of its own here (one per idle session is
    /// memory): the shard wakes every outbox when it is triggered. The last
    /// position goes behind everything queued, right before the 1001: the
    /// client resumes elsewhere from exactly there.
    fn notice_shutdown(&mut self) {
        if self.shutting_down || !self.state.ctx.shutdown.is_triggered() {
            return;
        }
        self.shutting_down = true;
        self.queue_position();
        self.outbox.close_after_queue(CloseCode::GOING_AWAY);
    }

    /// The code of a requested close that may go now: at once, or once
    /// everything queued is written when it asked to go after the queue.
    fn close_due(&self) -> Option<CloseCode> {
        let close = self.outbox.close_request()?;
        let drained = !self.outbox.has_writable() && !self.writer.has_started();
        (!close.after_drain || drained).then_some(close.code)
    }

    /// Sends the close frame and waits a moment for the reader, when it has
    /// not ended yet, to see the peer's answer.
    async fn close(&self, code: CloseCode, reader: Option<&mut JoinHandle<ReaderEnd>>) {
        self.log.span().in_scope(|| SessionClosed { code }.emit());
        let _ = tokio::time::timeout(CLOSE_GRACE, self.writer.close(code)).await;
        if let Some(reader) = reader {
            let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
        }
    }

    /// A ping to answer, and a refresh, which moves the one expiry deadline
    /// and the notice with it.
    fn take_heard(&mut self, heard: &Heard) {
        if let Some(payload) = heard.ping.take() {
            self.writer.queue_pong(payload);
        }
        if let Some(exp) = heard.refreshed.take() {
            let settings = self.settings();
            self.expires_at = Some(exp);
            self.deadlines.expiry = Some(expiry_instant(self.expires_at, settings.token_leeway));
            self.deadlines.notice = notice_instant(self.expires_at, settings.refresh_notice);
        }
    }

    /// The write deadline is armed while there is output, and only then.
    /// Returns whether there is.
    fn arm_write_deadline(&mut self) -> bool {
        let has_output = self.writer.has_started() || self.outbox.has_writable();
        match (has_output, self.deadlines.write) {
            (true, None) => {
                self.output_since = Instant::now();
                self.deadlines.write = Some(self.output_since + self.settings().write_timeout);
            }
            (false, Some(_)) => self.deadlines.write = None,
            _ => {}
        }
        has_output
    }

    fn arm_position_deadline(&mut self) {
        if self.positions.is_some() {
            self.deadlines.position = self.position_schedule.due().map(Instant::from_std);
        }
    }

    /// The timer fired: every deadline that has passed, in turn.
    fn deadlines_passed(&mut self, heard: &Heard, now: Instant) -> ControlFlow<()> {
        self.token_expiry_passed(now);
        self.refresh_notice_passed(now);
        self.write_deadline_passed(now)?;
        self.pong_deadline_passed(heard, now)?;
        self.position_deadline_passed(now);
        self.ping_deadline_passed(now);
        Continue(())
    }

    fn token_expiry_passed(&mut self, now: Instant) {
        if self.deadlines.expiry.is_some_and(|due| due <= now) {
            self.deadlines.expiry = None;
            self.outbox.close_now(CloseCode::TOKEN_EXPIRED);
        }
    }

    /// `auth.expiring`, once per token: a refresh arms the next one.
    fn refresh_notice_passed(&mut self, now: Instant) {
        if let Some(exp) = self.expires_at
            && self.deadlines.notice.is_some_and(|due| due <= now)
        {
            self.deadlines.notice = None;
            self.outbox.push_control(Frame::auth_expiring(exp));
        }
    }

    /// A socket that took no bytes for `WS_WRITE_TIMEOUT` drops the client;
    /// one that did moves the deadline on from its last progress.
    fn write_deadline_passed(&mut self, now: Instant) -> ControlFlow<()> {
        if self.deadlines.write.is_none_or(|due| due > now) {
            return Continue(());
        }
        let timeout = self.settings().write_timeout;
        let caught_up = self.output_since.max(self.writer.progressed_at()) + timeout;
        if caught_up <= now {
            self.log.span().in_scope(|| tracing::info!(?timeout, "socket took no bytes; dropping"));
            return Break(());
        }
        self.deadlines.write = Some(caught_up);
        Continue(())
    }

    /// A pong must have come since the oldest unanswered ping.
    fn pong_deadline_passed(&mut self, heard: &Heard, now: Instant) -> ControlFlow<()> {
        if self.deadlines.pong.is_none_or(|due| due > now) {
            return Continue(());
        }
        if heard.last_pong.get() < self.ping_sent {
            self.log.span().in_scope(|| tracing::info!("peer stopped answering pings; dropping"));
            return Break(());
        }
        self.ping_sent = None;
        self.deadlines.pong = None;
        Continue(())
    }

    fn position_deadline_passed(&mut self, now: Instant) {
        if self.deadlines.position.is_some_and(|due| due <= now) && self.queue_position() {
            self.position_schedule.queued(now.into_std());
        }
    }

    /// The next ping; the pong deadline runs from the oldest unanswered one.
    fn ping_deadline_passed(&mut self, now: Instant) {
        if self.deadlines.ping > now {
            return;
        }
        let settings = self.settings();
        self.deadlines.ping = now + settings.ping_interval;
        self.writer.queue_ping();
        if self.ping_sent.is_none() {
            self.ping_sent = Some(now);
            self.deadlines.pong = Some(now + settings.pong_timeout);
        }
    }

    /// The socket takes bytes: what is queued goes, with a position riding
    /// along when one would be due soon anyway.
    fn write_ready(&mut self) -> ControlFlow<()> {
        let now = Instant::now().into_std();
        let position_rides_along = self.position_schedule.rides_along(now) && self.queue_position();
        let Ok(written) = self.writer.write_ready(self.outbox) else { return Break(()) };
        if position_rides_along {
            self.position_schedule.queued(now);
        } else if written.events > 0 {
            self.position_schedule.events_written(now);
        }
        Continue(())
    }

    /// Queues a `section.position` for a client that opted in; returns
    /// whether it has.
    fn queue_position(&self) -> bool {
        self.positions.map(|terms| queue_position(self.state, terms, self.outbox, self.log)).is_some()
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
struct ClientSide {
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
    client_side: ClientSide,
    peer: Peer,
    meter: FrameMeter,
    inflate_up_to: Option<usize>,
) -> JoinHandle<ReaderEnd> {
    let ClientSide { reading, pipelined, config } = client_side;
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
    // Boxed: making the stream is a large future that ends at once, and this
    // task's future lives as long as the connection.
    let mut stream =
        Box::pin(WebSocketStream::from_partially_read(reading, pipelined, Role::Server, Some(config))).await;
    loop {
        let message = stream.next().await;
        // The meter ends the stream at a frame that broke its rules.
        if let Some(code) = meter.borrow().violation() {
            count_client_message(match code {
                CloseCode::POLICY_VIOLATION => "rate_limited",
                CloseCode::TOO_LARGE => "too_large",
                _ => "malformed",
            });
            return refused(&peer.outbox, code);
        }
        let Some(message) = message else { return ReaderEnd::Done };
        match peer.take(message) {
            Taken::Continue => {}
            Taken::PeerClosed => return ReaderEnd::PeerClosed,
            Taken::Ended => return ReaderEnd::Done,
            Taken::Refused(code) => {
                peer.outbox.close_now(code);
                // Keep reading until the peer answers our close frame.
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
                return ReaderEnd::Done;
            }
        }
    }
}

/// What one message from the client leaves the reader to do.
enum Taken {
    Continue,
    /// The client's close frame: it gets one back.
    PeerClosed,
    /// A message the protocol refuses: the connection closes with this code.
    Refused(CloseCode),
    /// The connection broke.
    Ended,
}

impl Peer {
    fn take(&self, message: Result<Message, WsError>) -> Taken {
        match message {
            Ok(Message::Close(_)) => Taken::PeerClosed,
            Ok(Message::Text(text)) => {
                self.take_text(&text);
                Taken::Continue
            }
            Ok(Message::Binary(_)) => {
                count_client_message("binary");
                Taken::Refused(CloseCode::UNSUPPORTED_DATA)
            }
            // Answered by the writer, which owns the socket's write side.
            Ok(Message::Ping(payload)) => {
                self.heard.ping.replace(Some(payload));
                self.outbox.nudge();
                Taken::Continue
            }
            Ok(Message::Pong(_)) => {
                self.heard.last_pong.set(Some(Instant::now()));
                Taken::Continue
            }
            Ok(Message::Frame(_)) => Taken::Continue,
            Err(error) => refusal(&error),
        }
    }

    /// The protocol's client messages (SPEC §2.3, §2.8).
    fn take_text(&self, text: &str) {
        match ClientMessage::parse(text) {
            ClientMessage::Ping => {
                count_client_message("ping");
                self.outbox.push_control(PONG);
            }
            ClientMessage::Refresh(token) => {
                count_client_message("refresh");
                if self.outbox.is_live() {
                    self.refresher.answer(token.as_deref(), &self.outbox, &self.heard);
                } else {
                    // Answered once the session is live, after its snapshot.
                    self.heard.pending_refresh.replace(Some(token));
                }
            }
            ClientMessage::Other => count_client_message("ignored"),
        }
    }
}

/// The close code of a read error the client caused; any other ends the reader.
fn refusal(error: &WsError) -> Taken {
    let (kind, code) = match error {
        WsError::Capacity(_) => ("too_large", CloseCode::TOO_LARGE),
        WsError::Utf8(_) => ("invalid_utf8", CloseCode::INVALID_PAYLOAD),
        WsError::Protocol(_) => ("malformed", CloseCode::PROTOCOL_ERROR),
        _ => return Taken::Ended,
    };
    count_client_message(kind);
    Taken::Refused(code)
}

fn count_client_message(kind: &str) {
    METRICS.client_messages.with_label_values(&[kind]).inc();
}

fn refused(outbox: &Outbox, code: CloseCode) -> ReaderEnd {
    outbox.close_now(code);
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
