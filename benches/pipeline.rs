//! The hot path, stage by stage: parse a Kafka record, route it, build its
//! frame, fan the frame out to a section's subscribers, and conflate a slow
//! client's queue. Run with `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mesaya_realtime::application::delivery::Delivery;
use mesaya_realtime::application::hub::SectionHub;
use mesaya_realtime::application::outbox::{Outbox, QueueLimits};
use mesaya_realtime::application::router::EventRouter;
use mesaya_realtime::domain::entity::{Action, EntityKey, EntityKind};
use mesaya_realtime::domain::envelope;
use mesaya_realtime::domain::frame::Frame;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::snapshot::Snapshot;

const SECTION: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
const TABLE_UPDATED: &str = r#"{"timestamp":"2026-01-10T16:00:00.500Z","event_type":"updated","entity_id":"9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60",
 "data":{"id":"9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60","sectionId":"5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11","number":1,"capacity":6,
  "posX":14,"posY":10,"width":3,"height":2,"tableImageId":"0f7d2c8e-1111-4a2b-9c3d-4e5f60718293","chairImageId":"6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b",
  "status":"AVAILABLE","isAvailable":true,"createdAt":"2026-01-10T15:10:00.000Z","updatedAt":"2026-01-10T16:00:00.480Z"}}"#;

fn parse_and_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_v2_table_updated", |b| {
        b.iter(|| envelope::parse("mesa-ya.tables.events", black_box(TABLE_UPDATED.as_bytes()), 1 << 20).unwrap())
    });
    group.bench_function("parse_and_route", |b| {
        let mut router = EventRouter::default();
        b.iter(|| {
            let event = envelope::parse("mesa-ya.tables.events", black_box(TABLE_UPDATED.as_bytes()), 1 << 20).unwrap();
            router.route(event, std::time::Instant::now(), |section, delivery| {
                black_box((section, delivery));
            })
        })
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let section = SectionId::parse(SECTION).unwrap();
    let snapshot = Snapshot::parse(br#"{"data":{"id":"s"}}"#).unwrap();
    let mut router = EventRouter::default();
    let mut delivery = None;
    router
        .route(
            envelope::parse("mesa-ya.tables.events", TABLE_UPDATED.as_bytes(), 1 << 20).unwrap(),
            std::time::Instant::now(),
            |_, d| delivery = Some(d),
        )
        .unwrap();
    let delivery = delivery.unwrap();

    let mut group = c.benchmark_group("shard");
    for subscribers in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(format!("deliver_to_{subscribers}_subscribers"), |b| {
            b.iter_batched_ref(
                || {
                    let mut hub = SectionHub::default();
                    for _ in 0..subscribers {
                        let outbox = Rc::new(Outbox::new(QueueLimits { max_frames: 1024, max_bytes: 4 << 20 }));
                        outbox.go_live(&snapshot);
                        hub.subscribe(section, outbox);
                    }
                    hub
                },
                |hub| hub.fan_out(section, black_box(&Arc::clone(&delivery))),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// Building the frame bytes of an event: once per event, whatever the
/// number of subscribers.
fn frame(c: &mut Criterion) {
    let event = envelope::parse("mesa-ya.tables.events", TABLE_UPDATED.as_bytes(), 1 << 20).unwrap();
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("table_updated", |b| {
        b.iter(|| Frame::event(EntityKind::Table, Action::Updated, black_box(&event.payload)))
    });
    group.finish();
}

/// A slow client's full queue: each push conflates it back to the newest
/// frame of each of its 16 entities (the cost a slow client puts on its
/// shard, per event).
fn conflation(c: &mut Criterion) {
    let snapshot = Snapshot::parse(br#"{"data":{"id":"s"}}"#).unwrap();
    let deliveries: Vec<Arc<Delivery>> = (0..16)
        .map(|n| {
            Arc::new(Delivery {
                frame: Frame::event(EntityKind::Table, Action::Updated, TABLE_UPDATED),
                key: EntityKey::new(EntityKind::Table, format!("table-{n}")),
                action: Action::Updated,
                updated_at: None,
                ends_section: false,
                routed_at: std::time::Instant::now(),
            })
        })
        .collect();
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_into_a_full_queue_of_16_entities", |b| {
        let outbox = Outbox::new(QueueLimits { max_frames: 64, max_bytes: 4 << 20 });
        outbox.go_live(&snapshot);
        let mut n = 0;
        b.iter(|| {
            n += 1;
            outbox.push_event(Arc::clone(&deliveries[n % deliveries.len()]))
        })
    });
    group.finish();
}

criterion_group!(benches, parse_and_route, frame, fan_out, conflation);
criterion_main!(benches);
