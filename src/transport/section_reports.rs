//! What snapshots showed of their sections (tables, restaurant), on its way
//! from a shard to the ingest thread, which routes reservations by table and
//! restaurant events by restaurant.
//!
//! The channel is bounded, and a shard must never block on it: the ingest
//! thread may itself be waiting for that shard's full event queue. So a
//! report that finds the channel full waits in the shard's own backlog and
//! goes out on a later turn. The backlog holds at most one report per
//! connection of the shard, which admission control bounds.

use std::cell::RefCell;
use std::collections::VecDeque;

use crossbeam_channel::{Sender, TrySendError};

use crate::application::ports::{LearnedSection, SectionReporter};

/// Reports the ingest thread has not taken yet, per channel, before shards
/// keep them in their backlogs.
pub const CAPACITY: usize = 4096;

pub struct ShardSectionReports {
    channel: Sender<LearnedSection>,
    backlog: RefCell<VecDeque<LearnedSection>>,
}

impl ShardSectionReports {
    pub fn new(channel: Sender<LearnedSection>) -> Self {
        Self { channel, backlog: RefCell::default() }
    }

    /// Sends what the backlog holds, in order, as far as the channel takes
    /// it. Returns whether anything is still waiting.
    pub fn send_backlog(&self) -> bool {
        let mut backlog = self.backlog.borrow_mut();
        while let Some(report) = backlog.pop_front() {
            match self.channel.try_send(report) {
                Ok(()) => {}
                Err(TrySendError::Full(report)) => {
                    backlog.push_front(report);
                    return true;
                }
                // The ingest thread is gone: shutting down.
                Err(TrySendError::Disconnected(_)) => backlog.clear(),
            }
        }
        false
    }
}

impl SectionReporter for ShardSectionReports {
    fn report(&self, learned: LearnedSection) {
        self.backlog.borrow_mut().push_back(learned);
        self.send_backlog();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{EntityId, SectionId};

    #[test]
    fn a_full_channel_keeps_reports_in_order_until_there_is_room() {
        let (channel, ingest) = crossbeam_channel::bounded(1);
        let reports = ShardSectionReports::new(channel);
        let section = SectionId::parse("11111111-1111-4111-8111-111111111111").unwrap();
        for table in ["t1", "t2", "t3"] {
            reports.report(LearnedSection { section, restaurant: None, table_ids: vec![table.into()] });
        }
        let mut received = Vec::new();
        while reports.send_backlog() || !ingest.is_empty() {
            received.extend(ingest.try_iter().flat_map(|learned| learned.table_ids));
        }
        assert_eq!(received, vec![EntityId::from("t1"), "t2".into(), "t3".into()]);
    }
}
