//! What the start-up rebuild costs: the state kept for 10 000 sections of
//! 30 tables and 20 linked objects each (300 000 table, 200 000 object and
//! 200 000 section-object records, v2 envelopes shaped as upstream sends
//! them), fed through the ingest use case exactly as the rebuild does.
//! Reports the rebuild time and the resident memory the state holds.
//!
//! `cargo bench --bench rebuild` (`REBUILD_SECTIONS=…` to change the size).

use std::time::Instant;

use mesaya_realtime::application::floor::SharedFloor;
use mesaya_realtime::application::ingest::Ingest;
use mesaya_realtime::application::ports::Dispatch;
use mesaya_realtime::application::restaurants::SharedRestaurants;
use mesaya_realtime::application::router::EventRouter;
use mesaya_realtime::domain::audience::Disclosure;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::position::{Position, Progress};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TABLES_PER_SECTION: u128 = 30;
const OBJECTS_PER_SECTION: u128 = 20;

/// The rebuild dispatches nothing.
struct Nowhere;

impl Dispatch for Nowhere {
    fn dispatch(&self, _: SectionId, _: std::sync::Arc<mesaya_realtime::application::delivery::Delivery>) {}

    fn record_done(&self, _: Position) {}

    fn progress(&self, _: std::sync::Arc<Progress>) {}

    fn unseen(&self, _: &mesaya_realtime::application::delivery::Unseen) {}
}

fn id(kind: u128, n: u128) -> String {
    uuid::Uuid::from_u128((kind << 96) | n).hyphenated().to_string()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

fn record(data: serde_json::Value) -> Vec<u8> {
    serde_json::json!({"timestamp": "2026-01-10T16:00:00.500Z", "event_type": "created", "entity_id": data["id"], "data": data})
        .to_string()
        .into_bytes()
}

fn main() {
    let sections: u128 = std::env::var("REBUILD_SECTIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let floor = SharedFloor::default();
    let mut ingest = Ingest::new(
        Nowhere,
        1 << 20,
        EventRouter::new(floor.clone(), SharedRestaurants::default(), Disclosure::default(), None),
    );
    let before = resident_bytes();
    // Only the rebuild is timed, not making the records up.
    let mut rebuilding = std::time::Duration::ZERO;
    let mut buffer = |ingest: &mut Ingest<Nowhere>, topic: &str, record: Vec<u8>| {
        let started = Instant::now();
        ingest.rebuild(topic, &record);
        rebuilding += started.elapsed();
    };
    let mut records = 0u64;
    let at = "2026-01-10T15:10:00.000Z";
    for s in 0..sections {
        let section = id(1, s);
        for t in 0..TABLES_PER_SECTION {
            let table = serde_json::json!({"id": id(2, s * 100 + t), "sectionId": section, "number": t + 1, "capacity": 4,
                "posX": t * 3, "posY": 10, "width": 3, "height": 2, "tableImageId": id(6, 0), "chairImageId": id(7, 0),
                "status": "AVAILABLE", "isAvailable": true, "createdAt": at, "updatedAt": at});
            buffer(&mut ingest, "mesa-ya.tables.events", record(table));
        }
        for o in 0..OBJECTS_PER_SECTION {
            let object_id = id(3, s * 100 + o);
            let object = serde_json::json!({"id": object_id, "posX": o * 5, "posY": 40, "width": 10, "height": 4,
                "imageId": id(8, 0), "createdAt": at, "updatedAt": at});
            buffer(&mut ingest, "mesa-ya.objects.events", record(object));
            let link = serde_json::json!({"id": id(4, s * 100 + o), "sectionId": section, "objectId": object_id,
                "createdAt": at, "updatedAt": at});
            buffer(&mut ingest, "mesa-ya.section-objects.events", record(link));
        }
        records += (TABLES_PER_SECTION + 2 * OBJECTS_PER_SECTION) as u64;
    }
    let elapsed = rebuilding;
    let held = resident_bytes().saturating_sub(before);
    let counts = ingest.link_counts();
    println!(
        "rebuilt {} sections from {records} records in {:.2} s ({:.0} records/s, parse and learn only)",
        sections,
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64()
    );
    println!(
        "state: {} tables, {} links, {} objects; resident memory held: {:.1} MiB ({:.0} bytes per record)",
        counts.tables,
        counts.section_objects,
        counts.objects,
        held as f64 / (1 << 20) as f64,
        held as f64 / records as f64
    );
    let section = SectionId::parse(&id(1, 0)).expect("a UUID");
    let started = Instant::now();
    let objects = mesaya_realtime::application::ports::FloorPlan::section_objects(&floor, section);
    println!("one section's objects for a snapshot: {} bytes of JSON in {:?}", objects.json.len(), started.elapsed());
}
