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

const SECRET: &str = "load-harness-secret-0123456789";
/// Distinct entities (tables, or reservations) per section that events cycle over: more than a
/// client queue holds, so conflation can never merge two frames and hide a loss.
const ENTITIES_PER_SECTION: u64 = 4096;
/// The diner of every reservation the harness publishes: no client's `sub` (theirs are random
/// UUIDs), so every public client gets the cut frame.
const DINER: &str = fixtures::USER_ID;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().replace('_', "").parse().ok()).unwrap_or(default)
}

fn list_setting(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// /proc readings

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime and stime of every thread of `pid`, in seconds: its own code's time and the kernel's
/// on its behalf.
fn cpu_split(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else { return (0.0, 0.0) };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) / hz.max(1.0), ticks(12) / hz.max(1.0))
}

/// utime + stime of every thread of `pid`, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// One thread's time so far, from the kernel's schedstat.
struct ThreadTimes {
    name: String,
    /// Nanoseconds it has run on a CPU.
    ran: u64,
    /// Nanoseconds it has waited runnable for one: what a busy machine adds to its latency.
    waited: u64,
}

/// Every thread of `pid`, by thread id.
fn thread_times(pid: &str) -> BTreeMap<String, ThreadTimes> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return BTreeMap::new() };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_string();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            let mut fields = schedstat.split_whitespace().map(|v| v.parse::<u64>().ok());
            let (ran, waited) = (fields.next()??, fields.next()??);
            Some((path.file_name()?.to_string_lossy().into_owned(), ThreadTimes { name, ran, waited }))
        })
        .collect()
}

/// "name ran / waited" as shares of `wall`, for each thread that was busy for at least 2 % of it,
/// busiest first.
fn thread_shares(before: &BTreeMap<String, ThreadTimes>, after: &BTreeMap<String, ThreadTimes>, wall: f64) -> String {
    let mut shares: Vec<(&str, f64, f64)> = after
        .iter()
        .map(|(tid, now)| {
            let (ran0, waited0) = before.get(tid).map_or((0, 0), |then| (then.ran, then.waited));
            let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / 1e9 / wall;
            (now.name.as_str(), share(now.ran, ran0), share(now.waited, waited0))
        })
        .filter(|(_, ran, waited)| ran + waited >= 0.02)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
        .iter()
        .map(|(name, ran, waited)| format!("{name} {:.0} % / {:.0} %", 100.0 * ran, 100.0 * waited))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives every thread of `pid` the niceness `nice` (`LOAD_SERVER_NICE`; below 0 needs root), so
/// that the server runs whenever it is runnable even on a machine its clients and broker keep
/// busy: what it would see with cores of its own.
fn prioritise(pid: &str, nice: i32, who: &str) {
    let tids: Vec<String> = thread_times(pid).into_keys().collect();
    for tid in &tids {
        let Ok(id) = tid.parse::<libc::id_t>() else { continue };
        // SAFETY: setpriority only changes the scheduling priority of the thread it names.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, id, nice) } != 0 {
            panic!("LOAD_SERVER_NICE={nice}: setpriority on thread {tid}: {}", std::io::Error::last_os_error());
        }
    }
    println!("  {who}: {} server threads at nice {nice} (LOAD_SERVER_NICE)", tids.len());
}

/// Busy CPU-seconds of the whole machine (all cores; everything but idle and iowait).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let v: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (total - idle) / hz.max(1.0)
}

/// Waits (at most `LOAD_QUIET_MAX` seconds, 60 by default) until the rest of the machine uses
/// less than a quarter of a core, so that a row does not start while something else (a build)
/// holds the cores it is about to measure.
async fn wait_for_quiet() {
    let max = Duration::from_secs(setting("LOAD_QUIET_MAX", 60) as u64);
    let started = Instant::now();
    loop {
        let (machine, own) = (machine_busy_seconds(), cpu_seconds("self"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = (machine_busy_seconds() - machine) - (cpu_seconds("self") - own);
        if busy < 0.25 || started.elapsed() >= max {
            if started.elapsed() > Duration::from_secs(2) {
                println!(
                    "  (waited {:.0} s for a quiet machine; others use {busy:.2} cores now)",
                    started.elapsed().as_secs_f64()
                );
            }
            return;
        }
    }
}

/// The kernel's count of connections dropped because a listen queue was full (`TcpExt:
/// ListenOverflows`): each costs the client a SYN retransmit, one second later.
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = rows[..] else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The commit of the gateway's source (cargo rebuilt the binary from it), `+changes` when `src/`
/// differs from it.
/// Names another build of the gateway to measure (an older commit's, say),
/// so that two builds can be compared in the same hour with the same harness.
const GATEWAY_BIN: &str = "LOAD_GATEWAY_BIN";

fn gateway_binary() -> std::path::PathBuf {
    std::env::var_os(GATEWAY_BIN).map_or_else(|| env!("CARGO_BIN_EXE_mesaya-realtime").into(), Into::into)
}

fn source_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["log", "-1", "--format=%h %s"]);
    let changed = !git(&["status", "--porcelain", "--", "src"]).is_empty();
    let commit: String = commit.chars().take(90).collect();
    format!("{commit}{}", if changed { " (+ uncommitted changes in src/)" } else { "" })
}

fn machine() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".to_string(), |m| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    format!(
        "nproc {}, {:.1} GiB RAM, {model}, Linux {}, open files {}/{}",
        cores(),
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        limit.rlim_cur,
        limit.rlim_max
    )
}

// ---------------------------------------------------------------------------------------------
// Prometheus text

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(upper bound, cumulative count)` of a histogram's buckets.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound.contains("Inf") { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The q-quantile of cumulative buckets, interpolated linearly inside its bucket; with the bucket's
/// upper bound.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return Some((lower, bound));
            }
            let inside = if count > below { (target - below) / (count - below) } else { 1.0 };
            return Some((lower + inside * (bound - lower), bound));
        }
        (lower, below) = (bound, count);
    }
    None
}

fn delta_histogram(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, c)| *c);
            (bound, count - earlier)
        })
        .collect()
}

fn ms(seconds: f64) -> String {
    if seconds.is_infinite() { "∞".into() } else { format!("{:.2} ms", seconds * 1000.0) }
}

/// A server's own latency over the measured window, in seconds: the gateway's read from its
/// Prometheus histogram (`mesaya_delivery_seconds`: an estimate inside the bucket, and the
/// bucket's upper bound), the raw writer's from its own histogram (1/16-octave buckets).
#[derive(Clone, Copy)]
struct OwnLatency {
    p50: f64,
    p99: f64,
    p999: f64,
    /// The gateway's: the upper bounds of the buckets that p50, p99 and p99.9 fall in.
    buckets: Option<[f64; 3]>,
}

impl OwnLatency {
    /// For the summary table: p50 and p99.
    fn short(&self) -> String {
        match self.buckets {
            Some([_, b99, _]) => format!("p50 ≈ {}, p99 ≈ {} (bucket ≤ {})", ms(self.p50), ms(self.p99), ms(b99)),
            None => format!("p50 {}, p99 {}", ms(self.p50), ms(self.p99)),
        }
    }
}

impl std::fmt::Display for OwnLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.buckets {
            Some([b50, b99, b999]) => write!(
                f,
                "p50 ≈ {} (bucket ≤ {}), p99 ≈ {} (bucket ≤ {}), p99.9 bucket ≤ {}",
                ms(self.p50),
                ms(b50),
                ms(self.p99),
                ms(b99),
                ms(b999)
            ),
            None => write!(f, "p50 {}, p99 {}, p99.9 {}", ms(self.p50), ms(self.p99), ms(self.p999)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A log-linear latency histogram (µs, 16 sub-buckets per power of two: ≤ 6 % error)

struct Latencies {
    buckets: Vec<AtomicU64>,
}

impl Latencies {
    fn new() -> Self {
        Self { buckets: (0..16 + 60 * 16).map(|_| AtomicU64::new(0)).collect() }
    }

    fn index(us: u64) -> usize {
        if us < 16 {
            return us as usize;
        }
        let msb = 63 - us.leading_zeros() as usize;
        16 + (msb - 4) * 16 + ((us >> (msb - 4)) & 15) as usize
    }

    fn upper(index: usize) -> u64 {
        if index < 16 {
            return index as u64;
        }
        let msb = (index - 16) / 16 + 4;
        let sub = ((index - 16) % 16) as u64;
        ((16 + sub + 1) << (msb - 4)) - 1
    }

    fn record(&self, us: u64) {
        self.buckets[Self::index(us).min(self.buckets.len() - 1)].fetch_add(1, Relaxed);
    }

    fn reset(&self) {
        self.buckets.iter().for_each(|bucket| bucket.store(0, Relaxed));
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return Some(Self::upper(i) as f64 / 1000.0);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Events: the same bytes for Kafka (a v2 `table.updated` or `reservation.updated` record) and for
// the raw writer (the WebSocket text frame the gateway makes of it)

/// What the harness publishes (`LOAD_EVENT`).
#[derive(Clone, Copy, PartialEq)]
enum EventKind {
    /// `table.updated` on `mesa-ya.tables.events`: one frame for everyone.
    Table,
    /// `reservation.updated` on `mesa-ya.reservations.events`: a full frame for staff and a
    /// public one cut to `WS_PUBLIC_RESERVATION_FIELDS` (SPEC §2.7).
    Reservation,
}

impl EventKind {
    fn from_setting() -> Self {
        match std::env::var("LOAD_EVENT").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "" | "table" => EventKind::Table,
            "reservation" => EventKind::Reservation,
            other => panic!("LOAD_EVENT={other}: expected table or reservation"),
        }
    }

    fn topic(self) -> &'static str {
        match self {
            EventKind::Table => "mesa-ya.tables.events",
            EventKind::Reservation => "mesa-ya.reservations.events",
        }
    }

    /// The event of the frames the gateway sends.
    fn event(self) -> &'static str {
        match self {
            EventKind::Table => "table.updated",
            EventKind::Reservation => "reservation.updated",
        }
    }

    /// The fourth group of the entities' UUIDs (the snapshot's tables have `9…`).
    fn id_group(self) -> char {
        match self {
            EventKind::Table => '8',
            EventKind::Reservation => 'a',
        }
    }
}

/// The id of snapshot table `k` of section `section` (what the stand-in API serves).
fn snapshot_table_id(section: usize, k: u64) -> String {
    format!("00000000-0000-4000-9{section:03x}-{k:012x}")
}

/// `WS_PUBLIC_RESERVATION_FIELDS` in the reservation mode: the gateway's default, and the
/// harness's `loadSeq` and `loadSent`, so that public clients can check their sequence and
/// measure latency. The padding (`notes`) stays private, so the cut really shrinks the frame.
fn public_reservation_fields() -> String {
    format!("{DEFAULT_PUBLIC_RESERVATION_FIELDS},loadSeq,loadSent")
}

struct Events {
    kind: EventKind,
    sections: Vec<String>,
    /// Tables in each section's snapshot: a reservation's `tableId` is one of them, so it routes
    /// at once.
    snapshot_tables: u64,
    padding: String,
    epoch: Instant,
}

impl Events {
    fn new(kind: EventKind, sections: Vec<String>, snapshot_tables: usize, event_bytes: usize, epoch: Instant) -> Self {
        assert!(
            kind == EventKind::Table || snapshot_tables > 0,
            "LOAD_EVENT=reservation needs LOAD_SNAPSHOT_TABLES ≥ 1: a reservation routes by its table"
        );
        let snapshot_tables = snapshot_tables as u64;
        let mut events = Self { kind, sections, snapshot_tables, padding: String::new(), epoch };
        let base = events.record(0, 0, 0).len();
        events.padding = "x".repeat(event_bytes.saturating_sub(base));
        events
    }

    /// The id of the entity of event `seq` of `section`: one of [`ENTITIES_PER_SECTION`].
    fn entity_id(&self, section: usize, seq: u64) -> String {
        format!("00000000-0000-4000-{}{section:03x}-{:012x}", self.kind.id_group(), seq % ENTITIES_PER_SECTION)
    }

    fn data(&self, section: usize, seq: u64, sent_us: u64) -> String {
        let id = self.entity_id(section, seq);
        // A new `updatedAt` for every event of a section, so none is taken for an older copy.
        let secs = seq / 1000;
        let updated =
            format!("2026-01-10T{:02}:{:02}:{:02}.{:03}Z", 16 + secs / 3600 % 8, secs / 60 % 60, secs % 60, seq % 1000);
        let fields = match self.kind {
            EventKind::Table => format!(
                concat!(
                    r#""sectionId":"{section_id}","number":1,"capacity":4,"posX":10,"posY":10,"width":2,"height":2,"#,
                    r#""tableImageId":"0f7d2c8e-1111-4a2b-9c3d-4e5f60718293","#,
                    r#""chairImageId":"6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b","status":"AVAILABLE","isAvailable":true"#
                ),
                section_id = self.sections[section],
            ),
            EventKind::Reservation => format!(
                concat!(
                    r#""restaurantId":"{restaurant}","userId":"{diner}","userName":"María José Andrade","#,
                    r#""userEmail":"maria.andrade@example.com","tableId":"{table}","reservationDate":"2026-01-15","#,
                    r#""reservationTime":"2026-01-15T19:30:00.000Z","numberOfGuests":4,"status":"CONFIRMED""#
                ),
                restaurant = fixtures::RESTAURANT_ID,
                diner = DINER,
                table = snapshot_table_id(section, seq % self.snapshot_tables),
            ),
        };
        format!(
            concat!(
                r#"{{"loadSeq":{seq},"loadSent":{sent},"id":"{id}",{fields},"#,
                r#""createdAt":"2026-01-10T15:04:05.101Z","updatedAt":"{updated}","notes":"{padding}"}}"#
            ),
            seq = seq,
            sent = sent_us,
            id = id,
            fields = fields,
            updated = updated,
            padding = self.padding,
        )
    }

    fn record(&self, section: usize, seq: u64, sent_us: u64) -> String {
        let data = self.data(section, seq, sent_us);
        let id = self.entity_id(section, seq);
        format!(r#"{{"timestamp":"2026-01-10T16:00:00.500Z","event_type":"updated","entity_id":"{id}","data":{data}}}"#)
    }

    /// The text of the gateway's frame for this event: the full one (staff's).
    fn frame_text(&self, payload: &str) -> String {
        format!(r#"{{"event":"{}","payload":{payload}}}"#, self.kind.event())
    }

    /// The gateway's frame for this event, WebSocket-framed.
    fn frame(&self, section: usize, seq: u64, sent_us: u64) -> Vec<u8> {
        text_frame(&[self.frame_text(&self.data(section, seq, sent_us)).as_bytes()])
    }

    /// Bytes of a record, of the full frame's text and of the public frame's text, the latter
    /// cut as the gateway cuts it (the same for reservations only).
    fn sizes(&self) -> (usize, usize, usize) {
        let data = self.data(0, 0, 0);
        let public = match self.kind {
            EventKind::Table => data.clone(),
            EventKind::Reservation => {
                PublicFields::parse(&public_reservation_fields()).cut(&data).unwrap_or(data.clone())
            }
        };
        (self.record(0, 0, 0).len(), self.frame_text(&data).len(), self.frame_text(&public).len())
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// One WebSocket text frame (a server's: not masked) whose payload is `parts` one after the other.
fn text_frame(parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    match len {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

/// `count` section ids spread evenly over the gateway's `shards`.
fn balanced_sections(count: usize, shards: usize) -> Vec<String> {
    let mut sections = Vec::new();
    while sections.len() < count {
        let want = sections.len() % shards;
        let id = uuid::Uuid::new_v4().to_string();
        if SectionId::parse(&id).expect("a UUID").shard(shards) == want {
            sections.push(id);
        }
    }
    sections
}

// ---------------------------------------------------------------------------------------------
// The raw writer (child process, LOAD_ROLE=raw)

struct RawStats {
    conns: AtomicU64,
    frames: AtomicU64,
    slow_drops: AtomicU64,
    write_errors: AtomicU64,
    connect_errors: AtomicU64,
    /// Its own latency, the raw side of `mesaya_delivery_seconds`: from the moment an event was
    /// read off stdin to the moment the last byte of its frame was written to a socket.
    latency: Latencies,
}

enum ShardMsg {
    Conn([u8; 36], TcpStream),
    /// A frame, and when it was read off stdin.
    Event([u8; 36], Bytes, Instant),
}

struct RawConn {
    stream: Option<TcpStream>,
    pending: BytesMut,
    /// For each frame not yet wholly written: where it ends in the bytes ever queued in
    /// `pending`, and when it was read.
    waiting: std::collections::VecDeque<(u64, Instant)>,
    queued: u64,
    flushed: u64,
}

impl RawConn {
    fn new(stream: TcpStream) -> Self {
        Self { stream: Some(stream), pending: BytesMut::new(), waiting: Default::default(), queued: 0, flushed: 0 }
    }

    fn queue(&mut self, bytes: &[u8], read_at: Instant) {
        self.pending.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
        self.waiting.push_back((self.queued, read_at));
    }

    /// `n` bytes of `pending` were written: the frames they end are delivered.
    fn flushed(&mut self, n: usize, latency: &Latencies) {
        self.pending.advance(n);
        self.flushed += n as u64;
        while let Some(&(end, read_at)) = self.waiting.front()
            && end <= self.flushed
        {
            latency.record(read_at.elapsed().as_micros() as u64);
            self.waiting.pop_front();
        }
    }

    fn drop_stream(&mut self) {
        self.stream = None;
        self.pending = BytesMut::new();
        self.waiting.clear();
    }
}

/// Minimal server side of the WebSocket handshake: returns the section of the path and the token
/// after it (empty when there is none).
async fn raw_handshake(stream: &mut TcpStream) -> Option<([u8; 36], String)> {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let end = loop {
        let read = stream.read(&mut buf[n..]).await.ok()?;
        if read == 0 {
            return None;
        }
        n += read;
        if let Some(end) = find(&buf[..n], b"\r\n\r\n") {
            break end;
        }
        if n == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let path = head.lines().next()?.split(' ').nth(1)?;
    let rest = path.strip_prefix("/ws/restaurant/")?;
    let section: [u8; 36] = rest.as_bytes().get(..36)?.try_into().ok()?;
    let token =
        rest.get(36..).unwrap_or("").strip_prefix('/').unwrap_or("").split('?').next().unwrap_or("").to_string();
    let key = header(head, "sec-websocket-key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    Some((section, token))
}

/// The raw writer's snapshot call, the floor of the gateway's: the same GET with the client's
/// token to a stand-in API set up like the gateway's, on keep-alive connections, and the answer's
/// body spliced unparsed into a `section.snapshot` text frame.
struct RawSnapshots {
    api: std::net::SocketAddr,
    idle: Mutex<Vec<TcpStream>>,
    calls: AtomicU64,
}

impl RawSnapshots {
    async fn frame(&self, section: &[u8; 36], token: &str) -> Result<Vec<u8>, String> {
        let pooled = self.idle.lock().unwrap().pop();
        let mut api = match pooled {
            Some(api) => api,
            None => {
                let api = TcpStream::connect(self.api).await.map_err(|e| format!("API connect: {:?}", e.kind()))?;
                let _ = api.set_nodelay(true);
                api
            }
        };
        let request = format!(
            "GET /api/v1/sections/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Accept: application/json\r\nX-Forwarded-For: 127.0.0.1\r\nX-Request-Id: {:032x}\r\n\r\n",
            std::str::from_utf8(section).unwrap_or("?"),
            self.api,
            self.calls.fetch_add(1, Relaxed),
        );
        api.write_all(request.as_bytes()).await.map_err(|e| format!("API write: {:?}", e.kind()))?;
        let mut answer = BytesMut::with_capacity(8192);
        let head = read_head(&mut api, &mut answer).await.map_err(|why| format!("API: {why}"))?;
        if head.status != "200" {
            return Err(format!("API answered {}", head.status));
        }
        let head_end = head.len;
        let body_len = header(&head.text, "content-length")
            .and_then(|length| length.parse::<usize>().ok())
            .ok_or("API answer without Content-Length")?;
        while answer.len() < head_end + body_len {
            if api.read_buf(&mut answer).await.map_err(|e| format!("API read: {:?}", e.kind()))? == 0 {
                return Err("API closed mid-body".into());
            }
        }
        // Kept for the next call only when nothing followed the answer.
        if answer.len() == head_end + body_len {
            self.idle.lock().unwrap().push(api);
        }
        let body = &answer[head_end..head_end + body_len];
        Ok(text_frame(&[br#"{"event":"section.snapshot","payload":"#, body, b"}"]))
    }
}

/// One writer thread's sockets: every event is written to each socket of its section at once;
/// only what a socket does not take is queued, and flushed when it becomes writable.
async fn raw_shard(mut rx: mpsc::UnboundedReceiver<ShardMsg>, stats: Arc<RawStats>, max_pending: usize) {
    let mut conns: Vec<RawConn> = Vec::new();
    let mut sections: HashMap<[u8; 36], Vec<usize>> = HashMap::new();
    let mut blocked: Vec<usize> = Vec::new();
    enum Step {
        Msg(Option<ShardMsg>),
        Writable,
    }
    loop {
        let step = std::future::poll_fn(|cx| {
            for &i in &blocked {
                if let Some(stream) = &conns[i].stream
                    && stream.poll_write_ready(cx).is_ready()
                {
                    return Poll::Ready(Step::Writable);
                }
            }
            rx.poll_recv(cx).map(Step::Msg)
        })
        .await;
        match step {
            Step::Msg(None) => return,
            Step::Msg(Some(ShardMsg::Conn(section, stream))) => {
                sections.entry(section).or_default().push(conns.len());
                conns.push(RawConn::new(stream));
                stats.conns.fetch_add(1, Relaxed);
            }
            Step::Msg(Some(ShardMsg::Event(section, frame, read_at))) => {
                let Some(members) = sections.get(&section) else { continue };
                let mut delivered = 0;
                for &i in members {
                    let conn = &mut conns[i];
                    let Some(stream) = &conn.stream else { continue };
                    if conn.pending.is_empty() {
                        match stream.try_write(&frame) {
                            Ok(n) if n == frame.len() => stats.latency.record(read_at.elapsed().as_micros() as u64),
                            Ok(n) => {
                                conn.queue(&frame[n..], read_at);
                                blocked.push(i);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                conn.queue(&frame, read_at);
                                blocked.push(i);
                            }
                            Err(_) => {
                                conn.drop_stream();
                                stats.write_errors.fetch_add(1, Relaxed);
                                stats.conns.fetch_sub(1, Relaxed);
                                continue;
                            }
                        }
                    } else {
                        conn.queue(&frame, read_at);
                        if conn.pending.len() > max_pending {
                            conn.drop_stream();
                            stats.slow_drops.fetch_add(1, Relaxed);
                            stats.conns.fetch_sub(1, Relaxed);
                            continue;
                        }
                    }
                    delivered += 1;
                }
                stats.frames.fetch_add(delivered, Relaxed);
            }
            Step::Writable => blocked.retain(|&i| {
                let conn = &mut conns[i];
                loop {
                    let Some(stream) = &conn.stream else { return false };
                    if conn.pending.is_empty() {
                        conn.pending = BytesMut::new();
                        return false;
                    }
                    match stream.try_write(&conn.pending) {
                        Ok(n) => conn.flushed(n, &stats.latency),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                        Err(_) => {
                            conn.drop_stream();
                            stats.write_errors.fetch_add(1, Relaxed);
                            stats.conns.fetch_sub(1, Relaxed);
                            return false;
                        }
                    }
                }
            }),
        }
    }
}

/// The raw writer's process: prints `PORT <port>`, then serves. Its stdin carries messages
/// `[kind u8][len u32 LE][body]`: kind 0 an event (36-byte section id, then the frame's bytes),
/// kind 1 a stats request, answered with one `STATS …` line on stdout (counters, then the p50,
/// p99 and p99.9 of its own latency in ms, NaN before any delivery), kind 2 "forget the latencies
/// so far" (the measured window starts). Exits when stdin closes. With `LOAD_RAW_SNAPSHOT_API`
/// set, each connect makes the snapshot call to that API before the client is held.
fn raw_main() {
    let shards = setting("LOAD_RAW_SHARDS", cores()).max(1);
    let max_pending = setting("LOAD_RAW_MAX_PENDING", 4 << 20);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(shards).enable_all().build().expect("runtime");
    let stats = Arc::new(RawStats {
        conns: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        slow_drops: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        latency: Latencies::new(),
    });
    let snapshots = std::env::var(RAW_SNAPSHOT_API).ok().map(|api| {
        let api = api.parse().unwrap_or_else(|_| panic!("{RAW_SNAPSHOT_API}={api}: not an address"));
        Arc::new(RawSnapshots { api, idle: Mutex::default(), calls: AtomicU64::new(0) })
    });
    let owners: Arc<Mutex<HashMap<[u8; 36], usize>>> = Arc::default();
    let owner = {
        let owners = Arc::clone(&owners);
        move |section: [u8; 36]| {
            let mut owners = owners.lock().unwrap();
            let next = owners.len() % shards;
            *owners.entry(section).or_insert(next)
        }
    };
    let mut senders = Vec::new();
    for _ in 0..shards {
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(raw_shard(rx, Arc::clone(&stats), max_pending));
        senders.push(tx);
    }
    let listener = runtime.block_on(async {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        socket.listen(4096).expect("listen")
    });
    let port = listener.local_addr().expect("address").port();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "PORT {port}").unwrap();
        out.flush().unwrap();
    }
    {
        let senders = senders.clone();
        let stats = Arc::clone(&stats);
        let owner = owner.clone();
        runtime.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let senders = senders.clone();
                let stats = Arc::clone(&stats);
                let owner = owner.clone();
                let snapshots = snapshots.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let connect = async {
                        let (section, token) = raw_handshake(&mut stream).await.ok_or("handshake")?;
                        if let Some(snapshots) = &snapshots {
                            let frame = snapshots.frame(&section, &token).await?;
                            stream.write_all(&frame).await.map_err(|e| format!("snapshot frame: {:?}", e.kind()))?;
                        }
                        Ok::<_, String>(section)
                    };
                    match tokio::time::timeout(Duration::from_secs(10), connect).await {
                        Ok(Ok(section)) => {
                            let _ = senders[owner(section)].send(ShardMsg::Conn(section, stream));
                        }
                        Ok(Err(why)) => {
                            if stats.connect_errors.fetch_add(1, Relaxed) == 0 {
                                eprintln!("raw writer: first failed connect: {why}");
                            }
                        }
                        Err(_) => {
                            if stats.connect_errors.fetch_add(1, Relaxed) == 0 {
                                eprintln!("raw writer: first failed connect: no answer within 10 s");
                            }
                        }
                    }
                });
            }
        });
    }
    let mut input = std::io::stdin().lock();
    loop {
        let mut head = [0u8; 5];
        if input.read_exact(&mut head).is_err() {
            std::process::exit(0);
        }
        let len = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        if input.read_exact(&mut body).is_err() {
            std::process::exit(0);
        }
        match head[0] {
            0 => {
                let section: [u8; 36] = body[..36].try_into().unwrap();
                let frame = Bytes::from(body).slice(36..);
                let _ = senders[owner(section)].send(ShardMsg::Event(section, frame, Instant::now()));
            }
            2 => stats.latency.reset(),
            _ => {
                let latency = |q: f64| stats.latency.quantile_ms(q).unwrap_or(f64::NAN);
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "STATS {} {} {} {} {} {} {} {}",
                    stats.conns.load(Relaxed),
                    stats.frames.load(Relaxed),
                    stats.slow_drops.load(Relaxed),
                    stats.write_errors.load(Relaxed),
                    stats.connect_errors.load(Relaxed),
                    latency(0.5),
                    latency(0.99),
                    latency(0.999)
                )
                .unwrap();
                out.flush().unwrap();
            }
        }
    }
}

/// The raw writer's variable naming the stand-in API it makes its snapshot call to (`host:port`);
/// unset, it answers the handshake only.
const RAW_SNAPSHOT_API: &str = "LOAD_RAW_SNAPSHOT_API";

/// The harness's handle on its raw-writer child.
struct RawServer {
    // Field order is drop order: the child goes before the API it calls.
    child: Child,
    stdin: BufWriter<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    port: u16,
    _api: Option<StandInApi>,
}

struct RawSnapshot {
    conns: u64,
    frames: u64,
    slow_drops: u64,
    write_errors: u64,
    connect_errors: u64,
    /// Since the last [`RawServer::restart_latency`].
    latency: Option<OwnLatency>,
}

impl RawServer {
    /// With `api`, every connect makes the snapshot call to it.
    fn start(shards: usize, api: Option<StandInApi>) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        if let Some(api) = &api {
            command.env(RAW_SNAPSHOT_API, api.base_url().trim_start_matches("http://"));
        }
        let mut child = command
            .env("LOAD_ROLE", "raw")
            .env("LOAD_RAW_SHARDS", shards.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the raw writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).expect("the raw writer's port");
        let port = first.strip_prefix("PORT ").and_then(|p| p.parse().ok()).expect("PORT line");
        let stdin = BufWriter::with_capacity(1 << 16, child.stdin.take().unwrap());
        Self { child, stdin, lines, port, _api: api }
    }

    fn send_event(&mut self, section: &str, frame: &[u8]) {
        let len = (36 + frame.len()) as u32;
        self.stdin.write_all(&[0]).unwrap();
        self.stdin.write_all(&len.to_le_bytes()).unwrap();
        self.stdin.write_all(section.as_bytes()).unwrap();
        self.stdin.write_all(frame).unwrap();
    }

    fn stats(&mut self) -> RawSnapshot {
        self.stdin.write_all(&[1, 0, 0, 0, 0]).unwrap();
        self.stdin.flush().unwrap();
        let line = self.lines.recv_timeout(Duration::from_secs(10)).expect("a STATS line");
        let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
        let count = |i: usize| fields[i].parse::<u64>().expect("a STATS count");
        let seconds = |i: usize| fields[i].parse::<f64>().ok().filter(|v| v.is_finite()).map(|ms| ms / 1000.0);
        RawSnapshot {
            conns: count(0),
            frames: count(1),
            slow_drops: count(2),
            write_errors: count(3),
            connect_errors: count(4),
            latency: match (seconds(5), seconds(6), seconds(7)) {
                (Some(p50), Some(p99), Some(p999)) => Some(OwnLatency { p50, p99, p999, buckets: None }),
                _ => None,
            },
        }
    }

    fn restart_latency(&mut self) {
        self.stdin.write_all(&[2, 0, 0, 0, 0]).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway stack

struct Stack {
    // Field order is drop order: the gateway goes before the broker and the API.
    gateway: Gateway,
    producer: FutureProducer,
    deliveries: Vec<DeliveryFuture>,
    produce_errors: usize,
    _api: StandInApi,
    _broker: Broker,
}

/// What the harness sets on the gateway, unless forwarded: room for every connection of a row
/// (`WS_MAX_CONNECTIONS` within the open-file limit of 20 000, beside `HTTP_MAX_PENDING` and the
/// descriptors the gateway keeps for the API and Kafka), every client a user of its own, and the
/// clients' connects, which all come from 127.0.0.1 at `LOAD_CONNECT_CONCURRENCY` at once, uncapped
/// per address.
const GATEWAY_SETTINGS: [(&str, &str); 5] = [
    ("WS_MAX_CONNECTIONS", "19200"),
    ("WS_MAX_CONNECTIONS_PER_USER", "0"),
    ("HTTP_MAX_PENDING", "256"),
    ("HTTP_MAX_PENDING_PER_IP", "0"),
    ("LOG_LEVEL", "warn"),
];

/// Gateway variables the harness forwards when they are set in its own environment.
const FORWARDED: [&str; 17] = [
    "SHARDS",
    "RESUME_SECRET",
    "RESUME_WINDOW",
    "RESUME_BUFFER",
    "RESUME_BUFFER_BYTES",
    "WS_QUEUE_MAX_FRAMES",
    "WS_QUEUE_MAX_BYTES",
    "KAFKA_FETCH_WAIT_MAX",
    "SNAPSHOT_CONCURRENCY",
    "WS_MAX_CONNECTIONS",
    "HTTP_MAX_PENDING",
    "HTTP_MAX_PENDING_PER_IP",
    "WS_PING_INTERVAL",
    "WS_WRITE_TIMEOUT",
    "WS_COMPRESSION",
    "WS_COMPRESSION_MIN_BYTES",
    "LOG_LEVEL",
];

/// The gateway's variables the harness sets besides the wiring (its own defaults, then the
/// forwarded ones).
fn gateway_env(event: EventKind) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> =
        GATEWAY_SETTINGS.iter().map(|(name, value)| (*name, value.to_string())).collect();
    env.push(("KAFKA_FETCH_WAIT_MAX", "10ms".to_string()));
    if event == EventKind::Reservation {
        env.push(("WS_PUBLIC_RESERVATION_FIELDS", public_reservation_fields()));
    }
    for name in FORWARDED {
        if let Ok(value) = std::env::var(name) {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
    }
    env
}

fn gateway_env_summary(event: EventKind) -> String {
    gateway_env(event).iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(" ")
}

impl Stack {
    async fn start(sections: &[String], settings: &Settings) -> Stack {
        let broker = Broker::start_memory().await;
        let api = stand_in_api(sections, settings.snapshot_tables);
        let mut env = gateway::wiring(&broker, &api, SECRET);
        for (name, value) in gateway_env(settings.event) {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
        let mut gateway = Gateway::start(&gateway_binary(), &env);
        gateway.wait_ready(Duration::from_secs(60)).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("linger.ms", std::env::var("LOAD_LINGER_MS").unwrap_or_else(|_| "1".into()))
            .set("message.timeout.ms", "30000")
            .create()
            .expect("producer");
        Stack { gateway, producer, deliveries: Vec::new(), produce_errors: 0, _api: api, _broker: broker }
    }

    async fn metrics(&self) -> String {
        self.gateway.get("/metrics").await.1
    }
}

/// The stand-in API serving each of `sections` with `snapshot_tables` tables.
fn stand_in_api(sections: &[String], snapshot_tables: usize) -> StandInApi {
    let api = StandInApi::start();
    for (s, section) in sections.iter().enumerate() {
        let tables = (0..snapshot_tables)
            .map(|k| fixtures::table_json(&snapshot_table_id(s, k as u64), section, fixtures::CREATED_AT))
            .collect();
        api.set_section(section, fixtures::nest_snapshot(section, tables));
    }
    api
}

enum Server {
    Gateway(Box<Stack>),
    Raw(RawServer),
}

impl Server {
    async fn start(kind: Kind, sections: &[String], settings: &Settings) -> Server {
        match kind {
            Kind::Gateway => Server::Gateway(Box::new(Stack::start(sections, settings).await)),
            Kind::Raw => Server::Raw(RawServer::start(settings.shards, None)),
            Kind::RawSnapshot => {
                Server::Raw(RawServer::start(settings.shards, Some(stand_in_api(sections, settings.snapshot_tables))))
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Gateway(stack) => stack.gateway.pid(),
            Server::Raw(raw) => raw.child.id(),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Server::Gateway(stack) => stack.gateway.port(),
            Server::Raw(raw) => raw.port,
        }
    }

    fn publish(&mut self, events: &Events, section: usize, seq: u64) {
        let sent = events.now_us();
        match self {
            Server::Gateway(stack) => {
                let record = events.record(section, seq, sent);
                loop {
                    match stack.producer.send_result(FutureRecord::<(), _>::to(events.kind.topic()).payload(&record)) {
                        Ok(delivery) => {
                            stack.deliveries.push(delivery);
                            break;
                        }
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            _,
                        )) => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => {
                            stack.produce_errors += 1;
                            break;
                        }
                    }
                }
            }
            Server::Raw(raw) => raw.send_event(&events.sections[section], &events.frame(section, seq, sent)),
        }
    }

    fn flush(&mut self) {
        if let Server::Raw(raw) = self {
            raw.stdin.flush().expect("the raw writer's stdin");
        }
    }

    /// Waits for every produced record's acknowledgement; the number that failed.
    async fn settle(&mut self) -> usize {
        match self {
            Server::Gateway(stack) => {
                for delivery in std::mem::take(&mut stack.deliveries) {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        stack.produce_errors += 1;
                    }
                }
                stack.produce_errors
            }
            Server::Raw(_) => 0,
        }
    }

    /// Frames the server has written (gateway: `mesaya_frames_sent_total`; raw: written or
    /// queued on a socket).
    async fn frames_sent(&mut self) -> u64 {
        match self {
            Server::Gateway(stack) => metric_sum(&stack.metrics().await, "mesaya_frames_sent_total") as u64,
            Server::Raw(raw) => raw.stats().frames,
        }
    }

    /// Connections the server holds (gateway: `mesaya_connections`).
    async fn connections(&mut self) -> u64 {
        match self {
            Server::Gateway(stack) => metric_sum(&stack.metrics().await, "mesaya_connections") as u64,
            Server::Raw(raw) => raw.stats().conns,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

struct Shared {
    started: Instant,
    epoch: Instant,
    live: AtomicUsize,
    last_live_us: AtomicU64,
    failed: AtomicUsize,
    ended: AtomicUsize,
    outcomes: Mutex<BTreeMap<String, usize>>,
    frames: AtomicU64,
    other_frames: AtomicU64,
    dups: AtomicU64,
    gaps: AtomicU64,
    /// Per client: the next sequence number it expects (= how many it has in order).
    progress: Vec<AtomicU64>,
    /// Per client: still connected and reading.
    alive: Vec<AtomicBool>,
    /// Per client: connected with a staff token.
    staff: Vec<bool>,
    /// Frames with a sequence number and their payload bytes, received by staff clients
    /// (`[0]`) and by public ones (`[1]`): the public frames of reservations are cut.
    by_audience: [(AtomicU64, AtomicU64); 2],
    /// The clients offer permessage-deflate (`LOAD_DEFLATE=1`).
    deflate: bool,
    /// Frames with a sequence number: bytes on the wire (headers included), and of their text.
    wire: Bytes2,
    /// Snapshot frames: how many, bytes on the wire (headers included), and of their text.
    snapshots: AtomicU64,
    snapshot_bytes: Bytes2,
    latency: Latencies,
}

/// Bytes on the wire, and of the text they carry.
#[derive(Default)]
struct Bytes2 {
    wire: AtomicU64,
    text: AtomicU64,
}

impl Bytes2 {
    fn add(&self, wire: u64, text: u64) {
        self.wire.fetch_add(wire, Relaxed);
        self.text.fetch_add(text, Relaxed);
    }

    /// `B on the wire each (B of text: ratio)` over `count` frames.
    fn per(&self, count: u64) -> String {
        let (wire, text) = (self.wire.load(Relaxed) as f64, self.text.load(Relaxed) as f64);
        let n = count.max(1) as f64;
        format!("{:.0} B on the wire each ({:.0} B of text: {:.2}x)", wire / n, text / n, wire / text.max(1.0))
    }
}

/// The text of a compressed message (RFC 7692 §7.2.2), with this thread's inflater: one per
/// worker thread, not one per client, so that an idle fleet holds none.
fn inflate(payload: &[u8]) -> Vec<u8> {
    thread_local! {
        static INFLATER: std::cell::RefCell<flate2::Decompress> = std::cell::RefCell::new(flate2::Decompress::new(false));
    }
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        let message = [payload, &[0x00, 0x00, 0xff, 0xff]].concat();
        let mut text = Vec::with_capacity(8 * payload.len() + 256);
        loop {
            let read = inflater.total_in() as usize;
            let status = inflater
                .decompress_vec(&message[read..], &mut text, flate2::FlushDecompress::Sync)
                .expect("a compressed frame the gateway sent inflates");
            if inflater.total_in() as usize == message.len() && text.len() < text.capacity()
                || status == flate2::Status::StreamEnd
            {
                return text;
            }
            text.reserve(text.capacity());
        }
    })
}

impl Shared {
    fn outcome(&self, what: String) {
        *self.outcomes.lock().unwrap().entry(what).or_default() += 1;
    }
}

struct Fleet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    section_of: Vec<usize>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn number_after(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let value = hay[at..at + digits].iter().fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    Some((value, at + digits))
}

/// `(opcode, header length, payload length)` of the first complete frame in `buf`.
fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (mut header, len) = match buf[1] & 0x7f {
        126 => (4, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize),
        n => (2, n as usize),
    };
    if masked {
        header += 4;
    }
    (buf.len() >= header + len).then_some((opcode, header, len))
}

/// Next local port to try for a client socket; see [`connect`].
static NEXT_LOCAL_PORT: AtomicU64 = AtomicU64::new(0);
/// Below Linux's ephemeral range (32768–60999 by default): the tens of thousands of sockets a run
/// leaves in TIME_WAIT for a minute must not take the ports that servers started right after it
/// (the test suite's tansu, which binds without `SO_REUSEADDR`) are given by `bind(0)`.
const LOCAL_PORTS: std::ops::Range<u64> = 10_000..32_768;

/// Connects from a local port the harness picks itself. Left to the kernel, `connect` takes
/// longer and longer once about 14 000 of its ephemeral ports are taken (it searches the even
/// half of `ip_local_port_range` first): connects/s would measure that search, not the server.
async fn connect(port: u16) -> Result<TcpStream, String> {
    let mut last = String::new();
    for _ in 0..1000 {
        let offset = NEXT_LOCAL_PORT.fetch_add(1, Relaxed) % (LOCAL_PORTS.end - LOCAL_PORTS.start);
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], (LOCAL_PORTS.start + offset) as u16));
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {:?}", e.kind()))?;
        let _ = socket.set_reuseaddr(true);
        if let Err(e) = socket.bind(local) {
            last = format!("bind: {:?}", e.kind());
            continue;
        }
        match socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(stream) => return Ok(stream),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable) => {
                last = format!("connect: {:?}", e.kind());
            }
            Err(e) => return Err(format!("connect: {:?}", e.kind())),
        }
    }
    Err(format!("no free local port ({last})"))
}

/// What a browser offers (`LOAD_DEFLATE=1`).
const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

async fn open(port: u16, path: &str, buf_cap: usize, deflate: bool) -> Result<(TcpStream, BytesMut), String> {
    let mut stream = connect(port).await?;
    let _ = stream.set_nodelay(true);
    let offer = if deflate { DEFLATE_OFFER } else { "" };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {:?}", e.kind()))?;
    let mut buf = BytesMut::with_capacity(buf_cap.max(4096));
    let head = read_head(&mut stream, &mut buf).await.map_err(|why| format!("handshake: {why}"))?;
    if head.status != "101" {
        return Err(format!("HTTP {}", head.status));
    }
    buf.advance(head.len);
    Ok((stream, buf))
}

/// The head of an HTTP/1 answer.
struct Head {
    /// Up to its blank line.
    text: String,
    /// The second word of the status line (`?` when there is none).
    status: String,
    /// Its length in the bytes read, blank line included.
    len: usize,
}

/// Reads an HTTP/1 answer off `stream` into `buf` until its head is complete; what was read past
/// the head stays in `buf`, behind it.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Head, String> {
    loop {
        if stream.read_buf(buf).await.map_err(|e| format!("read: {:?}", e.kind()))? == 0 {
            return Err("closed before the end of the head".into());
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = text.lines().next().and_then(|line| line.split(' ').nth(1)).unwrap_or("?").to_string();
            return Ok(Head { text, status, len: end + 4 });
        }
        if buf.len() > 16 << 10 {
            return Err("oversized head".into());
        }
    }
}

/// The value of header `name` (any case) in an HTTP head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// One client: connects (holding a permit until it is live), then reads every frame, checking
/// sequence numbers, answering pings.
async fn client(
    id: usize,
    port: u16,
    path: String,
    expect_snapshot: bool,
    buf_cap: usize,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
) {
    let mut permit = Some(permits.acquire_owned().await.expect("semaphore"));
    let opened = tokio::time::timeout(Duration::from_secs(30), open(port, &path, buf_cap, shared.deflate)).await;
    let (mut stream, mut buf) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.outcome(why);
            return;
        }
        Err(_) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.outcome("no handshake within 30 s".into());
            return;
        }
    };
    let mut live = false;
    let go_live = |permit: &mut Option<tokio::sync::OwnedSemaphorePermit>| {
        *permit = None;
        shared.alive[id].store(true, Relaxed);
        shared.live.fetch_add(1, Relaxed);
        shared.last_live_us.fetch_max(shared.started.elapsed().as_micros() as u64, Relaxed);
    };
    if !expect_snapshot {
        live = true;
        go_live(&mut permit);
    }
    let mut next = 0u64;
    let mut reply = Vec::new();
    let end = loop {
        let (mut frames, mut bytes, mut wire) = (0u64, 0u64, 0u64);
        let mut others = 0u64;
        let mut closed = None;
        while let Some((opcode, header, len)) = frame_at(&buf) {
            // RSV1: a compressed message (permessage-deflate).
            let inflated = (buf[0] & 0x40 != 0).then(|| inflate(&buf[header..header + len]));
            let payload = inflated.as_deref().unwrap_or(&buf[header..header + len]);
            match opcode {
                1 if !live => {
                    if find(&payload[..payload.len().min(64)], b"section.snapshot").is_some() {
                        live = true;
                        go_live(&mut permit);
                        shared.snapshots.fetch_add(1, Relaxed);
                        shared.snapshot_bytes.add((header + len) as u64, payload.len() as u64);
                    } else {
                        others += 1;
                    }
                }
                1 => match number_after(payload, b"\"loadSeq\":") {
                    Some((seq, at)) => {
                        frames += 1;
                        bytes += payload.len() as u64;
                        wire += (header + len) as u64;
                        if seq == next {
                            next += 1;
                        } else if seq < next {
                            shared.dups.fetch_add(1, Relaxed);
                        } else {
                            shared.gaps.fetch_add(seq - next, Relaxed);
                            next = seq + 1;
                        }
                        if let Some((sent, _)) = number_after(&payload[at..], b"\"loadSent\":") {
                            shared.latency.record((shared.epoch.elapsed().as_micros() as u64).saturating_sub(sent));
                        }
                    }
                    None => others += 1,
                },
                8 => {
                    let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    closed = Some(format!("closed by the server with {code}"));
                }
                9 => {
                    // A pong with the ping's payload, masked as a client must.
                    let mask = [0x12u8, 0x34, 0x56, 0x78];
                    reply.push(0x8a);
                    reply.push(0x80 | len as u8);
                    reply.extend_from_slice(&mask);
                    reply.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                }
                _ => {}
            }
            buf.advance(header + len);
            if closed.is_some() {
                break;
            }
        }
        if frames > 0 {
            shared.frames.fetch_add(frames, Relaxed);
            let (audience_frames, audience_bytes) = &shared.by_audience[usize::from(!shared.staff[id])];
            audience_frames.fetch_add(frames, Relaxed);
            audience_bytes.fetch_add(bytes, Relaxed);
            shared.wire.add(wire, bytes);
            shared.progress[id].store(next, Relaxed);
        }
        if others > 0 {
            shared.other_frames.fetch_add(others, Relaxed);
        }
        if let Some(closed) = closed {
            break closed;
        }
        if !reply.is_empty() {
            if stream.write_all(&reply).await.is_err() {
                break "write failed".into();
            }
            reply.clear();
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf_cap.max(4096));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => break "connection closed by the server".into(),
            Ok(_) => {}
            Err(e) => break format!("read: {:?}", e.kind()),
        }
    };
    shared.alive[id].store(false, Relaxed);
    if !live {
        shared.failed.fetch_add(1, Relaxed);
    } else {
        shared.ended.fetch_add(1, Relaxed);
    }
    shared.outcome(end);
}

impl Fleet {
    /// Starts the clients, at most `concurrency` connecting at a time.
    fn start(
        port: u16,
        clients: Clients,
        expect_snapshot: bool,
        settings: &Settings,
        buf_cap: usize,
        epoch: Instant,
    ) -> Fleet {
        let concurrency = settings.connect_concurrency;
        let Clients { paths, section_of, staff } = clients;
        let n = paths.len();
        let shared = Arc::new(Shared {
            started: Instant::now(),
            epoch,
            live: AtomicUsize::new(0),
            last_live_us: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            outcomes: Mutex::default(),
            frames: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            progress: (0..n).map(|_| AtomicU64::new(0)).collect(),
            alive: (0..n).map(|_| AtomicBool::new(false)).collect(),
            staff,
            by_audience: Default::default(),
            deflate: settings.deflate,
            wire: Bytes2::default(),
            snapshots: AtomicU64::new(0),
            snapshot_bytes: Bytes2::default(),
            latency: Latencies::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let handles = paths
            .into_iter()
            .enumerate()
            .map(|(id, path)| {
                let shared = Arc::clone(&shared);
                let permits = Arc::clone(&permits);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = client(id, port, path, expect_snapshot, buf_cap, shared, permits) => {}
                        _ = stopped.changed() => {}
                    }
                })
            })
            .collect();
        Fleet { shared, stop, handles, section_of }
    }

    /// Waits until every client is live or failed (or `timeout`); returns the seconds from the
    /// start to the last client going live.
    async fn wait_live(&self, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        let n = self.section_of.len();
        while self.shared.live.load(Relaxed) + self.shared.failed.load(Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shared.last_live_us.load(Relaxed) as f64 / 1e6
    }

    fn live(&self) -> usize {
        self.shared.live.load(Relaxed)
    }

    /// The smallest progress among the clients still alive.
    fn slowest(&self) -> u64 {
        let s = &self.shared;
        (0..s.progress.len())
            .filter(|&i| s.alive[i].load(Relaxed))
            .map(|i| s.progress[i].load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Frames received in order, clamped to what was expected.
    fn received_in_order(&self, expected: &[u64]) -> u64 {
        (0..self.section_of.len())
            .map(|i| self.shared.progress[i].load(Relaxed).min(expected[self.section_of[i]]))
            .sum()
    }

    fn expected_total(&self, expected: &[u64]) -> u64 {
        self.section_of.iter().map(|&s| expected[s]).sum()
    }

    async fn drain(&self, expected: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let total = self.expected_total(expected);
        while self.received_in_order(expected) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn exactness(&self, expected: &[u64]) -> Exactness {
        let s = &self.shared;
        let (mut tail, mut closed_tail) = (0, 0);
        let mut beyond = 0;
        for (i, &section) in self.section_of.iter().enumerate() {
            let next = s.progress[i].load(Relaxed);
            let missing = expected[section].saturating_sub(next);
            if s.alive[i].load(Relaxed) {
                tail += missing
            } else {
                closed_tail += missing
            }
            beyond += next.saturating_sub(expected[section]);
        }
        Exactness {
            expected: self.expected_total(expected),
            received: s.frames.load(Relaxed),
            lost: s.gaps.load(Relaxed) + closed_tail,
            undelivered: tail,
            dups: s.dups.load(Relaxed),
            unexpected: beyond,
            others: s.other_frames.load(Relaxed),
            ended_early: s.ended.load(Relaxed),
        }
    }

    /// Frames received and their mean size (the text of their WebSocket payload), by staff and by
    /// public clients (`None` when every client is public).
    fn audiences(&self) -> Option<String> {
        let s = &self.shared;
        let staff = s.staff.iter().filter(|&&staff| staff).count();
        if staff == 0 {
            return None;
        }
        let part = |i: usize, name: &str, clients: usize| {
            let (frames, bytes) = (s.by_audience[i].0.load(Relaxed), s.by_audience[i].1.load(Relaxed));
            format!(
                "{clients} {name} clients received {frames} frames of {:.0} B of text each",
                bytes as f64 / frames.max(1) as f64
            )
        };
        Some(format!("{}; {}", part(0, "staff", staff), part(1, "public", s.staff.len() - staff)))
    }

    fn outcomes(&self) -> String {
        let outcomes = self.shared.outcomes.lock().unwrap();
        if outcomes.is_empty() {
            return "none".into();
        }
        outcomes.iter().map(|(what, n)| format!("{n}× {what}")).collect::<Vec<_>>().join(", ")
    }

    async fn finish(self) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + Duration::from_secs(15);
        for handle in self.handles {
            let left = deadline.saturating_duration_since(Instant::now());
            let abort = handle.abort_handle();
            if tokio::time::timeout(left, handle).await.is_err() {
                abort.abort();
            }
        }
        // Let both sides close the sockets before the next row opens new ones.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

struct Exactness {
    expected: u64,
    received: u64,
    /// Frames missing before a later one arrived, or never arrived on a connection that ended:
    /// lost for good.
    lost: u64,
    /// Frames not arrived on a live connection when the row ended (after its drain time): lost
    /// or still queued.
    undelivered: u64,
    dups: u64,
    unexpected: u64,
    others: u64,
    ended_early: usize,
}

impl std::fmt::Display for Exactness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} frames, received {}: lost {}, not arrived on a live connection by the end {}, duplicates {}, \
             beyond the last published {}, other frames {}, connections ended by the server {}",
            self.expected,
            self.received,
            self.lost,
            self.undelivered,
            self.dups,
            self.unexpected,
            self.others,
            self.ended_early
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gateway,
    Raw,
    /// The raw writer making the gateway's snapshot call at each connect (connect row only).
    RawSnapshot,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Raw => "raw writer",
            Kind::RawSnapshot => "raw writer + snapshot call",
        }
    }

    /// From where to where its own latency runs.
    fn own_latency_span(self) -> &'static str {
        match self {
            Kind::Gateway => "route → socket, mesaya_delivery_seconds",
            Kind::Raw | Kind::RawSnapshot => "read off its stdin → socket",
        }
    }

    /// Its clients are live once they have a `section.snapshot` frame (else at the 101).
    fn sends_snapshot(self) -> bool {
        self != Kind::Raw
    }

    /// What one of its connects is made of.
    fn connect_steps(self) -> &'static str {
        match self {
            Kind::Gateway => "handshake + snapshot call + snapshot frame",
            Kind::Raw => "handshake only",
            Kind::RawSnapshot => "handshake + snapshot call + the body spliced into a frame",
        }
    }
}

struct Settings {
    rows: Vec<String>,
    kinds: Vec<Kind>,
    shards: usize,
    idle_conns: usize,
    idle_sections: usize,
    idle_settle: Duration,
    connect_concurrency: usize,
    latency_conns: usize,
    stream_sections: usize,
    cpu_conns: usize,
    closed_conns: usize,
    offered: usize,
    warmup: Duration,
    secs: Duration,
    window: u64,
    event_bytes: usize,
    snapshot_tables: usize,
    /// `LOAD_SERVER_NICE`, for the `latency`, `cpu` and `closed` rows.
    server_nice: Option<i32>,
    /// `LOAD_EVENT`.
    event: EventKind,
    /// `LOAD_DEFLATE=1`: the clients offer permessage-deflate, as browsers do.
    deflate: bool,
    tokens: Tokens,
}

impl Settings {
    /// What the stream rows publish, and to whom, for the rows' labels: empty for the default
    /// (`table.updated`, every client public), so the labels stay those of earlier runs.
    fn audience_label(&self) -> String {
        let compression = if self.deflate { ", clients offering permessage-deflate" } else { "" };
        if self.event == EventKind::Table && self.tokens.staff_share == 0 {
            return compression.into();
        }
        format!(
            ", {} to {} % staff and {} % public clients{compression}",
            self.event.event(),
            self.tokens.staff_share,
            100 - self.tokens.staff_share
        )
    }
}

/// The clients' tokens: `LOAD_STAFF_SHARE` percent of each section's clients are staff (role
/// `ADMIN`, the gateway's default `WS_STAFF_ROLES`), the rest public (role `USER`). Each kind
/// shares one `sub` (`WS_MAX_CONNECTIONS_PER_USER=0`), never the reservations' `userId`.
struct Tokens {
    staff: String,
    public: String,
    /// Percent, 0 to 100.
    staff_share: usize,
}

impl Tokens {
    fn new(staff_share: usize) -> Self {
        let token = |role: &str| TokenBuilder::new().roles(&[role]).expires_in(4 * 3600).hs256(SECRET);
        Self { staff: token("ADMIN"), public: token("USER"), staff_share: staff_share.min(100) }
    }

    /// Whether the `k`-th client of a section is staff: `staff_share` of every 100, spread evenly.
    fn is_staff(&self, k: usize) -> bool {
        (k + 1) * self.staff_share / 100 > k * self.staff_share / 100
    }
}

/// The clients of a row: the path each connects to, its section, and whether it is staff.
struct Clients {
    paths: Vec<String>,
    section_of: Vec<usize>,
    staff: Vec<bool>,
}

fn clients(sections: &[String], n: usize, tokens: &Tokens) -> Clients {
    let section_of: Vec<usize> = (0..n).map(|i| i % sections.len()).collect();
    let staff: Vec<bool> = (0..n).map(|i| tokens.is_staff(i / sections.len())).collect();
    // `LOAD_RESUME=1`: every client opts in to resume tokens (`section.position` frames, which the
    // clients count as other frames); give the gateway `RESUME_SECRET` too.
    let query = if setting("LOAD_RESUME", 0) == 1 { "?resume=" } else { "" };
    let paths = section_of
        .iter()
        .zip(&staff)
        .map(|(&s, &staff)| {
            let token = if staff { &tokens.staff } else { &tokens.public };
            format!("/ws/restaurant/{}/{token}{query}", sections[s])
        })
        .collect();
    Clients { paths, section_of, staff }
}

struct IdleResult {
    live: usize,
    /// Snapshot frames: bytes on the wire and of text, per snapshot.
    snapshot_bytes: String,
    rss_per_conn_kib: f64,
    connects_per_s: f64,
    /// The server's CPU time per connect, in µs: in user space, and in the kernel.
    server_cpu_per_connect_us: (f64, f64),
}

impl IdleResult {
    fn connects_cell(&self) -> String {
        let (user, kernel) = self.server_cpu_per_connect_us;
        format!(
            "{:.0} ({:.0} µs of server CPU each: {user:.0} in user space, {kernel:.0} in the kernel)",
            self.connects_per_s,
            user + kernel
        )
    }
}

/// N connections, as fast as `LOAD_CONNECT_CONCURRENCY` allows; then RSS per idle connection.
async fn idle_connect(settings: &Settings, kind: Kind) -> IdleResult {
    let n = settings.idle_conns;
    let sections = balanced_sections(settings.idle_sections, settings.shards);
    wait_for_quiet().await;
    let mut server = Server::start(kind, &sections, settings).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = server.pid();
    let before = rss_kib(pid);
    let clients = clients(&sections, n, &settings.tokens);
    let overflows = listen_overflows();
    let cpu_before = (cpu_split(&pid.to_string()), cpu_seconds("self"), machine_busy_seconds());
    let fleet = Fleet::start(server.port(), clients, kind.sends_snapshot(), settings, 4096, Instant::now());
    let elapsed = fleet.wait_live(Duration::from_secs(300)).await;
    let live = fleet.live();
    let connects_per_s = live as f64 / elapsed.max(1e-9);
    // Where the machine's CPU went while connecting: the connect rate is the machine's when the
    // clients and the stand-in API (this process) take as much as the server.
    let server_split = cpu_split(&pid.to_string());
    let server_split = (server_split.0 - cpu_before.0.0, server_split.1 - cpu_before.0.1);
    let server_cpu = server_split.0 + server_split.1;
    let harness_cpu = cpu_seconds("self") - cpu_before.1;
    let machine_cpu = machine_busy_seconds() - cpu_before.2;
    println!(
        "  {}: while connecting, server {:.2} cores ({:.0} connects per server CPU-second), clients + stand-in API {:.2} cores, \
         the rest of the machine {:.2} cores",
        kind.name(),
        server_cpu / elapsed.max(1e-9),
        live as f64 / server_cpu.max(1e-9),
        harness_cpu / elapsed.max(1e-9),
        (machine_cpu - server_cpu - harness_cpu).max(0.0) / elapsed.max(1e-9),
    );
    let overflows = listen_overflows() - overflows;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = server.connections().await;
    while held < live as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = server.connections().await;
    }
    tokio::time::sleep(settings.idle_settle).await;
    let after = rss_kib(pid);
    let rss_per_conn_kib = (after as f64 - before as f64) / live.max(1) as f64;
    println!(
        "  {}: {live}/{n} live in {elapsed:.2} s = {connects_per_s:.0} connects/s ({}), held by the server {held}, listen-queue overflows {overflows}; \
         RSS {before} KiB before, {after} KiB after {:?} idle → {rss_per_conn_kib:.2} KiB per connection; \
         failures/ends: {}",
        kind.name(),
        kind.connect_steps(),
        settings.idle_settle,
        fleet.outcomes()
    );
    if let Server::Gateway(stack) = &server {
        let metrics = stack.metrics().await;
        for line in metrics.lines().filter(|l| {
            l.starts_with("mesaya_upgrades_refused_total") || l.starts_with("mesaya_snapshot_outcomes_total")
        }) {
            println!("    {line}");
        }
    }
    let snapshot_bytes = fleet.shared.snapshot_bytes.per(fleet.shared.snapshots.load(Relaxed));
    println!("  {}: snapshots: {snapshot_bytes}", kind.name());
    fleet.finish().await;
    drop(server);
    IdleResult {
        live,
        snapshot_bytes,
        rss_per_conn_kib,
        connects_per_s,
        server_cpu_per_connect_us: (
            1e6 * server_split.0 / live.max(1) as f64,
            1e6 * server_split.1 / live.max(1) as f64,
        ),
    }
}

enum Pace {
    /// Deliveries per second offered, spread evenly over the sections.
    Offered(usize),
    /// At most this many events outstanding at the slowest client.
    Window(u64),
}

struct StreamResult {
    deliveries: u64,
    cpu: f64,
    /// This process: the clients (and the stand-in API and the producer for the gateway).
    harness_cpu: f64,
    machine_cpu: f64,
    wall: f64,
    offered: Option<f64>,
    client_frames: u64,
    /// Frames with a sequence number: bytes on the wire and of text, per frame, whole run.
    wire_bytes: String,
    exact: Exactness,
    own_latency: Option<OwnLatency>,
    e2e: (Option<f64>, Option<f64>),
}

/// What the harness reads at each end of a measured window.
struct WindowMark {
    at: Instant,
    /// CPU-seconds so far: the server's, the harness's, the whole machine's.
    cpu: [f64; 3],
    threads: BTreeMap<String, ThreadTimes>,
    frames_sent: u64,
    frames_received: u64,
    /// The gateway's `/metrics` (empty for the raw writer).
    metrics: String,
}

impl WindowMark {
    async fn read(server: &mut Server, pid: &str, fleet: &Fleet) -> WindowMark {
        let metrics = match server {
            Server::Gateway(stack) => stack.metrics().await,
            Server::Raw(_) => String::new(),
        };
        WindowMark {
            at: Instant::now(),
            cpu: [cpu_seconds(pid), cpu_seconds("self"), machine_busy_seconds()],
            threads: thread_times(pid),
            frames_sent: server.frames_sent().await,
            frames_received: fleet.shared.frames.load(Relaxed),
            metrics,
        }
    }
}

/// One offered-load row (`latency` or `cpu`) for every target: `conns`
/// connections over the stream sections at `LOAD_OFFERED` deliveries/s.
async fn offered_rows(settings: &Settings, row: &str, conns: usize) -> HashMap<&'static str, StreamResult> {
    let sections = settings.stream_sections;
    println!(
        "== {row}: {conns} connections in {sections} sections, {} deliveries/s offered ({:.0} events/s)",
        settings.offered,
        settings.offered as f64 / (conns / sections) as f64
    );
    let mut results = HashMap::new();
    for &kind in &settings.kinds {
        results.insert(kind.name(), stream_row(settings, kind, conns, sections, Pace::Offered(settings.offered)).await);
    }
    results
}

async fn stream_row(settings: &Settings, kind: Kind, conns: usize, sections: usize, pace: Pace) -> StreamResult {
    let epoch = Instant::now();
    let section_ids = balanced_sections(sections, settings.shards);
    wait_for_quiet().await;
    let mut server = Server::start(kind, &section_ids, settings).await;
    let clients = clients(&section_ids, conns, &settings.tokens);
    let overflows = listen_overflows();
    let fleet = Fleet::start(server.port(), clients, kind.sends_snapshot(), settings, 32 << 10, epoch);
    let elapsed = fleet.wait_live(Duration::from_secs(120)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.connections().await < fleet.live() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  {}: {}/{conns} clients live in {elapsed:.2} s on {sections} sections (listen-queue overflows {})",
        kind.name(),
        fleet.live(),
        listen_overflows() - overflows
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let events =
        Events::new(settings.event, section_ids.clone(), settings.snapshot_tables, settings.event_bytes, epoch);
    let mut published = vec![0u64; sections];
    let pid = server.pid().to_string();
    if let Some(nice) = settings.server_nice {
        prioritise(&pid, nice, kind.name());
    }
    let per_section = (conns / sections).max(1);
    let start = Instant::now();
    let total = settings.warmup + settings.secs;
    let mut measured: Option<WindowMark> = None;
    let mut sent = 0u64;
    while start.elapsed() < total {
        if measured.is_none() && start.elapsed() >= settings.warmup {
            measured = Some(WindowMark::read(&mut server, &pid, &fleet).await);
            if let Server::Raw(raw) = &mut server {
                raw.restart_latency();
            }
        }
        match pace {
            Pace::Offered(offered) => {
                let events_per_s = offered as f64 / per_section as f64;
                let due = (start.elapsed().as_secs_f64() * events_per_s) as u64;
                while sent < due {
                    let s = (sent % sections as u64) as usize;
                    server.publish(&events, s, published[s]);
                    published[s] += 1;
                    sent += 1;
                }
                server.flush();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Pace::Window(window) => {
                // One section: every client expects every event.
                let slowest = fleet.slowest();
                while published[0] < slowest + window {
                    server.publish(&events, 0, published[0]);
                    published[0] += 1;
                }
                server.flush();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let window_end = WindowMark::read(&mut server, &pid, &fleet).await;
    let raw_latency = match &mut server {
        Server::Raw(raw) => raw.stats().latency,
        Server::Gateway(_) => None,
    };
    let produce_errors = server.settle().await;
    fleet.drain(&published, Duration::from_secs(30)).await;
    let exact = fleet.exactness(&published);
    let window_start = measured.expect("a measured window");
    let (start, end) = (&window_start, &window_end);
    let wall = (end.at - start.at).as_secs_f64();
    let own_latency = match &server {
        Server::Gateway(_) => {
            let delta = delta_histogram(
                &histogram(&start.metrics, "mesaya_delivery_seconds"),
                &histogram(&end.metrics, "mesaya_delivery_seconds"),
            );
            let p50 = bucket_quantile(&delta, 0.5);
            let p99 = bucket_quantile(&delta, 0.99);
            let p999 = bucket_quantile(&delta, 0.999);
            match (p50, p99, p999) {
                (Some(a), Some(b), Some(c)) => {
                    Some(OwnLatency { p50: a.0, p99: b.0, p999: c.0, buckets: Some([a.1, b.1, c.1]) })
                }
                _ => None,
            }
        }
        Server::Raw(_) => raw_latency,
    };
    let result = StreamResult {
        deliveries: end.frames_sent - start.frames_sent,
        cpu: end.cpu[0] - start.cpu[0],
        harness_cpu: end.cpu[1] - start.cpu[1],
        machine_cpu: end.cpu[2] - start.cpu[2],
        wall,
        client_frames: end.frames_received - start.frames_received,
        wire_bytes: fleet.shared.wire.per(fleet.shared.frames.load(Relaxed)),
        exact,
        own_latency,
        e2e: (fleet.shared.latency.quantile_ms(0.5), fleet.shared.latency.quantile_ms(0.99)),
        offered: match pace {
            Pace::Offered(offered) => Some(offered as f64),
            Pace::Window(_) => None,
        },
    };
    println!(
        "  {}: CPU over the window, in cores: server {:.2}, harness (clients{}) {:.2}, rest of the machine \
         ({}anything else) {:.2}, machine {:.2} of {}",
        kind.name(),
        result.cpu / wall,
        if kind == Kind::Gateway { ", API, producer" } else { "" },
        result.harness_cpu / wall,
        if kind == Kind::Gateway { "tansu, " } else { "" },
        (result.machine_cpu - result.cpu - result.harness_cpu).max(0.0) / wall,
        result.machine_cpu / wall,
        cores()
    );
    println!(
        "  {}: server threads, share of the window they ran / waited runnable for a CPU: {}",
        kind.name(),
        thread_shares(&start.threads, &end.threads, wall)
    );
    println!(
        "  {}: published {} events ({} produce errors); over {:.1} s: {} frames sent ({:.0}/s), {} received by the \
         clients ({:.0}/s); server CPU {:.2} s ({:.0} % of one core) → {:.0} deliveries per CPU-second",
        kind.name(),
        published.iter().sum::<u64>(),
        produce_errors,
        result.wall,
        result.deliveries,
        result.deliveries as f64 / result.wall,
        result.client_frames,
        result.client_frames as f64 / result.wall,
        result.cpu,
        100.0 * result.cpu / result.wall,
        result.deliveries as f64 / result.cpu.max(1e-9)
    );
    if let Some(own) = result.own_latency {
        println!("  {}: own latency ({}): {own}", kind.name(), kind.own_latency_span());
    }
    println!(
        "  {}: end to end (publish → client), whole run: p50 {} p99 {}",
        kind.name(),
        result.e2e.0.map_or("?".into(), |v| format!("{v:.2} ms")),
        result.e2e.1.map_or("?".into(), |v| format!("{v:.2} ms"))
    );
    println!("  {}: {}; connection ends: {}", kind.name(), result.exact, fleet.outcomes());
    println!("  {}: deliveries: {}", kind.name(), result.wire_bytes);
    if let Some(audiences) = fleet.audiences() {
        println!("  {}: {audiences}", kind.name());
    }
    if let Server::Gateway(stack) = &server {
        let metrics = stack.metrics().await;
        for name in ["mesaya_slow_consumer_closes_total", "mesaya_frames_conflated_total", "mesaya_events_routed_total"]
        {
            println!("    {name} {}", metric_sum(&metrics, name));
        }
        // Who watched, what was cut, and what was skipped (a reservation whose table is unknown
        // is held 5 s, then dropped).
        let labelled = ["mesaya_audience_connections{", "mesaya_frames_cut_total{", "mesaya_events_dropped_total{"];
        for line in metrics.lines().filter(|l| labelled.iter().any(|name| l.starts_with(name))) {
            println!("    {line}");
        }
    }
    if let Server::Raw(raw) = &mut server {
        let stats = raw.stats();
        println!(
            "    raw writer: {} conns, slow drops {}, write errors {}, failed connects {}",
            stats.conns, stats.slow_drops, stats.write_errors, stats.connect_errors
        );
    }
    fleet.finish().await;
    drop(server);
    result
}

fn own_latency_cell(result: Option<&StreamResult>) -> String {
    result.map_or("—".into(), |r| r.own_latency.map_or("no deliveries".into(), |own| own.short()))
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
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
