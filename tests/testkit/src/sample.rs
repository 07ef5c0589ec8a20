//! A sample restaurant as the MesaYa API would hold it — two sections with their tables and
//! decorative objects — and a simulator of the upstream traffic of a busy evening on it.
//!
//! Entities keep the upstream's shapes (they are built from [`crate::fixtures`]);
//! events are v2 envelopes (§1.4) for the per-domain topics, which [`crate::producer`] sends with
//! null keys and no headers, as Nest does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::api::StandInApi;
use crate::fixtures;

/// The sample sections' ids: "Salón principal" and "Terraza" (the contract's example section).
pub const SALON: &str = "d8fba9a5-fdff-479a-af01-1454d68bc646";
pub const TERRAZA: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";

pub const SECTIONS_TOPIC: &str = "mesa-ya.sections.events";
pub const TABLES_TOPIC: &str = "mesa-ya.tables.events";
pub const OBJECTS_TOPIC: &str = "mesa-ya.objects.events";
pub const SECTION_OBJECTS_TOPIC: &str = "mesa-ya.section-objects.events";
pub const RESERVATIONS_TOPIC: &str = "mesa-ya.reservations.events";
/// Every topic the sample's events go to: the section-related v2 topics.
pub const TOPICS: [&str; 5] = [SECTIONS_TOPIC, TABLES_TOPIC, OBJECTS_TOPIC, SECTION_OBJECTS_TOPIC, RESERVATIONS_TOPIC];

/// Each section with the two names a rename switches between.
const SECTIONS: [(&str, [&str; 2]); 2] =
    [(SALON, ["Salón principal", "Salón · evento privado"]), (TERRAZA, ["Terraza", "Terraza cubierta"])];
const SECTION_SIZE: (i64, i64) = (140, 80);

/// Tables stand on a grid of slots, so that a moved table never lands on another one. The
/// largest table (18 × 14) fits a slot; the area right of the grid (x ≥ 100) holds the objects.
const SLOT_COLUMNS: [i64; 4] = [6, 30, 54, 78];
const SLOT_ROWS: [i64; 3] = [8, 32, 56];
const OBJECT_AREA_X: i64 = 100;
/// Random spots tried for an object before giving up on a move or a placement.
const SPOT_TRIES: usize = 50;

/// (id, section, number, capacity, slot column, slot row).
const TABLES: [(&str, &str, u32, u32, usize, usize); 10] = [
    ("292a418f-de6e-4256-a251-421e14f59e99", SALON, 1, 4, 0, 0),
    ("914d285a-1b9e-43c3-af83-3b9b3d67b13f", SALON, 2, 4, 1, 0),
    ("4c7a0df5-c2df-4679-b921-009d25712f3d", SALON, 3, 2, 2, 0),
    ("3d477c7c-e822-4f2b-a69e-0c91ee0dcd91", SALON, 4, 6, 0, 1),
    ("164baeaa-78e1-43b9-acf6-ee6c61537394", SALON, 5, 4, 1, 1),
    ("da861103-638a-44f9-8148-f11e63d45c04", SALON, 6, 2, 2, 2),
    ("1218f9e4-9772-4f24-887d-78bff2eb9283", TERRAZA, 7, 4, 0, 0),
    ("ae3bfcc4-02ab-4d1f-ae94-898807ee2d72", TERRAZA, 8, 4, 2, 0),
    ("2781b3ba-7068-43a4-8bce-3cbec981f485", TERRAZA, 9, 2, 1, 1),
    ("5b6dac6e-6226-4bea-96e6-6eed60f4006e", TERRAZA, 10, 6, 0, 2),
];

/// (object id, section-object link id, section, posX, posY, width, height): a bar counter and a
/// plant in the Salón, a plant and a parasol on the Terraza.
const OBJECTS: [(&str, &str, &str, i64, i64, i64, i64); 4] = [
    ("d623d9fe-d213-4e95-88ca-e0aaa0045dcd", "24acb0fa-5a32-4373-b3d8-ba06f9c8536a", SALON, 100, 6, 14, 52),
    ("bda7b629-1f2b-42cc-9621-9c7b5e8af361", "26abb8db-2934-46ff-b3fc-94ec0df30b91", SALON, 124, 10, 8, 8),
    ("b0a21df7-cf22-4904-a2ec-c8e71c80bf0f", "84f1389d-9591-4683-98d7-a73e262b2a4f", TERRAZA, 104, 8, 8, 8),
    ("31719905-3c98-4731-a248-3267593970df", "9c0f7a52-8a43-4c8e-b5b1-3f0e6d2a7c19", TERRAZA, 118, 40, 12, 12),
];

/// Statuses of a reservation that still holds its table.
const LIVE_RESERVATION: [&str; 2] = ["PENDING", "CONFIRMED"];
/// The simulator keeps at most this many live reservations and placed objects.
const MAX_LIVE_RESERVATIONS: usize = 4;
const MAX_PLACED_OBJECTS: usize = 2;
/// The largest object staff carry around, in either dimension.
const MAX_CARRIED: i64 = 12;

/// One upstream message: a v2 envelope for `topic`, and what it says in words (for a terminal).
#[derive(Clone, Debug)]
pub struct Event {
    pub topic: &'static str,
    pub envelope: Value,
    pub what: String,
}

/// The restaurant's current state: what the MesaYa database holds, so what its API serves.
#[derive(Clone, Debug)]
pub struct Floor {
    sections: BTreeMap<String, Value>,
    tables: BTreeMap<String, Value>,
    objects: BTreeMap<String, Value>,
    links: BTreeMap<String, Value>,
    /// Live reservations only: a cancelled one no longer concerns the floor.
    reservations: BTreeMap<String, Value>,
}

impl Floor {
    /// The sample restaurant as it stands before the evening starts.
    pub fn sample() -> Floor {
        let sections = SECTIONS
            .iter()
            .map(|(id, names)| {
                let mut section = fixtures::section_json(id, fixtures::CREATED_AT);
                section["name"] = json!(names[0]);
                section["description"] = json!(null);
                (section["width"], section["height"]) = (json!(SECTION_SIZE.0), json!(SECTION_SIZE.1));
                (id.to_string(), section)
            })
            .collect();
        let tables = TABLES
            .iter()
            .map(|&(id, section, number, capacity, column, row)| {
                let mut table = fixtures::table_json(id, section, fixtures::CREATED_AT);
                let (width, height) = table_size(capacity);
                table["number"] = json!(number);
                table["capacity"] = json!(capacity);
                (table["posX"], table["posY"]) = (json!(SLOT_COLUMNS[column]), json!(SLOT_ROWS[row]));
                (table["width"], table["height"]) = (json!(width), json!(height));
                (id.to_string(), table)
            })
            .collect();
        let objects = OBJECTS
            .iter()
            .map(|&(id, _, _, x, y, width, height)| (id.to_string(), object_json(id, (x, y, width, height))))
            .collect();
        let links = OBJECTS
            .iter()
            .map(|&(object, link, section, ..)| {
                (link.to_string(), fixtures::section_object_json(link, section, object))
            })
            .collect();
        Floor { sections, tables, objects, links, reservations: BTreeMap::new() }
    }

    /// `(id, name)` of each section, in a stable order.
    pub fn sections(&self) -> Vec<(String, String)> {
        SECTIONS
            .iter()
            .filter_map(|(id, _)| self.sections.get(*id))
            .map(|section| (str_field(section, "id"), str_field(section, "name")))
            .collect()
    }

    /// The tables of `section_id`, by number.
    pub fn tables_of(&self, section_id: &str) -> Vec<&Value> {
        let mut tables: Vec<&Value> = self.tables.values().filter(|table| table["sectionId"] == section_id).collect();
        tables.sort_by_key(|table| table["number"].as_u64());
        tables
    }

    /// The section-object links of `section_id`.
    pub fn links_of(&self, section_id: &str) -> Vec<&Value> {
        self.links.values().filter(|link| link["sectionId"] == section_id).collect()
    }

    /// What `GET /api/v1/sections/{id}` answers inside `data`, as the real API does: the section
    /// with its `tables` and no objects. The gateway adds `objects` from what Kafka told it.
    pub fn snapshot(&self, section_id: &str) -> Option<Value> {
        let mut body = self.sections.get(section_id)?.clone();
        body["tables"] = json!(self.tables_of(section_id));
        Some(body)
    }

    /// What a client watching `section_id` should hold once it has caught up: the section without
    /// `tables`, its tables, its section-object links each with its `object`, and the live
    /// reservations of its tables.
    pub fn watched(&self, section_id: &str) -> Option<Value> {
        let section = self.sections.get(section_id)?;
        let objects: Vec<Value> = self
            .links_of(section_id)
            .into_iter()
            .map(|link| {
                let mut link = link.clone();
                if let Some(object) = link["objectId"].as_str().and_then(|id| self.objects.get(id)) {
                    link["object"] = object.clone();
                }
                link
            })
            .collect();
        let tables = self.tables_of(section_id);
        let reservations: Vec<&Value> = self
            .reservations
            .values()
            .filter(|reservation| tables.iter().any(|table| table["id"] == reservation["tableId"]))
            .collect();
        Some(json!({"section": section, "tables": tables, "objects": objects, "reservations": reservations}))
    }

    /// Makes the stand-in API answer every section with its [`Floor::snapshot`].
    pub fn serve_on(&self, api: &StandInApi) {
        for (id, _) in self.sections() {
            if let Some(snapshot) = self.snapshot(&id) {
                api.set_section(&id, snapshot);
            }
        }
    }

    /// The `created` events that built this floor, in the order the API emitted them (objects
    /// before their links): what the topics hold when a gateway starts and rebuilds its links.
    pub fn history(&self) -> Vec<Event> {
        fn created<'a>(topic: &'static str, entities: &'a BTreeMap<String, Value>) -> impl Iterator<Item = Event> + 'a {
            entities.values().map(move |entity| Event {
                topic,
                envelope: envelope("created", entity.clone()),
                what: format!("{topic}: {} created", str_field(entity, "id")),
            })
        }
        created(SECTIONS_TOPIC, &self.sections)
            .chain(created(TABLES_TOPIC, &self.tables))
            .chain(created(OBJECTS_TOPIC, &self.objects))
            .chain(created(SECTION_OBJECTS_TOPIC, &self.links))
            .collect()
    }

    /// Applies an event of the kinds this module builds, as the database did before emitting it.
    pub fn apply(&mut self, event: &Event) {
        let entities = match event.topic {
            SECTIONS_TOPIC => &mut self.sections,
            TABLES_TOPIC => &mut self.tables,
            OBJECTS_TOPIC => &mut self.objects,
            SECTION_OBJECTS_TOPIC => &mut self.links,
            RESERVATIONS_TOPIC => &mut self.reservations,
            other => panic!("the sample floor has no entities on {other}"),
        };
        let data = &event.envelope["data"];
        let id = str_field(data, "id");
        if event.envelope["event_type"] == "deleted" {
            entities.remove(&id);
        } else {
            entities.insert(id, data.clone());
        }
        self.reservations.retain(|_, reservation| is_live(reservation));
    }

    /// `table.updated`: the table's `status` (and `isAvailable`) become `status`.
    pub fn table_status(&self, table_id: &str, status: &str) -> Event {
        let mut table = self.updated(&self.tables, table_id);
        table["status"] = json!(status);
        table["isAvailable"] = json!(status == "AVAILABLE");
        Event {
            topic: TABLES_TOPIC,
            what: format!("{} is {status}", self.table_label(&table)),
            envelope: updated(table),
        }
    }

    /// `table.updated`: the table moves to `section_id` at `(x, y)`.
    pub fn table_moved(&self, table_id: &str, section_id: &str, (x, y): (i64, i64)) -> Event {
        let mut table = self.updated(&self.tables, table_id);
        table["sectionId"] = json!(section_id);
        (table["posX"], table["posY"]) = (json!(x), json!(y));
        let what = format!("table {} moved to {}", table["number"], self.section_name(section_id));
        Event { topic: TABLES_TOPIC, what, envelope: updated(table) }
    }

    /// `reservation.created` for `guests` at `time` (`HH:MM`, UTC) today, by the fixture user.
    pub fn reservation_created(&self, table_id: &str, guests: u32, time: &str) -> Event {
        let id = uuid::Uuid::new_v4().to_string();
        let today = Utc::now().format("%Y-%m-%d").to_string();
        let mut reservation = fixtures::reservation_json(&id, table_id);
        reservation["reservationDate"] = json!(today);
        reservation["reservationTime"] = json!(format!("{today}T{time}:00.000Z"));
        reservation["numberOfGuests"] = json!(guests);
        (reservation["createdAt"], reservation["updatedAt"]) = (json!(now()), json!(now()));
        let guests_text = if guests == 1 { "1 guest".to_string() } else { format!("{guests} guests") };
        let what = format!("reservation for {} at {time}, {guests_text}", self.table_label(&self.tables[table_id]));
        Event { topic: RESERVATIONS_TOPIC, envelope: with_user(envelope("created", reservation)), what }
    }

    /// `reservation.updated` to `CANCELLED` (an ADMIN update: the only cancel that reaches Kafka).
    pub fn reservation_cancelled(&self, reservation_id: &str) -> Event {
        let mut reservation = self.updated(&self.reservations, reservation_id);
        reservation["status"] = json!("CANCELLED");
        let table = self.tables.get(reservation["tableId"].as_str().unwrap_or_default());
        let what = format!("reservation for {} cancelled", table.map_or("a table".into(), |t| self.table_label(t)));
        Event { topic: RESERVATIONS_TOPIC, envelope: with_user(updated(reservation)), what }
    }

    /// `object.created` then `section-object.created`: a new object placed in `section_id`.
    pub fn object_placed(&self, section_id: &str, rect: (i64, i64, i64, i64)) -> [Event; 2] {
        let object_id = uuid::Uuid::new_v4().to_string();
        let link_id = uuid::Uuid::new_v4().to_string();
        let mut object = object_json(&object_id, rect);
        let mut link = fixtures::section_object_json(&link_id, section_id, &object_id);
        for entity in [&mut object, &mut link] {
            (entity["createdAt"], entity["updatedAt"]) = (json!(now()), json!(now()));
        }
        let section = self.section_name(section_id);
        [
            Event { topic: OBJECTS_TOPIC, envelope: envelope("created", object), what: "object created".into() },
            Event {
                topic: SECTION_OBJECTS_TOPIC,
                envelope: envelope("created", link),
                what: format!("object placed in {section}"),
            },
        ]
    }

    /// `object.updated`: the object moves to `(x, y)`.
    pub fn object_moved(&self, object_id: &str, (x, y): (i64, i64)) -> Event {
        let mut object = self.updated(&self.objects, object_id);
        (object["posX"], object["posY"]) = (json!(x), json!(y));
        Event { topic: OBJECTS_TOPIC, envelope: updated(object), what: format!("object moved to ({x}, {y})") }
    }

    /// `section-object.deleted` then `object.deleted`: the linked object is taken away.
    pub fn object_removed(&self, link_id: &str) -> [Event; 2] {
        let link = self.links[link_id].clone();
        let object = self.objects[link["objectId"].as_str().expect("a link names its object")].clone();
        let section = self.section_name(link["sectionId"].as_str().unwrap_or_default());
        [
            Event {
                topic: SECTION_OBJECTS_TOPIC,
                envelope: envelope("deleted", link),
                what: format!("object removed from {section}"),
            },
            Event { topic: OBJECTS_TOPIC, envelope: envelope("deleted", object), what: "object deleted".into() },
        ]
    }

    /// `section.updated`: the section is renamed (section events carry no `tables`).
    pub fn section_renamed(&self, section_id: &str, name: &str) -> Event {
        let mut section = self.updated(&self.sections, section_id);
        let what = format!("{} renamed to {name}", str_field(&section, "name"));
        section["name"] = json!(name);
        Event { topic: SECTIONS_TOPIC, envelope: updated(section), what }
    }

    /// `table.created`: a new table numbered `number` in `section_id` at `(x, y)`, as a bulk import
    /// of a banquet layout makes them; `notes` bytes of the importer's notes ride along (a field
    /// the API does not have: the gateway and the client carry unknown fields as they come).
    pub fn table_created(&self, section_id: &str, number: u64, (x, y): (i64, i64), notes: usize) -> Event {
        let id = uuid::Uuid::new_v4().to_string();
        let mut table = fixtures::table_json(&id, section_id, &now());
        table["number"] = json!(number);
        (table["posX"], table["posY"]) = (json!(x), json!(y));
        if notes > 0 {
            table["notes"] = json!("n".repeat(notes));
        }
        let what = format!("table {number} created in {}", self.section_name(section_id));
        Event { topic: TABLES_TOPIC, envelope: envelope("created", table), what }
    }

    /// `table.deleted`.
    pub fn table_deleted(&self, table_id: &str) -> Event {
        let table = self.updated(&self.tables, table_id);
        let what = format!("{} deleted", self.table_label(&table));
        Event { topic: TABLES_TOPIC, envelope: envelope("deleted", table), what }
    }

    /// `section.deleted`, carrying the section as the API last served it.
    pub fn section_deleted(&self, section_id: &str) -> Event {
        let section =
            self.snapshot(section_id).unwrap_or_else(|| panic!("the sample floor has no section {section_id}"));
        let what = format!("{} deleted", str_field(&section, "name"));
        Event { topic: SECTIONS_TOPIC, envelope: envelope("deleted", section), what }
    }

    /// A copy of an entity with `updatedAt` now, for an update event.
    fn updated(&self, entities: &BTreeMap<String, Value>, id: &str) -> Value {
        let mut entity = entities.get(id).unwrap_or_else(|| panic!("the sample floor has no entity {id}")).clone();
        entity["updatedAt"] = json!(now());
        entity
    }

    fn section_name(&self, section_id: &str) -> String {
        self.sections.get(section_id).map_or_else(|| section_id.to_string(), |section| str_field(section, "name"))
    }

    fn table_label(&self, table: &Value) -> String {
        let section = self.section_name(table["sectionId"].as_str().unwrap_or_default());
        format!("table {} ({section})", table["number"])
    }
}

/// Produces the upstream traffic of the sample restaurant, one event at a time: tables switching
/// availability and moving between the sections, reservations made and cancelled, objects
/// placed, moved and taken away, sections renamed. The floor stays within bounds however long
/// it runs.
pub struct Simulator {
    floor: Floor,
    rng: fastrand::Rng,
    queue: VecDeque<Event>,
    /// Links of the objects the simulator placed, oldest first (the sample's own stay).
    placed: VecDeque<String>,
}

impl Simulator {
    pub fn new(floor: Floor, rng: fastrand::Rng) -> Self {
        Self { floor, rng, queue: VecDeque::new(), placed: VecDeque::new() }
    }

    pub fn floor(&self) -> &Floor {
        &self.floor
    }

    /// Applies a change made outside the simulator (a scripted one) to its floor.
    pub fn record(&mut self, event: &Event) {
        self.floor.apply(event);
    }

    /// The next upstream event, already applied to the floor (so the API serves its effect).
    pub fn next_event(&mut self) -> Event {
        if self.queue.is_empty() {
            let step = self.step();
            self.queue.extend(step);
        }
        let event = self.queue.pop_front().expect("every step yields an event");
        self.floor.apply(&event);
        event
    }

    /// One change to the floor, as the one or two events the API emits for it. Weights follow a
    /// dining room: tables change state often, the layout seldom.
    fn step(&mut self) -> Vec<Event> {
        match self.rng.u32(0..100) {
            0..40 => vec![self.toggle_table()],
            40..65 => vec![self.reservation()],
            65..80 => vec![self.move_object().unwrap_or_else(|| self.toggle_table())],
            80..89 => self.place_or_remove_object().unwrap_or_else(|| vec![self.toggle_table()]),
            89..95 => vec![self.move_table().unwrap_or_else(|| self.toggle_table())],
            _ => vec![self.rename_section()],
        }
    }

    fn toggle_table(&mut self) -> Event {
        let table = pick(&mut self.rng, self.floor.tables.values());
        let status = match table["status"].as_str() {
            Some("AVAILABLE") if self.rng.u32(0..8) == 0 => "BLOCKED",
            Some("AVAILABLE") => "OCCUPIED",
            _ => "AVAILABLE",
        };
        self.floor.table_status(table["id"].as_str().expect("table id"), status)
    }

    /// A two-seat table (the kind staff carry around) moves to a free slot of the other section;
    /// `None` when that section has none.
    fn move_table(&mut self) -> Option<Event> {
        let small: Vec<&Value> = self.floor.tables.values().filter(|table| table["capacity"] == 2).collect();
        let table = pick(&mut self.rng, small);
        let to = SECTIONS.map(|(id, _)| id).into_iter().find(|id| table["sectionId"] != *id)?;
        let taken: Vec<(i64, i64)> = self
            .floor
            .tables_of(to)
            .iter()
            .filter_map(|table| Some((table["posX"].as_i64()?, table["posY"].as_i64()?)))
            .collect();
        let free: Vec<(i64, i64)> = SLOT_ROWS
            .iter()
            .flat_map(|&y| SLOT_COLUMNS.iter().map(move |&x| (x, y)))
            .filter(|slot| !taken.contains(slot))
            .collect();
        let slot = self.rng.choice(free)?;
        Some(self.floor.table_moved(table["id"].as_str().expect("table id"), to, slot))
    }

    fn reservation(&mut self) -> Event {
        let live = self.floor.reservations.len();
        let create = live == 0 || (live < MAX_LIVE_RESERVATIONS && self.rng.bool());
        if create {
            let table = pick(&mut self.rng, self.floor.tables.values());
            let capacity = table["capacity"].as_u64().and_then(|c| u32::try_from(c).ok()).unwrap_or(2).max(1);
            let guests = self.rng.u32(1..=capacity);
            let half_hours = self.rng.u32(0..8);
            let time = format!("{:02}:{:02}", 19 + half_hours / 2, 30 * (half_hours % 2));
            self.floor.reservation_created(table["id"].as_str().expect("table id"), guests, &time)
        } else {
            let reservation = pick(&mut self.rng, self.floor.reservations.values());
            self.floor.reservation_cancelled(reservation["id"].as_str().expect("reservation id"))
        }
    }

    /// Something small enough to carry (a plant, a parasol; not the bar counter) moves to a free
    /// spot; `None` when none was found.
    fn move_object(&mut self) -> Option<Event> {
        let objects = &self.floor.objects;
        let movable: Vec<&Value> = self
            .floor
            .links
            .values()
            .filter(|link| {
                let object = &objects[link["objectId"].as_str().expect("a link names its object")];
                object["width"].as_i64() <= Some(MAX_CARRIED) && object["height"].as_i64() <= Some(MAX_CARRIED)
            })
            .collect();
        let link = pick(&mut self.rng, movable);
        let object_id = link["objectId"].as_str().expect("a link names its object");
        let object = &objects[object_id];
        let size = (object["width"].as_i64().unwrap_or(1), object["height"].as_i64().unwrap_or(1));
        let section = link["sectionId"].as_str().expect("a link names its section");
        let spot = free_spot(&mut self.rng, &self.floor, section, size, Some(object_id))?;
        Some(self.floor.object_moved(object_id, spot))
    }

    /// The oldest placed object is taken away once there are enough; otherwise a new one is put in
    /// a free spot (`None` when none was found).
    fn place_or_remove_object(&mut self) -> Option<Vec<Event>> {
        if self.placed.len() >= MAX_PLACED_OBJECTS {
            let link = self.placed.pop_front().expect("placed objects");
            return Some(self.floor.object_removed(&link).into());
        }
        let section = pick(&mut self.rng, SECTIONS.map(|(id, _)| id));
        let size = self.rng.i64(5..=8);
        let (x, y) = free_spot(&mut self.rng, &self.floor, section, (size, size), None)?;
        let events = self.floor.object_placed(section, (x, y, size, size));
        self.placed.push_back(str_field(&events[1].envelope["data"], "id"));
        Some(events.into())
    }

    fn rename_section(&mut self) -> Event {
        let (id, names) = pick(&mut self.rng, SECTIONS);
        let current = &self.floor.sections[id]["name"];
        let name = if current == names[0] { names[1] } else { names[0] };
        self.floor.section_renamed(id, name)
    }
}

/// A random spot for a `width` × `height` object in the object area of `section_id`, a unit
/// clear of every other object there but `moving`; `None` after [`SPOT_TRIES`] misses.
fn free_spot(
    rng: &mut fastrand::Rng,
    floor: &Floor,
    section_id: &str,
    (width, height): (i64, i64),
    moving: Option<&str>,
) -> Option<(i64, i64)> {
    let others: Vec<[i64; 4]> = floor
        .links_of(section_id)
        .into_iter()
        .filter_map(|link| link["objectId"].as_str())
        .filter(|id| Some(*id) != moving)
        .filter_map(|id| floor.objects.get(id))
        .map(rect)
        .collect();
    (0..SPOT_TRIES).find_map(|_| {
        let x = rng.i64(OBJECT_AREA_X..=SECTION_SIZE.0 - 2 - width);
        let y = rng.i64(2..=SECTION_SIZE.1 - 2 - height);
        others.iter().all(|&other| apart([x, y, width, height], other)).then_some((x, y))
    })
}

/// `[posX, posY, width, height]` of a table or an object.
fn rect(entity: &Value) -> [i64; 4] {
    ["posX", "posY", "width", "height"].map(|field| entity[field].as_i64().unwrap_or(0))
}

/// Whether two rectangles are at least a unit apart.
fn apart([x, y, width, height]: [i64; 4], [ox, oy, ow, oh]: [i64; 4]) -> bool {
    x + width < ox || ox + ow < x || y + height < oy || oy + oh < y
}

/// A random element; the sample floor never runs out of tables, links or sections, and a
/// reservation is picked only when one is live.
fn pick<I: IntoIterator>(rng: &mut fastrand::Rng, items: I) -> I::Item
where
    I::IntoIter: ExactSizeIterator,
{
    rng.choice(items).expect("picking from an empty set")
}

fn table_size(capacity: u32) -> (i64, i64) {
    match capacity {
        0..=2 => (10, 10),
        3..=4 => (14, 14),
        _ => (18, 14),
    }
}

fn object_json(id: &str, (x, y, width, height): (i64, i64, i64, i64)) -> Value {
    let mut object = fixtures::object_json(id);
    (object["posX"], object["posY"]) = (json!(x), json!(y));
    (object["width"], object["height"]) = (json!(width), json!(height));
    object
}

fn is_live(reservation: &Value) -> bool {
    reservation["status"].as_str().is_some_and(|status| LIVE_RESERVATION.contains(&status))
}

fn str_field(entity: &Value, field: &str) -> String {
    entity[field].as_str().unwrap_or_else(|| panic!("entity without a string {field}: {entity}")).to_string()
}

/// Emission time, as Nest's `@KafkaEmit` stamps it: ISO-8601 UTC with milliseconds, and never the
/// same millisecond twice in this process. A database stamps updates finer than that; two updates of
/// one entity in one millisecond would look like a duplicate to a client comparing `updatedAt`,
/// which a test driving thousands of events a second would otherwise meet.
fn now() -> String {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let wall = Utc::now().timestamp_millis();
    let previous = LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(wall.max(last + 1)));
    let stamp = wall.max(previous.unwrap_or(0) + 1);
    DateTime::from_timestamp_millis(stamp).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The v2 envelope of `data`, stamped now; `entity_id` is `data.id`, as for every section-related
/// create, update and delete.
fn envelope(event_type: &str, data: Value) -> Value {
    let id = str_field(&data, "id");
    let mut envelope = fixtures::v2(event_type, &id, data);
    envelope["timestamp"] = json!(now());
    envelope
}

fn updated(entity: Value) -> Value {
    envelope("updated", entity)
}

/// Reservation events carry the acting user in `metadata`, as upstream's do.
fn with_user(mut envelope: Value) -> Value {
    envelope["metadata"] = json!({ "user_id": envelope["data"]["userId"] });
    envelope
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn keys(value: &Value) -> BTreeSet<String> {
        value.as_object().expect("an object").keys().cloned().collect()
    }

    #[test]
    fn snapshots_hold_each_sections_tables_and_no_objects_as_the_real_api() {
        let floor = Floor::sample();
        let salon = floor.snapshot(SALON).unwrap();
        assert_eq!(salon["name"], "Salón principal");
        assert_eq!(salon["tables"].as_array().unwrap().len(), 6);
        assert!(salon.get("objects").is_none(), "the gateway adds them");
        assert_eq!(floor.links_of(SALON).len(), 2);
        let terraza = floor.snapshot(TERRAZA).unwrap();
        assert_eq!(terraza["tables"].as_array().unwrap().len(), 4);
        assert!(terraza.get("tables").is_some() && terraza["restaurantId"] == fixtures::RESTAURANT_ID);
        assert_eq!(floor.snapshot(fixtures::USER_ID), None);
    }

    #[test]
    fn history_creates_objects_before_their_links() {
        let history = Floor::sample().history();
        let position = |id: &str| history.iter().position(|event| event.envelope["entity_id"] == id).unwrap();
        for (object, link, ..) in OBJECTS {
            assert!(position(object) < position(link));
        }
        assert!(history.iter().all(|event| event.envelope["event_type"] == "created"));
        assert_eq!(history.len(), 2 + 10 + 4 + 4);
    }

    #[test]
    fn every_event_is_a_v2_envelope_with_the_contract_entity_shape() {
        let floor = Floor::sample();
        let shape = |topic| match topic {
            SECTIONS_TOPIC => keys(&fixtures::section_json(SALON, fixtures::CREATED_AT)),
            TABLES_TOPIC => keys(&fixtures::table_json(SALON, SALON, fixtures::CREATED_AT)),
            OBJECTS_TOPIC => keys(&fixtures::object_json(SALON)),
            SECTION_OBJECTS_TOPIC => keys(&fixtures::section_object_json(SALON, SALON, SALON)),
            _ => keys(&fixtures::reservation_json(SALON, SALON)),
        };
        let mut simulator = Simulator::new(floor, fastrand::Rng::with_seed(7));
        let mut seen = BTreeSet::new();
        for _ in 0..600 {
            let event = simulator.next_event();
            let envelope = &event.envelope;
            let data = &envelope["data"];
            assert_eq!(keys(data), shape(event.topic), "{}", event.what);
            assert_eq!(envelope["entity_id"], data["id"]);
            assert!(uuid::Uuid::parse_str(data["id"].as_str().unwrap()).is_ok());
            assert!(data["createdAt"].as_str() <= data["updatedAt"].as_str());
            let mut expected: BTreeSet<String> =
                ["timestamp", "event_type", "entity_id", "data"].map(String::from).into();
            if event.topic == RESERVATIONS_TOPIC {
                expected.insert("metadata".into());
                assert_eq!(envelope["metadata"]["user_id"], fixtures::USER_ID);
            }
            assert_eq!(keys(envelope), expected);
            let kind = match (event.topic, envelope["event_type"].as_str().unwrap()) {
                (TABLES_TOPIC, "updated") if data["status"] != "AVAILABLE" => "table taken".to_string(),
                (TABLES_TOPIC, "updated") => "table freed or moved".to_string(),
                (RESERVATIONS_TOPIC, "updated") => format!("reservation {}", data["status"]),
                (topic, event_type) => format!("{topic} {event_type}"),
            };
            seen.insert(kind);

            let floor = simulator.floor();
            for (section, _) in floor.sections() {
                assert!(floor.tables_of(&section).len() <= SLOT_COLUMNS.len() * SLOT_ROWS.len());
            }
            assert!(floor.links.len() <= OBJECTS.len() + MAX_PLACED_OBJECTS);
            for (section, _) in floor.sections() {
                let rects: Vec<[i64; 4]> = floor
                    .links_of(&section)
                    .iter()
                    .filter_map(|link| floor.objects.get(link["objectId"].as_str().unwrap()))
                    .map(rect)
                    .collect();
                for (i, &a) in rects.iter().enumerate() {
                    assert!(a[0] >= OBJECT_AREA_X && a[0] + a[2] <= SECTION_SIZE.0 && a[1] + a[3] <= SECTION_SIZE.1);
                    for &b in &rects[i + 1..] {
                        assert!(apart(a, b), "objects overlap in {section}: {a:?} {b:?}");
                    }
                }
            }
            assert!(floor.reservations.len() <= MAX_LIVE_RESERVATIONS);
        }
        let expected = [
            "table taken",
            "table freed or moved",
            "mesa-ya.reservations.events created",
            "reservation \"CANCELLED\"",
            "mesa-ya.objects.events created",
            "mesa-ya.section-objects.events created",
            "mesa-ya.objects.events updated",
            "mesa-ya.section-objects.events deleted",
            "mesa-ya.objects.events deleted",
            "mesa-ya.sections.events updated",
        ];
        for kind in expected {
            assert!(seen.contains(kind), "no {kind} in {seen:?}");
        }
    }

    #[test]
    fn a_moved_table_leaves_one_snapshot_for_the_other_on_a_free_slot() {
        let mut floor = Floor::sample();
        let mut simulator = Simulator::new(floor.clone(), fastrand::Rng::with_seed(1));
        let event = simulator.move_table().unwrap();
        let table = &event.envelope["data"];
        let from = floor.tables[table["id"].as_str().unwrap()]["sectionId"].as_str().unwrap().to_string();
        let to = table["sectionId"].as_str().unwrap().to_string();
        assert_ne!(from, to);
        assert_eq!(table["capacity"], 2);
        let (before_from, before_to) = (floor.tables_of(&from).len(), floor.tables_of(&to).len());
        floor.apply(&event);
        assert_eq!(floor.tables_of(&from).len(), before_from - 1);
        let arrived = floor.tables_of(&to);
        assert_eq!(arrived.len(), before_to + 1);
        let spot = |t: &Value| (t["posX"].clone(), t["posY"].clone());
        assert_eq!(arrived.iter().filter(|t| spot(t) == spot(table)).count(), 1, "the slot was free");
    }

    #[test]
    fn cancelled_reservations_leave_the_floor() {
        let mut floor = Floor::sample();
        let created = floor.reservation_created(TABLES[0].0, 2, "20:30");
        floor.apply(&created);
        assert_eq!(floor.reservations.len(), 1);
        let data = &created.envelope["data"];
        assert!(data["reservationTime"].as_str().unwrap().ends_with("T20:30:00.000Z"));
        floor.apply(&floor.reservation_cancelled(data["id"].as_str().unwrap()));
        assert!(floor.reservations.is_empty());
    }
}
