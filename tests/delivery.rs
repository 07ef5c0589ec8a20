//! End to end: the delivery guarantees of docs/protocol.md
//! against the gateway binary, a real tansu broker and the stand-in API —
//! the snapshot/stream handoff, moved tables and deleted sections, slow
//! consumers and conflation, liveness, shutdown, faults and hostile input.
//!
//! Waits are bounded polls on a condition, never plain sleeps: where the
//! point is time passing (ping deadlines, token expiry) the test waits for
//! the effect and then checks how long it took.

mod common;

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use common::*;
use mesaya_testkit::api::Reply;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures::{self, CREATED_AT, v2};
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::wait;
use mesaya_testkit::ws::{self, ABNORMAL_CLOSURE, WsClient};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const TABLES: &str = "mesa-ya.tables.events";
const SECTIONS: &str = "mesa-ya.sections.events";
const ROUTED: &str = "mesaya_events_routed_total";
const SLOW_CLOSES: &str = "mesaya_slow_consumer_closes_total";
const CONFLATED: &str = "mesaya_frames_conflated_total";
const CONNECTIONS: &str = "mesaya_connections";

/// Reads JSON frames into `into` until `target` is set and reached: a
/// client that keeps up while another future publishes.
/// Reads `client`'s frames into `into` (positions left out) until it holds
/// `target` of them, once the target is known.
async fn keep_reading(client: &mut WsClient, who: &str, target: &Cell<Option<usize>>, into: &mut Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while target.get().is_none_or(|n| into.len() < n) {
        assert!(Instant::now() < deadline, "{who}: only {} frames, target {:?}", into.len(), target.get());
        if let Some(message) = client.try_next(Duration::from_millis(100)).await {
            let frame = frame_json(&message);
            if frame["event"] != "section.position" {
                into.push(frame);
            }
        }
    }
}

fn ids(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|frame| frame["payload"]["id"].as_str().unwrap_or_default().to_owned()).collect()
}

// --- 1. Snapshot/stream handoff ---------------------------------------------

/// Events that reach the gateway while the snapshot call is in flight are held
/// and sent after the snapshot, in order — minus created/updated events the
/// snapshot already holds at the same or a newer `updatedAt`. Deletes and
/// entities the snapshot lacks always pass; after the snapshot, nothing is
/// filtered.
#[tokio::test]
async fn held_events_follow_the_snapshot_minus_what_it_already_holds() {
    let stack = Stack::start().await;
    let section = new_id();
    let (t_old, t_same, t_new, t_gone, t_unknown) = (new_id(), new_id(), new_id(), new_id(), new_id());
    let at = 1_000;
    let snapshot_tables = [&t_old, &t_same, &t_new, &t_gone].map(|id| table(id, &section, at)).to_vec();
    stack.serve_section(&section, snapshot_tables);

    let held = stack.api.hold(&section);
    let mut client = WsClient::connect(&stack.ws_url(&section, &token())).await.expect("upgrade");
    // The call arrives only after the client is registered on its section.
    wait::until(WAIT, "the snapshot call", || stack.api.call_count(&section) == 1).await;
    let routed_before = stack.metric(ROUTED, "").await;

    let section_same = fixtures::section_json(&section, CREATED_AT);
    let published: Vec<(&str, Value, bool)> = vec![
        (TABLES, v2("updated", &t_old, table(&t_old, &section, at - 1)), false), // older than the snapshot
        (TABLES, v2("updated", &t_same, table(&t_same, &section, at)), false),   // same version
        (TABLES, v2("updated", &t_new, table(&t_new, &section, at + 1)), true),  // newer
        (TABLES, v2("created", &t_unknown, table(&t_unknown, &section, 5)), true), // not in the snapshot
        (TABLES, v2("deleted", &t_gone, table(&t_gone, &section, at)), true),    // deletes always pass
        (SECTIONS, v2("updated", &section, section_same), false),                // the section itself, same version
        (TABLES, v2("updated", &t_old, table(&t_old, &section, at + 500)), true), // newer again
    ];
    for (topic, event, _) in &published {
        stack.publish(topic, event).await;
    }
    let target = routed_before + published.len() as f64;
    wait_metric(&stack, ROUTED, "every held event to reach the gateway", |routed| routed >= target).await;
    held.release();

    let snapshot = client.next_json(WAIT).await;
    assert_eq!(snapshot["event"], "section.snapshot", "the snapshot comes first: {snapshot}");
    assert_eq!(snapshot["payload"]["tables"].as_array().map(Vec::len), Some(4));
    for (topic, event, _) in published.iter().filter(|(_, _, sent)| *sent) {
        let kind = if *topic == TABLES { "table" } else { "section" };
        let expected =
            json!({"event": format!("{kind}.{}", event["event_type"].as_str().unwrap()), "payload": event["data"]});
        assert_eq!(client.next_json(WAIT).await, expected);
    }
    assert!(client.try_next(QUIET).await.is_none(), "events the snapshot holds are not sent");
    assert_eq!(stack.metric("mesaya_handoff_skipped_total", "").await, 3.0);

    // Once live, events pass as they come, even an old one.
    let late = table(&t_same, &section, at - 10);
    stack.publish(TABLES, &v2("updated", &t_same, late.clone())).await;
    assert_eq!(client.next_json(WAIT).await, json!({"event": "table.updated", "payload": late}));
}

/// Ten clients join one section while 100 updates of five tables flow, each
/// joining with events published during its (slowed) snapshot call, the
/// API's copy moving ahead of Kafka as upstream commits before it publishes:
/// every client ends on the last version of every table, and sees each
/// table's events in order.
#[tokio::test]
async fn clients_joining_while_events_flow_converge_on_the_last_versions() {
    const UPDATES: u64 = 100;
    const CLIENTS: u64 = 10;
    let stack = Stack::start().await;
    let section = new_id();
    let tables: Vec<String> = (0..5).map(|_| new_id()).collect();
    let serve = |versions: &[u64]| {
        let snapshot_tables = tables.iter().zip(versions).map(|(id, &n)| table(id, &section, n)).collect();
        let body = json!({"data": fixtures::nest_snapshot(&section, snapshot_tables)}).to_string();
        stack.api.set_reply(&section, Reply::new(200, body).after(Duration::from_millis(150)));
    };
    serve(&[0; 5]);
    let last: Vec<u64> = (0..5).map(|t| (UPDATES - 5 + t) * 10).collect();

    let published = Cell::new(0);
    let publisher = async {
        let mut current = [0; 5];
        for i in 0..UPDATES {
            if i % 10 == 5 {
                // Client i/10 has its snapshot call in flight: the next
                // events are held for it, or reach it just after.
                let joined = (i / 10 + 1) as usize;
                wait::until(WAIT, "the next client to join", || stack.api.call_count(&section) >= joined).await;
            }
            let t = (i % 5) as usize;
            current[t] = i * 10;
            serve(&current);
            stack.publish(TABLES, &v2("updated", &tables[t], table(&tables[t], &section, i * 10))).await;
            published.set(i + 1);
        }
    };
    let clients = (0..CLIENTS).map(|c| {
        let (stack, section, tables, last, published) = (&stack, &section, &tables, &last, &published);
        async move {
            wait::until(WAIT, "the publisher to get going", || published.get() >= c * UPDATES / CLIENTS).await;
            let (mut client, snapshot) = stack.watch(section).await;
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            for table in snapshot["payload"]["tables"].as_array().expect("tables") {
                seen.entry(table["id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(table["updatedAt"].as_str().unwrap().to_owned());
            }
            let mut events: HashMap<String, Vec<String>> = HashMap::new();
            let done = |seen: &HashMap<String, Vec<String>>| {
                tables.iter().zip(last).all(|(id, &n)| seen[id].last() == Some(&version(n)))
            };
            while !done(&seen) {
                let event = client.next_json(WAIT).await;
                assert_eq!(event["event"], "table.updated", "client {c}: {event}");
                let (id, at) =
                    (event["payload"]["id"].as_str().unwrap(), event["payload"]["updatedAt"].as_str().unwrap());
                seen.get_mut(id).expect("a known table").push(at.to_owned());
                events.entry(id.to_owned()).or_default().push(at.to_owned());
            }
            (c, events)
        }
    });
    let ((), results) = tokio::join!(publisher, futures_util::future::join_all(clients));
    for (c, events) in results {
        assert!(!events.is_empty(), "client {c} joined while events flowed, yet got none");
        for (id, versions) in events {
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "client {c}, table {id}: out of order {versions:?}");
        }
    }
}

// --- 2. Moved tables, deleted sections --------------------------------------

/// A `table.updated` naming another section than the one the gateway knew
/// for the table (from the old section's snapshot, or from an earlier table
/// event) reaches the new section's clients as the update and the old
/// section's clients as `table.deleted`.
#[tokio::test]
async fn a_table_moving_to_another_section_is_deleted_from_the_old_one() {
    let stack = Stack::start().await;
    let (a, b) = (new_id(), new_id());
    let (from_snapshot, from_event) = (new_id(), new_id());
    stack.serve_section(&a, vec![table(&from_snapshot, &a, 0)]);
    stack.serve_section(&b, vec![]);
    let (mut client_a, _) = stack.watch(&a).await;
    let (mut client_b, _) = stack.watch(&b).await;

    for (id, n) in [(&from_snapshot, 2), (&from_event, 3)] {
        if id == &from_event {
            // Known in A from a table event.
            let created = table(&from_event, &a, 1);
            stack.publish(TABLES, &v2("created", &from_event, created.clone())).await;
            assert_eq!(client_a.next_json(WAIT).await, json!({"event": "table.created", "payload": created}));
        }
        let moved = table(id, &b, n);
        stack.publish(TABLES, &v2("updated", id, moved.clone())).await;
        assert_eq!(client_b.next_json(WAIT).await, json!({"event": "table.updated", "payload": moved}));
        let gone = client_a.next_json(WAIT).await;
        assert_eq!(gone["event"], "table.deleted", "A must drop the moved table: {gone}");
        assert_eq!(gone["payload"]["id"], id.as_str());
    }
    assert!(client_a.try_next(QUIET).await.is_none());
    assert!(client_b.try_next(QUIET).await.is_none());
}

/// `section.deleted` (v2, its data listing its tables) reaches every client
/// of the section, which are then closed normally (1000); other sections
/// are untouched.
#[tokio::test]
async fn a_deleted_section_is_announced_then_its_clients_are_closed_with_1000() {
    let stack = Stack::start().await;
    let (doomed, other, t) = (new_id(), new_id(), new_id());
    stack.serve_section(&doomed, vec![table(&t, &doomed, 0)]);
    stack.serve_section(&other, vec![]);
    let (mut first, _) = stack.watch(&doomed).await;
    let (mut second, _) = stack.watch(&doomed).await;
    let (mut bystander, _) = stack.watch(&other).await;

    let mut deleted = fixtures::section_json(&doomed, &version(5));
    deleted["tables"] = json!([table(&t, &doomed, 0)]);
    stack.publish(SECTIONS, &v2("deleted", &doomed, deleted.clone())).await;
    for client in [&mut first, &mut second] {
        let (frames, code, _) = client.frames_until_close(WAIT).await;
        let frames: Vec<Value> = frames.iter().map(frame_json).collect();
        assert_eq!(frames, vec![json!({"event": "section.deleted", "payload": deleted})]);
        assert_eq!(code, 1000);
    }
    assert!(bystander.try_next(QUIET).await.is_none());
    let update = table(&new_id(), &other, 1);
    stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
    assert_eq!(bystander.next_json(WAIT).await, json!({"event": "table.created", "payload": update}));
}

// --- 3. Slow consumers -----------------------------------------------------

const SMALL_QUEUE: &str = "64";
const PADDING: usize = 48 << 10;
/// Generous: loopback socket buffers here take ~4 MB (~85 of these events)
/// before a queue starts to fill.
const MAX_BIG_EVENTS: u64 = 600;

/// A client that never reads, in a section where many distinct tables
/// change, is closed with 4408 once its queue is full; the other client of
/// that section gets every event in order, and a client of another section
/// gets its own. What the slow client did receive is a gapless prefix.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4408_and_hurts_nobody() {
    let stack = Stack::start_with(&[("WS_QUEUE_MAX_FRAMES", SMALL_QUEUE.into())]).await;
    let (section, elsewhere) = (new_id(), new_id());
    stack.serve_section(&section, vec![]);
    stack.serve_section(&elsewhere, vec![]);
    let (mut slow, _) = stack.watch(&section).await;
    let (mut reader, _) = stack.watch(&section).await;
    let (mut other, _) = stack.watch(&elsewhere).await;

    let (reader_target, other_target) = (Cell::new(None), Cell::new(None));
    let publisher = async {
        let (mut published, mut published_elsewhere) = (Vec::new(), Vec::new());
        let mut closed = false;
        let mut i = 0;
        // Until the slow client is closed, then a few more that the others must still get.
        while !closed || i % 8 != 4 {
            assert!(i < MAX_BIG_EVENTS, "no 4408 after {i} events of {PADDING} bytes");
            let id = new_id();
            stack.publish(TABLES, &v2("created", &id, big_table(&id, &section, i, PADDING))).await;
            published.push(id);
            if i % 10 == 0 {
                let id = new_id();
                stack.publish(TABLES, &v2("created", &id, table(&id, &elsewhere, i))).await;
                published_elsewhere.push(id);
            }
            if !closed && i % 8 == 7 {
                closed = stack.metric(SLOW_CLOSES, "").await >= 1.0;
            }
            i += 1;
        }
        reader_target.set(Some(published.len()));
        other_target.set(Some(published_elsewhere.len()));
        (published, published_elsewhere)
    };
    let (mut read, mut read_elsewhere) = (Vec::new(), Vec::new());
    let ((published, published_elsewhere), (), ()) = tokio::join!(
        publisher,
        keep_reading(&mut reader, "the reading client", &reader_target, &mut read),
        keep_reading(&mut other, "the other section's client", &other_target, &mut read_elsewhere),
    );
    assert_eq!(ids(&read), published, "the reading client gets every event, in order");
    assert_eq!(ids(&read_elsewhere), published_elsewhere, "another section is unaffected");
    assert!(read.iter().all(|frame| frame["event"] == "table.created"));

    // The slow client finds what its socket held, then the end: 4408 if the
    // close frame fit in the socket, else the connection simply ends.
    let (frames, code, _) = slow.frames_until_close(Duration::from_secs(30)).await;
    let received = ids(&frames.iter().map(frame_json).collect::<Vec<_>>());
    assert!(received.len() < published.len(), "the slow client was cut off");
    assert_eq!(received, published[..received.len()], "what it got is a gapless prefix");
    assert!(code == 4408 || code == ABNORMAL_CLOSURE, "closed with {code}");
    assert_eq!(stack.metric(SLOW_CLOSES, "").await, 1.0, "only the slow client was closed");
    wait_metric(&stack, CONNECTIONS, "the slow session to end", |n| n == 2.0).await;
}

/// A client that stops reading while a FEW entities change many times is
/// not closed: its queue keeps only the newest frame of each entity, and
/// once it reads again it ends on the newest state of each, in order.
#[tokio::test]
async fn a_backlog_of_few_entities_is_conflated_instead_of_closed() {
    let stack = Stack::start_with(&[("WS_QUEUE_MAX_FRAMES", SMALL_QUEUE.into())]).await;
    let section = new_id();
    let tables: Vec<String> = (0..3).map(|_| new_id()).collect();
    stack.serve_section(&section, tables.iter().map(|id| table(id, &section, 0)).collect());
    let (mut client, _) = stack.watch(&section).await;

    // Not reading: the socket fills, then the queue.
    let mut round = 1;
    let mut rounds_after_conflation = None;
    while rounds_after_conflation != Some(0) {
        assert!(round * 3 < MAX_BIG_EVENTS, "no conflation after {} events", round * 3);
        for id in &tables {
            stack.publish(TABLES, &v2("updated", id, big_table(id, &section, round, PADDING))).await;
        }
        rounds_after_conflation = match rounds_after_conflation {
            Some(left) => Some(left - 1),
            // Some more rounds once conflation began, so it is not a one-off.
            None if round % 4 == 0 => {
                assert_eq!(stack.metric(SLOW_CLOSES, "").await, 0.0, "closed (4408) instead of conflated");
                (stack.metric(CONFLATED, "").await > 0.0).then_some(10)
            }
            None => None,
        };
        round += 1;
    }
    let last = version(round - 1);
    assert_eq!(stack.metric(SLOW_CLOSES, "").await, 0.0, "conflation must spare the client");

    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut frames = 0;
    while !tables.iter().all(|id| seen.get(id).and_then(|v| v.last()) == Some(&last)) {
        let event = client.next_json(WAIT).await;
        assert_eq!(event["event"], "table.updated", "{}", event["event"]);
        let at = event["payload"]["updatedAt"].as_str().unwrap().to_owned();
        seen.entry(event["payload"]["id"].as_str().unwrap().to_owned()).or_default().push(at);
        frames += 1;
    }
    assert!(frames < (round - 1) * 3, "some frames were conflated away ({frames} of {})", (round - 1) * 3);
    for (id, versions) in &seen {
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "table {id} went back: {versions:?}");
    }
    assert!(client.try_next(QUIET).await.is_none(), "nothing after the newest states");
    client.send_json(&json!({"event": "ping"})).await;
    assert_eq!(client.next_json(WAIT).await, json!({"event": "pong"}), "still connected");
    assert_eq!(stack.metric(SLOW_CLOSES, "").await, 0.0);
}

// --- 4. Liveness ------------------------------------------------------------

fn liveness_env() -> [(&'static str, String); 3] {
    [("WS_PING_INTERVAL", "300ms".into()), ("WS_PONG_TIMEOUT", "300ms".into()), ("JWT_LEEWAY", "1s".into())]
}

/// `{"event":"ping"}` gets `{"event":"pong"}`; the server sends WebSocket
/// pings at its interval, and a client that answers them (by reading) stays
/// connected well past interval + timeout.
#[tokio::test]
async fn application_pings_get_pongs_and_server_pings_keep_a_live_client() {
    let stack = Stack::start_with(&liveness_env()).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut ws = raw_connect(&stack.ws_url(&section, &token())).await;

    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        match raw_next(&mut ws, Duration::from_millis(100)).await {
            Some(Message::Ping(_)) => pings += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert!(pings >= 3, "{pings} pings in 1.5 s at a 300 ms interval");

    assert!(raw_send(&mut ws, Message::text(json!({"event": "ping"}).to_string())).await);
    let pong = loop {
        match raw_next(&mut ws, WAIT).await.expect("a pong") {
            Message::Ping(_) => continue,
            other => break frame_json(&other),
        }
    };
    assert_eq!(pong, json!({"event": "pong"}));
}

/// The protocol's own control frames: a WebSocket ping gets a pong with the
/// same payload, and a client's close frame gets a close frame back.
#[tokio::test]
async fn websocket_pings_get_pongs_and_a_client_close_is_answered() {
    let stack = Stack::start().await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut ws = raw_connect(&stack.ws_url(&section, &token())).await;
    assert!(raw_send(&mut ws, Message::Ping(b"are you there".to_vec().into())).await);
    match raw_next(&mut ws, WAIT).await.expect("a pong") {
        Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    assert!(raw_send(&mut ws, Message::Close(None)).await);
    assert_eq!(raw_close_code(&mut ws).await, 1000, "the close is answered");
}

/// A client that stops answering pings (tungstenite answers only while
/// reading) is dropped after the ping interval plus the pong timeout; a
/// client that answers is kept.
#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let stack = Stack::start_with(&liveness_env()).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut alive = raw_connect(&stack.ws_url(&section, &token())).await;
    let mut dead = raw_connect(&stack.ws_url(&section, &token())).await;
    let silent_since = Instant::now();
    assert_eq!(stack.metric(CONNECTIONS, "").await, 2.0);

    // `alive` reads (and so answers pings) while `dead` stays silent.
    let watch_connections = async {
        wait_metric(&stack, CONNECTIONS, "the silent client to be dropped", |n| n == 1.0).await;
        silent_since.elapsed()
    };
    let answer_pings = async {
        loop {
            if let Some(message) = raw_next(&mut alive, Duration::from_secs(60)).await {
                assert!(matches!(message, Message::Ping(_)), "unexpected {message:?}");
            }
        }
    };
    let silent_for = tokio::select! {
        silent_for = watch_connections => silent_for,
        () = answer_pings => unreachable!(),
    };
    assert!(silent_for >= Duration::from_millis(550), "dropped after only {silent_for:?}");
    // What the dead client finally reads: the pings it ignored, then the end.
    assert_eq!(raw_close_code(&mut dead).await, ABNORMAL_CLOSURE);

    let update = table(&new_id(), &section, 1);
    stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
    let event = loop {
        match raw_next(&mut alive, WAIT).await.expect("the event") {
            Message::Ping(_) => continue,
            other => break frame_json(&other),
        }
    };
    assert_eq!(event, json!({"event": "table.created", "payload": update}), "the live client stays");
}

/// A session ends with 4401 when its token's `exp` passes (plus the leeway),
/// not before; a session with a longer token stays.
#[tokio::test]
async fn an_expired_token_closes_the_session_with_4401() {
    // Default ping interval: the clients here do not read while they wait.
    let stack = Stack::start_with(&[("JWT_LEEWAY", "1s".into())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let short = TokenBuilder::new().expires_in(2).hs256(SECRET);
    let connected = Instant::now();
    let mut expiring = WsClient::connect(&stack.ws_url(&section, &short)).await.expect("upgrade");
    assert_eq!(expiring.next_json(WAIT).await["event"], "section.snapshot");
    let (mut lasting, _) = stack.watch(&section).await;

    // The refresh notice (SPEC §2.8) may come first; nothing else does.
    let (frames, code, _) = expiring.frames_until_close(Duration::from_secs(6)).await;
    assert!(frames.iter().all(|frame| frame_json(frame)["event"] == "auth.expiring"), "{frames:?}");
    let lifetime = connected.elapsed();
    assert_eq!(code, 4401);
    // exp is whole seconds: at least ~1 s of validity plus 1 s of leeway.
    assert!(lifetime >= Duration::from_millis(1900), "closed after only {lifetime:?}");
    assert!(lifetime <= Duration::from_secs(5), "closed only after {lifetime:?}");

    let update = table(&new_id(), &section, 1);
    stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
    assert_eq!(lasting.next_json(WAIT).await, json!({"event": "table.created", "payload": update}));
}

// --- 5. Shutdown ------------------------------------------------------------

const DRAIN: Duration = Duration::from_secs(3);

/// SIGTERM: `/readyz` and new upgrades get 503 while draining, every client
/// (live, or still waiting for its snapshot) gets 1001, and the process
/// exits 0 within the drain timeout.
///
/// The draining window stays open deterministically: the clients do not
/// read until the checks are done, so the gateway waits for their close
/// replies (up to its close grace of 1 s).
#[tokio::test]
async fn sigterm_refuses_upgrades_closes_everyone_with_1001_and_exits_0() {
    let mut stack = Stack::start_with(&[("DRAIN_TIMEOUT", "3s".into())]).await;
    let (section, pending_section) = (new_id(), new_id());
    stack.serve_section(&section, vec![]);
    stack.serve_section(&pending_section, vec![]);
    let (mut first, _) = stack.watch(&section).await;
    let (mut second, _) = stack.watch(&section).await;
    let held = stack.api.hold(&pending_section);
    let mut pending = WsClient::connect(&stack.ws_url(&pending_section, &token())).await.expect("upgrade");
    wait::until(WAIT, "the held snapshot call", || stack.api.call_count(&pending_section) == 1).await;

    let signalled = Instant::now();
    stack.gateway.terminate();
    wait_readyz(&stack.gateway, 503, WAIT).await;
    let (status, _) = WsClient::expect_rejected(WsClient::request(&stack.ws_url(&section, &token()))).await;
    assert_eq!(status, 503, "no new upgrades while draining");

    for (client, who) in
        [(&mut first, "a live client"), (&mut second, "another"), (&mut pending, "a client awaiting its snapshot")]
    {
        assert_eq!(client.expect_close(WAIT).await.0, 1001, "{who}");
    }
    let exit = stack.gateway.wait_exit(DRAIN + Duration::from_secs(3)).await.expect("exit within the drain timeout");
    assert!(exit.success(), "exit status {exit}");
    assert!(signalled.elapsed() < DRAIN + Duration::from_secs(2), "took {:?}", signalled.elapsed());
    drop(held);
}

/// The process exits within `DRAIN_TIMEOUT` of the signal, not later, even
/// when a client never reads (its session would wait out the drain) and the
/// broker is gone (the consumer cannot leave its group).
#[tokio::test]
async fn the_process_exits_within_the_drain_timeout() {
    let mut stack = Stack::start_with(&[("DRAIN_TIMEOUT", "2s".into())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut stuck = raw_connect(&stack.ws_url(&section, &token())).await;
    for n in 0..40 {
        let id = new_id();
        stack.publish(TABLES, &v2("created", &id, big_table(&id, &section, n, PADDING))).await;
    }
    wait_metric(&stack, "mesaya_events_routed_total", "the stuck client's backlog routed", |n| n >= 40.0).await;
    stack.broker.stop();
    let signalled = Instant::now();
    stack.gateway.terminate();
    let exit = stack.gateway.wait_exit(Duration::from_secs(10)).await.expect("an exit");
    let took = signalled.elapsed();
    assert!(exit.success(), "exit status {exit}");
    assert!(took < Duration::from_millis(2_400), "exited {took:?} after the signal, with DRAIN_TIMEOUT=2s");
    drop(stuck.close(None).await);
}

/// Sockets upgraded right around the signal, still on their way to their
/// shard when it starts draining, get their 1001 like every other client,
/// and so do not hold the drain open until its timeout.
#[tokio::test]
async fn sockets_upgraded_around_the_signal_hear_1001_and_do_not_hold_the_drain() {
    let mut stack = Stack::start_with(&[("DRAIN_TIMEOUT", "10s".into())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let url = stack.ws_url(&section, &token());
    let connects: Vec<_> = (0..200).map(|_| tokio::spawn(tokio_tungstenite::connect_async(url.clone()))).collect();
    let signalled = Instant::now();
    stack.gateway.terminate();
    let mut upgraded = 0;
    for connect in connects {
        let Ok((mut ws, _)) = connect.await.expect("the connect task") else { continue };
        upgraded += 1;
        let mut code = None;
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut ws).await {
            if let Message::Close(frame) = message {
                code = frame.map(|frame| u16::from(frame.code));
                break;
            }
        }
        assert_eq!(code, Some(1001), "an upgraded socket heard why it goes");
    }
    let exit = stack.gateway.wait_exit(Duration::from_secs(15)).await.expect("an exit");
    assert!(exit.success(), "exit status {exit}");
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "{upgraded} upgraded; the drain took {took:?} of its 10 s");
}

/// SIGINT (Ctrl-C) shuts down the same way.
#[tokio::test]
async fn sigint_closes_clients_with_1001_and_exits_0() {
    let mut stack = Stack::start_with(&[("DRAIN_TIMEOUT", "3s".into())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let (mut client, _) = stack.watch(&section).await;
    stack.gateway.interrupt();
    assert_eq!(client.expect_close(WAIT).await.0, 1001);
    let exit = stack.gateway.wait_exit(DRAIN + Duration::from_secs(3)).await.expect("exit within the drain timeout");
    assert!(exit.success(), "exit status {exit}");
}

// --- 6. Faults --------------------------------------------------------------

/// A directory removed when the test ends.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker stops (persistent storage) and comes back on the same port:
/// clients stay connected, `/readyz` says 503 meanwhile, and once it is
/// back the existing client receives a newly published event.
#[tokio::test]
async fn clients_outlive_a_broker_outage_and_get_events_after_it() {
    let dir = ScratchDir(std::env::temp_dir().join(format!("mesaya-delivery-{}", new_id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let broker = Broker::start_persistent(&dir.0).await;
    let api = mesaya_testkit::api::StandInApi::start();
    let producer = EventProducer::new(&broker.bootstrap());
    let mut gateway = Gateway::start(binary(), &gateway_env(&broker, &api, &[]));
    gateway.wait_ready(WAIT).await;
    let mut stack = Stack { broker, api, producer, gateway };
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let (mut client, _) = stack.watch(&section).await;

    stack.broker.stop();
    wait_readyz(&stack.gateway, 503, WAIT).await;
    assert!(client.try_next(QUIET).await.is_none(), "the client stays connected (and hears nothing)");

    stack.broker.restart().await;
    wait_readyz(&stack.gateway, 200, Duration::from_secs(45)).await;
    let update = table(&new_id(), &section, 1);
    stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
    assert_eq!(client.next_json(WAIT).await, json!({"event": "table.created", "payload": update}));
    drop(stack);
}

/// The API slow (past REST_TIMEOUT), answering garbage, or down: the
/// affected connection is closed with 1014, and a client of another section
/// keeps receiving its events.
#[tokio::test]
async fn api_faults_close_only_the_affected_connection_with_1014() {
    let mut stack = Stack::start_with(&[("REST_TIMEOUT", "500ms".into())]).await;
    let (fine, slow, garbage, unreachable) = (new_id(), new_id(), new_id(), new_id());
    stack.serve_section(&fine, vec![]);
    let (mut bystander, _) = stack.watch(&fine).await;
    let valid = json!({"data": fixtures::nest_snapshot(&slow, vec![])}).to_string();
    stack.api.set_reply(&slow, Reply::new(200, valid).after(Duration::from_secs(3)));
    stack.api.set_reply(&garbage, Reply::new(200, "<html>502 Bad Gateway</html>"));

    let mut n = 0;
    let mut bystander_still_served = async |stack: &Stack, bystander: &mut WsClient| {
        n += 1;
        let update = table(&new_id(), &fine, n);
        stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
        assert_eq!(bystander.next_json(WAIT).await, json!({"event": "table.created", "payload": update}));
    };
    for section in [&slow, &garbage] {
        let started = Instant::now();
        assert_eq!(ws::close_code_on_the_wire(&stack.ws_url(section, &token()), WAIT).await, 1014);
        assert!(started.elapsed() < Duration::from_secs(3), "REST_TIMEOUT applies");
        bystander_still_served(&stack, &mut bystander).await;
    }
    stack.api.shutdown();
    assert_eq!(ws::close_code_on_the_wire(&stack.ws_url(&unreachable, &token()), WAIT).await, 1014);
    bystander_still_served(&stack, &mut bystander).await;
}

/// A burst is not slowness (SPEC §2.5): several queues' worth of events
/// reaching the gateway at once (one Kafka batch) closes none of the clients
/// that read, whether the shard writes their socket itself or their writer
/// task does (a client with positions); a client whose socket stays full is
/// the only one closed with 4408.
#[tokio::test]
async fn a_burst_of_many_queues_closes_no_reading_client_and_only_the_stuck_one() {
    let stack = Stack::start_with(&[
        ("WS_QUEUE_MAX_FRAMES", SMALL_QUEUE.into()),
        ("RESUME_SECRET", "delivery-test-resume-secret-0123456789".into()),
        // tansu answers a fetch after its whole wait: what is published
        // meanwhile reaches the gateway as one batch.
        ("KAFKA_FETCH_WAIT_MAX", "1s".into()),
    ])
    .await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let mut stuck = raw_connect(&stack.ws_url(&section, &token())).await;
    let (mut plain, _) = stack.watch(&section).await;
    let url = stack.gateway.ws_url(&format!("/ws/restaurant/{section}/{}?resume=", token()));
    let mut positioned = WsClient::connect(&url).await.expect("upgrade");
    assert_eq!(positioned.next_json(WAIT).await["event"], "section.snapshot");

    // First the stuck client's socket fills and its queue overflows.
    let (plain_target, positioned_target) = (Cell::new(None), Cell::new(None));
    let (mut plain_read, mut positioned_read) = (Vec::new(), Vec::new());
    let publisher = async {
        let mut published = Vec::new();
        let mut n = 0;
        while stack.metric(SLOW_CLOSES, "").await < 1.0 {
            assert!(n < MAX_BIG_EVENTS, "the stuck client was never closed");
            let id = new_id();
            stack.publish(TABLES, &v2("created", &id, big_table(&id, &section, n, PADDING))).await;
            published.push(id);
            n += 1;
        }
        // Then, at once: five queues' worth of distinct tables in one batch.
        let burst: Vec<String> = (0..5 * 64).map(|_| new_id()).collect();
        let records: Vec<Value> = burst.iter().map(|id| v2("created", id, table(id, &section, n))).collect();
        futures_util::future::join_all(records.iter().map(|record| stack.producer.send_json(TABLES, record))).await;
        published.extend(burst);
        plain_target.set(Some(published.len()));
        positioned_target.set(Some(published.len()));
        published
    };
    let (published, (), ()) = tokio::join!(
        publisher,
        keep_reading(&mut plain, "the plain client", &plain_target, &mut plain_read),
        keep_reading(&mut positioned, "the client with positions", &positioned_target, &mut positioned_read),
    );
    assert_eq!(ids(&plain_read), published, "the plain client got every event, in order");
    assert_eq!(ids(&positioned_read), published, "so did the client with positions");
    assert_eq!(stack.metric(SLOW_CLOSES, "").await, 1.0, "only the stuck client was closed");
    assert!(plain.try_next(QUIET).await.is_none(), "and the plain client is still open");
    drop(stuck.close(None).await);
}

// --- 7. Hostile input over WebSocket ----------------------------------------

/// Client frames over WS_MAX_FRAME_BYTES (1009), floods past WS_CLIENT_RATE
/// (1008, control frames counted too: pings cost the shard thread as much),
/// binary frames (1003) and text that is not UTF-8 (1007) close that
/// connection; a frame under the cap is fine, and the gateway keeps serving
/// everyone else.
#[tokio::test]
async fn hostile_client_frames_are_refused_with_their_close_codes() {
    let stack = Stack::start_with(&[("WS_MAX_FRAME_BYTES", "1024".into()), ("WS_CLIENT_RATE", "10".into())]).await;
    let (section, other) = (new_id(), new_id());
    stack.serve_section(&section, vec![]);
    stack.serve_section(&other, vec![]);
    let (mut bystander, _) = stack.watch(&other).await;
    let url = stack.ws_url(&section, &token());

    // Under the cap: ignored, the connection stays.
    let mut ws = raw_connect(&url).await;
    assert!(raw_send(&mut ws, Message::text(format!("{{\"note\":\"{}\"}}", "y".repeat(900)))).await);
    assert!(raw_send(&mut ws, Message::text(json!({"event": "ping"}).to_string())).await);
    assert_eq!(frame_json(&raw_next(&mut ws, WAIT).await.expect("a pong")), json!({"event": "pong"}));

    let invalid_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    let cases: [(&str, Vec<Message>, u16); 5] = [
        ("a frame over the cap", vec![Message::text("z".repeat(4096))], 1009),
        ("a flood", (0..200).map(|i| Message::text(format!("{{\"event\":\"noise\",\"n\":{i}}}"))).collect(), 1008),
        ("a flood of ping frames", (0..200).map(|_| Message::Ping(Vec::new().into())).collect(), 1008),
        ("a binary frame", vec![Message::binary(vec![1, 2, 3])], 1003),
        ("invalid UTF-8", vec![Message::Frame(invalid_utf8)], 1007),
    ];
    for (n, (what, messages, expected)) in cases.into_iter().enumerate() {
        let mut ws = raw_connect(&url).await;
        for message in messages {
            if !raw_send(&mut ws, message).await {
                break;
            }
        }
        assert_eq!(raw_close_code(&mut ws).await, expected, "{what}");

        // Everyone else is still served.
        let update = table(&new_id(), &other, n as u64);
        stack.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
        assert_eq!(
            bystander.next_json(WAIT).await,
            json!({"event": "table.created", "payload": update}),
            "after {what}"
        );
    }
    let (_fresh, snapshot) = stack.watch(&section).await;
    assert_eq!(snapshot["payload"]["id"], section.as_str());
}

/// The server's close frame: its code and reason (1006 and "" when the
/// connection ends without one).
async fn close_frame(ws: &mut Raw) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(ws)).await {
            Err(_) => panic!("no close within {WAIT:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return (ABNORMAL_CLOSURE, String::new()),
        }
    }
}

fn fragment(opcode: Data, payload: &[u8], fin: bool) -> Message {
    Message::Frame(Frame::message(payload.to_vec(), OpCode::Data(opcode), fin))
}

/// Frames count as they arrive, not as messages complete (SPEC §2.5): empty
/// continuation frames after an unfinished text frame are charged to
/// `WS_CLIENT_RATE` (1008); a fragmented message of more than 64 fragments,
/// or one not finished within `WS_PONG_TIMEOUT`, is closed with 1008 too; a
/// frame that breaks the framing rules (a continuation of nothing) with
/// 1002. Everyone else keeps being served.
#[tokio::test]
async fn frames_are_counted_as_they_arrive_and_fragmented_messages_are_bounded() {
    let strict = Stack::start_with(&[("WS_CLIENT_RATE", "10".into())]).await;
    let section = new_id();
    strict.serve_section(&section, vec![]);
    let mut spinner = raw_connect(&strict.ws_url(&section, &token())).await;
    assert!(raw_send(&mut spinner, fragment(Data::Text, b"{", false)).await);
    for _ in 0..200 {
        if !raw_send(&mut spinner, fragment(Data::Continue, b"", false)).await {
            break;
        }
    }
    assert_eq!(close_frame(&mut spinner).await, (1008, "too many client frames".into()), "empty continuations");

    let roomy = Stack::start_with(&[("WS_CLIENT_RATE", "1000".into()), ("WS_PONG_TIMEOUT", "1s".into())]).await;
    let (section, other) = (new_id(), new_id());
    roomy.serve_section(&section, vec![]);
    roomy.serve_section(&other, vec![]);
    let (mut bystander, _) = roomy.watch(&other).await;
    let url = roomy.ws_url(&section, &token());
    let unfinished = "fragmented message of more than 64 fragments or not finished in time";

    let mut whole = raw_connect(&url).await;
    let mut messages = vec![fragment(Data::Text, b"{\"event\":", false)];
    messages.extend((0..62).map(|_| fragment(Data::Continue, b" ", false)));
    messages.push(fragment(Data::Continue, b"\"ping\"}", true));
    for message in messages {
        assert!(raw_send(&mut whole, message).await);
    }
    let pong = raw_next(&mut whole, WAIT).await.expect("a pong for the 64-fragment ping");
    assert_eq!(frame_json(&pong), json!({"event": "pong"}));

    let mut long = raw_connect(&url).await;
    assert!(raw_send(&mut long, fragment(Data::Text, b"{", false)).await);
    for _ in 0..64 {
        if !raw_send(&mut long, fragment(Data::Continue, b" ", false)).await {
            break;
        }
    }
    assert_eq!(close_frame(&mut long).await, (1008, unfinished.into()), "65 fragments");

    let mut slow = raw_connect(&url).await;
    assert!(raw_send(&mut slow, fragment(Data::Text, b"{", false)).await);
    let started = Instant::now();
    assert_eq!(close_frame(&mut slow).await, (1008, unfinished.into()), "never finished");
    assert!(started.elapsed() < Duration::from_secs(5), "closed at the pong timeout, took {:?}", started.elapsed());

    let mut broken = raw_connect(&url).await;
    assert!(raw_send(&mut broken, fragment(Data::Continue, b"x", true)).await);
    assert_eq!(close_frame(&mut broken).await, (1002, "malformed frame".into()), "a continuation of nothing");

    let update = table(&new_id(), &other, 1);
    roomy.publish(TABLES, &v2("created", update["id"].as_str().unwrap(), update.clone())).await;
    assert_eq!(bystander.next_json(WAIT).await, json!({"event": "table.created", "payload": update}));
}

/// A client that closes while its snapshot call is in flight gets the
/// server's close frame back (the close handshake), not a dropped socket.
#[tokio::test]
async fn a_close_during_the_snapshot_call_is_answered() {
    let stack = Stack::start().await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let held = stack.api.hold(&section);
    let connecting = tokio_tungstenite::connect_async(stack.ws_url(&section, &token()));
    let (mut ws, _) = tokio::time::timeout(WAIT, connecting).await.expect("connect timed out").expect("upgrade");
    wait::until(WAIT, "the snapshot call", || stack.api.call_count(&section) == 1).await;
    assert!(raw_send(&mut ws, Message::Close(None)).await);
    assert_eq!(close_frame(&mut ws).await.0, 1000, "the close is answered");
    held.release();
}
