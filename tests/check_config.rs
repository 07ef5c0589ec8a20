//! End to end: `mesaya-realtime --check-config` (issue 25, point 3). It reads the environment as
//! a start would, prints one line per variable with its source and the secrets redacted, asks
//! the brokers and the API, and exits 0, or 78 with one line per problem.
//!
//! Real gateway binary, real tansu broker, real stand-in API.

mod common;

use std::time::Duration;

use common::*;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::gateway::{self, Exited, Gateway, free_port};

/// Enough for the 3 s each probe may take, on a busy machine.
const RUN_LIMIT: Duration = Duration::from_secs(30);
const RESUME_KEY: &str = "resume-key-that-is-long-enough-0123456789";

async fn check(env: &[(&str, String)]) -> Exited {
    Gateway::run_command_to_exit(binary(), &["--check-config"], env, RUN_LIMIT).await
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

#[tokio::test]
async fn a_good_configuration_is_printed_with_its_sources_and_secrets_redacted_and_exits_0() {
    let broker = Broker::start_memory().await;
    let api = StandInApi::start();
    let mut env = gateway::wiring(&broker, &api, SECRET);
    env.push(("RESUME_SECRET", RESUME_KEY.to_string()));
    env.push(("ADMIN_PORT", free_port().to_string()));

    let exited = check(&env).await;
    assert_eq!(exited.status.code(), Some(0), "stdout:\n{}\nstderr:\n{}", exited.stdout, exited.stderr);
    assert_eq!(exited.stderr, "", "no problem");
    let out = lines(&exited.stdout);
    assert!(out.contains(&"JWT_SECRET=<redacted> (set)"), "{out:?}");
    assert!(out.contains(&"RESUME_SECRET=<redacted> (set)"), "{out:?}");
    assert!(!exited.stdout.contains(SECRET) && !exited.stdout.contains(RESUME_KEY), "a secret leaked");
    assert!(out.contains(&format!("KAFKA_BROKERS={} (set)", broker.bootstrap()).as_str()), "{out:?}");
    assert!(out.contains(&"KAFKA_FETCH_WAIT_MAX=10ms (set)"), "{out:?}");
    assert!(out.contains(&"DRAIN_TIMEOUT=10s (default)"), "{out:?}");
    assert!(out.contains(&"JWT_ISSUER unset (default)"), "{out:?}");
    let max_connections =
        out.iter().find(|line| line.starts_with("WS_MAX_CONNECTIONS=")).expect("the computed default");
    assert!(max_connections.ends_with(" (default)"), "{max_connections}");
    assert_eq!(out.last(), Some(&"configuration ok: the brokers and the API answer"));
    // One line per variable, each once.
    let variables: Vec<&str> = out[..out.len() - 1].iter().map(|line| line.split([' ', '=']).next().unwrap()).collect();
    let mut unique = variables.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), variables.len(), "{variables:?}");
    assert!(variables.len() >= 40, "every variable a start reads: {variables:?}");
}

#[tokio::test]
async fn a_malformed_configuration_exits_78_with_the_line_a_start_prints() {
    let mut env = vec![("JWT_SECRET", SECRET.to_string()), ("REST_TIMEOUT", "soon".to_string())];
    let exited = check(&env).await;
    assert_eq!(exited.status.code(), Some(78));
    assert_eq!(
        lines(&exited.stderr),
        [
            r#"configuration error: REST_TIMEOUT: expected a duration like 5s or 800ms, got "soon" (expected number at 0)"#
        ]
    );
    let (status, start_stderr) = Gateway::run_to_exit(binary(), &env, RUN_LIMIT).await;
    assert_eq!((status.code(), start_stderr), (Some(78), exited.stderr), "the same verdict as a start");
    assert!(exited.stdout.lines().any(|line| line == "JWT_SECRET=<redacted> (set)"), "{}", exited.stdout);

    // A key that only the verifier reads, as at start; the brokers and the API are still asked.
    env = vec![("JWT_PUBLIC_KEY", "not a key".to_string())];
    let exited = check(&env).await;
    assert_eq!(exited.status.code(), Some(78));
    let problems = lines(&exited.stderr);
    assert_eq!(problems[0], "configuration error: JWT_PUBLIC_KEY: not a PEM-encoded RSA, EC or Ed25519 public key");
    assert!(problems[1..].iter().all(|line| !line.contains("JWT_PUBLIC_KEY")), "{problems:?}");
}

#[tokio::test]
async fn an_unreachable_broker_and_api_exit_78_naming_both() {
    let (kafka, api) = (format!("127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port()));
    let env = [("JWT_SECRET", SECRET.to_string()), ("KAFKA_BROKERS", kafka.clone()), ("REST_BASE_URL", api.clone())];
    let exited = check(&env).await;
    assert_eq!(exited.status.code(), Some(78), "stdout:\n{}", exited.stdout);
    let problems = lines(&exited.stderr);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!("configuration error: KAFKA_BROKERS: {kafka} did not answer")),
        "{problems:?}"
    );
    assert!(problems[1].starts_with(&format!("configuration error: REST_BASE_URL: {api}: ")), "{problems:?}");
    assert!(!exited.stdout.contains("configuration ok"));
}

#[tokio::test]
async fn topics_that_select_nothing_on_the_broker_are_a_problem() {
    let broker = Broker::start_memory().await;
    let api = StandInApi::start();
    let mut env = gateway::wiring(&broker, &api, SECRET);
    env.push(("KAFKA_TOPICS", "mesa-ya.nothing.events".to_string()));
    let exited = check(&env).await;
    assert_eq!(exited.status.code(), Some(78));
    assert_eq!(
        lines(&exited.stderr),
        ["configuration error: KAFKA_TOPICS: selects none of the broker's topics: the gateway would never be ready"]
    );
}
