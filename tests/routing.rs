//! End to end: Kafka ingest and routing, the gateway
//! binary against a real broker and the stand-in API.
//!
//! Every "receives nothing" is proved with a positive control: after the event
//! that must not arrive has demonstrably been consumed (another client got it,
//! or a drop counter moved), an event for the same client is published, and it
//! must be the client's very next frame. One section's deliveries travel one
//! path (ingest thread → owning shard's mailbox → the client's queue) in
//! order, so anything wrongly routed earlier would come first. Clients that
//! check reservations as sent connect as staff (what the public sees of them
//! is tests/audience.rs's).

mod common;

use std::collections::BTreeMap;

use common::*;
use mesaya_realtime::domain::ids::SectionId;
use mesaya_testkit::fixtures::{self, CREATED_AT, USER_ID};
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::wait;
use mesaya_testkit::ws::WsClient;
use serde_json::{Value, json};

// ---------------------------------------------------------------- helpers

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// `{event_type, entity_id, data}` on `mesa-ya.<domain>.events`.
    V2,
    /// `{action, entityId?, entity}` on `mesa-ya.<domain>.<verb>`.
    V1,
}

/// Publishes `entity` as a `<kind>.<action>` change the way the MesaYa API
/// does in `version`: topic, envelope, and the
/// optional fields Nest adds (v1 `entityId` only on deletes and non-section
/// updates; reservations carry `metadata.user_id` / `performedBy`).
async fn publish_change(stack: &Stack, version: Version, kind: &str, action: &str, entity: &Value) {
    let id = entity["id"].as_str().expect("fixture entities have an id");
    let (topic, envelope) = match version {
        Version::V2 => {
            let mut envelope = fixtures::v2(action, id, entity.clone());
            if kind == "reservation" {
                envelope["metadata"] = json!({"user_id": USER_ID});
            }
            (format!("mesa-ya.{kind}s.events"), envelope)
        }
        Version::V1 => {
            let without_id = action == "created" || (kind == "section" && action == "updated");
            let entity_id = (!without_id).then_some(id);
            let mut envelope = fixtures::v1(&format!("{kind}.{action}"), entity_id, entity.clone());
            if kind == "reservation" {
                envelope["performedBy"] = json!(USER_ID);
            }
            (format!("mesa-ya.{kind}s.{action}"), envelope)
        }
    };
    stack.publish(&topic, &envelope).await;
}

/// The client's next frame must be exactly `{"event": event, "payload": payload}`.
async fn expect_event(client: &mut WsClient, who: &str, event: &str, payload: &Value) {
    let frame = client.next_json(WAIT).await;
    assert_eq!(frame, json!({"event": event, "payload": payload}), "{who}: expected {event} with the entity as sent");
}

/// `mesaya_events_dropped_total{reason="<reason>"}`.
async fn dropped(stack: &Stack, reason: &str) -> f64 {
    stack.metric("mesaya_events_dropped_total", &format!("reason=\"{reason}\"")).await
}

/// Every `mesaya_events_dropped_total` series, by reason.
async fn dropped_by_reason(stack: &Stack) -> BTreeMap<String, f64> {
    let (_, body) = stack.gateway.get("/metrics").await;
    body.lines()
        .filter_map(|line| line.strip_prefix("mesaya_events_dropped_total{reason=\""))
        .filter_map(|rest| {
            let (reason, value) = rest.split_once("\"} ")?;
            Some((reason.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `mesaya_connections{shard="k"}` for k in 0..shards, from one scrape.
async fn connections_per_shard(stack: &Stack, shards: usize) -> Vec<f64> {
    let (status, body) = stack.gateway.get("/metrics").await;
    assert_eq!(status, 200);
    (0..shards).map(|k| metric_value(&body, "mesaya_connections", &format!("shard=\"{k}\""))).collect()
}

// ------------------------------------------------------------- routing

/// Every kind and every routing rule in one envelope version,
/// on fresh ids: sections by `id`, tables and section-objects by
/// `sectionId`, objects through their section-object links (one link, two,
/// one removed), reservations through tables learned from the snapshot and
/// from a table event (also after the table moved), and a bystander section
/// that receives nothing.
async fn routing_scenario(stack: &Stack, version: Version) {
    let (s_a, s_c, s_b) = (new_id(), new_id(), new_id());
    let (t1, t2, object, so1, so2, r1, r2) = (new_id(), new_id(), new_id(), new_id(), new_id(), new_id(), new_id());
    stack.serve_section(&s_a, vec![fixtures::table_json(&t1, &s_a, CREATED_AT)]);
    stack.serve_section(&s_c, vec![]);
    stack.serve_section(&s_b, vec![]);
    let (mut a, _) = stack.watch_staff(&s_a).await;
    let (mut c, _) = stack.watch_staff(&s_c).await;
    let (mut b, _) = stack.watch_staff(&s_b).await;
    let v = format!("{version:?}");

    // section.*: routed by its own id.
    let mut section = fixtures::section_json(&s_a, "2026-01-10T16:00:00.000Z");
    section["name"] = json!("Terraza norte");
    publish_change(stack, version, "section", "updated", &section).await;
    expect_event(&mut a, &v, "section.updated", &section).await;

    // table.*: routed by sectionId (values as the upstream's "table updated" example).
    let mut table = fixtures::table_json(&t2, &s_a, "2026-01-10T16:00:00.480Z");
    table["capacity"] = json!(6);
    table["posX"] = json!(14);
    table["width"] = json!(3);
    publish_change(stack, version, "table", "created", &table).await;
    expect_event(&mut a, &v, "table.created", &table).await;

    // reservation.*: through the table → section map, learned from the
    // snapshot's `tables` (t1) and from the table event just seen (t2).
    let reservation1 = fixtures::reservation_json(&r1, &t1);
    publish_change(stack, version, "reservation", "created", &reservation1).await;
    expect_event(&mut a, &v, "reservation.created", &reservation1).await;
    let mut reservation2 = fixtures::reservation_json(&r2, &t2);
    reservation2["status"] = json!("CONFIRMED");
    publish_change(stack, version, "reservation", "updated", &reservation2).await;
    expect_event(&mut a, &v, "reservation.updated", &reservation2).await;

    // section-object.*: routed by sectionId, and it links the object.
    let link1 = fixtures::section_object_json(&so1, &s_a, &object);
    publish_change(stack, version, "section-object", "created", &link1).await;
    expect_event(&mut a, &v, "section-object.created", &link1).await;
    let mut object_json = fixtures::object_json(&object);
    object_json["posX"] = json!(41);
    publish_change(stack, version, "object", "updated", &object_json).await;
    expect_event(&mut a, &v, "object.updated", &object_json).await;

    // A second link, to an object now known: its frame carries the object.
    // One object change reaches both sections.
    let link2 = fixtures::section_object_json(&so2, &s_c, &object);
    publish_change(stack, version, "section-object", "created", &link2).await;
    let mut link2_with_object = link2.clone();
    link2_with_object["object"] = object_json.clone();
    expect_event(&mut c, &v, "section-object.created", &link2_with_object).await;
    object_json["posX"] = json!(42);
    publish_change(stack, version, "object", "updated", &object_json).await;
    expect_event(&mut a, &v, "object.updated", &object_json).await;
    expect_event(&mut c, &v, "object.updated", &object_json).await;

    // Deleting the first link: the object no longer reaches s_a.
    publish_change(stack, version, "section-object", "deleted", &link1).await;
    expect_event(&mut a, &v, "section-object.deleted", &link1).await;
    object_json["posX"] = json!(43);
    publish_change(stack, version, "object", "updated", &object_json).await;
    expect_event(&mut c, &v, "object.updated", &object_json).await;
    let mut control = fixtures::table_json(&t1, &s_a, "2026-01-10T16:30:00.000Z");
    control["capacity"] = json!(2);
    publish_change(stack, version, "table", "updated", &control).await;
    expect_event(&mut a, &format!("{v}: an unlinked object must not reach s_a"), "table.updated", &control).await;

    // A table moving to s_c: s_c gets the update, s_a a delete, and its
    // reservations follow it.
    table["sectionId"] = json!(s_c);
    table["updatedAt"] = json!("2026-01-10T16:40:00.000Z");
    publish_change(stack, version, "table", "updated", &table).await;
    expect_event(&mut c, &v, "table.updated", &table).await;
    expect_event(&mut a, &v, "table.deleted", &table).await;
    publish_change(stack, version, "reservation", "deleted", &reservation2).await;
    expect_event(&mut c, &v, "reservation.deleted", &reservation2).await;

    // The upstream's deletes: an object (to its remaining link's
    // section), then a section, whose payload carries its `tables`.
    publish_change(stack, version, "object", "deleted", &fixtures::object_json(&object)).await;
    expect_event(&mut c, &v, "object.deleted", &fixtures::object_json(&object)).await;
    let mut deleted_section = fixtures::section_json(&s_c, "2026-01-11T08:00:00.000Z");
    deleted_section["description"] = Value::Null;
    deleted_section["tables"] = json!([table]);
    publish_change(stack, version, "section", "deleted", &deleted_section).await;
    expect_event(&mut c, &v, "section.deleted", &deleted_section).await;

    // Nothing else reached s_a, and nothing at all reached the bystander.
    for (client, section_id, who) in [(&mut a, &s_a, "s_a"), (&mut b, &s_b, "the bystander")] {
        let control = fixtures::section_json(section_id, "2026-01-12T00:00:00.000Z");
        publish_change(stack, version, "section", "updated", &control).await;
        expect_event(client, &format!("{v}: nothing else may reach {who}"), "section.updated", &control).await;
    }
}

/// A reservation published the moment a client has its snapshot reaches
/// it through the snapshot's `tables`, on fresh sections nobody watched
/// before (the shard reports the tables before writing the snapshot frame;
/// the ingest thread must take them in before routing the next record, not
/// only between polls: before that fix, 18 of 30 such reservations were
/// dropped as `no_section`).
async fn reservations_right_after_the_snapshot(stack: &Stack) {
    for _ in 0..10 {
        let (section, table, reservation) = (new_id(), new_id(), new_id());
        stack.serve_section(&section, vec![fixtures::table_json(&table, &section, CREATED_AT)]);
        let (mut client, _) = stack.watch_staff(&section).await;
        let reservation = fixtures::reservation_json(&reservation, &table);
        publish_change(stack, Version::V2, "reservation", "created", &reservation).await;
        expect_event(&mut client, "right after the snapshot", "reservation.created", &reservation).await;
    }
}

/// Both envelope versions on the default topic regex (KAFKA_TOPICS
/// unset), each through the whole routing table.
#[tokio::test]
async fn both_envelope_versions_route_every_kind_to_its_sections() {
    let stack = Stack::start().await;
    routing_scenario(&stack, Version::V2).await;
    routing_scenario(&stack, Version::V1).await;
    reservations_right_after_the_snapshot(&stack).await;
    assert_eq!(dropped_by_reason(&stack).await, BTreeMap::new(), "nothing was skipped");
}

/// Links made before the gateway started are known (rebuilt from the
/// section-objects topics' earliest offsets before `/readyz` says 200), in
/// both versions, with deletes applied and garbage skipped on the way.
#[tokio::test]
async fn section_object_links_made_before_start_are_rebuilt() {
    let stack = Stack::start().await;
    let (s1, s2, s3, object) = (new_id(), new_id(), new_id(), new_id());
    for section in [&s1, &s2, &s3] {
        stack.serve_section(section, vec![]);
    }
    let (so1, so2, so3) = (new_id(), new_id(), new_id());
    let link3 = fixtures::section_object_json(&so3, &s3, &object);
    stack
        .publish(
            "mesa-ya.section-objects.events",
            &fixtures::v2("created", &so1, fixtures::section_object_json(&so1, &s1, &object)),
        )
        .await;
    stack.producer.send("mesa-ya.section-objects.events", b"not json at all").await;
    stack
        .publish(
            "mesa-ya.section-objects.created",
            &fixtures::v1("section-object.created", None, fixtures::section_object_json(&so2, &s2, &object)),
        )
        .await;
    stack.publish("mesa-ya.section-objects.events", &fixtures::v2("created", &so3, link3.clone())).await;
    stack.publish("mesa-ya.section-objects.events", &fixtures::v2("deleted", &so3, link3)).await;

    let mut late = Gateway::start(binary(), &gateway_env(&stack.broker, &stack.api, &[]));
    late.wait_ready(WAIT).await;
    let (_, metrics) = late.get("/metrics").await;
    let links = |kind: &str| metric_value(&metrics, "mesaya_router_links", &format!(r#"kind="{kind}""#));
    assert_eq!(links("section_object"), 2.0, "two links rebuilt, the deleted one not: {metrics}");
    let (mut c1, _) = watch_on(&late, &s1).await;
    let (mut c2, _) = watch_on(&late, &s2).await;
    let (mut c3, _) = watch_on(&late, &s3).await;
    let (mut c1_early, _) = watch_on(&stack.gateway, &s1).await;

    let mut object_json = fixtures::object_json(&object);
    object_json["width"] = json!(12);
    stack.publish("mesa-ya.objects.events", &fixtures::v2("updated", &object, object_json.clone())).await;
    expect_event(&mut c1, "v2 link made before start", "object.updated", &object_json).await;
    expect_event(&mut c2, "v1 link made before start", "object.updated", &object_json).await;
    expect_event(&mut c1_early, "the gateway that saw the link live", "object.updated", &object_json).await;

    let control = fixtures::section_json(&s3, "2026-01-12T00:00:00.000Z");
    stack.publish("mesa-ya.sections.events", &fixtures::v2("updated", &s3, control.clone())).await;
    expect_event(&mut c3, "a link deleted before start is not rebuilt", "section.updated", &control).await;
}

/// Malformed or unroutable records are counted by reason and
/// skipped, and the consumer keeps delivering after each one. The default
/// topic regex subscribes to the v1 selection-hint topics for this.
#[tokio::test]
async fn malformed_records_are_counted_and_skipped() {
    let stack = Stack::start_with(&[("KAFKA_MAX_RECORD_BYTES", (256 << 10).to_string())]).await;
    let (section, table, object, link) = (new_id(), new_id(), new_id(), new_id());
    stack.serve_section(&section, vec![fixtures::table_json(&table, &section, CREATED_AT)]);
    let (mut client, _) = stack.watch(&section).await;
    let link_json = fixtures::section_object_json(&link, &section, &object);
    stack.publish("mesa-ya.section-objects.events", &fixtures::v2("created", &link, link_json.clone())).await;
    expect_event(&mut client, "link", "section-object.created", &link_json).await;

    let table_event =
        |minute: u32| fixtures::table_json(&table, &section, &format!("2026-01-10T17:{minute:02}:00.000Z"));
    let mut padded = table_event(0);
    padded["notes"] = json!("x".repeat(300 << 10));
    let mut no_id = table_event(0);
    no_id.as_object_mut().unwrap().remove("id");
    let mut no_section = table_event(0);
    no_section.as_object_mut().unwrap().remove("sectionId");
    let sectionless_link = json!({"id": new_id(), "objectId": object});
    let mut bad_table_id = table_event(0);
    bad_table_id["id"] = json!("table-7");

    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("not_json", "mesa-ya.tables.events", br#"{"event_type":"updated","data":{"id""#.to_vec()),
        ("not_json", "mesa-ya.tables.events", br#"[{"event_type":"updated"}]"#.to_vec()),
        (
            "no_entity",
            "mesa-ya.tables.events",
            json!({"timestamp": CREATED_AT, "event_type": "updated", "entity_id": table}).to_string().into_bytes(),
        ),
        (
            "no_entity",
            "mesa-ya.tables.updated",
            json!({"action": "table.updated", "entityId": table, "entity": "tables"}).to_string().into_bytes(),
        ),
        ("no_id", "mesa-ya.tables.events", fixtures::v2("updated", "", no_id).to_string().into_bytes()),
        (
            "unknown_action",
            "mesa-ya.tables.events",
            fixtures::v2("status_changed", &table, table_event(0)).to_string().into_bytes(),
        ),
        ("no_section", "mesa-ya.tables.events", fixtures::v2("updated", &table, no_section).to_string().into_bytes()),
        (
            "no_section",
            "mesa-ya.section-objects.events",
            fixtures::v2("created", "", sectionless_link).to_string().into_bytes(),
        ),
        ("bad_id", "mesa-ya.tables.events", fixtures::v2("updated", "table-7", bad_table_id).to_string().into_bytes()),
        (
            "selection_hint",
            "mesa-ya.tables.selecting",
            fixtures::v1_table_selection("selecting", &table, &section).to_string().into_bytes(),
        ),
        (
            "selection_hint",
            "mesa-ya.tables.released",
            fixtures::v1_table_selection("released", &table, &section).to_string().into_bytes(),
        ),
        ("too_large", "mesa-ya.tables.events", fixtures::v2("updated", &table, padded).to_string().into_bytes()),
        // A depth bomb: it would take a recursive parser's stack, and the
        // start-up rebuild replays such a record on every restart.
        (
            "too_deep",
            "mesa-ya.section-objects.events",
            format!(r#"{{"event_type":"created","data":{{"id":"{link}","x":{}}}}}"#, "[".repeat(100_000)).into_bytes(),
        ),
    ];
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for (minute, (reason, topic, record)) in (1..).zip(cases) {
        let before = dropped(&stack, reason).await;
        stack.producer.send(topic, &record).await;
        wait::until_some(WAIT, &format!("{reason} counted for a record on {topic}"), || async {
            (dropped(&stack, reason).await >= before + 1.0).then_some(())
        })
        .await;
        *expected.entry(reason.to_string()).or_default() += 1.0;

        // Published after the skip was counted: it must be the next frame.
        let good = table_event(minute);
        stack.publish("mesa-ya.tables.events", &fixtures::v2("updated", &table, good.clone())).await;
        expect_event(&mut client, &format!("delivery after a {reason} record on {topic}"), "table.updated", &good)
            .await;
    }
    assert_eq!(dropped_by_reason(&stack).await, expected, "each record counted once, under its reason");
}

// ------------------------------------------------------------ sharding

/// With SHARDS=4 every connection of a section is served (counted in
/// `mesaya_connections`) by shard `SectionId::shard(4)` of its id, whichever
/// shard accepted the socket, and events reach all of them there.
#[tokio::test]
async fn every_connection_of_a_section_lives_on_the_shard_its_id_hashes_to() {
    const SHARDS: usize = 4;
    let stack = Stack::start_with(&[("SHARDS", SHARDS.to_string())]).await;
    let shard_of = |id: &str| SectionId::parse(id).unwrap().shard(SHARDS);

    // One section per shard, plus two more wherever they fall.
    let mut sections: Vec<String> = Vec::new();
    while (0..SHARDS).any(|k| !sections.iter().any(|s| shard_of(s) == k)) {
        let id = new_id();
        if !sections.iter().any(|s| shard_of(s) == shard_of(&id)) {
            sections.push(id);
        }
    }
    sections.push(new_id());
    sections.push(new_id());

    let mut clients: Vec<(String, WsClient)> = Vec::new();
    let mut expected = vec![0.0; SHARDS];
    for (i, section) in sections.iter().enumerate() {
        stack.serve_section(section, vec![]);
        let before = connections_per_shard(&stack, SHARDS).await;
        let count = 1 + i % 3;
        for _ in 0..count {
            clients.push((section.clone(), stack.watch(section).await.0));
        }
        let after = connections_per_shard(&stack, SHARDS).await;
        let owner = shard_of(section);
        expected[owner] += count as f64;
        let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut want = vec![0.0; SHARDS];
        want[owner] = count as f64;
        assert_eq!(delta, want, "{count} clients of {section} must all be on shard {owner}");
    }
    assert_eq!(connections_per_shard(&stack, SHARDS).await, expected);

    for section in &sections {
        let update = fixtures::section_json(section, "2026-01-10T18:00:00.000Z");
        stack.publish("mesa-ya.sections.events", &fixtures::v2("updated", section, update)).await;
    }
    for (section, client) in &mut clients {
        let update = fixtures::section_json(section, "2026-01-10T18:00:00.000Z");
        expect_event(client, &format!("client of {section}"), "section.updated", &update).await;
    }
}
