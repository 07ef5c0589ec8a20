//! `mesaya-realtime --check-config`: the configuration as a start would read
//! it, one line per variable with where its value came from (secrets
//! redacted), then whether the Kafka brokers and the API answer. Problems
//! are one line each, as at start.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::application::ports::{SnapshotError, SnapshotRequest, SnapshotSource};
use crate::config::{Config, ConfigError};
use crate::domain::ids::SectionId;
use crate::infrastructure::jwt::JwtVerifier;
use crate::infrastructure::kafka;
use crate::infrastructure::snapshot_http::{ApiBudget, HttpSnapshotSource};

/// How long the brokers and the API each get to answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Prints the effective configuration to stdout and each problem to stderr;
/// true when there is none. `open_files` is the limit a start would have.
pub fn run(lookup: impl Fn(&str) -> Option<String>, open_files: usize) -> bool {
    let (config, settings) = Config::read(lookup, open_files);
    for setting in &settings {
        println!("{setting}");
    }
    let problems = match config {
        Ok(config) => problems(&config),
        Err(error) => vec![error],
    };
    for problem in &problems {
        eprintln!("{problem}");
    }
    if problems.is_empty() {
        println!("configuration ok: the brokers and the API answer");
    }
    problems.is_empty()
}

fn problems(config: &Config) -> Vec<ConfigError> {
    let key = JwtVerifier::new(&config.jwt).err();
    let kafka = match kafka::probe(&config.kafka, TIMEOUT) {
        Ok(0) => Some(ConfigError::new(
            "KAFKA_TOPICS",
            "selects none of the broker's topics: the gateway would never be ready",
        )),
        Ok(_) => None,
        Err(error) => {
            Some(ConfigError::new("KAFKA_BROKERS", format!("{} did not answer: {error}", config.kafka.brokers)))
        }
    };
    let api = api_problem(config);
    [key, kafka, api].into_iter().flatten().collect()
}

/// Asks the API for a section, with no token, through the gateway's own
/// snapshot client: any answer but a server error shows it is there.
fn api_problem(config: &Config) -> Option<ConfigError> {
    let source = HttpSnapshotSource::new(
        &config.rest_base_url,
        &config.snapshot_path,
        TIMEOUT.min(config.rest_timeout),
        ApiBudget::new(1),
    );
    let call = SnapshotRequest {
        section: SectionId::from_bytes([0; 16]),
        token: "",
        client_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        request_id: "check-config",
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread runtime only fails on OS resource exhaustion");
    let answer = tokio::task::LocalSet::new().block_on(&runtime, source.fetch(call));
    let why = match answer {
        Err(SnapshotError::Unreachable(why)) => why,
        Err(SnapshotError::TimedOut) => format!("no answer within {:?}", TIMEOUT.min(config.rest_timeout)),
        Err(SnapshotError::ServerError(status)) => format!("answered {status}"),
        _ => return None,
    };
    Some(ConfigError::new("REST_BASE_URL", format!("{}: {why}", config.rest_base_url)))
}
