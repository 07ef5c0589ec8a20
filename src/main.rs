//! Wiring: configuration, adapters, shards and the ingest thread. The only
//! place that knows every layer.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mesaya_realtime::application::authorize::Authorizer;
use mesaya_realtime::application::readiness::Readiness;
use mesaya_realtime::domain::access::AccessPolicy;
use mesaya_realtime::infrastructure::config::{Config, LogFormat};
use mesaya_realtime::infrastructure::jwt::JwtVerifier;
use mesaya_realtime::infrastructure::kafka::KafkaIngest;
use mesaya_realtime::infrastructure::snapshot_http::HttpSnapshotSource;
use mesaya_realtime::transport::shard::{self, ServerContext, Shards};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration the process cannot start with.
const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let config = match Config::from_env() {
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
    init_logging(&config);

    let address = SocketAddr::new(config.host, config.port);
    let listener = match std::net::TcpListener::bind(address) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("configuration error: PORT: cannot listen on {address}: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    listener.set_nonblocking(true).expect("a bound listener accepts nonblocking mode");

    match run(config, verifier, listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "fatal");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log_level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config, verifier: JwtVerifier, listener: std::net::TcpListener) -> std::io::Result<()> {
    let readiness = Arc::new(Readiness::default());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (learned_tx, learned_rx) = crossbeam_channel::unbounded();
    let (mailboxes, inboxes): (Vec<_>, Vec<_>) = (0..config.shards).map(shard::mailbox).unzip();
    let shards = Shards::new(mailboxes);

    let ctx = Arc::new(ServerContext {
        authorizer: Authorizer::new(
            Arc::new(verifier),
            AccessPolicy::new(config.allowed_roles.clone(), config.required_permission.clone()),
        ),
        readiness: Arc::clone(&readiness),
        draining: AtomicBool::new(false),
        shards: shards.clone(),
        session: config.session.clone(),
        drain_timeout: config.drain_timeout,
        token_leeway: config.jwt.leeway,
        learned_tables: learned_tx,
        shutdown: shutdown_rx,
    });

    let mut shard_threads = Vec::new();
    for (index, inbox) in inboxes.into_iter().enumerate() {
        let (base_url, path, timeout) =
            (config.rest_base_url.clone(), config.snapshot_path.clone(), config.rest_timeout);
        shard_threads.push(shard::spawn(index, inbox, listener.try_clone()?, Arc::clone(&ctx), move || {
            HttpSnapshotSource::new(&base_url, &path, timeout)
        })?);
    }
    drop(listener);

    let stop_ingest = Arc::new(AtomicBool::new(false));
    let ingest = KafkaIngest::new(config.kafka.clone(), shards, learned_rx, readiness, Arc::clone(&stop_ingest));
    std::thread::Builder::new().name("kafka-ingest".into()).spawn(move || ingest.run())?;

    tracing::info!(
        address = %SocketAddr::new(config.host, config.port),
        shards = config.shards,
        snapshot = %format!("{}{}", config.rest_base_url, config.snapshot_path),
        "mesaya-realtime listening"
    );

    let signal = wait_for_signal()?;
    tracing::info!(signal, drain_timeout = ?config.drain_timeout, "shutting down: refusing new upgrades, closing clients with 1001");
    ctx.draining.store(true, Ordering::Release);
    let _ = shutdown_tx.send(true);
    stop_ingest.store(true, Ordering::Release);

    // Shards stop by themselves once their clients are gone or the drain
    // timeout passes; allow a little more for the close handshakes.
    let deadline = Instant::now() + config.drain_timeout + Duration::from_secs(2);
    for thread in shard_threads {
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    tracing::info!("stopped");
    Ok(())
}

fn wait_for_signal() -> std::io::Result<&'static str> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = terminate.recv() => Ok("SIGTERM"),
            interrupted = tokio::signal::ctrl_c() => interrupted.map(|()| "SIGINT"),
        }
    })
}
