//! Shards: `SHARDS` threads, each a single-threaded tokio runtime that owns
//! the subscribers of the sections hashed to it. Its loop accepts HTTP
//! connections on the shared listener, fans routed events out to its
//! sections, and adopts the sockets that other shards upgraded for it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::application::compression::SnapshotDeflater;
use crate::application::connect;
use crate::application::ports::LearnedSection;
use crate::application::ports::{RestaurantOwners, SnapshotSource};
use crate::application::resume::{self, Now, ResumeAttempted, ResumeRequest};
use crate::application::resume_buffer::{ResumeBuffer, ResumeBufferLimits};
use crate::shutdown::Running;
use crate::telemetry::METRICS;

use super::context::{ServerContext, ShardState};
use super::mailbox::{HandedOff, Inbox, ShardMessage};
use super::section_reports::ShardSectionReports;
use super::{http, session};

/// At most this many events per turn, so sessions get to write.
const MAILBOX_BATCH: usize = 1024;
/// How often a draining shard looks whether every session is done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// The drain ends this much before `DRAIN_TIMEOUT`, so that the threads are
/// gone by the time the process must exit.
const DRAIN_MARGIN: Duration = Duration::from_millis(200);
/// How often a quiet shard drops the frames its resume buffer kept too long.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// How soon a shard retries table reports the ingest thread had no room for.
const REPORT_RETRY: Duration = Duration::from_millis(50);

/// What a shard thread is made of.
pub struct ShardParts<F> {
    pub index: usize,
    pub resume_buffer_limits: ResumeBufferLimits,
    pub inbox: Inbox,
    pub listener: std::net::TcpListener,
    pub ctx: Arc<ServerContext>,
    pub make_snapshot_source: F,
    pub section_reports: Sender<LearnedSection>,
    pub running: Running,
}

pub fn spawn<S, F>(parts: ShardParts<F>) -> std::io::Result<()>
where
    S: SnapshotSource + 'static,
    F: FnOnce() -> S + Send + 'static,
{
    let ShardParts {
        index,
        resume_buffer_limits,
        inbox,
        listener,
        ctx,
        make_snapshot_source,
        section_reports,
        running,
    } = parts;
    std::thread::Builder::new().name(format!("shard-{index}")).spawn(move || {
        let _running = running;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a current-thread runtime only fails on OS resource exhaustion");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let state = Rc::new(ShardState {
                index,
                hub: Rc::new(RefCell::default()),
                snapshots: make_snapshot_source(),
                section_reports: ShardSectionReports::new(section_reports),
                resume_buffer: RefCell::new(ResumeBuffer::new(resume_buffer_limits)),
                snapshot_deflater: ctx
                    .session
                    .compression
                    .map(|compression| RefCell::new(SnapshotDeflater::new(compression.min_bytes))),
                ctx,
            });
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

    tokio::select! {
        () = handle_mailbox(&state, &inbox) => {}
        () = state.ctx.shutdown.triggered() => {}
    }
    // Live sessions wait on their outbox, not on the shutdown signal.
    state.hub.borrow().nudge_all();

    // Sessions see the same signal, flush and close with 1001. Every session,
    // and every socket on its way to a shard, holds an admission place: once
    // none is held, every client of every shard is done. Until then this shard
    // keeps answering HTTP (`/readyz` says 503: a shard that stopped early
    // would cut the requests it accepted from the shared listener), and
    // adopts the sockets upgraded just before the signal as they arrive, so
    // they get their 1001 (after their catch-up and last position, when they
    // resume) instead of waiting out the drain.
    let drained = tokio::time::timeout(state.ctx.drain_timeout.saturating_sub(DRAIN_MARGIN), async {
        loop {
            for handed_off in inbox.sockets.try_iter() {
                adopt(&state, *handed_off);
            }
            if state.ctx.admission.held() == 0 {
                break;
            }
            let _ = tokio::time::timeout(DRAIN_POLL, inbox.woken()).await;
        }
    });
    if drained.await.is_err() {
        tracing::warn!(shard = state.index, "drain timeout: dropping remaining connections");
    }
    accept.abort();
}

/// Handles mailbox messages, in batches, for as long as it is polled.
async fn handle_mailbox<S: SnapshotSource + 'static>(state: &Rc<ShardState<S>>, inbox: &Inbox) {
    let popped = METRICS.shard_mailbox_popped.with_label_values(&[&state.index.to_string()]);
    let mut buffer_gauges = BufferGauges::default();
    loop {
        let mut handled = 0;
        for handed_off in inbox.sockets.try_iter() {
            handled += 1;
            adopt(state, *handed_off);
        }
        let mut events = 0;
        // A burst ends the turn early when a client's writer task must write.
        let mut writers_needed = false;
        let now = Instant::now();
        for message in inbox.events.try_iter().take(MAILBOX_BATCH) {
            events += 1;
            match message {
                ShardMessage::Deliver(section, delivery) => {
                    state.resume_buffer.borrow_mut().keep(section, &delivery, now);
                    let report = state.hub.borrow_mut().fan_out(section, &delivery);
                    METRICS.frames_conflated.inc_by(report.conflated as u64);
                    writers_needed = report.writers_needed;
                }
                ShardMessage::RecordDone(next) => state.resume_buffer.borrow_mut().record_done(next),
                ShardMessage::Progress(progress) => state.resume_buffer.borrow_mut().merge_progress(&progress),
                ShardMessage::Unseen(unseen) => state.resume_buffer.borrow_mut().unseen(unseen, now),
            }
            if writers_needed {
                break;
            }
        }
        // After the whole batch: a client with several of its events gets
        // them in one write.
        state.hub.borrow_mut().write_fanned_out();
        buffer_gauges.report(&state.resume_buffer.borrow());
        handled += events;
        popped.inc_by(handled as u64);
        let reports_waiting = state.section_reports.send_backlog();
        // Frames age out of the resume buffer on a quiet shard too.
        let frames_kept = state.resume_buffer.borrow().size().0 > 0;
        if events == MAILBOX_BATCH || writers_needed {
            tokio::task::yield_now().await;
        } else if reports_waiting {
            let _ = tokio::time::timeout(REPORT_RETRY, inbox.woken()).await;
        } else if frames_kept {
            let _ = tokio::time::timeout(EXPIRE_EVERY, inbox.woken()).await;
            state.resume_buffer.borrow_mut().expire(Instant::now());
        } else {
            inbox.woken().await;
        }
    }
}

/// Registers the client on its section *before* the snapshot call starts,
/// so that every event arriving from now on is held for it. A client that
/// brought a resume token is served from the resume buffer in this same
/// turn, when the buffer has what it missed: then it needs no snapshot.
fn adopt<S: SnapshotSource + 'static>(state: &Rc<ShardState<S>>, handed_off: HandedOff) {
    let section = handed_off.section;
    let viewer = state.ctx.staff_roles.viewer(&handed_off.claims);
    let registration = connect::register(&state.hub, section, state.ctx.session.queue, viewer.subject.clone());
    let resumed = match (&state.ctx.resume, handed_off.resume.as_deref()) {
        (Some(settings), Some(token)) if !token.is_empty() => {
            // No snapshot names the restaurant: the one Kafka told decides.
            let restaurant = state.ctx.restaurants.restaurant_of(section);
            let request =
                ResumeRequest { section, restaurant: restaurant.as_ref(), sub: viewer.subject.as_str(), token };
            let audience = viewer.audience(state.ctx.restaurants.owner_of(section, restaurant.as_ref()).as_ref());
            let mut buffer = state.resume_buffer.borrow_mut();
            let outcome =
                resume::resume(settings, &mut buffer, registration.outbox(), request, audience, Now::current());
            ResumeAttempted { section, outcome }.emit();
            outcome.ok().map(|resumed| resumed.chain_started)
        }
        _ => None,
    };
    let admitted = session::Admitted { handed_off, viewer, registration, resumed_chain: resumed };
    tokio::task::spawn_local(session::start(Rc::clone(state), admitted));
}

/// The resume buffer's size in the instance-wide gauges: each shard adds
/// what its own buffer changed by.
#[derive(Default)]
struct BufferGauges {
    reported: (usize, usize),
}

impl BufferGauges {
    fn report(&mut self, buffer: &ResumeBuffer) {
        let (frames, bytes) = buffer.size();
        METRICS.resume_buffer_frames.add(frames as i64 - self.reported.0 as i64);
        METRICS.resume_buffer_bytes.add(bytes as i64 - self.reported.1 as i64);
        self.reported = (frames, bytes);
    }
}
