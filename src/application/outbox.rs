//! One client's outbound queue: bounded, conflating, and the holder of the
//! snapshot/stream handoff (docs/protocol.md, "Delivery guarantees").
//!
//! Lives on its shard's thread only (`Rc`, `RefCell`): the shard pushes and,
//! once a turn's events are all pushed, writes them out: the client's socket takes
//! what it can straight from the shard's loop (a [`DirectWriter`]), and the
//! client's writer task is woken only for what is left. Pushing never
//! waits, so a slow client can only fill its own queue.
//!
//! Lifecycle: *holding* (registered, snapshot call in flight: events are kept,
//! not written) → *live* (after the snapshot frame: held events that the
//! snapshot already covers are dropped, the rest are written in order) →
//! *closing* (a close code was requested).
//!
//! An event is queued with all its frames ([`Delivery`]); the client's
//! [`Audience`], decided when it goes live, picks the one written, so held
//! and conflated events keep the choice (variants of one entity conflate
//! together, as one queued event).

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::domain::audience::{Audience, UserId};
use crate::domain::entity::Action;
use crate::domain::frame::Frame;
use crate::domain::limits::QueueLimits;
use crate::domain::position::Positions;
use crate::domain::protocol::CloseCode;
use crate::domain::snapshot::Snapshot;

use super::delivery::Delivery;

/// A client's socket as the shard's own loop writes to it: once a turn's
/// events are pushed, what the socket takes at once needs no wake-up of the
/// client's writer task.
pub trait DirectWriter {
    /// Writes what `outbox` has ready, as far as the socket takes it without
    /// waiting. Returns whether anything is left for the writer task.
    fn write_now(&self, outbox: &Outbox) -> bool;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// The queue was full; older frames of the same entities were dropped
    /// (this many) to make room.
    Conflated(usize),
    /// Still too far behind after conflation: the client must go (4408).
    Overflowed,
    /// The client is closing; the frame was not kept.
    Closing,
    /// A resumed client had this frame before it reconnected.
    AlreadySent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: CloseCode,
    /// Write what is queued before closing (section deleted, shutdown), or
    /// close at once (slow consumer, expired token).
    pub after_drain: bool,
}

enum Item {
    Event(Arc<Delivery>),
    /// Boxed: a frame is two byte buffers (its text, its compressed form),
    /// and every slot of a queue is as large as its largest item; an idle
    /// connection's queue keeps the slots its snapshot needed.
    Control(Box<Frame>),
}

impl Item {
    /// What a client of `audience` gets of this item.
    fn frame(&self, audience: &Audience) -> &Frame {
        match self {
            Self::Event(delivery) => delivery.frame_for(audience),
            Self::Control(frame) => frame,
        }
    }
}

/// An item and its place in the order of pushes: the writer removes exactly
/// the item it wrote, whatever conflation did to the queue meanwhile.
struct Queued {
    seq: u64,
    item: Item,
}

impl Queued {
    fn next(&self, audience: &Audience) -> Next {
        Next { seq: self.seq, frame: self.item.frame(audience).clone() }
    }
}

/// The next frame to write, named by its sequence number for
/// [`Outbox::pop_written`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next {
    pub seq: u64,
    pub frame: Frame,
}

struct State {
    /// Until the client goes live, the public audience of its own user:
    /// nothing is written before then anyway.
    audience: Audience,
    live: bool,
    queue: VecDeque<Queued>,
    next_seq: u64,
    bytes: usize,
    close: Option<CloseRequest>,
    /// A resumed client's token: what it had before it reconnected. This
    /// instance may consume those records later than the one that served
    /// them; they are not sent again.
    already_sent: Option<Box<Positions>>,
}

impl State {
    fn new(audience: Audience) -> Self {
        Self { audience, live: false, queue: VecDeque::new(), next_seq: 0, bytes: 0, close: None, already_sent: None }
    }

    /// The queue as the writer may see it: nothing while holding (before
    /// the snapshot) or once an immediate close was asked for.
    fn writable(&self) -> impl Iterator<Item = &Queued> {
        let closing_now = self.close.is_some_and(|close| !close.after_drain);
        let shown = if self.live && !closing_now { self.queue.len() } else { 0 };
        self.queue.iter().take(shown)
    }

    fn enqueue(&mut self, item: Item, front: bool) {
        let queued = Queued { seq: self.next_seq, item };
        self.next_seq += 1;
        self.bytes += queued.item.frame(&self.audience).len();
        if front {
            self.queue.push_front(queued);
        } else {
            self.queue.push_back(queued);
        }
    }

    /// The bytes of what is queued, counted again (after items left or the
    /// audience changed).
    fn recount_bytes(&mut self) {
        self.bytes = self.queue.iter().map(|queued| queued.item.frame(&self.audience).len()).sum();
    }
}

pub struct Outbox {
    state: RefCell<State>,
    wake: Notify,
    limits: QueueLimits,
    /// The client's socket, for writes from the shard's loop; without one,
    /// [`Outbox::write_or_wake`] wakes the writer task.
    direct: RefCell<Option<Rc<dyn DirectWriter>>>,
    /// On the hub's list for its next write.
    marked_for_writing: Cell<bool>,
    /// The queue passed [`PRESSURE`] with no direct writer: the writer task
    /// must get its turn before the shard fans out much more.
    pressed: Cell<bool>,
}

/// A queue past `1/PRESSURE` of its limits is written at once, in the
/// middle of a fan-out, instead of at the end of the shard's turn: a burst of
/// events (a Kafka backlog, a bulk import) must not close a client whose
/// socket takes the bytes (SPEC §2.5).
const PRESSURE: usize = 4;

impl Outbox {
    /// `viewer` is the client's user: its audience until it goes live.
    pub fn new(limits: QueueLimits, viewer: UserId) -> Self {
        Self {
            state: RefCell::new(State::new(Audience::Public { viewer })),
            wake: Notify::new(),
            limits,
            direct: RefCell::default(),
            marked_for_writing: Cell::new(false),
            pressed: Cell::new(false),
        }
    }

    /// Lets [`Outbox::write_or_wake`] write to the client's socket itself, from now on.
    pub fn attach(&self, direct: Rc<dyn DirectWriter>) {
        self.direct.replace(Some(direct));
    }

    /// Flushes wake the writer task again; the socket is not kept alive by
    /// the outbox.
    pub fn detach(&self) {
        self.direct.take();
    }

    /// Queues a routed event, without waking anyone: [`Outbox::write_or_wake`] does,
    /// once the shard's turn has pushed all its events.
    pub fn push_event(&self, delivery: Arc<Delivery>) -> PushOutcome {
        let already_sent = self
            .state
            .borrow()
            .already_sent
            .as_ref()
            .is_some_and(|sent| delivery.position.is_some_and(|position| sent.covers(position)));
        if already_sent {
            return PushOutcome::AlreadySent;
        }
        self.push(Item::Event(delivery))
    }

    /// Marks the outbox for the hub's next write; false if it already is, so
    /// that a client with several events in one turn is written once.
    pub fn mark_for_writing(&self) -> bool {
        !self.marked_for_writing.replace(true)
    }

    /// Writes what was pushed straight to the socket, as far as it takes the
    /// bytes now, and wakes the writer task for anything left (or for every
    /// push, without a direct writer).
    pub fn write_or_wake(&self) {
        self.marked_for_writing.set(false);
        let left = match &*self.direct.borrow() {
            Some(direct) => direct.write_now(self),
            None => true,
        };
        if left {
            self.wake.notify_one();
        }
    }

    /// A frame of the gateway's own (a pong, a position, a replayed frame):
    /// never conflated, and never the cause of a slow-consumer close, so
    /// answering a client can never cost it its queue (it still counts
    /// toward the limits an event push checks). The client's own rate limit
    /// bounds its pongs; positions come at most once a second.
    pub fn push_control(&self, frame: Frame) -> PushOutcome {
        let outcome = self.push(Item::Control(Box::new(frame)));
        self.wake.notify_one();
        outcome
    }

    fn push(&self, item: Item) -> PushOutcome {
        let is_event = matches!(item, Item::Event(_));
        let (crossed, full) = {
            let mut state = self.state.borrow_mut();
            if state.close.is_some() {
                return PushOutcome::Closing;
            }
            let pressed_before = self.is_over(&state, PRESSURE);
            state.enqueue(item, false);
            if !is_event {
                return PushOutcome::Queued;
            }
            (!pressed_before && self.is_over(&state, PRESSURE), self.is_over(&state, 1))
        };
        // Just past the mark, or full: the socket takes what it can now, so
        // a client is judged slow only when its socket took too little.
        if crossed || full {
            let written = self.write_directly();
            if crossed && !written {
                self.pressed.set(true);
            }
        }
        self.overflow_check(&mut self.state.borrow_mut())
    }

    /// Writes to the socket from here, if the shard's loop may; false if
    /// only the writer task may.
    fn write_directly(&self) -> bool {
        let direct = self.direct.borrow().clone();
        direct.map(|direct| direct.write_now(self)).is_some()
    }

    /// Past its limits, a queue keeps only the newest frame of each entity;
    /// a client still far behind after that must go. Only events count:
    /// the gateway's own frames never close a client.
    fn overflow_check(&self, state: &mut State) -> PushOutcome {
        if !self.is_over(state, 1) {
            return PushOutcome::Queued;
        }
        let dropped = conflate(state);
        // Conflation must win real room, or the client is hopelessly
        // behind: keeping it would only spend memory and CPU on it.
        if self.is_over(state, 2) {
            state.queue.clear();
            state.bytes = 0;
            PushOutcome::Overflowed
        } else {
            PushOutcome::Conflated(dropped)
        }
    }

    /// Whether the queue passed its pressure mark since the last call, with
    /// no direct writer to write it at once.
    pub fn take_pressure(&self) -> bool {
        self.pressed.replace(false)
    }

    /// Over `1/divisor` of the limits.
    fn is_over(&self, state: &State, divisor: usize) -> bool {
        state.queue.len() > self.limits.max_frames / divisor || state.bytes > self.limits.max_bytes / divisor
    }

    /// Ends the holding phase: drops held created/updated events whose
    /// entity the snapshot already has at the same or a newer `updatedAt`
    /// (held deletes always stay), and puts the snapshot frame first, so the
    /// writer sends it like any frame, under the same timers and limits.
    /// From now on the client gets the frames of `audience`. Returns how many
    /// held events were dropped.
    pub fn go_live(&self, snapshot: &Snapshot, audience: Audience) -> usize {
        let mut state = self.state.borrow_mut();
        let before = state.queue.len();
        state.queue.retain(|queued| match &queued.item {
            Item::Event(delivery) => !covered_by(delivery, snapshot),
            Item::Control(_) => true,
        });
        let dropped = before - state.queue.len();
        state.audience = audience;
        state.recount_bytes();
        state.enqueue(Item::Control(Box::new(snapshot.frame.clone())), true);
        state.live = true;
        drop(state);
        self.wake.notify_one();
        dropped
    }

    /// Whether `missed` fits in half of the queue's limits (beyond that, the
    /// next push would close the client as a slow consumer).
    pub fn has_room_for(&self, missed: &[Arc<Delivery>]) -> bool {
        // Counted as staff would get them: never less than any audience.
        let bytes: usize = missed.iter().map(|delivery| delivery.frames.full().len()).sum();
        missed.len() < self.limits.max_frames / 2 && bytes < self.limits.max_bytes / 2
    }

    /// A resumed client's token positions, if it is one.
    pub fn with_already_sent(&self, read: impl FnOnce(&Positions)) {
        if let Some(sent) = &self.state.borrow().already_sent {
            read(sent);
        }
    }

    /// Ends the holding phase of a resumed client, instead of a snapshot:
    /// `section.resumed`, then the frames it missed, in order, then whatever
    /// comes, all as `audience` gets them. Frames at or before
    /// `already_sent` are never queued again. Called in the same turn as
    /// registration, so nothing is held yet.
    pub fn go_live_resumed(&self, missed: &[Arc<Delivery>], already_sent: Positions, audience: Audience) {
        let mut state = self.state.borrow_mut();
        state.queue.clear();
        state.bytes = 0;
        state.enqueue(Item::Control(Box::new(Frame::resumed(missed.len()))), false);
        for delivery in missed {
            // Sent by a catch-up, not routed now: control items, so they are neither
            // conflated nor timed as deliveries.
            state.enqueue(Item::Control(Box::new(delivery.frame_for(&audience).clone())), false);
        }
        state.audience = audience;
        state.already_sent = Some(Box::new(already_sent));
        state.live = true;
        drop(state);
        self.wake.notify_one();
    }

    /// Whether there is a frame to write: the outbox is live and not
    /// closing at once, and its queue is not empty.
    pub fn has_writable(&self) -> bool {
        self.state.borrow().writable().next().is_some()
    }

    /// Up to `max` frames to write, from the front; none while holding or
    /// closing at once. They stay queued until [`Outbox::pop_written`], so an
    /// interrupted write loses nothing.
    pub fn fill_batch(&self, max: usize, each: impl FnMut(Next)) {
        let state = self.state.borrow();
        state.writable().take(max).map(|queued| queued.next(&state.audience)).for_each(each);
    }

    /// The first frame [`Outbox::fill_batch`] would give.
    #[cfg(test)]
    pub fn front(&self) -> Option<Next> {
        let state = self.state.borrow();
        state.writable().next().map(|queued| queued.next(&state.audience))
    }

    /// Past the snapshot (or the catch-up): frames are written.
    pub fn is_live(&self) -> bool {
        self.state.borrow().live
    }

    /// The audience the client's frames are chosen for.
    pub fn audience(&self) -> Audience {
        self.state.borrow().audience.clone()
    }

    /// From now on the client gets the frames of `audience` (a refresh
    /// decided it again), queued ones included.
    pub fn set_audience(&self, audience: Audience) {
        let mut state = self.state.borrow_mut();
        state.audience = audience;
        state.recount_bytes();
    }

    /// Wakes the writer without queueing anything (the reader has a pong
    /// for it to send, or the server is shutting down).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// Removes the frame numbered `seq`, once written; returns when it was
    /// routed, if it was an event. Conflation may have dropped it while it
    /// was being written (a newer state of its entity is queued): then
    /// nothing is removed, least of all the frame that took its place.
    pub fn pop_written(&self, seq: u64) -> Option<Instant> {
        let mut state = self.state.borrow_mut();
        if state.queue.front().is_none_or(|queued| queued.seq != seq) {
            return None;
        }
        let queued = state.queue.pop_front()?;
        state.bytes -= queued.item.frame(&state.audience).len();
        match queued.item {
            Item::Event(delivery) => Some(delivery.routed_at),
            Item::Control(_) => None,
        }
    }

    /// Asks the writer to close at once, dropping what is queued: this
    /// overrides a pending close-after-the-queue.
    pub fn close_now(&self, code: CloseCode) {
        self.request_close(code, false);
    }

    /// Asks the writer to close once everything queued is written.
    pub fn close_after_queue(&self, code: CloseCode) {
        self.request_close(code, true);
    }

    /// The first request wins, except that an immediate close overrides a
    /// pending drain-then-close.
    fn request_close(&self, code: CloseCode, after_drain: bool) {
        let mut state = self.state.borrow_mut();
        let replace = match state.close {
            None => true,
            Some(existing) => existing.after_drain && !after_drain,
        };
        if replace {
            state.close = Some(CloseRequest { code, after_drain });
        }
        drop(state);
        self.wake.notify_one();
    }

    pub fn close_request(&self) -> Option<CloseRequest> {
        self.state.borrow().close
    }

    /// Resolves when there is something new to write, or a close request.
    pub async fn changed(&self) {
        self.wake.notified().await
    }

    pub fn queued(&self) -> (usize, usize) {
        let state = self.state.borrow();
        (state.queue.len(), state.bytes)
    }
}

fn covered_by(delivery: &Delivery, snapshot: &Snapshot) -> bool {
    if delivery.action == Action::Deleted {
        return false;
    }
    match (delivery.updated_at, snapshot.versions.get(&delivery.key)) {
        (Some(event_at), Some(&snapshot_at)) => event_at <= snapshot_at,
        _ => false,
    }
}

/// Keeps only the newest queued frame of each entity (and every control
/// frame), preserving order. Returns how many frames were dropped.
fn conflate(state: &mut State) -> usize {
    let before = state.queue.len();
    let mut seen = HashSet::new();
    let mut kept: VecDeque<Queued> = VecDeque::with_capacity(before);
    for queued in state.queue.drain(..).rev() {
        let keep = match &queued.item {
            Item::Event(delivery) => seen.insert(delivery.key.clone()),
            Item::Control(_) => true,
        };
        if keep {
            kept.push_front(queued);
        }
    }
    state.queue = kept;
    state.recount_bytes();
    before - state.queue.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::domain::entity::{EntityKey, EntityKind};

    /// A client's socket that takes `room` frames, then would block.
    #[derive(Default)]
    pub(crate) struct Socket {
        pub(crate) room: Cell<usize>,
        pub(crate) received: RefCell<Vec<Frame>>,
        pub(crate) writes: Cell<usize>,
    }

    impl DirectWriter for Socket {
        fn write_now(&self, outbox: &Outbox) -> bool {
            self.writes.set(self.writes.get() + 1);
            while self.room.get() > 0
                && let Some(next) = outbox.front()
            {
                self.received.borrow_mut().push(next.frame);
                outbox.pop_written(next.seq);
                self.room.set(self.room.get() - 1);
            }
            outbox.has_writable()
        }
    }

    fn woken(outbox: &Outbox) -> bool {
        outbox.changed().now_or_never().is_some()
    }

    fn delivery(id: &str, action: Action, updated_at: Option<i64>) -> Arc<Delivery> {
        let payload = format!(r#"{{"id":"{id}","v":{}}}"#, updated_at.unwrap_or(0));
        Arc::new(Delivery {
            frames: Frame::event(EntityKind::Table, action, &payload).into(),
            key: EntityKey::new(EntityKind::Table, id),
            action,
            updated_at,
            ends_section: false,
            routed_at: Instant::now(),
            position: None,
        })
    }

    fn drain(outbox: &Outbox) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(next) = outbox.front() {
            frames.push(next.frame);
            outbox.pop_written(next.seq);
        }
        frames
    }

    pub(crate) fn write_front(outbox: &Outbox) {
        let next = outbox.front().expect("something to write");
        outbox.pop_written(next.seq);
    }

    const T1: &str = "a1111111-1111-4111-8111-111111111111";
    const T2: &str = "a2222222-2222-4222-8222-222222222222";

    pub(crate) fn viewer() -> UserId {
        UserId::new("u1")
    }

    fn limits(max_frames: usize) -> QueueLimits {
        QueueLimits { max_frames, max_bytes: 1 << 20 }
    }

    /// An outbox past its handoff, its snapshot frame already written.
    pub(crate) fn live_outbox(max_frames: usize) -> Outbox {
        let outbox = Outbox::new(limits(max_frames), viewer());
        outbox.go_live(&Snapshot::parse(br#"{"id":"s"}"#).unwrap(), Audience::Staff);
        write_front(&outbox);
        outbox
    }

    fn snapshot_with_table(id: &str, updated_at: &str) -> Snapshot {
        Snapshot::parse(
            format!(r#"{{"data":{{"id":"s","tables":[{{"id":"{id}","updatedAt":"{updated_at}"}}]}}}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn holds_until_live_then_skips_what_the_snapshot_covers() {
        let outbox = Outbox::new(limits(100), viewer());
        let at = crate::domain::timestamp::parse_millis("2026-01-10T16:00:00.000Z").unwrap();
        let older = delivery(T1, Action::Updated, Some(at - 1));
        let same = delivery(T1, Action::Updated, Some(at));
        let newer = delivery(T1, Action::Updated, Some(at + 1));
        let deleted = delivery(T1, Action::Deleted, Some(at));
        let other = delivery(T2, Action::Created, Some(at - 5));
        for d in [&older, &same, &other, &newer, &deleted] {
            assert_eq!(outbox.push_event(Arc::clone(d)), PushOutcome::Queued);
        }
        assert_eq!(outbox.front(), None, "nothing is written while holding");

        let snapshot = snapshot_with_table(T1, "2026-01-10T16:00:00.000Z");
        assert_eq!(outbox.go_live(&snapshot, Audience::Staff), 2);
        assert_eq!(
            drain(&outbox),
            vec![
                snapshot.frame.clone(),
                other.frames.full().clone(),
                newer.frames.full().clone(),
                deleted.frames.full().clone()
            ]
        );

        // After the snapshot, events pass unfiltered.
        outbox.push_event(Arc::clone(&older));
        assert_eq!(drain(&outbox), vec![older.frames.full().clone()]);
    }

    #[test]
    fn a_full_queue_keeps_the_newest_frame_of_each_entity() {
        let outbox = live_outbox(4);
        outbox.push_event(delivery("a", Action::Updated, Some(1)));
        outbox.push_event(delivery("b", Action::Updated, Some(1)));
        outbox.push_event(delivery("a", Action::Updated, Some(2)));
        outbox.push_event(delivery("a", Action::Updated, Some(3)));
        assert_eq!(outbox.push_event(delivery("b", Action::Updated, Some(2))), PushOutcome::Conflated(3));
        assert_eq!(
            drain(&outbox),
            vec![
                delivery("a", Action::Updated, Some(3)).frames.full().clone(),
                delivery("b", Action::Updated, Some(2)).frames.full().clone()
            ]
        );
    }

    /// The writer holds `a1` (written, not yet removed) when a push
    /// conflates the queue: only `a1` may go, never the `a3` behind it.
    #[test]
    fn conflation_during_a_write_never_removes_an_unwritten_frame() {
        let outbox = live_outbox(4);
        let a1 = delivery("a", Action::Updated, Some(1));
        for d in [&a1, &delivery("b", Action::Updated, Some(1)), &delivery("a", Action::Updated, Some(2))] {
            outbox.push_event(Arc::clone(d));
        }
        let a3 = delivery("a", Action::Updated, Some(3));
        outbox.push_event(Arc::clone(&a3));
        let writing = outbox.front().unwrap();
        assert_eq!(&writing.frame, a1.frames.full());
        let b2 = delivery("b", Action::Updated, Some(2));
        assert_eq!(outbox.push_event(Arc::clone(&b2)), PushOutcome::Conflated(3));
        outbox.pop_written(writing.seq);
        assert_eq!(drain(&outbox), vec![a3.frames.full().clone(), b2.frames.full().clone()]);
    }

    #[test]
    fn pongs_never_overflow_a_queue() {
        let outbox = live_outbox(2);
        outbox.push_event(delivery("a", Action::Updated, Some(1)));
        outbox.push_event(delivery("b", Action::Updated, Some(1)));
        for _ in 0..10 {
            assert_eq!(outbox.push_control(Frame::from_static("{}")), PushOutcome::Queued);
        }
        assert_eq!(outbox.queued().0, 12, "nothing was cleared");
        assert!(outbox.close_request().is_none());
    }

    #[test]
    fn too_many_distinct_entities_overflow() {
        let outbox = Outbox::new(limits(4), viewer());
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(outbox.push_event(delivery(id, Action::Updated, Some(i as i64))), PushOutcome::Queued);
        }
        assert_eq!(outbox.push_event(delivery("e", Action::Updated, None)), PushOutcome::Overflowed);
        assert_eq!(outbox.queued(), (0, 0), "an overflowed queue frees its memory");
    }

    #[test]
    fn byte_limit_counts_too() {
        let outbox = Outbox::new(QueueLimits { max_frames: 1000, max_bytes: 64 }, viewer());
        assert_eq!(outbox.push_event(delivery("a", Action::Updated, Some(1))), PushOutcome::Queued);
        assert_eq!(outbox.push_event(delivery("b", Action::Updated, Some(1))), PushOutcome::Overflowed);
    }

    #[test]
    fn immediate_close_hides_the_queue_but_drain_close_does_not() {
        let outbox = live_outbox(10);
        outbox.push_event(delivery("a", Action::Updated, None));
        outbox.close_after_queue(CloseCode::NORMAL);
        assert!(outbox.front().is_some());
        assert_eq!(outbox.push_event(delivery("b", Action::Updated, None)), PushOutcome::Closing);
        outbox.close_now(CloseCode::SLOW_CONSUMER);
        assert_eq!(outbox.front(), None);
        outbox.close_after_queue(CloseCode::GOING_AWAY);
        assert_eq!(outbox.close_request().unwrap().code, CloseCode::SLOW_CONSUMER);
    }

    #[test]
    fn the_shard_writes_what_the_socket_takes_and_wakes_the_writer_only_for_the_rest() {
        let outbox = live_outbox(10);
        let socket = Rc::new(Socket { room: Cell::new(1), ..Socket::default() });
        outbox.attach(Rc::clone(&socket) as Rc<dyn DirectWriter>);
        assert!(woken(&outbox), "going live woke the writer (for the snapshot frame)");
        outbox.push_event(delivery("a", Action::Updated, None));
        outbox.push_event(delivery("b", Action::Updated, None));
        assert!(socket.received.borrow().is_empty() && !woken(&outbox), "a push neither writes nor wakes");

        outbox.write_or_wake();
        assert_eq!(socket.received.borrow().len(), 1);
        assert!(woken(&outbox), "the writer task is woken for the frame the socket left");

        socket.room.set(10);
        outbox.push_event(delivery("c", Action::Updated, None));
        outbox.write_or_wake();
        let sent: Vec<Frame> =
            ["a", "b", "c"].map(|id| delivery(id, Action::Updated, None).frames.full().clone()).into();
        assert_eq!(*socket.received.borrow(), sent, "the rest, in order, behind the first");
        assert!(!woken(&outbox), "nothing left: the writer task sleeps on");

        outbox.detach();
        outbox.push_event(delivery("d", Action::Updated, None));
        outbox.write_or_wake();
        assert_eq!(socket.received.borrow().len(), 3);
        assert!(woken(&outbox), "without a direct writer, the writer task writes");
    }

    /// A reservation held during the snapshot call, and another that
    /// conflates with it: the audience decided at go-live picks the frame.
    #[test]
    fn held_and_conflated_events_are_written_as_the_clients_audience_sees_them() {
        use crate::domain::audience::Disclosure;
        let reservation = |status: &str, at: i64| {
            let payload = format!(r#"{{"id":"r1","userId":"someone","status":"{status}"}}"#);
            Arc::new(Delivery {
                frames: Disclosure::default().frames(EntityKind::Reservation, Action::Updated, &payload, None),
                key: EntityKey::new(EntityKind::Reservation, "r1"),
                action: Action::Updated,
                updated_at: Some(at),
                ends_section: false,
                routed_at: Instant::now(),
                position: None,
            })
        };
        let snapshot = Snapshot::parse(br#"{"id":"s"}"#).unwrap();
        for (audience, shows_user) in [(Audience::Public { viewer: viewer() }, false), (Audience::Staff, true)] {
            let outbox = Outbox::new(QueueLimits { max_frames: 2, max_bytes: 1 << 20 }, viewer());
            outbox.push_event(reservation("PENDING", 1));
            outbox.go_live(&snapshot, audience.clone());
            write_front(&outbox);
            outbox.push_event(reservation("CONFIRMED", 2));
            outbox.push_event(reservation("CHECKED_IN", 3));
            let written: Vec<String> =
                drain(&outbox).iter().map(|frame| String::from_utf8(frame.utf8_bytes().to_vec()).unwrap()).collect();
            assert_eq!(written.len(), 1, "{audience:?}: the three states conflated into the newest: {written:?}");
            assert!(written[0].contains("CHECKED_IN"));
            assert_eq!(written[0].contains("someone"), shows_user, "{audience:?}: {}", written[0]);
            assert_eq!(outbox.queued(), (0, 0));
        }
    }

    /// A burst of three queues' worth of distinct entities in one shard
    /// turn (no write in between): a socket that takes the bytes keeps its
    /// client; one that takes none is closed; a client whose writer task
    /// must write asks for the turn to end once, at the mark.
    #[test]
    fn a_burst_is_written_as_it_comes_and_only_a_full_socket_is_slow() {
        let burst = |outbox: &Outbox| {
            (0..48).map(|n| outbox.push_event(delivery(&format!("t{n}"), Action::Updated, Some(1)))).collect::<Vec<_>>()
        };
        let reading = live_outbox(16);
        let socket = Rc::new(Socket { room: Cell::new(usize::MAX), ..Socket::default() });
        reading.attach(Rc::clone(&socket) as Rc<dyn DirectWriter>);
        assert!(burst(&reading).iter().all(|outcome| *outcome == PushOutcome::Queued));
        assert_eq!(socket.received.borrow().len() + reading.queued().0, 48, "nothing lost");

        let stuck = live_outbox(16);
        stuck.attach(Rc::new(Socket::default()) as Rc<dyn DirectWriter>);
        assert!(burst(&stuck).contains(&PushOutcome::Overflowed), "a socket that takes nothing");

        let tasked = live_outbox(16);
        let outcomes = burst(&tasked);
        assert!(tasked.take_pressure(), "past the mark, the writer task must run");
        assert!(!tasked.take_pressure(), "asked once");
        assert!(outcomes.contains(&PushOutcome::Overflowed), "its task never ran in this test");
    }

    #[test]
    fn the_gateways_own_frames_wake_the_writer_at_once() {
        let outbox = live_outbox(10);
        assert!(woken(&outbox), "going live woke the writer (for the snapshot frame)");
        assert!(!woken(&outbox));
        outbox.push_control(Frame::from_static(crate::domain::protocol::PONG_FRAME));
        assert!(woken(&outbox));
    }
}
