//! Routing: which sections an entity event concerns. Runs on the
//! single ingest thread, which owns the link maps outright.
//!
//! - section: its `id`; a delete ends the section.
//! - table: its `sectionId`; when that differs from the section last seen for
//!   the table, the old section gets a `table.deleted` (the table moved).
//! - section-object: its `sectionId`; also links `objectId` → section.
//! - object: every section a section-object links it to.
//! - reservation: the section of its `tableId`, learned from snapshots and
//!   table events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::domain::entity::{Action, EntityKind};
use crate::domain::envelope::EntityEvent;
use crate::domain::frame::Frame;
use crate::domain::ids::{EntityId, SectionId};

use super::delivery::Delivery;

/// The event names no section the router knows of.
#[derive(Debug, PartialEq, Eq)]
pub struct Unroutable;

/// Tables a snapshot showed in a section, reported back by the shard that
/// fetched it so reservations for them can be routed.
#[derive(Debug)]
pub struct LearnedTables {
    pub section: SectionId,
    pub table_ids: Vec<EntityId>,
}

#[derive(Default)]
pub struct EventRouter {
    table_sections: HashMap<EntityId, SectionId>,
    /// section-object id → (section, object): the links as upstream holds them.
    section_objects: HashMap<EntityId, (SectionId, EntityId)>,
    /// object → sections linking it, with how many section-objects do.
    object_sections: HashMap<EntityId, HashMap<SectionId, usize>>,
}

impl EventRouter {
    /// Routes one event: `deliver` is called once per target section, and
    /// all targets share one frame. Returns how many sections it reached.
    pub fn route(
        &mut self,
        event: EntityEvent,
        mut deliver: impl FnMut(SectionId, Arc<Delivery>),
    ) -> Result<usize, Unroutable> {
        let targets = self.targets(&event)?;
        let delivery = Arc::new(Delivery {
            frame: Frame::event(event.key.kind, event.action, &event.payload),
            ends_section: event.key.kind == EntityKind::Section && event.action == Action::Deleted,
            key: event.key,
            action: event.action,
            updated_at: event.updated_at,
            routed_at: Instant::now(),
        });
        for &section in &targets.sections {
            deliver(section, Arc::clone(&delivery));
        }
        if let Some(old_section) = targets.moved_from {
            deliver(
                old_section,
                Arc::new(Delivery {
                    frame: Frame::event(EntityKind::Table, Action::Deleted, &event.payload),
                    key: delivery.key.clone(),
                    action: Action::Deleted,
                    updated_at: delivery.updated_at,
                    ends_section: false,
                    routed_at: delivery.routed_at,
                }),
            );
        }
        Ok(targets.sections.len() + usize::from(targets.moved_from.is_some()))
    }

    /// Applies only the link changes an event implies: used to rebuild the
    /// object → section links from the section-objects topics at start.
    pub fn learn_links(&mut self, event: &EntityEvent) {
        if event.key.kind == EntityKind::SectionObject {
            self.apply_section_object(event);
        }
    }

    pub fn learn_tables(&mut self, learned: LearnedTables) {
        for table in learned.table_ids {
            // Events are at least as fresh as a snapshot that raced them.
            self.table_sections.entry(table).or_insert(learned.section);
        }
    }

    fn targets(&mut self, event: &EntityEvent) -> Result<Targets, Unroutable> {
        let id = &event.key.id;
        let mut moved_from = None;
        let sections = match event.key.kind {
            EntityKind::Section => {
                let section = event.section_id.ok_or(Unroutable)?;
                if event.action == Action::Deleted {
                    self.forget_section(section, &event.embedded_table_ids);
                }
                vec![section]
            }
            EntityKind::Table => {
                let section = event.section_id.ok_or(Unroutable)?;
                if event.action == Action::Deleted {
                    self.table_sections.remove(id);
                } else if let Some(old) = self.table_sections.insert(id.clone(), section) {
                    moved_from = (old != section).then_some(old);
                }
                vec![section]
            }
            EntityKind::SectionObject => {
                self.apply_section_object(event);
                vec![event.section_id.ok_or(Unroutable)?]
            }
            EntityKind::Object => {
                let sections: Vec<SectionId> =
                    self.object_sections.get(id).map(|s| s.keys().copied().collect()).unwrap_or_default();
                if event.action == Action::Deleted {
                    self.forget_object(id);
                }
                sections
            }
            EntityKind::Reservation => {
                let table = event.table_id.as_ref().ok_or(Unroutable)?;
                vec![*self.table_sections.get(table).ok_or(Unroutable)?]
            }
        };
        if sections.is_empty() {
            return Err(Unroutable);
        }
        Ok(Targets { sections, moved_from })
    }

    fn apply_section_object(&mut self, event: &EntityEvent) {
        let id = &event.key.id;
        if let Some((section, object)) = self.section_objects.remove(id) {
            self.unlink(&object, section);
        }
        if event.action == Action::Deleted {
            return;
        }
        if let (Some(section), Some(object)) = (event.section_id, event.object_id.clone()) {
            *self.object_sections.entry(object.clone()).or_default().entry(section).or_default() += 1;
            self.section_objects.insert(id.clone(), (section, object));
        }
    }

    fn unlink(&mut self, object: &EntityId, section: SectionId) {
        if let Some(sections) = self.object_sections.get_mut(object) {
            if let Some(count) = sections.get_mut(&section) {
                *count -= 1;
                if *count == 0 {
                    sections.remove(&section);
                }
            }
            if sections.is_empty() {
                self.object_sections.remove(object);
            }
        }
    }

    fn forget_object(&mut self, object: &EntityId) {
        self.object_sections.remove(object);
        self.section_objects.retain(|_, (_, linked)| linked != object);
    }

    /// Upstream cascades a section delete to its tables and section-objects
    /// in the database without emitting events for them, so drop them here.
    fn forget_section(&mut self, section: SectionId, tables: &[EntityId]) {
        for table in tables {
            self.table_sections.remove(table);
        }
        self.table_sections.retain(|_, owner| *owner != section);
        let gone: Vec<EntityId> =
            self.section_objects.iter().filter(|(_, (owner, _))| *owner == section).map(|(id, _)| id.clone()).collect();
        for id in gone {
            if let Some((owner, object)) = self.section_objects.remove(&id) {
                self.unlink(&object, owner);
            }
        }
    }

    /// How many links the router holds, per kind: exported as gauges.
    pub fn link_counts(&self) -> LinkCounts {
        LinkCounts {
            tables: self.table_sections.len(),
            section_objects: self.section_objects.len(),
            objects: self.object_sections.len(),
        }
    }
}

/// Sizes of the router's maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// table → section
    pub tables: usize,
    /// section-object → (section, object)
    pub section_objects: usize,
    /// object → sections
    pub objects: usize,
}

struct Targets {
    sections: Vec<SectionId>,
    moved_from: Option<SectionId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::envelope;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";

    fn section(id: &str) -> SectionId {
        SectionId::parse(id).unwrap()
    }

    fn event(topic: &str, json: serde_json::Value) -> EntityEvent {
        envelope::parse(topic, json.to_string().as_bytes(), 1 << 20).unwrap()
    }

    fn route(router: &mut EventRouter, event: EntityEvent) -> Result<Vec<(SectionId, String)>, Unroutable> {
        let mut out = Vec::new();
        router.route(event, |section, delivery| {
            let frame: serde_json::Value = serde_json::from_slice(delivery.frame.utf8_bytes()).unwrap();
            out.push((section, frame["event"].as_str().unwrap().to_string()));
        })?;
        Ok(out)
    }

    fn v2(kind: &str, event_type: &str, data: serde_json::Value) -> EntityEvent {
        event(&format!("mesa-ya.{kind}.events"), serde_json::json!({"event_type": event_type, "data": data}))
    }

    #[test]
    fn objects_follow_their_section_object_links() {
        let mut router = EventRouter::default();
        let object = serde_json::json!({"id": "o1", "posX": 1});
        assert_eq!(route(&mut router, v2("objects", "updated", object.clone())), Err(Unroutable));

        for (link, sec) in [("so1", S1), ("so2", S2)] {
            let data = serde_json::json!({"id": link, "sectionId": sec, "objectId": "o1"});
            assert_eq!(
                route(&mut router, v2("section-objects", "created", data)).unwrap(),
                vec![(section(sec), "section-object.created".to_string())]
            );
        }
        let mut reached = route(&mut router, v2("objects", "updated", object.clone())).unwrap();
        reached.sort();
        assert_eq!(reached, vec![(section(S1), "object.updated".into()), (section(S2), "object.updated".into())]);

        let unlink = serde_json::json!({"id": "so1", "sectionId": S1, "objectId": "o1"});
        route(&mut router, v2("section-objects", "deleted", unlink)).unwrap();
        assert_eq!(
            route(&mut router, v2("objects", "updated", object)).unwrap(),
            vec![(section(S2), "object.updated".into())]
        );
    }

    #[test]
    fn reservations_follow_tables_from_events_and_snapshots() {
        let mut router = EventRouter::default();
        let reservation = |table: &str| v2("reservations", "created", serde_json::json!({"id": "r", "tableId": table}));
        assert_eq!(route(&mut router, reservation("t1")), Err(Unroutable));

        router.learn_tables(LearnedTables { section: section(S1), table_ids: vec!["t1".into()] });
        assert_eq!(route(&mut router, reservation("t1")).unwrap(), vec![(section(S1), "reservation.created".into())]);

        route(&mut router, v2("tables", "created", serde_json::json!({"id": "t2", "sectionId": S2}))).unwrap();
        assert_eq!(route(&mut router, reservation("t2")).unwrap(), vec![(section(S2), "reservation.created".into())]);
    }

    #[test]
    fn a_moved_table_is_deleted_from_its_old_section() {
        let mut router = EventRouter::default();
        route(&mut router, v2("tables", "created", serde_json::json!({"id": "t1", "sectionId": S1}))).unwrap();
        let moved =
            route(&mut router, v2("tables", "updated", serde_json::json!({"id": "t1", "sectionId": S2}))).unwrap();
        assert_eq!(moved, vec![(section(S2), "table.updated".into()), (section(S1), "table.deleted".into())]);
        let again =
            route(&mut router, v2("tables", "updated", serde_json::json!({"id": "t1", "sectionId": S2}))).unwrap();
        assert_eq!(again, vec![(section(S2), "table.updated".into())]);
    }

    #[test]
    fn a_deleted_section_forgets_its_links() {
        let mut router = EventRouter::default();
        router.learn_tables(LearnedTables { section: section(S1), table_ids: vec!["t1".into()] });
        route(
            &mut router,
            v2("section-objects", "created", serde_json::json!({"id": "so", "sectionId": S1, "objectId": "o"})),
        )
        .unwrap();
        let mut ended = false;
        router
            .route(v2("sections", "deleted", serde_json::json!({"id": S1, "tables": [{"id": "t1"}]})), |_, d| {
                ended = d.ends_section
            })
            .unwrap();
        assert!(ended);
        assert_eq!(router.link_counts(), LinkCounts::default());
        assert_eq!(route(&mut router, v2("objects", "updated", serde_json::json!({"id": "o"}))), Err(Unroutable));
    }

    #[test]
    fn tables_without_a_section_are_unroutable() {
        let mut router = EventRouter::default();
        assert_eq!(route(&mut router, v2("tables", "updated", serde_json::json!({"id": "t"}))), Err(Unroutable));
    }

    /// The frame is built once per event, not once per section.
    #[test]
    fn one_delivery_is_shared_by_every_section_an_object_reaches() {
        let mut router = EventRouter::default();
        for (link, sec) in [("so1", S1), ("so2", S2)] {
            let data = serde_json::json!({"id": link, "sectionId": sec, "objectId": "o1"});
            route(&mut router, v2("section-objects", "created", data)).unwrap();
        }
        let mut delivered: Vec<(SectionId, Arc<Delivery>)> = Vec::new();
        let reached = router
            .route(v2("objects", "updated", serde_json::json!({"id": "o1", "posX": 3})), |section, delivery| {
                delivered.push((section, delivery))
            })
            .unwrap();
        assert_eq!(reached, 2);
        let mut sections: Vec<SectionId> = delivered.iter().map(|(section, _)| *section).collect();
        sections.sort();
        assert_eq!(sections, vec![section(S1), section(S2)]);
        let (first, second) = (&delivered[0].1, &delivered[1].1);
        assert!(Arc::ptr_eq(first, second), "one Arc<Delivery> for both sections");
        assert_eq!(first.frame.utf8_bytes().as_ptr(), second.frame.utf8_bytes().as_ptr());
    }
}
