//! The operations endpoints (SPEC §1.4): `GET /healthz`, `/readyz` and
//! `/metrics`, answered on the public port or, with `ADMIN_PORT`, on the
//! admin listener only.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::telemetry::METRICS;

use super::context::ServerContext;
use super::front::{Body, plain};

/// The answer when `request` is for one of the operations endpoints.
pub fn answer<B>(request: &Request<B>, ctx: &ServerContext) -> Option<Response<Body>> {
    if request.method() != Method::GET {
        return None;
    }
    match request.uri().path() {
        "/healthz" => Some(plain(StatusCode::OK, "ok\n")),
        "/readyz" => Some(readiness(ctx)),
        "/metrics" => Some(metrics(ctx)),
        _ => None,
    }
}

fn readiness(ctx: &ServerContext) -> Response<Body> {
    if ctx.readiness.is_ready() && !ctx.shutdown.is_triggered() {
        plain(StatusCode::OK, "ready\n")
    } else {
        plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn metrics(ctx: &ServerContext) -> Response<Body> {
    // Gauges read only here, so they are set only here.
    METRICS.kafka_ready.set(i64::from(ctx.readiness.is_ready()));
    METRICS.http_pending.set(i64::try_from(ctx.pending.len()).unwrap_or(i64::MAX));
    let mut response = Response::new(Full::new(Bytes::from(METRICS.render())));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}
