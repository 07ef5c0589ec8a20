//! The rows of the performance table: the idle/connect phase and the streaming rows.

use super::*;

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Gateway,
    Raw,
    /// The raw writer making the gateway's snapshot call at each connect (connect row only).
    RawSnapshot,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Raw => "raw writer",
            Kind::RawSnapshot => "raw writer + snapshot call",
        }
    }

    /// From where to where its own latency runs.
    pub(crate) fn own_latency_span(self) -> &'static str {
        match self {
            Kind::Gateway => "route → socket, mesaya_delivery_seconds",
            Kind::Raw | Kind::RawSnapshot => "read off its stdin → socket",
        }
    }

    /// Its clients are live once they have a `section.snapshot` frame (else at the 101).
    pub(crate) fn sends_snapshot(self) -> bool {
        self != Kind::Raw
    }

    /// What one of its connects is made of.
    pub(crate) fn connect_steps(self) -> &'static str {
        match self {
            Kind::Gateway => "handshake + snapshot call + snapshot frame",
            Kind::Raw => "handshake only",
            Kind::RawSnapshot => "handshake + snapshot call + the body spliced into a frame",
        }
    }
}

pub(crate) struct Settings {
    pub(crate) rows: Vec<String>,
    pub(crate) kinds: Vec<Kind>,
    pub(crate) shards: usize,
    pub(crate) idle_conns: usize,
    pub(crate) idle_sections: usize,
    pub(crate) idle_settle: Duration,
    pub(crate) connect_concurrency: usize,
    pub(crate) latency_conns: usize,
    pub(crate) stream_sections: usize,
    pub(crate) cpu_conns: usize,
    pub(crate) closed_conns: usize,
    pub(crate) offered: usize,
    pub(crate) warmup: Duration,
    pub(crate) secs: Duration,
    pub(crate) window: u64,
    pub(crate) event_bytes: usize,
    pub(crate) snapshot_tables: usize,
    /// `LOAD_SERVER_NICE`, for the `latency`, `cpu` and `closed` rows.
    pub(crate) server_nice: Option<i32>,
    /// `LOAD_EVENT`.
    pub(crate) event: EventKind,
    /// `LOAD_DEFLATE=1`: the clients offer permessage-deflate, as browsers do.
    pub(crate) deflate: bool,
    pub(crate) tokens: Tokens,
}

impl Settings {
    /// What the stream rows publish, and to whom, for the rows' labels: empty for the default
    /// (`table.updated`, every client public), so the labels stay those of earlier runs.
    pub(crate) fn audience_label(&self) -> String {
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
pub(crate) struct Tokens {
    pub(crate) staff: String,
    pub(crate) public: String,
    /// Percent, 0 to 100.
    pub(crate) staff_share: usize,
}

impl Tokens {
    pub(crate) fn new(staff_share: usize) -> Self {
        let token = |role: &str| TokenBuilder::new().roles(&[role]).expires_in(4 * 3600).hs256(SECRET);
        Self { staff: token("ADMIN"), public: token("USER"), staff_share: staff_share.min(100) }
    }

    /// Whether the `k`-th client of a section is staff: `staff_share` of every 100, spread evenly.
    pub(crate) fn is_staff(&self, k: usize) -> bool {
        (k + 1) * self.staff_share / 100 > k * self.staff_share / 100
    }
}

/// The clients of a row: the path each connects to, its section, and whether it is staff.
pub(crate) struct Clients {
    pub(crate) paths: Vec<String>,
    pub(crate) section_of: Vec<usize>,
    pub(crate) staff: Vec<bool>,
}

pub(crate) fn clients(sections: &[String], n: usize, tokens: &Tokens) -> Clients {
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

pub(crate) struct IdleResult {
    pub(crate) live: usize,
    /// Snapshot frames: bytes on the wire and of text, per snapshot.
    pub(crate) snapshot_bytes: String,
    pub(crate) rss_per_conn_kib: f64,
    pub(crate) connects_per_s: f64,
    /// The server's CPU time per connect, in µs: in user space, and in the kernel.
    pub(crate) server_cpu_per_connect_us: (f64, f64),
}

impl IdleResult {
    pub(crate) fn connects_cell(&self) -> String {
        let (user, kernel) = self.server_cpu_per_connect_us;
        format!(
            "{:.0} ({:.0} µs of server CPU each: {user:.0} in user space, {kernel:.0} in the kernel)",
            self.connects_per_s,
            user + kernel
        )
    }
}

/// N connections, as fast as `LOAD_CONNECT_CONCURRENCY` allows; then RSS per idle connection.
pub(crate) async fn idle_connect(settings: &Settings, kind: Kind) -> IdleResult {
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

pub(crate) enum Pace {
    /// Deliveries per second offered, spread evenly over the sections.
    Offered(usize),
    /// At most this many events outstanding at the slowest client.
    Window(u64),
}

pub(crate) struct StreamResult {
    pub(crate) deliveries: u64,
    pub(crate) cpu: f64,
    /// This process: the clients (and the stand-in API and the producer for the gateway).
    pub(crate) harness_cpu: f64,
    pub(crate) machine_cpu: f64,
    pub(crate) wall: f64,
    pub(crate) offered: Option<f64>,
    pub(crate) client_frames: u64,
    /// Frames with a sequence number: bytes on the wire and of text, per frame, whole run.
    pub(crate) wire_bytes: String,
    pub(crate) exact: Exactness,
    pub(crate) own_latency: Option<OwnLatency>,
    pub(crate) e2e: (Option<f64>, Option<f64>),
}

/// What the harness reads at each end of a measured window.
pub(crate) struct WindowMark {
    pub(crate) at: Instant,
    /// CPU-seconds so far: the server's, the harness's, the whole machine's.
    pub(crate) cpu: [f64; 3],
    pub(crate) threads: BTreeMap<String, ThreadTimes>,
    pub(crate) frames_sent: u64,
    pub(crate) frames_received: u64,
    /// The gateway's `/metrics` (empty for the raw writer).
    pub(crate) metrics: String,
}

impl WindowMark {
    pub(crate) async fn read(server: &mut Server, pid: &str, fleet: &Fleet) -> WindowMark {
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
pub(crate) async fn offered_rows(settings: &Settings, row: &str, conns: usize) -> HashMap<&'static str, StreamResult> {
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

pub(crate) async fn stream_row(
    settings: &Settings,
    kind: Kind,
    conns: usize,
    sections: usize,
    pace: Pace,
) -> StreamResult {
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
