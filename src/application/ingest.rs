//! The ingest use case: one Kafka record in, its frame dispatched to the
//! shard of every section it concerns. Runs on the single ingest thread,
//! which owns the router outright; the Kafka adapter only reads records and
//! calls [`Ingest::handle`].

use std::sync::Arc;

use crate::domain::envelope::{self, Rejection};

use super::delivery::Delivery;
use super::ports::Dispatch;
use super::router::{EventRouter, LearnedTables, LinkCounts};

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
    pub fn new(dispatch: D, max_record_bytes: usize) -> Self {
        Self { router: EventRouter::default(), dispatch, max_record_bytes }
    }

    /// Parses, routes and dispatches one record. Returns how many sections
    /// it reached.
    pub fn handle(&mut self, topic: &str, payload: &[u8]) -> Result<usize, Skip> {
        let event = envelope::parse(topic, payload, self.max_record_bytes).map_err(Skip::Rejected)?;
        let dispatch = &self.dispatch;
        self.router
            .route(event, |section, delivery: Arc<Delivery>| dispatch.dispatch(section, delivery))
            .map_err(|_| Skip::NoSection)
    }

    /// Learns the links a record implies without dispatching it: the start-up
    /// rebuild replays retained records through this, so that a restart
    /// forgets no link made before it.
    pub fn replay(&mut self, topic: &str, payload: &[u8]) {
        if let Ok(event) = envelope::parse(topic, payload, self.max_record_bytes) {
            self.router.learn_links(&event);
        }
    }

    /// Tables a snapshot showed, reported by the shard that fetched it.
    pub fn learn_tables(&mut self, learned: LearnedTables) {
        self.router.learn_tables(learned);
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
        let mut ingest = Ingest::new(&recorder, 1 << 20);
        let record = v2("updated", serde_json::json!({"id": "t1", "sectionId": S1}));
        assert_eq!(ingest.handle("mesa-ya.tables.events", &record), Ok(1));
        assert_eq!(recorder.take(), vec![(section(S1), "table.updated".to_string())]);
    }

    #[test]
    fn malformed_and_unroutable_records_are_skipped_with_their_reason() {
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 64);
        let skipped =
            |ingest: &mut Ingest<&Recorder>, topic, payload: &[u8]| ingest.handle(topic, payload).unwrap_err();
        assert_eq!(skipped(&mut ingest, "mesa-ya.tables.events", b"{nope").label(), "not_json");
        assert_eq!(skipped(&mut ingest, "mesa-ya.tables.events", &[b' '; 65]).label(), "too_large");
        assert_eq!(skipped(&mut ingest, "other.topic", b"{}").label(), "unknown_topic");
        let orphan = v2("created", serde_json::json!({"id": "r1", "tableId": "t9"}));
        assert_eq!(skipped(&mut ingest, "mesa-ya.reservations.events", &orphan), Skip::NoSection);
        assert!(recorder.take().is_empty(), "nothing skipped was dispatched");
    }

    #[test]
    fn learned_tables_route_reservations_and_replayed_links_route_objects() {
        let recorder = Recorder::default();
        let mut ingest = Ingest::new(&recorder, 1 << 20);

        ingest.learn_tables(LearnedTables { section: section(S1), table_ids: vec!["t1".into()] });
        let reservation = v2("created", serde_json::json!({"id": "r1", "tableId": "t1"}));
        assert_eq!(ingest.handle("mesa-ya.reservations.events", &reservation), Ok(1));

        ingest.replay(
            "mesa-ya.section-objects.events",
            &v2("created", serde_json::json!({"id": "so1", "sectionId": S2, "objectId": "o1"})),
        );
        assert_eq!(ingest.link_counts().section_objects, 1);
        let object = v2("updated", serde_json::json!({"id": "o1", "posX": 2}));
        assert_eq!(ingest.handle("mesa-ya.objects.events", &object), Ok(1));
        assert_eq!(
            recorder.take(),
            vec![(section(S1), "reservation.created".to_string()), (section(S2), "object.updated".to_string())],
            "the replay itself dispatched nothing"
        );
    }
}
