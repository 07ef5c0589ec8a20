//! Shards: `SHARDS` threads, each a single-threaded tokio runtime that owns
//! the subscribers of the sections hashed to it.
//!
//! A shard's mailbox is a crossbeam channel plus a `Notify`: the ingest
//! thread and other shards push without blocking, the shard drains in
//! batches. Messages are either a delivery (event bytes for a section) or an
//! adoption (an upgraded socket handed over by whichever shard accepted it).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use prometheus::IntCounter;
use tokio::sync::{Notify, mpsc, watch};

use crate::application::authorize::Authorizer;
use crate::application::delivery::Delivery;
use crate::application::hub::SectionHub;
use crate::application::outbox::Outbox;
use crate::application::ports::{DeliverySink, SnapshotSource};
use crate::application::readiness::Readiness;
use crate::application::router::LearnedTables;
use crate::domain::access::Claims;
use crate::domain::ids::SectionId;
use crate::infrastructure::config::SessionSettings;
use crate::telemetry::METRICS;

use super::{http, session};

/// At most this many mailbox messages per turn, so sessions get to write.
const MAILBOX_BATCH: usize = 1024;

/// Everything shards share, read-only or atomic.
pub struct ServerContext {
    pub authorizer: Authorizer,
    pub readiness: Arc<Readiness>,
    pub draining: AtomicBool,
    pub shards: Shards,
    pub session: SessionSettings,
    pub drain_timeout: Duration,
    /// Clock leeway for `exp`: a session ends at `exp` + leeway (4401).
    pub token_leeway: Duration,
    pub learned_tables: Sender<LearnedTables>,
    pub shutdown: watch::Receiver<bool>,
}

/// An upgraded socket on its way to the shard that owns its section.
pub struct HandedOff {
    pub stream: std::net::TcpStream,
    /// Bytes the HTTP parser read past the handshake (a client may pipeline
    /// its first frame).
    pub read_buf: Bytes,
    pub section: SectionId,
    pub token: String,
    pub claims: Claims,
}

pub enum ShardMessage {
    Deliver(SectionId, Arc<Delivery>),
    Adopt(Box<HandedOff>),
}

#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<ShardMessage>,
    wake: Arc<Notify>,
    /// Resolved once: `send` is on the per-event path.
    pushed: IntCounter,
}

pub struct Inbox {
    rx: Receiver<ShardMessage>,
    wake: Arc<Notify>,
}

pub fn mailbox(shard: usize) -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Notify::new());
    let pushed = METRICS.shard_mailbox_pushed.with_label_values(&[&shard.to_string()]);
    (Mailbox { tx, wake: Arc::clone(&wake), pushed }, Inbox { rx, wake })
}

impl Mailbox {
    pub fn send(&self, message: ShardMessage) {
        // Fails only once the shard has stopped, during shutdown.
        if self.tx.send(message).is_ok() {
            self.pushed.inc();
            self.wake.notify_one();
        }
    }
}

/// All shards' mailboxes: where a section's traffic goes.
#[derive(Clone)]
pub struct Shards(Arc<[Mailbox]>);

impl Shards {
    pub fn new(mailboxes: Vec<Mailbox>) -> Self {
        Self(mailboxes.into())
    }

    pub fn owner(&self, section: SectionId) -> &Mailbox {
        &self.0[section.shard(self.0.len())]
    }
}

impl DeliverySink for Shards {
    fn deliver(&self, section: SectionId, delivery: Arc<Delivery>) {
        self.owner(section).send(ShardMessage::Deliver(section, delivery));
    }
}

/// A shard's own state, shared by its tasks on its one thread.
pub struct ShardState<S> {
    pub index: usize,
    pub hub: RefCell<SectionHub>,
    pub snapshots: S,
    pub ctx: Arc<ServerContext>,
}

pub fn spawn<S, F>(
    index: usize,
    inbox: Inbox,
    listener: std::net::TcpListener,
    ctx: Arc<ServerContext>,
    make_snapshot_source: F,
) -> std::io::Result<JoinHandle<()>>
where
    S: SnapshotSource + 'static,
    F: FnOnce() -> S + Send + 'static,
{
    std::thread::Builder::new().name(format!("shard-{index}")).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a current-thread runtime only fails on OS resource exhaustion");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let state = Rc::new(ShardState { index, hub: RefCell::default(), snapshots: make_snapshot_source(), ctx });
            run(state, inbox, listener).await
        });
    })
}

async fn run<S: SnapshotSource + 'static>(state: Rc<ShardState<S>>, inbox: Inbox, listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, shard = state.index, "cannot register the listener");
            return;
        }
    };
    let accept = tokio::task::spawn_local(http::accept_loop(listener, Arc::clone(&state.ctx), state.index));

    // Each session holds a clone of `sessions`; when all are dropped, every
    // session has ended (the mini-redis shutdown pattern).
    let (sessions, mut sessions_done) = mpsc::channel::<()>(1);
    drain_mailbox(&state, &inbox, sessions).await;

    // Shutdown: sessions see the same signal, flush and close with 1001.
    if tokio::time::timeout(state.ctx.drain_timeout, sessions_done.recv()).await.is_err() {
        tracing::warn!(shard = state.index, "drain timeout: dropping remaining connections");
    }
    accept.abort();
}

/// Handles mailbox messages until shutdown.
async fn drain_mailbox<S: SnapshotSource + 'static>(
    state: &Rc<ShardState<S>>,
    inbox: &Inbox,
    sessions: mpsc::Sender<()>,
) {
    let mut shutdown = state.ctx.shutdown.clone();
    let popped = METRICS.shard_mailbox_popped.with_label_values(&[&state.index.to_string()]);
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let mut handled = 0;
        for message in inbox.rx.try_iter().take(MAILBOX_BATCH) {
            handled += 1;
            match message {
                ShardMessage::Deliver(section, delivery) => {
                    let report = state.hub.borrow_mut().deliver(section, &delivery);
                    METRICS.frames_conflated.inc_by(report.conflated as u64);
                    METRICS.slow_consumer_closes.inc_by(report.slow_closed as u64);
                }
                ShardMessage::Adopt(handed_off) => adopt(state, *handed_off, sessions.clone()),
            }
        }
        popped.inc_by(handled as u64);
        if handled == MAILBOX_BATCH {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = inbox.wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Registers the client on its section *before* the snapshot call starts,
/// so that every event arriving from now on is held for it.
fn adopt<S: SnapshotSource + 'static>(state: &Rc<ShardState<S>>, handed_off: HandedOff, sessions: mpsc::Sender<()>) {
    let outbox = Rc::new(Outbox::new(state.ctx.session.queue));
    state.hub.borrow_mut().subscribe(handed_off.section, Rc::clone(&outbox));
    tokio::task::spawn_local(session::run(Rc::clone(state), handed_off, outbox, sessions));
}
