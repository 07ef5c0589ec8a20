//! Wiring: configuration, adapters, shards and the ingest thread. The only
//! place that knows every layer.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesaya_realtime::application::authorize::Authorizer;
use mesaya_realtime::application::readiness::Readiness;
use mesaya_realtime::config::{Config, LogFormat};
use mesaya_realtime::domain::access::AccessPolicy;
use mesaya_realtime::infrastructure::jwt::JwtVerifier;
use mesaya_realtime::infrastructure::kafka::KafkaIngest;
use mesaya_realtime::infrastructure::snapshot_http::HttpSnapshotSource;
use mesaya_realtime::shutdown::{Finished, Shutdown};
use mesaya_realtime::transport::context::ServerContext;
use mesaya_realtime::transport::mailbox::{self, Shards};
use mesaya_realtime::transport::shard;

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
    let shutdown = Shutdown::default();
    let (finished, all_finished) = Finished::tracker();
    let (table_reports, learned_tables) = crossbeam_channel::unbounded();
    let (mailboxes, inboxes): (Vec<_>, Vec<_>) = (0..config.shards).map(mailbox::mailbox).unzip();
    let shards = Shards::new(mailboxes);

    let ctx = Arc::new(ServerContext {
        authorizer: Authorizer::new(
            Arc::new(verifier),
            AccessPolicy::new(config.allowed_roles.clone(), config.required_permission.clone()),
        ),
        readiness: Arc::clone(&readiness),
        shutdown: shutdown.clone(),
        shards: shards.clone(),
        session: config.session.clone(),
        drain_timeout: config.drain_timeout,
        table_reports,
    });

    for (index, inbox) in inboxes.into_iter().enumerate() {
        let (base_url, path, timeout) =
            (config.rest_base_url.clone(), config.snapshot_path.clone(), config.rest_timeout);
        let make_snapshot_source = move || HttpSnapshotSource::new(&base_url, &path, timeout);
        let listener = listener.try_clone()?;
        shard::spawn(index, inbox, listener, Arc::clone(&ctx), make_snapshot_source, finished.clone())?;
    }
    drop(listener);

    let ingest = KafkaIngest::new(config.kafka.clone(), shards, learned_tables, readiness, shutdown.clone());
    let ingest_finished = finished;
    std::thread::Builder::new().name("kafka-ingest".into()).spawn(move || {
        let _finished = ingest_finished;
        ingest.run()
    })?;

    tracing::info!(
        address = %SocketAddr::new(config.host, config.port),
        shards = config.shards,
        snapshot = %format!("{}{}", config.rest_base_url, config.snapshot_path),
        "mesaya-realtime listening"
    );

    let signal = wait_for_signal()?;
    tracing::info!(signal, drain_timeout = ?config.drain_timeout, "shutting down: refusing new upgrades, closing clients with 1001");
    shutdown.trigger();

    // Shards stop by themselves once their clients are gone or the drain
    // timeout passes; allow a little more for the close handshakes.
    let deadline = Instant::now() + config.drain_timeout + Duration::from_secs(2);
    if all_finished.wait_until(deadline) {
        tracing::info!("stopped");
    } else {
        tracing::warn!("threads still running at the drain deadline; exiting anyway");
    }
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
