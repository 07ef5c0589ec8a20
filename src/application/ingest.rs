//! The ingest use case: one Kafka record in, its frame dispatched to the
//! shard of every section it concerns. Runs on the single ingest thread,
//! which owns the router outright; the Kafka adapter only reads records and
//! calls [`Ingest::handle`].

use std::sync::Arc;
use std::time::Instant;

use crate::domain::envelope::{self, Rejection};

use super::delivery::Delivery;
use super::floor::SharedFloor;
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
}

impl<D: Dispatch> Ingest<D> {
    /// `floor` is written here and read by the shards' snapshots.
    pub fn new(dispatch: D, max_record_bytes: usize, floor: SharedFloor) -> Self {
        Self { router: EventRouter::new(floor), dispatch, max_record_bytes }
    }

    /// Parses, routes and dispatches one record. Returns how many sections
    /// it reached: none for an object nothing links yet (it is kept for
    /// later links and snapshots) or a reservation held until its table is
    /// known.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> Result<usize, Skip> {
        let event = envelope::parse(topic, payload, self.max_record_bytes).map_err(Skip::Rejected)?;
        let dispatch = &self.dispatch;
        self.router
            .route(event, Instant::now(), |section, delivery: Arc<Delivery>| dispatch.dispatch(section, delivery))
            .map_err(|_| Skip::NoSection)
    }

    /// Takes in what a record says about the maps without dispatching it:
    /// the start-up rebuild replays retained records through this, so that a
    /// restart forgets no table, link or object made before it.
    pub fn replay(&mut self, topic: &str, payload: &[u8]) {
        if let Ok(event) = envelope::parse(topic, payload, self.max_record_bytes) {
            self.router.learn(&event);
        }
    }

    /// What a snapshot showed, reported by the shard that fetched it; held
    /// reservations for its tables are dispatched now. Returns how many.
    pub fn learn_section(&mut self, learned: LearnedSection) -> usize {
        let dispatch = &self.dispatch;
        self.router.learn_section(learned, Instant::now(), |section, delivery| dispatch.dispatch(section, delivery))
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

    /// A dispatch port that records what reached which section.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<(SectionId, String)>>);

    impl Dispatch for &Recorder {
        fn dispatch(&self, section: SectionId, delivery: Arc<Delivery>) {
            let frame: serde_json::Value = serde_json::from_slice(delivery.frame.utf8_bytes()).unwrap();
            self.0.borrow_mut().push((section, frame["event"].as_str().unwrap().to_string()));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(SectionId, String)> {
            self.0.take()
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
        let mut ingest = Ingest::new(&recorder, 1 << 20, SharedFloor::default());
        let record = v2("updated", serde_json::json!({"id": TABLE, "sectionId": S1}));
        assert_eq!(ingest.handle("mesa-ya.tables.events", &record), Ok(1));
        assert_eq!(recorder.take(), vec![(section(S1), "table.updated".to_string())]);
    }

    #[test]
    fn malformed_and_unroutable_records_are_skipped_with_their_reason() {
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 128, SharedFloor::default());
        let skipped =
            |ingest: &mut Ingest<&Recorder>, topic, payload: &[u8]| ingest.handle(topic, payload).unwrap_err();
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
        let mut ingest = Ingest::new(&recorder, 1 << 20, SharedFloor::default());

        let reservation = v2("created", serde_json::json!({"id": RESERVATION, "tableId": TABLE}));
        assert_eq!(ingest.handle("mesa-ya.reservations.events", &reservation), Ok(0), "held: the table is unknown");
        let learned = LearnedSection { section: section(S1), restaurant: None, table_ids: vec![TABLE.into()] };
        assert_eq!(ingest.learn_section(learned), 1, "released by the snapshot that shows the table");

        ingest.replay(
            "mesa-ya.section-objects.events",
            &v2("created", serde_json::json!({"id": LINK, "sectionId": S2, "objectId": OBJECT})),
        );
        assert_eq!(ingest.link_counts().section_objects, 1);
        let object = v2("updated", serde_json::json!({"id": OBJECT, "posX": 2}));
        assert_eq!(ingest.handle("mesa-ya.objects.events", &object), Ok(1));
        assert_eq!(
            recorder.take(),
            vec![(section(S1), "reservation.created".to_string()), (section(S2), "object.updated".to_string())],
            "the replay itself dispatched nothing"
        );
    }
}
