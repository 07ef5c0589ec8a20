//! Shards: `SHARDS` threads, each a single-threaded tokio runtime that owns
//! the subscribers of the sections hashed to it. Its loop accepts HTTP
//! connections on the shared listener, fans routed events out to its
//! sections, and adopts the sockets that other shards upgraded for it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::application::connect;
use crate::application::ports::SnapshotSource;
use crate::shutdown::Finished;
use crate::telemetry::METRICS;

use super::context::{ServerContext, ShardState};
use super::mailbox::{HandedOff, Inbox, ShardMessage};
use super::{http, session};

/// At most this many mailbox messages per turn, so sessions get to write.
const MAILBOX_BATCH: usize = 1024;

pub fn spawn<S, F>(
    index: usize,
    inbox: Inbox,
    listener: std::net::TcpListener,
    ctx: Arc<ServerContext>,
    make_snapshot_source: F,
    finished: Finished,
) -> std::io::Result<()>
where
    S: SnapshotSource + 'static,
    F: FnOnce() -> S + Send + 'static,
{
    std::thread::Builder::new().name(format!("shard-{index}")).spawn(move || {
        let _finished = finished;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a current-thread runtime only fails on OS resource exhaustion");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let state = Rc::new(ShardState { index, hub: RefCell::default(), snapshots: make_snapshot_source(), ctx });
            run(state, inbox, listener).await
        });
    })?;
    Ok(())
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
    tokio::select! {
        () = handle_mailbox(&state, &inbox, sessions) => {}
        () = state.ctx.shutdown.triggered() => {}
    }

    // Sessions see the same signal, flush and close with 1001.
    if tokio::time::timeout(state.ctx.drain_timeout, sessions_done.recv()).await.is_err() {
        tracing::warn!(shard = state.index, "drain timeout: dropping remaining connections");
    }
    accept.abort();
}

/// Handles mailbox messages, in batches, for as long as it is polled.
async fn handle_mailbox<S: SnapshotSource + 'static>(
    state: &Rc<ShardState<S>>,
    inbox: &Inbox,
    sessions: mpsc::Sender<()>,
) {
    let popped = METRICS.shard_mailbox_popped.with_label_values(&[&state.index.to_string()]);
    loop {
        let mut handled = 0;
        for message in inbox.ready().take(MAILBOX_BATCH) {
            handled += 1;
            match message {
                ShardMessage::Event(section, delivery) => {
                    let report = state.hub.borrow_mut().fan_out(section, &delivery);
                    METRICS.frames_conflated.inc_by(report.conflated as u64);
                }
                ShardMessage::Adopt(handed_off) => adopt(state, *handed_off, sessions.clone()),
            }
        }
        popped.inc_by(handled as u64);
        if handled == MAILBOX_BATCH {
            tokio::task::yield_now().await;
        } else {
            inbox.woken().await;
        }
    }
}

/// Registers the client on its section *before* the snapshot call starts,
/// so that every event arriving from now on is held for it.
fn adopt<S: SnapshotSource + 'static>(state: &Rc<ShardState<S>>, handed_off: HandedOff, sessions: mpsc::Sender<()>) {
    let outbox = connect::register(&mut state.hub.borrow_mut(), handed_off.section, state.ctx.session.queue);
    tokio::task::spawn_local(session::run(Rc::clone(state), handed_off, outbox, sessions));
}
