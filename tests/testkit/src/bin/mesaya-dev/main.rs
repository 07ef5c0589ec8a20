//! The gateway's main job on one machine, for a person to look at: Kafka, the stand-in MesaYa API
//! serving the two sections of a sample restaurant, the gateway itself, a simulator producing the
//! upstream traffic of a busy evening, and a floor-plan page showing a section live (its URL is
//! the first line printed, once everything is ready). With `--driven` (for tests in other
//! languages), no simulator runs by itself: see `driven.rs`.
//!
//! `scripts/dev.sh` builds the gateway and runs this; Ctrl-C stops everything.

mod driven;
mod kafka;
mod prometheus;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use mesaya_testkit::gateway::free_port;

use kafka::Choice;
use stack::{Layout, Stack};

const USAGE: &str = "usage: mesaya-dev [--broker mock|tansu] [--rate EVENTS_PER_SECOND] [--driven] [--with-prometheus] <path to mesaya-realtime> [NAME=VALUE…]

  --broker mock    Kafka in this process (librdkafka's mock cluster; the default)
  --broker tansu   a tansu broker process (TANSU_BIN, see scripts/ensure-tansu.sh)
  --rate N         simulated upstream events per second (default 2; fractions allowed)
  --driven         no simulator of its own: JSON commands on stdin, answers on stdout (for tests)
  --with-prometheus  Prometheus (Debian's package) scraping the gateway, the alert rules loaded
  NAME=VALUE       passed to the gateway, over the dev command's own settings

  KAFKA_BROKERS=host:port    use that Kafka instead of starting one
  PORT=8080, PAGE_PORT=8081  the gateway's and the floor-plan page's ports (0: any free port)
  ADMIN_PORT=8082            the gateway's admin listener (/healthz, /readyz, /metrics)
  PAGE_TOKEN_LIFETIME=120    seconds the page's tokens live (it refreshes them in band)
  PROMETHEUS_PORT=9090       Prometheus, with --with-prometheus";
const DEFAULT_RATE: f64 = 2.0;
/// A bound against typos such as `--rate 20000`: load testing is `cargo bench --bench fanout_load`'s job.
const MAX_RATE: f64 = 1000.0;

#[derive(Debug)]
struct Options {
    kafka: Choice,
    rate: f64,
    driven: bool,
    with_prometheus: bool,
    gateway_bin: PathBuf,
    gateway_env: Vec<(String, String)>,
}

fn parse(args: impl IntoIterator<Item = String>, kafka_brokers: Option<String>) -> Result<Options, String> {
    let mut broker = None;
    let mut rate = DEFAULT_RATE;
    let mut driven = false;
    let mut with_prometheus = false;
    let mut gateway_bin = None;
    let mut gateway_env = Vec::new();
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
            "--driven" => driven = true,
            "--with-prometheus" => with_prometheus = true,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            _ if gateway_bin.is_some() => {
                let (name, value) = arg.split_once('=').ok_or(format!("{arg}: expected NAME=VALUE for the gateway"))?;
                gateway_env.push((name.to_string(), value.to_string()));
            }
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
    Ok(Options { kafka, rate, driven, with_prometheus, gateway_bin, gateway_env })
}

/// `variable`'s port, `default` when unset; `0` picks a free one now, so that the gateway keeps it
/// across a restart.
fn port(variable: &str, default: u16) -> u16 {
    let port = match std::env::var(variable) {
        Ok(value) => value.parse().unwrap_or_else(|_| fail(&format!("{variable}={value} is not a port"))),
        Err(_) => default,
    };
    if port == 0 { free_port() } else { port }
}

fn seconds(variable: &str, default: Duration) -> Duration {
    match std::env::var(variable) {
        Ok(value) => match value.parse() {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => fail(&format!("{variable}={value} is not a whole number of seconds above 0")),
        },
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
    let seed = fastrand::u64(..);
    let admin_port = port("ADMIN_PORT", 8082);
    let layout = Layout {
        kafka: options.kafka,
        gateway_bin: options.gateway_bin,
        gateway_port: port("PORT", 8080),
        admin_port,
        page_port: port("PAGE_PORT", 8081),
        page_token_lifetime: seconds("PAGE_TOKEN_LIFETIME", stack::PAGE_TOKEN_LIFETIME),
        gateway_env: options.gateway_env,
        seed,
    };
    let stack = Stack::start(layout).await.unwrap_or_else(|error| fail(&error));
    if options.driven {
        driven::serve(stack, seed).await;
    } else {
        let _prometheus = if options.with_prometheus {
            // The gateway runs already: a Prometheus that cannot start is reported, not fatal.
            prometheus::start(admin_port, port("PROMETHEUS_PORT", 9090))
                .await
                .map_err(|error| eprintln!("mesaya-dev: {error}"))
                .ok()
        } else {
            None
        };
        show(stack, options.rate).await;
    }
}

/// For a person: where everything is, then the simulator's events as they go.
async fn show(mut stack: Stack, rate: f64) {
    let (first_section, _) = &stack.simulator.floor().sections()[0];
    println!("floor plan: {}", stack.page.url());
    println!();
    println!("mesaya-realtime is ready");
    println!("  kafka:     {}", stack.kafka.describe());
    println!("  API:       {} (stand-in, serving the sample sections)", stack.api.base_url());
    let token = stack::token(&["USER"], stack.page_token_lifetime);
    println!("  connect:   {}  (token: {token})", stack.gateway.ws_url(&format!("/ws/restaurant/{first_section}")));
    let ops = stack.gateway.ops_url();
    println!("  admin:     {ops}/healthz  {ops}/readyz  {ops}/metrics (the admin listener; 404 on the public port)");
    println!("  logs:      {}", stack.gateway.log_path().display());
    println!(
        "  tokens:    the page's live {} s and are refreshed in band (auth.expiring → auth.refresh)",
        stack.page_token_lifetime.as_secs()
    );
    println!();
    println!("Simulating {rate} event(s) per second. Ctrl-C stops everything.");

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        let event = stack.simulate().await;
        println!("{}  {:<34} {}", chrono::Utc::now().format("%H:%M:%S"), event.topic, event.what);
    }
    println!("stopping");
    let _ = stack.stop_gateway().await;
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
    fn driven_mode_and_settings_for_the_gateway() {
        let options = parse(args("--driven gw WS_QUEUE_MAX_FRAMES=64 RESUME_SECRET=a=b"), None).unwrap();
        assert!(options.driven);
        assert_eq!(
            options.gateway_env,
            [("WS_QUEUE_MAX_FRAMES".into(), "64".into()), ("RESUME_SECRET".into(), "a=b".into())]
        );
        assert!(!parse(args("gw"), None).unwrap().driven);
        assert!(!parse(args("gw"), None).unwrap().with_prometheus);
        assert!(parse(args("--with-prometheus gw"), None).unwrap().with_prometheus);
        assert!(parse(args("gw stray"), None).unwrap_err().contains("NAME=VALUE"));
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
