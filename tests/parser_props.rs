//! Property tests of the ingest's pure core (no broker): the envelope parser
//! and the router, on generated input.
//!
//! - `parse` never panics, whatever the topic and bytes;
//! - a valid v2 or v1 envelope (UUID ids) parses to the kind, action, ids,
//!   section and restaurant it was generated with, and its payload is the
//!   entity as sent (same JSON value);
//! - any id that is not a UUID, in any position an event is routed by, is
//!   rejected as `BadId`; `status_changed` is for restaurants only;
//! - `EventRouter` never panics on any sequence of records, snapshots and
//!   expiries, and delivers exactly what a reference model of the routing
//!   rules says, where it says: every target is a section an event or a
//!   snapshot named before; one shared frame per event for all its sections;
//!   its maps hold what the model holds, and nothing once everything is
//!   deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesaya_realtime::application::delivery::{Delivery, Stamp};
use mesaya_realtime::application::ports::LearnedSection;
use mesaya_realtime::application::router::{EventRouter, HOLD_RESERVATIONS_FOR, LinkCounts, Unroutable};
use mesaya_realtime::domain::entity::{Action, EntityKind};
use mesaya_realtime::domain::envelope::{self, EntityEvent, Rejection};
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::timestamp;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};

const MAX: usize = 1 << 20;

/// (topic domain, event-name prefix, kind)
const KINDS: [(&str, &str, EntityKind); 6] = [
    ("sections", "section", EntityKind::Section),
    ("tables", "table", EntityKind::Table),
    ("objects", "object", EntityKind::Object),
    ("section-objects", "section-object", EntityKind::SectionObject),
    ("reservations", "reservation", EntityKind::Reservation),
    ("restaurants", "restaurant", EntityKind::Restaurant),
];
const ACTIONS: [&str; 3] = ["created", "updated", "deleted"];
/// Entity fields that carry ids the parser checks.
const ID_FIELDS: [&str; 5] = ["id", "sectionId", "objectId", "tableId", "restaurantId"];

fn prefix(kind: EntityKind) -> &'static str {
    KINDS.iter().find(|k| k.2 == kind).unwrap().1
}

// ------------------------------------------------------------------- ids

/// Tags of the id pools, one per kind: `(tag << 64) | i` keeps pools apart.
const SECTION: u128 = 1;
const TABLE: u128 = 2;
const OBJECT: u128 = 3;
const LINK: u128 = 4;
const RESERVATION: u128 = 5;
const RESTAURANT: u128 = 6;
const OWNER: u128 = 7;
/// (tag, pool size): small pools, so links, moves and deletes collide often.
const POOLS: [(u128, usize); 7] =
    [(SECTION, 3), (TABLE, 4), (OBJECT, 3), (LINK, 4), (RESERVATION, 3), (RESTAURANT, 2), (OWNER, 2)];

fn pool_id(tag: u128, i: usize) -> String {
    uuid::Uuid::from_u128((tag << 64) | i as u128).hyphenated().to_string()
}

fn pool_section(i: usize) -> SectionId {
    SectionId::parse(&pool_id(SECTION, i)).unwrap()
}

fn pool_size(tag: u128) -> usize {
    POOLS.iter().find(|(t, _)| *t == tag).unwrap().1
}

/// A reference into a pool: mostly one of its ids, now and then one that
/// is not a UUID. Resolved against the pool of the field it lands in.
#[derive(Clone, Copy, Debug)]
struct PoolRef(usize);

impl PoolRef {
    fn of(self, tag: u128) -> String {
        if self.0 == 15 { format!("{tag}-not-a-uuid") } else { pool_id(tag, self.0 % pool_size(tag)) }
    }
}

fn pool_ref() -> impl Strategy<Value = PoolRef> {
    (0..16usize).prop_map(PoolRef)
}

/// Every id of every pool.
fn all_pool_ids() -> Vec<String> {
    POOLS.iter().flat_map(|&(tag, n)| (0..n).map(move |i| pool_id(tag, i))).collect()
}

fn uuid_string() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|bits| uuid::Uuid::from_u128(bits).hyphenated().to_string())
}

/// Text that is not a UUID: anything short, near misses of one, empty.
fn non_uuid() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{1,16}",
        (uuid_string(), 0usize..36, prop::sample::select(vec!['g', 'x', ' ', '-', '{'])).prop_map(|(id, at, c)| {
            let mut chars: Vec<char> = id.chars().collect();
            chars[at] = if chars[at] == '-' && c == '-' { 'g' } else { c };
            chars.into_iter().collect()
        }),
        uuid_string().prop_map(|id| id[..35].to_string()),
        uuid_string().prop_map(|id| format!("{id}0")),
        uuid_string().prop_map(|id| format!(" {id}")),
        Just(String::new()),
    ]
    .prop_filter("not a UUID", |id| uuid::Uuid::try_parse(id).is_err())
}

// ------------------------------------------------------------- strategies

fn arb_json() -> BoxedStrategy<Value> {
    arb_json_sized(4, 48, 6)
}

/// JSON of up to `depth` levels and about `size` nodes, containers of up to
/// `items` items.
fn arb_json_sized(depth: u32, size: u32, items: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-z0-9:.-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(depth, size, items, move |inner| {
        let items = items as usize;
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..items).prop_map(Value::Array),
            prop::collection::hash_map(any::<String>(), inner, 0..items)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Our topics, near misses, and anything.
fn arb_topic() -> impl Strategy<Value = String> {
    let ours = (
        0..KINDS.len(),
        prop::sample::select(vec![
            "events",
            "created",
            "updated",
            "deleted",
            "status_changed",
            "selecting",
            "released",
            "x",
        ]),
    )
        .prop_map(|(kind, last)| format!("mesa-ya.{}.{last}", KINDS[kind].0));
    prop_oneof![ours, "[a-z.-]{0,30}", any::<String>()]
}

/// Strings the parser looks for (verbs, pooled UUIDs), so generated
/// envelopes reach its deeper paths, and the router's; else any `json`.
fn arb_field_value(json: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    let words: Vec<String> = [
        "created",
        "updated",
        "deleted",
        "selecting",
        "released",
        "status_changed",
        "table.updated",
        "restaurant.status_changed",
        "section-object.created",
        "",
        ".",
        "tables",
    ]
    .into_iter()
    .map(String::from)
    .chain(all_pool_ids())
    .collect();
    prop_oneof![prop::sample::select(words).prop_map(Value::from), json]
}

/// JSON objects shaped more or less like envelopes, their other values
/// `json`.
fn arb_envelope_like(json: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    let fields = ["event_type", "action", "entity_id", "entityId", "data", "entity", "timestamp"];
    let pairs = prop::collection::vec((prop::sample::select(fields.to_vec()), arb_field_value(json.clone())), 0..6);
    // Sometimes an entity object with the ids routing reads.
    (pairs, prop::option::of(arb_entity_fields(json))).prop_map(|(pairs, entity)| {
        let mut base: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Some(entity) = entity {
            base.insert("data".into(), Value::Object(entity));
        }
        Value::Object(base)
    })
}

fn arb_entity_fields(json: BoxedStrategy<Value>) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["id", "sectionId", "objectId", "tableId", "restaurantId", "updatedAt", "tables"]),
            arb_field_value(json),
        ),
        0..5,
    )
    .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn any_id() -> impl Strategy<Value = String> {
    prop_oneof![uuid_string(), "\\PC{1,16}"]
}

/// The action numbered `n` (0..12) for a kind: `status_changed` is only
/// for restaurants.
fn action_of(kind: usize, n: usize) -> &'static str {
    if KINDS[kind].2 == EntityKind::Restaurant {
        ["created", "updated", "deleted", "status_changed"][n % 4]
    } else {
        ACTIONS[n % 3]
    }
}

/// One valid upstream change, as Nest would publish it.
#[derive(Clone, Debug)]
struct Change {
    kind: usize,
    action: &'static str,
    entity: Map<String, Value>,
    v1: bool,
    /// v1 only: send `action`, else only the topic names the verb.
    v1_action_field: bool,
}

impl Change {
    fn id(&self) -> &str {
        self.entity["id"].as_str().unwrap()
    }

    fn record(&self) -> (String, Value) {
        let (domain, prefix, _) = KINDS[self.kind];
        let entity = Value::Object(self.entity.clone());
        if self.v1 {
            let mut envelope = json!({"timestamp": "2025-12-01T18:22:05.431Z", "entity": entity});
            if self.v1_action_field {
                envelope["action"] = json!(format!("{prefix}.{}", self.action));
            }
            if self.action != "created" {
                envelope["entityId"] = json!(self.id());
            }
            (format!("mesa-ya.{domain}.{}", self.action), envelope)
        } else {
            let envelope = json!({
                "timestamp": "2026-01-10T16:00:00.500Z",
                "event_type": self.action,
                "entity_id": self.id(),
                "data": entity,
            });
            (format!("mesa-ya.{domain}.events"), envelope)
        }
    }

    /// The entity fields holding ids this change's kind is checked on.
    fn id_fields(&self) -> Vec<&'static str> {
        let mut fields = vec!["id"];
        fields.extend(match KINDS[self.kind].2 {
            EntityKind::Section => &["restaurantId"][..],
            EntityKind::Table => &["sectionId"][..],
            EntityKind::SectionObject => &["sectionId", "objectId"][..],
            EntityKind::Reservation => &["tableId"][..],
            EntityKind::Object | EntityKind::Restaurant => &[][..],
        });
        fields
    }
}

fn arb_timestamp() -> impl Strategy<Value = String> {
    (0i64..4_000_000_000_000).prop_map(|ms| {
        chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    })
}

/// A change with arbitrary extra entity fields and generated UUID ids; the
/// ids it is routed by are now and then absent.
fn arb_change() -> impl Strategy<Value = Change> {
    let extra = prop::collection::hash_map("[a-zA-Z]{1,10}", arb_json(), 0..6);
    let routing = || prop::option::weighted(0.85, uuid_string());
    (
        (0..KINDS.len(), 0..12usize),
        extra,
        (uuid_string(), routing(), routing(), routing()),
        prop::option::of(arb_timestamp()),
        // Embedded tables are only ever forgotten, never learned: not
        // checked for UUIDs.
        prop::collection::vec(any_id(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |((kind, action), extra, (id, first, second, third), updated_at, tables, v1, v1_action_field)| {
                let action = action_of(kind, action);
                let mut entity: Map<String, Value> =
                    extra.into_iter().filter(|(key, _)| !ID_FIELDS.contains(&key.as_str())).collect();
                entity.insert("id".into(), json!(id));
                let mut put = |field: &str, value: Option<String>| {
                    if let Some(value) = value {
                        entity.insert(field.into(), json!(value));
                    }
                };
                match KINDS[kind].2 {
                    EntityKind::Section => put("restaurantId", first),
                    EntityKind::Table => put("sectionId", first),
                    EntityKind::SectionObject => {
                        put("sectionId", first);
                        put("objectId", second);
                    }
                    EntityKind::Reservation => put("tableId", third),
                    EntityKind::Object | EntityKind::Restaurant => {}
                }
                if KINDS[kind].2 == EntityKind::Section && !tables.is_empty() {
                    entity.insert("tables".into(), tables.iter().map(|t| json!({"id": t, "sectionId": id})).collect());
                }
                if let Some(at) = updated_at {
                    entity.insert("updatedAt".into(), json!(at));
                }
                Change { kind, action, entity, v1, v1_action_field }
            },
        )
}

// ---------------------------------------------------------------- parsing

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_bytes(topic in arb_topic(), bytes in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let _ = envelope::parse(&topic, &bytes, max);
        let _ = envelope::parse(&topic, &bytes, MAX);
    }

    #[test]
    fn parse_never_panics_on_json(topic in arb_topic(), value in prop_oneof![arb_json(), arb_envelope_like(arb_json())]) {
        let _ = envelope::parse(&topic, value.to_string().as_bytes(), MAX);
    }

    #[test]
    fn a_valid_envelope_round_trips(change in arb_change()) {
        let (topic, record) = change.record();
        let event = envelope::parse(&topic, record.to_string().as_bytes(), MAX)
            .unwrap_or_else(|rejection| panic!("{rejection:?} for {topic} {record}"));
        let (_, _, kind) = KINDS[change.kind];
        let entity = &change.entity;
        let text = |field: &str| entity.get(field).and_then(Value::as_str);

        prop_assert_eq!(event.key.kind, kind);
        prop_assert_eq!(&*event.key.id, change.id());
        prop_assert_eq!(event.action, Action::parse(change.action).unwrap());
        let section = match kind {
            EntityKind::Section => SectionId::parse(change.id()),
            EntityKind::Table | EntityKind::SectionObject => text("sectionId").and_then(SectionId::parse),
            EntityKind::Object | EntityKind::Reservation | EntityKind::Restaurant => None,
        };
        prop_assert_eq!(section.is_some(), kind == EntityKind::Section || text("sectionId").is_some());
        prop_assert_eq!(event.section_id, section);
        let restaurant = match kind {
            EntityKind::Section => text("restaurantId"),
            EntityKind::Restaurant => Some(change.id()),
            _ => None,
        };
        prop_assert_eq!(event.restaurant_id.as_deref(), restaurant);
        prop_assert_eq!(event.object_id.as_deref(), text("objectId"));
        prop_assert_eq!(event.table_id.as_deref(), text("tableId"));
        prop_assert_eq!(event.updated_at, text("updatedAt").and_then(timestamp::parse_millis));
        // Only UUIDs, in one spelling: anything else would only grow the maps.
        let tables: Vec<String> = entity
            .get("tables")
            .and_then(Value::as_array)
            .map(|tables| {
                tables
                    .iter()
                    .filter_map(|t| uuid::Uuid::try_parse(t["id"].as_str()?).ok())
                    .map(|id| id.hyphenated().to_string())
                    .collect()
            })
            .unwrap_or_default();
        prop_assert_eq!(event.embedded_table_ids.iter().map(|t| t.to_string()).collect::<Vec<_>>(), tables);
        // Both sides go through serde_json's parser: without its
        // `float_roundtrip` feature it may land one ulp off on some floats,
        // but the same way for the same text (the payload's floats are
        // printed exactly as sent: shortest round-trip form).
        let payload: Value = serde_json::from_str(&event.payload)
            .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {}", event.payload));
        let sent: Value = serde_json::from_str(&Value::Object(entity.clone()).to_string()).unwrap();
        prop_assert_eq!(payload, sent);
    }

    /// Its own id, or a `sectionId`, `objectId`, `tableId` or (a section's)
    /// `restaurantId` that is present but not a UUID: rejected.
    #[test]
    fn an_id_that_is_not_a_uuid_is_rejected(
        change in arb_change(),
        field in any::<prop::sample::Index>(),
        bad in non_uuid(),
    ) {
        let mut change = change;
        let field = *field.get(&change.id_fields());
        change.entity.insert(field.into(), json!(bad));
        let (topic, record) = change.record();
        // An empty own id is no id at all.
        let expected = if field == "id" && bad.is_empty() { Rejection::NoId } else { Rejection::BadId };
        prop_assert_eq!(envelope::parse(&topic, record.to_string().as_bytes(), MAX), Err(expected), "{} {}", topic, record);
    }

    #[test]
    fn only_restaurants_change_status(change in arb_change()) {
        let mut change = change;
        change.action = "status_changed";
        let (topic, record) = change.record();
        let parsed = envelope::parse(&topic, record.to_string().as_bytes(), MAX);
        if KINDS[change.kind].2 == EntityKind::Restaurant {
            prop_assert_eq!(parsed.map(|event| event.action), Ok(Action::StatusChanged));
        } else {
            prop_assert_eq!(parsed, Err(Rejection::UnknownAction), "{} {}", topic, record);
        }
    }
}

/// Once a shrunk failure of `a_valid_envelope_round_trips` (its seed no
/// longer replays it: the generator changed).
#[test]
fn a_tiny_float_round_trips() {
    let id = uuid::Uuid::nil().hyphenated().to_string();
    let entity = json!({"a": [{"": 1.0955758622609127e-190}], "id": id});
    let record = json!({"event_type": "created", "entity_id": id, "data": entity}).to_string();
    let event = envelope::parse("mesa-ya.sections.events", record.as_bytes(), MAX).unwrap();
    let payload: Value = serde_json::from_str(&event.payload).unwrap();
    assert_eq!(payload, serde_json::from_str::<Value>(&entity.to_string()).unwrap());
}

// ---------------------------------------------------------------- routing

/// The hold of a reservation whose table is unknown, in ms.
const HOLD_MS: u64 = 5_000;

/// One delivery as a client and the dispatcher see it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    section: SectionId,
    /// The frame's `event`, e.g. `table.deleted`.
    event: String,
    payload: Value,
    kind: EntityKind,
    id: String,
    action: Action,
    updated_at: Option<i64>,
    ends_section: bool,
}

fn seen(section: SectionId, delivery: &Delivery) -> Seen {
    let frame: Value = serde_json::from_slice(delivery.frames.full().utf8_bytes()).unwrap();
    Seen {
        section,
        event: frame["event"].as_str().expect("frames name their event").to_string(),
        payload: frame["payload"].clone(),
        kind: delivery.key.kind,
        id: delivery.key.id.to_string(),
        action: delivery.action,
        updated_at: delivery.updated_at,
        ends_section: delivery.ends_section,
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// `event` sent to `section` as `action`, carrying `payload`.
fn expect(section: SectionId, event: &EntityEvent, action: Action, payload: Value, ends_section: bool) -> Seen {
    Seen {
        section,
        event: format!("{}.{}", prefix(event.key.kind), action.as_str()),
        payload,
        kind: event.key.kind,
        id: event.key.id.to_string(),
        action,
        updated_at: event.updated_at,
        ends_section,
    }
}

/// What routing one event must deliver, in this order: the delete to the
/// section a table or link left, the event to its sections (one shared
/// frame; any order), then the reservations it released (in the order they
/// were held).
#[derive(Debug, Default)]
struct Expected {
    moved: Option<Seen>,
    /// Sorted by section.
    main: Vec<Seen>,
    released: Vec<Seen>,
    /// The object entity a section-object frame carries under `object`.
    object: Option<String>,
}

/// The routing rules, written as plainly as possible.
#[derive(Default)]
struct Model {
    /// table → its section
    tables: HashMap<String, SectionId>,
    /// section-object → (section, object)
    links: HashMap<String, (SectionId, String)>,
    /// object → its latest entity
    objects: HashMap<String, String>,
    /// section → its restaurant
    restaurants: HashMap<SectionId, String>,
    /// restaurant → its owner
    owners: HashMap<String, String>,
    /// (table, held at ms, reservation), oldest first
    held: Vec<(String, u64, EntityEvent)>,
}

impl Model {
    /// `None`: unroutable.
    fn route(&mut self, event: &EntityEvent, now: u64) -> Option<Expected> {
        let id = event.key.id.to_string();
        let deleted = event.action == Action::Deleted;
        let mut sections = BTreeSet::new();
        let mut expected = Expected::default();
        let mut moved_from = None;
        let mut ends_section = false;
        match event.key.kind {
            EntityKind::Section => {
                let section = event.section_id?;
                if deleted {
                    self.forget_section(section, &event.embedded_table_ids);
                } else if let Some(restaurant) = &event.restaurant_id {
                    self.restaurants.insert(section, restaurant.to_string());
                }
                sections.insert(section);
                ends_section = deleted;
            }
            EntityKind::Table => {
                let section = event.section_id?;
                if deleted {
                    self.tables.remove(&id);
                } else {
                    moved_from = self.tables.insert(id.clone(), section).filter(|&old| old != section);
                    expected.released = self.release(&id);
                }
                sections.insert(section);
            }
            EntityKind::SectionObject => {
                let old = self.links.remove(&id);
                if !deleted {
                    // An update that leaves a field out keeps what the link had.
                    let section = event.section_id.or(old.as_ref().map(|(section, _)| *section));
                    let object =
                        event.object_id.as_deref().map(str::to_string).or(old.as_ref().map(|(_, o)| o.clone()));
                    if let (Some(section), Some(object)) = (section, object) {
                        self.links.insert(id, (section, object));
                        moved_from = old.map(|(old, _)| old).filter(|&old| old != section);
                    }
                    expected.object = event.object_id.as_ref().and_then(|object| self.objects.get(&**object)).cloned();
                }
                sections.insert(event.section_id?);
            }
            EntityKind::Object => {
                sections =
                    self.links.values().filter(|(_, object)| *object == id).map(|(section, _)| *section).collect();
                if deleted {
                    self.objects.remove(&id);
                    self.links.retain(|_, (_, object)| *object != id);
                } else {
                    self.objects.insert(id, event.payload.clone());
                }
            }
            EntityKind::Reservation => {
                let table = event.table_id.as_deref()?;
                match self.tables.get(table) {
                    Some(&section) => {
                        sections.insert(section);
                    }
                    None => self.held.push((table.to_string(), now, event.clone())),
                }
            }
            EntityKind::Restaurant => {
                sections = self.restaurants.iter().filter(|(_, r)| **r == id).map(|(section, _)| *section).collect();
                if deleted {
                    self.owners.remove(&id);
                    self.restaurants.retain(|_, restaurant| *restaurant != id);
                } else if let Some(owner) = json_of(&event.payload)["ownerId"].as_str() {
                    self.owners.insert(id.clone(), owner.to_string());
                }
                if event.action == Action::Created {
                    return None;
                }
                if sections.is_empty() {
                    return None;
                }
                if deleted {
                    for &section in &sections {
                        self.forget_section(section, &[]);
                    }
                }
                ends_section = deleted;
            }
        }
        expected.moved = moved_from.map(|old| expect(old, event, Action::Deleted, json_of(&event.payload), false));
        let mut payload = json_of(&event.payload);
        if let Some(object) = &expected.object {
            payload.as_object_mut().unwrap().insert("object".into(), json_of(object));
        }
        expected.main = sections
            .into_iter()
            .map(|section| expect(section, event, event.action, payload.clone(), ends_section))
            .collect();
        Some(expected)
    }

    fn forget_section(&mut self, section: SectionId, embedded_tables: &[Arc<str>]) {
        for table in embedded_tables {
            self.tables.remove(&**table);
        }
        self.tables.retain(|_, owner| *owner != section);
        self.links.retain(|_, (owner, _)| *owner != section);
        self.restaurants.remove(&section);
    }

    /// The reservations held for `table`, now sent to its section.
    fn release(&mut self, table: &str) -> Vec<Seen> {
        let section = self.tables[table];
        let (released, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(t, ..)| t == table);
        self.held = kept;
        released
            .iter()
            .map(|(_, _, event)| expect(section, event, event.action, json_of(&event.payload), false))
            .collect()
    }

    /// A snapshot showed `section` (of `restaurant`) with `tables`.
    fn learn(&mut self, section: SectionId, restaurant: Option<&str>, tables: &[String]) -> Vec<Seen> {
        if let Some(restaurant) = restaurant {
            self.restaurants.insert(section, restaurant.to_string());
        }
        let mut released = Vec::new();
        for table in tables {
            // Events are at least as fresh as a snapshot.
            self.tables.entry(table.clone()).or_insert(section);
            released.extend(self.release(table));
        }
        released
    }

    fn expire(&mut self, now: u64) -> usize {
        let before = self.held.len();
        self.held.retain(|(_, at, _)| now - at < HOLD_MS);
        before - self.held.len()
    }

    fn counts(&self) -> LinkCounts {
        LinkCounts {
            tables: self.tables.len(),
            section_objects: self.links.len(),
            objects: self.objects.len(),
            restaurants: self.restaurants.values().collect::<HashSet<_>>().len(),
            restaurant_owners: self.owners.len(),
            held_reservations: self.held.len(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A record: a generated change, or anything envelope-like.
    Record(String, Value),
    /// A snapshot of a section showed its restaurant and these tables.
    Learn(usize, Option<usize>, Vec<usize>),
    /// Time passes by this many ms; held reservations expire.
    Advance(u64),
}

fn arb_pooled_change() -> impl Strategy<Value = (String, Value)> {
    (
        (0..KINDS.len(), 0..13usize, any::<u16>(), pool_ref()),
        (
            prop::option::weighted(0.9, pool_ref()),
            prop::option::weighted(0.9, pool_ref()),
            prop::option::weighted(0.9, pool_ref()),
            prop::option::weighted(0.6, pool_ref()),
        ),
        prop::collection::vec(pool_ref(), 0..3),
        (prop::option::weighted(0.2, arb_timestamp()), any::<bool>()),
    )
        .prop_map(|((kind, action, n, own), (section, table, object, restaurant), tables, (updated_at, v1))| {
            let kind_value = KINDS[kind].2;
            // Now and then `status_changed` for a kind that has none.
            let action = if action == 12 { "status_changed" } else { action_of(kind, action) };
            let tag = match kind_value {
                EntityKind::Section => SECTION,
                EntityKind::Table => TABLE,
                EntityKind::Object => OBJECT,
                EntityKind::SectionObject => LINK,
                EntityKind::Reservation => RESERVATION,
                EntityKind::Restaurant => RESTAURANT,
            };
            let mut entity = Map::new();
            entity.insert("id".into(), json!(own.of(tag)));
            // A payload of its own, to tell events apart.
            entity.insert("n".into(), json!(n));
            let mut put = |field: &str, value: Option<PoolRef>, tag: u128| {
                if let Some(value) = value {
                    entity.insert(field.into(), json!(value.of(tag)));
                }
            };
            match kind_value {
                EntityKind::Section => {
                    put("restaurantId", restaurant, RESTAURANT);
                    let tables: Vec<Value> = tables.iter().map(|t| json!({"id": t.of(TABLE)})).collect();
                    entity.insert("tables".into(), tables.into());
                }
                EntityKind::Table => put("sectionId", section, SECTION),
                EntityKind::SectionObject => {
                    put("sectionId", section, SECTION);
                    put("objectId", object, OBJECT);
                }
                EntityKind::Reservation => put("tableId", table, TABLE),
                EntityKind::Restaurant => put("ownerId", section, OWNER),
                EntityKind::Object => {}
            }
            if let Some(at) = updated_at {
                entity.insert("updatedAt".into(), json!(at));
            }
            Change { kind, action, entity, v1, v1_action_field: true }.record()
        })
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => arb_pooled_change().prop_map(|(topic, record)| Op::Record(topic, record)),
        // Shallow: the parser's own properties go deep.
        1 => (arb_topic(), arb_envelope_like(arb_json_sized(2, 8, 3))).prop_map(|(topic, record)| Op::Record(topic, record)),
        2 => (
            0..pool_size(SECTION),
            prop::option::weighted(0.6, 0..pool_size(RESTAURANT)),
            prop::collection::vec(0..pool_size(TABLE), 0..3),
        )
            .prop_map(|(section, restaurant, tables)| Op::Learn(section, restaurant, tables)),
        1 => (0u64..8_000).prop_map(Op::Advance),
    ]
}

/// A router and its model, fed the same ops.
struct Harness {
    router: EventRouter,
    model: Model,
    /// Every section an event or a snapshot has named so far.
    named: BTreeSet<SectionId>,
    start: Instant,
    /// ms since `start`.
    clock: u64,
}

impl Harness {
    fn new() -> Self {
        Self {
            router: EventRouter::default(),
            model: Model::default(),
            named: BTreeSet::new(),
            start: Instant::now(),
            clock: 0,
        }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.clock)
    }

    fn stamp(&self) -> Stamp {
        Stamp { at: self.now(), position: None }
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Record(topic, record) => self.record(&topic, &record)?,
            Op::Learn(section, restaurant, tables) => {
                let section = pool_section(section);
                let restaurant = restaurant.map(|r| pool_id(RESTAURANT, r));
                let tables: Vec<String> = tables.into_iter().map(|t| pool_id(TABLE, t)).collect();
                self.named.insert(section);
                let expected = self.model.learn(section, restaurant.as_deref(), &tables);
                let learned = LearnedSection {
                    section,
                    restaurant: restaurant.as_deref().map(Arc::from),
                    table_ids: tables.iter().map(|t| Arc::from(t.as_str())).collect(),
                };
                let mut delivered = Vec::new();
                let released = self
                    .router
                    .learn_section(learned, self.stamp(), |section, delivery| delivered.push((section, delivery)));
                prop_assert_eq!(released, delivered.len());
                let what = format!("learn {section} {restaurant:?} {tables:?}");
                self.check_delivered(&delivered, &what)?;
                let seen: Vec<Seen> = delivered.iter().map(|(section, delivery)| seen(*section, delivery)).collect();
                prop_assert_eq!(&seen, &expected, "{}", what);
            }
            Op::Advance(ms) => {
                self.clock += ms;
                let expired = self.router.expire_held(self.now());
                prop_assert_eq!(expired, self.model.expire(self.clock), "expired after {} ms more", ms);
            }
        }
        prop_assert_eq!(self.router.link_counts(), self.model.counts());
        Ok(())
    }

    fn record(&mut self, topic: &str, record: &Value) -> Result<(), TestCaseError> {
        let Ok(event) = envelope::parse(topic, record.to_string().as_bytes(), MAX) else { return Ok(()) };
        self.named.extend(event.section_id);
        let expected = self.model.route(&event, self.clock);
        let mut delivered: Vec<(SectionId, Arc<Delivery>)> = Vec::new();
        let result =
            self.router.route(event.clone(), self.stamp(), |section, delivery| delivered.push((section, delivery)));
        let what = format!("{topic} {record}");
        self.check_delivered(&delivered, &what)?;

        let Some(expected) = expected else {
            prop_assert_eq!(result, Err(Unroutable), "{} must be unroutable, reached {:?}", what, delivered);
            prop_assert!(delivered.is_empty());
            return Ok(());
        };
        prop_assert_eq!(result, Ok(delivered.len()), "{}", what);
        let moved = usize::from(expected.moved.is_some());
        prop_assert_eq!(
            delivered.len(),
            moved + expected.main.len() + expected.released.len(),
            "{}: expected {:?}, got {:?}",
            what,
            expected,
            delivered.iter().map(|(s, d)| seen(*s, d)).collect::<Vec<_>>()
        );
        let (left, rest) = delivered.split_at(moved);
        let (main, released) = rest.split_at(expected.main.len());

        prop_assert_eq!(left.first().map(|(s, d)| seen(*s, d)), expected.moved, "{}", what);
        let mut main_seen: Vec<Seen> = main.iter().map(|(s, d)| seen(*s, d)).collect();
        main_seen.sort_by_key(|seen| seen.section);
        prop_assert_eq!(&main_seen, &expected.main, "{}", what);
        let released_seen: Vec<Seen> = released.iter().map(|(s, d)| seen(*s, d)).collect();
        prop_assert_eq!(&released_seen, &expected.released, "{}", what);

        // One frame for all the event's sections.
        if let Some((_, first)) = main.first() {
            prop_assert!(main.iter().all(|(_, d)| Arc::ptr_eq(d, first)), "{}", what);
            // The object goes last into a section-object's payload.
            if let Some(object) = &expected.object {
                let text = std::str::from_utf8(first.frames.full().utf8_bytes()).unwrap();
                prop_assert!(text.ends_with(&format!("\"object\":{object}}}}}")), "{}: {}", what, text);
            }
        }
        Ok(())
    }

    /// What holds for any delivery: to a section named before, routed now.
    fn check_delivered(&self, delivered: &[(SectionId, Arc<Delivery>)], what: &str) -> Result<(), TestCaseError> {
        for (section, delivery) in delivered {
            prop_assert!(self.named.contains(section), "{} was never named before {}", section, what);
            prop_assert_eq!(delivery.routed_at, self.now());
        }
        Ok(())
    }

    /// Deletes every section named so far (tables, links and restaurants
    /// only ever point at those), every object and every owned restaurant
    /// the model holds, and lets every hold run out.
    fn delete_everything(&mut self) -> Result<(), TestCaseError> {
        let sections = self.named.iter().map(|section| ("sections", section.to_string()));
        let objects = self.model.objects.keys().map(|object| ("objects", object.clone()));
        let owned = self.model.owners.keys().map(|restaurant| ("restaurants", restaurant.clone()));
        for (domain, id) in sections.chain(objects).chain(owned).collect::<Vec<_>>() {
            let record = json!({"event_type": "deleted", "data": {"id": id}});
            self.record(&format!("mesa-ya.{domain}.events"), &record)?;
            prop_assert_eq!(self.router.link_counts(), self.model.counts());
        }
        self.apply(Op::Advance(HOLD_MS))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift, ..ProptestConfig::default() })]

    #[test]
    fn routing_matches_the_rules_and_never_panics(ops in prop::collection::vec(arb_op(), 1..60)) {
        prop_assert_eq!(HOLD_RESERVATIONS_FOR, Duration::from_millis(HOLD_MS));
        let mut harness = Harness::new();
        for op in ops {
            harness.apply(op)?;
        }
        harness.delete_everything()?;
        prop_assert_eq!(harness.router.link_counts(), LinkCounts::default(), "deleting everything empties the maps");
    }
}
