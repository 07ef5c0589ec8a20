//! The section snapshot: the body of the one REST call a connection makes.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::entity::{EntityKey, EntityKind};
use super::frame::{self, Frame};
use super::ids::{EntityId, canonical_id};
use super::timestamp;

/// A parsed snapshot: the frame to send first, and what the handoff needs to
/// know about the entities it holds. A clone shares the frame's and the
/// payload's bytes.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub frame: Frame,
    /// `updatedAt` (ms) of each entity the snapshot holds: the section itself
    /// and its `tables`.
    pub versions: HashMap<EntityKey, i64>,
    /// Ids of the section's tables, so reservations can be routed to it
    /// (UUIDs only, as from Kafka: anything else would only grow the maps).
    pub table_ids: Vec<EntityId>,
    /// The restaurant the section belongs to, so restaurant events reach it.
    pub restaurant_id: Option<EntityId>,
    /// The payload as the API sent it (envelope removed), kept while the
    /// gateway may still add `objects` to it.
    payload: Option<Arc<str>>,
}

/// A section's objects as the gateway knows them from Kafka: the JSON array
/// for the snapshot's `objects` key, and the `updatedAt` of each link and
/// object in it (so the handoff skips held events it already covers).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SectionObjects {
    pub json: String,
    pub versions: Vec<(EntityKey, i64)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snapshot body is not a JSON object (optionally wrapped in {{\"data\": …}})")]
pub struct UnparseableSnapshot;

impl Snapshot {
    /// Parses the API's body, removing Nest's `{"data": …}` envelope. The
    /// payload bytes are passed through untouched.
    pub fn parse(body: &[u8]) -> Result<Self, UnparseableSnapshot> {
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Entity {
            id: Option<String>,
            #[serde(rename = "updatedAt")]
            updated_at: Option<String>,
        }
        #[derive(Deserialize)]
        struct Section<'a> {
            // Not `#[serde(flatten)]` of an `Entity`: flatten buffers every
            // other field of the section before reading these two.
            id: Option<String>,
            #[serde(rename = "updatedAt")]
            updated_at: Option<String>,
            #[serde(rename = "restaurantId")]
            restaurant_id: Option<String>,
            tables: Option<Vec<Entity>>,
            #[serde(borrow)]
            objects: Option<&'a RawValue>,
        }

        let text = std::str::from_utf8(body).map_err(|_| UnparseableSnapshot)?;
        // Nest sends exactly `{"data":<section>}`: then the section's text is
        // what lies between, and one parse of it both reads and checks it.
        // Any other shape (a space, another key: the parse of the slice then
        // fails on what follows the section) takes the general path, whose
        // first pass only finds `data`.
        let nest_payload = text.trim().strip_prefix(r#"{"data":"#).and_then(|rest| rest.strip_suffix('}'));
        let exact =
            nest_payload.map(str::trim).and_then(|payload| Some((payload, serde_json::from_str(payload).ok()?)));
        let (payload, section): (&str, Section) = match exact {
            Some(read) => read,
            None => {
                let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|_| UnparseableSnapshot)?;
                let payload = envelope.data.map_or(text.trim(), RawValue::get);
                (payload, serde_json::from_str(payload).map_err(|_| UnparseableSnapshot)?)
            }
        };

        let tables = section.tables.unwrap_or_default();
        // Sized once: growing it insert by insert rehashed it several times
        // per connect.
        let mut versions = HashMap::with_capacity(1 + tables.len());
        let mut record = |kind, entity: &Entity| {
            if let (Some(id), Some(at)) = (entity.id.as_deref().and_then(canonical_id), &entity.updated_at)
                && let Some(millis) = timestamp::parse_millis(at)
            {
                versions.insert(EntityKey::new(kind, id), millis);
            }
        };
        record(EntityKind::Section, &Entity { id: section.id, updated_at: section.updated_at });
        for table in &tables {
            record(EntityKind::Table, table);
        }
        let table_ids = tables.iter().filter_map(|table| canonical_id(table.id.as_deref()?)).collect();
        // The API's own `objects`, when it has them, are sent as they are.
        let lacks_objects = section.objects.is_none();

        Ok(Self {
            frame: Frame::snapshot(payload),
            versions,
            table_ids,
            restaurant_id: section.restaurant_id.as_deref().and_then(canonical_id),
            payload: lacks_objects.then(|| payload.into()),
        })
    }

    /// Whether the API's body had no `objects` of its own.
    pub fn lacks_objects(&self) -> bool {
        self.payload.is_some()
    }

    /// Adds the gateway's `objects` to a payload that has none.
    pub fn add_objects(&mut self, objects: SectionObjects) {
        let Some(payload) = self.payload.take() else { return };
        if let Some(payload) = frame::with_key(&payload, "objects", &objects.json) {
            self.frame = Frame::snapshot(&payload);
            self.versions.extend(objects.versions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_nest_envelope_and_indexes_tables() {
        let body = br#"{"data":{"id":"11111111-1111-4111-8111-111111111111","name":"Terraza","updatedAt":"2026-01-10T15:04:05.101Z",
            "tables":[{"id":"A1111111-1111-4111-8111-111111111111","updatedAt":"2026-01-10T15:10:00.000Z"},
                      {"id":"table-2","updatedAt":"2026-01-10T15:10:00.000Z"}]}}"#;
        let snapshot = Snapshot::parse(body).unwrap();
        let frame: serde_json::Value = serde_json::from_slice(snapshot.frame.utf8_bytes()).unwrap();
        assert_eq!(frame["event"], "section.snapshot");
        assert_eq!(frame["payload"]["name"], "Terraza");
        assert!(frame["payload"].get("data").is_none());
        let table = "a1111111-1111-4111-8111-111111111111";
        assert_eq!(snapshot.table_ids, vec![EntityId::from(table)], "UUIDs only, in one spelling");
        assert_eq!(
            snapshot.versions.get(&EntityKey::new(EntityKind::Table, table)),
            timestamp::parse_millis("2026-01-10T15:10:00.000Z").as_ref()
        );
        assert_eq!(snapshot.versions.len(), 2, "the section and its one UUID table");
        assert!(
            snapshot
                .versions
                .contains_key(&EntityKey::new(EntityKind::Section, "11111111-1111-4111-8111-111111111111"))
        );
    }

    #[test]
    fn objects_are_added_only_where_the_api_sent_none() {
        let link = EntityKey::new(EntityKind::SectionObject, "so1");
        let objects = || SectionObjects { json: r#"[{"id":"so1"}]"#.into(), versions: vec![(link.clone(), 7)] };
        let body = br#"{"data":{"id":"s1","restaurantId":"E1111111-1111-4111-8111-111111111111","tables":[]}}"#;
        let mut bare = Snapshot::parse(body).unwrap();
        assert!(bare.lacks_objects());
        assert_eq!(bare.restaurant_id.as_deref(), Some("e1111111-1111-4111-8111-111111111111"));
        bare.add_objects(objects());
        let frame: serde_json::Value = serde_json::from_slice(bare.frame.utf8_bytes()).unwrap();
        assert_eq!(frame["payload"]["objects"], serde_json::json!([{"id": "so1"}]));
        assert_eq!(frame["payload"]["tables"], serde_json::json!([]));
        assert_eq!(bare.versions.get(&link), Some(&7));

        let mut own = Snapshot::parse(br#"{"data":{"id":"s1","objects":[{"id":"mine"}]}}"#).unwrap();
        assert!(!own.lacks_objects());
        own.add_objects(objects());
        let frame: serde_json::Value = serde_json::from_slice(own.frame.utf8_bytes()).unwrap();
        assert_eq!(frame["payload"]["objects"], serde_json::json!([{"id": "mine"}]), "sent as it is");
    }

    #[test]
    fn accepts_an_unwrapped_body() {
        let snapshot = Snapshot::parse(br#"{"id":"s1"}"#).unwrap();
        assert!(snapshot.table_ids.is_empty());
    }

    #[test]
    fn rejects_garbage() {
        for body in [&b"<html>oops</html>"[..], b"", b"[1]", b"{\"data\":3}", b"\xff\xfe"] {
            assert_eq!(Snapshot::parse(body).unwrap_err(), UnparseableSnapshot, "{body:?}");
        }
    }

    mod nest_envelope {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::*;

        fn entity() -> impl Strategy<Value = Value> {
            let at = prop_oneof![Just("2026-01-10T15:04:05.101Z".to_string()), ".{0,12}"];
            (proptest::option::of("[a-z0-9-]{1,8}"), proptest::option::of(at))
                .prop_map(|(id, at)| json!({"id": id, "updatedAt": at}))
        }

        fn section() -> impl Strategy<Value = Value> {
            let object = (
                entity(),
                proptest::option::of("[a-z0-9-]{1,8}"),
                proptest::option::of(proptest::collection::vec(entity(), 0..4)),
                proptest::option::of(Just(json!([{"id": "l1", "objectId": "o1"}]))),
                ".{0,16}",
            )
                .prop_map(|(mut section, restaurant, tables, objects, note)| {
                    section["restaurantId"] = json!(restaurant);
                    if let Some(tables) = tables {
                        section["tables"] = json!(tables);
                    }
                    if let Some(objects) = objects {
                        section["objects"] = objects;
                    }
                    // Braces and quotes inside strings must not end the section early.
                    section["note"] = json!(note);
                    section
                });
            prop_oneof![4 => object, 1 => Just(json!(null)), 1 => Just(json!("}")), 1 => Just(json!([1]))]
        }

        /// What a client and the shard get from a snapshot (the frame as a
        /// JSON value: a body without a `data` object is its own payload,
        /// spelled as it came).
        type Read = (Value, Vec<(String, i64)>, Vec<EntityId>, Option<EntityId>, bool);

        fn read(body: &str) -> Result<Read, UnparseableSnapshot> {
            let snapshot = Snapshot::parse(body.as_bytes())?;
            let mut versions: Vec<_> = snapshot.versions.iter().map(|(key, at)| (format!("{key:?}"), *at)).collect();
            versions.sort();
            let frame = serde_json::from_slice(snapshot.frame.utf8_bytes()).expect("a frame is JSON");
            Ok((frame, versions, snapshot.table_ids.clone(), snapshot.restaurant_id.clone(), snapshot.lacks_objects()))
        }

        proptest! {
            /// The one-pass read of Nest's exact `{"data":…}` reads what the
            /// general path reads from the same answer spelled differently.
            #[test]
            fn the_exact_envelope_reads_as_any_other_spelling(section in section(), trailing_key in any::<bool>()) {
                let text = section.to_string();
                let exact = format!(r#"{{"data":{text}}}"#);
                let spaced = format!(r#"{{ "data" : {text} }}"#);
                prop_assert_eq!(read(&exact), read(&spaced));
                if trailing_key && section.is_object() {
                    // Another key after `data`: the slice is no longer one value.
                    let with_meta = format!(r#"{{"data":{text},"meta":{{"page":1}}}}"#);
                    prop_assert_eq!(read(&with_meta), read(&spaced));
                }
            }
        }
    }
}
