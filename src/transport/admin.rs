//! The admin listener (`ADMIN_HOST:ADMIN_PORT`, SPEC §1.4): `/healthz`,
//! `/readyz` and `/metrics` and nothing else, on a thread and a runtime of
//! their own with a few connections of their own, so that a flood of the
//! public port takes from it neither a thread's turn, nor a place, nor a
//! descriptor (the configuration reserves its connections).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::application::pending::PendingConnections;
use crate::domain::limits::PendingLimits;
use crate::shutdown::Running;

use super::context::ServerContext;
use super::front::{self, CloseSignal, Pending};
use super::ops;

/// Connections the admin listener holds at once; one more evicts the
/// longest-idle. Probes and a scraper need a few.
pub const MAX_CONNECTIONS: usize = 32;

/// Starts the admin thread on `listener`, bound by `main`. It serves until
/// the drain after a shutdown is over, so that `/readyz` tells the drain.
pub fn spawn(listener: std::net::TcpListener, ctx: Arc<ServerContext>, running: Running) -> std::io::Result<()> {
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        let _running = running;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("building a current-thread runtime only fails on OS resource exhaustion");
        tokio::task::LocalSet::new().block_on(&runtime, run(listener, ctx));
    })?;
    Ok(())
}

async fn run(listener: std::net::TcpListener, ctx: Arc<ServerContext>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => return tracing::error!(%error, "cannot register the admin listener"),
    };
    let pending = PendingConnections::new(PendingLimits { max_pending: MAX_CONNECTIONS, max_per_client: 0 });
    tokio::select! {
        () = accept_loop(&listener, &pending, &ctx) => {}
        () = drained(&ctx) => {}
    }
}

async fn accept_loop(listener: &TcpListener, pending: &Arc<Pending>, ctx: &Arc<ServerContext>) {
    loop {
        let (stream, _) = front::accept(listener).await;
        let close = CloseSignal::default();
        let place = pending.enter(None, close.clone()).expect("no cap per address here").place;
        let ctx = Arc::clone(ctx);
        let service = service_fn(move |request| {
            // Its idle time starts again; with no address counted, never refused.
            let _ = place.request(None);
            let response = ops::answer(&request, &ctx).unwrap_or_else(front::not_found);
            async move { Ok::<_, Infallible>(response) }
        });
        tokio::task::spawn_local(front::serve(stream, service, close));
    }
}

/// Resolves once a shutdown's drain is over: every session ended, or
/// `DRAIN_TIMEOUT` passed.
async fn drained(ctx: &ServerContext) {
    ctx.shutdown.triggered().await;
    let _ = tokio::time::timeout(ctx.drain_timeout, ctx.sessions_ended()).await;
}
