//! Routing: which sections an entity event concerns. Runs on the single
//! ingest thread, which owns the table and restaurant maps outright and is
//! the only writer of the shared floor (links and objects).
//!
//! - section: its `id`; a delete ends the section (its clients close).
//! - table: its `sectionId`; when that differs from the section last seen for
//!   the table, the old section gets a `table.deleted` (the table moved).
//! - section-object: its `sectionId`, with the linked object's latest entity
//!   under `object`; a link that moved sends `section-object.deleted` to the
//!   section it left.
//! - object: every section a section-object links it to.
//! - reservation: the section of its `tableId`, learned from snapshots and
//!   table events; held up to [`HOLD_RESERVATIONS_FOR`] while unknown.
//! - restaurant: every section of the restaurant, learned from snapshots and
//!   section events; a delete ends those sections. Its `ownerId` is kept,
//!   created restaurants included: the owner is staff of its sections.
//!
//! Frames are built once per audience that sees them differently
//! ([`Disclosure`]): reservations and restaurants have a public variant.
//! With compression on, each variant is compressed as it is built, once for
//! every subscriber ([`Deflater`]).
//!
//! Every map has a reverse index, so forgetting a section never scans one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::audience::{Disclosure, Variants};
use crate::domain::entity::{Action, EntityKind};
use crate::domain::envelope::EntityEvent;
use crate::domain::ids::{EntityId, SectionId};
use crate::telemetry::METRICS;

use super::compression::Deflater;
use super::delivery::{Delivery, Stamp};
use super::expiring::Expiring;
use super::floor::{Floor, SharedFloor, remove_from};
use super::ports::LearnedSection;
use super::restaurants::{Restaurants, SharedRestaurants};

/// How long a reservation for a table no snapshot or table event has shown
/// yet waits for one: long enough for the snapshot call of the section's
/// first client.
pub const HOLD_RESERVATIONS_FOR: Duration = Duration::from_secs(5);
/// Held reservations, at most, and their bytes (payloads and bookkeeping):
/// more are skipped at once, so a producer of large or many reservations
/// for tables nobody shows cannot grow the ingest thread's memory.
const MAX_HELD: usize = 10_000;
const MAX_HELD_BYTES: usize = 16 << 20;

/// The event names no section the router knows of.
#[derive(Debug, PartialEq, Eq)]
pub struct Unroutable;

#[derive(Default)]
pub struct EventRouter {
    tables: HashMap<EntityId, SectionId>,
    section_tables: HashMap<SectionId, HashSet<EntityId>>,
    floor: SharedFloor,
    /// (links, objects) on the floor as of this router's last change to it:
    /// the router is its only writer, so the gauges need not take its lock.
    floor_counts: (usize, usize),
    restaurants: SharedRestaurants,
    /// (restaurants with sections, with owners), kept like `floor_counts`.
    restaurant_counts: (usize, usize),
    disclosure: Disclosure,
    /// `None`: compression is off (`WS_COMPRESSION=off`).
    deflater: Option<Deflater>,
    held: HeldReservations,
}

/// Where an event goes, once the maps have taken it in.
#[derive(Default)]
struct Targets {
    sections: Vec<SectionId>,
    /// The section a table or link left: it gets a delete.
    moved_from: Option<SectionId>,
    /// The payload clients get, when it is not the event's own.
    payload: Option<String>,
    /// The sections end after this frame (their clients close with 1000).
    ends_sections: bool,
}

impl EventRouter {
    /// `floor` and `restaurants` are written here and read by the shards.
    pub fn new(
        floor: SharedFloor,
        restaurants: SharedRestaurants,
        disclosure: Disclosure,
        deflater: Option<Deflater>,
    ) -> Self {
        Self { floor, restaurants, disclosure, deflater, ..Self::default() }
    }

    /// Routes one event: `deliver` is called once per target section, and
    /// all targets share one delivery. Returns how many sections it reached
    /// (none for an object nothing links yet, or a reservation held until
    /// its table is known).
    pub fn route(
        &mut self,
        event: EntityEvent,
        stamp: Stamp,
        mut deliver: impl FnMut(SectionId, Arc<Delivery>),
    ) -> Result<usize, Unroutable> {
        let targets = self.apply(&event)?;
        if event.key.kind == EntityKind::Reservation && targets.sections.is_empty() {
            let table = event.table_id.clone().ok_or(Unroutable)?;
            return if self.held.hold(table, event, stamp.at) { Ok(0) } else { Err(Unroutable) };
        }
        let mut reached = 0;
        if let Some(old_section) = targets.moved_from {
            let left = self.frames(&event, Action::Deleted, &event.payload);
            deliver(old_section, delivery(&event, left, Action::Deleted, false, stamp));
            reached += 1;
        }
        let payload = targets.payload.as_deref().unwrap_or(&event.payload);
        let frames = self.frames(&event, event.action, payload);
        let shared = delivery(&event, frames, event.action, targets.ends_sections, stamp);
        for &section in &targets.sections {
            deliver(section, Arc::clone(&shared));
        }
        reached += targets.sections.len();
        if event.key.kind == EntityKind::Table && event.action != Action::Deleted {
            reached += self.release_held(&event.key.id, stamp, &mut deliver);
        }
        Ok(reached)
    }

    /// Takes in what an event says about the maps without delivering it:
    /// the start-up rebuild feeds the retained topics through this.
    pub fn learn(&mut self, event: &EntityEvent) {
        // Unroutable events still taught the maps what they could.
        let _ = self.apply(event);
    }

    /// What a snapshot showed. Reservations held for its tables go out now.
    pub fn learn_section(
        &mut self,
        learned: LearnedSection,
        stamp: Stamp,
        mut deliver: impl FnMut(SectionId, Arc<Delivery>),
    ) -> usize {
        if let Some(restaurant) = learned.restaurant {
            self.change_restaurants(|restaurants| restaurants.link(learned.section, restaurant));
        }
        let mut released = 0;
        for table in learned.table_ids {
            // Events are at least as fresh as a snapshot that raced them.
            if !self.tables.contains_key(&table) {
                self.set_table(table.clone(), learned.section);
            }
            released += self.release_held(&table, stamp, &mut deliver);
        }
        released
    }

    /// Drops reservations held longer than [`HOLD_RESERVATIONS_FOR`];
    /// returns how many.
    pub fn expire_held(&mut self, now: Instant) -> usize {
        self.held.expire(now)
    }

    fn release_held(
        &mut self,
        table: &EntityId,
        stamp: Stamp,
        deliver: &mut impl FnMut(SectionId, Arc<Delivery>),
    ) -> usize {
        let Some(&section) = self.tables.get(table) else { return 0 };
        let released = self.held.release(table);
        for event in &released {
            let frames = self.frames(event, event.action, &event.payload);
            deliver(section, delivery(event, frames, event.action, false, stamp));
        }
        released.len()
    }

    /// The frames of `event` as `action` with `payload`, one per audience
    /// that sees it differently, each compressed once.
    fn frames(&mut self, event: &EntityEvent, action: Action, payload: &str) -> Variants {
        let kind = event.key.kind;
        let frames = self.disclosure.frames(kind, action, payload, event.diner.as_ref());
        if frames.is_cut() {
            METRICS.frames_cut.with_label_values(&[kind.event_prefix()]).inc();
        }
        match &mut self.deflater {
            Some(deflater) => deflater.compress_variants(frames),
            None => frames,
        }
    }

    /// Updates the maps for one event and says where it goes.
    fn apply(&mut self, event: &EntityEvent) -> Result<Targets, Unroutable> {
        let id = &event.key.id;
        let deleted = event.action == Action::Deleted;
        let mut targets = Targets::default();
        match event.key.kind {
            EntityKind::Section => {
                let section = event.section_id.ok_or(Unroutable)?;
                if deleted {
                    self.forget_section(section, &event.embedded_table_ids);
                } else if let Some(restaurant) = event.restaurant_id.clone() {
                    self.change_restaurants(|restaurants| restaurants.link(section, restaurant));
                }
                targets.sections.push(section);
                targets.ends_sections = deleted;
            }
            EntityKind::Table => {
                let section = event.section_id.ok_or(Unroutable)?;
                if deleted {
                    self.remove_table(id);
                } else {
                    targets.moved_from = self.set_table(id.clone(), section).filter(|&old| old != section);
                }
                targets.sections.push(section);
            }
            EntityKind::SectionObject => {
                (targets.moved_from, targets.payload) = self.change_floor(|floor| {
                    let moved_from = floor.apply_link(event);
                    let payload =
                        if deleted { None } else { floor.link_with_object(&event.payload, event.object_id.as_ref()) };
                    (moved_from, payload)
                });
                targets.sections.push(event.section_id.ok_or(Unroutable)?);
            }
            EntityKind::Object => targets.sections = self.change_floor(|floor| floor.apply_object(event)),
            EntityKind::Reservation => {
                let table = event.table_id.as_ref().ok_or(Unroutable)?;
                targets.sections.extend(self.tables.get(table).copied());
            }
            EntityKind::Restaurant => {
                let sections = self.change_restaurants(|restaurants| {
                    if deleted {
                        restaurants.forget(id)
                    } else {
                        restaurants.set_owner(id.clone(), event.owner.clone());
                        restaurants.sections_of(id)
                    }
                });
                // A new restaurant has no sections yet.
                if event.action == Action::Created || sections.is_empty() {
                    return Err(Unroutable);
                }
                if deleted {
                    // Upstream deletes the sections with the restaurant, in
                    // the database, without section events.
                    for &section in &sections {
                        self.forget_section(section, &[]);
                    }
                }
                targets.sections = sections;
                targets.ends_sections = deleted;
            }
        }
        Ok(targets)
    }

    /// Returns the table's previous section.
    fn set_table(&mut self, table: EntityId, section: SectionId) -> Option<SectionId> {
        let old = self.tables.insert(table.clone(), section);
        if let Some(old) = old.filter(|&old| old != section) {
            remove_from(&mut self.section_tables, &old, &table);
        }
        self.section_tables.entry(section).or_default().insert(table);
        old
    }

    fn remove_table(&mut self, table: &EntityId) {
        if let Some(section) = self.tables.remove(table) {
            remove_from(&mut self.section_tables, &section, table);
        }
    }

    /// Upstream cascades a section delete to its tables and section-objects
    /// in the database without emitting events for them, so drop them here.
    fn forget_section(&mut self, section: SectionId, tables: &[EntityId]) {
        for table in tables {
            self.remove_table(table);
        }
        for table in self.section_tables.remove(&section).unwrap_or_default() {
            self.tables.remove(&table);
        }
        self.change_restaurants(|restaurants| restaurants.unlink(section));
        self.change_floor(|floor| floor.forget_section(section));
    }

    /// Changes the shared restaurants under their lock, keeping their counts.
    fn change_restaurants<T>(&mut self, change: impl FnOnce(&mut Restaurants) -> T) -> T {
        let mut restaurants = self.restaurants.write();
        let result = change(&mut restaurants);
        self.restaurant_counts = restaurants.counts();
        result
    }

    /// Changes the shared floor under its lock, keeping its counts.
    fn change_floor<T>(&mut self, change: impl FnOnce(&mut Floor) -> T) -> T {
        let mut floor = self.floor.write();
        let result = change(&mut floor);
        self.floor_counts = floor.counts();
        result
    }

    /// How many entries the router's maps hold, per kind: exported as gauges.
    pub fn link_counts(&self) -> LinkCounts {
        let (section_objects, objects) = self.floor_counts;
        let (restaurants, restaurant_owners) = self.restaurant_counts;
        LinkCounts {
            tables: self.tables.len(),
            section_objects,
            objects,
            restaurants,
            restaurant_owners,
            held_reservations: self.held.len(),
        }
    }
}

fn delivery(event: &EntityEvent, frames: Variants, action: Action, ends_section: bool, stamp: Stamp) -> Arc<Delivery> {
    Arc::new(Delivery {
        frames,
        key: event.key.clone(),
        action,
        updated_at: event.updated_at,
        ends_section,
        routed_at: stamp.at,
        position: stamp.position,
    })
}

/// Sizes of the router's maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// table → section
    pub tables: usize,
    /// section-object links
    pub section_objects: usize,
    /// object entities
    pub objects: usize,
    /// restaurant → sections
    pub restaurants: usize,
    /// restaurant → owner
    pub restaurant_owners: usize,
    pub held_reservations: usize,
}

/// Reservations whose table no snapshot or table event has shown yet.
#[derive(Default)]
struct HeldReservations {
    /// By table, each with when it was held.
    by_table: Expiring<EntityId, Vec<(Instant, EntityEvent)>>,
    held: usize,
    /// What the held events cost, by [`held_bytes`].
    bytes: usize,
}

/// What holding `event` costs: its payload and its entries here.
fn held_bytes(event: &EntityEvent) -> usize {
    event.payload.len()
        + std::mem::size_of::<(Instant, EntityEvent)>()
        + std::mem::size_of::<(Instant, EntityId)>()
        + event.key.id.len()
}

impl HeldReservations {
    fn hold(&mut self, table: EntityId, event: EntityEvent, now: Instant) -> bool {
        let cost = held_bytes(&event);
        if self.held >= MAX_HELD || self.bytes + cost > MAX_HELD_BYTES {
            return false;
        }
        self.by_table.arrive(table, now).or_default().push((now, event));
        self.held += 1;
        self.bytes += cost;
        true
    }

    fn release(&mut self, table: &EntityId) -> Vec<EntityEvent> {
        let released: Vec<EntityEvent> =
            self.by_table.remove(table).unwrap_or_default().into_iter().map(|(_, event)| event).collect();
        self.held -= released.len();
        self.bytes -= released.iter().map(held_bytes).sum::<usize>();
        released
    }

    fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        let bytes = &mut self.bytes;
        // Released tables are skipped: nothing to drop.
        self.by_table.expire(
            |held_at| now.duration_since(held_at) >= HOLD_RESERVATIONS_FOR,
            |_, events| {
                let before = events.len();
                events.retain(|(at, event)| {
                    let keep = now.duration_since(*at) < HOLD_RESERVATIONS_FOR;
                    if !keep {
                        *bytes -= held_bytes(event);
                    }
                    keep
                });
                expired += before - events.len();
                events.is_empty()
            },
        );
        self.held -= expired;
        expired
    }

    fn len(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::envelope;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";
    const T1: &str = "a1111111-1111-4111-8111-111111111111";
    const T2: &str = "a2222222-2222-4222-8222-222222222222";
    const O1: &str = "b1111111-1111-4111-8111-111111111111";
    const L1: &str = "c1111111-1111-4111-8111-111111111111";
    const L2: &str = "c2222222-2222-4222-8222-222222222222";
    const R1: &str = "d1111111-1111-4111-8111-111111111111";
    const RESTAURANT: &str = "e1111111-1111-4111-8111-111111111111";

    fn section(id: &str) -> SectionId {
        SectionId::parse(id).unwrap()
    }

    fn v2(kind: &str, event_type: &str, data: serde_json::Value) -> EntityEvent {
        let record = serde_json::json!({"event_type": event_type, "data": data}).to_string();
        envelope::parse(&format!("mesa-ya.{kind}.events"), record.as_bytes(), 1 << 20).unwrap()
    }

    /// A routing moment with no Kafka position.
    fn unplaced(at: Instant) -> Stamp {
        Stamp { at, position: None }
    }

    /// Routes `event` and returns (section, frame) pairs, in delivery order.
    fn route(router: &mut EventRouter, event: EntityEvent) -> Result<Vec<(SectionId, serde_json::Value)>, Unroutable> {
        route_at(router, event, Instant::now())
    }

    fn route_at(
        router: &mut EventRouter,
        event: EntityEvent,
        now: Instant,
    ) -> Result<Vec<(SectionId, serde_json::Value)>, Unroutable> {
        let mut out = Vec::new();
        router.route(event, unplaced(now), |section, delivery| {
            out.push((section, serde_json::from_slice(delivery.frames.full().utf8_bytes()).unwrap()));
        })?;
        Ok(out)
    }

    fn names(frames: Vec<(SectionId, serde_json::Value)>) -> Vec<(SectionId, String)> {
        frames.into_iter().map(|(section, frame)| (section, frame["event"].as_str().unwrap().to_string())).collect()
    }

    fn link(id: &str, sec: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "sectionId": sec, "objectId": O1})
    }

    #[test]
    fn objects_follow_their_links_and_links_carry_their_object() {
        let mut router = EventRouter::default();
        let object = serde_json::json!({"id": O1, "posX": 1});
        assert_eq!(route(&mut router, v2("objects", "created", object.clone())), Ok(vec![]), "kept, sent nowhere");

        let linked = route(&mut router, v2("section-objects", "created", link(L1, S1))).unwrap();
        let mut expected = link(L1, S1);
        expected["object"] = object.clone();
        assert_eq!(
            linked,
            vec![(section(S1), serde_json::json!({"event": "section-object.created", "payload": expected}))]
        );
        route(&mut router, v2("section-objects", "created", link(L2, S2))).unwrap();

        let mut reached = names(route(&mut router, v2("objects", "updated", object.clone())).unwrap());
        reached.sort();
        assert_eq!(reached, vec![(section(S1), "object.updated".into()), (section(S2), "object.updated".into())]);

        route(&mut router, v2("section-objects", "deleted", link(L1, S1))).unwrap();
        assert_eq!(
            names(route(&mut router, v2("objects", "updated", object)).unwrap()),
            vec![(section(S2), "object.updated".into())]
        );
    }

    #[test]
    fn a_moved_link_is_deleted_from_the_section_it_left() {
        let mut router = EventRouter::default();
        route(&mut router, v2("section-objects", "created", link(L1, S1))).unwrap();
        let moved = route(&mut router, v2("section-objects", "updated", link(L1, S2))).unwrap();
        assert_eq!(
            names(moved),
            vec![(section(S1), "section-object.deleted".into()), (section(S2), "section-object.updated".into())]
        );
    }

    #[test]
    fn reservations_follow_tables_and_wait_for_unknown_ones() {
        let mut router = EventRouter::default();
        let reservation = |table: &str| v2("reservations", "created", serde_json::json!({"id": R1, "tableId": table}));
        let start = Instant::now();
        assert_eq!(route_at(&mut router, reservation(T1), start), Ok(vec![]), "held");
        assert_eq!(router.link_counts().held_reservations, 1);

        // A snapshot shows the table: the held reservation goes out.
        let mut released = Vec::new();
        let learned = LearnedSection { section: section(S1), restaurant: None, table_ids: vec![T1.into()] };
        router.learn_section(learned, unplaced(start), |section, _| released.push(section));
        assert_eq!(released, vec![section(S1)]);
        assert_eq!(
            names(route(&mut router, reservation(T1)).unwrap()),
            vec![(section(S1), "reservation.created".into())]
        );

        // A table event shows one: the same.
        route_at(&mut router, reservation(T2), start).unwrap();
        let table =
            route(&mut router, v2("tables", "created", serde_json::json!({"id": T2, "sectionId": S2}))).unwrap();
        assert_eq!(
            names(table),
            vec![(section(S2), "table.created".into()), (section(S2), "reservation.created".into())]
        );

        // Nobody shows it within the hold: counted as expired.
        let unknown = "a3333333-3333-4333-8333-333333333333";
        route_at(&mut router, reservation(unknown), start).unwrap();
        assert_eq!(router.expire_held(start + HOLD_RESERVATIONS_FOR - Duration::from_millis(1)), 0);
        assert_eq!(router.expire_held(start + HOLD_RESERVATIONS_FOR), 1);
        assert_eq!(router.link_counts().held_reservations, 0);
    }

    /// Large reservations for tables nobody shows fill the hold by bytes
    /// long before its count: the rest are skipped, not kept.
    #[test]
    fn held_reservations_are_bounded_by_bytes_too() {
        let mut router = EventRouter::default();
        let padding = "x".repeat(200_000);
        let mut held = 0;
        for n in 0..200u32 {
            let table = format!("a{n:07x}-3333-4333-8333-333333333333");
            let reservation = serde_json::json!({"id": R1, "tableId": table, "notes": padding});
            if route(&mut router, v2("reservations", "created", reservation)).is_ok() {
                held += 1;
            }
        }
        assert_eq!(router.link_counts().held_reservations, held);
        assert!((60..100).contains(&held), "16 MiB holds about 80 of 200 KB, not {held}");
        assert!(router.held.bytes <= MAX_HELD_BYTES);
        assert_eq!(router.expire_held(Instant::now() + HOLD_RESERVATIONS_FOR), held);
        assert_eq!((router.held.held, router.held.bytes), (0, 0), "expiry gives every byte back");
    }

    #[test]
    fn a_moved_table_is_deleted_from_its_old_section() {
        let mut router = EventRouter::default();
        route(&mut router, v2("tables", "created", serde_json::json!({"id": T1, "sectionId": S1}))).unwrap();
        let moved =
            route(&mut router, v2("tables", "updated", serde_json::json!({"id": T1, "sectionId": S2}))).unwrap();
        assert_eq!(names(moved), vec![(section(S1), "table.deleted".into()), (section(S2), "table.updated".into())]);
        let again =
            route(&mut router, v2("tables", "updated", serde_json::json!({"id": T1, "sectionId": S2}))).unwrap();
        assert_eq!(names(again), vec![(section(S2), "table.updated".into())]);
        assert_eq!(router.section_tables.get(&section(S1)), None, "the reverse index follows the move");
    }

    #[test]
    fn restaurant_events_reach_its_sections_and_a_delete_ends_them() {
        let mut router = EventRouter::default();
        let restaurant = |event_type| v2("restaurants", event_type, serde_json::json!({"id": RESTAURANT}));
        assert_eq!(route(&mut router, restaurant("updated")), Err(Unroutable), "no section known yet");
        let learned = LearnedSection { section: section(S1), restaurant: Some(RESTAURANT.into()), table_ids: vec![] };
        router.learn_section(learned, unplaced(Instant::now()), |_, _| {});
        route(&mut router, v2("sections", "updated", serde_json::json!({"id": S2, "restaurantId": RESTAURANT})))
            .unwrap();

        let mut reached = names(route(&mut router, restaurant("status_changed")).unwrap());
        reached.sort();
        assert_eq!(
            reached,
            vec![(section(S1), "restaurant.status_changed".into()), (section(S2), "restaurant.status_changed".into())]
        );
        assert_eq!(route(&mut router, restaurant("created")), Err(Unroutable));

        let mut ended = Vec::new();
        router
            .route(restaurant("deleted"), unplaced(Instant::now()), |section, delivery| {
                ended.push((section, delivery.ends_section))
            })
            .unwrap();
        ended.sort();
        assert_eq!(ended, vec![(section(S1), true), (section(S2), true)]);
        assert_eq!(router.link_counts(), LinkCounts::default(), "its sections are forgotten");
    }

    #[test]
    fn a_deleted_section_forgets_its_links() {
        let mut router = EventRouter::default();
        let learned =
            LearnedSection { section: section(S1), restaurant: Some(RESTAURANT.into()), table_ids: vec![T1.into()] };
        router.learn_section(learned, unplaced(Instant::now()), |_, _| {});
        route(&mut router, v2("tables", "created", serde_json::json!({"id": T2, "sectionId": S1}))).unwrap();
        route(&mut router, v2("section-objects", "created", link(L1, S1))).unwrap();
        route(&mut router, v2("objects", "created", serde_json::json!({"id": O1}))).unwrap();
        let mut ended = false;
        router
            .route(
                v2("sections", "deleted", serde_json::json!({"id": S1, "tables": [{"id": T1}]})),
                unplaced(Instant::now()),
                |_, d| ended = d.ends_section,
            )
            .unwrap();
        assert!(ended);
        let counts = router.link_counts();
        assert_eq!((counts.tables, counts.section_objects, counts.restaurants), (0, 0, 0));
        assert_eq!(counts.objects, 1, "the object itself was not deleted");
        assert_eq!(route(&mut router, v2("objects", "updated", serde_json::json!({"id": O1}))), Ok(vec![]));
    }

    #[test]
    fn tables_without_a_section_are_unroutable() {
        let mut router = EventRouter::default();
        assert_eq!(route(&mut router, v2("tables", "updated", serde_json::json!({"id": T1}))), Err(Unroutable));
    }

    /// The frame is built once per event, not once per section.
    #[test]
    fn one_delivery_is_shared_by_every_section_an_object_reaches() {
        let mut router = EventRouter::default();
        route(&mut router, v2("section-objects", "created", link(L1, S1))).unwrap();
        route(&mut router, v2("section-objects", "created", link(L2, S2))).unwrap();
        let mut delivered: Vec<(SectionId, Arc<Delivery>)> = Vec::new();
        let reached = router
            .route(
                v2("objects", "updated", serde_json::json!({"id": O1, "posX": 3})),
                unplaced(Instant::now()),
                |section, delivery| delivered.push((section, delivery)),
            )
            .unwrap();
        assert_eq!(reached, 2);
        let (first, second) = (&delivered[0].1, &delivered[1].1);
        assert!(Arc::ptr_eq(first, second), "one Arc<Delivery> for both sections");
    }
}
