//! The gateway's main job on one machine, for trying it out: a tansu broker
//! (in memory), the stand-in MesaYa API serving a sample section, and the
//! gateway itself. Prints a connect URL with a valid token, then publishes a
//! table move every two seconds so a connected client sees live events.
//!
//! `scripts/dev.sh` builds the gateway and runs this; Ctrl-C stops all.

use std::path::PathBuf;
use std::time::Duration;

use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::{self, TokenBuilder};

const SECTION: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
const TABLES: [&str; 2] = ["9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60", "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"];
const SECRET: &str = "mesaya-dev-secret-change-me";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let gateway_bin = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        eprintln!("usage: mesaya-dev <path to the mesaya-realtime binary>");
        std::process::exit(2);
    });
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());

    let broker = Broker::start_memory().await;
    let api = StandInApi::start();
    let tables: Vec<_> = TABLES.iter().map(|id| fixtures::table_json(id, SECTION, fixtures::CREATED_AT)).collect();
    api.set_section(SECTION, fixtures::nest_snapshot(SECTION, tables));

    let mut env = gateway::wiring(&broker, &api, SECRET);
    env.extend([("PORT", port), ("JWT_ISSUER", tokens::ISSUER.to_string()), ("LOG_FORMAT", "text".to_string())]);
    let mut gateway = Gateway::start(&gateway_bin, &env);
    gateway.wait_ready(Duration::from_secs(60)).await;

    let token = TokenBuilder::new().roles(&["USER"]).expires_in(24 * 3600).hs256(SECRET);
    let url = gateway.ws_url(&format!("/ws/restaurant/{SECTION}/{token}"));
    println!("mesaya-realtime is ready (broker {}, stand-in API {})", broker.bootstrap(), api.base_url());
    println!();
    println!("  connect:  {url}");
    println!("  browser:  new WebSocket(\"{url}\").onmessage = (e) => console.log(JSON.parse(e.data))");
    println!("  health:   {}/healthz  {}/readyz  {}/metrics", gateway.url(), gateway.url(), gateway.url());
    println!("  logs:     {}", gateway.log_path().display());
    println!();
    println!("Publishing a table.updated for section {SECTION} every 2 s. Ctrl-C stops everything.");

    let producer = EventProducer::new(&broker.bootstrap());
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    for step in 0u64.. {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let table = TABLES[(step % 2) as usize];
        let mut data = fixtures::table_json(
            table,
            SECTION,
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        data["posX"] = serde_json::json!(10 + (step % 20) * 5);
        producer.send_json("mesa-ya.tables.events", &fixtures::v2("updated", table, data)).await;
    }
    println!("stopping");
    gateway.terminate();
    let _ = gateway.wait_exit(Duration::from_secs(15)).await;
}
