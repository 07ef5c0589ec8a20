//! Parsing one Kafka record into an [`EntityEvent`].
//!
//! Both upstream envelope versions are accepted:
//! v2 `{event_type, entity_id, data}` on `mesa-ya.<domain>.events`, and v1
//! `{action, entity, entityId?}` on `mesa-ya.<domain>.<verb>`. The entity kind
//! always comes from the topic's domain segment; the action from `event_type`,
//! else `action`, else the topic's last segment.

use simd_json::BorrowedValue;
use simd_json::prelude::*;

use super::audience::UserId;
use super::entity::{Action, EntityKey, EntityKind};
use super::ids::{EntityId, SectionId, canonical_id};
use super::timestamp;

/// One entity change, parsed once on the ingest thread.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityEvent {
    pub key: EntityKey,
    pub action: Action,
    /// The section the entity itself names: `id` for sections, `sectionId`
    /// for tables and section-objects; `None` for the other kinds.
    pub section_id: Option<SectionId>,
    /// `objectId` of a section-object.
    pub object_id: Option<EntityId>,
    /// `tableId` of a reservation.
    pub table_id: Option<EntityId>,
    /// The restaurant a section or a reservation belongs to
    /// (`restaurantId`), or a restaurant's own id.
    pub restaurant_id: Option<EntityId>,
    /// A reservation's `userId`: the diner who may see it whole.
    pub diner: Option<UserId>,
    /// A restaurant's `ownerId`: staff of its sections.
    pub owner: Option<UserId>,
    /// `updatedAt` in ms since the epoch, when present and well-formed.
    pub updated_at: Option<i64>,
    /// Ids of the `tables` a section carries (present on section deletes).
    pub embedded_table_ids: Vec<EntityId>,
    /// The entity object, re-encoded as JSON text (same keys and values;
    /// key order is kept for objects of up to 32 keys).
    pub payload: String,
}

/// Why a record was skipped. Each reason is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    TooLarge,
    /// Nested deeper than any entity is: a record like this would exhaust
    /// the stack of a recursive parser or encoder.
    TooDeep,
    NotJson,
    UnknownTopic,
    UnknownAction,
    /// v1 `tables.selecting` / `tables.released`: unverified, client-supplied
    /// hints that the upstream never verified, not entity changes.
    SelectionHint,
    NoEntity,
    NoId,
    /// An id (its own, or the `sectionId`, `tableId` or `objectId` it is
    /// routed by) that is not a UUID: every MesaYa id is one, and anything
    /// else would only grow the routing maps.
    BadId,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::TooDeep => "too_deep",
            Self::NotJson => "not_json",
            Self::UnknownTopic => "unknown_topic",
            Self::UnknownAction => "unknown_action",
            Self::SelectionHint => "selection_hint",
            Self::NoEntity => "no_entity",
            Self::NoId => "no_id",
            Self::BadId => "bad_id",
        }
    }
}

/// The entity kind and the verb (if any) a topic name carries.
fn split_topic(topic: &str) -> Option<(EntityKind, &str)> {
    let (rest, last) = topic.rsplit_once('.')?;
    let domain = rest.rsplit('.').next()?;
    Some((EntityKind::from_topic_domain(domain)?, last))
}

/// The entity kind a topic carries, if it is one of ours.
pub fn topic_kind(topic: &str) -> Option<EntityKind> {
    split_topic(topic).map(|(kind, _)| kind)
}

/// The verb of a v1 `action` such as `table.updated` (or a bare `updated`).
fn verb_of(action: &str) -> &str {
    action.rsplit('.').next().unwrap_or(action)
}

/// Arrays and objects inside one another: an envelope holds an entity that
/// holds a few levels (a section's tables); 64 is far beyond any of them.
const MAX_NESTING: usize = 64;

/// Whether `json` opens more than `max` arrays or objects inside one
/// another. Brackets inside strings do not count. One pass, no recursion.
fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub fn parse(topic: &str, record: &[u8], max_bytes: usize) -> Result<EntityEvent, Rejection> {
    if record.len() > max_bytes {
        return Err(Rejection::TooLarge);
    }
    let (kind, topic_verb) = split_topic(topic).ok_or(Rejection::UnknownTopic)?;
    if nests_deeper_than(record, MAX_NESTING) {
        return Err(Rejection::TooDeep);
    }
    // simd-json parses in place; Kafka hands us a borrowed slice.
    let mut buffer = record.to_vec();
    let envelope = simd_json::to_borrowed_value(&mut buffer).map_err(|_| Rejection::NotJson)?;
    if envelope.as_object().is_none() {
        return Err(Rejection::NotJson);
    }

    let verb = envelope.get_str("event_type").or_else(|| envelope.get_str("action").map(verb_of)).unwrap_or(topic_verb);
    let action = match Action::parse(verb) {
        // Only restaurants have a status of their own.
        Some(Action::StatusChanged) if kind != EntityKind::Restaurant => return Err(Rejection::UnknownAction),
        Some(action) => action,
        None if matches!(verb, "selecting" | "released") => return Err(Rejection::SelectionHint),
        None => return Err(Rejection::UnknownAction),
    };

    let entity = ["data", "entity"]
        .into_iter()
        .filter_map(|field| envelope.get(field))
        .find(|value| value.is_object())
        .ok_or(Rejection::NoEntity)?;

    let id = entity
        .get_str("id")
        .or_else(|| envelope.get_str("entity_id"))
        .or_else(|| envelope.get_str("entityId"))
        .filter(|id| !id.is_empty())
        .ok_or(Rejection::NoId)?;
    let id = uuid_id(Some(id))?.ok_or(Rejection::NoId)?;
    // A routing id that is absent leaves the event unroutable (counted
    // later); one that is present must be a UUID.
    let routing_id = |field: &str| uuid_id(entity.get_str(field));

    let section_id = match kind {
        EntityKind::Section => SectionId::parse(&id),
        EntityKind::Table | EntityKind::SectionObject => routing_id("sectionId")?.and_then(|id| SectionId::parse(&id)),
        EntityKind::Object | EntityKind::Reservation | EntityKind::Restaurant => None,
    };
    let restaurant_id = match kind {
        EntityKind::Section | EntityKind::Reservation => routing_id("restaurantId")?,
        EntityKind::Restaurant => Some(id.clone()),
        _ => None,
    };
    let object_id = if kind == EntityKind::SectionObject { routing_id("objectId")? } else { None };
    let table_id = if kind == EntityKind::Reservation { routing_id("tableId")? } else { None };
    let diner = if kind == EntityKind::Reservation { entity.get_str("userId").map(UserId::new) } else { None };
    let owner = if kind == EntityKind::Restaurant { routing_id("ownerId")?.map(|id| UserId::new(&id)) } else { None };

    Ok(EntityEvent {
        key: EntityKey::new(kind, id),
        action,
        section_id,
        object_id,
        table_id,
        restaurant_id,
        diner,
        owner,
        updated_at: entity.get_str("updatedAt").and_then(timestamp::parse_millis),
        embedded_table_ids: embedded_table_ids(entity),
        payload: entity.encode(),
    })
}

/// An id as the maps keep it (in its canonical spelling): `None` when
/// absent, an error when it is not a UUID.
fn uuid_id(id: Option<&str>) -> Result<Option<EntityId>, Rejection> {
    id.map(|id| canonical_id(id).ok_or(Rejection::BadId)).transpose()
}

fn embedded_table_ids(entity: &BorrowedValue<'_>) -> Vec<EntityId> {
    entity
        .get_array("tables")
        .map(|tables| tables.iter().filter_map(|table| table.get_str("id")).filter_map(canonical_id).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
    const TABLE: &str = "9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60";
    const OBJECT: &str = "0b1ec7aa-1111-4222-8333-444455556666";
    const RESERVATION: &str = "e7f8a9b0-6666-4c1d-9e2f-3a4b5c6d7e8f";

    fn parse_ok(topic: &str, json: &str) -> EntityEvent {
        parse(topic, json.as_bytes(), 1 << 20).unwrap()
    }

    #[test]
    fn v2_table_updated() {
        let event = parse_ok(
            "mesa-ya.tables.events",
            r#"{"timestamp":"2026-01-10T16:00:00.500Z","event_type":"updated","entity_id":"9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60",
               "data":{"id":"9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60","sectionId":"5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11","number":1,"capacity":6,
               "updatedAt":"2026-01-10T16:00:00.480Z"}}"#,
        );
        assert_eq!(event.key, EntityKey::new(EntityKind::Table, TABLE));
        assert_eq!(event.action, Action::Updated);
        assert_eq!(event.section_id, SectionId::parse(SECTION));
        assert_eq!(event.updated_at, timestamp::parse_millis("2026-01-10T16:00:00.480Z"));
        let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(payload["capacity"], 6);
    }

    #[test]
    fn payload_keeps_key_order() {
        let event = parse_ok(
            "mesa-ya.objects.events",
            &format!(
                r#"{{"event_type":"created","data":{{"id":"{OBJECT}","posX":40,"posY":5,"width":10,"imageId":"i","createdAt":"x"}}}}"#
            ),
        );
        assert_eq!(
            event.payload,
            format!(r#"{{"id":"{OBJECT}","posX":40,"posY":5,"width":10,"imageId":"i","createdAt":"x"}}"#)
        );
    }

    #[test]
    fn integers_beyond_64_bits_do_not_drop_the_record() {
        // JavaScript writes integers up to 1e21 without an exponent.
        let event = parse_ok(
            "mesa-ya.objects.events",
            &format!(r#"{{"event_type":"updated","data":{{"id":"{OBJECT}","posX":123456789012345678901}}}}"#),
        );
        let payload: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(payload["posX"].as_f64(), Some(123456789012345678901.0));
    }

    #[test]
    fn v1_section_updated_without_entity_id() {
        let event = parse_ok(
            "mesa-ya.sections.updated",
            &format!(
                r#"{{"timestamp":"2025-12-01T18:22:05.431Z","action":"section.updated","entity":{{"id":"{SECTION}","name":"T"}}}}"#
            ),
        );
        assert_eq!(event.key.kind, EntityKind::Section);
        assert_eq!(event.action, Action::Updated);
        assert_eq!(event.section_id, SectionId::parse(SECTION));
    }

    #[test]
    fn v1_deleted_section_lists_its_tables() {
        let event = parse_ok(
            "mesa-ya.sections.deleted",
            &format!(
                r#"{{"action":"section.deleted","entityId":"{SECTION}","entity":{{"id":"{SECTION}","tables":[{{"id":"{TABLE}"}}]}}}}"#
            ),
        );
        assert_eq!(event.action, Action::Deleted);
        assert_eq!(event.embedded_table_ids, vec![EntityId::from(TABLE)]);
    }

    #[test]
    fn action_falls_back_to_topic_verb() {
        let event = parse_ok(
            "mesa-ya.reservations.created",
            &format!(r#"{{"entity":{{"id":"{RESERVATION}","tableId":"{TABLE}"}}}}"#),
        );
        assert_eq!(event.action, Action::Created);
        assert_eq!(event.table_id.as_deref(), Some(TABLE));
    }

    #[test]
    fn v1_selection_hints_are_skipped() {
        let record = format!(
            r#"{{"entity":"tables","action":"selecting","resourceId":"{TABLE}","data":{{"tableId":"{TABLE}","sectionId":"{SECTION}"}}}}"#
        );
        assert_eq!(parse("mesa-ya.tables.selecting", record.as_bytes(), 1 << 20), Err(Rejection::SelectionHint));
    }

    #[test]
    fn rejects_bad_records_with_a_reason() {
        let cases: &[(&str, &str, Rejection)] = &[
            ("mesa-ya.tables.events", "not json", Rejection::NotJson),
            ("mesa-ya.tables.events", "[1,2]", Rejection::NotJson),
            ("mesa-ya.menus.events", r#"{"event_type":"created","data":{"id":"m"}}"#, Rejection::UnknownTopic),
            ("weird", r#"{}"#, Rejection::UnknownTopic),
            ("mesa-ya.tables.events", r#"{"event_type":"status_changed","data":{"id":"t"}}"#, Rejection::UnknownAction),
            ("mesa-ya.tables.events", r#"{"event_type":"created"}"#, Rejection::NoEntity),
            ("mesa-ya.tables.events", r#"{"event_type":"created","data":"tables"}"#, Rejection::NoEntity),
            ("mesa-ya.tables.events", r#"{"event_type":"created","data":{"sectionId":"x"}}"#, Rejection::NoId),
        ];
        for (topic, record, expected) in cases {
            assert_eq!(parse(topic, record.as_bytes(), 1 << 20), Err(*expected), "{topic} {record}");
        }
        assert_eq!(parse("mesa-ya.tables.events", b"{}", 1), Err(Rejection::TooLarge));
    }

    #[test]
    fn ids_that_are_not_uuids_are_rejected() {
        let cases = [
            ("mesa-ya.tables.events", r#"{"event_type":"created","data":{"id":"t1"}}"#.to_string()),
            (
                "mesa-ya.tables.events",
                format!(r#"{{"event_type":"updated","data":{{"id":"{TABLE}","sectionId":"s"}}}}"#),
            ),
            (
                "mesa-ya.reservations.events",
                format!(r#"{{"event_type":"created","data":{{"id":"{RESERVATION}","tableId":"t"}}}}"#),
            ),
            (
                "mesa-ya.section-objects.events",
                format!(
                    r#"{{"event_type":"created","data":{{"id":"{OBJECT}","sectionId":"{SECTION}","objectId":"x"}}}}"#
                ),
            ),
            (
                "mesa-ya.sections.events",
                format!(r#"{{"event_type":"updated","data":{{"id":"{SECTION}","restaurantId":"r"}}}}"#),
            ),
        ];
        for (topic, record) in cases {
            assert_eq!(parse(topic, record.as_bytes(), 1 << 20), Err(Rejection::BadId), "{record}");
        }
    }

    #[test]
    fn restaurants_have_a_status_and_sections_name_their_restaurant() {
        const RESTAURANT: &str = "d290f1ee-6c54-4b01-90e6-d701748f0851";
        let record = format!(r#"{{"event_type":"status_changed","data":{{"id":"{RESTAURANT}","status":"CLOSED"}}}}"#);
        let event = parse_ok("mesa-ya.restaurants.events", &record);
        assert_eq!((event.key.kind, event.action), (EntityKind::Restaurant, Action::StatusChanged));
        assert_eq!(event.restaurant_id.as_deref(), Some(RESTAURANT));
        let section = parse_ok(
            "mesa-ya.sections.events",
            &format!(r#"{{"event_type":"updated","data":{{"id":"{SECTION}","restaurantId":"{RESTAURANT}"}}}}"#),
        );
        assert_eq!(section.restaurant_id.as_deref(), Some(RESTAURANT));
    }

    #[test]
    fn reservations_name_their_diner_and_restaurants_their_owner() {
        const USER: &str = "11111111-2222-4333-8444-555555555555";
        let reservation = parse_ok(
            "mesa-ya.reservations.events",
            &format!(
                r#"{{"event_type":"created","data":{{"id":"{RESERVATION}","tableId":"{TABLE}","userId":"{}"}}}}"#,
                USER.to_uppercase()
            ),
        );
        assert_eq!(reservation.diner, Some(UserId::new(USER)), "in one spelling");
        let restaurant = |owner: &str| {
            let record = format!(r#"{{"event_type":"updated","data":{{"id":"{OBJECT}","ownerId":"{owner}"}}}}"#);
            parse("mesa-ya.restaurants.events", record.as_bytes(), 1 << 20)
        };
        assert_eq!(restaurant(USER).unwrap().owner, Some(UserId::new(USER)));
        assert_eq!(restaurant("owner-1"), Err(Rejection::BadId), "an owner id is validated like the others");
    }

    #[test]
    fn ids_key_the_maps_in_one_spelling() {
        let record = format!(
            r#"{{"event_type":"updated","data":{{"id":"{{{}}}","sectionId":"urn:uuid:{SECTION}"}}}}"#,
            TABLE.to_uppercase()
        );
        let event = parse_ok("mesa-ya.tables.events", &record);
        assert_eq!(event.key, EntityKey::new(EntityKind::Table, TABLE));
        assert_eq!(event.section_id, SectionId::parse(SECTION));
        assert!(event.payload.contains(&TABLE.to_uppercase()), "the payload is sent as it came");
    }

    #[test]
    fn a_depth_bomb_is_rejected_without_recursing() {
        let bomb = format!(r#"{{"event_type":"updated","data":{{"id":"t","x":{}}}}}"#, "[".repeat(100_000));
        assert_eq!(parse("mesa-ya.tables.events", bomb.as_bytes(), 1 << 20), Err(Rejection::TooDeep));
        let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse("mesa-ya.tables.events", closed.as_bytes(), 1 << 20), Err(Rejection::TooDeep));
        // Brackets in strings are text, not nesting.
        let brackets = format!(
            r#"{{"event_type":"updated","data":{{"id":"{TABLE}","note":"{}\"{}"}}}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(parse("mesa-ya.tables.events", brackets.as_bytes(), 1 << 20).is_ok());
    }
}
