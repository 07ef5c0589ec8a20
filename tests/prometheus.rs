//! End to end: the dashboard (`deploy/grafana/mesaya-realtime.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) against a real Prometheus (Debian's `prometheus` package)
//! scraping a running gateway's admin listener under a little traffic. Every PromQL expression of
//! both must evaluate through Prometheus's query API, and every metric it names must be in the
//! gateway's own `/metrics` and in what Prometheus scraped. Every alert has a summary and a
//! runbook link to an entry of `docs/operations.md`.
//!
//! Real gateway binary, real tansu broker, real stand-in API, real Prometheus.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use mesaya_testkit::gateway::free_port;
use mesaya_testkit::prometheus::{self, Prometheus};
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::ws::WsClient;
use mesaya_testkit::{fixtures, wait};
use serde_json::Value;

const SCRAPE_EVERY: Duration = Duration::from_millis(500);

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One PromQL expression and where it comes from, for the failure message.
struct Expression {
    origin: String,
    promql: String,
}

/// The dashboard's panel queries, with Grafana's variables set as its "All" would.
fn dashboard_expressions() -> Vec<Expression> {
    let path = repository_file("deploy/grafana/mesaya-realtime.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let panels = dashboard["panels"].as_array().expect("the dashboard has panels");
    panels
        .iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            panel["targets"].as_array().cloned().unwrap_or_default().into_iter().map(move |target| Expression {
                origin: format!("dashboard panel {title:?}"),
                promql: target["expr"]
                    .as_str()
                    .expect("every target has an expr")
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"),
            })
        })
        .collect()
}

/// The metric names an expression refers to: the gateway's (`mesaya_…`, `process_…`) and
/// Prometheus's own `up`.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word_end =
            rest[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(rest.len(), |n| start + n);
        let word = &rest[start..word_end];
        let follows_identifier = start > 0 && rest.as_bytes()[start - 1].is_ascii_alphanumeric();
        if !follows_identifier && (word.starts_with("mesaya_") || word.starts_with("process_") || word == "up") {
            names.insert(word.to_string());
        }
        rest = &rest[word_end..];
    }
    names
}

/// Series names of a Prometheus text exposition.
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// A heading's anchor as GitHub makes it: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn runbook_anchors() -> BTreeSet<String> {
    let path = repository_file("docs/operations.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect()
}

/// Traffic enough for every family of the gateway's metrics to have a series: a live client
/// with a delivered event, a record skipped, refused upgrades (401, 429), a resume that falls
/// back to a snapshot, a snapshot call for a section the API does not know.
/// Returns the live client, to be kept open until Prometheus has scraped it.
async fn some_traffic(stack: &Stack) -> WsClient {
    let section = new_id();
    let table_id = new_id();
    stack.serve_section(&section, vec![table(&table_id, &section, 1)]);
    let diner = TokenBuilder::new().sub("diner-1").hs256(SECRET);
    let url = stack.gateway.ws_url(&format!("/ws/restaurant/{section}/{diner}?resume=not-a-resume-token"));
    let mut client = WsClient::connect(&url).await.expect("the first connection is admitted");
    assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    stack.publish("mesa-ya.tables.events", &fixtures::v2("updated", &table_id, table(&table_id, &section, 2))).await;
    // Positions come too: the client opted in with `?resume=`.
    let mut events = Vec::new();
    while !events.contains(&"table.updated".to_string()) && events.len() < 5 {
        events.push(client.next_json(WAIT).await["event"].as_str().unwrap_or_default().to_string());
    }
    assert!(events.contains(&"table.updated".to_string()), "{events:?}");
    stack.producer.send("mesa-ya.tables.events", b"not json").await;

    let second = WsClient::connect(&stack.gateway.ws_url(&format!("/ws/restaurant/{section}/{diner}"))).await;
    assert_eq!(second.err().map(|(status, _)| status), Some(429), "WS_MAX_CONNECTIONS_PER_USER=1");
    let bad = WsClient::connect(&stack.gateway.ws_url(&format!("/ws/restaurant/{section}/not-a-jwt"))).await;
    assert_eq!(bad.err().map(|(status, _)| status), Some(401));
    let unknown = stack.gateway.ws_url(&format!("/ws/restaurant/{}/{}", new_id(), token()));
    mesaya_testkit::ws::close_code_on_the_wire(&unknown, WAIT).await;

    wait_metric(stack, "mesaya_events_dropped_total", "the skipped record counted", |n| n >= 1.0).await;
    client
}

#[tokio::test]
async fn every_dashboard_and_alert_expression_evaluates_on_metrics_the_gateway_exports() {
    let bin = prometheus::binary().expect(
        "Prometheus is not installed: apt-get install prometheus (scripts/test.sh does), or set PROMETHEUS_BIN",
    );
    let admin_port = free_port();
    let stack = Stack::start_with(&[
        ("ADMIN_PORT", admin_port.to_string()),
        ("RESUME_SECRET", "0123456789abcdef0123456789abcdef".to_string()),
        ("WS_MAX_CONNECTIONS_PER_USER", "1".to_string()),
    ])
    .await;
    let _live = some_traffic(&stack).await;

    let alerts = repository_file("deploy/prometheus/alerts.yml");
    let target = format!("127.0.0.1:{admin_port}");
    let mut server = Prometheus::start(&bin, &target, &[&alerts], SCRAPE_EVERY, None).expect("Prometheus starts");
    server.wait_ready(WAIT).await;
    // Three scrapes since the traffic, so that rates over them have points.
    wait::until_some(Duration::from_secs(30), "three scrapes of the gateway", || async {
        let result = server.query(r#"count_over_time(up{job="mesaya-realtime"}[1m])"#).await.ok()?;
        (result[0]["value"][1].as_str()?.parse::<f64>().ok()? >= 3.0).then_some(())
    })
    .await;
    assert_eq!(server.query(r#"up{job="mesaya-realtime"}"#).await.unwrap()[0]["value"][1], "1");

    let groups = server.api("rules", &[]).await.expect("the rules API answers")["groups"].clone();
    let rules: Vec<Value> =
        groups.as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
    assert!(rules.len() >= 10, "alerts.yml loaded: {rules:?}");
    let anchors = runbook_anchors();
    let mut expressions = dashboard_expressions();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or_default();
        assert!(!rule["annotations"]["summary"].as_str().unwrap_or_default().is_empty(), "{name} has no summary");
        let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
        let entry =
            runbook.strip_prefix("docs/operations.md#").unwrap_or_else(|| panic!("{name}: runbook {runbook:?}"));
        assert!(anchors.contains(entry), "{name}: docs/operations.md has no heading for #{entry}");
        expressions
            .push(Expression { origin: format!("alert {name}"), promql: rule["query"].as_str().unwrap().into() });
    }

    let (_, metrics) = stack.gateway.get_ops("/metrics").await;
    let exported = exported_names(&metrics);
    let scraped: BTreeSet<String> =
        serde_json::from_value(server.api("label/__name__/values", &[]).await.unwrap()).unwrap();
    let mut problems = Vec::new();
    let mut with_data = 0;
    for Expression { origin, promql } in &expressions {
        match server.query(promql).await {
            Ok(result) => with_data += usize::from(result.as_array().is_some_and(|series| !series.is_empty())),
            Err(error) => problems.push(format!("{origin}: {promql}: {error}")),
        }
        let names = metric_names(promql);
        if names.is_empty() {
            problems.push(format!("{origin}: {promql}: names no metric"));
        }
        for name in names {
            if name != "up" && !exported.contains(&name) {
                problems.push(format!("{origin}: {name} is not in the gateway's /metrics"));
            }
            if !scraped.contains(&name) {
                problems.push(format!("{origin}: {name} is not in what Prometheus scraped"));
            }
        }
    }
    // Alert rules that Prometheus could not evaluate report it here.
    let evaluated = server.api("rules", &[]).await.unwrap()["groups"].clone();
    for rule in evaluated.as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()) {
        if rule["health"] == "err" {
            problems.push(format!("alert {}: {}", rule["name"], rule["lastError"]));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {} expressions:\n{}",
        problems.len(),
        expressions.len(),
        problems.join("\n")
    );
    eprintln!(
        "checked {} expressions ({} from the dashboard, {} alert rules), {with_data} of them with data",
        expressions.len(),
        expressions.len() - rules.len(),
        rules.len()
    );
}

#[test]
fn metric_names_are_found_in_promql_and_nothing_else() {
    let promql = r#"histogram_quantile(0.99, sum by (topic, le) (rate(mesaya_kafka_record_age_seconds_bucket{instance=~".*"}[1m]))) > 2 and up{job="x"} / process_max_fds"#;
    let names: Vec<String> = metric_names(promql).into_iter().collect();
    assert_eq!(names, ["mesaya_kafka_record_age_seconds_bucket", "process_max_fds", "up"]);
    assert_eq!(anchor(" MesaYaInstanceDown"), "mesayainstancedown");
    assert_eq!(anchor("Rolling deploys: drain, 1001, resume"), "rolling-deploys-drain-1001-resume");
}
