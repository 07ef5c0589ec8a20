//! Load harness: does one client that never reads hurt anybody else?
//!
//! Starts the real stack (tansu, the stand-in API, the release gateway),
//! connects reading clients to section A and to section B (which shares A's
//! shard, the hardest case), and publishes `LOAD_EVENTS` (20 000) events of
//! ~`LOAD_EVENT_BYTES` (1 KiB) to A at `LOAD_RATE`/s, with one event in ten
//! going to B. Each payload carries its send time, so every client measures
//! produce → receive latency. It runs twice on one gateway: a baseline, then
//! with a client on A that reads its snapshot and then stops reading. It
//! prints latency percentiles per run and the gateway's peak RSS. Events
//! cycle over `LOAD_TABLES` (500) tables: with few, conflation keeps the
//! stalled client's queue small; with one per event, it is closed with 4408.
//!
//! `cargo bench --bench fanout_load` (needs tansu; `scripts/ensure-tansu.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::tokens::TokenBuilder;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "load-harness-secret-0123456789";

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Load {
    events: usize,
    event_bytes: usize,
    rate: usize,
    readers: usize,
    /// Distinct tables the events cycle over: few let conflation keep a
    /// stalled client's queue small; as many as events force a 4408.
    tables: usize,
}

/// Two section ids that hash to the same shard of `shards`.
fn sections_on_one_shard(shards: usize) -> (String, String) {
    let a = uuid::Uuid::new_v4().to_string();
    let shard = SectionId::parse(&a).unwrap().shard(shards);
    loop {
        let b = uuid::Uuid::new_v4().to_string();
        if SectionId::parse(&b).unwrap().shard(shards) == shard {
            return (a, b);
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Reads until `expected` events arrived (or `deadline`); returns latencies in µs.
/// Counts itself in `live` once its snapshot has arrived.
async fn read_latencies(
    url: String,
    epoch: Instant,
    expected: usize,
    deadline: Instant,
    live: Arc<AtomicUsize>,
) -> Vec<u64> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    socket.next().await.expect("a snapshot").expect("a snapshot");
    live.fetch_add(1, Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(expected);
    while latencies.len() < expected {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline.into(), socket.next()).await else { break };
        if let Message::Text(text) = message {
            let frame: Value = serde_json::from_str(&text).expect("JSON frame");
            if let Some(sent) = frame["payload"]["sentMicros"].as_u64() {
                latencies.push((epoch.elapsed().as_micros() as u64).saturating_sub(sent));
            }
        }
    }
    latencies
}

struct RunReport {
    a: Vec<u64>,
    b: Vec<u64>,
    expected_a: usize,
    expected_b: usize,
    peak_rss_kib: u64,
    stalled_close: Option<String>,
}

/// p50/p99/p99.9 of `mesaya_delivery_seconds`, as the upper bound of the
/// histogram bucket each falls in.
fn delivery_quantiles(metrics: &str) -> String {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("mesaya_delivery_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            Some((bound.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, count)| *count);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or("?".to_string(), |(bound, _)| format!("≤ {} ms", bound * 1000.0))
    };
    format!("p50 {} p99 {} p99.9 {} ({total} frames)", at(0.5), at(0.99), at(0.999))
}

fn summary(name: &str, latencies: &mut [u64], expected: usize) -> String {
    latencies.sort_unstable();
    format!(
        "{name}: received {}/{} p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        latencies.len(),
        expected,
        percentile(latencies, 0.50) as f64 / 1000.0,
        percentile(latencies, 0.99) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

async fn run(
    load: &Load,
    gateway: &Gateway,
    producer: &FutureProducer,
    (section_a, section_b): (&str, &str),
    with_stalled_client: bool,
) -> RunReport {
    let token = TokenBuilder::new().expires_in(3600).hs256(SECRET);
    let url = |section: &str| gateway.ws_url(&format!("/ws/restaurant/{section}/{token}"));
    let epoch = Instant::now();
    let expected_b = load.events / 10;
    let expected_a = load.events - expected_b;
    let deadline = Instant::now() + Duration::from_secs((load.events / load.rate) as u64 + 60);

    let live = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..load.readers {
        readers.push(tokio::spawn(read_latencies(url(section_a), epoch, expected_a, deadline, Arc::clone(&live))));
        readers.push(tokio::spawn(read_latencies(url(section_b), epoch, expected_b, deadline, Arc::clone(&live))));
    }
    let stalled = if with_stalled_client {
        let (mut socket, _) = tokio_tungstenite::connect_async(url(section_a)).await.expect("connect");
        socket.next().await; // the snapshot: from here on it never reads
        Some(socket)
    } else {
        None
    };
    // Every reader must be live (snapshot received) before the first event.
    let all_live = Instant::now() + Duration::from_secs(120);
    while live.load(Ordering::Relaxed) < 2 * load.readers {
        assert!(
            Instant::now() < all_live,
            "only {} of {} readers got a snapshot",
            live.load(Ordering::Relaxed),
            2 * load.readers
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        let pid = gateway.pid();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    };

    let padding = "x".repeat(load.event_bytes.saturating_sub(420));
    let interval = Duration::from_secs_f64(1.0 / load.rate as f64);
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for i in 0..load.events {
        let on_b = i % 10 == 9;
        let section = if on_b { section_b } else { section_a };
        let table = format!("00000000-0000-4000-8000-{:012}", i % load.tables);
        let mut data = fixtures::table_json(&table, section, "2026-01-10T16:00:00.000Z");
        data["notes"] = json!(padding);
        data["sentMicros"] = json!(epoch.elapsed().as_micros() as u64);
        let record = fixtures::v2("updated", &table, data).to_string();
        let producer = producer.clone();
        in_flight.push(tokio::spawn(async move {
            producer
                .send(FutureRecord::<(), _>::to("mesa-ya.tables.events").payload(&record), Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        }));
        let due = started + interval * (i as u32 + 1);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
    for send in in_flight {
        send.await.expect("send task").expect("delivery");
    }

    let mut a = Vec::new();
    let mut b = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let latencies = reader.await.expect("reader");
        if i % 2 == 0 { a.extend(latencies) } else { b.extend(latencies) }
    }
    sampling.store(false, Ordering::Relaxed);
    let peak_rss_kib = sampler.await.expect("sampler");

    let stalled_close = match stalled {
        None => None,
        Some(mut socket) => {
            let mut outcome = "still open".to_string();
            while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
                match next {
                    Ok(Message::Close(frame)) => {
                        outcome = format!("closed {:?}", frame.map(|f| u16::from(f.code)));
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        outcome = format!("connection ended: {e}");
                        break;
                    }
                }
            }
            Some(outcome)
        }
    };
    RunReport {
        a,
        b,
        expected_a: expected_a * load.readers,
        expected_b: expected_b * load.readers,
        peak_rss_kib,
        stalled_close,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this harness takes its settings from the environment.
    let load = Load {
        events: setting("LOAD_EVENTS", 20_000),
        event_bytes: setting("LOAD_EVENT_BYTES", 1024),
        rate: setting("LOAD_RATE", 2_000),
        readers: setting("LOAD_READERS", 10),
        tables: setting("LOAD_TABLES", 500).max(1),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        println!(
            "fanout_load: {} events of ~{} B over {} tables at {}/s, {} readers on A and {} on B (same shard), SHARDS=2",
            load.events, load.event_bytes, load.tables, load.rate, load.readers, load.readers
        );
        // Each run gets a fresh broker and gateway, so neither inherits the
        // other's topic size or process state.
        for stalled in [false, true] {
            let broker = Broker::start_memory().await;
            let api = StandInApi::start();
            let sections = sections_on_one_shard(2);
            for section in [&sections.0, &sections.1] {
                api.set_section(section, fixtures::nest_snapshot(section, vec![]));
            }
            let mut env = gateway::wiring(&broker, &api, SECRET);
            env.extend([("SHARDS", "2".to_string()), ("LOG_LEVEL", "warn".to_string())]);
            let mut gateway = Gateway::start(std::path::Path::new(env!("CARGO_BIN_EXE_mesaya-realtime")), &env);
            gateway.wait_ready(Duration::from_secs(30)).await;
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", broker.bootstrap())
                .set("linger.ms", "1")
                .create()
                .expect("producer");
            let start_rss = rss_kib(gateway.pid()).unwrap_or(0);

            let mut report = run(&load, &gateway, &producer, (&sections.0, &sections.1), stalled).await;
            let label = if stalled { "with a client on A that stopped reading" } else { "baseline" };
            println!("== {label}");
            println!("  {}", summary("section A readers", &mut report.a, report.expected_a));
            println!("  {}", summary("section B readers", &mut report.b, report.expected_b));
            println!(
                "  gateway RSS: {start_rss} KiB at start, {} KiB peak, {} KiB at end",
                report.peak_rss_kib,
                rss_kib(gateway.pid()).unwrap_or(0)
            );
            if let Some(outcome) = report.stalled_close {
                println!("  stalled client: {outcome}");
            }
            let (_, metrics) = gateway.get("/metrics").await;
            println!("  gateway's own latency, route → client socket: {}", delivery_quantiles(&metrics));
            for line in metrics.lines().filter(|l| {
                l.starts_with("mesaya_slow_consumer_closes_total") || l.starts_with("mesaya_frames_conflated_total")
            }) {
                println!("  {line}");
            }
        }
    });
}
