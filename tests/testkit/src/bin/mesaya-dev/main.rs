//! The gateway's main job on one machine, for a person to look at: Kafka, the stand-in MesaYa API
//! serving the two sections of a sample restaurant, the gateway itself, a simulator producing the
//! upstream traffic of a busy evening, and a floor-plan page showing a section live (its URL is
//! the first line printed).
//!
//! `scripts/dev.sh` builds the gateway and runs this; Ctrl-C stops everything.

mod kafka;
mod prometheus;

use std::path::PathBuf;
use std::time::Duration;

use mesaya_testkit::api::StandInApi;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::page::{FloorPlanPage, PageConfig};
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::sample::{Floor, Simulator};
use mesaya_testkit::tokens::{self, TokenBuilder};

use kafka::{Choice, Kafka};

const USAGE: &str =
    "usage: mesaya-dev [--broker mock|tansu] [--rate EVENTS_PER_SECOND] [--with-prometheus] <path to mesaya-realtime>

  --broker mock    Kafka in this process (librdkafka's mock cluster; the default)
  --broker tansu   a tansu broker process (TANSU_BIN, see scripts/ensure-tansu.sh)
  --rate N         simulated upstream events per second (default 2; fractions allowed)
  --with-prometheus  Prometheus (Debian's package) scraping the gateway, the alert rules loaded

  KAFKA_BROKERS=host:port    use that Kafka instead of starting one
  PORT=8080, PAGE_PORT=8081  the gateway's and the floor-plan page's ports
  ADMIN_PORT=8082            the gateway's admin listener (/healthz, /readyz, /metrics)
  PROMETHEUS_PORT=9090       Prometheus, with --with-prometheus";
const SECRET: &str = "mesaya-dev-secret-change-me";
const DEFAULT_RATE: f64 = 2.0;
/// A bound against typos such as `--rate 20000`: load testing is `cargo bench --bench fanout_load`'s job.
const MAX_RATE: f64 = 1000.0;

#[derive(Debug)]
struct Options {
    kafka: Choice,
    rate: f64,
    with_prometheus: bool,
    gateway_bin: PathBuf,
}

fn parse(args: impl IntoIterator<Item = String>, kafka_brokers: Option<String>) -> Result<Options, String> {
    let mut broker = None;
    let mut rate = DEFAULT_RATE;
    let mut gateway_bin = None;
    let mut with_prometheus = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| args.next()).ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => broker = Some(value()?),
            "--rate" => {
                let text = value()?;
                rate = text.parse().map_err(|_| format!("--rate {text}: not a number"))?;
                if !(rate > 0.0 && rate <= MAX_RATE) {
                    return Err(format!("--rate {text}: must be above 0 and at most {MAX_RATE}"));
                }
            }
            "--with-prometheus" => with_prometheus = true,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            _ => gateway_bin = Some(PathBuf::from(arg)),
        }
    }
    let kafka = match (broker.as_deref(), kafka_brokers.filter(|b| !b.is_empty())) {
        (None, Some(bootstrap)) => Choice::External(bootstrap),
        (Some(_), Some(_)) => return Err("--broker and KAFKA_BROKERS both name a Kafka: use one".into()),
        (None | Some("mock"), None) => Choice::Mock,
        (Some("tansu"), None) => Choice::Tansu,
        (Some(other), None) => return Err(format!("--broker {other}: expected mock or tansu")),
    };
    let gateway_bin = gateway_bin.ok_or("the path to the mesaya-realtime binary is missing")?;
    Ok(Options { kafka, rate, with_prometheus, gateway_bin })
}

fn port(variable: &str, default: u16) -> u16 {
    match std::env::var(variable) {
        Ok(value) => value.parse().unwrap_or_else(|_| fail(&format!("{variable}={value} is not a port"))),
        Err(_) => default,
    }
}

fn fail(message: &str) -> ! {
    eprintln!("mesaya-dev: {message}");
    std::process::exit(2);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let options = parse(std::env::args().skip(1), std::env::var("KAFKA_BROKERS").ok()).unwrap_or_else(|error| {
        if !error.is_empty() {
            eprintln!("mesaya-dev: {error}\n");
        }
        eprintln!("{USAGE}");
        std::process::exit(2);
    });
    if options.with_prometheus && mesaya_testkit::prometheus::binary().is_none() {
        fail(prometheus::NOT_INSTALLED);
    }
    let gateway_port = port("PORT", 8080);
    let admin_port = port("ADMIN_PORT", 8082);
    let floor = Floor::sample();

    // The page first: it shows "connecting" and retries until the gateway below is ready.
    let token = TokenBuilder::new().roles(&["USER"]).expires_in(24 * 3600).hs256(SECRET);
    let page = FloorPlanPage::start(
        port("PAGE_PORT", 8081),
        &PageConfig {
            gateway: format!("ws://127.0.0.1:{gateway_port}"),
            token: token.clone(),
            sections: floor.sections(),
        },
    )
    .unwrap_or_else(|error| fail(&format!("{error}; pick another port with PAGE_PORT=…")));
    println!("floor plan: {}", page.url());
    println!();

    let kafka = Kafka::start(options.kafka).await.unwrap_or_else(|error| fail(&error));
    let producer = EventProducer::new(&kafka.bootstrap());
    // What the topics would hold in production: the gateway rebuilds object links from it.
    for event in floor.history() {
        producer.send_json(event.topic, &event.envelope).await;
    }
    let api = StandInApi::start();
    let mut simulator = Simulator::new(floor, fastrand::Rng::new());
    simulator.floor().serve_on(&api);

    let mut env = gateway::wiring_to(&kafka.bootstrap(), &api, SECRET);
    env.extend([
        ("PORT", gateway_port.to_string()),
        ("ADMIN_PORT", admin_port.to_string()),
        ("JWT_ISSUER", tokens::ISSUER.to_string()),
        ("LOG_FORMAT", "text".to_string()),
    ]);
    let mut gateway = Gateway::start(&options.gateway_bin, &env);
    gateway.wait_ready(Duration::from_secs(60)).await;

    let (first_section, _) = &simulator.floor().sections()[0];
    println!("mesaya-realtime is ready");
    println!("  kafka:     {}", kafka.describe());
    println!("  API:       {} (stand-in, serving the sample sections)", api.base_url());
    println!("  connect:   {}", gateway.ws_url(&format!("/ws/restaurant/{first_section}/{token}")));
    let ops = gateway.ops_url();
    println!("  admin:     {ops}/healthz  {ops}/readyz  {ops}/metrics (the admin listener; 404 on the public port)");
    println!("  logs:      {}", gateway.log_path().display());
    let _prometheus = if options.with_prometheus {
        // The gateway runs already: a Prometheus that cannot start is reported, not fatal.
        prometheus::start(admin_port, port("PROMETHEUS_PORT", 9090))
            .await
            .map_err(|error| eprintln!("mesaya-dev: {error}"))
            .ok()
    } else {
        None
    };
    println!();
    println!("Simulating {} event(s) per second. Ctrl-C stops everything.", options.rate);

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let event = simulator.next_event();
        // The API answers with the state the event leaves behind, as the real one would to a
        // client that connects right after it.
        simulator.floor().serve_on(&api);
        producer.send_json(event.topic, &event.envelope).await;
        println!("{}  {:<34} {}", chrono::Utc::now().format("%H:%M:%S"), event.topic, event.what);
    }
    println!("stopping");
    gateway.terminate();
    let _ = gateway.wait_exit(Duration::from_secs(15)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_to_the_mock_cluster_at_two_events_per_second() {
        let options = parse(args("target/release/mesaya-realtime"), None).unwrap();
        assert_eq!(options.kafka, Choice::Mock);
        assert_eq!(options.rate, DEFAULT_RATE);
        assert_eq!(options.gateway_bin, PathBuf::from("target/release/mesaya-realtime"));
        assert!(!options.with_prometheus);
        assert!(parse(args("--with-prometheus gw"), None).unwrap().with_prometheus);
    }

    #[test]
    fn broker_and_rate_in_either_spelling() {
        let options = parse(args("--broker tansu --rate=0.5 gw"), None).unwrap();
        assert_eq!((options.kafka, options.rate), (Choice::Tansu, 0.5));
        let options = parse(args("--broker=mock --rate 20 gw"), None).unwrap();
        assert_eq!((options.kafka, options.rate), (Choice::Mock, 20.0));
    }

    #[test]
    fn kafka_brokers_names_an_existing_kafka() {
        let options = parse(args("gw"), Some("kafka.internal:9092".into())).unwrap();
        assert_eq!(options.kafka, Choice::External("kafka.internal:9092".into()));
        assert!(parse(args("--broker tansu gw"), Some("k:9092".into())).unwrap_err().contains("use one"));
        assert_eq!(parse(args("gw"), Some(String::new())).unwrap().kafka, Choice::Mock);
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        for (line, why) in [
            ("--rate 0 gw", "above 0"),
            ("--rate fast gw", "not a number"),
            ("--broker kafka gw", "expected mock or tansu"),
            ("--verbose gw", "unknown option"),
            ("--rate", "needs a value"),
            ("", "binary is missing"),
        ] {
            let error = parse(args(line), None).err().unwrap_or_else(|| panic!("{line} was accepted"));
            assert!(error.contains(why), "{line}: {error}");
        }
    }
}
