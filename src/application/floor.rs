//! The objects of every section's floor plan, as Kafka tells them: every
//! section-object link and the latest entity of every object (an object is
//! usually created before it is linked). The ingest thread writes it as
//! events come, and at start while rebuilding from the retained topics; a shard
//! reads one section's objects when a client's snapshot needs them.
//!
//! Every map has a reverse index, so deleting a section, an object or a link
//! never scans a whole map.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::entity::{Action, EntityKey, EntityKind};
use crate::domain::envelope::EntityEvent;
use crate::domain::frame;
use crate::domain::ids::{EntityId, SectionId};
use crate::domain::snapshot::SectionObjects;

use super::ports::FloorPlan;

struct Link {
    section: SectionId,
    object: EntityId,
    /// The link entity as it came, without the `object` key.
    entity: Arc<str>,
    updated_at: Option<i64>,
}

struct Object {
    entity: Arc<str>,
    updated_at: Option<i64>,
}

#[derive(Default)]
pub struct Floor {
    links: HashMap<EntityId, Link>,
    /// section → its link ids.
    section_links: HashMap<SectionId, HashSet<EntityId>>,
    /// object → the ids of the links to it.
    object_links: HashMap<EntityId, HashSet<EntityId>>,
    objects: HashMap<EntityId, Object>,
}

impl Floor {
    /// Applies a section-object event. Returns the section the link left,
    /// when an update moved it to another one.
    pub fn apply_link(&mut self, event: &EntityEvent) -> Option<SectionId> {
        let id = &event.key.id;
        let old = self.unlink(id);
        if event.action == Action::Deleted {
            return None;
        }
        // An update that leaves a field out keeps what the link had.
        let section = event.section_id.or(old.as_ref().map(|old| old.section));
        let object = event.object_id.clone().or(old.as_ref().map(|old| old.object.clone()));
        let (Some(section), Some(object)) = (section, object) else { return None };
        self.section_links.entry(section).or_default().insert(id.clone());
        self.object_links.entry(object.clone()).or_default().insert(id.clone());
        let link = Link { section, object, entity: event.payload.as_str().into(), updated_at: event.updated_at };
        self.links.insert(id.clone(), link);
        old.map(|old| old.section).filter(|&old| old != section)
    }

    /// Applies an object event. Returns the sections that link the object
    /// (for a delete: linked it; its links go with it, as upstream deletes
    /// them in the database without events).
    pub fn apply_object(&mut self, event: &EntityEvent) -> Vec<SectionId> {
        let id = &event.key.id;
        let sections = self.sections_of(id);
        if event.action == Action::Deleted {
            self.objects.remove(id);
            for link in self.object_links.get(id).cloned().unwrap_or_default() {
                self.unlink(&link);
            }
        } else {
            let object = Object { entity: event.payload.as_str().into(), updated_at: event.updated_at };
            self.objects.insert(id.clone(), object);
        }
        sections
    }

    /// The sections that link `object`, each once.
    fn sections_of(&self, object: &EntityId) -> Vec<SectionId> {
        let mut sections: Vec<SectionId> = self
            .object_links
            .get(object)
            .into_iter()
            .flatten()
            .filter_map(|link| self.links.get(link).map(|link| link.section))
            .collect();
        sections.sort_unstable();
        sections.dedup();
        sections
    }

    /// A link entity with the latest entity of its object under `object`,
    /// when the object is known.
    pub fn link_with_object(&self, link_json: &str, object: Option<&EntityId>) -> Option<String> {
        let object = self.objects.get(object?)?;
        frame::with_key(link_json, "object", &object.entity)
    }

    /// Drops a deleted section's links.
    pub fn forget_section(&mut self, section: SectionId) {
        for link in self.section_links.get(&section).cloned().unwrap_or_default() {
            self.unlink(&link);
        }
    }

    fn unlink(&mut self, id: &EntityId) -> Option<Link> {
        let link = self.links.remove(id)?;
        remove_from(&mut self.section_links, &link.section, id);
        remove_from(&mut self.object_links, &link.object, id);
        Some(link)
    }

    /// The section's links, each with its object, for a snapshot (ordered by
    /// link id, so that two snapshots of one state read the same).
    pub fn section_objects(&self, section: SectionId) -> SectionObjects {
        let mut objects = SectionObjects { json: String::from("["), versions: Vec::new() };
        let mut links: Vec<&EntityId> = self.section_links.get(&section).into_iter().flatten().collect();
        links.sort_unstable();
        for (n, (id, link)) in links.into_iter().filter_map(|id| Some((id, self.links.get(id)?))).enumerate() {
            if n > 0 {
                objects.json.push(',');
            }
            match self.link_with_object(&link.entity, Some(&link.object)) {
                Some(with_object) => objects.json.push_str(&with_object),
                None => objects.json.push_str(&link.entity),
            }
            if let Some(at) = link.updated_at {
                objects.versions.push((EntityKey::new(EntityKind::SectionObject, id.clone()), at));
            }
            if let Some(at) = self.objects.get(&link.object).and_then(|object| object.updated_at) {
                objects.versions.push((EntityKey::new(EntityKind::Object, link.object.clone()), at));
            }
        }
        objects.json.push(']');
        objects
    }

    /// (links, objects) held.
    pub fn counts(&self) -> (usize, usize) {
        (self.links.len(), self.objects.len())
    }
}

/// Removes `item` from the set under `key` of a reverse index, and the key
/// with its last item, so that no index keeps empty entries.
pub(super) fn remove_from<K: Hash + Eq, V: Hash + Eq>(index: &mut HashMap<K, HashSet<V>>, key: &K, item: &V) {
    if let Some(items) = index.get_mut(key) {
        items.remove(item);
        if items.is_empty() {
            index.remove(key);
        }
    }
}

/// The floor, shared between the ingest thread (writes) and the shards
/// (read one section at a connect). Locked once per object or link event
/// and once per snapshot: never on the per-event fan-out path.
#[derive(Clone, Default)]
pub struct SharedFloor(Arc<RwLock<Floor>>);

impl SharedFloor {
    pub fn read(&self) -> RwLockReadGuard<'_, Floor> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Floor> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FloorPlan for SharedFloor {
    fn section_objects(&self, section: SectionId) -> SectionObjects {
        self.read().section_objects(section)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::envelope;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";
    const LINK: &str = "33333333-3333-4333-8333-333333333333";
    const OBJECT: &str = "44444444-4444-4444-8444-444444444444";

    fn event(kind: &str, event_type: &str, data: serde_json::Value) -> EntityEvent {
        let record = serde_json::json!({"event_type": event_type, "data": data}).to_string();
        envelope::parse(&format!("mesa-ya.{kind}.events"), record.as_bytes(), 1 << 20).unwrap()
    }

    fn link(section: &str) -> serde_json::Value {
        serde_json::json!({"id": LINK, "sectionId": section, "objectId": OBJECT, "updatedAt": "2026-01-10T16:00:00.000Z"})
    }

    fn objects_of(floor: &Floor, section: &str) -> serde_json::Value {
        serde_json::from_str(&floor.section_objects(SectionId::parse(section).unwrap()).json).unwrap()
    }

    #[test]
    fn a_section_lists_its_links_each_with_the_latest_object() {
        let mut floor = Floor::default();
        floor.apply_link(&event("section-objects", "created", link(S1)));
        assert_eq!(objects_of(&floor, S1), serde_json::json!([link(S1)]), "the object was never seen");
        let object = serde_json::json!({"id": OBJECT, "posX": 1, "updatedAt": "2026-01-10T16:00:01.000Z"});
        assert_eq!(
            floor.apply_object(&event("objects", "created", object.clone())),
            vec![SectionId::parse(S1).unwrap()]
        );
        let mut expected = link(S1);
        expected["object"] = object;
        assert_eq!(objects_of(&floor, S1), serde_json::json!([expected]));
        assert_eq!(floor.section_objects(SectionId::parse(S1).unwrap()).versions.len(), 2);
        assert_eq!(objects_of(&floor, S2), serde_json::json!([]));
    }

    #[test]
    fn a_moved_link_names_the_section_it_left_and_deletes_leave_no_trace() {
        let mut floor = Floor::default();
        floor.apply_link(&event("section-objects", "created", link(S1)));
        assert_eq!(floor.apply_link(&event("section-objects", "updated", link(S2))), SectionId::parse(S1));
        assert_eq!(objects_of(&floor, S1), serde_json::json!([]));
        assert_eq!(floor.apply_link(&event("section-objects", "updated", link(S2))), None, "not moved again");
        let without_object = serde_json::json!({"id": LINK, "sectionId": S1});
        assert_eq!(
            floor.apply_link(&event("section-objects", "updated", without_object)),
            SectionId::parse(S2),
            "a move that leaves out objectId keeps the object"
        );
        assert_eq!(floor.sections_of(&OBJECT.into()), vec![SectionId::parse(S1).unwrap()]);
        floor.apply_link(&event("section-objects", "updated", link(S2)));

        floor.apply_object(&event("objects", "created", serde_json::json!({"id": OBJECT})));
        floor.forget_section(SectionId::parse(S2).unwrap());
        assert_eq!(floor.counts(), (0, 1), "the section's link is gone, the object stays");
        floor.apply_link(&event("section-objects", "created", link(S1)));
        floor.apply_object(&event("objects", "deleted", serde_json::json!({"id": OBJECT})));
        assert_eq!(floor.counts(), (0, 0), "a deleted object takes its links along");
        assert!(floor.section_links.is_empty() && floor.object_links.is_empty(), "no empty index entries");
    }
}
