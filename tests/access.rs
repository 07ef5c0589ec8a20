//! End to end: who may connect (token
//! sources, pre-upgrade statuses, JWT verification), the one snapshot call and
//! its failure close codes, the operations endpoints, configuration errors and
//! scale-out over one broker. Real gateway binary, real tansu broker, real
//! stand-in API, real sockets.

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use mesaya_testkit::api::{Reply, StandInApi};
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures::{self, v2};
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::{EC_PUBLIC_PEM, ISSUER, RSA_PUBLIC_PEM, TokenBuilder, now};
use mesaya_testkit::ws::{self, Request, WsClient};
use mesaya_testkit::{client, wait};
use serde_json::{Value, json};

const TABLES_TOPIC: &str = "mesa-ya.tables.events";

/// A gateway's environment.
type Env = Vec<(&'static str, String)>;

// ---------------------------------------------------------------- helpers

/// Where an upgrade request carries tokens. Unset sources are
/// left out of the request.
#[derive(Default, Clone, Copy)]
struct Sources<'a> {
    path: Option<&'a str>,
    header: Option<&'a str>,
    protocol: Option<&'a str>,
    query: Option<&'a str>,
}

fn upgrade_request(gateway: &Gateway, section: &str, sources: Sources<'_>) -> Request {
    let mut path = format!("/ws/restaurant/{section}");
    if let Some(token) = sources.path {
        path = format!("{path}/{token}");
    }
    if let Some(token) = sources.query {
        path = format!("{path}?token={token}");
    }
    let mut request = WsClient::request(&gateway.ws_url(&path));
    let headers = request.headers_mut();
    if let Some(token) = sources.header {
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(token) = sources.protocol {
        headers.insert("sec-websocket-protocol", format!("bearer, {token}").parse().unwrap());
    }
    request
}

fn path_request(gateway: &Gateway, section: &str, token: &str) -> Request {
    upgrade_request(gateway, section, Sources { path: Some(token), ..Sources::default() })
}

/// The status a refused upgrade was answered with.
async fn refused(request: Request) -> u16 {
    WsClient::expect_rejected(request).await.0
}

/// The `Authorization` headers of the snapshot calls made for `section` on `path_prefix`.
fn snapshot_auths(api: &StandInApi, path_prefix: &str, section: &str) -> Vec<Option<String>> {
    let path = format!("{path_prefix}{section}");
    api.calls().into_iter().filter(|call| call.path == path).map(|call| call.authorization).collect()
}

/// Upgrades `request` (for a fresh, served `section`), reads the snapshot
/// frame and checks that the one API call was made with `expected_token`:
/// that token, and no other, was the one the gateway took.
async fn expect_snapshot(api: &StandInApi, section: &str, request: Request, expected_token: &str) -> WsClient {
    let mut client = WsClient::connect_with(request)
        .await
        .unwrap_or_else(|(status, body)| panic!("upgrade for {section} refused: {status} {body}"));
    let snapshot = client.next_json(WAIT).await;
    assert_eq!(snapshot["event"], "section.snapshot", "{snapshot}");
    assert_eq!(snapshot["payload"]["id"], section);
    assert_eq!(
        snapshot_auths(api, "/api/v1/sections/", section),
        vec![Some(format!("Bearer {expected_token}"))],
        "exactly one snapshot call, with the token of the winning source"
    );
    client
}

fn offered_protocol(client: &WsClient) -> Option<String> {
    client.response().headers().get("sec-websocket-protocol").map(|value| value.to_str().unwrap().to_string())
}

/// Upgrades with the token in the path and returns the close code the
/// server sends before any data frame (see `ws::close_code_on_the_wire`).
async fn close_code_on_the_wire(gateway: &Gateway, section: &str, token: &str) -> u16 {
    ws::close_code_on_the_wire(&gateway.ws_url(&format!("/ws/restaurant/{section}/{token}")), WAIT).await
}

/// Every token a test sent, so that it can check none reached the logs.
#[derive(Default)]
struct Minted(Vec<String>);

impl Minted {
    fn keep(&mut self, token: String) -> String {
        self.0.push(token.clone());
        token
    }

    /// Neither a whole token nor its claims or signature segment appear (the
    /// header segment is the same for every token of an algorithm).
    fn assert_absent_from(&self, logs: &str) {
        assert!(!logs.is_empty(), "the gateway logged nothing at all");
        for token in &self.0 {
            let mut parts = vec![token.as_str()];
            parts.extend(token.split('.').skip(1).filter(|part| part.len() >= 16));
            for part in parts {
                assert!(!logs.contains(part), "token material {part:?} (of {token}) is in the gateway log:\n{logs}");
            }
        }
    }
}

async fn metrics_text(gateway: &Gateway) -> String {
    let (status, body) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    body
}

fn table_event(table: &str, section: &str, capacity: u64) -> Value {
    let mut table_json = fixtures::table_json(table, section, "2026-01-10T16:00:00.480Z");
    table_json["capacity"] = json!(capacity);
    v2("updated", table, table_json)
}

// ------------------------------------------------- who may connect

/// The four token sources work, the first present one in the order path,
/// `Authorization`, `Sec-WebSocket-Protocol`, query wins (whatever the others
/// hold), every pre-upgrade status is answered as plain HTTP,
/// refused upgrades make no API call, and no token reaches the logs — with
/// everything logged at debug.
#[tokio::test]
async fn token_sources_precedence_and_pre_upgrade_refusals() {
    let stack = Stack::start_with(&[("JWT_ISSUER", ISSUER.to_string()), ("LOG_LEVEL", "debug".to_string())]).await;
    let (gateway, api) = (&stack.gateway, &stack.api);
    let mut minted = Minted::default();
    let mut good = || minted.keep(token());
    let (a, b, c, d) = (good(), good(), good(), good());
    let bad = minted.keep(TokenBuilder::new().hs256("not-the-gateway-secret-0123456789"));

    // Each source alone.
    let accepted = async |sources: Sources<'_>, expected: &str| {
        let section = new_id();
        serve_section(api, &section, vec![]);
        expect_snapshot(api, &section, upgrade_request(gateway, &section, sources), expected).await
    };
    let only_path = accepted(Sources { path: Some(&a), ..Sources::default() }, &a).await;
    assert_eq!(offered_protocol(&only_path), None, "no subprotocol unless the client offers bearer");
    accepted(Sources { header: Some(&b), ..Sources::default() }, &b).await;
    let only_protocol = accepted(Sources { protocol: Some(&c), ..Sources::default() }, &c).await;
    assert_eq!(offered_protocol(&only_protocol).as_deref(), Some("bearer"), "the 101 selects the bearer subprotocol");
    accepted(Sources { query: Some(&d), ..Sources::default() }, &d).await;

    // Several sources: the first wins, valid or not, and what the others hold
    // does not matter.
    let all_valid = Sources { path: Some(&a), header: Some(&b), protocol: Some(&c), query: Some(&d) };
    let client = accepted(all_valid, &a).await;
    assert_eq!(offered_protocol(&client).as_deref(), Some("bearer"));
    accepted(Sources { path: None, ..all_valid }, &b).await;
    accepted(Sources { path: None, header: None, ..all_valid }, &c).await;
    let lower_bad = Sources { path: Some(&a), header: Some(&bad), protocol: Some(&bad), query: Some(&bad) };
    accepted(lower_bad, &a).await;
    accepted(Sources { path: None, header: Some(&b), ..lower_bad }, &b).await;
    accepted(Sources { path: None, header: None, protocol: Some(&c), ..lower_bad }, &c).await;

    let refused_section = new_id();
    serve_section(api, &refused_section, vec![]);
    let refuse = async |sources: Sources<'_>| refused(upgrade_request(gateway, &refused_section, sources)).await;
    assert_eq!(
        refuse(Sources { path: Some(&bad), ..all_valid }).await,
        401,
        "a bad path token is not rescued by the header"
    );
    assert_eq!(
        refuse(Sources { path: None, header: Some(&bad), ..all_valid }).await,
        401,
        "nor a bad header by the subprotocol"
    );
    assert_eq!(
        refuse(Sources { path: None, header: None, protocol: Some(&bad), ..all_valid }).await,
        401,
        "nor a bad subprotocol token by the query"
    );

    // Pre-upgrade statuses.
    let (status, _) = client::get(&format!("{}/ws/restaurant/{refused_section}/{a}", gateway.url())).await;
    assert_eq!(status, 426, "a plain GET is not an upgrade");
    assert_eq!(refused(path_request(gateway, "not-a-uuid", &a)).await, 400);
    assert_eq!(refuse(Sources::default()).await, 401, "no token at all");
    assert_eq!(refused(WsClient::request(&gateway.ws_url(&format!("/ws/restaurant/{refused_section}/")))).await, 401);
    let status_for = async |builder: TokenBuilder, minted: &mut Minted| {
        let token = minted.keep(builder.hs256(SECRET));
        refused(path_request(gateway, &refused_section, &token)).await
    };
    for malformed in ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30."] {
        assert_eq!(refused(path_request(gateway, &refused_section, malformed)).await, 401, "{malformed}");
    }
    let m = &mut minted;
    assert_eq!(refuse(Sources { path: Some(&bad), ..Sources::default() }).await, 401, "bad signature");
    assert_eq!(status_for(TokenBuilder::new().expires_in(-30), m).await, 401, "expired beyond the 5 s leeway");
    assert_eq!(status_for(TokenBuilder::new().iss("someone-else"), m).await, 401, "wrong issuer");
    assert_eq!(status_for(TokenBuilder::new().without("iss"), m).await, 401, "no issuer while JWT_ISSUER is set");
    assert_eq!(status_for(TokenBuilder::new().nbf(now() + 60), m).await, 401, "not valid yet");
    assert_eq!(status_for(TokenBuilder::new().without("exp"), m).await, 401, "exp is required");
    assert_eq!(status_for(TokenBuilder::new().without("sub"), m).await, 401, "sub is required");
    assert_eq!(status_for(TokenBuilder::new().sub(""), m).await, 401, "sub must not be empty");
    assert_eq!(status_for(TokenBuilder::new().roles(&["GUEST"]), m).await, 403, "no allowed role");
    assert_eq!(status_for(TokenBuilder::new().roles(&[]), m).await, 403, "no role at all");
    assert_eq!(status_for(TokenBuilder::new().without("roles"), m).await, 403, "no roles claim");
    assert_eq!(api.call_count(&refused_section), 0, "a refused upgrade makes no snapshot call");

    // HMAC: every size, and exp within the leeway.
    for (name, builder_token) in [
        ("HS384", TokenBuilder::new().hs384(SECRET)),
        ("HS512", TokenBuilder::new().hs512(SECRET)),
        ("HS256 expired 2 s ago", TokenBuilder::new().expires_in(-2).hs256(SECRET)),
    ] {
        let token = minted.keep(builder_token);
        let section = new_id();
        serve_section(api, &section, vec![]);
        let _client = WsClient::connect_with(path_request(gateway, &section, &token))
            .await
            .unwrap_or_else(|(status, body)| panic!("{name} refused: {status} {body}"));
        wait::until(WAIT, "the snapshot call", || api.call_count(&section) == 1).await;
    }

    // The earlier service's path shapes, which clients still use, are not
    // ours: refused, and logged by kind, never with their tokens.
    let legacy = minted.keep(token());
    for path in [
        format!("/ws/tables/{refused_section}/{legacy}"),
        format!("/ws/restaurant/{legacy}"),
        format!("/ws/restaurant/{legacy}/{refused_section}"),
    ] {
        let status = refused(WsClient::request(&gateway.ws_url(&path))).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
    }

    // Everything above was logged at debug, refusals and sessions alike;
    // refusals at most 5 a second per status (the rest only counted).
    wait::until(WAIT, "the refusals to be logged", || gateway.logs().matches("upgrade refused").count() >= 5).await;
    minted.assert_absent_from(&gateway.logs());
}

// ------------------------------------------------ JWT verification

/// RS256 and ES256 with `JWT_PUBLIC_KEY` (the ES key in the literal-`\n`
/// form env files use), no HMAC fallback or algorithm confusion,
/// `JWT_ISSUER`, `exp`/`nbf` with leeway, `WS_ALLOWED_ROLES` and
/// `WS_REQUIRED_PERMISSION`. The ES gateway keeps the default
/// `SECTION_SNAPSHOT_PATH` (the Go service's `/api/section/{id}`), which the
/// stand-in API does not serve: the call goes there and its 404 closes 4404.
#[tokio::test]
async fn public_keys_issuer_roles_and_permission() {
    let broker = Broker::start_memory().await;
    let api = StandInApi::start();
    let mut rsa_env = gateway_env(
        &broker,
        &api,
        &[
            ("JWT_PUBLIC_KEY", RSA_PUBLIC_PEM.to_string()),
            ("JWT_ISSUER", ISSUER.to_string()),
            ("WS_ALLOWED_ROLES", "OWNER,ADMIN".to_string()),
            ("WS_REQUIRED_PERMISSION", "section:read".to_string()),
        ],
    );
    rsa_env.retain(|(name, _)| *name != "JWT_SECRET");
    let escaped_ec = EC_PUBLIC_PEM.trim_end().replace('\n', "\\n");
    assert!(!escaped_ec.contains('\n'));
    let mut ec_env = gateway_env(&broker, &api, &[("JWT_PUBLIC_KEY", escaped_ec)]);
    ec_env.retain(|(name, _)| !matches!(*name, "JWT_SECRET" | "SECTION_SNAPSHOT_PATH"));
    let mut rsa = Gateway::start(binary(), &rsa_env);
    let mut ec = Gateway::start(binary(), &ec_env);
    rsa.wait_ready(WAIT).await;
    ec.wait_ready(WAIT).await;

    let owner = || TokenBuilder::new().roles(&["OWNER"]).permissions(&["section:read"]);
    let accepted = async |token: String| {
        let section = new_id();
        serve_section(&api, &section, vec![]);
        expect_snapshot(&api, &section, path_request(&rsa, &section, &token), &token).await
    };
    accepted(owner().rs256()).await;
    accepted(TokenBuilder::new().roles(&["USER", "ADMIN"]).permissions(&["table:read", "section:read"]).rs256()).await;
    accepted(owner().expires_in(-2).rs256()).await;

    let section = new_id();
    serve_section(&api, &section, vec![]);
    let status = async |token: String| refused(path_request(&rsa, &section, &token)).await;
    assert_eq!(status(TokenBuilder::new().permissions(&["section:read"]).rs256()).await, 403, "USER is not allowed");
    assert_eq!(status(TokenBuilder::new().roles(&["OWNER"]).rs256()).await, 403, "no permissions");
    assert_eq!(status(TokenBuilder::new().roles(&["OWNER"]).permissions(&["section:write"]).rs256()).await, 403);
    assert_eq!(status(owner().iss("someone-else").rs256()).await, 401, "wrong issuer");
    assert_eq!(status(owner().nbf(now() + 60).rs256()).await, 401, "nbf in the future");
    assert_eq!(status(owner().expires_in(-30).rs256()).await, 401, "expired beyond leeway");
    assert_eq!(status(owner().hs256(SECRET)).await, 401, "no JWT_SECRET: HMAC tokens are refused");
    assert_eq!(status(owner().hs256(RSA_PUBLIC_PEM)).await, 401, "the public key is no HMAC secret");
    assert_eq!(status(owner().es256()).await, 401, "signed by another key");
    assert_eq!(api.call_count(&section), 0);

    // ES256, key given with literal `\n`s.
    let section = new_id();
    let token = TokenBuilder::new().es256();
    let mut client = WsClient::connect_with(path_request(&ec, &section, &token))
        .await
        .unwrap_or_else(|(status, body)| panic!("ES256 refused: {status} {body}"));
    assert_eq!(client.expect_close(WAIT).await.0, 4404, "the API's 404 for the Go path");
    assert_eq!(snapshot_auths(&api, "/api/section/", &section), vec![Some(format!("Bearer {token}"))]);
    assert_eq!(refused(path_request(&ec, &section, &TokenBuilder::new().rs256())).await, 401);
    assert_eq!(refused(path_request(&ec, &section, &TokenBuilder::new().hs256(SECRET))).await, 401);
}

// ----------------------------------------------- the snapshot call

/// One snapshot call per connection with the client's token; the API's
/// answers close with the protocol's codes (timeouts and a dead API included)
/// while another section's client on the same single shard keeps its live
/// events — 50 of them, in order, with no further REST call.
#[tokio::test]
async fn one_snapshot_call_then_kafka_only_and_api_failures_close_with_spec_codes() {
    let broker = Broker::start_memory().await;
    let mut api = StandInApi::start();
    let producer = EventProducer::new(&broker.bootstrap());
    // One shard: the failing sessions share a thread with the healthy one.
    let mut gateway = Gateway::start(binary(), &gateway_env(&broker, &api, &[("SHARDS", "1".to_string())]));
    // A short REST_TIMEOUT on its own gateway, so that no other call here can
    // hit it on a busy machine.
    let mut hasty = Gateway::start(binary(), &gateway_env(&broker, &api, &[("REST_TIMEOUT", "300ms".to_string())]));
    gateway.wait_ready(WAIT).await;
    hasty.wait_ready(WAIT).await;

    let healthy_section = new_id();
    api.set_section(&healthy_section, fixtures::nest_snapshot(&healthy_section, vec![]));
    let healthy_token = token();
    let mut healthy = expect_snapshot(
        &api,
        &healthy_section,
        path_request(&gateway, &healthy_section, &healthy_token),
        &healthy_token,
    )
    .await;

    let nest_error = |status: u16| json!({"statusCode": status, "message": "nope", "error": "Error"}).to_string();
    let cases: Vec<(&str, Option<Reply>, u16)> = vec![
        ("401", Some(Reply::new(401, nest_error(401))), 4401),
        ("403", Some(Reply::new(403, nest_error(403))), 4403),
        ("404 (unknown section)", None, 4404),
        ("400", Some(Reply::new(400, nest_error(400))), 4400),
        ("422", Some(Reply::new(422, nest_error(422))), 4400),
        ("429", Some(Reply::new(429, nest_error(429))), 1013),
        ("500", Some(Reply::new(500, nest_error(500))), 1014),
        ("503", Some(Reply::new(503, "Service Unavailable")), 1014),
        ("200 with an HTML body", Some(Reply::new(200, "<html><body>Bad gateway</body></html>")), 1014),
    ];
    let failing: Vec<_> = cases
        .into_iter()
        .map(|(name, reply, code)| {
            let section = new_id();
            if let Some(reply) = reply {
                api.set_reply(&section, reply);
            }
            (name, section, token(), code)
        })
        .collect();
    let slow_section = new_id();
    let slow_delay = Duration::from_secs(10);
    api.set_reply(
        &slow_section,
        Reply::new(200, json!({"data": fixtures::nest_snapshot(&slow_section, vec![])}).to_string()).after(slow_delay),
    );
    let slow_token = token();

    let failures = join_all(failing.iter().map(async |(name, section, token, code)| {
        assert_eq!(close_code_on_the_wire(&gateway, section, token).await, *code, "API answered {name}");
    }));
    let timeout = async {
        let started = Instant::now();
        assert_eq!(close_code_on_the_wire(&hasty, &slow_section, &slow_token).await, 1014, "REST_TIMEOUT passed");
        assert!(started.elapsed() < slow_delay / 2, "closed on the timeout, not on the reply: {:?}", started.elapsed());
    };
    tokio::join!(failures, timeout);
    for (name, section, token, _) in &failing {
        assert_eq!(snapshot_auths(&api, "/api/v1/sections/", section), vec![Some(format!("Bearer {token}"))], "{name}");
    }
    assert_eq!(snapshot_auths(&api, "/api/v1/sections/", &slow_section), vec![Some(format!("Bearer {slow_token}"))]);

    // The same shard still serves new connections and live events.
    let other_section = new_id();
    serve_section(&api, &other_section, vec![]);
    let other_token = token();
    expect_snapshot(&api, &other_section, path_request(&gateway, &other_section, &other_token), &other_token).await;
    let tables: Vec<String> = (0..50).map(|_| new_id()).collect();
    for (i, table) in tables.iter().enumerate() {
        producer.send_json(TABLES_TOPIC, &table_event(table, &healthy_section, i as u64)).await;
    }
    for (i, table) in tables.iter().enumerate() {
        let frame = healthy.next_json(WAIT).await;
        assert_eq!(frame["event"], "table.updated", "event {i}: {frame}");
        assert_eq!(frame["payload"]["id"], table.as_str(), "event {i} out of order: {frame}");
        assert_eq!(frame["payload"]["capacity"], i as u64);
    }
    assert_eq!(api.call_count(&healthy_section), 1, "50 events, still the one snapshot call");

    // The API goes away: new connections get 1014, live ones keep streaming.
    let orphan_section = new_id();
    serve_section(&api, &orphan_section, vec![]);
    api.shutdown();
    assert_eq!(close_code_on_the_wire(&gateway, &orphan_section, &token()).await, 1014, "API unreachable");
    let last_table = new_id();
    producer.send_json(TABLES_TOPIC, &table_event(&last_table, &healthy_section, 99)).await;
    let frame = healthy.next_json(WAIT).await;
    assert_eq!(frame["payload"]["id"], last_table.as_str());
    assert_eq!(api.call_count(&healthy_section), 1);
}

// -------------------------------------------- operations endpoints

/// `/healthz` answers while Kafka is unreachable and `/readyz` stays 503 until
/// the broker appears, then 200; `/metrics` is Prometheus text with every
/// series docs/operations.md names that does not depend on consumer lag (see
/// `metrics_report_kafka_consumer_lag`).
#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut broker = Broker::start_memory().await;
    broker.stop(); // its port, with nothing listening, until restart
    let api = StandInApi::start();
    let mut gateway = Gateway::start(binary(), &gateway_env(&broker, &api, &[]));
    let address = format!("127.0.0.1:{}", gateway.port());
    wait::until_some(WAIT, "the gateway to listen", || async {
        tokio::net::TcpStream::connect(&address).await.ok().map(drop)
    })
    .await;

    // Two statistics intervals of the consumer: readiness must not come from
    // nowhere.
    let observe_until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < observe_until {
        assert_eq!(gateway.get("/healthz").await.0, 200, "alive without Kafka");
        let (status, body) = gateway.get("/readyz").await;
        assert_eq!(status, 503, "ready without a broker: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    broker.restart().await;
    // A metadata request started while the broker was away may first run out
    // its 10 s timeout and the 2 s retry pause (src/infrastructure/kafka.rs).
    gateway.wait_ready(WAIT + Duration::from_secs(12)).await;
    assert_eq!(gateway.get("/readyz").await.0, 200);
    assert_eq!(gateway.get("/healthz").await.0, 200);

    let producer = EventProducer::new(&broker.bootstrap());
    let section = new_id();
    serve_section(&api, &section, vec![]);
    let token = token();
    let mut client = expect_snapshot(&api, &section, path_request(&gateway, &section, &token), &token).await;
    let table = new_id();
    producer.send_json(TABLES_TOPIC, &table_event(&table, &section, 4)).await;
    assert_eq!(client.next_json(WAIT).await["payload"]["id"], table.as_str());
    producer.send(TABLES_TOPIC, b"{ this is not json").await;
    let body = wait::until_some(WAIT, "the non-JSON record to be counted", || async {
        let body = metrics_text(&gateway).await;
        (metric_value(&body, "mesaya_events_dropped_total", "reason=\"not_json\"") >= 1.0).then_some(body)
    })
    .await;

    for family in [
        "# TYPE mesaya_connections gauge",
        "# TYPE mesaya_events_consumed_total counter",
        "# TYPE mesaya_events_routed_total counter",
        "# TYPE mesaya_events_dropped_total counter",
        "# TYPE mesaya_frames_sent_total counter",
        "# TYPE mesaya_slow_consumer_closes_total counter",
        "# TYPE mesaya_snapshot_duration_seconds histogram",
        "# TYPE mesaya_snapshot_outcomes_total counter",
        "# TYPE mesaya_delivery_seconds histogram",
    ] {
        assert!(body.contains(family), "/metrics lacks {family:?}:\n{body}");
    }
    assert!(body.lines().any(|line| line.starts_with("mesaya_connections{shard=\"")), "per shard:\n{body}");
    assert_eq!(metric_value(&body, "mesaya_connections", "shard=\""), 1.0, "one open connection:\n{body}");
    assert!(metric_value(&body, "mesaya_events_consumed_total", "") >= 2.0, "{body}");
    assert!(metric_value(&body, "mesaya_events_routed_total", "") >= 1.0, "{body}");
    assert!(metric_value(&body, "mesaya_frames_sent_total", "") >= 2.0, "snapshot and event:\n{body}");
    assert_eq!(metric_value(&body, "mesaya_slow_consumer_closes_total", ""), 0.0, "{body}");
    assert_eq!(metric_value(&body, "mesaya_snapshot_outcomes_total", "outcome=\"ok\""), 1.0, "{body}");
    assert_eq!(metric_value(&body, "mesaya_snapshot_duration_seconds_count", "outcome=\"ok\""), 1.0, "{body}");
    assert!(body.contains("mesaya_snapshot_duration_seconds_bucket{outcome=\"ok\",le=\"+Inf\"} 1"), "{body}");
    // The one live event this client got was timed (the snapshot is not an event).
    assert_eq!(metric_value(&body, "mesaya_delivery_seconds_count", ""), 1.0, "{body}");
    for line in body.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a Prometheus sample line: {line:?}");
    }
}

/// `mesaya_kafka_consumer_lag` shows up, per topic and partition,
/// once the consumer has read from a partition.
#[tokio::test]
async fn metrics_report_kafka_consumer_lag() {
    let stack = Stack::start().await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let (mut client, _) = stack.watch(&section).await;
    stack.publish(TABLES_TOPIC, &table_event(&new_id(), &section, 2)).await;
    assert_eq!(client.next_json(WAIT).await["event"], "table.updated");
    // Prometheus text orders labels by name.
    let labels = format!("partition=\"0\",topic=\"{TABLES_TOPIC}\"");
    wait::until_some(WAIT, "mesaya_kafka_consumer_lag for the tables topic", || async {
        let body = metrics_text(&stack.gateway).await;
        body.lines().any(|line| line.starts_with("mesaya_kafka_consumer_lag{") && line.contains(&labels)).then_some(())
    })
    .await;
    let lag = stack.metric("mesaya_kafka_consumer_lag", &labels).await;
    assert_eq!(lag, 0.0, "everything produced was consumed");
}

// --------------------------------------------------- configuration

/// Runs the gateway until it exits, like `Gateway::run_to_exit`, which
/// cannot be used for `PORT=abc`: it reads `PORT` itself and panics on it.
async fn run_with_bad_port(env: &[(&str, String)], timeout: Duration) -> (ExitStatus, String) {
    let stderr = std::env::temp_dir().join(format!("mesaya-access-{}.stderr", new_id()));
    let mut child = std::process::Command::new(binary())
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway still runs after {timeout:?}: {}", std::fs::read_to_string(&stderr).unwrap());
        }
        tokio::time::sleep(wait::POLL_INTERVAL).await;
    };
    let text = std::fs::read_to_string(&stderr).unwrap();
    let _ = std::fs::remove_file(&stderr);
    (status, text)
}

/// Each bad or missing setting stops the process at once, non-zero, with
/// exactly one stderr line that names the variable.
#[tokio::test]
async fn configuration_errors_stop_the_process_with_one_line_naming_the_variable() {
    let bad_pem = "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----".to_string();
    // A full, valid environment otherwise (nothing needs to be reachable:
    // each of these must fail before connecting anywhere).
    let base = || -> Env {
        vec![
            ("JWT_SECRET", SECRET.to_string()),
            ("KAFKA_BROKERS", "127.0.0.1:1".to_string()),
            ("REST_BASE_URL", "http://127.0.0.1:1".to_string()),
        ]
    };
    let with = |changes: &[(&'static str, Option<String>)]| {
        let mut env = base();
        for (name, value) in changes {
            env.retain(|(existing, _)| existing != name);
            if let Some(value) = value {
                env.push((name, value.clone()));
            }
        }
        env
    };
    // Held until the end: ADMIN_PORT cannot be bound while it listens.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cases: Vec<(&str, Env, &str)> = vec![
        ("no JWT_SECRET nor JWT_PUBLIC_KEY", with(&[("JWT_SECRET", None)]), "JWT_SECRET"),
        (
            "malformed JWT_PUBLIC_KEY",
            with(&[("JWT_SECRET", None), ("JWT_PUBLIC_KEY", Some(bad_pem.clone()))]),
            "JWT_PUBLIC_KEY",
        ),
        ("malformed JWT_PUBLIC_KEY beside a secret", with(&[("JWT_PUBLIC_KEY", Some(bad_pem))]), "JWT_PUBLIC_KEY"),
        ("SHARDS=0", with(&[("SHARDS", Some("0".into()))]), "SHARDS"),
        ("REST_TIMEOUT=soon", with(&[("REST_TIMEOUT", Some("soon".into()))]), "REST_TIMEOUT"),
        (
            "KAFKA_TOPICS bad regex",
            with(&[("KAFKA_TOPICS", Some("mesa-ya.tables.events,^mesa-ya\\.(".into()))]),
            "KAFKA_TOPICS",
        ),
        (
            "SECTION_SNAPSHOT_PATH without {id}",
            with(&[("SECTION_SNAPSHOT_PATH", Some("/api/v1/sections".into()))]),
            "SECTION_SNAPSHOT_PATH",
        ),
        ("RESUME_SECRET of 31 bytes", with(&[("RESUME_SECRET", Some("x".repeat(31)))]), "RESUME_SECRET"),
        (
            "WS_MAX_CONNECTIONS with no descriptors left for anything else",
            with(&[("WS_MAX_CONNECTIONS", Some(open_file_limit().to_string()))]),
            "WS_MAX_CONNECTIONS",
        ),
        (
            "ADMIN_PORT already taken",
            with(&[("ADMIN_PORT", Some(taken.local_addr().unwrap().port().to_string()))]),
            "ADMIN_PORT",
        ),
    ];
    let limit = Duration::from_secs(10);
    let runs = cases.iter().map(async |(name, env, _)| {
        let started = Instant::now();
        let (status, stderr) = Gateway::run_to_exit(binary(), env, limit).await;
        (*name, status, stderr, started.elapsed())
    });
    let bad_port = async {
        let started = Instant::now();
        let (status, stderr) = run_with_bad_port(&with(&[("PORT", Some("abc".into()))]), limit).await;
        ("PORT=abc", status, stderr, started.elapsed())
    };
    let (mut results, port_result) = tokio::join!(join_all(runs), bad_port);
    results.push(port_result);
    let variables = cases.iter().map(|(_, _, variable)| *variable).chain(["PORT"]);
    for ((name, status, stderr, elapsed), variable) in results.into_iter().zip(variables) {
        assert!(!status.success() && status.code().is_some(), "{name}: exit {status}, stderr {stderr:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: stderr must be one line: {stderr:?}");
        assert!(lines[0].contains(variable), "{name}: {:?} does not name {variable}", lines[0]);
        assert!(elapsed < Duration::from_secs(5), "{name}: took {elapsed:?} to give up");
    }
}

/// The hard limit on open descriptors, which the gateway raises its own to.
fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) only writes the struct passed.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit.rlim_max
}

// ------------------------------------------------------- scale-out

/// Two instances on one broker each get every event (their consumer groups
/// differ), so each delivers the same produced event to its own client.
#[tokio::test]
async fn two_instances_on_one_broker_both_deliver_the_same_event() {
    let broker = Broker::start_memory().await;
    let api = StandInApi::start();
    let producer = EventProducer::new(&broker.bootstrap());
    let mut first = Gateway::start(binary(), &gateway_env(&broker, &api, &[]));
    let mut second = Gateway::start(binary(), &gateway_env(&broker, &api, &[]));
    first.wait_ready(WAIT).await;
    second.wait_ready(WAIT).await;

    let section = new_id();
    serve_section(&api, &section, vec![]);
    let mut clients = Vec::new();
    for gateway in [&first, &second] {
        let mut client =
            WsClient::connect(&gateway.ws_url(&format!("/ws/restaurant/{section}/{}", token()))).await.unwrap();
        assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
        clients.push(client);
    }
    assert_eq!(api.call_count(&section), 2, "one snapshot call per connection");

    let table = new_id();
    let event = table_event(&table, &section, 8);
    producer.send_json(TABLES_TOPIC, &event).await;
    for client in &mut clients {
        assert_eq!(client.next_json(WAIT).await, json!({"event": "table.updated", "payload": event["data"]}));
    }

    let group_of = |gateway: &Gateway| {
        gateway
            .logs()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"] == "kafka ingest starting")
            .and_then(|line| line["group_id"].as_str().map(str::to_string))
            .expect("the ingest logs its consumer group")
    };
    let (first_group, second_group) = (group_of(&first), group_of(&second));
    assert!(first_group.starts_with("mesaya-realtime-"), "{first_group}");
    assert_ne!(first_group, second_group, "each instance has its own consumer group");
}
