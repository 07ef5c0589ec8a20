//! The hot path, stage by stage: parse a Kafka record, route it, build its
//! frame, fan the frame out to a section's subscribers, and conflate a slow
//! client's queue, and write it to loopback sockets from the shard's write of the turn;
//! and, on the connect path, read a snapshot. Run with
//! `cargo bench --bench pipeline`.

use std::hint::black_box;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mesaya_realtime::application::delivery::{Delivery, Stamp};
use mesaya_realtime::application::hub::SectionHub;
use mesaya_realtime::application::outbox::{DirectWriter, Outbox};
use mesaya_realtime::application::ports::{ResumeGrant, ResumeTokens};
use mesaya_realtime::application::resume_buffer::{ResumeBuffer, ResumeBufferLimits};
use mesaya_realtime::application::router::EventRouter;
use mesaya_realtime::domain::audience::{Audience, UserId};
use mesaya_realtime::domain::entity::{Action, EntityKey, EntityKind};
use mesaya_realtime::domain::envelope;
use mesaya_realtime::domain::frame::Frame;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::limits::QueueLimits;
use mesaya_realtime::domain::position::{PartitionId, Position, Positions, Progress};
use mesaya_realtime::domain::snapshot::Snapshot;
use mesaya_realtime::infrastructure::resume_token::HmacResumeTokens;
use mesaya_realtime::transport::wire::WireWriter;

const SECTION: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
const TABLE_UPDATED: &str = r#"{"timestamp":"2026-01-10T16:00:00.500Z","event_type":"updated","entity_id":"9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60",
 "data":{"id":"9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60","sectionId":"5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11","number":1,"capacity":6,
  "posX":14,"posY":10,"width":3,"height":2,"tableImageId":"0f7d2c8e-1111-4a2b-9c3d-4e5f60718293","chairImageId":"6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b",
  "status":"AVAILABLE","isAvailable":true,"createdAt":"2026-01-10T15:10:00.000Z","updatedAt":"2026-01-10T16:00:00.480Z"}}"#;

fn unplaced() -> Stamp {
    Stamp { at: Instant::now(), position: None }
}

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
            router.route(event, unplaced(), |section, delivery| {
                black_box((section, delivery));
            })
        })
    });
    group.finish();
}

/// The routed delivery of one `table.updated` record.
fn table_updated() -> Arc<Delivery> {
    let mut router = EventRouter::default();
    let mut delivery = None;
    router
        .route(
            envelope::parse("mesa-ya.tables.events", TABLE_UPDATED.as_bytes(), 1 << 20).unwrap(),
            unplaced(),
            |_, d| delivery = Some(d),
        )
        .unwrap();
    delivery.unwrap()
}

fn live_outbox() -> Rc<Outbox> {
    let outbox = Rc::new(Outbox::new(QueueLimits { max_frames: 1024, max_bytes: 4 << 20 }, UserId::new("u1")));
    outbox.go_live(&Snapshot::parse(br#"{"data":{"id":"s"}}"#).unwrap(), Audience::Staff);
    outbox
}

fn fan_out(c: &mut Criterion) {
    let section = SectionId::parse(SECTION).unwrap();
    let delivery = table_updated();

    let mut group = c.benchmark_group("shard");
    for subscribers in [1usize, 100, 1000] {
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(format!("deliver_to_{subscribers}_subscribers"), |b| {
            b.iter_batched_ref(
                || {
                    let mut hub = SectionHub::default();
                    for _ in 0..subscribers {
                        hub.subscribe(section, live_outbox());
                    }
                    hub
                },
                |hub| {
                    hub.fan_out(section, black_box(&Arc::clone(&delivery)));
                    // No sockets here: each client's writer task is woken.
                    hub.write_fanned_out();
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// The shard's whole delivery at a moderate rate: fan an event out to N
/// clients, then the hub's write sends it to each client's loopback socket, one
/// `sendmsg` each (nobody waits on the clients' ends, so the kernel wakes no
/// reader; the clients' sockets are drained between iterations, untimed).
fn deliver_and_write(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let _reactor = runtime.enter();
    let section = SectionId::parse(SECTION).unwrap();
    let delivery = table_updated();
    let mut group = c.benchmark_group("shard");
    for sockets in [1usize, 100] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut hub = SectionHub::default();
        let (mut writers, mut outboxes) = (Vec::new(), Vec::new());
        let mut clients: Vec<std::net::TcpStream> = (0..sockets)
            .map(|_| {
                let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                client.set_nonblocking(true).unwrap();
                let (server, _) = listener.accept().unwrap();
                server.set_nonblocking(true).unwrap();
                let writer = Rc::new(WireWriter::new(Rc::new(tokio::net::TcpStream::from_std(server).unwrap()), false));
                let outbox = live_outbox();
                outbox.attach(Rc::clone(&writer) as Rc<dyn DirectWriter>);
                hub.subscribe(section, Rc::clone(&outbox));
                outboxes.push(outbox);
                writers.push(writer);
                client
            })
            .collect();
        let mut drained = vec![0u8; 1 << 16];
        group.throughput(Throughput::Elements(sockets as u64));
        group.bench_function(format!("deliver_and_write_to_{sockets}_sockets"), |b| {
            b.iter_batched(
                || {
                    for client in &mut clients {
                        while client.read(&mut drained).is_ok_and(|n| n > 0) {}
                    }
                    // The reactor learns that the sockets take bytes, as a
                    // shard's loop does between turns (at once when it knows).
                    runtime.block_on(async {
                        for writer in &writers {
                            writer.writable().await.unwrap();
                        }
                    });
                },
                |()| {
                    hub.fan_out(section, black_box(&Arc::clone(&delivery)));
                    hub.write_fanned_out();
                    let written = |(writer, outbox): (&Rc<WireWriter>, &Rc<Outbox>)| {
                        !writer.has_started() && !outbox.has_writable()
                    };
                    assert!(writers.iter().zip(&outboxes).all(written), "every socket took its frame");
                },
                BatchSize::PerIteration,
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
                frames: Frame::event(EntityKind::Table, Action::Updated, TABLE_UPDATED).into(),
                key: EntityKey::new(EntityKind::Table, format!("table-{n}")),
                action: Action::Updated,
                updated_at: None,
                ends_section: false,
                routed_at: std::time::Instant::now(),
                position: None,
            })
        })
        .collect();
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function("push_into_a_full_queue_of_16_entities", |b| {
        let outbox = Outbox::new(QueueLimits { max_frames: 64, max_bytes: 4 << 20 }, UserId::new("u1"));
        outbox.go_live(&snapshot, Audience::Staff);
        let mut n = 0;
        b.iter(|| {
            n += 1;
            outbox.push_event(Arc::clone(&deliveries[n % deliveries.len()]))
        })
    });
    group.finish();
}

/// What resuming adds per routed event (keeping its frame in the shard's
/// resume buffer, at steady state: every keep drops the oldest frame), and
/// per position frame and resume (a token issued, a token read).
fn resume(c: &mut Criterion) {
    let partition = PartitionId::new("mesa-ya.tables.events", 0);
    let sections: Vec<SectionId> =
        (0..10_000u128).map(|n| SectionId::parse(&uuid::Uuid::from_u128(n + 1).to_string()).unwrap()).collect();
    let mut progress = Progress::default();
    progress.assigned(partition, 0);
    // The defaults for one of two shards: 1024 frames per section, 32 MiB.
    let mut buffer =
        ResumeBuffer::new(ResumeBufferLimits { window: Duration::from_secs(120), per_section: 1024, bytes: 32 << 20 });
    buffer.merge_progress(&progress);
    let frame = Frame::event(EntityKind::Table, Action::Updated, TABLE_UPDATED);
    let delivery_at = |offset: i64| {
        Arc::new(Delivery {
            frames: frame.clone().into(),
            key: EntityKey::new(EntityKind::Table, "t"),
            action: Action::Updated,
            updated_at: None,
            ends_section: false,
            routed_at: Instant::now(),
            position: Some(Position { partition, offset }),
        })
    };
    let mut offset = 0i64;
    let now = Instant::now();
    while buffer.size().1 < (32 << 20) - 1024 {
        buffer.keep(sections[offset as usize % sections.len()], &delivery_at(offset), now);
        offset += 1;
    }
    let mut group = c.benchmark_group("resume");
    group.throughput(Throughput::Elements(1));
    group.bench_function("keep_a_frame_in_a_full_buffer", |b| {
        b.iter_batched(
            || {
                offset += 1;
                (sections[offset as usize % sections.len()], delivery_at(offset))
            },
            |(section, delivery)| buffer.keep(section, &delivery, now),
            BatchSize::SmallInput,
        )
    });
    let tokens = HmacResumeTokens::new("a-secret-shared-by-every-instance");
    let positions: Positions = (0..12).map(|p| (PartitionId::new("mesa-ya.tables.events", p), 25_000_000)).collect();
    let grant = ResumeGrant {
        section: sections[0],
        sub: "user-1",
        issued_at: 1_800_000_000,
        chain_started: 1_799_999_000,
        positions: &positions,
    };
    group.bench_function("issue_a_token_of_12_partitions", |b| b.iter(|| tokens.issue(black_box(&grant))));
    let token = tokens.issue(&grant).expect("12 partitions fit in a token");
    group.bench_function("open_a_token_of_12_partitions", |b| b.iter(|| tokens.open(black_box(&token), "user-1")));
    group.finish();
}

/// Reading the API's answer on every connect: a section of 10 tables, in
/// Nest's `{"data": …}` envelope, as the load harness's stand-in API sends it.
fn snapshot(c: &mut Criterion) {
    use mesaya_testkit::fixtures;

    let tables = (0..10).map(|i| fixtures::table_json(&format!("t{i}"), SECTION, fixtures::CREATED_AT)).collect();
    let body = serde_json::json!({ "data": fixtures::nest_snapshot(SECTION, tables) }).to_string();
    let mut group = c.benchmark_group("connect");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_a_snapshot_of_10_tables", |b| {
        b.iter(|| Snapshot::parse(black_box(body.as_bytes())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, parse_and_route, frame, fan_out, deliver_and_write, conflation, resume, snapshot);
criterion_main!(benches);
