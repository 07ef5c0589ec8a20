//! Upstream messages shaped exactly like the MesaYa API's (v2 and v1 envelopes, entity DTOs), by id.
//!
//! Ids, timestamps and field values follow the contract's examples; pass the ids and
//! `updatedAt`s a test cares about and patch anything else on the returned `Value`.

use serde_json::{Map, Value, json};

/// The restaurant every fixture section belongs to.
pub const RESTAURANT_ID: &str = "d290f1ee-6c54-4b01-90e6-d701748f0851";
/// The user behind fixture reservations.
pub const USER_ID: &str = "11111111-2222-4333-8444-555555555555";
/// `createdAt` of every fixture entity, and `updatedAt` where it is not a parameter.
pub const CREATED_AT: &str = "2026-01-10T15:04:05.101Z";
/// The envelope `timestamp` (emission time) of every fixture event.
pub const EVENT_TIMESTAMP: &str = "2026-01-10T16:00:00.500Z";

/// A section as in created/updated events (no `tables`).
pub fn section_json(id: &str, updated_at: &str) -> Value {
    json!({
        "id": id,
        "restaurantId": RESTAURANT_ID,
        "name": "Terraza",
        "description": "Zona exterior",
        "width": 120,
        "height": 80,
        "posX": 0,
        "posY": 0,
        "status": "ACTIVE",
        "layoutMetadata": {"layoutId": null, "orientation": "LANDSCAPE", "zIndex": 0, "notes": null},
        "createdAt": CREATED_AT,
        "updatedAt": updated_at,
    })
}

pub fn table_json(id: &str, section_id: &str, updated_at: &str) -> Value {
    json!({
        "id": id,
        "sectionId": section_id,
        "number": 1,
        "capacity": 4,
        "posX": 10,
        "posY": 10,
        "width": 2,
        "height": 2,
        "tableImageId": "0f7d2c8e-1111-4a2b-9c3d-4e5f60718293",
        "chairImageId": "6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b",
        "status": "AVAILABLE",
        "isAvailable": true,
        "createdAt": CREATED_AT,
        "updatedAt": updated_at,
    })
}

/// A graphic object (it has no section field).
pub fn object_json(id: &str) -> Value {
    json!({
        "id": id,
        "posX": 40,
        "posY": 5,
        "width": 10,
        "height": 2,
        "imageId": "b4c5d6e7-4444-4a8b-9c0d-1e2f3a4b5c6d",
        "createdAt": CREATED_AT,
        "updatedAt": CREATED_AT,
    })
}

/// The join row linking an object to a section.
pub fn section_object_json(id: &str, section_id: &str, object_id: &str) -> Value {
    json!({
        "id": id,
        "sectionId": section_id,
        "objectId": object_id,
        "createdAt": CREATED_AT,
        "updatedAt": CREATED_AT,
    })
}

/// A reservation (it has `tableId`, no section field).
pub fn reservation_json(id: &str, table_id: &str) -> Value {
    json!({
        "id": id,
        "restaurantId": RESTAURANT_ID,
        "userId": USER_ID,
        "tableId": table_id,
        "reservationDate": "2026-01-15",
        "reservationTime": "2026-01-15T19:30:00.000Z",
        "numberOfGuests": 4,
        "status": "PENDING",
        "createdAt": CREATED_AT,
        "updatedAt": CREATED_AT,
    })
}

/// The body of `GET /api/v1/sections/{id}` inside `data` (what `StandInApi::set_section`
/// takes): the section with its `tables`.
pub fn nest_snapshot(section_id: &str, tables: Vec<Value>) -> Value {
    let mut section = section_json(section_id, CREATED_AT);
    section["tables"] = Value::Array(tables);
    section
}

/// A v2 envelope (`mesa-ya.<domain>.events`): `event_type` is `created|updated|deleted`.
pub fn v2(event_type: &str, entity_id: &str, data: Value) -> Value {
    json!({
        "timestamp": EVENT_TIMESTAMP,
        "event_type": event_type,
        "entity_id": entity_id,
        "data": data,
    })
}

/// A v1 envelope (`mesa-ya.<domain>.<action>`): `action` is `<singular>.<verb>`, e.g.
/// `table.updated`. Nest sends `entityId` on deletes and on most updates, never on creates.
pub fn v1(action: &str, entity_id: Option<&str>, entity: Value) -> Value {
    let mut envelope = Map::new();
    envelope.insert("timestamp".into(), json!(EVENT_TIMESTAMP));
    envelope.insert("action".into(), json!(action));
    if let Some(id) = entity_id {
        envelope.insert("entityId".into(), json!(id));
    }
    envelope.insert("entity".into(), entity);
    Value::Object(envelope)
}

/// The v1 table selection hint (`mesa-ya.tables.selecting` / `.released`); `action` is
/// `selecting` or `released`. Here `entity` is the string `"tables"`, not an object.
pub fn v1_table_selection(action: &str, table_id: &str, section_id: &str) -> Value {
    json!({
        "timestamp": EVENT_TIMESTAMP,
        "entity": "tables",
        "action": action,
        "resourceId": table_id,
        "data": {
            "tableId": table_id,
            "sectionId": section_id,
            "restaurantId": RESTAURANT_ID,
            "status": action,
            "selectedBy": USER_ID,
            "expiresAt": "2026-01-10T16:05:00.500Z",
        },
        "metadata": {"sectionId": section_id, "restaurantId": RESTAURANT_ID, "userId": USER_ID},
    })
}

/// A restaurant as in `mesa-ya.restaurants.events` (`RestaurantResponseDto`: `status` is
/// `ACTIVE|SUSPENDED|ARCHIVED`; `sections` is empty unless the service loaded them).
pub fn restaurant_json(id: &str) -> Value {
    json!({
        "id": id,
        "name": "La Terraza",
        "description": "Cocina de mercado",
        "location": "Av. Amazonas N24-03, Quito",
        "openTime": "12:00",
        "closeTime": "23:00",
        "daysOpen": ["TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"],
        "totalCapacity": 80,
        "subscriptionId": "3c4d5e6f-7777-4a8b-9c0d-1e2f3a4b5c6d",
        "imageId": null,
        "status": "ACTIVE",
        "adminNote": null,
        "active": true,
        "ownerId": USER_ID,
        "createdAt": CREATED_AT,
        "updatedAt": CREATED_AT,
        "sections": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTION: &str = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
    const TABLE: &str = "9e1f6a3c-7d2b-4c55-8a0e-1b2c3d4e5f60";

    #[test]
    fn v2_table_update_matches_the_contract_example() {
        let mut table = table_json(TABLE, SECTION, "2026-01-10T16:00:00.480Z");
        table["capacity"] = json!(6);
        let event = v2("updated", TABLE, table);
        assert_eq!(event["event_type"], "updated");
        assert_eq!(event["entity_id"], TABLE);
        assert_eq!(event["data"]["sectionId"], SECTION);
        assert_eq!(event["data"]["updatedAt"], "2026-01-10T16:00:00.480Z");
        assert_eq!(event["data"].as_object().unwrap().len(), 14);
    }

    #[test]
    fn v1_omits_entity_id_when_absent() {
        let created = v1("section.created", None, section_json(SECTION, CREATED_AT));
        assert!(created.get("entityId").is_none());
        let deleted = v1("section.deleted", Some(SECTION), section_json(SECTION, CREATED_AT));
        assert_eq!(deleted["entityId"], SECTION);
        assert_eq!(deleted["entity"]["id"], SECTION);
    }

    #[test]
    fn snapshot_is_a_section_with_tables() {
        let snapshot = nest_snapshot(SECTION, vec![table_json(TABLE, SECTION, CREATED_AT)]);
        assert_eq!(snapshot["id"], SECTION);
        assert_eq!(snapshot["tables"][0]["id"], TABLE);
    }
}
