//! The stack every end-to-end test runs against: a real tansu broker, the
//! stand-in MesaYa API and the gateway binary, wired on 127.0.0.1.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::time::Duration;

use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::ws::WsClient;
use serde_json::Value;

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

pub fn token() -> String {
    TokenBuilder::new().hs256(SECRET)
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
        let broker = Broker::start_memory().await;
        let api = StandInApi::start();
        let producer = EventProducer::new(&broker.bootstrap());
        let mut gateway = Gateway::start(binary(), &gateway_env(&broker, &api, extra));
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

    pub async fn publish(&self, topic: &str, value: &Value) {
        self.producer.send_json(topic, value).await;
    }

    /// A counter or gauge from `/metrics`, summed over label sets whose
    /// text contains `labels` (e.g. `reason="not_json"`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let (status, body) = self.gateway.get("/metrics").await;
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
    let url = gateway.ws_url(&format!("/ws/restaurant/{section}/{}", token()));
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
