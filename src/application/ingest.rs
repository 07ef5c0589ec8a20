//! The ingest use case: one Kafka record in, its frame dispatched to the
//! shard of every section it concerns. Runs on the single ingest thread,
//! which owns the router outright; the Kafka adapter only reads records and
//! calls [`Ingest::handle`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::entity::{Action, EntityKind};
use crate::domain::envelope::{self, EntityEvent, Rejection};
use crate::domain::ids::EntityId;
use crate::domain::position::{PartitionId, Position, Progress};

use super::delivery::{Delivery, Stamp, Unseen};
use super::ports::{Dispatch, LearnedSection};
use super::router::{EventRouter, LinkCounts};

/// Why a record reached no client. Each reason is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The record is not an entity event we understand.
    Rejected(Rejection),
    /// It parsed, but names no section the router knows of.
    NoSection,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.label(),
            Self::NoSection => "no_section",
        }
    }
}

pub struct Ingest<D> {
    router: EventRouter,
    dispatch: D,
    max_record_bytes: usize,
    progress: Progress,
    /// When the shards were last told the progress, and whether it moved since.
    progress_told: Option<Instant>,
    progress_moved: bool,
}

/// One Kafka record, as the adapter read it.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

impl Record<'_> {
    pub fn position(&self) -> Position {
        Position { partition: PartitionId::new(self.topic, self.partition), offset: self.offset }
    }
}

/// For the kinds another instance may route where this one cannot (it
/// knows the table, or the restaurant's sections): the restaurant the record
/// names, if any. A reservation this instance holds counts too: it may expire.
/// A created restaurant has no sections anywhere.
fn routed_elsewhere(event: &EntityEvent) -> Option<Option<EntityId>> {
    match (event.key.kind, event.action) {
        (EntityKind::Reservation, _) => Some(event.restaurant_id.clone()),
        (EntityKind::Restaurant, action) if action != Action::Created => Some(event.restaurant_id.clone()),
        _ => None,
    }
}

/// How often, at most, a busy ingest thread tells every shard its progress
/// (a quiet one tells it at once): the positions in resume tokens lag the
/// frames by about this much.
const PROGRESS_EVERY: Duration = Duration::from_millis(25);

impl<D: Dispatch> Ingest<D> {
    pub fn new(dispatch: D, max_record_bytes: usize, router: EventRouter) -> Self {
        Self {
            router,
            dispatch,
            max_record_bytes,
            progress: Progress::default(),
            progress_told: None,
            progress_moved: false,
        }
    }

    /// Parses, routes and dispatches one record. Returns how many sections
    /// it reached: none for an object nothing links yet (it is kept for
    /// later links and snapshots) or a reservation held until its table is
    /// known.
    pub fn handle(&mut self, record: Record<'_>) -> Result<usize, Skip> {
        let position = record.position();
        let stamp = Stamp { at: Instant::now(), position: Some(position) };
        let dispatch = &self.dispatch;
        let mut unseen = None;
        let routed = envelope::parse(record.topic, record.payload, self.max_record_bytes)
            .map_err(Skip::Rejected)
            .and_then(|event| {
                unseen = routed_elsewhere(&event).map(|restaurant| Unseen { position, restaurant });
                self.router
                    .route(event, stamp, |section, delivery: Arc<Delivery>| dispatch.dispatch(section, delivery))
                    .map_err(|_| Skip::NoSection)
            });
        if let Some(unseen) = unseen.filter(|_| matches!(routed, Ok(0) | Err(Skip::NoSection))) {
            self.dispatch.unseen(&unseen);
        }
        self.progress.consumed(position);
        self.progress_moved = true;
        self.dispatch.record_done(Position { offset: position.offset + 1, ..position });
        routed
    }

    /// Takes in what a record says about the maps without dispatching it:
    /// the start-up rebuild feeds retained records through this, so that a
    /// restart forgets no table, link or object made before it.
    pub fn rebuild(&mut self, topic: &str, payload: &[u8]) {
        if let Ok(event) = envelope::parse(topic, payload, self.max_record_bytes) {
            self.router.learn(&event);
        }
    }

    /// What a snapshot showed, reported by the shard that fetched it; held
    /// reservations for its tables are dispatched now. Returns how many.
    ///
    /// Released frames are placed with `upcoming`, the record about to be
    /// handled, as if they were part of it: a position issued before it does
    /// not cover them, one issued after it does. Without one (a quiet turn)
    /// they have no position, and resume buffers do not reach back past them.
    pub fn learn_section(&mut self, learned: LearnedSection, upcoming: Option<Position>) -> usize {
        let dispatch = &self.dispatch;
        let stamp = Stamp { at: Instant::now(), position: upcoming };
        self.router.learn_section(learned, stamp, |section, delivery| dispatch.dispatch(section, delivery))
    }

    /// A partition was assigned, to be read from `start`.
    pub fn assigned(&mut self, partition: PartitionId, start: i64) {
        self.progress.assigned(partition, start);
        self.progress_moved = true;
    }

    /// Tells every shard how far the ingest has come, if that moved: at once
    /// when the turn was `quiet` (no record), else at most every
    /// [`PROGRESS_EVERY`].
    pub fn tell_progress(&mut self, quiet: bool) {
        let due = quiet || self.progress_told.is_none_or(|told| told.elapsed() >= PROGRESS_EVERY);
        if self.progress_moved && due {
            self.dispatch.progress(Arc::new(self.progress.clone()));
            self.progress_told = Some(Instant::now());
            self.progress_moved = false;
        }
    }

    /// Drops the reservations held too long for a table nobody showed;
    /// returns how many.
    pub fn expire_held(&mut self) -> usize {
        self.router.expire_held(Instant::now())
    }

    pub fn link_counts(&self) -> LinkCounts {
        self.router.link_counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::SectionId;
    use std::cell::RefCell;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";
    const TABLE: &str = "a1111111-1111-4111-8111-111111111111";
    const OBJECT: &str = "b1111111-1111-4111-8111-111111111111";
    const LINK: &str = "c1111111-1111-4111-8111-111111111111";
    const RESERVATION: &str = "d1111111-1111-4111-8111-111111111111";

    /// A dispatch port that records what reached which section, and what
    /// it was told was unseen.
    #[derive(Default)]
    struct Recorder {
        frames: RefCell<Vec<(SectionId, String)>>,
        unseen: RefCell<Vec<Unseen>>,
    }

    impl Dispatch for &Recorder {
        fn dispatch(&self, section: SectionId, delivery: Arc<Delivery>) {
            let frame: serde_json::Value = serde_json::from_slice(delivery.frames.full().utf8_bytes()).unwrap();
            self.frames.borrow_mut().push((section, frame["event"].as_str().unwrap().to_string()));
        }

        fn record_done(&self, _next: Position) {}

        fn progress(&self, _progress: Arc<Progress>) {}

        fn unseen(&self, unseen: &Unseen) {
            self.unseen.borrow_mut().push(unseen.clone());
        }
    }

    /// A record at offset 0 of partition 0.
    fn record<'a>(topic: &'a str, payload: &'a [u8]) -> Record<'a> {
        Record { topic, partition: 0, offset: 0, payload }
    }

    impl Recorder {
        fn take(&self) -> Vec<(SectionId, String)> {
            self.frames.take()
        }
    }

    fn section(id: &str) -> SectionId {
        SectionId::parse(id).unwrap()
    }

    fn v2(event_type: &str, data: serde_json::Value) -> Vec<u8> {
        serde_json::json!({"event_type": event_type, "data": data}).to_string().into_bytes()
    }

    #[test]
    fn a_table_event_reaches_its_section_once() {
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 1 << 20, EventRouter::default());
        let payload = v2("updated", serde_json::json!({"id": TABLE, "sectionId": S1}));
        assert_eq!(ingest.handle(record("mesa-ya.tables.events", &payload)), Ok(1));
        assert_eq!(recorder.take(), vec![(section(S1), "table.updated".to_string())]);
    }

    #[test]
    fn malformed_and_unroutable_records_are_skipped_with_their_reason() {
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 128, EventRouter::default());
        let skipped =
            |ingest: &mut Ingest<&Recorder>, topic, payload: &[u8]| ingest.handle(record(topic, payload)).unwrap_err();
        assert_eq!(skipped(&mut ingest, "mesa-ya.tables.events", b"{nope").label(), "not_json");
        assert_eq!(skipped(&mut ingest, "mesa-ya.tables.events", &[b' '; 129]).label(), "too_large");
        assert_eq!(skipped(&mut ingest, "other.topic", b"{}").label(), "unknown_topic");
        let bad = v2("created", serde_json::json!({"id": "r1", "tableId": TABLE}));
        assert_eq!(skipped(&mut ingest, "mesa-ya.reservations.events", &bad).label(), "bad_id");
        let sectionless = v2("updated", serde_json::json!({"id": TABLE}));
        assert_eq!(skipped(&mut ingest, "mesa-ya.tables.events", &sectionless), Skip::NoSection);
        assert!(recorder.take().is_empty(), "nothing skipped was dispatched");
    }

    #[test]
    fn snapshots_release_held_reservations_and_replayed_links_route_objects() {
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 1 << 20, EventRouter::default());

        let reservation = v2("created", serde_json::json!({"id": RESERVATION, "tableId": TABLE}));
        assert_eq!(
            ingest.handle(record("mesa-ya.reservations.events", &reservation)),
            Ok(0),
            "held: the table is unknown"
        );
        let learned = LearnedSection { section: section(S1), restaurant: None, table_ids: vec![TABLE.into()] };
        assert_eq!(ingest.learn_section(learned, None), 1, "released by the snapshot that shows the table");

        ingest.rebuild(
            "mesa-ya.section-objects.events",
            &v2("created", serde_json::json!({"id": LINK, "sectionId": S2, "objectId": OBJECT})),
        );
        assert_eq!(ingest.link_counts().section_objects, 1);
        let object = v2("updated", serde_json::json!({"id": OBJECT, "posX": 2}));
        assert_eq!(ingest.handle(record("mesa-ya.objects.events", &object)), Ok(1));
        assert_eq!(
            recorder.take(),
            vec![(section(S1), "reservation.created".to_string()), (section(S2), "object.updated".to_string())],
            "the buffer itself dispatched nothing"
        );
    }

    /// What another instance may route where this one cannot is told to
    /// the shards as unseen, with the restaurant it names: a held
    /// reservation, a restaurant event for sections unknown here. Nothing
    /// else is.
    #[test]
    fn records_another_instance_may_route_are_told_unseen() {
        const RESTAURANT: &str = "e1111111-1111-4111-8111-111111111111";
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 1 << 20, EventRouter::default());
        let restaurant = Some(EntityId::from(RESTAURANT));
        let held = v2("created", serde_json::json!({"id": RESERVATION, "tableId": TABLE, "restaurantId": RESTAURANT}));
        ingest.handle(Record { offset: 7, ..record("mesa-ya.reservations.events", &held) }).unwrap();
        let updated = v2("updated", serde_json::json!({"id": RESTAURANT}));
        ingest.handle(Record { offset: 8, ..record("mesa-ya.restaurants.events", &updated) }).unwrap_err();
        let created = v2("created", serde_json::json!({"id": RESTAURANT}));
        ingest.handle(Record { offset: 9, ..record("mesa-ya.restaurants.events", &created) }).unwrap_err();
        let table = v2("updated", serde_json::json!({"id": TABLE}));
        ingest.handle(Record { offset: 10, ..record("mesa-ya.tables.events", &table) }).unwrap_err();
        let offsets: Vec<(i64, Option<EntityId>)> =
            recorder.unseen.take().into_iter().map(|unseen| (unseen.position.offset, unseen.restaurant)).collect();
        assert_eq!(
            offsets,
            vec![(7, restaurant.clone()), (8, restaurant)],
            "a new restaurant has no sections anywhere"
        );

        let learned = LearnedSection { section: section(S1), restaurant: None, table_ids: vec![TABLE.into()] };
        ingest.learn_section(learned, None);
        ingest.handle(record("mesa-ya.reservations.events", &held)).unwrap();
        assert!(recorder.unseen.take().is_empty(), "routed here: seen");
    }
}
