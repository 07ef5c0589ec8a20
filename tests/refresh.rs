//! End to end: tokens refreshed in band (SPEC §2.8). `auth.expiring` comes
//! `WS_REFRESH_NOTICE` before a token's `exp`, once per token; an
//! `auth.refresh` with a good token of the same user moves the connection's
//! expiry (it then outlives the old token, and is closed 4401 at the new
//! one) and decides its audience again; a bad one gets `auth.refresh_failed`
//! with its reason and the old expiry stands. No REST call, and no token in
//! the logs. The gateway binary, a real tansu broker, the stand-in API.
//!
//! The clock is the condition here: tokens expire in a few seconds.

mod common;

use std::time::Duration;

use common::*;
use mesaya_testkit::fixtures::{self, v2};
use mesaya_testkit::tokens::{TokenBuilder, now};
use mesaya_testkit::ws::WsClient;
use serde_json::{Value, json};
use tokio::time::Instant;

const TABLES: &str = "mesa-ya.tables.events";
const RESERVATIONS: &str = "mesa-ya.reservations.events";

/// Short tokens: one second of leeway, the notice two seconds before `exp`.
fn settings() -> Vec<(&'static str, String)> {
    vec![("JWT_LEEWAY", "1s".into()), ("WS_REFRESH_NOTICE", "2s".into())]
}

fn token_for(sub: &str, roles: &[&str], expires_in: i64) -> String {
    TokenBuilder::new().sub(sub).roles(roles).exp(now() + expires_in).hs256(SECRET)
}

fn refresh(token: &str) -> Value {
    json!({"event": "auth.refresh", "payload": {"token": token}})
}

async fn connect(stack: &Stack, section: &str, jwt: &str) -> WsClient {
    let mut client = WsClient::connect(&stack.ws_url(section, jwt)).await.expect("upgrade");
    assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    client
}

async fn publish_table(stack: &Stack, section: &str, n: u64) -> Value {
    let id = new_id();
    let entity = table(&id, section, n);
    stack.publish(TABLES, &v2("created", &id, entity.clone())).await;
    json!({"event": "table.created", "payload": entity})
}

/// The notice comes once per token, at `exp` − 2 s; a refresh before the
/// old `exp` keeps the connection open past it, with events, until the new
/// `exp` (4401 then); the new token gets its own notice.
#[tokio::test]
async fn a_refreshed_connection_outlives_its_first_token_and_ends_at_the_new_one() {
    let stack = Stack::start_with(&settings()).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let sub = new_id();
    let first_exp = now() + 4;
    let mut client = connect(&stack, &section, &token_for(&sub, &["USER"], 4)).await;
    let connected = Instant::now();

    let notice = client.next_json(WAIT).await;
    assert_eq!(notice, json!({"event": "auth.expiring", "payload": {"exp": first_exp}}));
    assert!(connected.elapsed() >= Duration::from_millis(1_000), "came {:?} after connect", connected.elapsed());

    let second = token_for(&sub, &["USER"], 9);
    let second_exp = now() + 9;
    client.send_json(&refresh(&second)).await;
    assert_eq!(client.next_json(WAIT).await, json!({"event": "auth.refreshed", "payload": {"exp": second_exp}}));

    // Past the first token's exp and leeway: still open, still fed.
    tokio::time::sleep_until(connected + Duration::from_secs(6)).await;
    let event = publish_table(&stack, &section, 1).await;
    assert_eq!(client.next_json(WAIT).await, event, "live past the first token");
    let notice = client.next_json(WAIT).await;
    assert_eq!(notice, json!({"event": "auth.expiring", "payload": {"exp": second_exp}}), "the new token's own");
    let (code, _) = client.expect_close(Duration::from_secs(10)).await;
    assert_eq!(code, 4401);
    assert!(connected.elapsed() >= Duration::from_secs(8), "closed {:?} after connect", connected.elapsed());
    assert_eq!(stack.api.call_count(&section), 1, "no REST call for a refresh");
    assert_eq!(stack.metric("mesaya_token_refreshes_total", r#"outcome="refreshed""#).await, 1.0);
}

/// Each bad refresh gets its reason; none is a close; the old expiry stands;
/// no token reaches the logs.
#[tokio::test]
async fn a_bad_refresh_says_why_and_the_old_expiry_stands() {
    let stack = Stack::start_with(&settings()).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let sub = new_id();
    let jwt = token_for(&sub, &["USER"], 3);
    let mut client = connect(&stack, &section, &jwt).await;
    let connected = Instant::now();
    let expired = token_for(&sub, &["USER"], -30);
    let other_user = token_for(&new_id(), &["USER"], 600);
    let forbidden = token_for(&sub, &["GUEST"], 600);
    let attempts = [
        (refresh(&expired), "expired"),
        (refresh("not-a-jwt"), "invalid"),
        (refresh(&other_user), "other_user"),
        (refresh(&forbidden), "forbidden"),
        (json!({"event": "auth.refresh", "payload": {}}), "invalid"),
    ];
    for (frame, _) in &attempts {
        client.send_json(frame).await;
    }
    let mut reasons = Vec::new();
    loop {
        let frame = client.next_json(WAIT).await;
        match frame["event"].as_str() {
            Some("auth.refresh_failed") => reasons.push(frame["payload"]["reason"].as_str().unwrap().to_string()),
            Some("auth.expiring") => {}
            _ => panic!("unexpected {frame}"),
        }
        if reasons.len() == attempts.len() {
            break;
        }
    }
    let expected: Vec<String> = attempts.iter().map(|(_, reason)| reason.to_string()).collect();
    assert_eq!(reasons, expected);
    // Only the notice may still come before the close.
    let (frames, code, _) = client.frames_until_close(Duration::from_secs(10)).await;
    assert!(frames.iter().all(|frame| frame_json(frame)["event"] == "auth.expiring"), "{frames:?}");
    assert_eq!(code, 4401, "at the first token's exp");
    assert!(connected.elapsed() < Duration::from_secs(6), "closed {:?} after connect", connected.elapsed());
    let logs = stack.gateway.logs();
    for token in [&jwt, &expired, &other_user, &forbidden] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token reached the logs");
    }
    assert_eq!(stack.metric("mesaya_token_refreshes_total", r#"outcome="invalid""#).await, 2.0);
}

/// A diner whose refreshed token makes it staff (same `sub`, role ADMIN)
/// gets other diners' reservations whole from then on; before, cut.
#[tokio::test]
async fn a_refresh_decides_the_audience_again() {
    let stack = Stack::start_with(&settings()).await;
    let (section, table_id) = (new_id(), new_id());
    stack.serve_section(&section, vec![table(&table_id, &section, 0)]);
    let sub = new_id();
    let mut client = connect(&stack, &section, &token_for(&sub, &["USER"], 600)).await;
    let before = fixtures::reservation_json(&new_id(), &table_id);
    stack.publish(RESERVATIONS, &v2("created", before["id"].as_str().unwrap(), before.clone())).await;
    let cut = client.next_json(WAIT).await;
    assert_eq!(cut["event"], "reservation.created");
    assert!(cut["payload"].get("userId").is_none(), "a diner sees another's reservation cut: {cut}");

    client.send_json(&refresh(&token_for(&sub, &["USER", "ADMIN"], 600))).await;
    assert_eq!(client.next_json(WAIT).await["event"], "auth.refreshed");
    let after = fixtures::reservation_json(&new_id(), &table_id);
    stack.publish(RESERVATIONS, &v2("created", after["id"].as_str().unwrap(), after.clone())).await;
    assert_eq!(client.next_json(WAIT).await, json!({"event": "reservation.created", "payload": after}));
}

/// A refresh sent while the snapshot call is held is answered once the
/// connection is live, after the snapshot; refreshes are client frames like
/// any other, so a flood of them closes the connection with 1008.
#[tokio::test]
async fn a_refresh_during_the_snapshot_is_answered_once_live_and_refreshes_count_against_the_rate() {
    let stack = Stack::start_with(&[("WS_CLIENT_RATE", "5".into())]).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let sub = new_id();

    let held = stack.api.hold(&section);
    let mut client =
        WsClient::connect(&stack.ws_url(&section, &token_for(&sub, &["USER"], 600))).await.expect("upgrade");
    mesaya_testkit::wait::until(WAIT, "the snapshot call", || stack.api.call_count(&section) == 1).await;
    let second_exp = now() + 900;
    client.send_json(&refresh(&token_for(&sub, &["USER"], 900))).await;
    held.release();
    assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    assert_eq!(client.next_json(WAIT).await, json!({"event": "auth.refreshed", "payload": {"exp": second_exp}}));

    let flood = refresh(&token_for(&sub, &["USER"], 900));
    for _ in 0..40 {
        client.send_json(&flood).await;
    }
    // The refreshes within the budget are answered before the close.
    let (answered, code, _) = client.frames_until_close(WAIT).await;
    assert_eq!(code, 1008, "refreshes are charged to WS_CLIENT_RATE");
    assert!(answered.len() < 40, "{} of 40 refreshes answered", answered.len());
}
