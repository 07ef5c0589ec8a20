//! The floor-plan page (`dev/floorplan.html`) in a real browser: headless Chromium driven over
//! the DevTools protocol, against the gateway, a real broker (tansu) and the stand-in API serving
//! the sample restaurant. It checks what a person sees — the snapshot's tables, live changes,
//! a close code with its meaning — and keeps screenshots under `target/tmp/floorplan/`.

mod common;

use std::path::PathBuf;

use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::Broker;
use mesaya_testkit::browser::Browser;
use mesaya_testkit::fixtures;
use mesaya_testkit::gateway::Gateway;
use mesaya_testkit::page::{FloorPlanPage, PageConfig};
use mesaya_testkit::producer::EventProducer;
use mesaya_testkit::sample::{Event, Floor, SALON, SECTIONS_TOPIC, TERRAZA};
use mesaya_testkit::tokens::TokenBuilder;
use serde_json::{Value, json};

use common::{SECRET, WAIT, binary, gateway_env};

/// The table numbers drawn, once the page says it is live.
const LIVE_TABLE_NUMBERS: &str = "document.querySelector('#connection').dataset.state === 'live' \
     && [...document.querySelectorAll('#floor .table .number')].map((e) => e.textContent)";

/// What the upstream side of the stack does for an event: the database changes (so the API's
/// snapshots change), then Nest emits.
struct Upstream {
    floor: Floor,
    api: StandInApi,
    producer: EventProducer,
}

impl Upstream {
    async fn emit(&mut self, event: &Event) {
        self.floor.apply(event);
        self.floor.serve_on(&self.api);
        self.producer.send_json(event.topic, &event.envelope).await;
    }
}

fn id(entity: &Value) -> String {
    entity["id"].as_str().expect("an entity id").to_string()
}

/// `true` once the body of the table `table_id` is painted in the legend's colour for `status`.
fn painted(table_id: &str, status: &str) -> String {
    format!(
        "(() => {{ const body = document.querySelector('.table[data-id=\"{table_id}\"] .body'); \
         const swatch = document.querySelector('.swatch.{status}'); \
         return !!body && getComputedStyle(body).fill === getComputedStyle(swatch).fill; }})()"
    )
}

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("floorplan").join(name)
}

#[tokio::test]
async fn the_floor_plan_draws_the_section_applies_live_events_and_shows_the_close_code() {
    let broker = Broker::start_memory().await;
    let producer = EventProducer::new(&broker.bootstrap());
    let floor = Floor::sample();
    // The topics' history, so the gateway's start-up rebuild learns which section links which
    // object, as it would in production.
    for event in floor.history() {
        producer.send_json(event.topic, &event.envelope).await;
    }
    let api = StandInApi::start();
    floor.serve_on(&api);
    let mut upstream = Upstream { floor, api, producer };
    let mut gateway = Gateway::start(binary(), &gateway_env(&broker, &upstream.api, &[]));
    gateway.wait_ready(WAIT).await;
    let page = FloorPlanPage::start(
        0,
        &PageConfig {
            gateway: gateway.ws_url(""),
            token: TokenBuilder::new().hs256(SECRET),
            sections: upstream.floor.sections(),
        },
    )
    .unwrap();
    let mut browser = Browser::open(&page.url()).await;

    // The snapshot: the Salón's six tables, its two objects, its name.
    let numbers = browser.wait_for(WAIT, "the Salón's tables on a live page", LIVE_TABLE_NUMBERS).await;
    assert_eq!(numbers, json!(["1", "2", "3", "4", "5", "6"]));
    assert_eq!(browser.eval("document.querySelectorAll('#floor .object').length").await, 2);
    assert_eq!(browser.eval("document.querySelector('#section-name').textContent").await, "Salón principal");
    let tables: Vec<String> = upstream.floor.tables_of(SALON).into_iter().map(id).collect();
    browser.wait_for(WAIT, "table 3 painted as available", &painted(&tables[2], "available")).await;

    // Live events, each changing what is drawn.
    let occupied = upstream.floor.table_status(&tables[2], "OCCUPIED");
    upstream.emit(&occupied).await;
    browser.wait_for(WAIT, "table 3 painted as occupied", &painted(&tables[2], "occupied")).await;

    let reservation = upstream.floor.reservation_created(&tables[0], 3, "20:30");
    upstream.emit(&reservation).await;
    let badge = format!("document.querySelector('.table[data-id=\"{}\"] .badge text')?.textContent", tables[0]);
    assert_eq!(browser.wait_for(WAIT, "a reservation badge on table 1", &badge).await, "1");

    let link = upstream.floor.links_of(SALON)[0].clone();
    let object = link["objectId"].as_str().unwrap().to_string();
    let moved = upstream.floor.object_moved(&object, (100, 12));
    upstream.emit(&moved).await;
    let object_y = format!("document.querySelector('.object[data-id=\"{object}\"] .body')?.getAttribute('y') === '12'");
    browser.wait_for(WAIT, "the object drawn at its new place", &object_y).await;

    // Table 9 comes over from the Terraza to the free slot at the grid's fourth column.
    let nine = id(upstream.floor.tables_of(TERRAZA).into_iter().find(|t| t["number"] == 9).unwrap());
    let arrived = upstream.floor.table_moved(&nine, SALON, (78, 32));
    upstream.emit(&arrived).await;
    let with_nine = browser
        .wait_for(WAIT, "table 9 in the Salón", &format!("{LIVE_TABLE_NUMBERS}.includes('9') && {LIVE_TABLE_NUMBERS}"))
        .await;
    assert_eq!(with_nine, json!(["1", "2", "3", "4", "5", "6", "9"]));

    let renamed = upstream.floor.section_renamed(SALON, "Salón · evento privado");
    upstream.emit(&renamed).await;
    let heading = "document.querySelector('#section-name').textContent === 'Salón · evento privado'";
    browser.wait_for(WAIT, "the new section name", heading).await;
    let log =
        browser.eval("[...document.querySelectorAll('#log li')].map((li) => li.innerText.replace(/\\s+/g, ' '))").await;
    let log: Vec<&str> = log.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for expected in [
        "table.updated table 3 is now occupied",
        "reservation.created table 1 reserved for 3 at 20:30",
        "object.updated object moved to (100, 12)",
        "table.updated table 9 arrived (2 seats)",
        "section.updated renamed to “Salón · evento privado”",
    ] {
        assert!(log.iter().any(|line| line.ends_with(expected)), "no {expected:?} in the event log: {log:#?}");
    }
    let live = screenshot_path("live.png");
    browser.screenshot(&live).await;
    println!("screenshot of the live floor plan: {}", live.display());

    // The section is deleted upstream: the gateway forwards it and closes with 1000, which the
    // page explains, and it does not retry (the section is gone).
    let mut deleted = upstream.floor.snapshot(SALON).unwrap();
    deleted.as_object_mut().unwrap().remove("objects");
    upstream.producer.send_json(SECTIONS_TOPIC, &fixtures::v2("deleted", SALON, deleted)).await;
    let closed = "document.querySelector('#connection').dataset.state === 'closed' \
                  && document.querySelector('#close-info').innerText";
    let close_info = browser.wait_for(WAIT, "the close code", closed).await;
    let close_info = close_info.as_str().unwrap();
    assert!(close_info.contains("1000 the section (or its restaurant) was deleted"), "{close_info}");
    let closed_shot = screenshot_path("closed.png");
    browser.screenshot(&closed_shot).await;
    println!("screenshot after the close: {}", closed_shot.display());

    // The switcher opens the other section on a new connection, table 9 gone from it.
    browser.eval(&format!("document.querySelector('nav#sections button[data-section=\"{TERRAZA}\"]').click()")).await;
    let terraza = format!("document.querySelector('#section-name').textContent === 'Terraza' && {LIVE_TABLE_NUMBERS}");
    assert_eq!(browser.wait_for(WAIT, "the Terraza's tables", &terraza).await, json!(["7", "8", "10"]));
}
