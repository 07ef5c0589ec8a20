//! What the resume buffer holds at a realistic event rate: 2 000 events/s
//! spread over 10 000 sections for a whole `RESUME_WINDOW` (120 s), each a
//! ~550-byte `table.updated` frame, kept by two shards exactly as the shard
//! loop keeps them. Reports, for the default `RESUME_BUFFER_BYTES` and for a
//! budget that holds the whole window: frames and bytes kept, how many
//! seconds of traffic that is, the resident memory it takes, and the time
//! per kept frame.
//!
//! `cargo bench --bench resume_buffer` (`RESUME_EVENTS_PER_SECOND`,
//! `RESUME_SECTIONS` change the load).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesaya_realtime::application::delivery::Delivery;
use mesaya_realtime::application::resume_buffer::{ResumeBuffer, ResumeBufferLimits};
use mesaya_realtime::domain::entity::{Action, EntityKey, EntityKind};
use mesaya_realtime::domain::frame::Frame;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::position::{PartitionId, Position, Progress};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHARDS: usize = 2;
const WINDOW: Duration = Duration::from_secs(120);

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

/// A `table.updated` frame as upstream shapes it, for table `n` of `section`.
fn frame(section: &SectionId, n: u64) -> Frame {
    let table = uuid::Uuid::from_u128(u128::from(n) << 32 | 0xabc).hyphenated().to_string();
    let payload = format!(
        r#"{{"id":"{table}","sectionId":"{section}","number":{},"capacity":6,"posX":14,"posY":10,"width":3,"height":2,"tableImageId":"0f7d2c8e-1111-4a2b-9c3d-4e5f60718293","chairImageId":"6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b","status":"AVAILABLE","isAvailable":true,"createdAt":"2026-01-10T15:10:00.000Z","updatedAt":"2026-01-10T16:00:00.480Z"}}"#,
        n % 40
    );
    Frame::event(EntityKind::Table, Action::Updated, &payload)
}

struct Outcome {
    frames: usize,
    bytes: usize,
    resident: u64,
    seconds_held: f64,
    per_keep: Duration,
}

/// Feeds `events_per_second` for the whole window into `SHARDS` buffers
/// limited to `budget` bytes in all, with simulated time (one event every
/// 1/rate seconds), and measures what they keep.
fn run(budget: usize, events_per_second: u64, sections: &[SectionId]) -> Outcome {
    let partition = PartitionId::new("mesa-ya.tables.events", 0);
    let mut progress = Progress::default();
    progress.assigned(partition, 0);
    let limits = ResumeBufferLimits { window: WINDOW, per_section: 1024, bytes: budget / SHARDS };
    let before = resident_bytes();
    let mut shards: Vec<ResumeBuffer> = (0..SHARDS).map(|_| ResumeBuffer::new(limits)).collect();
    for shard in &mut shards {
        shard.merge_progress(&progress);
    }
    let start = Instant::now();
    let events = events_per_second * WINDOW.as_secs();
    let step = Duration::from_secs(1) / events_per_second as u32;
    let mut keeping = Duration::ZERO;
    for offset in 0..events {
        let section = sections[(offset as usize * 7919) % sections.len()];
        let delivery = Arc::new(Delivery {
            frames: frame(&section, offset).into(),
            key: EntityKey::new(EntityKind::Table, "t"),
            action: Action::Updated,
            updated_at: None,
            ends_section: false,
            routed_at: start,
            position: Some(Position { partition, offset: offset as i64 }),
        });
        let now = start + step * offset as u32;
        let kept = Instant::now();
        shards[section.shard(SHARDS)].keep(section, &delivery, now);
        keeping += kept.elapsed();
    }
    let (frames, bytes) =
        shards.iter().map(ResumeBuffer::size).fold((0, 0), |(frames, bytes), (f, b)| (frames + f, bytes + b));
    let resident = resident_bytes().saturating_sub(before);
    drop(shards);
    Outcome {
        frames,
        bytes,
        resident,
        seconds_held: frames as f64 / events_per_second as f64,
        per_keep: keeping / events as u32,
    }
}

/// Each budget runs in a process of its own, so that memory the allocator
/// kept from one run does not hide the next one's.
fn main() {
    let events_per_second = setting("RESUME_EVENTS_PER_SECOND", 2_000);
    let section_count = setting("RESUME_SECTIONS", 10_000);
    let sections: Vec<SectionId> = (0..section_count)
        .map(|n| SectionId::parse(&uuid::Uuid::from_u128(u128::from(n) + 1).to_string()).expect("a UUID"))
        .collect();
    let frame_bytes = frame(&sections[0], 1).len();
    if let Ok(budget) = std::env::var("RESUME_BENCH_BUDGET") {
        let budget: usize = budget.parse().expect("a byte count");
        let outcome = run(budget, events_per_second, &sections);
        println!(
            "| {budget} | {} | {:.1} MiB | {:.0} s | {:.1} MiB ({:.0} B per frame) | {:?} |",
            outcome.frames,
            outcome.bytes as f64 / (1 << 20) as f64,
            outcome.seconds_held,
            outcome.resident as f64 / (1 << 20) as f64,
            outcome.resident as f64 / outcome.frames.max(1) as f64,
            outcome.per_keep,
        );
        return;
    }
    println!(
        "resume buffer: {events_per_second} events/s over {section_count} sections for {WINDOW:?}, \
         frames of {frame_bytes} bytes, {SHARDS} shards, RESUME_BUFFER=1024"
    );
    println!(
        "| RESUME_BUFFER_BYTES | frames kept | frame bytes kept | traffic held | resident memory | per kept frame |"
    );
    println!("|---|---|---|---|---|---|");
    let whole_window = events_per_second as usize * WINDOW.as_secs() as usize * frame_bytes;
    for budget in [64 << 20, whole_window + (1 << 20)] {
        let status = std::process::Command::new(std::env::current_exe().expect("this executable"))
            .args(std::env::args().skip(1))
            .env("RESUME_BENCH_BUDGET", budget.to_string())
            .status()
            .expect("run one budget");
        assert!(status.success(), "the run with {budget} bytes failed");
    }
}
