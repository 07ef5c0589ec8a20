//! Wiring: configuration, adapters, shards and the ingest thread. The only
//! place that knows every layer.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use mesaya_realtime::application::admission::Admission;
use mesaya_realtime::application::authorize::Authorizer;
use mesaya_realtime::application::compression::Deflater;
use mesaya_realtime::application::floor::SharedFloor;
use mesaya_realtime::application::ingest::Ingest;
use mesaya_realtime::application::pending::PendingConnections;
use mesaya_realtime::application::ports::LearnedSection;
use mesaya_realtime::application::readiness::Readiness;
use mesaya_realtime::application::restaurants::SharedRestaurants;
use mesaya_realtime::application::resume::ResumeSettings;
use mesaya_realtime::application::resume_buffer::ResumeBufferLimits;
use mesaya_realtime::application::router::EventRouter;
use mesaya_realtime::config::{Config, LogFormat};
use mesaya_realtime::config_check;
use mesaya_realtime::domain::access::AccessPolicy;
use mesaya_realtime::domain::audience::{Disclosure, StaffRoles};
use mesaya_realtime::infrastructure::jwt::JwtVerifier;
use mesaya_realtime::infrastructure::kafka::KafkaIngest;
use mesaya_realtime::infrastructure::resume_token::HmacResumeTokens;
use mesaya_realtime::infrastructure::snapshot_http::{ApiBudget, HttpSnapshotSource};
use mesaya_realtime::shutdown::{Shutdown, Threads};
use mesaya_realtime::telemetry::logs::{self, OneLine};
use mesaya_realtime::transport::admin;
use mesaya_realtime::transport::context::ServerContext;
use mesaya_realtime::transport::mailbox::{self, ShardDispatch, Shards};
use mesaya_realtime::transport::section_reports;
use mesaya_realtime::transport::shard::{self, ShardParts};
use tracing_appender::non_blocking::WorkerGuard;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pending connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Exit status for a configuration the process cannot start with.
const EXIT_CONFIG: u8 = 78;
/// Exit status when a second signal cut the drain short (128 + SIGINT, as
/// shells report an interrupted program).
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--check-config") {
        let ok = config_check::run(|name| std::env::var(name).ok(), raise_open_file_limit());
        return if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_CONFIG) };
    }
    let config = match Config::from_env(raise_open_file_limit()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let verifier = match JwtVerifier::new(&config.jwt) {
        Ok(verifier) => verifier,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let _logs = init_logging(&config);

    let Some(listener) = listen(SocketAddr::new(config.host, config.port), "PORT") else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let admin_listener = match config.admin.map(|address| listen(address, "ADMIN_PORT")) {
        Some(None) => return ExitCode::from(EXIT_CONFIG),
        Some(Some(listener)) => Some(listener),
        None => None,
    };

    match run(config, verifier, listener, admin_listener) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(%error, "fatal");
            ExitCode::FAILURE
        }
    }
}

/// A nonblocking listener on `address`, or `None` once the one line naming
/// `variable` is out.
fn listen(address: SocketAddr, variable: &str) -> Option<std::net::TcpListener> {
    let listener = match std::net::TcpListener::bind(address) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("configuration error: {variable}: cannot listen on {address}: {error}");
            return None;
        }
    };
    listener.set_nonblocking(true).expect("a bound listener accepts nonblocking mode");
    // std listens with a backlog of 128: a reconnect storm overflows it, and
    // each overflow costs a client a one-second SYN retry. Listening again
    // on a listening socket only resizes the queue.
    // SAFETY: listen(2) takes the descriptor we own and an integer.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), LISTEN_BACKLOG) };
    Some(listener)
}

/// Logging through the non-blocking writer; the guard flushes it at exit.
fn init_logging(config: &Config) -> WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let (writer, guard) = logs::stderr_writer();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(move || OneLine(writer.clone()));
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

/// Raises the soft limit on open descriptors to the hard one, as servers
/// holding many sockets do, and returns the limit now in force.
fn raise_open_file_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// How the process ends.
enum Ending {
    /// A signal, then a drain: every thread ended in time, or not.
    Drained { in_time: bool },
    /// A second signal cut the drain short.
    Interrupted,
    /// A thread ended on its own: the process must not stay up half-dead.
    ThreadDied(String),
}

/// The shared state, the shard threads, the admin listener and the ingest
/// thread, in that order; then waits for a signal and the drain.
fn run(
    config: Config,
    verifier: JwtVerifier,
    listener: std::net::TcpListener,
    admin_listener: Option<std::net::TcpListener>,
) -> std::io::Result<ExitCode> {
    let readiness = Arc::new(Readiness::default());
    let shutdown = Shutdown::default();
    let floor = SharedFloor::default();
    let restaurants = SharedRestaurants::default();
    let mut threads = Threads::default();
    let (reports, learned_sections) = crossbeam_channel::bounded(section_reports::CAPACITY);
    let (mailboxes, inboxes): (Vec<_>, Vec<_>) =
        (0..config.shards).map(|index| mailbox::mailbox(index, mailbox::EVENT_CAPACITY)).unzip();
    let shards = Shards::new(mailboxes, shutdown.clone());
    let shared = Shared { readiness, shutdown, shards, floor, restaurants };

    let ctx = server_context(&config, verifier, &shared);
    spawn_shards(&config, inboxes, listener, &ctx, reports, &mut threads)?;
    if let Some(admin_listener) = admin_listener {
        admin::spawn(admin_listener, Arc::clone(&ctx), threads.register("admin"))?;
    }
    let shutdown = shared.shutdown.clone();
    spawn_ingest(&config, shared, learned_sections, &mut threads)?;
    tracing::info!(
        address = %SocketAddr::new(config.host, config.port),
        shards = config.shards,
        admin = ?config.admin,
        max_connections = config.admission.max_connections,
        max_pending = config.admission.pending.max_pending,
        snapshot = %format!("{}{}", config.rest_base_url, config.snapshot_path),
        "mesaya-realtime listening"
    );

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ending = runtime.block_on(signal_then_drain(&mut threads, &shutdown, config.drain_timeout))?;
    Ok(exit_code(ending, &shutdown))
}

/// What the shards and the ingest thread share.
struct Shared {
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
    shards: Shards,
    floor: SharedFloor,
    restaurants: SharedRestaurants,
}

fn server_context(config: &Config, verifier: JwtVerifier, shared: &Shared) -> Arc<ServerContext> {
    Arc::new(ServerContext {
        authorizer: Authorizer::new(
            Arc::new(verifier),
            AccessPolicy::new(config.allowed_roles.clone(), config.required_permission.clone()),
        ),
        admission: Admission::new(config.admission.max_connections, config.admission.max_connections_per_user),
        trusted_proxies: config.admission.trusted_proxies.clone(),
        pending: PendingConnections::new(config.admission.pending),
        public_ops: config.admin.is_none(),
        readiness: Arc::clone(&shared.readiness),
        shutdown: shared.shutdown.clone(),
        shards: shared.shards.clone(),
        session: config.session.clone(),
        drain_timeout: config.drain_timeout,
        floor: shared.floor.clone(),
        restaurants: shared.restaurants.clone(),
        staff_roles: StaffRoles::new(config.staff_roles.clone()),
        resume: config.resume.as_ref().map(|resume| ResumeSettings {
            tokens: Arc::new(HmacResumeTokens::new(&resume.secret)),
            window: resume.window,
            reauth_after: resume.reauth_after,
        }),
    })
}

/// One thread per shard, each accepting on the shared listener; the
/// listener and the report channel are theirs from here on.
fn spawn_shards(
    config: &Config,
    inboxes: Vec<mailbox::Inbox>,
    listener: std::net::TcpListener,
    ctx: &Arc<ServerContext>,
    reports: crossbeam_channel::Sender<LearnedSection>,
    threads: &mut Threads,
) -> std::io::Result<()> {
    let resume_buffer_limits = config.resume.as_ref().map_or(ResumeBufferLimits::OFF, |resume| ResumeBufferLimits {
        window: resume.window,
        per_section: resume.buffer_frames,
        // Each shard keeps its own sections' frames.
        bytes: resume.buffer_bytes / config.shards,
    });
    let api_budget = ApiBudget::new(config.snapshot_concurrency);
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let (base_url, path, timeout) =
            (config.rest_base_url.clone(), config.snapshot_path.clone(), config.rest_timeout);
        let api_budget = Arc::clone(&api_budget);
        shard::spawn(ShardParts {
            index,
            resume_buffer_limits,
            inbox,
            listener: listener.try_clone()?,
            ctx: Arc::clone(ctx),
            make_snapshot_source: move || HttpSnapshotSource::new(&base_url, &path, timeout, api_budget),
            section_reports: reports.clone(),
            running: threads.register(format!("shard-{index}")),
        })?;
    }
    Ok(())
}

/// The ingest thread: the router over the shared floor and restaurants,
/// fed by the Kafka adapter, dispatching to the shards.
fn spawn_ingest(
    config: &Config,
    shared: Shared,
    learned_sections: crossbeam_channel::Receiver<LearnedSection>,
    threads: &mut Threads,
) -> std::io::Result<()> {
    let Shared { readiness, shutdown, shards, floor, restaurants } = shared;
    let disclosure = Disclosure { reservation: config.public_reservation_fields.clone(), ..Disclosure::default() };
    let deflater = config.session.compression.map(|compression| Deflater::new(compression.min_bytes));
    let router = EventRouter::new(floor, restaurants, disclosure, deflater);
    let ingest = KafkaIngest::new(
        config.kafka.clone(),
        Ingest::new(ShardDispatch::new(shards), config.kafka.max_record_bytes, router),
        learned_sections,
        readiness,
        shutdown,
    );
    let ingest_running = threads.register("kafka-ingest");
    std::thread::Builder::new().name("kafka-ingest".into()).spawn(move || {
        let _running = ingest_running;
        ingest.run()
    })?;
    Ok(())
}

/// Waits for a signal (or a thread that died), then for the drain, which a
/// second signal cuts short.
async fn signal_then_drain(
    threads: &mut Threads,
    shutdown: &Shutdown,
    drain_timeout: std::time::Duration,
) -> std::io::Result<Ending> {
    let mut signals = Signals::new()?;
    let signal = tokio::select! {
        signal = signals.next() => signal,
        thread = threads.next_ended() => return Ok(Ending::ThreadDied(thread)),
    };
    tracing::info!(signal, drain_timeout = ?drain_timeout, "shutting down: refusing new upgrades, closing clients with 1001");
    shutdown.trigger();
    // Shards stop by themselves once their clients are gone, or a little
    // before the drain timeout passes; the process exits by then anyway.
    let deadline = tokio::time::Instant::now() + drain_timeout;
    Ok(tokio::select! {
        finished = tokio::time::timeout_at(deadline, threads.all_ended()) => Ending::Drained { in_time: finished.is_ok() },
        signal = signals.next() => {
            tracing::warn!(signal, "second signal: exiting without waiting for the drain");
            Ending::Interrupted
        }
    })
}

fn exit_code(ending: Ending, shutdown: &Shutdown) -> ExitCode {
    match ending {
        Ending::Drained { in_time: true } => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Ending::Drained { in_time: false } => {
            tracing::warn!("threads still running at the drain deadline; exiting anyway");
            ExitCode::SUCCESS
        }
        Ending::Interrupted => ExitCode::from(EXIT_INTERRUPTED),
        Ending::ThreadDied(thread) => {
            // Readiness fails at once; the orchestrator restarts the process.
            shutdown.trigger();
            tracing::error!(thread, "a worker thread ended unexpectedly; exiting so that the process is restarted");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
