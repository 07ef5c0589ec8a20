//! Property tests of the ingest's pure core (no broker): the envelope parser
//! and the router, on generated input.
//!
//! - `parse` never panics, whatever the topic and bytes;
//! - a valid v2 or v1 envelope parses to the kind,
//!   action, id and section it was generated with, and its payload is the
//!   entity as sent (same JSON value);
//! - `EventRouter::route` never panics on any sequence of events, and
//!   dispatches exactly where a reference model of the routing rules says: every
//!   target is a section the event itself or an earlier link names.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mesaya_realtime::application::delivery::Delivery;
use mesaya_realtime::application::router::{EventRouter, LearnedTables};
use mesaya_realtime::domain::entity::{Action, EntityKind};
use mesaya_realtime::domain::envelope::{self, EntityEvent};
use mesaya_realtime::domain::ids::SectionId;
use mesaya_realtime::domain::timestamp;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const MAX: usize = 1 << 20;

/// (topic domain, event-name prefix, kind)
const KINDS: [(&str, &str, EntityKind); 5] = [
    ("sections", "section", EntityKind::Section),
    ("tables", "table", EntityKind::Table),
    ("objects", "object", EntityKind::Object),
    ("section-objects", "section-object", EntityKind::SectionObject),
    ("reservations", "reservation", EntityKind::Reservation),
];
const ACTIONS: [&str; 3] = ["created", "updated", "deleted"];

// ------------------------------------------------------------- strategies

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-z0-9:.-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Our topics, near misses, and anything.
fn arb_topic() -> impl Strategy<Value = String> {
    let ours = (
        0..KINDS.len(),
        prop::sample::select(vec!["events", "created", "updated", "deleted", "selecting", "released", "x"]),
    )
        .prop_map(|(kind, last)| format!("mesa-ya.{}.{last}", KINDS[kind].0));
    prop_oneof![ours, "[a-z.-]{0,30}", any::<String>()]
}

/// Strings the parser looks for, so generated envelopes reach its deeper paths.
fn arb_field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "created",
            "updated",
            "deleted",
            "selecting",
            "released",
            "status_changed",
            "table.updated",
            "section-object.created",
            "",
            ".",
            "tables",
        ])
        .prop_map(Value::from),
        arb_json(),
    ]
}

/// JSON objects shaped more or less like envelopes.
fn arb_envelope_like() -> impl Strategy<Value = Value> {
    let fields = ["event_type", "action", "entity_id", "entityId", "data", "entity", "timestamp"];
    prop::collection::vec((prop::sample::select(fields.to_vec()), arb_field_value()), 0..6).prop_flat_map(|pairs| {
        let base: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        // Sometimes an entity object with the ids routing reads.
        (Just(base), prop::option::of(arb_entity_fields())).prop_map(|(mut base, entity)| {
            if let Some(entity) = entity {
                base.insert("data".into(), Value::Object(entity));
            }
            Value::Object(base)
        })
    })
}

fn arb_entity_fields() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(
        (
            prop::sample::select(vec!["id", "sectionId", "objectId", "tableId", "updatedAt", "tables"]),
            arb_field_value(),
        ),
        0..5,
    )
    .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn uuid_string() -> impl Strategy<Value = String> {
    any::<u128>().prop_map(|bits| uuid::Uuid::from_u128(bits).hyphenated().to_string())
}

fn any_id() -> impl Strategy<Value = String> {
    prop_oneof![uuid_string(), "\\PC{1,16}"]
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
}

fn arb_timestamp() -> impl Strategy<Value = String> {
    (0i64..4_000_000_000_000).prop_map(|ms| {
        chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    })
}

/// A change with arbitrary extra entity fields and generated ids.
fn arb_change() -> impl Strategy<Value = Change> {
    let extra = prop::collection::hash_map("[a-zA-Z]{1,10}", arb_json(), 0..6);
    (
        0..KINDS.len(),
        prop::sample::select(ACTIONS.to_vec()),
        extra,
        (uuid_string(), any_id(), any_id(), any_id()),
        prop::option::of(arb_timestamp()),
        prop::collection::vec(any_id(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(kind, action, extra, (uuid, other, second, third), updated_at, tables, v1, v1_action_field)| {
                let mut entity: Map<String, Value> = extra.into_iter().collect();
                let kind_value = KINDS[kind].2;
                let id = if kind_value == EntityKind::Section { uuid.clone() } else { other };
                entity.insert("id".into(), json!(id));
                match kind_value {
                    EntityKind::Section => {
                        if !tables.is_empty() {
                            entity.insert(
                                "tables".into(),
                                tables.iter().map(|t| json!({"id": t, "sectionId": uuid})).collect(),
                            );
                        }
                    }
                    EntityKind::Table => {
                        entity.insert("sectionId".into(), json!(uuid));
                    }
                    EntityKind::SectionObject => {
                        entity.insert("sectionId".into(), json!(uuid));
                        entity.insert("objectId".into(), json!(second));
                    }
                    EntityKind::Reservation => {
                        entity.insert("tableId".into(), json!(third));
                    }
                    EntityKind::Object => {}
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
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_bytes(topic in arb_topic(), bytes in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let _ = envelope::parse(&topic, &bytes, max);
        let _ = envelope::parse(&topic, &bytes, MAX);
    }

    #[test]
    fn parse_never_panics_on_json(topic in arb_topic(), value in prop_oneof![arb_json(), arb_envelope_like()]) {
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
            EntityKind::Object | EntityKind::Reservation => None,
        };
        prop_assert!(section.is_some() || !matches!(kind, EntityKind::Section | EntityKind::Table | EntityKind::SectionObject));
        prop_assert_eq!(event.section_id, section);
        prop_assert_eq!(event.object_id.as_deref(), text("objectId"));
        prop_assert_eq!(event.table_id.as_deref(), text("tableId"));
        prop_assert_eq!(event.updated_at, text("updatedAt").and_then(timestamp::parse_millis));
        let tables: Vec<&str> = entity
            .get("tables")
            .and_then(Value::as_array)
            .map(|tables| tables.iter().filter_map(|t| t["id"].as_str()).collect())
            .unwrap_or_default();
        prop_assert_eq!(event.embedded_table_ids.iter().map(|t| &**t).collect::<Vec<_>>(), tables);
        // Both sides go through serde_json's parser: without its
        // `float_roundtrip` feature it may land one ulp off on some floats,
        // but the same way for the same text (the payload's floats are
        // printed exactly as sent: shortest round-trip form).
        let payload: Value = serde_json::from_str(&event.payload)
            .unwrap_or_else(|e| panic!("payload is not JSON ({e}): {}", event.payload));
        let sent: Value = serde_json::from_str(&Value::Object(entity.clone()).to_string()).unwrap();
        prop_assert_eq!(payload, sent);
    }
}

// ---------------------------------------------------------------- routing

/// The routing rules (README, "Routing"),
/// written as plainly as possible.
#[derive(Default)]
struct Model {
    table_sections: HashMap<String, SectionId>,
    /// section-object id → (section, object)
    links: HashMap<String, (SectionId, String)>,
}

/// Where one event must go: its sections, and the old section of a table
/// that moved (which gets a `table.deleted`).
#[derive(Debug, PartialEq, Eq)]
struct Expected {
    sections: BTreeSet<SectionId>,
    moved_from: Option<SectionId>,
}

impl Model {
    fn route(&mut self, event: &EntityEvent) -> Option<Expected> {
        let id = event.key.id.to_string();
        let one = |section: SectionId| Some(Expected { sections: BTreeSet::from([section]), moved_from: None });
        match event.key.kind {
            EntityKind::Section => {
                let section = event.section_id?;
                if event.action == Action::Deleted {
                    for table in &event.embedded_table_ids {
                        self.table_sections.remove(&**table);
                    }
                    self.table_sections.retain(|_, owner| *owner != section);
                    self.links.retain(|_, (owner, _)| *owner != section);
                }
                one(section)
            }
            EntityKind::Table => {
                let section = event.section_id?;
                let mut moved_from = None;
                if event.action == Action::Deleted {
                    self.table_sections.remove(&id);
                } else if let Some(old) = self.table_sections.insert(id, section) {
                    moved_from = (old != section).then_some(old);
                }
                Some(Expected { sections: BTreeSet::from([section]), moved_from })
            }
            EntityKind::SectionObject => {
                self.links.remove(&id);
                if let (false, Some(section), Some(object)) =
                    (event.action == Action::Deleted, event.section_id, &event.object_id)
                {
                    self.links.insert(id, (section, object.to_string()));
                }
                one(event.section_id?)
            }
            EntityKind::Object => {
                let sections: BTreeSet<SectionId> =
                    self.links.values().filter(|(_, object)| *object == id).map(|(section, _)| *section).collect();
                if event.action == Action::Deleted {
                    self.links.retain(|_, (_, object)| *object != id);
                }
                (!sections.is_empty()).then_some(Expected { sections, moved_from: None })
            }
            EntityKind::Reservation => one(*self.table_sections.get(&**event.table_id.as_ref()?)?),
        }
    }

    fn learn(&mut self, section: SectionId, tables: &[String]) {
        for table in tables {
            self.table_sections.entry(table.clone()).or_insert(section);
        }
    }
}

/// Small pools, so links, moves and deletes collide often.
const SECTIONS: [&str; 4] = [
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
    "not-a-section",
];

#[derive(Clone, Debug)]
enum Op {
    /// A record: a generated change, or anything envelope-like.
    Record(String, Value),
    /// A snapshot of a section showed these tables.
    Learn(usize, Vec<String>),
}

fn pooled(prefix: &'static str, n: usize) -> impl Strategy<Value = String> {
    (0..n).prop_map(move |i| format!("{prefix}{i}"))
}

fn arb_pooled_change() -> impl Strategy<Value = (String, Value)> {
    (
        0..KINDS.len(),
        prop::sample::select(ACTIONS.to_vec()),
        prop::option::weighted(0.9, 0..SECTIONS.len()),
        (pooled("t", 3), pooled("o", 3), pooled("so", 4), pooled("r", 2)),
        prop::collection::vec(pooled("t", 3), 0..3),
        any::<bool>(),
    )
        .prop_map(|(kind, action, section, (table, object, link, reservation), tables, v1)| {
            let section = section.map(|i| SECTIONS[i]);
            let mut entity = Map::new();
            let kind_value = KINDS[kind].2;
            let id = match kind_value {
                EntityKind::Section => section.unwrap_or(SECTIONS[0]).to_string(),
                EntityKind::Table => table.clone(),
                EntityKind::Object => object.clone(),
                EntityKind::SectionObject => link,
                EntityKind::Reservation => reservation,
            };
            entity.insert("id".into(), json!(id));
            if let (Some(section), EntityKind::Table | EntityKind::SectionObject) = (section, kind_value) {
                entity.insert("sectionId".into(), json!(section));
            }
            match kind_value {
                EntityKind::SectionObject => {
                    entity.insert("objectId".into(), json!(object));
                }
                EntityKind::Reservation => {
                    entity.insert("tableId".into(), json!(table));
                }
                EntityKind::Section => {
                    entity.insert("tables".into(), tables.iter().map(|t| json!({"id": t})).collect());
                }
                _ => {}
            }
            Change { kind, action, entity, v1, v1_action_field: true }.record()
        })
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => arb_pooled_change().prop_map(|(topic, record)| Op::Record(topic, record)),
        1 => (arb_topic(), arb_envelope_like()).prop_map(|(topic, record)| Op::Record(topic, record)),
        2 => (0..3usize, prop::collection::vec(pooled("t", 3), 0..3)).prop_map(|(section, tables)| Op::Learn(section, tables)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn routing_matches_the_rules_and_never_panics(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut router = EventRouter::default();
        let mut model = Model::default();
        // Every section an event or a learned snapshot has named so far.
        let mut named: BTreeSet<SectionId> = BTreeSet::new();
        for op in ops {
            let (topic, record) = match op {
                Op::Learn(section, tables) => {
                    let section = SectionId::parse(SECTIONS[section]).unwrap();
                    named.insert(section);
                    model.learn(section, &tables);
                    router.learn_tables(LearnedTables { section, table_ids: tables.iter().map(|t| t.as_str().into()).collect() });
                    continue;
                }
                Op::Record(topic, record) => (topic, record),
            };
            let Ok(event) = envelope::parse(&topic, record.to_string().as_bytes(), MAX) else { continue };
            named.extend(event.section_id);
            let expected = model.route(&event);

            let mut delivered: Vec<(SectionId, Arc<Delivery>)> = Vec::new();
            let result = router.route(event.clone(), |section, delivery| delivered.push((section, delivery)));

            for (section, _) in &delivered {
                prop_assert!(named.contains(section), "{section} was never named before {topic} {record}");
            }
            let Some(expected) = expected else {
                prop_assert!(result.is_err(), "{topic} {record} must be unroutable, reached {delivered:?}");
                prop_assert!(delivered.is_empty());
                continue;
            };
            prop_assert_eq!(result.ok(), Some(delivered.len()), "{} {}", topic, record);
            let name = format!("{}.{}", KINDS.iter().find(|k| k.2 == event.key.kind).unwrap().1, event.action.as_str());
            let (moved, main): (Vec<_>, Vec<_>) = delivered.iter().partition(|(_, d)| {
                serde_json::from_slice::<Value>(d.frame.utf8_bytes()).unwrap()["event"] != name.as_str()
            });
            let sections: BTreeSet<SectionId> = main.iter().map(|(s, _)| *s).collect();
            prop_assert_eq!(sections.len(), main.len(), "one delivery per section");
            prop_assert_eq!(&Expected { sections, moved_from: moved.first().map(|(s, _)| *s) }, &expected, "{} {}", topic, record);
            prop_assert!(moved.len() <= 1);
            for (_, delivery) in &moved {
                let frame: Value = serde_json::from_slice(delivery.frame.utf8_bytes()).unwrap();
                prop_assert_eq!(&frame["event"], "table.deleted");
            }
            // One frame for all the event's sections, carrying the payload as parsed.
            let (_, first) = main.first().expect("routable events reach a section");
            prop_assert!(main.iter().all(|(_, d)| Arc::ptr_eq(d, first)));
            let frame: Value = serde_json::from_slice(first.frame.utf8_bytes()).unwrap();
            prop_assert_eq!(&frame["payload"], &serde_json::from_str::<Value>(&event.payload).unwrap());
        }
    }
}
