//! End to end: the whole floor plan of a section — objects in
//! snapshots and in link frames, the state a gateway started later rebuilds
//! before it is ready, links moved to another section, reservations that
//! arrive during a section's first snapshot, restaurant events, and routing
//! maps bounded by UUID ids and exported as gauges. The gateway binary
//! against a real tansu broker and the stand-in API. Clients that check
//! reservations and restaurants as sent connect as staff.
//!
//! As in routing.rs, every "receives nothing" is proved with a positive
//! control: once the event that must not arrive has demonstrably been
//! consumed, an event for the same client is published, and it must be the
//! client's very next frame. When an event on one topic must be handled
//! before one on another topic (an object before the link to it), the test
//! waits until the gateway consumed the first: one ingest thread handles
//! records one after the other.

mod common;

use std::time::Duration;

use common::*;
use mesaya_testkit::fixtures::{self, USER_ID, v2};
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::wait;
use mesaya_testkit::ws::WsClient;
use serde_json::{Value, json};
use tokio::time::Instant;

const SECTIONS: &str = "mesa-ya.sections.events";
const TABLES: &str = "mesa-ya.tables.events";
const OBJECTS: &str = "mesa-ya.objects.events";
const SECTION_OBJECTS: &str = "mesa-ya.section-objects.events";
const RESERVATIONS: &str = "mesa-ya.reservations.events";
const RESTAURANTS: &str = "mesa-ya.restaurants.events";
const CONSUMED: &str = "mesaya_events_consumed_total";
const DROPPED: &str = "mesaya_events_dropped_total";
const LINKS: &str = "mesaya_router_links";
/// The `kind`s of `mesaya_router_links`, in the order [`all_links`] reads them.
const LINK_KINDS: [&str; 4] = ["table", "section_object", "object", "restaurant"];
/// How long a reservation for a table nobody revealed yet is held.
const RESERVATION_HOLD: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

/// Publishes `entity` on the v2 `topic` as the MesaYa API does (`entity_id`
/// its `id`; reservations carry `metadata.user_id`).
async fn send_v2(stack: &Stack, topic: &str, event_type: &str, entity: &Value) {
    let id = entity["id"].as_str().expect("fixture entities have an id");
    let mut envelope = v2(event_type, id, entity.clone());
    if topic == RESERVATIONS {
        envelope["metadata"] = json!({"user_id": USER_ID});
    }
    stack.publish(topic, &envelope).await;
}

/// [`send_v2`], then waits until the stack's gateway consumed the record, so
/// that whatever is published next, on any topic, is handled after it.
async fn send_v2_consumed(stack: &Stack, topic: &str, event_type: &str, entity: &Value) {
    let before = stack.metric(CONSUMED, "").await;
    send_v2(stack, topic, event_type, entity).await;
    let what = format!("the gateway to consume a {event_type} on {topic}");
    wait_metric(stack, CONSUMED, &what, |consumed| consumed >= before + 1.0).await;
}

/// The client's next frame must be exactly `{"event": event, "payload": payload}`.
async fn expect_event(client: &mut WsClient, who: &str, event: &str, payload: &Value) {
    let frame = client.next_json(WAIT).await;
    assert_eq!(frame, json!({"event": event, "payload": payload}), "{who}: expected {event}");
}

/// A section-object link as the gateway sends it when it knows the object:
/// the link entity with the object entity under `object`.
fn with_object(link: &Value, object: &Value) -> Value {
    let mut link = link.clone();
    link["object"] = object.clone();
    link
}

/// `snapshot` must be the `section.snapshot` of `body` (the API's body,
/// unchanged) with `objects` added, holding exactly `objects` in any order.
fn assert_snapshot(who: &str, snapshot: &Value, body: &Value, objects: &[Value]) {
    assert_eq!(snapshot["event"], "section.snapshot", "{who}: {snapshot}");
    let mut payload = snapshot["payload"].clone();
    let added = payload.as_object_mut().and_then(|payload| payload.remove("objects"));
    let added = added.unwrap_or_else(|| panic!("{who}: the snapshot has no `objects`: {snapshot}"));
    let mut added = added.as_array().cloned().unwrap_or_else(|| panic!("{who}: `objects` is no array: {added}"));
    let mut expected = objects.to_vec();
    for list in [&mut added, &mut expected] {
        list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    }
    assert_eq!(payload, *body, "{who}: the API's body, as it came but for `objects`");
    assert_eq!(added, expected, "{who}: one element per link of the section");
}

/// The API's body for `section` of `restaurant` (the fixture section with
/// its `restaurantId` replaced).
fn section_of(restaurant: &str, section: &str, tables: Vec<Value>) -> Value {
    let mut body = fixtures::nest_snapshot(section, tables);
    body["restaurantId"] = json!(restaurant);
    body
}

/// `mesaya_events_dropped_total{reason="<reason>"}`.
async fn dropped(stack: &Stack, reason: &str) -> f64 {
    stack.metric(DROPPED, &format!(r#"reason="{reason}""#)).await
}

/// `mesaya_router_links{kind="<kind>"}`.
async fn links(stack: &Stack, kind: &str) -> f64 {
    stack.metric(LINKS, &format!(r#"kind="{kind}""#)).await
}

/// Every `mesaya_router_links` gauge, in [`LINK_KINDS`] order, from one scrape.
async fn all_links(stack: &Stack) -> [f64; 4] {
    let (status, body) = stack.gateway.get("/metrics").await;
    assert_eq!(status, 200);
    LINK_KINDS.map(|kind| metric_value(&body, LINKS, &format!(r#"kind="{kind}""#)))
}

/// Waits until `mesaya_router_links{kind}` is `expected` (gauges are set
/// after the record that changed the maps has been routed).
async fn wait_links(stack: &Stack, kind: &str, expected: f64) {
    let what = format!("{LINKS}{{kind=\"{kind}\"}} to be {expected}");
    wait::until_some(WAIT, &what, || async { (links(stack, kind).await == expected).then_some(()) }).await;
}

/// A second gateway on `stack`'s broker and API, started once
/// `mesa-ya.restaurants.events` exists: tansu creates topics only when
/// asked, and a gateway that subscribed before would see the topic only at
/// a later metadata refresh, from its latest offset.
async fn gateway_with_restaurants_topic(stack: &Stack) -> Gateway {
    stack.broker.create_topic(RESTAURANTS, 1).await;
    let mut gateway = Gateway::start(binary(), &gateway_env(&stack.broker, &stack.api, &[]));
    gateway.wait_ready(WAIT).await;
    gateway
}

// ------------------------------------------------------ 1. objects

/// The gateway keeps every link and the latest entity of every object from
/// Kafka: a snapshot whose body has no `objects` gets one element per link
/// of its section (with `object` when the object was seen, without it
/// otherwise; empty without links); link frames carry `object` too; an
/// object created before any link reaches nobody yet shows up in the link
/// made later; object updates reach every linking section; a body that has
/// its own `objects` (empty or not) is sent as it is.
#[tokio::test]
async fn snapshots_and_link_frames_carry_the_latest_entity_of_every_linked_object() {
    let stack = Stack::start().await;
    let (a, b) = (new_id(), new_id());
    let (known, unknown, never) = (new_id(), new_id(), new_id());
    let body_a = fixtures::nest_snapshot(&a, vec![table(&new_id(), &a, 0)]);
    let body_b = fixtures::nest_snapshot(&b, vec![]);
    stack.api.set_section(&a, body_a.clone());
    stack.api.set_section(&b, body_b.clone());

    let (mut client_a, snapshot) = stack.watch(&a).await;
    assert_snapshot("A without links", &snapshot, &body_a, &[]);
    let (mut client_b, snapshot) = stack.watch(&b).await;
    assert_snapshot("B without links", &snapshot, &body_b, &[]);

    // Created before any link: it reaches nobody (the link frame is A's
    // next frame), but the link frame carries it.
    let mut object = fixtures::object_json(&known);
    send_v2_consumed(&stack, OBJECTS, "created", &object).await;
    let link_known = fixtures::section_object_json(&new_id(), &a, &known);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_known).await;
    let who = "a link to an object created earlier, and nothing before it";
    expect_event(&mut client_a, who, "section-object.created", &with_object(&link_known, &object)).await;

    // A link to an object never seen: no `object` key.
    let link_unknown = fixtures::section_object_json(&new_id(), &a, &unknown);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_unknown).await;
    expect_event(&mut client_a, "a link to an unseen object", "section-object.created", &link_unknown).await;

    // An update reaches the linking section; a link made afterwards (in B)
    // carries that latest version; the next update reaches both sections.
    object["posX"] = json!(41);
    object["updatedAt"] = json!(version(1));
    send_v2(&stack, OBJECTS, "updated", &object).await;
    expect_event(&mut client_a, "a linked object's update", "object.updated", &object).await;
    let link_b = fixtures::section_object_json(&new_id(), &b, &known);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_b).await;
    let who = "a second link, with the object's latest version";
    expect_event(&mut client_b, who, "section-object.created", &with_object(&link_b, &object)).await;
    object["posX"] = json!(42);
    object["updatedAt"] = json!(version(2));
    send_v2(&stack, OBJECTS, "updated", &object).await;
    expect_event(&mut client_a, "A: an object linked by A and B", "object.updated", &object).await;
    expect_event(&mut client_b, "B: an object linked by A and B", "object.updated", &object).await;

    // The object of the second link of A appears after its link: it reaches
    // A, and the link's next update carries it.
    let late_object = fixtures::object_json(&unknown);
    send_v2(&stack, OBJECTS, "created", &late_object).await;
    expect_event(&mut client_a, "an object created after its link", "object.created", &late_object).await;
    let mut link_unknown = link_unknown;
    link_unknown["updatedAt"] = json!(version(3));
    send_v2(&stack, SECTION_OBJECTS, "updated", &link_unknown).await;
    let who = "a link update, with the object seen since";
    expect_event(&mut client_a, who, "section-object.updated", &with_object(&link_unknown, &late_object)).await;

    // A third link of A, to an object nobody ever publishes; then the first
    // link goes (its delete is sent as it came).
    let link_never = fixtures::section_object_json(&new_id(), &a, &never);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_never).await;
    expect_event(&mut client_a, "a link to an object never seen", "section-object.created", &link_never).await;
    send_v2(&stack, SECTION_OBJECTS, "deleted", &link_known).await;
    expect_event(&mut client_a, "a deleted link", "section-object.deleted", &link_known).await;

    // New clients get the links as they stand, each with its object's latest entity,
    // though the API's bodies are the same bytes as before and are not parsed again.
    let reused = || stack.metric("mesaya_snapshot_bodies_reused_total", "");
    assert_eq!(reused().await, 0.0);
    let (_, snapshot) = stack.watch(&a).await;
    let expected = [with_object(&link_unknown, &late_object), link_never.clone()];
    assert_snapshot("A after the changes", &snapshot, &body_a, &expected);
    let (_, snapshot) = stack.watch(&b).await;
    assert_snapshot("B after the changes", &snapshot, &body_b, &[with_object(&link_b, &object)]);
    assert_eq!(reused().await, 2.0, "each section's owning shard read its body before");

    // Bodies that have `objects` of their own are sent as they are, though
    // the gateway knows a link of each section.
    for own_links in [1, 0] {
        let section = new_id();
        let link = fixtures::section_object_json(&new_id(), &section, &known);
        send_v2_consumed(&stack, SECTION_OBJECTS, "created", &link).await;
        let own: Vec<Value> =
            (0..own_links).map(|_| fixtures::section_object_json(&new_id(), &section, &new_id())).collect();
        let mut body = fixtures::nest_snapshot(&section, vec![]);
        body["objects"] = json!(own);
        stack.api.set_section(&section, body.clone());
        let (_, snapshot) = stack.watch(&section).await;
        assert_eq!(snapshot["payload"], body, "a body with its own `objects` is sent as it is");
    }
}

// ------------------------------------------------------ 2. rebuilt at start

/// Links, object entities (latest version, linked or not yet, v1 or v2) and
/// table → section links published before a gateway starts are known to it
/// once `/readyz` says 200: its first snapshot has the objects, a link made
/// afterwards to an object seen before start carries it, and a reservation
/// for a table the API does not show reaches the table's section.
#[tokio::test]
async fn a_gateway_started_later_rebuilds_links_objects_and_tables_before_it_is_ready() {
    let stack = Stack::start().await;
    let (s1, s2, t) = (new_id(), new_id(), new_id());
    let (o_updated, o_unseen, o_unlinked, o_v1) = (new_id(), new_id(), new_id(), new_id());

    let mut updated = fixtures::object_json(&o_updated);
    send_v2(&stack, OBJECTS, "created", &updated).await;
    updated["posX"] = json!(41);
    updated["updatedAt"] = json!(version(1));
    send_v2(&stack, OBJECTS, "updated", &updated).await;
    let unlinked = fixtures::object_json(&o_unlinked);
    send_v2(&stack, OBJECTS, "created", &unlinked).await;
    let v1_object = fixtures::object_json(&o_v1);
    stack.publish("mesa-ya.objects.created", &fixtures::v1("object.created", None, v1_object.clone())).await;

    let link_updated = fixtures::section_object_json(&new_id(), &s1, &o_updated);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_updated).await;
    let link_unseen = fixtures::section_object_json(&new_id(), &s1, &o_unseen);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_unseen).await;
    let link_v1 = fixtures::section_object_json(&new_id(), &s1, &o_v1);
    let v1_link = fixtures::v1("section-object.created", None, link_v1.clone());
    stack.publish("mesa-ya.section-objects.created", &v1_link).await;
    let link_gone = fixtures::section_object_json(&new_id(), &s1, &o_updated);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_gone).await;
    send_v2(&stack, SECTION_OBJECTS, "deleted", &link_gone).await;

    // Table t is in s2 only according to the tables topic.
    let mut table_t = table(&t, &s2, 0);
    send_v2(&stack, TABLES, "created", &table_t).await;
    table_t["capacity"] = json!(6);
    table_t["updatedAt"] = json!(version(1));
    send_v2(&stack, TABLES, "updated", &table_t).await;
    let (body_s1, body_s2) = (fixtures::nest_snapshot(&s1, vec![]), fixtures::nest_snapshot(&s2, vec![]));
    stack.api.set_section(&s1, body_s1.clone());
    stack.api.set_section(&s2, body_s2.clone());

    let mut late = Gateway::start(binary(), &gateway_env(&stack.broker, &stack.api, &[]));
    late.wait_ready(WAIT).await;
    let (_, metrics) = late.get("/metrics").await;
    let gauge = |kind: &str| metric_value(&metrics, LINKS, &format!(r#"kind="{kind}""#));
    assert_eq!(gauge("section_object"), 3.0, "three links rebuilt, the deleted one not: {metrics}");
    assert_eq!(gauge("table"), 1.0, "the table rebuilt from the tables topic: {metrics}");

    let (mut c1, snapshot) = watch_staff_on(&late, &s1).await;
    let expected = [with_object(&link_updated, &updated), link_unseen.clone(), with_object(&link_v1, &v1_object)];
    assert_snapshot("the late gateway's first snapshot", &snapshot, &body_s1, &expected);
    let link_unlinked = fixtures::section_object_json(&new_id(), &s1, &o_unlinked);
    send_v2(&stack, SECTION_OBJECTS, "created", &link_unlinked).await;
    let who = "a link to an object seen only before start";
    expect_event(&mut c1, who, "section-object.created", &with_object(&link_unlinked, &unlinked)).await;

    let (mut c2, snapshot) = watch_staff_on(&late, &s2).await;
    assert_snapshot("a section without links", &snapshot, &body_s2, &[]);
    let reservation = fixtures::reservation_json(&new_id(), &t);
    send_v2(&stack, RESERVATIONS, "created", &reservation).await;
    let who = "a reservation for a table known only from the tables topic";
    expect_event(&mut c2, who, "reservation.created", &reservation).await;
}

// ------------------------------------------------------ 3. moved links

/// A section-object update naming another section moves the link: the new
/// section gets `section-object.updated` (with the object), the old one
/// `section-object.deleted` with the updated link as sent; the object then
/// reaches the new section only, and snapshots agree.
#[tokio::test]
async fn a_link_moved_to_another_section_is_deleted_from_the_old_one() {
    let stack = Stack::start().await;
    let (a, b, o) = (new_id(), new_id(), new_id());
    let (body_a, body_b) = (fixtures::nest_snapshot(&a, vec![]), fixtures::nest_snapshot(&b, vec![]));
    stack.api.set_section(&a, body_a.clone());
    stack.api.set_section(&b, body_b.clone());
    let (mut client_a, _) = stack.watch(&a).await;
    let (mut client_b, _) = stack.watch(&b).await;

    let mut object = fixtures::object_json(&o);
    send_v2_consumed(&stack, OBJECTS, "created", &object).await;
    let link = fixtures::section_object_json(&new_id(), &a, &o);
    send_v2(&stack, SECTION_OBJECTS, "created", &link).await;
    expect_event(&mut client_a, "the link", "section-object.created", &with_object(&link, &object)).await;

    let mut moved = link.clone();
    moved["sectionId"] = json!(b);
    moved["updatedAt"] = json!(version(1));
    send_v2(&stack, SECTION_OBJECTS, "updated", &moved).await;
    expect_event(&mut client_b, "the new section", "section-object.updated", &with_object(&moved, &object)).await;
    expect_event(&mut client_a, "the old section", "section-object.deleted", &moved).await;

    object["width"] = json!(12);
    object["updatedAt"] = json!(version(2));
    send_v2(&stack, OBJECTS, "updated", &object).await;
    expect_event(&mut client_b, "the object, in its new section", "object.updated", &object).await;
    let control = fixtures::section_json(&a, &version(3));
    send_v2(&stack, SECTIONS, "updated", &control).await;
    expect_event(&mut client_a, "the object no longer reaches the old section", "section.updated", &control).await;

    let (_, snapshot) = stack.watch(&a).await;
    assert_snapshot("the old section", &snapshot, &body_a, &[]);
    let (_, snapshot) = stack.watch(&b).await;
    assert_snapshot("the new section", &snapshot, &body_b, &[with_object(&moved, &object)]);
}

// ------------------------------------------------------ 4. held reservations

/// A reservation consumed while the first client of a section waits for
/// its snapshot (the table known to nobody yet) follows the snapshot; one
/// for a table that a later table event reveals reaches the section with
/// that event. Nothing is dropped.
#[tokio::test]
async fn reservations_for_tables_not_yet_known_are_held_until_a_snapshot_or_table_event_reveals_them() {
    let stack = Stack::start().await;
    let (section, t, t_later) = (new_id(), new_id(), new_id());
    stack.serve_section(&section, vec![table(&t, &section, 0)]);

    let held = stack.api.hold(&section);
    let mut client = WsClient::connect(&stack.ws_url(&section, &staff_token())).await.expect("upgrade");
    wait::until(WAIT, "the snapshot call", || stack.api.call_count(&section) == 1).await;
    let reservation = fixtures::reservation_json(&new_id(), &t);
    send_v2_consumed(&stack, RESERVATIONS, "created", &reservation).await;
    held.release();
    let snapshot = client.next_json(WAIT).await;
    assert_eq!(snapshot["event"], "section.snapshot", "the snapshot comes first: {snapshot}");
    expect_event(&mut client, "a reservation made during the snapshot", "reservation.created", &reservation).await;

    // Revealed by a table event instead: both frames reach the section (the
    // spec orders neither before the other).
    let later = fixtures::reservation_json(&new_id(), &t_later);
    send_v2_consumed(&stack, RESERVATIONS, "created", &later).await;
    let created = table(&t_later, &section, 1);
    send_v2(&stack, TABLES, "created", &created).await;
    let mut frames = vec![client.next_json(WAIT).await, client.next_json(WAIT).await];
    frames.sort_by_key(|frame| frame["event"].as_str().map(str::to_owned));
    let expected = vec![
        json!({"event": "reservation.created", "payload": later}),
        json!({"event": "table.created", "payload": created}),
    ];
    assert_eq!(frames, expected, "the table event and the reservation it revealed");
    assert_eq!(stack.metric(DROPPED, "").await, 0.0, "nothing was dropped");
}

/// A reservation for a table nobody reveals is counted as `held_expired`
/// once, 5 s after it was consumed, and is not sent when the table shows
/// up afterwards.
#[tokio::test]
async fn a_reservation_for_a_table_nobody_reveals_is_dropped_after_five_seconds() {
    let stack = Stack::start().await;
    let (section, t) = (new_id(), new_id());
    stack.serve_section(&section, vec![]);
    let (mut client, _) = stack.watch(&section).await;

    let before = dropped(&stack, "held_expired").await;
    let reservation = fixtures::reservation_json(&new_id(), &t);
    let published = Instant::now();
    send_v2(&stack, RESERVATIONS, "created", &reservation).await;
    let expired = wait::until_some(WAIT, "held_expired to count the reservation", || async {
        let now = dropped(&stack, "held_expired").await;
        (now > before).then_some(now)
    })
    .await;
    let waited = published.elapsed();
    assert_eq!(expired, before + 1.0, "counted once");
    // The record may be consumed a moment before the producer sees its
    // acknowledgement, hence the margin.
    let margin = Duration::from_millis(300);
    assert!(waited + margin >= RESERVATION_HOLD, "held {waited:?}, less than {RESERVATION_HOLD:?}");

    // The table shows up too late: the reservation stays dropped.
    let created = table(&t, &section, 1);
    send_v2(&stack, TABLES, "created", &created).await;
    expect_event(&mut client, "the table, late", "table.created", &created).await;
    let control = fixtures::section_json(&section, &version(2));
    send_v2(&stack, SECTIONS, "updated", &control).await;
    expect_event(&mut client, "an expired reservation is never sent", "section.updated", &control).await;
}

// ------------------------------------------------------ 5. restaurants

/// `restaurant.updated` and `restaurant.status_changed` reach every section
/// of the restaurant (known from a snapshot's or a section event's
/// `restaurantId`) and no other; `restaurant.created` reaches nobody;
/// `restaurant.deleted` reaches the restaurant's sections, whose clients are
/// then closed with 1000, while other restaurants' clients stay.
#[tokio::test]
async fn restaurant_events_reach_every_section_of_the_restaurant_and_a_delete_closes_them() {
    let stack = Stack::start().await;
    let gateway = gateway_with_restaurants_topic(&stack).await;
    let (r1, r2) = (new_id(), new_id());
    let (s1, s2, s_event, s_other) = (new_id(), new_id(), new_id(), new_id());
    stack.api.set_section(&s1, section_of(&r1, &s1, vec![table(&new_id(), &s1, 0)]));
    stack.api.set_section(&s2, section_of(&r1, &s2, vec![]));
    stack.api.set_section(&s_other, section_of(&r2, &s_other, vec![]));
    // This one's body names no restaurant: a section event will.
    let mut anonymous = fixtures::nest_snapshot(&s_event, vec![]);
    anonymous.as_object_mut().expect("an object").remove("restaurantId");
    stack.api.set_section(&s_event, anonymous);

    let (mut c1, _) = watch_staff_on(&gateway, &s1).await;
    let (mut c2, _) = watch_staff_on(&gateway, &s2).await;
    let (mut c_event, _) = watch_staff_on(&gateway, &s_event).await;
    let (mut c_other, _) = watch_staff_on(&gateway, &s_other).await;
    let mut section = fixtures::section_json(&s_event, &version(1));
    section["restaurantId"] = json!(r1);
    send_v2(&stack, SECTIONS, "updated", &section).await;
    expect_event(&mut c_event, "the section event naming its restaurant", "section.updated", &section).await;
    let mut r1_clients = [(&mut c1, "s1"), (&mut c2, "s2"), (&mut c_event, "the section learned from its event")];

    let mut restaurant = fixtures::restaurant_json(&r1);
    send_v2(&stack, RESTAURANTS, "created", &restaurant).await;
    restaurant["name"] = json!("La Terraza de Guápulo");
    restaurant["updatedAt"] = json!(version(1));
    send_v2(&stack, RESTAURANTS, "updated", &restaurant).await;
    let mut status = restaurant.clone();
    status["status"] = json!("SUSPENDED");
    status["active"] = json!(false);
    status["updatedAt"] = json!(version(2));
    send_v2(&stack, RESTAURANTS, "status_changed", &status).await;
    for (client, who) in &mut r1_clients {
        let who = format!("{who} (and no restaurant.created before it)");
        expect_event(client, &who, "restaurant.updated", &restaurant).await;
        expect_event(client, &who, "restaurant.status_changed", &status).await;
    }

    // The other restaurant's section got none of that: its own event is next.
    let other = fixtures::restaurant_json(&r2);
    send_v2(&stack, RESTAURANTS, "updated", &other).await;
    expect_event(&mut c_other, "nothing of r1 reaches r2's section", "restaurant.updated", &other).await;

    // Nothing of r2 reached r1's sections: the delete is all they get, then 1000.
    let mut deleted = status.clone();
    deleted["updatedAt"] = json!(version(3));
    send_v2(&stack, RESTAURANTS, "deleted", &deleted).await;
    for (client, who) in &mut r1_clients {
        let (frames, code, _) = client.frames_until_close(WAIT).await;
        let frames: Vec<Value> = frames.iter().map(frame_json).collect();
        assert_eq!(frames, vec![json!({"event": "restaurant.deleted", "payload": deleted})], "{who}");
        assert_eq!(code, 1000, "{who}: closed normally after the delete");
    }
    let control = fixtures::section_json(&s_other, &version(4));
    send_v2(&stack, SECTIONS, "updated", &control).await;
    expect_event(&mut c_other, "r2's section stays open and untouched", "section.updated", &control).await;
}

// ------------------------------------------------------ 6. bounded maps

/// Records whose own id or routing id (`sectionId`, `tableId`, `objectId`)
/// is not a UUID are counted as `bad_id` and skipped — none reaches the
/// section it names, none grows a routing map, and the next record is
/// delivered. The map sizes are exported: they grow with a section's tables,
/// links, objects and restaurant, and shrink back when the section (or a
/// table) is deleted.
#[tokio::test]
async fn ids_that_are_not_uuids_are_dropped_and_the_routing_maps_shrink_with_deleted_sections() {
    let stack = Stack::start().await;
    let (s, t) = (new_id(), new_id());
    stack.serve_section(&s, vec![table(&t, &s, 0)]);
    let (mut client, _) = stack.watch(&s).await;
    let good = |n: u64| table(&t, &s, n);
    send_v2(&stack, TABLES, "updated", &good(1)).await;
    expect_event(&mut client, "the first update", "table.updated", &good(1)).await;
    let maps = all_links(&stack).await;

    let long = "f".repeat(10_000);
    let entity = |fixture: Value, field: &str, value: &str| {
        let mut entity = fixture;
        entity[field] = json!(value);
        entity
    };
    let cases: Vec<(&str, &str, Value)> = vec![
        ("a table's id", TABLES, entity(table(&t, &s, 9), "id", "table-1")),
        ("a table's id of 10 000 characters", TABLES, entity(table(&t, &s, 9), "id", &long)),
        ("a table's sectionId", TABLES, entity(table(&new_id(), &s, 9), "sectionId", "section-1")),
        ("a table's sectionId with a suffix", TABLES, entity(table(&new_id(), &s, 9), "sectionId", &format!("{s}-2"))),
        ("a section's id", SECTIONS, entity(fixtures::section_json(&s, &version(9)), "id", "section-1")),
        ("an object's id", OBJECTS, entity(fixtures::object_json(&new_id()), "id", "object-1")),
        (
            "a link's id",
            SECTION_OBJECTS,
            entity(fixtures::section_object_json(&new_id(), &s, &new_id()), "id", "link-1"),
        ),
        (
            "a link's sectionId",
            SECTION_OBJECTS,
            entity(fixtures::section_object_json(&new_id(), &s, &new_id()), "sectionId", "section-1"),
        ),
        (
            "a link's objectId",
            SECTION_OBJECTS,
            entity(fixtures::section_object_json(&new_id(), &s, &new_id()), "objectId", "object-1"),
        ),
        ("a reservation's id", RESERVATIONS, entity(fixtures::reservation_json(&new_id(), &t), "id", "reservation-1")),
        (
            "a reservation's tableId",
            RESERVATIONS,
            entity(fixtures::reservation_json(&new_id(), &t), "tableId", "table-1"),
        ),
    ];
    let count = cases.len() as f64;
    for (n, (what, topic, entity)) in (2..).zip(cases) {
        let before = dropped(&stack, "bad_id").await;
        send_v2(&stack, topic, "created", &entity).await;
        wait::until_some(WAIT, &format!("bad_id to count {what}"), || async {
            (dropped(&stack, "bad_id").await >= before + 1.0).then_some(())
        })
        .await;
        // Published after the skip was counted: it must be the next frame.
        send_v2(&stack, TABLES, "updated", &good(n)).await;
        expect_event(&mut client, &format!("the update after {what}"), "table.updated", &good(n)).await;
    }
    assert_eq!(dropped(&stack, "bad_id").await, count, "each record counted once");
    assert_eq!(stack.metric(DROPPED, "").await, count, "under bad_id only");
    assert_eq!(all_links(&stack).await, maps, "no skipped record grew a map ({LINK_KINDS:?})");

    // A section of a restaurant of its own, with tables from its snapshot
    // and from events, two links and their objects.
    let [tables, section_objects, objects, restaurants] = maps;
    let (d, restaurant) = (new_id(), new_id());
    let (t1, t2, t3, t4) = (new_id(), new_id(), new_id(), new_id());
    stack.api.set_section(&d, section_of(&restaurant, &d, vec![table(&t1, &d, 0), table(&t2, &d, 0)]));
    let (mut client_d, _) = stack.watch(&d).await;
    send_v2(&stack, TABLES, "created", &table(&t3, &d, 1)).await;
    expect_event(&mut client_d, "a table event", "table.created", &table(&t3, &d, 1)).await;
    wait_links(&stack, "table", tables + 3.0).await;
    wait_links(&stack, "restaurant", restaurants + 1.0).await;
    send_v2(&stack, TABLES, "created", &table(&t4, &d, 1)).await;
    expect_event(&mut client_d, "another table", "table.created", &table(&t4, &d, 1)).await;
    wait_links(&stack, "table", tables + 4.0).await;
    // Another spelling of the same UUID is the same table: the delete below
    // leaves no second entry behind.
    let shouted = table(&format!("{{{}}}", t4.to_uppercase()), &d, 2);
    send_v2(&stack, TABLES, "updated", &shouted).await;
    expect_event(&mut client_d, "the table, spelled otherwise", "table.updated", &shouted).await;
    send_v2(&stack, TABLES, "deleted", &table(&t4, &d, 1)).await;
    expect_event(&mut client_d, "a deleted table", "table.deleted", &table(&t4, &d, 1)).await;
    wait_links(&stack, "table", tables + 3.0).await;

    for _ in 0..2 {
        let object = new_id();
        send_v2_consumed(&stack, OBJECTS, "created", &fixtures::object_json(&object)).await;
        let link = fixtures::section_object_json(&new_id(), &d, &object);
        send_v2(&stack, SECTION_OBJECTS, "created", &link).await;
        let frame = with_object(&link, &fixtures::object_json(&object));
        expect_event(&mut client_d, "a link", "section-object.created", &frame).await;
    }
    wait_links(&stack, "section_object", section_objects + 2.0).await;
    wait_links(&stack, "object", objects + 2.0).await;

    // Deleting the section takes its tables, links and restaurant link out
    // of the maps (the database cascades; no per-table or per-link events).
    let mut deleted = section_of(&restaurant, &d, vec![table(&t1, &d, 0), table(&t2, &d, 0), table(&t3, &d, 1)]);
    deleted["updatedAt"] = json!(version(5));
    send_v2(&stack, SECTIONS, "deleted", &deleted).await;
    let (frames, code, _) = client_d.frames_until_close(WAIT).await;
    let frames: Vec<Value> = frames.iter().map(frame_json).collect();
    assert_eq!((frames, code), (vec![json!({"event": "section.deleted", "payload": deleted})], 1000));
    wait_links(&stack, "table", tables).await;
    wait_links(&stack, "section_object", section_objects).await;
    wait_links(&stack, "restaurant", restaurants).await;
}

/// A rebuilt topic whose retention is finite gets one warning at start
/// (what is older than that cannot be rebuilt); the gateway is ready all
/// the same. Topics without a finite retention get none.
#[tokio::test]
async fn a_finite_retention_on_a_rebuilt_topic_is_warned_about_once_at_start() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;

    let stack = Stack::start().await;
    // An objects topic (so rebuilt) that this test adds to the default ones.
    let short_lived = "mesa-ya.objects.short-lived";
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", stack.broker.bootstrap()).create().expect("admin client");
    let topic = NewTopic::new(short_lived, 1, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    for created in admin.create_topics([&topic], &AdminOptions::new()).await.expect("create_topics") {
        created.unwrap_or_else(|(name, error)| panic!("creating {name}: {error}"));
    }

    let topics = format!("{},{short_lived}", mesaya_realtime::config::DEFAULT_TOPICS);
    let mut late = Gateway::start(binary(), &gateway_env(&stack.broker, &stack.api, &[("KAFKA_TOPICS", topics)]));
    late.wait_ready(WAIT).await;
    let logs = late.logs();
    let warnings: Vec<&str> = logs.lines().filter(|line| line.contains("finite retention")).collect();
    assert_eq!(warnings.len(), 1, "one warning, for the one topic with a finite retention: {warnings:?}");
    assert!(warnings[0].contains(short_lived) && warnings[0].contains("3600000"), "{}", warnings[0]);
}
