//! Property tests of the resume buffer's coverage check: whatever the
//! records, sections, limits and tokens, a resume the buffer serves gets
//! exactly the frames routed to its section after the token's positions, in
//! order — none lost, none twice — and is never served past a frame that had
//! no position (a reservation released between records) routed after the
//! token; and a buffer that dropped nothing and had no such frame serves
//! every resume.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesaya_realtime::application::delivery::Delivery;
use mesaya_realtime::application::resume_buffer::{ResumeBuffer, ResumeBufferLimits};
use mesaya_realtime::domain::entity::{Action, EntityKey, EntityKind};
use mesaya_realtime::domain::frame::Frame;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::position::{PartitionId, Position, Positions, Progress};
use proptest::prelude::*;

const SECTIONS: usize = 3;
const PARTITIONS: i32 = 2;

/// One Kafka record: its partition, the sections it reaches (object
/// fan-out reaches several), and how long after the previous one it came.
#[derive(Clone, Debug)]
struct Record {
    partition: i32,
    sections: Vec<usize>,
    gap_ms: u64,
    /// A client takes a token right after this record.
    token_after: bool,
    /// Its frames have no position (released between two records).
    unplaced: bool,
}

fn record() -> impl Strategy<Value = Record> {
    let sections = proptest::collection::vec(0..SECTIONS, 1..=SECTIONS);
    (0..PARTITIONS, sections, 0u64..3_000, any::<bool>(), proptest::bool::weighted(0.05)).prop_map(
        |(partition, mut sections, gap_ms, token_after, unplaced)| {
            sections.sort_unstable();
            sections.dedup();
            Record { partition, sections, gap_ms, token_after, unplaced }
        },
    )
}

fn limits() -> impl Strategy<Value = ResumeBufferLimits> {
    (5u64..60, 1usize..8, 1usize..30).prop_map(|(window_s, per_section, frames_of_budget)| ResumeBufferLimits {
        window: Duration::from_secs(window_s),
        per_section,
        bytes: frames_of_budget * frame_len(),
    })
}

fn section(n: usize) -> SectionId {
    SectionId::parse(&format!("00000000-0000-4000-8000-00000000000{n}")).unwrap()
}

fn partition(p: i32) -> PartitionId {
    PartitionId::new("mesa-ya.tables.events", p)
}

/// Every frame has the same length, so the byte budget is a frame count.
fn frame_len() -> usize {
    frame_for(0, 0).len()
}

fn frame_for(p: i32, offset: i64) -> Frame {
    Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"p":{p},"offset":{offset:>6}}}"#))
}

fn delivery(p: i32, offset: i64, placed: bool) -> Arc<Delivery> {
    Arc::new(Delivery {
        frames: frame_for(p, offset).into(),
        key: EntityKey::new(EntityKind::Table, format!("{p}-{offset}").as_str()),
        action: Action::Updated,
        updated_at: None,
        ends_section: false,
        routed_at: Instant::now(),
        position: placed.then_some(Position { partition: partition(p), offset }),
    })
}

/// (partition, offset) of each frame.
fn places(frames: &[Arc<Delivery>]) -> Vec<(PartitionId, i64)> {
    frames.iter().map(|d| d.position.map(|p| (p.partition, p.offset)).unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_served_resume_gets_exactly_the_frames_after_its_token(
        records in proptest::collection::vec(record(), 1..60),
        limits in limits(),
    ) {
        let start = Instant::now();
        let mut buffer = ResumeBuffer::new(limits);
        let mut progress = Progress::default();
        for p in 0..PARTITIONS {
            progress.assigned(partition(p), 0);
        }
        buffer.merge_progress(&progress);

        // What each section was sent, in order, and when: the ground truth.
        let mut routed: Vec<Vec<(Instant, Arc<Delivery>)>> = vec![Vec::new(); SECTIONS];
        // Each token's positions and when it was issued.
        let mut tokens: Vec<(Positions, Instant)> = vec![(buffer.positions().clone(), start)];
        let mut next = [0i64; PARTITIONS as usize];
        let mut now = start;
        let (mut kept, mut any_unplaced) = (0, false);
        for record in &records {
            now += Duration::from_millis(record.gap_ms);
            let offset = next[record.partition as usize];
            let frame = delivery(record.partition, offset, !record.unplaced);
            for &s in &record.sections {
                buffer.keep(section(s), &frame, now);
                routed[s].push((now, Arc::clone(&frame)));
                kept += usize::from(!record.unplaced);
            }
            any_unplaced |= record.unplaced;
            if !record.unplaced {
                next[record.partition as usize] += 1;
                buffer.record_done(Position { partition: partition(record.partition), offset: offset + 1 });
            }
            if record.token_after {
                tokens.push((buffer.positions().clone(), now));
            }
        }

        let nothing_dropped = buffer.size().0 == kept;
        // Older tokens are refused as expired before the buffer is asked.
        for (token, issued) in tokens.iter().filter(|(_, issued)| now - *issued <= limits.window) {
            for (s, sent) in routed.iter().enumerate() {
                let missed = |&&(at, ref d): &&(Instant, Arc<Delivery>)| match d.position {
                    Some(position) => !token.covers(position),
                    None => at >= *issued,
                };
                let expected: Vec<&(Instant, Arc<Delivery>)> = sent.iter().filter(missed).collect();
                match buffer.catch_up(section(s), None, token, now - *issued, now) {
                    Ok(frames) => {
                        prop_assert!(
                            expected.iter().all(|(_, d)| d.position.is_some()),
                            "served past a frame with no position (section {s})"
                        );
                        let expected: Vec<Arc<Delivery>> = expected.iter().map(|(_, d)| Arc::clone(d)).collect();
                        prop_assert_eq!(places(&frames), places(&expected), "section {}", s);
                    }
                    Err(_) => prop_assert!(
                        !nothing_dropped || any_unplaced,
                        "a buffer that dropped nothing must serve every resume (section {s}, token {token:?})"
                    ),
                }
            }
        }
    }
}
