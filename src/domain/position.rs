//! Kafka positions: where in the upstream streams a frame came from, and how
//! far a client has been served. Every instance consumes every partition, so
//! a position means the same on every instance; resume tokens are made of
//! them.

use std::fmt;

/// A partition of a topic. The topic travels as a 32-bit tag of its name
/// (FNV-1a): tokens stay compact, and the tag of a name is the same on every
/// instance and every build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: u32,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { topic: topic_tag(topic), partition }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}/{}", self.topic, self.partition)
    }
}

fn topic_tag(topic: &str) -> u32 {
    topic.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// Where one frame's record sits: its partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub partition: PartitionId,
    pub offset: i64,
}

/// For each partition, the next offset: every record before it is
/// accounted for. Sorted by partition; a handful of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions(Vec<(PartitionId, i64)>);

impl Positions {
    pub fn get(&self, partition: PartitionId) -> Option<i64> {
        self.find(partition).ok().map(|i| self.0[i].1)
    }

    /// Where `partition` is, or where it would go.
    fn find(&self, partition: PartitionId) -> Result<usize, usize> {
        self.0.binary_search_by_key(&partition, |&(p, _)| p)
    }

    /// Moves a partition's next offset forward (never back).
    pub fn advance(&mut self, partition: PartitionId, next: i64) {
        match self.find(partition) {
            Ok(i) => self.0[i].1 = self.0[i].1.max(next),
            Err(i) => self.0.insert(i, (partition, next)),
        }
    }

    /// Sets a partition's next offset, even behind the one held: a consumer
    /// reads on from where its last record was, and a topic deleted and
    /// created again starts over at 0.
    pub fn set(&mut self, partition: PartitionId, next: i64) {
        match self.find(partition) {
            Ok(i) => self.0[i].1 = next,
            Err(i) => self.0.insert(i, (partition, next)),
        }
    }

    /// Sets a partition's offset only if it has none yet.
    pub fn set_if_absent(&mut self, partition: PartitionId, offset: i64) {
        if let Err(i) = self.find(partition) {
            self.0.insert(i, (partition, offset));
        }
    }

    /// Every partition of `other` moved forward to at least its offset.
    pub fn advance_all(&mut self, other: &Positions) {
        for &(partition, next) in &other.0 {
            self.advance(partition, next);
        }
    }

    /// Whether the record at `position` is before these positions.
    pub fn covers(&self, position: Position) -> bool {
        self.get(position.partition).is_some_and(|next| position.offset < next)
    }

    pub fn iter(&self) -> impl Iterator<Item = (PartitionId, i64)> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(PartitionId, i64)> for Positions {
    /// The largest offset wins for a partition given twice.
    fn from_iter<I: IntoIterator<Item = (PartitionId, i64)>>(entries: I) -> Self {
        let mut positions = Self::default();
        for (partition, next) in entries {
            positions.advance(partition, next);
        }
        positions
    }
}

/// What the ingest thread has consumed: per partition, the offset it began
/// at in this process (`since`) and the next one it will read (`next`).
/// Records between the two were all routed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub since: Positions,
    pub next: Positions,
}

impl Progress {
    /// The partition was assigned, reading from `start`.
    pub fn assigned(&mut self, partition: PartitionId, start: i64) {
        self.since.set_if_absent(partition, start);
        self.next.advance(partition, start);
    }

    /// The record at `position` was routed.
    pub fn consumed(&mut self, position: Position) {
        self.since.set_if_absent(position.partition, position.offset);
        self.next.advance(position.partition, position.offset + 1);
    }

    /// What a later report says; positions only move forward.
    pub fn merge(&mut self, later: &Progress) {
        for (partition, since) in later.since.iter() {
            self.since.set_if_absent(partition, since);
        }
        self.next.advance_all(&later.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(topic: &str, partition: i32) -> PartitionId {
        PartitionId::new(topic, partition)
    }

    #[test]
    fn a_topic_tag_is_the_fnv1a_of_its_name() {
        // FNV-1a 32 of the empty string and of "a", from the reference.
        assert_eq!(topic_tag(""), 0x811c_9dc5);
        assert_eq!(topic_tag("a"), 0xe40c_292c);
        assert_ne!(p("mesa-ya.tables.events", 0), p("mesa-ya.sections.events", 0));
    }

    #[test]
    fn a_set_offset_may_go_back() {
        let tables = p("mesa-ya.tables.events", 0);
        let mut positions = Positions::default();
        positions.set(tables, 10);
        positions.set(tables, 1);
        assert_eq!(positions.get(tables), Some(1), "a topic created again reads from its start");
    }

    #[test]
    fn positions_only_move_forward_and_cover_what_is_before_them() {
        let tables = p("mesa-ya.tables.events", 0);
        let mut positions = Positions::default();
        assert!(!positions.covers(Position { partition: tables, offset: 0 }), "nothing is covered by nothing");
        positions.advance(tables, 10);
        positions.advance(tables, 4);
        assert_eq!(positions.get(tables), Some(10));
        assert!(positions.covers(Position { partition: tables, offset: 9 }));
        assert!(!positions.covers(Position { partition: tables, offset: 10 }));
    }

    #[test]
    fn progress_keeps_where_each_partition_began() {
        let tables = p("mesa-ya.tables.events", 1);
        let mut progress = Progress::default();
        progress.assigned(tables, 100);
        progress.consumed(Position { partition: tables, offset: 100 });
        progress.consumed(Position { partition: tables, offset: 101 });
        progress.assigned(tables, 102);
        assert_eq!(progress.since.get(tables), Some(100));
        assert_eq!(progress.next.get(tables), Some(102));
    }
}
