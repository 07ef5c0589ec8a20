//! End to end: the gateway binary against a real broker and the stand-in
//! API, on the main path.

mod common;

use common::*;
use mesaya_testkit::fixtures::{self, v2};
use serde_json::json;

#[tokio::test]
async fn snapshot_first_then_live_events_for_that_section_only() {
    let stack = Stack::start().await;
    let (section, other_section, table) = (new_id(), new_id(), new_id());
    let snapshot_table = fixtures::table_json(&table, &section, "2026-01-10T15:10:00.000Z");
    stack.serve_section(&section, vec![snapshot_table]);
    stack.serve_section(&other_section, vec![]);

    let token = token();
    let mut client = mesaya_testkit::ws::WsClient::connect(&stack.ws_url(&section, &token)).await.unwrap();
    let snapshot = client.next_json(WAIT).await;
    assert_eq!(snapshot["event"], "section.snapshot");
    assert_eq!(snapshot["payload"]["id"], section.as_str());
    assert_eq!(snapshot["payload"]["tables"][0]["id"], table.as_str());
    assert!(snapshot["payload"].get("data").is_none(), "Nest's envelope is removed");
    let (mut bystander, _) = stack.watch(&other_section).await;

    let calls = stack.api.calls();
    let call = calls.iter().find(|c| c.path.contains(&section)).expect("the snapshot call");
    assert_eq!(call.path, format!("/api/v1/sections/{section}"));
    assert_eq!(call.authorization.as_deref(), Some(format!("Bearer {token}").as_str()));

    let updated = fixtures::table_json(&table, &section, "2026-01-10T16:00:00.480Z");
    stack.publish("mesa-ya.tables.events", &v2("updated", &table, updated.clone())).await;
    let event = client.next_json(WAIT).await;
    assert_eq!(event, json!({"event": "table.updated", "payload": updated}));
    assert!(bystander.try_next(QUIET).await.is_none(), "a client of another section gets nothing");
}
