//! End to end: who sees what (SPEC §2.7). A reservation's personal fields
//! reach only the restaurant's staff (a role of `WS_STAFF_ROLES`, or the
//! `OWNER` whose `sub` is the restaurant's `ownerId`, learned from
//! restaurant events) and the diner who made it; everyone else gets the
//! `WS_PUBLIC_RESERVATION_FIELDS` of it, and restaurants without their
//! business fields — live and replayed alike. Real gateway binaries, a
//! real tansu broker, the stand-in API, real sockets.

mod common;

use common::*;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::fixtures::{self, v2};
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::tokens::TokenBuilder;
use mesaya_testkit::wait;
use mesaya_testkit::ws::WsClient;
use serde_json::{Map, Value, json};

const RESTAURANTS: &str = "mesa-ya.restaurants.events";
const RESERVATIONS: &str = "mesa-ya.reservations.events";
const LINKS: &str = "mesaya_router_links";
const AUDIENCES: &str = "mesaya_audience_connections";
const CUT: &str = "mesaya_frames_cut_total";
const RESUME_SECRET: &str = "audience-test-resume-secret-0123456789";

/// What everyone sees of a reservation by default.
const PUBLIC_RESERVATION: [&str; 9] = [
    "id",
    "restaurantId",
    "tableId",
    "reservationDate",
    "reservationTime",
    "numberOfGuests",
    "status",
    "createdAt",
    "updatedAt",
];
const PUBLIC_RESTAURANT: [&str; 13] = [
    "id",
    "name",
    "description",
    "location",
    "openTime",
    "closeTime",
    "daysOpen",
    "totalCapacity",
    "imageId",
    "status",
    "active",
    "createdAt",
    "updatedAt",
];

/// The broker (with the restaurants topic), the API and a producer.
struct Upstream {
    broker: Broker,
    api: StandInApi,
    producer: EventProducer,
}

impl Upstream {
    async fn start() -> Upstream {
        let broker = Broker::start_memory().await;
        // tansu creates topics only when asked: before any gateway subscribes.
        broker.create_topic(RESTAURANTS, 1).await;
        let api = StandInApi::start();
        let producer = EventProducer::new(&broker.bootstrap());
        Upstream { broker, api, producer }
    }

    async fn gateway(&self, extra: &[(&str, String)]) -> Gateway {
        let mut gateway = Gateway::start(binary(), &gateway_env(&self.broker, &self.api, extra));
        gateway.wait_ready(WAIT).await;
        gateway
    }

    async fn publish(&self, topic: &str, event_type: &str, entity: &Value) {
        let id = entity["id"].as_str().expect("fixture entities have an id");
        self.producer.send_json(topic, &v2(event_type, id, entity.clone())).await;
    }

    /// A section of `restaurant` with one table, served by the API.
    fn serve(&self, restaurant: &str) -> Floor {
        let (section, table) = (new_id(), new_id());
        let mut body = fixtures::nest_snapshot(&section, vec![common::table(&table, &section, 0)]);
        body["restaurantId"] = json!(restaurant);
        self.api.set_section(&section, body);
        Floor { section, table }
    }
}

struct Floor {
    section: String,
    table: String,
}

fn token_for(sub: &str, roles: &[&str]) -> String {
    TokenBuilder::new().sub(sub).roles(roles).hs256(SECRET)
}

/// Connects as `sub` with `roles` and reads the snapshot.
async fn watch_as(gateway: &Gateway, section: &str, sub: &str, roles: &[&str]) -> WsClient {
    let url = gateway.ws_url(&format!("/ws/restaurant/{section}/{}", token_for(sub, roles)));
    let mut client = WsClient::connect(&url).await.unwrap_or_else(|(status, body)| panic!("refused: {status} {body}"));
    assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
    client
}

/// A reservation by `diner` with the API's personal fields and one field
/// no operator listed.
fn reservation(table: &str, diner: &str) -> Value {
    let mut reservation = fixtures::reservation_json(&new_id(), table);
    reservation["userId"] = json!(diner);
    reservation["userName"] = json!("Ana Diner");
    reservation["userEmail"] = json!("ana@example.test");
    reservation["loyaltyTier"] = json!("gold");
    reservation
}

/// `entity` with only `fields`.
fn only(entity: &Value, fields: &[&str]) -> Value {
    let kept: Map<String, Value> = entity
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| fields.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

async fn expect_payload(client: &mut WsClient, who: &str, event: &str, payload: &Value) {
    let frame = client.next_json(WAIT).await;
    assert_eq!(frame, json!({"event": event, "payload": payload}), "{who}");
}

async fn metric(gateway: &Gateway, name: &str, labels: &str) -> f64 {
    let (status, body) = gateway.get("/metrics").await;
    assert_eq!(status, 200);
    metric_value(&body, name, labels)
}

async fn wait_owners(gateway: &Gateway, owners: f64) {
    let what = format!("{owners} restaurant owners known");
    wait::until_some(WAIT, &what, || async {
        (metric(gateway, LINKS, r#"kind="restaurant_owner""#).await == owners).then_some(())
    })
    .await;
}

// ----------------------------------------------------------------- tests

/// Staff (ADMIN, the restaurant's OWNER) and the diner get a reservation
/// whole; another diner, the owner of another restaurant and an owner on
/// a restaurant nobody announced get the public fields only, and never the
/// field the upstream added unlisted. Restaurant events lose their business
/// fields for the public. A new gateway process learns the owner again from
/// the retained restaurants topic.
#[tokio::test]
async fn reservations_reach_staff_and_their_diner_whole_and_everyone_else_cut() {
    let up = Upstream::start().await;
    let gateway = up.gateway(&[]).await;
    let (restaurant_id, owner, other_owner, diner, other_diner) = (new_id(), new_id(), new_id(), new_id(), new_id());
    let mut restaurant = fixtures::restaurant_json(&restaurant_id);
    restaurant["ownerId"] = json!(owner);
    restaurant["adminNote"] = json!("pays late");
    up.publish(RESTAURANTS, "created", &restaurant).await;
    wait_owners(&gateway, 1.0).await;

    let floor = up.serve(&restaurant_id);
    let unknown = up.serve(&new_id());
    let mut whole = [
        (watch_as(&gateway, &floor.section, &new_id(), &["ADMIN"]).await, "ADMIN"),
        (watch_as(&gateway, &floor.section, &owner.to_uppercase(), &["OWNER"]).await, "the restaurant's OWNER"),
        (watch_as(&gateway, &floor.section, &diner, &["USER"]).await, "the diner"),
    ];
    let mut public = [
        (watch_as(&gateway, &floor.section, &other_diner, &["USER"]).await, "another diner"),
        (watch_as(&gateway, &floor.section, &other_owner, &["OWNER"]).await, "another restaurant's OWNER"),
        (watch_as(&gateway, &floor.section, &new_id(), &["ADMIN_ASSISTANT", "USER"]).await, "an unknown role"),
    ];
    let mut on_unknown = watch_as(&gateway, &unknown.section, &owner, &["OWNER"]).await;
    assert_eq!(metric(&gateway, AUDIENCES, r#"audience="staff""#).await, 2.0, "ADMIN and the owner");
    assert_eq!(metric(&gateway, AUDIENCES, r#"audience="public""#).await, 5.0);

    let booked = reservation(&floor.table, &diner);
    let theirs = reservation(&floor.table, &new_id());
    up.publish(RESERVATIONS, "created", &booked).await;
    up.publish(RESERVATIONS, "created", &theirs).await;
    let cut = only(&booked, &PUBLIC_RESERVATION);
    assert!(cut.get("userId").is_none() && cut.get("loyaltyTier").is_none());
    let theirs_cut = only(&theirs, &PUBLIC_RESERVATION);
    for (client, who) in &mut whole[..2] {
        expect_payload(client, who, "reservation.created", &booked).await;
        expect_payload(client, who, "reservation.created", &theirs).await;
    }
    let (diner_client, who) = &mut whole[2];
    expect_payload(diner_client, who, "reservation.created", &booked).await;
    expect_payload(diner_client, "the diner, on someone else's", "reservation.created", &theirs_cut).await;
    for (client, who) in &mut public {
        expect_payload(client, who, "reservation.created", &cut).await;
        expect_payload(client, who, "reservation.created", &theirs_cut).await;
    }
    let mut elsewhere = reservation(&unknown.table, &diner);
    elsewhere["restaurantId"] = json!(new_id());
    up.publish(RESERVATIONS, "created", &elsewhere).await;
    let who = "an OWNER on a restaurant the gateway knows no owner of";
    expect_payload(&mut on_unknown, who, "reservation.created", &only(&elsewhere, &PUBLIC_RESERVATION)).await;

    restaurant["updatedAt"] = json!(version(1));
    up.publish(RESTAURANTS, "updated", &restaurant).await;
    for (client, who) in &mut whole[..2] {
        expect_payload(client, who, "restaurant.updated", &restaurant).await;
    }
    let public_restaurant = only(&restaurant, &PUBLIC_RESTAURANT);
    assert!(public_restaurant.get("ownerId").is_none() && public_restaurant.get("adminNote").is_none());
    expect_payload(&mut whole[2].0, "the diner", "restaurant.updated", &public_restaurant).await;
    for (client, who) in &mut public {
        expect_payload(client, who, "restaurant.updated", &public_restaurant).await;
    }
    assert!(metric(&gateway, CUT, r#"kind="reservation""#).await >= 3.0);
    assert!(metric(&gateway, CUT, r#"kind="restaurant""#).await >= 1.0);

    // A process that never saw the event learns the owner from the topic.
    let restarted = up.gateway(&[]).await;
    wait_owners(&restarted, 1.0).await;
    let mut owner_again = watch_as(&restarted, &floor.section, &owner, &["OWNER"]).await;
    let later = reservation(&floor.table, &other_diner);
    up.publish(RESERVATIONS, "created", &later).await;
    expect_payload(&mut owner_again, "the owner, after a restart", "reservation.created", &later).await;

    // A deleted restaurant leaves the map: its owner is staff no more.
    up.publish(RESTAURANTS, "deleted", &restaurant).await;
    wait_owners(&restarted, 0.0).await;
}

/// `WS_STAFF_ROLES` and `WS_PUBLIC_RESERVATION_FIELDS` decide: a `HOST` is
/// staff and an `ADMIN` is not, and the public gets exactly the listed
/// fields.
#[tokio::test]
async fn staff_roles_and_public_fields_come_from_the_configuration() {
    let up = Upstream::start().await;
    let gateway = up
        .gateway(&[
            ("WS_ALLOWED_ROLES", "USER,ADMIN,HOST".into()),
            ("WS_STAFF_ROLES", "HOST".into()),
            ("WS_PUBLIC_RESERVATION_FIELDS", "id,tableId,status,loyaltyTier".into()),
        ])
        .await;
    let floor = up.serve(&new_id());
    let mut host = watch_as(&gateway, &floor.section, &new_id(), &["HOST"]).await;
    let mut admin = watch_as(&gateway, &floor.section, &new_id(), &["ADMIN"]).await;
    let booked = reservation(&floor.table, &new_id());
    up.publish(RESERVATIONS, "created", &booked).await;
    expect_payload(&mut host, "a HOST", "reservation.created", &booked).await;
    let listed = only(&booked, &["id", "tableId", "status", "loyaltyTier"]);
    expect_payload(&mut admin, "an ADMIN that is not staff here", "reservation.created", &listed).await;
}

/// A public client that resumes gets the missed reservation cut, as it
/// would have live; a staff client resuming on the same gateway gets it
/// whole.
#[tokio::test]
async fn a_resume_replays_each_audience_its_own_frames() {
    let up = Upstream::start().await;
    let gateway = up.gateway(&[("RESUME_SECRET", RESUME_SECRET.into())]).await;
    let floor = up.serve(&new_id());
    let (diner, admin) = (new_id(), new_id());
    let mut tokens = Vec::new();
    for (sub, roles) in [(&diner, &["USER"]), (&admin, &["ADMIN"])] {
        let jwt = token_for(sub, roles);
        let url = gateway.ws_url(&format!("/ws/restaurant/{}/{jwt}?resume=", floor.section));
        let mut client = WsClient::connect(&url).await.unwrap_or_else(|(status, body)| panic!("{status} {body}"));
        assert_eq!(client.next_json(WAIT).await["event"], "section.snapshot");
        let position = client.next_json(WAIT).await;
        assert_eq!(position["event"], "section.position", "{position}");
        tokens.push((jwt, position["payload"]["token"].as_str().unwrap().to_string()));
        client.close().await;
    }
    let missed = reservation(&floor.table, &new_id());
    up.publish(RESERVATIONS, "created", &missed).await;
    wait::until_some(WAIT, "the reservation in the resume buffer", || async {
        (metric(&gateway, "mesaya_resume_buffer_frames", "").await >= 1.0).then_some(())
    })
    .await;

    let expected = [only(&missed, &PUBLIC_RESERVATION), missed.clone()];
    for ((jwt, resume), payload) in tokens.iter().zip(expected) {
        let url = gateway.ws_url(&format!("/ws/restaurant/{}/{jwt}?resume={resume}", floor.section));
        let mut client = WsClient::connect(&url).await.unwrap_or_else(|(status, body)| panic!("{status} {body}"));
        assert_eq!(client.next_json(WAIT).await, json!({"event": "section.resumed", "payload": {"replayed": 1}}));
        expect_payload(&mut client, "the replayed frame", "reservation.created", &payload).await;
    }
}
