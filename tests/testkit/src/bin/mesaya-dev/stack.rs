//! The pieces the dev command runs, started in order and kept together: Kafka with the sample
//! restaurant's history, the stand-in API serving its sections, the gateway, and the floor-plan
//! page. Every upstream change goes through [`Stack::emit`], so the database (the API's
//! answers) changes before Nest emits, as in production.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesaya_testkit::api::StandInApi;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::page::{FloorPlanPage, PageConfig};
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::sample::{Event, Floor, Simulator};
use mesaya_testkit::tokens::{self, TokenBuilder};

use crate::kafka::{Choice, Kafka};

pub const SECRET: &str = "mesaya-dev-secret-change-me";
/// Signs resume tokens, so that the page's reconnects resume as in production.
const RESUME_SECRET: &str = "mesaya-dev-resume-secret-change-me-0123456789";
/// The `sub` of every token the dev command makes: one user, so that a refresh is the same user's.
const DEV_USER: &str = "0b7f6a52-6c1e-4d1a-9a3e-5f2d8c4b7e10";
/// How long the page's tokens live by default: short, so that the gateway's `auth.expiring` (a
/// minute before expiry by default) and the page's in-band refresh show in its event list every
/// minute or so.
pub const PAGE_TOKEN_LIFETIME: Duration = Duration::from_secs(120);
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Beyond the gateway's own `DRAIN_TIMEOUT` (10 s by default), for a restart.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// Where the pieces listen, and what else the gateway is told.
pub struct Layout {
    pub kafka: Choice,
    pub gateway_bin: PathBuf,
    pub gateway_port: u16,
    pub admin_port: u16,
    pub page_port: u16,
    /// Of the tokens the page gets; keep it above the gateway's `WS_REFRESH_NOTICE`, or every
    /// refreshed token is due for refresh at once.
    pub page_token_lifetime: Duration,
    /// `NAME=VALUE` pairs for the gateway, after (so over) the dev command's own.
    pub gateway_env: Vec<(String, String)>,
    pub seed: u64,
}

pub struct Stack {
    pub kafka: Kafka,
    pub api: StandInApi,
    pub page: FloorPlanPage,
    pub gateway: Gateway,
    pub simulator: Simulator,
    pub page_token_lifetime: Duration,
    producer: EventProducer,
    gateway_bin: PathBuf,
    env: Vec<(String, String)>,
}

impl Stack {
    /// Starts everything and waits until the gateway is ready; `Err` names what could not start.
    pub async fn start(layout: Layout) -> Result<Stack, String> {
        let floor = Floor::sample();
        // The page first: it shows "connecting" and retries until the gateway below is ready.
        let page = FloorPlanPage::start(
            layout.page_port,
            &PageConfig {
                gateway: format!("ws://127.0.0.1:{}", layout.gateway_port),
                tokens: Arc::new(move || token(&["USER"], layout.page_token_lifetime)),
                sections: floor.sections(),
            },
        )
        .map_err(|error| format!("{error}; pick another port with PAGE_PORT=…"))?;

        let kafka = Kafka::start(layout.kafka).await?;
        let producer = EventProducer::new(&kafka.bootstrap());
        // What the topics would hold in production: the gateway rebuilds object links from it.
        for event in floor.history() {
            producer.send_json(event.topic, &event.envelope).await;
        }
        let api = StandInApi::start();
        floor.serve_on(&api);

        let mut env: Vec<(String, String)> = gateway::wiring_to(&kafka.bootstrap(), &api, SECRET)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        env.extend([
            ("PORT".into(), layout.gateway_port.to_string()),
            ("ADMIN_PORT".into(), layout.admin_port.to_string()),
            ("JWT_ISSUER".into(), tokens::ISSUER.to_string()),
            ("LOG_FORMAT".into(), "text".to_string()),
            ("RESUME_SECRET".into(), RESUME_SECRET.to_string()),
        ]);
        env.extend(layout.gateway_env);
        let gateway = start_gateway(&layout.gateway_bin, &env).await;
        let simulator = Simulator::new(floor, fastrand::Rng::with_seed(layout.seed));
        Ok(Stack {
            kafka,
            api,
            page,
            gateway,
            simulator,
            page_token_lifetime: layout.page_token_lifetime,
            producer,
            gateway_bin: layout.gateway_bin,
            env,
        })
    }

    /// The simulator's next event, emitted.
    pub async fn simulate(&mut self) -> Event {
        let event = self.simulator.next_event();
        self.publish(&event).await;
        event
    }

    /// A scripted change: applied to the floor, served by the API, then emitted.
    pub async fn emit(&mut self, event: &Event) {
        self.simulator.record(event);
        self.publish(event).await;
    }

    /// Scripted changes committed together (a bulk import): all applied and served, then all
    /// emitted.
    pub async fn emit_all(&mut self, events: &[Event]) {
        for event in events {
            self.simulator.record(event);
        }
        self.simulator.floor().serve_on(&self.api);
        for event in events {
            self.producer.send_json(event.topic, &event.envelope).await;
        }
    }

    /// The API answers with the state the event leaves behind, as the real one would to a client
    /// that connects right after it; then the event goes to Kafka.
    async fn publish(&self, event: &Event) {
        self.simulator.floor().serve_on(&self.api);
        self.producer.send_json(event.topic, &event.envelope).await;
    }

    /// SIGTERM to the gateway (a deploy), then a new process on the same ports, ready.
    pub async fn restart_gateway(&mut self) -> Result<(), String> {
        self.stop_gateway().await?;
        self.gateway = start_gateway(&self.gateway_bin, &self.env).await;
        Ok(())
    }

    pub async fn stop_gateway(&mut self) -> Result<(), String> {
        self.gateway.terminate();
        match self.gateway.wait_exit(EXIT_WITHIN).await {
            Some(_) => Ok(()),
            None => Err(format!("the gateway did not exit within {EXIT_WITHIN:?} of SIGTERM")),
        }
    }
}

async fn start_gateway(bin: &std::path::Path, env: &[(String, String)]) -> Gateway {
    let env: Vec<(&str, String)> = env.iter().map(|(name, value)| (name.as_str(), value.clone())).collect();
    let mut gateway = Gateway::start(bin, &env);
    gateway.wait_ready(READY_WITHIN).await;
    gateway
}

/// A token from the dev command's issuer, for the gateway it runs.
pub fn token(roles: &[&str], lifetime: Duration) -> String {
    let seconds = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    TokenBuilder::new().sub(DEV_USER).roles(roles).expires_in(seconds).hs256(SECRET)
}
