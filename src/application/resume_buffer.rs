//! A shard's resume buffer: the recent frames of every section the shard
//! owns, whether or not a client of it is connected here (a deploy moves
//! clients to instances that never had them), so that a client coming back
//! with a resume token gets exactly what it missed instead of a snapshot.
//!
//! Also where the shard learns how far the ingest thread has come: the
//! positions in the tokens it issues. Both travel on the shard's queue with
//! the frames, so a position here never runs ahead of the frames here.
//!
//! A section's frames are kept in order, at most `per_section` of them, for
//! at most `window`, and the shard keeps at most `bytes` in all, frames and
//! their bookkeeping (oldest out first): the index entry of a frame that its
//! section's own limit dropped still counts until it leaves the index. Whatever is dropped moves the section's *floor*: per
//! partition, the offset from which its frames are all still here. A resume
//! is served only when the token's positions are at or past the floor on
//! every partition this instance consumes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::ids::{EntityId, SectionId};
use crate::domain::position::{Position, Positions, Progress};

use super::delivery::{Delivery, Unseen};
use super::expiring::Expiring;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeBufferLimits {
    pub window: Duration,
    /// Frames per section; 0 keeps none (every resume falls back).
    pub per_section: usize,
    /// Bytes for the whole shard: every variant of every frame, and what
    /// keeping each costs (see [`frame_cost`]).
    pub bytes: usize,
}

impl ResumeBufferLimits {
    pub const OFF: Self = Self { window: Duration::ZERO, per_section: 0, bytes: 0 };
}

/// The buffer does not reach back to the token's positions.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap;

pub struct ResumeBuffer {
    limits: ResumeBufferLimits,
    progress: Progress,
    sections: HashMap<SectionId, SectionFrames>,
    /// Every kept frame, oldest first, to drop by age and by bytes without a
    /// scan. An entry whose frame the section's own limit already dropped
    /// is skipped when it comes up.
    order: VecDeque<Kept>,
    next_seq: u64,
    frames: usize,
    bytes: usize,
    /// The floor of sections no longer held here (all their frames dropped).
    forgotten: Positions,
    /// Sections that got a frame with no position, and when: a token issued
    /// before that may not be served for them (see [`ResumeBuffer::keep`]).
    unplaced: Expiring<SectionId, Instant>,
    /// Records this instance routed nowhere though another may have, oldest
    /// first, for a window: see [`ResumeBuffer::unseen`].
    unseen: VecDeque<(Instant, Unseen)>,
}

/// Unseen records kept at most; older ones raise every section's floor.
const MAX_UNSEEN: usize = 4096;

/// What one kept frame costs besides its bytes: the routed event it is part
/// of (kept alive by the buffer) and the section's entry for it.
const FRAME_BOOKKEEPING: usize =
    std::mem::size_of::<Delivery>() + 2 * std::mem::size_of::<usize>() + std::mem::size_of::<(u64, Arc<Delivery>)>();
/// What one entry of the age index costs, until it leaves the index.
const INDEX_ENTRY: usize = std::mem::size_of::<Kept>();

/// The bytes a frame counts for, while its section keeps it.
pub fn frame_cost(delivery: &Delivery) -> usize {
    delivery.frames.bytes() + FRAME_BOOKKEEPING
}

/// Token issue times are whole seconds: this much slack either way.
const ISSUE_TIME_SLACK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct SectionFrames {
    frames: VecDeque<(u64, Arc<Delivery>)>,
    floor: Positions,
}

struct Kept {
    at: Instant,
    section: SectionId,
    seq: u64,
}

impl ResumeBuffer {
    pub fn new(limits: ResumeBufferLimits) -> Self {
        Self {
            limits,
            progress: Progress::default(),
            sections: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            frames: 0,
            bytes: 0,
            forgotten: Positions::default(),
            unplaced: Expiring::default(),
            unseen: VecDeque::new(),
        }
    }

    /// Every frame of records before `next` on its partition has arrived.
    pub fn record_done(&mut self, next: Position) {
        self.progress.next.advance(next.partition, next.offset);
    }

    pub fn merge_progress(&mut self, later: &Progress) {
        self.progress.merge(later);
    }

    /// What a position frame issued now may say: every frame of a record
    /// before these positions has reached this shard.
    pub fn positions(&self) -> &Positions {
        &self.progress.next
    }

    /// A record this instance routed nowhere, though another instance may
    /// have routed it to a section of its restaurant (or, naming none, to
    /// any): no resume from before it is served for a section of that
    /// restaurant, nor for one whose restaurant is unknown here, until the
    /// window has passed. Past [`MAX_UNSEEN`] of them, the oldest counts
    /// for every section.
    pub fn unseen(&mut self, unseen: Unseen, now: Instant) {
        if self.limits.per_section == 0 {
            return;
        }
        self.expire(now);
        if self.unseen.len() == MAX_UNSEEN
            && let Some((_, oldest)) = self.unseen.pop_front()
        {
            self.forgotten.advance(oldest.position.partition, oldest.position.offset + 1);
        }
        self.unseen.push_back((now, unseen));
    }

    /// Keeps a frame routed to `section`.
    pub fn keep(&mut self, section: SectionId, delivery: &Arc<Delivery>, now: Instant) {
        if self.limits.per_section == 0 {
            return;
        }
        self.expire(now);
        if delivery.position.is_none() {
            // A frame with no position (a reservation released between two
            // records) cannot be placed among the others, and positions
            // issued right after it may equal those issued before it: tokens
            // are told apart by their issue time instead, until those issued
            // before it have expired.
            self.unplaced.arrive(section, now).insert_entry(now);
            return;
        }
        let entry = self.sections.entry(section).or_default();
        let seq = self.next_seq;
        self.next_seq += 1;
        entry.frames.push_back((seq, Arc::clone(delivery)));
        self.order.push_back(Kept { at: now, section, seq });
        self.frames += 1;
        self.bytes += frame_cost(delivery) + INDEX_ENTRY;
        if entry.frames.len() > self.limits.per_section {
            self.drop_oldest_of(section);
        }
        while self.bytes > self.limits.bytes {
            let Some(oldest) = self.pop_index() else { break };
            self.drop_if_front(&oldest);
        }
    }

    /// The frames of `section` (of `restaurant`, when known) after
    /// `positions` (those of a token issued `token_age` ago), in order, if
    /// this shard has all of them.
    pub fn catch_up(
        &mut self,
        section: SectionId,
        restaurant: Option<&EntityId>,
        after: &Positions,
        token_age: Duration,
        now: Instant,
    ) -> Result<Vec<Arc<Delivery>>, Gap> {
        if self.limits.per_section == 0 || self.progress.next.is_empty() {
            return Err(Gap);
        }
        self.expire(now);
        let may_concern = |unseen: &Unseen| match (&unseen.restaurant, restaurant) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        };
        if self.unseen.iter().any(|(_, unseen)| !after.covers(unseen.position) && may_concern(unseen)) {
            return Err(Gap);
        }
        if let Some(&unplaced_at) = self.unplaced.get(&section)
            && now.checked_sub(token_age).is_none_or(|issued| issued <= unplaced_at + ISSUE_TIME_SLACK)
        {
            return Err(Gap);
        }
        // A partition this instance does not read (yet): what it holds
        // after the token's offset would never reach the client.
        if after.iter().any(|(partition, _)| self.progress.next.get(partition).is_none()) {
            return Err(Gap);
        }
        let entry = self.sections.get(&section);
        for (partition, _) in self.progress.next.iter() {
            let floor = [
                self.progress.since.get(partition),
                self.forgotten.get(partition),
                entry.and_then(|entry| entry.floor.get(partition)),
            ]
            .into_iter()
            .flatten()
            .max();
            match (after.get(partition), floor) {
                (Some(from), Some(floor)) if from >= floor => {}
                _ => return Err(Gap),
            }
        }
        Ok(entry
            .into_iter()
            .flat_map(|entry| entry.frames.iter())
            .filter(|(_, delivery)| delivery.position.is_some_and(|position| !after.covers(position)))
            .map(|(_, delivery)| Arc::clone(delivery))
            .collect())
    }

    /// Frames kept, and their bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.frames, self.bytes)
    }

    /// Drops what is older than the window.
    pub fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front()
            && now.saturating_duration_since(oldest.at) > self.limits.window
        {
            let oldest = self.pop_index().expect("front exists");
            self.drop_if_front(&oldest);
        }
        while self.unseen.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.limits.window) {
            self.unseen.pop_front();
        }
        // Once every token issued before an unplaced frame has expired.
        let unplaced_for = self.limits.window + 2 * ISSUE_TIME_SLACK;
        self.unplaced.expire(|at| now.saturating_duration_since(at) > unplaced_for, |at, latest| *latest == at);
    }

    fn pop_index(&mut self) -> Option<Kept> {
        let oldest = self.order.pop_front()?;
        self.bytes -= INDEX_ENTRY;
        Some(oldest)
    }

    /// Drops `kept`'s frame if its section still has it (it is then that
    /// section's oldest).
    fn drop_if_front(&mut self, kept: &Kept) {
        let still_there = self
            .sections
            .get(&kept.section)
            .and_then(|entry| entry.frames.front())
            .is_some_and(|(seq, _)| *seq == kept.seq);
        if still_there {
            self.drop_oldest_of(kept.section);
        }
    }

    fn drop_oldest_of(&mut self, section: SectionId) {
        let Some(entry) = self.sections.get_mut(&section) else { return };
        let Some((_, delivery)) = entry.frames.pop_front() else { return };
        self.frames -= 1;
        self.bytes -= frame_cost(&delivery);
        if let Some(position) = delivery.position {
            entry.floor.advance(position.partition, position.offset + 1);
        }
        if entry.frames.is_empty() {
            let entry = self.sections.remove(&section).expect("entry exists");
            self.forgotten.advance_all(&entry.floor);
        }
    }
}

/// Shared by the tests of the resume use case.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::entity::{Action, EntityKey, EntityKind};
    use crate::domain::frame::Frame;
    use crate::domain::position::PartitionId;

    pub(crate) const S1: &str = "11111111-1111-4111-8111-111111111111";
    pub(crate) const S2: &str = "22222222-2222-4222-8222-222222222222";

    pub(crate) fn section(id: &str) -> SectionId {
        SectionId::parse(id).unwrap()
    }

    pub(crate) fn tables() -> PartitionId {
        PartitionId::new("mesa-ya.tables.events", 0)
    }

    /// A `table.updated` frame from offset `offset` of `tables()`.
    pub(crate) fn frame_at(offset: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            frames: Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"offset":{offset}}}"#)).into(),
            key: EntityKey::new(EntityKind::Table, format!("t{offset}").as_str()),
            action: Action::Updated,
            updated_at: None,
            ends_section: false,
            routed_at: Instant::now(),
            position: Some(Position { partition: tables(), offset }),
        })
    }

    fn at(next: i64) -> Positions {
        [(tables(), next)].into_iter().collect()
    }

    /// The offsets of the frames a resume from `after` gets, or None for a gap.
    fn served(buffer: &mut ResumeBuffer, section: SectionId, after: &Positions, now: Instant) -> Option<Vec<i64>> {
        let frames = buffer.catch_up(section, None, after, Duration::ZERO, now).ok()?;
        Some(frames.iter().map(|delivery| delivery.position.unwrap().offset).collect())
    }

    /// A buffer whose shard began reading `tables()` at `offset`.
    pub(crate) fn started_at(offset: i64, limits: ResumeBufferLimits) -> ResumeBuffer {
        let mut buffer = ResumeBuffer::new(limits);
        let mut progress = Progress::default();
        progress.assigned(tables(), offset);
        buffer.merge_progress(&progress);
        buffer
    }

    pub(crate) const ROOMY: ResumeBufferLimits =
        ResumeBufferLimits { window: Duration::from_secs(120), per_section: 3, bytes: 1 << 20 };

    #[test]
    fn a_resume_gets_exactly_the_frames_after_its_positions() {
        let now = Instant::now();
        let mut buffer = started_at(10, ROOMY);
        for offset in [10, 11, 12] {
            buffer.keep(section(S1), &frame_at(offset), now);
            buffer.record_done(Position { partition: tables(), offset: offset + 1 });
        }
        assert_eq!(served(&mut buffer, section(S1), &at(11), now), Some(vec![11, 12]));
        assert_eq!(served(&mut buffer, section(S1), &at(13), now), Some(Vec::<i64>::new()), "nothing missed");
        assert_eq!(served(&mut buffer, section(S2), &at(10), now), Some(Vec::<i64>::new()), "no frames, none missed");
        assert_eq!(served(&mut buffer, section(S1), &at(9), now), None, "before this instance began reading");
        assert_eq!(served(&mut buffer, section(S1), &Positions::default(), now), None, "a partition the token lacks");
    }

    #[test]
    fn dropped_frames_raise_the_floor_of_their_section_only_while_it_has_frames() {
        let now = Instant::now();
        let mut buffer = started_at(0, ROOMY);
        for offset in 0..5 {
            buffer.keep(section(S1), &frame_at(offset), now);
        }
        assert_eq!(buffer.size().0, 3, "three per section");
        assert_eq!(served(&mut buffer, section(S1), &at(1), now), None, "frames 0 and 1 are gone");
        assert_eq!(served(&mut buffer, section(S1), &at(2), now), Some(vec![2, 3, 4]));
        assert_eq!(
            served(&mut buffer, section(S2), &at(1), now),
            Some(Vec::<i64>::new()),
            "other sections keep their floor"
        );
    }

    #[test]
    fn frames_older_than_the_window_go_and_sections_they_empty_are_forgotten_safely() {
        let start = Instant::now();
        let limits = ResumeBufferLimits { window: Duration::from_secs(2), ..ROOMY };
        let mut buffer = started_at(0, limits);
        buffer.keep(section(S1), &frame_at(0), start);
        buffer.keep(section(S2), &frame_at(1), start + Duration::from_secs(1));
        let later = start + Duration::from_secs(3);
        assert_eq!(served(&mut buffer, section(S1), &at(0), later), None, "frame 0 aged out");
        assert_eq!(buffer.size().0, 1);
        assert_eq!(served(&mut buffer, section(S2), &at(1), later), Some(vec![1]));
        buffer.expire(start + Duration::from_secs(4));
        assert_eq!(buffer.size(), (0, 0), "a quiet shard's expiry empties it");
    }

    #[test]
    fn the_byte_limit_drops_the_oldest_frames_of_any_section() {
        let now = Instant::now();
        let one = frame_cost(&frame_at(0)) + INDEX_ENTRY;
        let limits = ResumeBufferLimits { bytes: one * 2, ..ROOMY };
        let mut buffer = started_at(0, limits);
        buffer.keep(section(S1), &frame_at(0), now);
        buffer.keep(section(S2), &frame_at(1), now);
        buffer.keep(section(S2), &frame_at(2), now);
        assert_eq!(buffer.size(), (2, one * 2));
        assert_eq!(served(&mut buffer, section(S1), &at(0), now), None);
        assert_eq!(served(&mut buffer, section(S2), &at(1), now), Some(vec![1, 2]));
    }

    /// One busy section with a small per-section cap: the index entries of
    /// the frames that cap dropped count too, and leave under the byte limit
    /// instead of waiting out the window.
    #[test]
    fn the_byte_limit_bounds_the_bookkeeping_of_dropped_frames_too() {
        let now = Instant::now();
        let limit = 100 * (frame_cost(&frame_at(0)) + INDEX_ENTRY);
        let mut buffer = started_at(0, ResumeBufferLimits { per_section: 2, bytes: limit, ..ROOMY });
        for offset in 0..10_000 {
            buffer.keep(section(S1), &frame_at(offset), now);
            assert!(buffer.size().1 <= limit);
        }
        assert!(buffer.order.len() <= limit / INDEX_ENTRY, "{} index entries", buffer.order.len());
        assert_eq!(served(&mut buffer, section(S1), &at(9_998), now), Some(vec![9_998, 9_999]));
    }

    #[test]
    fn a_frame_without_a_position_stops_catch_ups_for_tokens_issued_before_it_until_they_expire() {
        let start = Instant::now();
        let mut buffer = started_at(0, ROOMY);
        buffer.record_done(Position { partition: tables(), offset: 5 });
        let mut released = frame_at(0);
        Arc::get_mut(&mut released).unwrap().position = None;
        buffer.keep(section(S1), &released, start);
        let later = start + Duration::from_secs(5);
        let age = |issued: Instant| later - issued;
        let mut attempt =
            |section_id, issued| buffer.catch_up(section(section_id), None, &at(5), age(issued), later).is_ok();
        assert!(!attempt(S1, start - Duration::from_secs(3)), "issued before it");
        assert!(!attempt(S1, start + Duration::from_millis(500)), "issued in the same second");
        assert!(attempt(S1, start + Duration::from_secs(2)), "issued after it");
        assert!(attempt(S2, start - Duration::from_secs(3)), "other sections are not concerned");
        let expired = start + ROOMY.window + Duration::from_secs(3);
        assert!(
            buffer.catch_up(section(S1), None, &at(5), Duration::ZERO, expired).is_ok(),
            "forgotten after the window"
        );
    }

    /// A record routed nowhere here (offset 3) may have reached a section
    /// of its restaurant elsewhere: no resume from before it for that
    /// restaurant's sections nor for sections of unknown restaurants; other
    /// restaurants' sections, and tokens past it, are served.
    #[test]
    fn a_record_unseen_here_stops_resumes_from_before_it_where_it_may_have_gone() {
        let now = Instant::now();
        let mut buffer = started_at(0, ROOMY);
        buffer.record_done(Position { partition: tables(), offset: 5 });
        let (ours, theirs): (EntityId, EntityId) = ("r-ours".into(), "r-theirs".into());
        buffer.unseen(
            Unseen { position: Position { partition: tables(), offset: 3 }, restaurant: Some(ours.clone()) },
            now,
        );
        let mut served = |restaurant: Option<&EntityId>, next: i64| {
            buffer.catch_up(section(S1), restaurant, &at(next), Duration::ZERO, now).is_ok()
        };
        assert!(!served(Some(&ours), 3), "its restaurant's section");
        assert!(!served(None, 3), "a section whose restaurant is unknown here");
        assert!(served(Some(&theirs), 3), "another restaurant's section");
        assert!(served(Some(&ours), 4), "a token past it");
        // Tokens issued before it are expired by then: the mark can go.
        buffer.expire(now + ROOMY.window + Duration::from_secs(1));
        assert!(buffer.unseen.is_empty(), "the mark leaves with the window");
    }

    #[test]
    fn past_their_limit_unseen_records_raise_every_sections_floor() {
        let now = Instant::now();
        let mut buffer = started_at(0, ROOMY);
        for offset in 0..MAX_UNSEEN as i64 + 1 {
            buffer.unseen(
                Unseen { position: Position { partition: tables(), offset }, restaurant: Some("r".into()) },
                now,
            );
        }
        assert_eq!(buffer.unseen.len(), MAX_UNSEEN);
        buffer.record_done(Position { partition: tables(), offset: MAX_UNSEEN as i64 + 5 });
        let other: EntityId = "another".into();
        assert!(
            buffer.catch_up(section(S2), Some(&other), &at(0), Duration::ZERO, now).is_err(),
            "offset 0: for every section"
        );
    }

    #[test]
    fn a_token_naming_a_partition_this_instance_does_not_read_is_not_served() {
        let now = Instant::now();
        let mut buffer = started_at(0, ROOMY);
        let mut after = at(0);
        after.advance(PartitionId::new("mesa-ya.new-topic.events", 0), 3);
        assert_eq!(served(&mut buffer, section(S1), &after, now), None);
    }

    #[test]
    fn a_buffer_of_zero_frames_never_serves_a_resume() {
        let now = Instant::now();
        let mut buffer = started_at(0, ResumeBufferLimits { per_section: 0, ..ROOMY });
        buffer.keep(section(S1), &frame_at(0), now);
        assert_eq!(buffer.size(), (0, 0));
        assert_eq!(served(&mut buffer, section(S1), &at(1), now), None);
    }
}
