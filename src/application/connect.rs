//! The connect use case: a client on its section, from registration to live.
//!
//! 1. [`register`]: the client's outbox joins its section's subscribers
//!    *before* the snapshot call starts, so every event routed from then on
//!    is held for it.
//! 2. [`fetch_snapshot`]: the connection's one REST call, with the client's
//!    own token, through the [`SnapshotSource`] port. A snapshot reports its
//!    tables (reservations for them become routable), then ends the holding
//!    phase: the snapshot frame goes first, followed by the held events it
//!    does not already cover. A failed call asks for the close code that
//!    tells the client why.
//!
//! The writer (transport) then sends whatever the outbox holds.

use std::future::Future;
use std::rc::Rc;

use tokio::time::Instant;

use crate::domain::ids::SectionId;
use crate::domain::protocol::CloseCode;
use crate::telemetry::events::SnapshotFetched;

use super::hub::SectionHub;
use super::outbox::{Outbox, QueueLimits};
use super::ports::{SnapshotError, SnapshotSource, TableReporter};

/// Subscribes a new client to its section and returns its outbox, holding.
pub fn register(hub: &mut SectionHub, section: SectionId, limits: QueueLimits) -> Rc<Outbox> {
    let outbox = Rc::new(Outbox::new(limits));
    hub.subscribe(section, Rc::clone(&outbox));
    outbox
}

/// How a connection's snapshot phase ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Connected {
    /// The snapshot frame is queued first; this many held events were
    /// dropped because the snapshot already had them.
    Live { skipped: usize },
    /// The API refused or failed; the client is closed with its code.
    Refused(SnapshotError),
    /// `interrupted` resolved first (shutdown); the client is closed with 1001.
    Interrupted,
}

/// Runs the snapshot call for a registered client and leaves its outbox
/// either live or closing. `interrupted` abandons the call when it resolves.
pub async fn fetch_snapshot<S: SnapshotSource, R: TableReporter>(
    snapshots: &S,
    tables: &R,
    outbox: &Outbox,
    section: SectionId,
    token: &str,
    interrupted: impl Future<Output = ()>,
) -> Connected {
    let started = Instant::now();
    let fetched = tokio::select! {
        fetched = snapshots.fetch(section, token) => Some(fetched),
        () = interrupted => None,
    };
    SnapshotFetched { outcome: &fetched, elapsed: started.elapsed() }.emit();
    match fetched {
        Some(Ok(snapshot)) => {
            // Before the snapshot frame can reach the client: a reservation
            // for one of these tables, consumed after the client saw the
            // table, must find its section.
            tables.report(section, snapshot.table_ids.clone());
            Connected::Live { skipped: outbox.go_live(&snapshot) }
        }
        Some(Err(error)) => {
            outbox.request_close(error.close_code(), false);
            Connected::Refused(error)
        }
        None => {
            outbox.request_close(CloseCode::GOING_AWAY, false);
            Connected::Interrupted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::application::delivery::Delivery;
    use crate::domain::entity::{Action, EntityKey, EntityKind};
    use crate::domain::frame::Frame;
    use crate::domain::ids::EntityId;
    use crate::domain::snapshot::Snapshot;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const BODY: &str = r#"{"data":{"id":"11111111-1111-4111-8111-111111111111","tables":[
        {"id":"t1","updatedAt":"2026-01-10T16:00:00.000Z"},{"id":"t2","updatedAt":"2026-01-10T16:00:00.000Z"}]}}"#;

    type Answer = fn() -> Result<Snapshot, SnapshotError>;

    /// A snapshot source that answers as told, after `delay`.
    struct FakeApi {
        answer: Answer,
        delay: Duration,
        calls: RefCell<Vec<String>>,
    }

    impl FakeApi {
        fn answering(answer: Answer) -> Self {
            Self { answer, delay: Duration::ZERO, calls: RefCell::default() }
        }
    }

    impl SnapshotSource for FakeApi {
        async fn fetch(&self, section: SectionId, token: &str) -> Result<Snapshot, SnapshotError> {
            self.calls.borrow_mut().push(format!("{section} {token}"));
            tokio::time::sleep(self.delay).await;
            (self.answer)()
        }
    }

    #[derive(Default)]
    struct RecordedTables(RefCell<Vec<(SectionId, Vec<EntityId>)>>);

    impl TableReporter for RecordedTables {
        fn report(&self, section: SectionId, table_ids: Vec<EntityId>) {
            self.0.borrow_mut().push((section, table_ids));
        }
    }

    fn section() -> SectionId {
        SectionId::parse(S1).unwrap()
    }

    fn held_update(table: &str, updated_at: &str) -> Arc<Delivery> {
        Arc::new(Delivery {
            frame: Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"id":"{table}"}}"#)),
            key: EntityKey::new(EntityKind::Table, table),
            action: Action::Updated,
            updated_at: crate::domain::timestamp::parse_millis(updated_at),
            ends_section: false,
            routed_at: std::time::Instant::now(),
        })
    }

    /// Registers a client on a fresh hub and runs its snapshot phase.
    async fn connect(api: &FakeApi, tables: &RecordedTables, held: &[Arc<Delivery>]) -> (Rc<Outbox>, Connected) {
        let mut hub = SectionHub::default();
        let outbox = register(&mut hub, section(), QueueLimits { max_frames: 16, max_bytes: 1 << 20 });
        for delivery in held {
            hub.fan_out(section(), delivery);
        }
        let interrupted = tokio::time::sleep(Duration::from_secs(30));
        let connected = fetch_snapshot(api, tables, &outbox, section(), "the-token", interrupted).await;
        (outbox, connected)
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_goes_first_reports_its_tables_and_drops_held_events_it_covers() {
        let api = FakeApi::answering(|| Ok(Snapshot::parse(BODY.as_bytes()).unwrap()));
        let tables = RecordedTables::default();
        let stale = held_update("t1", "2026-01-10T15:00:00.000Z");
        let fresh = held_update("t2", "2026-01-10T17:00:00.000Z");
        let (outbox, connected) = connect(&api, &tables, &[stale, Arc::clone(&fresh)]).await;

        assert_eq!(connected, Connected::Live { skipped: 1 });
        assert_eq!(*api.calls.borrow(), vec![format!("{S1} the-token")], "one call, with the client's token");
        assert_eq!(*tables.0.borrow(), vec![(section(), vec![EntityId::from("t1"), EntityId::from("t2")])]);
        let first = outbox.front().unwrap();
        assert!(first.utf8_bytes().starts_with(br#"{"event":"section.snapshot""#));
        outbox.pop_front();
        assert_eq!(outbox.front(), Some(fresh.frame.clone()));
        assert!(outbox.close_request().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn api_refusals_close_with_their_codes_and_report_nothing() {
        let cases: [(Answer, u16); 4] = [
            (|| Err(SnapshotError::NotFound), 4404),
            (|| Err(SnapshotError::RateLimited), 1013),
            (|| Err(SnapshotError::Forbidden), 4403),
            (|| Err(SnapshotError::Unparseable), 1014),
        ];
        for (answer, code) in cases {
            let api = FakeApi::answering(answer);
            let tables = RecordedTables::default();
            let (outbox, connected) = connect(&api, &tables, &[held_update("t1", "2026-01-10T17:00:00.000Z")]).await;
            assert!(matches!(connected, Connected::Refused(_)), "{connected:?}");
            assert_eq!(outbox.close_request().unwrap().code.code, code);
            assert_eq!(outbox.front(), None, "held events are never written to a refused client");
            assert!(tables.0.borrow().is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_api_is_abandoned_at_shutdown_with_1001() {
        let api = FakeApi { delay: Duration::from_secs(3600), ..FakeApi::answering(|| Err(SnapshotError::TimedOut)) };
        let tables = RecordedTables::default();
        let (outbox, connected) = connect(&api, &tables, &[]).await;
        assert_eq!(connected, Connected::Interrupted);
        assert_eq!(outbox.close_request().unwrap().code, CloseCode::GOING_AWAY);
    }
}
