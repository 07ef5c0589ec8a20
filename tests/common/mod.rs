//! The stack every end-to-end test runs against: a real tansu broker, the
//! stand-in MesaYa API and the gateway binary, wired on 127.0.0.1.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::wait;
use mesaya_testkit::ws::{ABNORMAL_CLOSURE, WsClient};
use serde_json::{Value, json};

pub const SECRET: &str = "integration-test-secret-0123456789";
/// Upper bound for anything that should happen "now"; generous for 2 cores.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long a client must stay silent to count as "received nothing".
pub const QUIET: Duration = Duration::from_millis(700);

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mesaya-realtime"))
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A diner's token (role `USER`): public, so reservations and restaurants
/// reach it cut (SPEC §2.7).
pub fn token() -> String {
    TokenBuilder::new().hs256(SECRET)
}

/// An `ADMIN`'s token: staff, who get every entity exactly as it was sent.
pub fn staff_token() -> String {
    TokenBuilder::new().roles(&["ADMIN"]).hs256(SECRET)
}

pub struct Stack {
    pub broker: Broker,
    pub api: StandInApi,
    pub producer: EventProducer,
    pub gateway: Gateway,
}

/// The environment a gateway of this stack runs with, plus `extra`
/// (which wins over the defaults).
pub fn gateway_env(broker: &Broker, api: &StandInApi, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
    let mut env = gateway::wiring(broker, api, SECRET);
    env.push(("SHARDS", "2".to_string()));
    env.push(("LOG_LEVEL", "info,mesaya_realtime=debug".to_string()));
    for (name, value) in extra {
        env.retain(|(existing, _)| existing != name);
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        env.push((name, value.clone()));
    }
    env
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&str, String)]) -> Stack {
        Self::launch(extra, |env| Gateway::start(binary(), env)).await
    }

    /// [`Stack::start_with`], the gateway's open-file limit set to `open_files` (soft and hard).
    pub async fn start_with_open_files(extra: &[(&str, String)], open_files: u64) -> Stack {
        Self::launch(extra, |env| Gateway::start_with_open_files(binary(), env, open_files)).await
    }

    async fn launch(extra: &[(&str, String)], start: impl FnOnce(&[(&str, String)]) -> Gateway) -> Stack {
        let broker = Broker::start_memory().await;
        let api = StandInApi::start();
        let producer = EventProducer::new(&broker.bootstrap());
        let mut gateway = start(&gateway_env(&broker, &api, extra));
        gateway.wait_ready(WAIT).await;
        Stack { broker, api, producer, gateway }
    }

    /// Serves a section with the given tables from the stand-in API.
    pub fn serve_section(&self, section: &str, tables: Vec<Value>) {
        serve_section(&self.api, section, tables);
    }

    pub fn ws_url(&self, section: &str, token: &str) -> String {
        self.gateway.ws_url(&format!("/ws/restaurant/{section}/{token}"))
    }

    /// Connects with a fresh valid token and reads the snapshot frame.
    pub async fn watch(&self, section: &str) -> (WsClient, Value) {
        watch_on(&self.gateway, section).await
    }

    /// [`Stack::watch`] as staff, for tests of what the entities say.
    pub async fn watch_staff(&self, section: &str) -> (WsClient, Value) {
        watch_with(&self.gateway, section, &staff_token()).await
    }

    pub async fn publish(&self, topic: &str, value: &Value) {
        self.producer.send_json(topic, value).await;
    }

    /// A counter or gauge from `/metrics` (on the admin listener when there
    /// is one), summed over label sets whose text contains `labels` (e.g.
    /// `reason="not_json"`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (status, body) = self.gateway.get_ops("/metrics").await;
        assert_eq!(status, 200);
        metric_value(&body, name, labels)
    }
}

/// Serves a section with the given tables from `api`.
pub fn serve_section(api: &StandInApi, section: &str, tables: Vec<Value>) {
    api.set_section(section, fixtures::nest_snapshot(section, tables));
}

/// Connects to `gateway` (the stack's or another) with a fresh valid token
/// and reads the snapshot frame.
pub async fn watch_on(gateway: &Gateway, section: &str) -> (WsClient, Value) {
    watch_with(gateway, section, &token()).await
}

/// [`watch_on`] as staff.
pub async fn watch_staff_on(gateway: &Gateway, section: &str) -> (WsClient, Value) {
    watch_with(gateway, section, &staff_token()).await
}

async fn watch_with(gateway: &Gateway, section: &str, token: &str) -> (WsClient, Value) {
    let url = gateway.ws_url(&format!("/ws/restaurant/{section}/{token}"));
    let mut client =
        WsClient::connect(&url).await.unwrap_or_else(|(status, body)| panic!("upgrade refused: {status} {body}"));
    let snapshot = client.next_json(WAIT).await;
    assert_eq!(snapshot["event"], "section.snapshot", "first frame must be the snapshot: {snapshot}");
    (client, snapshot)
}

pub fn metric_value(body: &str, name: &str, labels: &str) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `updatedAt` of version `n`: `n` ms after 16:00, so versions order as
/// their numbers do (and as their strings do).
pub fn version(n: u64) -> String {
    format!("2026-01-10T16:{:02}:{:02}.{:03}Z", n / 60_000, (n / 1000) % 60, n % 1000)
}

pub fn table(id: &str, section: &str, n: u64) -> Value {
    fixtures::table_json(id, section, &version(n))
}

/// A table carrying `bytes` of padding, so that few events fill a socket.
pub fn big_table(id: &str, section: &str, n: u64, bytes: usize) -> Value {
    let mut table = table(id, section, n);
    table["notes"] = json!("x".repeat(bytes));
    table
}

pub fn frame_json(message: &Message) -> Value {
    match message {
        Message::Text(text) => serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

pub async fn wait_metric(stack: &Stack, name: &str, what: &str, done: impl Fn(f64) -> bool) -> f64 {
    wait::until_some(WAIT, what, || async {
        let value = stack.metric(name, "").await;
        done(value).then_some(value)
    })
    .await
}

/// Polls `/readyz` (on the admin listener when there is one) until it
/// answers `status`.
pub async fn wait_readyz(gateway: &Gateway, status: u16, timeout: Duration) {
    wait::until_some(timeout, &format!("/readyz {status}"), || async {
        (gateway.get_ops("/readyz").await.0 == status).then_some(())
    })
    .await
}

// --- a bare tokio-tungstenite client, for what WsClient hides or forbids:
// --- server pings, sends that may fail, frames that are not valid messages.

pub type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn raw_connect(url: &str) -> Raw {
    let connecting = tokio_tungstenite::connect_async(url);
    let (mut ws, _) = tokio::time::timeout(WAIT, connecting).await.expect("connect timed out").expect("upgrade");
    let snapshot = raw_next(&mut ws, WAIT).await.expect("the snapshot");
    assert_eq!(frame_json(&snapshot)["event"], "section.snapshot");
    ws
}

/// The next frame of any kind, pings included; `None` on timeout. Panics if
/// the connection ends.
pub async fn raw_next(ws: &mut Raw, timeout: Duration) -> Option<Message> {
    match tokio::time::timeout(timeout, ws.next()).await {
        Err(_) => None,
        Ok(Some(Ok(message))) => Some(message),
        Ok(end) => panic!("the connection ended: {end:?}"),
    }
}

/// Reads until the server's close frame; its code, or 1006 when the
/// connection ends without one.
pub async fn raw_close_code(ws: &mut Raw) -> u16 {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {WAIT:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map_or(1005, |f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return ABNORMAL_CLOSURE,
        }
    }
}

/// Sends without panicking: the server may close while a flood is going out.
pub async fn raw_send(ws: &mut Raw, message: Message) -> bool {
    ws.send(message).await.is_ok()
}
