//! Load harness: the gateway beside a raw pre-framed writer.
//!
//! One run reports, for the real stack (tansu, the stand-in API, the release gateway) and for a
//! raw writer built into this harness, the figures of the performance table in BENCHMARKS.md:
//!
//! - `idle`: gateway RSS per idle connection at `LOAD_IDLE_CONNS` (19 000) connections that got
//!   their snapshot: (VmRSS after − VmRSS before) / N, next to the raw server's RSS per
//!   connection (handshake only, sockets held).
//! - `connect`: connects/s to those N connections (with the snapshot call for the gateway,
//!   handshake only for the raw server), at most `LOAD_CONNECT_CONCURRENCY` (100) in flight
//!   (the gateway listens with std's backlog of 128: more in flight overflow it, and each overflow
//!   costs a one-second SYN retransmit; the harness prints the kernel's overflow count), and each
//!   server's CPU per connect. The raw writer then connects N clients once more, making the
//!   gateway's snapshot call too: the same GET, with the client's token, to a stand-in API of its
//!   own (set up like the gateway's) on keep-alive connections, the answer's body spliced
//!   unparsed into a `section.snapshot` text frame: the floor of a connect with the snapshot call
//!   on this machine.
//! - `latency`: each server's own latency over the measured window, 2 000 connections in 10
//!   sections, `LOAD_OFFERED` (100 000) deliveries/s offered: the gateway's route → socket
//!   (`mesaya_delivery_seconds`, bucket deltas), the raw writer's from reading an event off its
//!   stdin to writing the frame's last byte; end-to-end latency seen by the clients for both.
//! - `cpu`: deliveries per CPU-second of the server process (utime + stime from /proc), 10 000
//!   connections in 10 sections, 100 000 deliveries/s offered.
//! - `closed`: closed-loop deliveries/s, 10 000 connections in 1 section: events are published
//!   while fewer than `LOAD_WINDOW` (64) are outstanding at the slowest client.
//!
//! Select with `LOAD_ROWS=idle,connect,latency,cpu,closed` (`idle` and `connect` share one
//! connection phase) and `LOAD_TARGETS=gateway,raw`. Each row starts a fresh server (and, for the
//! gateway, a fresh broker and API), measures for `LOAD_SECS` (20) after `LOAD_WARMUP` (2) s, and
//! stops by itself. Every event carries a per-section sequence number and its send time; every
//! client checks that each expected frame arrived exactly once (loss and duplicates are counted
//! per row).
//!
//! Events are ~`LOAD_EVENT_BYTES` (550) v2 records, `table.updated` on `mesa-ya.tables.events` by
//! default (`LOAD_EVENT=table`; each section's events cycle over 4096 table ids). With
//! `LOAD_EVENT=reservation` they are `reservation.updated` on `mesa-ya.reservations.events`: a
//! reservation as the API sends it (`userId`, `userName`, `userEmail` of one diner whom no client's
//! token names, so every public client gets the cut frame), 4096 reservation ids per section, each
//! on one of the section's `LOAD_SNAPSHOT_TABLES` snapshot tables, so it routes at once. Either
//! kind carries `loadSeq` and `loadSent`, a new `updatedAt` for every event of a section, and a
//! `notes` padding up to the size (a reservation's own fields take ~620 B, so at the default its
//! padding is empty). `LOAD_STAFF_SHARE` percent of each section's clients (default
//! 50 with reservations, 0 with tables) connect with an `ADMIN` token (staff: the full frame), the
//! rest with a `USER` token (public). In the reservation mode the gateway gets
//! `WS_PUBLIC_RESERVATION_FIELDS` = its default list plus `loadSeq,loadSent`, so that public
//! clients can still check their sequence and measure latency; `notes` stays private, so the public
//! frame is really cut. The rows print what each audience received (frames, payload bytes), and the
//! gateway's `mesaya_audience_connections`, `mesaya_frames_cut_total` and
//! `mesaya_events_dropped_total`. The raw writer sends one pre-built frame to all, so it has no
//! variants to choose from: `LOAD_EVENT=reservation` skips it (with a message) and measures the
//! gateway alone.
//!
//! The clients run in this process (a minimal WebSocket client: one task and one read buffer per
//! connection, answering pings). The raw writer runs in a child process (this executable with
//! `LOAD_ROLE=raw`), so its RSS and CPU are its own: it accepts the WebSocket handshake, holds the
//! sockets, and writes each pre-framed event it receives on its stdin to every socket of the
//! section, directly when the socket takes the bytes and queued only on would-block, on
//! `SHARDS` (default: cores) threads.
//!
//! Gateway variables forwarded when set: `SHARDS`, `WS_QUEUE_MAX_FRAMES`, `WS_QUEUE_MAX_BYTES`,
//! `KAFKA_FETCH_WAIT_MAX` (default 10ms here), `SNAPSHOT_CONCURRENCY`, `WS_MAX_CONNECTIONS`
//! (default 19200 here), `HTTP_MAX_PENDING` (256 here), `HTTP_MAX_PENDING_PER_IP` (0 here),
//! `WS_PING_INTERVAL`, `WS_WRITE_TIMEOUT`, `LOG_LEVEL` (default warn),
//! `RESUME_SECRET`, `RESUME_WINDOW`, `RESUME_BUFFER`, `RESUME_BUFFER_BYTES`. With `LOAD_RESUME=1`
//! every client opts in to resume tokens (`?resume=`). `LOAD_GATEWAY_BIN` measures another build
//! of the gateway (an older commit's, built elsewhere) instead of this one.
//!
//! The `latency`, `cpu` and `closed` rows print, for each busy server thread, the share of the
//! window it ran and the share it waited runnable for a CPU (the kernel's schedstat): on this 2-core
//! machine the server shares the cores with its clients and the broker, and that wait is part of
//! its latency. `LOAD_SERVER_NICE=-10` (root) gives the server's threads priority over
//! everything else, as cores of its own would.
//!
//! Compression: with `LOAD_DEFLATE=1` every client offers permessage-deflate as a browser does
//! (`permessage-deflate; client_max_window_bits`) and inflates what comes compressed (RSV1); the
//! gateway accepts it unless `WS_COMPRESSION=off` is forwarded. Every row prints the bytes on the
//! wire per delivery and, in the idle row, per snapshot (`LOAD_SNAPSHOT_TABLES` tables, 10 by
//! default), headers included, beside the bytes of their text: run a row with and without
//! `LOAD_DEFLATE=1` for the uncompressed figures beside the compressed ones.
//!
//! `cargo bench --bench fanout_load` (needs tansu; `scripts/ensure-tansu.sh`).
//!
//! Where things are: `rows.rs` runs each row (the idle/connect phase, the streaming rows);
//! `client.rs` is the WebSocket client and the fleet that checks exactly-once; `raw.rs` the raw
//! writer (child process) and its handle; `stack.rs` the gateway's stack and the server a row
//! measures; `events.rs` what is published; `report.rs` the Prometheus parsing, latency histograms
//! and cells; `machine.rs` the /proc readings and the run's header facts. This file holds the
//! settings and `main`, which prints the table.

mod client;
mod events;
mod machine;
mod raw;
mod report;
mod rows;
mod stack;

use client::*;
use events::*;
use machine::*;
use raw::*;
use report::*;
use rows::*;
use stack::*;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mesaya_realtime::domain::audience::{DEFAULT_PUBLIC_RESERVATION_FIELDS, PublicFields};
use mesaya_realtime::domain::ids::SectionId;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::tokens::TokenBuilder;
use rdkafka::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

pub(crate) const SECRET: &str = "load-harness-secret-0123456789";
/// Distinct entities (tables, or reservations) per section that events cycle over: more than a
/// client queue holds, so conflation can never merge two frames and hide a loss.
pub(crate) const ENTITIES_PER_SECTION: u64 = 4096;
/// The diner of every reservation the harness publishes: no client's `sub` (theirs are random
/// UUIDs), so every public client gets the cut frame.
pub(crate) const DINER: &str = fixtures::USER_ID;

pub(crate) fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().replace('_', "").parse().ok()).unwrap_or(default)
}

pub(crate) fn list_setting(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn main() {
    if std::env::var("LOAD_ROLE").as_deref() == Ok("raw") {
        raw_main();
        return;
    }
    // `cargo bench` passes `--bench`; this harness takes its settings from the environment.
    let shards = setting("SHARDS", cores()).max(1);
    let event = EventKind::from_setting();
    let staff_share = setting("LOAD_STAFF_SHARE", if event == EventKind::Reservation { 50 } else { 0 });
    let mut settings = Settings {
        rows: list_setting("LOAD_ROWS", "idle,connect,latency,cpu,closed"),
        kinds: list_setting("LOAD_TARGETS", "gateway,raw")
            .iter()
            .filter_map(|k| match k.as_str() {
                "gateway" => Some(Kind::Gateway),
                "raw" => Some(Kind::Raw),
                _ => None,
            })
            .collect(),
        shards,
        idle_conns: setting("LOAD_IDLE_CONNS", 19_000),
        idle_sections: setting("LOAD_IDLE_SECTIONS", 10).max(1),
        idle_settle: Duration::from_secs(setting("LOAD_IDLE_SETTLE", 3) as u64),
        connect_concurrency: setting("LOAD_CONNECT_CONCURRENCY", 100),
        latency_conns: setting("LOAD_LATENCY_CONNS", 2_000),
        stream_sections: setting("LOAD_SECTIONS", 10).max(1),
        cpu_conns: setting("LOAD_CPU_CONNS", 10_000),
        closed_conns: setting("LOAD_CLOSED_CONNS", 10_000),
        offered: setting("LOAD_OFFERED", 100_000),
        warmup: Duration::from_secs(setting("LOAD_WARMUP", 2) as u64),
        secs: Duration::from_secs(setting("LOAD_SECS", 20) as u64),
        window: setting("LOAD_WINDOW", 64) as u64,
        event_bytes: setting("LOAD_EVENT_BYTES", 550),
        snapshot_tables: setting("LOAD_SNAPSHOT_TABLES", 10),
        server_nice: std::env::var("LOAD_SERVER_NICE").ok().filter(|nice| !nice.trim().is_empty()).map(|nice| {
            nice.trim().parse().unwrap_or_else(|_| panic!("LOAD_SERVER_NICE={nice}: not a whole number (-20 to 19)"))
        }),
        event,
        deflate: setting("LOAD_DEFLATE", 0) == 1,
        tokens: Tokens::new(staff_share),
    };
    if event == EventKind::Reservation && settings.kinds.contains(&Kind::Raw) {
        println!(
            "LOAD_EVENT=reservation: skipping the raw writer, which writes one pre-built frame to every client of a \
             section and so has no staff and public frames to choose between; measuring the gateway only"
        );
        settings.kinds.retain(|&kind| kind != Kind::Raw);
    }
    let has = |row: &str| settings.rows.iter().any(|r| r == row);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let run_started = Instant::now();
    println!("load harness: the gateway beside a raw pre-framed writer");
    println!("machine: {}", machine());
    match std::env::var_os(GATEWAY_BIN) {
        Some(other) => println!("gateway under test: {} ({GATEWAY_BIN})", other.to_string_lossy()),
        None => println!("gateway under test: built by cargo from {}", source_version()),
    }
    let (record_bytes, full_bytes, public_bytes) = Events::new(
        settings.event,
        vec![uuid::Uuid::nil().to_string()],
        settings.snapshot_tables,
        settings.event_bytes,
        Instant::now(),
    )
    .sizes();
    println!(
        "gateway: {}; raw writer: {} threads; events ~{record_bytes} B v2 {} on {} (frames ~{full_bytes} B{}); rows {:?}",
        gateway_env_summary(settings.event),
        settings.shards,
        settings.event.event(),
        settings.event.topic(),
        if public_bytes == full_bytes { String::new() } else { format!(", public ~{public_bytes} B") },
        settings.rows
    );
    println!(
        "clients: {} % staff (role ADMIN), {} % public (role USER) (LOAD_STAFF_SHARE)",
        settings.tokens.staff_share,
        100 - settings.tokens.staff_share
    );
    let mut table: Vec<(String, String, String)> = Vec::new();
    runtime.block_on(async {
        if has("idle") || has("connect") {
            println!("== idle + connect: {} connections on {} sections", settings.idle_conns, settings.idle_sections);
            let mut results = HashMap::new();
            // The raw writer connects twice when connects are measured: handshake only, then with
            // the gateway's snapshot call (the connect rate's floor on this machine).
            let mut kinds = settings.kinds.clone();
            if has("connect") && kinds.contains(&Kind::Raw) {
                kinds.push(Kind::RawSnapshot);
            }
            for kind in kinds {
                results.insert(kind.name(), idle_connect(&settings, kind).await);
            }
            let cell = |kind: Kind, f: &dyn Fn(&IdleResult) -> String| {
                results.get(kind.name()).map_or("—".to_string(), f)
            };
            if has("idle") {
                table.push((
                    format!("RSS per idle connection at {} connections{}", settings.idle_conns, settings.audience_label()),
                    cell(Kind::Gateway, &|r| format!("{:.2} KiB ({} live)", r.rss_per_conn_kib, r.live)),
                    cell(Kind::Raw, &|r| format!("{:.2} KiB ({} live)", r.rss_per_conn_kib, r.live)),
                ));
                table.push((
                    format!("  snapshot of {} tables", settings.snapshot_tables),
                    cell(Kind::Gateway, &|r| r.snapshot_bytes.clone()),
                    "—".into(),
                ));
            }
            if has("connect") {
                table.push((
                    format!(
                        "connects/s, {} connections, ≤ {} connecting at once (gateway: with the snapshot call; raw: handshake only)",
                        settings.idle_conns, settings.connect_concurrency
                    ),
                    cell(Kind::Gateway, &IdleResult::connects_cell),
                    cell(Kind::Raw, &IdleResult::connects_cell),
                ));
                if results.contains_key(Kind::RawSnapshot.name()) {
                    table.push((
                        "  connects/s, both with the snapshot call (raw: the same GET to an identical stand-in API \
                         on keep-alive connections, its body spliced unparsed into a frame)"
                            .into(),
                        cell(Kind::Gateway, &IdleResult::connects_cell),
                        cell(Kind::RawSnapshot, &IdleResult::connects_cell),
                    ));
                }
            }
        }
        let exact_cell = |r: &StreamResult| {
            let mut cell = format!("lost {}, dup {}", r.exact.lost, r.exact.dups);
            if r.exact.undelivered > 0 {
                cell += &format!(", {} still queued at the end", r.exact.undelivered);
            }
            cell
        };
        if has("latency") {
            let (conns, sections) = (settings.latency_conns, settings.stream_sections);
            let results = offered_rows(&settings, "latency", conns).await;
            let gateway = results.get(Kind::Gateway.name());
            let raw = results.get(Kind::Raw.name());
            table.push((
                format!(
                    "own latency (gateway: route → socket, mesaya_delivery_seconds; raw: stdin → socket), {conns} connections in {sections} sections, {} deliveries/s offered{}",
                    settings.offered,
                    settings.audience_label()
                ),
                own_latency_cell(gateway),
                own_latency_cell(raw),
            ));
            table.push((
                "  end to end, publish → client (gateway: through tansu; raw: through a pipe)".into(),
                gateway.map_or("—".into(), |r| {
                    format!("p50 {} ms, p99 {} ms", fmt_opt(r.e2e.0, |v| format!("{v:.1}")), fmt_opt(r.e2e.1, |v| format!("{v:.1}")))
                }),
                raw.map_or("—".into(), |r| {
                    format!("p50 {} ms, p99 {} ms", fmt_opt(r.e2e.0, |v| format!("{v:.1}")), fmt_opt(r.e2e.1, |v| format!("{v:.1}")))
                }),
            ));
            table.push(("  exactly once (latency row)".into(), gateway.map_or("—".into(), exact_cell), raw.map_or("—".into(), exact_cell)));
        }
        if has("cpu") {
            let (conns, sections) = (settings.cpu_conns, settings.stream_sections);
            let results = offered_rows(&settings, "cpu", conns).await;
            let cell = |kind: Kind| {
                results.get(kind.name()).map_or("—".into(), |r: &StreamResult| {
                    let rate = r.deliveries as f64 / r.wall;
                    let saturated = r.offered.is_some_and(|offered| rate < 0.95 * offered);
                    format!(
                        "{:.0} ({:.0} deliveries/s{}, {:.0} % of a core)",
                        r.deliveries as f64 / r.cpu.max(1e-9),
                        rate,
                        if saturated { ": could not keep up" } else { "" },
                        100.0 * r.cpu / r.wall
                    )
                })
            };
            table.push((
                format!(
                    "deliveries per server CPU-second, {conns} connections in {sections} sections, {} deliveries/s offered{}",
                    settings.offered,
                    settings.audience_label()
                ),
                cell(Kind::Gateway),
                cell(Kind::Raw),
            ));
            table.push((
                format!("  per delivery (cpu row, ~{full_bytes} B frames)"),
                results.get(Kind::Gateway.name()).map_or("—".into(), |r| r.wire_bytes.clone()),
                results.get(Kind::Raw.name()).map_or("—".into(), |r| r.wire_bytes.clone()),
            ));
            table.push((
                "  exactly once (cpu row)".into(),
                results.get(Kind::Gateway.name()).map_or("—".into(), exact_cell),
                results.get(Kind::Raw.name()).map_or("—".into(), exact_cell),
            ));
        }
        if has("closed") {
            let conns = settings.closed_conns;
            println!("== closed loop: {conns} connections in 1 section, window {} events", settings.window);
            let mut results = HashMap::new();
            for &kind in &settings.kinds {
                results.insert(kind.name(), stream_row(&settings, kind, conns, 1, Pace::Window(settings.window)).await);
            }
            let cell = |kind: Kind| {
                results.get(kind.name()).map_or("—".into(), |r: &StreamResult| {
                    format!(
                        "{:.0} ({:.0} per CPU-second)",
                        r.client_frames as f64 / r.wall,
                        r.deliveries as f64 / r.cpu.max(1e-9)
                    )
                })
            };
            table.push((
                format!("closed-loop deliveries/s, {conns} connections, 1 section{}", settings.audience_label()),
                cell(Kind::Gateway),
                cell(Kind::Raw),
            ));
            table.push((
                "  exactly once (closed row)".into(),
                results.get(Kind::Gateway.name()).map_or("—".into(), exact_cell),
                results.get(Kind::Raw.name()).map_or("—".into(), exact_cell),
            ));
        }
    });
    println!();
    println!("| figure | mesaya-realtime | raw pre-framed writer, same run |");
    println!("|---|---|---|");
    for (figure, gateway, raw) in table {
        println!("| {figure} | {gateway} | {raw} |");
    }
    println!("(whole run: {:.0} s)", run_started.elapsed().as_secs_f64());
}
