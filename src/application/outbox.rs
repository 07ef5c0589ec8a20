//! One client's outbound queue: bounded, conflating, and the holder of the
//! snapshot/stream handoff (README, "Delivery guarantees").
//!
//! Lives on its shard's thread only (`Rc`, `RefCell`): the shard pushes, the
//! client's writer task pops. Pushing never waits, so a slow client can only
//! fill its own queue.
//!
//! Lifecycle: *holding* (registered, snapshot call in flight: events are kept,
//! not written) → *live* (after the snapshot frame: held events that the
//! snapshot already covers are dropped, the rest are written in order) →
//! *closing* (a close code was requested).

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::domain::entity::Action;
use crate::domain::frame::Frame;
use crate::domain::protocol::CloseCode;
use crate::domain::snapshot::Snapshot;

use super::delivery::Delivery;

#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: CloseCode,
    /// Write what is queued before closing (section deleted, shutdown), or
    /// close at once (slow consumer, expired token).
    pub after_drain: bool,
}

enum Queued {
    Event(Arc<Delivery>),
    Control(Frame),
}

impl Queued {
    fn frame(&self) -> &Frame {
        match self {
            Self::Event(delivery) => &delivery.frame,
            Self::Control(frame) => frame,
        }
    }
}

#[derive(Default)]
struct State {
    live: bool,
    queue: VecDeque<Queued>,
    bytes: usize,
    close: Option<CloseRequest>,
}

pub struct Outbox {
    state: RefCell<State>,
    wake: Notify,
    limits: QueueLimits,
}

impl Outbox {
    pub fn new(limits: QueueLimits) -> Self {
        Self { state: RefCell::default(), wake: Notify::new(), limits }
    }

    pub fn push_event(&self, delivery: Arc<Delivery>) -> PushOutcome {
        self.push(Queued::Event(delivery))
    }

    /// A frame that answers the client (a pong): never conflated.
    pub fn push_control(&self, frame: Frame) -> PushOutcome {
        self.push(Queued::Control(frame))
    }

    fn push(&self, item: Queued) -> PushOutcome {
        let mut state = self.state.borrow_mut();
        if state.close.is_some() {
            return PushOutcome::Closing;
        }
        state.bytes += item.frame().len();
        state.queue.push_back(item);
        let mut outcome = PushOutcome::Queued;
        if self.is_over(&state, 1) {
            let dropped = conflate(&mut state);
            // Conflation must win real room, or the client is hopelessly
            // behind: keeping it would only spend memory and CPU on it.
            outcome = if self.is_over(&state, 2) {
                state.queue.clear();
                state.bytes = 0;
                PushOutcome::Overflowed
            } else {
                PushOutcome::Conflated(dropped)
            };
        }
        drop(state);
        // While holding nobody listens; the stored permit costs one spurious
        // wake-up when the writer goes live.
        self.wake.notify_one();
        outcome
    }

    /// Over `1/divisor` of the limits.
    fn is_over(&self, state: &State, divisor: usize) -> bool {
        state.queue.len() > self.limits.max_frames / divisor || state.bytes > self.limits.max_bytes / divisor
    }

    /// Ends the holding phase: drops held created/updated events whose
    /// entity the snapshot already has at the same or a newer `updatedAt`
    /// (held deletes always stay), and puts the snapshot frame first, so the
    /// writer sends it like any frame, under the same timers and limits.
    /// Returns how many held events were dropped.
    pub fn go_live(&self, snapshot: &Snapshot) -> usize {
        let mut state = self.state.borrow_mut();
        let before = state.queue.len();
        state.queue.retain(|item| match item {
            Queued::Event(delivery) => !covered_by(delivery, snapshot),
            Queued::Control(_) => true,
        });
        let dropped = before - state.queue.len();
        state.queue.push_front(Queued::Control(snapshot.frame.clone()));
        state.bytes = state.queue.iter().map(|item| item.frame().len()).sum();
        state.live = true;
        drop(state);
        self.wake.notify_one();
        dropped
    }

    /// The next frame to write, if live and not closing at once. The frame
    /// stays queued until [`Outbox::pop_front`], so an interrupted write
    /// loses nothing.
    pub fn front(&self) -> Option<Frame> {
        let state = self.state.borrow();
        let closing_now = state.close.is_some_and(|close| !close.after_drain);
        if !state.live || closing_now {
            return None;
        }
        state.queue.front().map(|item| item.frame().clone())
    }

    /// Drops the frame [`Outbox::front`] returned, once written; returns
    /// when it was routed, if it was an event.
    pub fn pop_front(&self) -> Option<Instant> {
        let mut state = self.state.borrow_mut();
        let item = state.queue.pop_front()?;
        state.bytes -= item.frame().len();
        match item {
            Queued::Event(delivery) => Some(delivery.routed_at),
            Queued::Control(_) => None,
        }
    }

    /// Asks the writer to close. The first request wins, except that an
    /// immediate close overrides a pending drain-then-close.
    pub fn request_close(&self, code: CloseCode, after_drain: bool) {
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
    for item in state.queue.drain(..).rev() {
        let keep = match &item {
            Queued::Event(delivery) => seen.insert(delivery.key.clone()),
            Queued::Control(_) => true,
        };
        if keep {
            kept.push_front(item);
        }
    }
    state.queue = kept;
    state.bytes = state.queue.iter().map(|item| item.frame().len()).sum();
    before - state.queue.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::entity::{EntityKey, EntityKind};

    fn delivery(id: &str, action: Action, updated_at: Option<i64>) -> Arc<Delivery> {
        let payload = format!(r#"{{"id":"{id}","v":{}}}"#, updated_at.unwrap_or(0));
        Arc::new(Delivery {
            frame: Frame::event(EntityKind::Table, action, &payload),
            key: EntityKey::new(EntityKind::Table, id),
            action,
            updated_at,
            ends_section: false,
            routed_at: Instant::now(),
        })
    }

    fn drain(outbox: &Outbox) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = outbox.front() {
            frames.push(frame);
            outbox.pop_front();
        }
        frames
    }

    fn limits(max_frames: usize) -> QueueLimits {
        QueueLimits { max_frames, max_bytes: 1 << 20 }
    }

    /// An outbox past its handoff, its snapshot frame already written.
    fn live_outbox(max_frames: usize) -> Outbox {
        let outbox = Outbox::new(limits(max_frames));
        outbox.go_live(&Snapshot::parse(br#"{"id":"s"}"#).unwrap());
        outbox.pop_front();
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
        let outbox = Outbox::new(limits(100));
        let at = crate::domain::timestamp::parse_millis("2026-01-10T16:00:00.000Z").unwrap();
        let older = delivery("t1", Action::Updated, Some(at - 1));
        let same = delivery("t1", Action::Updated, Some(at));
        let newer = delivery("t1", Action::Updated, Some(at + 1));
        let deleted = delivery("t1", Action::Deleted, Some(at));
        let other = delivery("t2", Action::Created, Some(at - 5));
        for d in [&older, &same, &other, &newer, &deleted] {
            assert_eq!(outbox.push_event(Arc::clone(d)), PushOutcome::Queued);
        }
        assert_eq!(outbox.front(), None, "nothing is written while holding");

        let snapshot = snapshot_with_table("t1", "2026-01-10T16:00:00.000Z");
        assert_eq!(outbox.go_live(&snapshot), 2);
        assert_eq!(
            drain(&outbox),
            vec![snapshot.frame.clone(), other.frame.clone(), newer.frame.clone(), deleted.frame.clone()]
        );

        // After the snapshot, events pass unfiltered.
        outbox.push_event(Arc::clone(&older));
        assert_eq!(drain(&outbox), vec![older.frame.clone()]);
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
                delivery("a", Action::Updated, Some(3)).frame.clone(),
                delivery("b", Action::Updated, Some(2)).frame.clone()
            ]
        );
    }

    #[test]
    fn too_many_distinct_entities_overflow() {
        let outbox = Outbox::new(limits(4));
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(outbox.push_event(delivery(id, Action::Updated, Some(i as i64))), PushOutcome::Queued);
        }
        assert_eq!(outbox.push_event(delivery("e", Action::Updated, None)), PushOutcome::Overflowed);
        assert_eq!(outbox.queued(), (0, 0), "an overflowed queue frees its memory");
    }

    #[test]
    fn byte_limit_counts_too() {
        let outbox = Outbox::new(QueueLimits { max_frames: 1000, max_bytes: 64 });
        assert_eq!(outbox.push_event(delivery("a", Action::Updated, Some(1))), PushOutcome::Queued);
        assert_eq!(outbox.push_event(delivery("b", Action::Updated, Some(1))), PushOutcome::Overflowed);
    }

    #[test]
    fn immediate_close_hides_the_queue_but_drain_close_does_not() {
        let outbox = live_outbox(10);
        outbox.push_event(delivery("a", Action::Updated, None));
        outbox.request_close(CloseCode::NORMAL, true);
        assert!(outbox.front().is_some());
        assert_eq!(outbox.push_event(delivery("b", Action::Updated, None)), PushOutcome::Closing);
        outbox.request_close(CloseCode::SLOW_CONSUMER, false);
        assert_eq!(outbox.front(), None);
        outbox.request_close(CloseCode::GOING_AWAY, true);
        assert_eq!(outbox.close_request().unwrap().code, CloseCode::SLOW_CONSUMER);
    }
}
