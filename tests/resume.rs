//! End to end: resuming after a reconnect (SPEC §2.6). A client that opts in
//! with `?resume=` gets `section.position` tokens; reconnecting with one, to
//! any instance sharing `RESUME_SECRET`, it gets `section.resumed` and
//! exactly the frames it missed from that instance's resume buffer, with no
//! REST call — or, when that cannot be, the normal snapshot and positions as
//! usual, never an error close. Real gateway binaries (two or three on one
//! tansu broker), the stand-in API, real sockets.
//!
//! Waits are bounded polls on a condition. The one plain sleep is where the
//! clock itself is the condition: a token older than `RESUME_WINDOW`.

mod common;

use std::ops::RangeInclusive;
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures::{self, v2};
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::wait;
use mesaya_testkit::ws::WsClient;
use serde_json::{Value, json};
use tokio::time::Instant;

const TABLES: &str = "mesa-ya.tables.events";
/// The key every resuming instance of a test shares.
const RESUME_SECRET: &str = "resume-test-secret-9876543210-9876543210";
const RESUMES: &str = "mesaya_resumes_total";
const REPLAYED: &str = "mesaya_resume_frames_replayed_total";
const BUFFER_FRAMES: &str = "mesaya_resume_buffer_frames";
const BUFFER_BYTES: &str = "mesaya_resume_buffer_bytes";
const ROUTED: &str = "mesaya_events_routed_total";
/// "Within about a second" after a snapshot or an event, with room for a busy machine.
const POSITION_WAIT: Duration = Duration::from_secs(5);
/// Silence long enough that a position, coalesced over one second, would have come.
const POSITION_QUIET: Duration = Duration::from_secs(2);
/// Age past which a token is expired on an instance with `RESUME_WINDOW=1s`: the window, the
/// second of clock leeway the spec allows, and a second for issue times kept in whole seconds.
const PAST_A_ONE_SECOND_WINDOW: Duration = Duration::from_secs(3);

/// A gateway's environment.
type Env = Vec<(&'static str, String)>;

// ---------------------------------------------------------------- helpers

/// Where the upgrade request carries the JWT (§1.1); `?resume=` works with either.
#[derive(Clone, Copy)]
enum Jwt<'a> {
    Path(&'a str),
    Query(&'a str),
}

fn resume_url(gateway: &Gateway, section: &str, jwt: Jwt<'_>, resume: &str) -> String {
    gateway.ws_url(&match jwt {
        Jwt::Path(jwt) => format!("/ws/restaurant/{section}/{jwt}?resume={resume}"),
        Jwt::Query(jwt) => format!("/ws/restaurant/{section}?token={jwt}&resume={resume}"),
    })
}

/// The broker, the stand-in API and a producer, shared by a test's instances.
struct Upstream {
    broker: Broker,
    api: StandInApi,
    producer: EventProducer,
}

impl Upstream {
    async fn start() -> Upstream {
        let broker = Broker::start_memory().await;
        let api = StandInApi::start();
        let producer = EventProducer::new(&broker.bootstrap());
        Upstream { broker, api, producer }
    }

    /// A gateway environment with resume on (`RESUME_SECRET` set), plus `extra`.
    fn env(&self, extra: &[(&str, String)]) -> Env {
        let mut settings = vec![("RESUME_SECRET", RESUME_SECRET.to_string())];
        settings.extend(extra.iter().cloned());
        gateway_env(&self.broker, &self.api, &settings)
    }

    /// A fresh section, served (without tables) by the API.
    fn section(&self) -> String {
        let section = new_id();
        serve_section(&self.api, &section, vec![]);
        section
    }

    /// Publishes an update of a fresh table of `section` at version `n`;
    /// returns the frame clients get for it.
    async fn publish(&self, section: &str, n: u64) -> Value {
        let id = new_id();
        let event = v2("updated", &id, table(&id, section, n));
        self.producer.send_json(TABLES, &event).await;
        json!({"event": "table.updated", "payload": event["data"]})
    }

    async fn publish_all(&self, section: &str, versions: RangeInclusive<u64>) -> Vec<Value> {
        let mut frames = Vec::new();
        for n in versions {
            frames.push(self.publish(section, n).await);
        }
        frames
    }

    /// Reconnects with `resume` and expects the fallback: the snapshot first
    /// (one more API call), a position after it, and the resume counted once,
    /// under `outcome`, on `gateway`. Returns the session and that position.
    async fn expect_fallback(
        &self,
        gateway: &Gateway,
        section: &str,
        jwt: Jwt<'_>,
        resume: &str,
        outcome: &str,
    ) -> (Session, String) {
        let labels = format!("outcome=\"{outcome}\"");
        let (calls, counted, resumes) =
            (self.api.call_count(section), metric(gateway, RESUMES, &labels).await, metric(gateway, RESUMES, "").await);
        let (mut session, first) = Session::open(gateway, section, jwt, resume).await;
        assert_eq!(first["event"], "section.snapshot", "{outcome}: the snapshot comes first: {first}");
        assert_eq!(first["payload"]["id"], section, "{outcome}");
        assert_eq!(self.api.call_count(section), calls + 1, "{outcome}: one snapshot call");
        let position = session.next_position().await;
        wait_metric_on(gateway, RESUMES, &labels, &format!("the resume counted as {outcome}"), |n| n == counted + 1.0)
            .await;
        assert_eq!(metric(gateway, RESUMES, "").await, resumes + 1.0, "{outcome}: counted once, under one outcome");
        (session, position)
    }
}

/// Spawns every gateway, then waits until each is ready.
async fn start_all<const N: usize>(envs: [Env; N]) -> [Gateway; N] {
    let mut gateways = envs.map(|env| Gateway::start(binary(), &env));
    for gateway in &mut gateways {
        gateway.wait_ready(WAIT).await;
    }
    gateways
}

/// A counter or gauge of `gateway`'s `/metrics`, summed over the label sets
/// that contain `labels`.
async fn metric(gateway: &Gateway, name: &str, labels: &str) -> f64 {
    let (status, body) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    metric_value(&body, name, labels)
}

async fn wait_metric_on(gateway: &Gateway, name: &str, labels: &str, what: &str, done: impl Fn(f64) -> bool) -> f64 {
    wait::until_some(WAIT, what, || async {
        let value = metric(gateway, name, labels).await;
        done(value).then_some(value)
    })
    .await
}

fn resumed(replayed: u64) -> Value {
    json!({"event": "section.resumed", "payload": {"replayed": replayed}})
}

/// The token of a `section.position` frame (checked to be base64url without
/// padding); `None` for any other frame.
fn position_token(frame: &Value) -> Option<String> {
    if frame["event"] != "section.position" {
        return None;
    }
    let token = frame["payload"]["token"].as_str().unwrap_or_else(|| panic!("a position without a token: {frame}"));
    let url_safe = token.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    assert!(!token.is_empty() && url_safe, "not base64url without padding: {token:?}");
    Some(token.to_string())
}

/// `token` with one character in the middle changed (its signature no longer matches).
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The next `n` frames of a client that gets no positions.
async fn read_frames(client: &mut WsClient, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    for _ in 0..n {
        frames.push(client.next_json(WAIT).await);
    }
    frames
}

/// A client that opted in with `?resume=`, counting the positions it is given.
struct Session {
    client: WsClient,
    positions: usize,
}

impl Session {
    /// Connects with `?resume={resume}`; the session and its first frame.
    async fn open(gateway: &Gateway, section: &str, jwt: Jwt<'_>, resume: &str) -> (Session, Value) {
        let url = resume_url(gateway, section, jwt, resume);
        let mut client =
            WsClient::connect(&url).await.unwrap_or_else(|(status, body)| panic!("upgrade refused: {status} {body}"));
        let first = client.next_json(WAIT).await;
        (Session { client, positions: 0 }, first)
    }

    /// The next frame that is not a position.
    async fn next_event(&mut self) -> Value {
        loop {
            let frame = self.client.next_json(WAIT).await;
            if position_token(&frame).is_none() {
                return frame;
            }
            self.positions += 1;
        }
    }

    async fn next_events(&mut self, n: usize) -> Vec<Value> {
        let mut frames = Vec::new();
        for _ in 0..n {
            frames.push(self.next_event().await);
        }
        frames
    }

    /// The token of the next frame, which must be a position, within about a second.
    async fn next_position(&mut self) -> String {
        let Some(message) = self.client.try_next(POSITION_WAIT).await else {
            panic!("no section.position within {POSITION_WAIT:?}");
        };
        let frame = frame_json(&message);
        self.positions += 1;
        position_token(&frame).unwrap_or_else(|| panic!("expected a section.position, got {frame}"))
    }

    /// Nothing but positions arrives before `QUIET` of silence.
    async fn expect_no_event(&mut self) {
        while let Some(message) = self.client.try_next(QUIET).await {
            let frame = frame_json(&message);
            assert!(position_token(&frame).is_some(), "nothing more was published, yet: {frame}");
            self.positions += 1;
        }
    }

    /// Reads to the server's close, with no event pending: its code and the
    /// token of the position that must come right before it.
    async fn position_before_close(&mut self) -> (u16, String) {
        let (frames, code, _) = self.client.frames_until_close(WAIT).await;
        let tokens: Vec<String> = frames
            .iter()
            .map(|message| {
                let frame = frame_json(message);
                position_token(&frame).unwrap_or_else(|| panic!("only positions were due before the close: {frame}"))
            })
            .collect();
        let last = tokens.last().unwrap_or_else(|| panic!("no section.position right before the close {code}"));
        (code, last.clone())
    }
}

// ----------------------------------------------------------------- tests

/// SIGTERM of instance A: its opted-in client gets a position right before
/// the 1001 close. With that token it resumes on instance B, which shares
/// the secret and never had a client of the section: `section.resumed` with
/// the 2 frames published meanwhile, exactly those in order, then live
/// frames and positions — and no REST call for that connection.
#[tokio::test]
async fn a_client_resumes_on_another_instance_after_a_sigterm_with_exactly_the_missed_frames_and_no_rest_call() {
    let up = Upstream::start().await;
    let [a, b] = start_all([up.env(&[]), up.env(&[])]).await;
    let section = up.section();
    let jwt = token();

    let (mut on_a, first) = Session::open(&a, &section, Jwt::Path(&jwt), "").await;
    assert_eq!(first["event"], "section.snapshot", "a first connect gets the snapshot: {first}");
    on_a.next_position().await;
    let delivered = up.publish_all(&section, 1..=2).await;
    assert_eq!(on_a.next_events(2).await, delivered);
    // At once, so that the position right before the close is the one that
    // covers the two events, whatever the coalescing timer was up to.
    a.terminate();
    let (code, position) = on_a.position_before_close().await;
    assert_eq!(code, 1001);

    let missed = up.publish_all(&section, 3..=4).await;
    wait_metric_on(&b, BUFFER_FRAMES, "", "B to buffer the section's 4 frames", |frames| frames >= 4.0).await;
    assert!(metric(&b, BUFFER_BYTES, "").await > 0.0, "buffered frames take bytes");

    let (mut on_b, first) = Session::open(&b, &section, Jwt::Path(&jwt), &position).await;
    assert_eq!(first, resumed(2), "the first frame says how many missed frames follow");
    assert_eq!(on_b.next_events(2).await, missed, "exactly the missed frames, in order");
    let live = up.publish(&section, 5).await;
    assert_eq!(on_b.next_event().await, live, "then live frames");
    on_b.next_position().await;
    on_b.expect_no_event().await;

    assert_eq!(up.api.call_count(&section), 1, "only A's first connection called the API");
    assert_eq!(metric(&b, RESUMES, "outcome=\"resumed\"").await, 1.0);
    assert_eq!(metric(&b, RESUMES, "").await, 1.0, "no fallback was counted");
    assert_eq!(metric(&b, REPLAYED, "").await, 2.0);
}

/// A live client on A, which keeps getting positions at most once a second
/// while events flow, lends its latest token to a second socket on B, where
/// the section has no client: nothing was missed, so `section.resumed` with
/// 0, nothing re-sent, and the next event exactly once on both sockets. The
/// token serves again: a third socket gets the one frame since.
#[tokio::test]
async fn resuming_with_nothing_missed_on_an_instance_without_clients_of_the_section_sends_nothing_twice() {
    const EVENTS: u64 = 10;
    let up = Upstream::start().await;
    let [a, b] = start_all([up.env(&[]), up.env(&[])]).await;
    let section = up.section();
    let jwt = token();

    let (mut on_a, first) = Session::open(&a, &section, Jwt::Path(&jwt), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");
    on_a.next_position().await;
    // One event at a time, each read before the next is published: a
    // position per write would be a position per event.
    on_a.positions = 0;
    let started = Instant::now();
    for n in 1..=EVENTS {
        let frame = up.publish(&section, n).await;
        assert_eq!(on_a.next_event().await, frame);
    }
    let position = on_a.next_position().await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        on_a.positions as f64 <= elapsed + 1.0,
        "{} positions for {EVENTS} events in {elapsed:.2} s: at most one a second",
        on_a.positions
    );

    wait_metric_on(&b, BUFFER_FRAMES, "", "B to buffer every event", |frames| frames >= EVENTS as f64).await;
    let (mut on_b, first) = Session::open(&b, &section, Jwt::Query(&jwt), &position).await;
    assert_eq!(first, resumed(0), "the token covers every frame A delivered");
    let live = up.publish(&section, EVENTS + 1).await;
    assert_eq!(on_b.next_event().await, live, "the next frame is the new event: nothing delivered is sent again");
    on_b.next_position().await;
    on_b.expect_no_event().await;
    assert_eq!(on_a.next_event().await, live);
    on_a.expect_no_event().await;

    let (mut again, first) = Session::open(&b, &section, Jwt::Path(&jwt), &position).await;
    assert_eq!(first, resumed(1), "a token may be used more than once");
    assert_eq!(again.next_event().await, live);
    again.expect_no_event().await;

    assert_eq!(up.api.call_count(&section), 1, "resumes make no snapshot call");
    assert_eq!(metric(&b, RESUMES, "outcome=\"resumed\"").await, 2.0);
    assert_eq!(metric(&b, RESUMES, "").await, 2.0);
    assert_eq!(metric(&b, REPLAYED, "").await, 1.0);
}

/// A token that cannot be honoured — garbage, tampered with, for another
/// section, of another `sub`, older than `RESUME_WINDOW` — gets the normal
/// snapshot (one more API call) and positions as usual, never an error
/// close, and is counted under its reason. An empty `?resume=` is no resume,
/// and the same token, used as it should be, resumes.
#[tokio::test]
async fn every_fallback_gives_the_snapshot_then_positions_and_never_an_error_close() {
    let up = Upstream::start().await;
    let [gateway, brief] = start_all([up.env(&[]), up.env(&[("RESUME_WINDOW", "1s".into())])]).await;
    let (section, other_section) = (up.section(), up.section());
    let diner = TokenBuilder::new().sub("diner-one").hs256(SECRET);
    let other_diner = TokenBuilder::new().sub("diner-two").hs256(SECRET);

    let (mut session, first) = Session::open(&gateway, &section, Jwt::Path(&diner), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");
    let position = session.next_position().await;
    let received = Instant::now();
    assert_eq!(metric(&gateway, RESUMES, "").await, 0.0, "a first connect with an empty ?resume= is no resume");

    let cases = [
        ("not-a-resume-token".to_string(), &section, Jwt::Path(&diner), "invalid"),
        (tampered(&position), &section, Jwt::Path(&diner), "invalid"),
        (position.clone(), &other_section, Jwt::Path(&diner), "other_section"),
        (position.clone(), &section, Jwt::Query(&other_diner), "other_user"),
    ];
    for (resume, section, jwt, outcome) in cases {
        up.expect_fallback(&gateway, section, jwt, &resume, outcome).await;
    }

    let calls = up.api.call_count(&section);
    let (_, first) = Session::open(&gateway, &section, Jwt::Path(&diner), &position).await;
    assert_eq!(first, resumed(0), "the token itself was good");
    assert_eq!(up.api.call_count(&section), calls);

    // The clock is the condition here.
    tokio::time::sleep_until(received + PAST_A_ONE_SECOND_WINDOW).await;
    up.expect_fallback(&brief, &section, Jwt::Path(&diner), &position, "expired").await;
}

/// A chain of resumes ends `RESUME_REAUTH_AFTER` after the snapshot that
/// began it: a resumed connection's positions carry the chain's start on,
/// so a token issued a moment ago by a resumed connection still falls back
/// (outcome `reauth`, one more API call) once the chain is old, and the
/// snapshot it gets begins a new chain that resumes again.
#[tokio::test]
async fn a_chain_of_resumes_older_than_reauth_after_asks_the_api_again() {
    let up = Upstream::start().await;
    let [gateway] = start_all([up.env(&[("RESUME_REAUTH_AFTER", "2s".into())])]).await;
    let section = up.section();
    let jwt = token();
    let (mut session, first) = Session::open(&gateway, &section, Jwt::Path(&jwt), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");
    let chain_began = Instant::now();
    let position = session.next_position().await;
    session.client.close().await;

    let (mut resumed_session, first) = Session::open(&gateway, &section, Jwt::Path(&jwt), &position).await;
    assert_eq!(first, resumed(0), "a young chain resumes");
    resumed_session.next_position().await;
    // The clock is the condition: chain times are whole seconds, so past 2 s
    // by more than a second of rounding.
    tokio::time::sleep_until(chain_began + Duration::from_secs(4)).await;
    let event = up.publish(&section, 1).await;
    assert_eq!(resumed_session.next_event().await, event);
    let fresh_position = resumed_session.next_position().await;
    resumed_session.client.close().await;
    let (mut session, renewed) =
        up.expect_fallback(&gateway, &section, Jwt::Path(&jwt), &fresh_position, "reauth").await;
    session.client.close().await;
    let (_, first) = Session::open(&gateway, &section, Jwt::Path(&jwt), &renewed).await;
    assert_eq!(first, resumed(0), "the snapshot began a new chain");
}

/// An instance that routed a record nowhere, where another instance routed
/// it to the section (A knows the section's restaurant and table from its
/// client's snapshot; B, with no client there, knows neither), does not
/// claim its buffer covers that record: the client that missed it resumes
/// on A with it, and on B falls back to a snapshot (`gap`) instead of
/// resuming without it. For a restaurant event and for a reservation.
#[tokio::test]
async fn an_instance_that_could_not_route_a_record_does_not_resume_across_it() {
    let up = Upstream::start().await;
    up.broker.create_topic("mesa-ya.restaurants.events", 1).await;
    let [a, b] = start_all([up.env(&[]), up.env(&[])]).await;
    let jwt = TokenBuilder::new().roles(&["ADMIN"]).hs256(SECRET);
    // A section each: once B served one a snapshot, B knows it too.
    let (restaurant_section, reservation_section, table_id) = (new_id(), new_id(), new_id());
    serve_section(&up.api, &restaurant_section, vec![]);
    serve_section(&up.api, &reservation_section, vec![table(&table_id, &reservation_section, 0)]);
    let restaurant = fixtures::restaurant_json(fixtures::RESTAURANT_ID);
    let reservation = fixtures::reservation_json(&new_id(), &table_id);
    let cases = [
        (&restaurant_section, "mesa-ya.restaurants.events", "restaurant.updated", restaurant),
        (&reservation_section, "mesa-ya.reservations.events", "reservation.updated", reservation),
    ];
    for (section, topic, event, entity) in cases {
        let (mut session, first) = Session::open(&a, section, Jwt::Path(&jwt), "").await;
        assert_eq!(first["event"], "section.snapshot", "{first}");
        let position = session.next_position().await;
        session.client.close().await;
        let skipped_on_b = metric(&b, "mesaya_events_consumed_total", "").await;
        let id = entity["id"].as_str().unwrap().to_string();
        up.producer.send_json(topic, &v2("updated", &id, entity.clone())).await;
        wait_metric_on(&b, "mesaya_events_consumed_total", "", "B to consume it", |n| n > skipped_on_b).await;

        let (mut on_a, first) = Session::open(&a, section, Jwt::Path(&jwt), &position).await;
        assert_eq!(first, resumed(1), "{event}: A routed it and replays it");
        assert_eq!(on_a.next_event().await, json!({"event": event, "payload": entity}));
        on_a.client.close().await;
        up.expect_fallback(&b, section, Jwt::Path(&jwt), &position, "gap").await;
    }
}

/// More frames missed than `RESUME_BUFFER` keeps: the snapshot (outcome
/// `gap`); exactly `RESUME_BUFFER` missed: resumed. With `RESUME_BUFFER=0`
/// every resume falls back, even with nothing missed, and positions still
/// come.
#[tokio::test]
async fn a_gap_larger_than_the_replay_buffer_falls_back_to_the_snapshot() {
    let up = Upstream::start().await;
    let [small, none] =
        start_all([up.env(&[("RESUME_BUFFER", "3".into())]), up.env(&[("RESUME_BUFFER", "0".into())])]).await;
    let section = up.section();
    let jwt = token();
    // A client that stays on `small`: once it has an event, so has `small`'s buffer.
    let (mut witness, _) = watch_on(&small, &section).await;

    let (mut session, first) = Session::open(&small, &section, Jwt::Path(&jwt), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");
    let position = session.next_position().await;
    session.client.close().await;
    let missed = up.publish_all(&section, 1..=5).await;
    assert_eq!(read_frames(&mut witness, 5).await, missed);
    wait_metric_on(&small, BUFFER_FRAMES, "", "the buffer to hold RESUME_BUFFER frames", |frames| frames == 3.0).await;
    let (mut session, position) = up.expect_fallback(&small, &section, Jwt::Path(&jwt), &position, "gap").await;

    session.client.close().await;
    let missed = up.publish_all(&section, 6..=8).await;
    assert_eq!(read_frames(&mut witness, 3).await, missed);
    let calls = up.api.call_count(&section);
    let (mut session, first) = Session::open(&small, &section, Jwt::Path(&jwt), &position).await;
    assert_eq!(first, resumed(3), "a gap of exactly RESUME_BUFFER frames is covered");
    assert_eq!(session.next_events(3).await, missed);
    assert_eq!(up.api.call_count(&section), calls);

    wait_metric_on(&none, ROUTED, "", "RESUME_BUFFER=0 to route every event", |routed| routed >= 8.0).await;
    assert_eq!(metric(&none, BUFFER_FRAMES, "").await, 0.0, "RESUME_BUFFER=0 keeps nothing");
    let (mut session, first) = Session::open(&none, &section, Jwt::Path(&jwt), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");
    let position = session.next_position().await;
    up.expect_fallback(&none, &section, Jwt::Path(&jwt), &position, "gap").await;
}

/// Without `RESUME_SECRET`, or with it empty, `?resume=` (empty or not) is
/// ignored: the snapshot, then events and never a `section.position`. With
/// it, a client that did not opt in gets no position either, while one that
/// did, on the same instance and section, does.
#[tokio::test]
async fn positions_go_only_to_clients_that_opted_in_on_an_instance_with_a_resume_secret() {
    let up = Upstream::start().await;
    let [unset, empty, on] =
        start_all([gateway_env(&up.broker, &up.api, &[]), up.env(&[("RESUME_SECRET", String::new())]), up.env(&[])])
            .await;
    let section = up.section();

    let mut silent = Vec::new();
    for gateway in [&unset, &empty] {
        for resume in ["", "not-a-resume-token"] {
            let (session, first) = Session::open(gateway, &section, Jwt::Path(&token()), resume).await;
            assert_eq!(first["event"], "section.snapshot", "resume is off: {first}");
            silent.push(session.client);
        }
    }
    silent.push(watch_on(&on, &section).await.0);
    let (mut opted_in, first) = Session::open(&on, &section, Jwt::Path(&token()), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");

    let event = up.publish(&section, 1).await;
    for client in &mut silent {
        assert_eq!(client.next_json(WAIT).await, event);
    }
    assert_eq!(opted_in.next_event().await, event);
    opted_in.next_position().await;
    let after_the_event = join_all(
        silent.iter_mut().map(async |client| client.try_next(POSITION_QUIET).await.map(|message| frame_json(&message))),
    )
    .await;
    assert!(after_the_event.iter().all(Option::is_none), "no position (nor anything else): {after_the_event:?}");
    assert_eq!(metric(&on, RESUMES, "").await, 0.0, "an empty ?resume= is no resume");
    assert_eq!(up.api.call_count(&section), 6, "one snapshot call per connection");
}

/// In a section where nothing happens, an opted-in client still gets a
/// fresh position every half `RESUME_WINDOW`, so the token it holds never
/// expires while it is connected; and that token resumes with nothing missed.
#[tokio::test]
async fn a_quiet_section_refreshes_positions_every_half_window() {
    let up = Upstream::start().await;
    let [gateway] = start_all([up.env(&[("RESUME_WINDOW", "2s".into())])]).await;
    let section = up.section();
    let jwt = token();

    let (mut session, first) = Session::open(&gateway, &section, Jwt::Path(&jwt), "").await;
    assert_eq!(first["event"], "section.snapshot", "{first}");
    session.next_position().await;
    // Nothing is published: these come from the one-second refresh alone.
    let started = Instant::now();
    session.next_position().await;
    let token = session.next_position().await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "about one a second, not more: two in {elapsed:?}");

    let (_, first) = Session::open(&gateway, &section, Jwt::Path(&jwt), &token).await;
    assert_eq!(first, resumed(0), "a refreshed token is as good as any");
    assert_eq!(up.api.call_count(&section), 1);
}
