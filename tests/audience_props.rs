//! Property tests of what public connections see (SPEC §2.7): whatever the
//! entity, its public frame's payload is exactly the allowlisted subset of
//! the full payload, field by field in the same order, valid JSON; an
//! entity with nothing outside the list gets no second frame; the diner
//! whose reservation it is, and staff, get the full frame.

use std::fmt;

use mesaya_realtime::domain::audience::{
    Audience, DEFAULT_PUBLIC_RESERVATION_FIELDS, Disclosure, PUBLIC_RESTAURANT_FIELDS, PublicFields, UserId,
};
use mesaya_realtime::domain::entity::{Action, EntityKind};
use mesaya_realtime::domain::envelope;
use proptest::prelude::*;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A JSON object's fields in their order, duplicates kept: what the payload
/// says, read without the code under test.
fn fields_of(json: &str) -> Vec<(String, Value)> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = Vec::new();
            while let Some(field) = map.next_entry()? {
                fields.push(field);
            }
            Ok(fields)
        }
    }
    serde_json::Deserializer::from_str(json).deserialize_map(Fields).expect("an object")
}

fn payload_text(frame: &[u8]) -> String {
    let text = std::str::from_utf8(frame).unwrap();
    let frame: Value = serde_json::from_str(text).expect("a frame is valid JSON");
    assert!(frame["event"].is_string());
    // The payload is the frame's text after `"payload":`, without the last `}`.
    let start = text.find(r#""payload":"#).unwrap() + r#""payload":"#.len();
    text[start..text.len() - 1].to_string()
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Field names: the listed ones, the private ones, and anything at all.
fn arb_name() -> impl Strategy<Value = String> {
    let known: Vec<String> = DEFAULT_PUBLIC_RESERVATION_FIELDS
        .split(',')
        .chain(PUBLIC_RESTAURANT_FIELDS.split(','))
        .chain(["userId", "userName", "userEmail", "ownerId", "adminNote", "subscriptionId"])
        .map(String::from)
        .collect();
    prop_oneof![3 => prop::sample::select(known), 1 => "\\PC{0,10}"]
}

/// An object's text with these fields, in this order (duplicates too).
fn object_text(fields: &[(String, Value)]) -> String {
    let body: Vec<String> =
        fields.iter().map(|(name, value)| format!("{}:{}", serde_json::to_string(name).unwrap(), value)).collect();
    format!("{{{}}}", body.join(","))
}

fn arb_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec((arb_name(), arb_value()), 0..12)
}

fn arb_allowlist() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        Just(DEFAULT_PUBLIC_RESERVATION_FIELDS.split(',').map(String::from).collect()),
        prop::collection::vec(arb_name(), 0..6),
    ]
}

proptest! {
    #[test]
    fn a_public_payload_is_the_allowlisted_subset_in_order(fields in arb_fields(), allowed in arb_allowlist()) {
        let full_text = object_text(&fields);
        let disclosure = Disclosure { reservation: PublicFields::new(allowed.clone()), ..Disclosure::default() };
        let diner = UserId::new("11111111-2222-4333-8444-555555555555");
        let frames = disclosure.frames(EntityKind::Reservation, Action::Updated, &full_text, Some(&diner));

        let staff_payload = payload_text(frames.for_audience(&Audience::Staff).utf8_bytes());
        prop_assert_eq!(&staff_payload, &full_text, "staff get the entity as it came");
        prop_assert_eq!(payload_text(frames.for_audience(&Audience::Public { viewer: diner }).utf8_bytes()), full_text.clone());

        let stranger = Audience::Public { viewer: UserId::new("someone-else") };
        let public = payload_text(frames.for_audience(&stranger).utf8_bytes());
        let expected: Vec<(String, Value)> =
            fields.iter().filter(|(name, _)| allowed.contains(name)).cloned().collect();
        prop_assert_eq!(fields_of(&public), expected.clone());
        prop_assert_eq!(frames.is_cut(), expected.len() != fields.len(), "a second frame only when something is cut");
    }

    #[test]
    fn what_the_parser_hands_on_is_cut_the_same_way(fields in arb_fields()) {
        let mut entity = fields.clone();
        entity.push(("id".into(), Value::from("e7f8a9b0-6666-4c1d-9e2f-3a4b5c6d7e8f")));
        let record = format!(r#"{{"event_type":"created","data":{}}}"#, object_text(&entity));
        let Ok(event) = envelope::parse("mesa-ya.restaurants.events", record.as_bytes(), 1 << 20) else {
            return Ok(());
        };
        let frames = Disclosure::default().frames(event.key.kind, event.action, &event.payload, None);
        let public = payload_text(frames.for_audience(&Audience::Public { viewer: UserId::new("u") }).utf8_bytes());
        let allowed: Vec<&str> = PUBLIC_RESTAURANT_FIELDS.split(',').collect();
        let expected: Vec<(String, Value)> =
            fields_of(&event.payload).into_iter().filter(|(name, _)| allowed.contains(&name.as_str())).collect();
        prop_assert_eq!(fields_of(&public), expected);
    }
}
