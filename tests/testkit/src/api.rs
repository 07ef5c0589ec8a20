//! A real HTTP/1 server standing in for the MesaYa Nest API's section endpoint (`GET /api/v1/sections/{id}`).
//!
//! It runs on its own thread and runtime ([`crate::server`]), so it keeps answering whatever the
//! test's runtime is doing. Every request is recorded when it arrives, before any hold or delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::server::Server;

/// Value for the gateway's `SECTION_SNAPSHOT_PATH`: the route this server answers.
pub const SNAPSHOT_PATH: &str = "/api/v1/sections/{id}";
const SECTION_PREFIX: &str = "/api/v1/sections/";
/// Nest error bodies carry a timestamp; a fixed one keeps them reproducible.
const ERROR_TIMESTAMP: &str = "2026-01-10T15:04:05.123Z";

/// A canned answer for one section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Sent as is, with `Content-Type: application/json; charset=utf-8` whatever it holds.
    pub body: String,
    /// Waited before answering (after any [`StandInApi::hold`] is released).
    pub delay: Duration,
}

impl Reply {
    /// An immediate reply.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Self { status, body: body.into(), delay: Duration::ZERO }
    }

    /// The same reply, sent after `delay`.
    pub fn after(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }
}

/// One request as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCall {
    pub method: String,
    /// Path only; see `query`.
    pub path: String,
    pub query: Option<String>,
    /// The raw `Authorization` header, e.g. `Bearer eyJ…`.
    pub authorization: Option<String>,
    /// `X-Forwarded-For`: who the caller says the client is.
    pub forwarded_for: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Default)]
struct State {
    replies: Mutex<HashMap<String, Reply>>,
    holds: Mutex<HashMap<String, watch::Receiver<bool>>>,
    calls: Mutex<Vec<RecordedCall>>,
}

/// Locks ignoring poisoning: a test that panicked while holding a lock must not hide its own
/// failure behind a second panic here.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The running stand-in server. Dropping it shuts it down.
pub struct StandInApi {
    state: Arc<State>,
    server: Server,
}

impl StandInApi {
    /// Binds a free port on 127.0.0.1 and starts serving at once.
    pub fn start() -> Self {
        let state = Arc::new(State::default());
        let server = Server::start("stand-in API", 0, {
            let state = state.clone();
            move |request| answer(state.clone(), request)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Self { state, server }
    }

    /// `http://127.0.0.1:PORT`, for the gateway's `REST_BASE_URL`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Serves `section` for `GET /api/v1/sections/{id}` as Nest does: 200 `{"data": section}`.
    pub fn set_section(&self, id: &str, section: Value) {
        self.set_reply(id, Reply::new(200, json!({ "data": section }).to_string()));
    }

    /// Serves `reply` for `GET /api/v1/sections/{id}` (errors, garbage, slowness).
    pub fn set_reply(&self, id: &str, reply: Reply) {
        lock(&self.state.replies).insert(id.to_owned(), reply);
    }

    /// Holds every answer for section `id` until the returned guard is released or dropped:
    /// requests are recorded, then wait. Lets a test act while a snapshot call is in flight.
    pub fn hold(&self, id: &str) -> HeldReplies {
        let (release, held) = watch::channel(false);
        lock(&self.state.holds).insert(id.to_owned(), held);
        HeldReplies { release }
    }

    /// Every request received so far, in arrival order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        lock(&self.state.calls).clone()
    }

    /// How many `GET /api/v1/sections/{section_id}` requests arrived.
    pub fn call_count(&self, section_id: &str) -> usize {
        let path = format!("{SECTION_PREFIX}{section_id}");
        lock(&self.state.calls).iter().filter(|call| call.method == "GET" && call.path == path).count()
    }

    /// Stops accepting and closes every open connection (as if the API went down); later
    /// connection attempts are refused. Idempotent.
    pub fn shutdown(&mut self) {
        self.server.shutdown();
    }
}

/// Returned by [`StandInApi::hold`]; answers flow again when released or dropped.
pub struct HeldReplies {
    release: watch::Sender<bool>,
}

impl HeldReplies {
    pub fn release(self) {
        // Dropping does the work.
    }
}

impl Drop for HeldReplies {
    fn drop(&mut self) {
        let _ = self.release.send(true);
    }
}

async fn answer(state: Arc<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = request.uri();
    let path = uri.path().to_owned();
    let header =
        |name: &str| request.headers().get(name).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    lock(&state.calls).push(RecordedCall {
        method: request.method().to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        authorization: header(header::AUTHORIZATION.as_str()),
        forwarded_for: header("x-forwarded-for"),
        request_id: header("x-request-id"),
    });

    let section_id = path.strip_prefix(SECTION_PREFIX).filter(|id| !id.is_empty() && !id.contains('/'));
    let (Some(id), &Method::GET) = (section_id, request.method()) else {
        let message = format!("Cannot {} {path}", request.method());
        return respond(&Reply::new(404, nest_error(404, &message, "Not Found", &path)));
    };

    let held = lock(&state.holds).get(id).cloned();
    if let Some(mut held) = held {
        // An error means the guard is gone, which releases too.
        let _ = held.wait_for(|released| *released).await;
    }
    let reply = lock(&state.replies).get(id).cloned().unwrap_or_else(|| default_reply(id, &path));
    tokio::time::sleep(reply.delay).await;
    respond(&reply)
}

/// What Nest answers for a section nobody configured: 400 for a non-UUID id (`UUIDPipe`),
/// otherwise 404 `SectionNotFoundError`.
fn default_reply(id: &str, path: &str) -> Reply {
    let is_uuid = id.len() == 36 && uuid::Uuid::try_parse(id).is_ok();
    if is_uuid {
        let message = format!("Section {id} not found");
        Reply::new(404, nest_error(404, &message, "SectionNotFoundError", path))
    } else {
        let message = "Validation failed (uuid is expected)";
        Reply::new(400, nest_error(400, message, "Bad Request", path))
    }
}

/// Nest's `DomainExceptionFilter` body.
fn nest_error(status: u16, message: &str, error: &str, path: &str) -> String {
    json!({
        "statusCode": status,
        "message": message,
        "error": error,
        "timestamp": ERROR_TIMESTAMP,
        "path": path,
    })
    .to_string()
}

fn respond(reply: &Reply) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(reply.status).unwrap_or_else(|_| panic!("invalid HTTP status {}", reply.status));
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(reply.body.clone())))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{get, get_with};
    use crate::wait;

    const ID: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";

    #[tokio::test]
    async fn unknown_section_gets_nests_404() {
        let api = StandInApi::start();
        let (status, body) = get(&format!("{}/api/v1/sections/{ID}", api.base_url())).await;
        assert_eq!(status, 404);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["message"], format!("Section {ID} not found"));
        assert_eq!(body["error"], "SectionNotFoundError");
        assert_eq!(body["path"], format!("/api/v1/sections/{ID}"));
    }

    #[tokio::test]
    async fn non_uuid_id_gets_400() {
        let api = StandInApi::start();
        let (status, _) = get(&format!("{}/api/v1/sections/nope", api.base_url())).await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn configured_section_is_wrapped_in_data_and_calls_are_recorded() {
        let api = StandInApi::start();
        api.set_section(ID, json!({"id": ID, "tables": []}));
        let url = format!("{}/api/v1/sections/{ID}", api.base_url());
        let (status, body) = get_with(&url, &[("authorization", "Bearer abc")]).await;
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"data": {"id": ID, "tables": []}}));
        assert_eq!(
            api.calls(),
            vec![RecordedCall {
                method: "GET".into(),
                path: format!("/api/v1/sections/{ID}"),
                query: None,
                authorization: Some("Bearer abc".into()),
                forwarded_for: None,
                request_id: None,
            }]
        );
        assert_eq!(api.call_count(ID), 1);
    }

    #[tokio::test]
    async fn configured_reply_is_served_after_its_delay() {
        let api = StandInApi::start();
        api.set_reply(ID, Reply::new(503, "oops").after(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        let (status, body) = get(&format!("{}/api/v1/sections/{ID}", api.base_url())).await;
        assert_eq!((status, body.as_str()), (503, "oops"));
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn held_replies_wait_for_release() {
        let api = StandInApi::start();
        let held = api.hold(ID);
        let url = format!("{}/api/v1/sections/{ID}", api.base_url());
        let request = tokio::spawn(async move { get(&url).await });
        wait::until(Duration::from_secs(5), "the held call to arrive", || api.call_count(ID) == 1).await;
        // Configured while the call is held: the reply is chosen on release.
        api.set_section(ID, json!({"id": ID}));
        assert!(!request.is_finished());
        held.release();
        let (status, _) = request.await.unwrap();
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn shutdown_refuses_new_connections() {
        let mut api = StandInApi::start();
        let addr = api.server.addr();
        api.shutdown();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
