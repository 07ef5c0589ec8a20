//! End to end: hostile, slow and half-dead peers, and the limits that keep
//! one of them from hurting everyone else: a writer no client can stall,
//! admission control before the upgrade, snapshot calls that wait their turn
//! and go away with their client, the client's real address for the API,
//! absurd token expiries, and a second signal during the drain.
//!
//! Real gateway binary, real tansu broker, real stand-in API, real sockets.

mod common;

use std::time::Duration;

use common::*;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures::v2;
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::wait;
use mesaya_testkit::ws::{Request, WsClient};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

const TABLES: &str = "mesa-ya.tables.events";
const CONNECTIONS: &str = "mesaya_connections";
const IN_FLIGHT: &str = "mesaya_snapshot_calls_in_flight";

/// The status and `Retry-After` a refused upgrade was answered with.
async fn refusal(request: Request) -> (u16, Option<String>) {
    let target = request.uri().to_string();
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Ok(Err(tungstenite::Error::Http(response))) => {
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            (response.status().as_u16(), retry_after)
        }
        Ok(Ok(_)) => panic!("the upgrade to {target} was expected to be refused but succeeded"),
        other => panic!("upgrade to {target}: {other:?}"),
    }
}

/// A client that stops reading (its window stays shut) but keeps sending a
/// text frame every few hundred milliseconds is dropped within
/// ping interval + pong timeout + write timeout; a reading client of the
/// same section gets every event meanwhile.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_whatever_it_keeps_sending() {
    let stack = Stack::start_with(&[
        ("WS_PING_INTERVAL", "1s".into()),
        // Room for the reading client to work through its backlog to the
        // ping, in a debug build on a busy machine.
        ("WS_PONG_TIMEOUT", "3s".into()),
        ("WS_WRITE_TIMEOUT", "2s".into()),
        // Room enough that only the stall, never the queue, ends it.
        ("WS_QUEUE_MAX_FRAMES", "100000".into()),
        ("WS_QUEUE_MAX_BYTES", (1u64 << 30).to_string()),
    ])
    .await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut stalled = raw_connect(&stack.ws_url(&section, &token())).await;
    let (mut reader, _) = stack.watch(&section).await;

    // Enough to fill the loopback socket buffers (~4 MB here) many times.
    let published: Vec<String> = (0..160).map(|_| new_id()).collect();
    // The reading client reads while events are published: it answers the
    // server's pings only while it reads.
    let publish = async {
        for (n, id) in published.iter().enumerate() {
            stack.publish(TABLES, &v2("created", id, big_table(id, &section, n as u64, 48 << 10))).await;
        }
    };
    let read = async {
        for id in &published {
            let frame = reader.next_json(WAIT).await;
            assert_eq!(frame["payload"]["id"], id.as_str(), "the reading client gets every event, in order");
        }
    };
    let publish_and_read = async {
        tokio::join!(publish, read);
    };
    let chatter = async {
        // Text frames (within the rate limit) that a per-frame liveness
        // check would take for a sign of life.
        loop {
            let _ = raw_send(&mut stalled, Message::text(json!({"event": "noise"}).to_string())).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let stalled_since = Instant::now();
    let dropped = async {
        publish_and_read.await;
        wait_metric(&stack, CONNECTIONS, "the stalled client to be dropped", |n| n == 1.0).await;
        stalled_since.elapsed()
    };
    let took = tokio::select! {
        took = dropped => took,
        () = chatter => unreachable!(),
    };
    assert!(took < WAIT, "dropped after {took:?}");
}

/// `WS_MAX_CONNECTIONS` answers 503 with `Retry-After` and
/// `WS_MAX_CONNECTIONS_PER_USER` 429 with `Retry-After`, before any upgrade
/// or snapshot call; places come back when sessions end; the operations
/// endpoints answer whatever the load.
#[tokio::test]
async fn connection_limits_refuse_before_the_upgrade_and_free_places_when_sessions_end() {
    let stack =
        Stack::start_with(&[("WS_MAX_CONNECTIONS", "3".into()), ("WS_MAX_CONNECTIONS_PER_USER", "2".into())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let user = |sub: &str| TokenBuilder::new().sub(sub).hs256(SECRET);
    let url = |token: &str| stack.ws_url(&section, token);

    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut first = WsClient::connect(&url(&alice)).await.expect("alice's first");
    let _second = WsClient::connect(&url(&alice)).await.expect("alice's second");
    assert_eq!(refusal(WsClient::request(&url(&alice))).await, (429, Some("5".into())), "alice's third");
    let _bob = WsClient::connect(&url(&bob)).await.expect("bob's first");
    assert_eq!(refusal(WsClient::request(&url(&carol))).await, (503, Some("5".into())), "a fourth session");
    // The admitted sessions' calls come in on their own time; refused
    // upgrades never make one.
    wait::until(WAIT, "the three admitted sessions' snapshot calls", || stack.api.call_count(&section) >= 3).await;
    assert_eq!(stack.api.call_count(&section), 3, "refused upgrades make no snapshot call");
    assert_eq!(stack.gateway.get("/healthz").await.0, 200);
    assert_eq!(stack.gateway.get("/readyz").await.0, 200);

    first.close().await;
    wait_metric(&stack, CONNECTIONS, "alice's first session to end", |n| n == 2.0).await;
    let (mut carols, snapshot) = watch_with(&url(&carol)).await;
    assert_eq!(snapshot["event"], "section.snapshot", "the freed place is carol's");
    carols.close().await;
}

async fn watch_with(url: &str) -> (WsClient, serde_json::Value) {
    let mut client = WsClient::connect(url).await.unwrap_or_else(|(status, body)| panic!("refused: {status} {body}"));
    let snapshot = client.next_json(WAIT).await;
    (client, snapshot)
}

/// At most `SNAPSHOT_CONCURRENCY` snapshot calls are in flight; the others
/// wait their turn. A client that leaves while its call is in flight
/// cancels it and frees its place at once, not at `REST_TIMEOUT`.
#[tokio::test]
async fn snapshot_calls_wait_their_turn_and_a_client_that_leaves_frees_its_place() {
    let stack = Stack::start_with(&[("SNAPSHOT_CONCURRENCY", "2".into()), ("REST_TIMEOUT", "60s".into())]).await;
    let sections: Vec<String> = (0..4).map(|_| new_id()).collect();
    for section in &sections {
        stack.serve_section(section, vec![]);
    }
    let holds: Vec<_> = sections.iter().map(|section| stack.api.hold(section)).collect();
    let mut clients = Vec::new();
    for section in &sections {
        clients.push(WsClient::connect(&stack.ws_url(section, &token())).await.expect("upgrade"));
    }
    let arrived = || sections.iter().map(|section| stack.api.call_count(section)).sum::<usize>();
    wait::until(WAIT, "two calls at the API", || arrived() == 2).await;
    assert_eq!(stack.metric(IN_FLIGHT, "").await, 2.0);
    tokio::time::sleep(QUIET).await;
    assert_eq!(arrived(), 2, "the other two wait their turn");

    // The first caller leaves: its place goes to a waiting one at once.
    let first = sections.iter().position(|section| stack.api.call_count(section) == 1).unwrap();
    let mut leaving = clients.remove(first);
    leaving.close().await;
    drop(leaving);
    wait::until(WAIT, "a third call, in the place the leaver freed", || arrived() == 3).await;
    let gone = stack.metric("mesaya_snapshot_outcomes_total", r#"outcome="client_gone""#).await;
    assert_eq!(gone, 1.0);

    drop(holds);
    for client in &mut clients {
        assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    }
    wait_metric(&stack, IN_FLIGHT, "no call in flight", |n| n == 0.0).await;
}

/// The snapshot call carries the client's address in `X-Forwarded-For`
/// (the TCP peer, or from a trusted proxy the right-most address it did
/// not add itself) and an `X-Request-Id` that the session's log lines
/// carry too.
#[tokio::test]
async fn the_api_sees_the_real_client_and_a_request_id_the_logs_share() {
    let stack = Stack::start_with(&[("TRUSTED_PROXIES", "127.0.0.0/8".into()), ("LOG_LEVEL", "info".into())]).await;
    let (direct, proxied) = (new_id(), new_id());
    stack.serve_section(&direct, vec![]);
    stack.serve_section(&proxied, vec![]);

    let mut request = WsClient::request(&stack.ws_url(&proxied, &token()));
    request.headers_mut().insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 127.0.0.5".parse().unwrap());
    let mut client = WsClient::connect_with(request).await.expect("upgrade");
    assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    let (_direct_client, _) = stack.watch(&direct).await;

    let call = |section: &str| {
        stack.api.calls().into_iter().find(|call| call.path.ends_with(section)).expect("the snapshot call")
    };
    let (proxied_call, direct_call) = (call(&proxied), call(&direct));
    assert_eq!(proxied_call.forwarded_for.as_deref(), Some("203.0.113.9"), "right-most untrusted, not the first");
    assert_eq!(direct_call.forwarded_for.as_deref(), Some("127.0.0.1"), "a direct client: its TCP peer");
    let ids = [proxied_call.request_id.unwrap(), direct_call.request_id.unwrap()];
    assert_ne!(ids[0], ids[1], "unique per session");

    // At the default level, the line that says the session went live.
    let live_line_with =
        |id: &str| stack.gateway.logs().lines().any(|line| line.contains(id) && line.contains("session live"));
    wait::until(WAIT, "the sessions' log lines", || ids.iter().all(|id| live_line_with(id))).await;
}

/// On a dual-stack listener (`HOST=::`) an IPv4 peer is seen IPv4-mapped
/// (`::ffff:127.0.0.1`): it still matches the IPv4 `TRUSTED_PROXIES`, and a
/// forwarded entry written with brackets and a port is read as its address.
#[tokio::test]
async fn a_dual_stack_listener_reads_trusted_proxies_and_forwarded_ports_canonically() {
    let stack = Stack::start_with(&[("HOST", "::".into()), ("TRUSTED_PROXIES", "127.0.0.0/8".into())]).await;
    let (direct, proxied) = (new_id(), new_id());
    stack.serve_section(&direct, vec![]);
    stack.serve_section(&proxied, vec![]);
    let mut request = WsClient::request(&stack.ws_url(&proxied, &token()));
    request.headers_mut().insert("x-forwarded-for", "6.6.6.6, [2001:db8::7]:4711, 127.0.0.5:80".parse().unwrap());
    let mut client = WsClient::connect_with(request).await.expect("upgrade");
    assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    let (_direct_client, _) = stack.watch(&direct).await;

    let forwarded = |section: &str| {
        let call = stack.api.calls().into_iter().find(|call| call.path.ends_with(section)).expect("the snapshot call");
        call.forwarded_for
    };
    assert_eq!(forwarded(&proxied).as_deref(), Some("2001:db8::7"), "the mapped peer is a trusted proxy");
    assert_eq!(forwarded(&direct).as_deref(), Some("127.0.0.1"), "told as IPv4, not ::ffff:127.0.0.1");
}

/// Logging never blocks (SPEC §2.5): with stderr a pipe nobody reads, the
/// ingest thread still counts every one of 20 000 malformed records (one
/// debug line each), the lines the buffer could not hold are dropped and
/// counted, and a client still connects and gets its snapshot.
#[tokio::test]
async fn a_stderr_nobody_reads_blocks_nothing_and_the_dropped_lines_are_counted() {
    let broker = Broker::start_memory().await;
    let api = StandInApi::start();
    let producer = EventProducer::new(&broker.bootstrap());
    let env = gateway_env(&broker, &api, &[("LOG_LEVEL", "debug".into())]);
    let mut gateway = Gateway::start_with_stderr_unread(binary(), &env);
    gateway.wait_ready(WAIT).await;
    const RECORDS: usize = 20_000;
    for chunk in 0..RECORDS / 1000 {
        let records: Vec<Vec<u8>> = (0..1000).map(|n| format!("{{nope {chunk} {n}").into_bytes()).collect();
        futures_util::future::join_all(records.iter().map(|record| producer.send("mesa-ya.tables.events", record)))
            .await;
    }
    let metric = async |name: &str, labels: &str| {
        let (status, body) = gateway.get("/metrics").await;
        assert_eq!(status, 200);
        metric_value(&body, name, labels)
    };
    wait::until_some(Duration::from_secs(60), "every malformed record counted", || async {
        (metric("mesaya_events_dropped_total", r#"reason="not_json""#).await == RECORDS as f64).then_some(())
    })
    .await;
    assert!(metric("mesaya_log_lines_dropped_total", "").await > 0.0, "lines were dropped, not waited for");
    let section = new_id();
    serve_section(&api, &section, vec![]);
    let (_client, snapshot) = watch_on(&gateway, &section).await;
    assert_eq!(snapshot["payload"]["id"], section.as_str());
}

/// A token whose `exp` is near the largest integer makes a long session,
/// not an arithmetic panic: the client gets its snapshot and live events.
#[tokio::test]
async fn a_token_expiring_at_the_end_of_time_is_a_long_session() {
    let stack = Stack::start().await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let forever = TokenBuilder::new().claim("exp", json!(u64::MAX)).hs256(SECRET);
    let (mut client, _) = watch_with(&stack.ws_url(&section, &forever)).await;
    let update = table(&new_id(), &section, 1);
    stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
    assert_eq!(client.next_json(WAIT).await, json!({"event": "table.created", "payload": update}));
}

/// A second SIGTERM while clients are still draining ends the process at
/// once, with a non-zero status; until then the drain goes on.
#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let mut stack = Stack::start_with(&[
        ("DRAIN_TIMEOUT", "60s".into()),
        ("WS_WRITE_TIMEOUT", "60s".into()),
        ("WS_QUEUE_MAX_BYTES", (1u64 << 30).to_string()),
        ("WS_QUEUE_MAX_FRAMES", "100000".into()),
    ])
    .await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    // It never reads: once the socket buffers are full, what is queued for
    // it cannot drain. How much they take depends on the kernel's
    // autotuning, so publish until frames stay queued.
    let (_stalled, _) = stack.watch(&section).await;
    let mut published = 0;
    loop {
        for _ in 0..20 {
            let id = new_id();
            stack.publish(TABLES, &v2("created", &id, big_table(&id, &section, published, 48 << 10))).await;
            published += 1;
        }
        let target = published as f64;
        wait::until_some(WAIT, "the events to be routed", || async {
            (stack.metric("mesaya_events_routed_total", "").await >= target).then_some(())
        })
        .await;
        // Stalled: frames wait in its queue and none was written for a while.
        let written = stack.metric("mesaya_frames_sent_total", "").await;
        tokio::time::sleep(QUIET).await;
        let still = stack.metric("mesaya_frames_sent_total", "").await;
        // The snapshot frame is the one written frame no event routed.
        if still == written && target - (still - 1.0) >= 10.0 {
            break;
        }
        assert!(published < 2_000, "{published} events of 48 KiB and the socket still takes them");
    }

    stack.gateway.terminate();
    wait_readyz(&stack.gateway, 503, WAIT).await;
    assert!(stack.gateway.wait_exit(QUIET).await.is_none(), "still draining");
    let again = Instant::now();
    stack.gateway.terminate();
    let exit = stack.gateway.wait_exit(WAIT).await.expect("exit after the second signal");
    assert!(again.elapsed() < Duration::from_secs(5), "took {:?}", again.elapsed());
    assert_eq!(exit.code(), Some(130));
}
