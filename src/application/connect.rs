//! The connect use case: a client on its section, from registration to live.
//!
//! 1. [`register`]: the client's outbox joins its section's subscribers
//!    *before* the snapshot call starts, so every event routed from then on
//!    is held for it.
//! 2. [`fetch_snapshot`]: the connection's one REST call, with the client's
//!    own token, through the [`SnapshotSource`] port. A body without
//!    `objects` gets the section's objects as Kafka told them
//!    ([`FloorPlan`]). A snapshot reports its tables and restaurant
//!    (reservations and restaurant events for them become routable), then
//!    ends the holding phase: the snapshot frame goes first, followed by the
//!    held events it does not already cover, all as the client's audience
//!    sees them (staff if it owns the snapshot's restaurant, SPEC §2.7). For
//!    a client that negotiated compression the snapshot frame is compressed
//!    first, once per body on its shard ([`SnapshotDeflater`]). A failed
//!    call asks for the close code that tells the client why.
//!
//! The writer (transport) then sends whatever the outbox holds.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::audience::{UserId, Viewer};
use crate::domain::ids::SectionId;
use crate::domain::protocol::CloseCode;
use crate::telemetry::METRICS;

use super::compression::SnapshotDeflater;
use super::hub::SectionHub;
use crate::domain::limits::QueueLimits;

use super::outbox::Outbox;
use super::ports::{
    FloorPlan, LearnedSection, RestaurantOwners, SectionReporter, SnapshotError, SnapshotRequest, SnapshotSource,
};

/// A client's place among its section's subscribers. Dropping it leaves,
/// however the session ends (a panicking session included), so the hub
/// never keeps a dead client.
pub struct Registration {
    hub: Rc<RefCell<SectionHub>>,
    section: SectionId,
    outbox: Rc<Outbox>,
}

impl Registration {
    pub fn outbox(&self) -> &Rc<Outbox> {
        &self.outbox
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A panic while the hub was borrowed leaves it borrowed: panicking
        // again here would abort the whole shard.
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            hub.unsubscribe(self.section, &self.outbox);
        }
    }
}

/// Subscribes a new client of user `viewer` to its section, holding.
pub fn register(
    hub: &Rc<RefCell<SectionHub>>,
    section: SectionId,
    limits: QueueLimits,
    viewer: UserId,
) -> Registration {
    let outbox = Rc::new(Outbox::new(limits, viewer));
    hub.borrow_mut().subscribe(section, Rc::clone(&outbox));
    Registration { hub: Rc::clone(hub), section, outbox }
}

/// Why a snapshot call was abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// The server is shutting down: the client is told (1001).
    Shutdown,
    /// The client went away: nobody to tell, and its place among the calls
    /// in flight is freed at once.
    ClientGone,
}

/// How a connection's snapshot phase ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Connected {
    /// The snapshot frame is queued first; this many held events were
    /// dropped because the snapshot already had them.
    Live { skipped: usize },
    /// The API refused or failed; the client is closed with its code.
    Refused(SnapshotError),
    /// `interrupted` resolved first.
    Interrupted(Interruption),
}

/// What the snapshot phase reads and tells.
pub struct SnapshotPorts<'a, S, R, F, O> {
    pub snapshots: &'a S,
    pub reports: &'a R,
    pub floor: &'a F,
    pub owners: &'a O,
    /// The shard's snapshot compression, for a client that negotiated it.
    pub deflater: Option<&'a RefCell<SnapshotDeflater>>,
}

/// Runs the snapshot call for a registered client and leaves its outbox
/// either live or closing. `interrupted` abandons the call when it resolves.
pub async fn fetch_snapshot<S: SnapshotSource, R: SectionReporter, F: FloorPlan, O: RestaurantOwners>(
    ports: SnapshotPorts<'_, S, R, F, O>,
    outbox: &Outbox,
    request: SnapshotRequest<'_>,
    viewer: &Viewer,
    interrupted: impl Future<Output = Interruption>,
) -> Connected {
    let SnapshotPorts { snapshots, reports, floor, owners, deflater } = ports;
    let started = Instant::now();
    let fetched = tokio::select! {
        fetched = snapshots.fetch(request) => Ok(fetched),
        interruption = interrupted => Err(interruption),
    };
    let connected = match fetched {
        Ok(Ok(mut snapshot)) => {
            if snapshot.lacks_objects() {
                snapshot.add_objects(floor.section_objects(request.section));
            }
            if let Some(deflater) = deflater {
                snapshot.frame = deflater.borrow_mut().compress(request.section, snapshot.frame);
            }
            // Before the snapshot frame can reach the client: a reservation
            // for one of these tables, consumed after the client saw the
            // table, must find its section (and one held for them goes out).
            reports.report(LearnedSection {
                section: request.section,
                restaurant: snapshot.restaurant_id.clone(),
                table_ids: snapshot.table_ids.clone(),
            });
            let owner = owners.owner_of(request.section, snapshot.restaurant_id.as_ref());
            Connected::Live { skipped: outbox.go_live(&snapshot, viewer.audience(owner.as_ref())) }
        }
        Ok(Err(error)) => {
            outbox.close_now(error.close_code());
            Connected::Refused(error)
        }
        Err(interruption) => {
            if interruption == Interruption::Shutdown {
                outbox.close_now(CloseCode::GOING_AWAY);
            }
            Connected::Interrupted(interruption)
        }
    };
    SnapshotFetched { connected: &connected, elapsed: started.elapsed() }.emit();
    connected
}

/// The snapshot phase of a connection ended.
pub struct SnapshotFetched<'a> {
    pub connected: &'a Connected,
    pub elapsed: Duration,
}

impl SnapshotFetched<'_> {
    pub fn emit(self) {
        let label = match self.connected {
            Connected::Live { .. } => "ok",
            Connected::Refused(error) => error.label(),
            Connected::Interrupted(Interruption::Shutdown) => "cancelled",
            Connected::Interrupted(Interruption::ClientGone) => "client_gone",
        };
        METRICS.snapshot_outcomes.with_label_values(&[label]).inc();
        METRICS.snapshot_seconds.with_label_values(&[label]).observe(self.elapsed.as_secs_f64());
        match self.connected {
            Connected::Live { skipped } => {
                METRICS.handoff_skipped.inc_by(*skipped as u64);
                tracing::info!(elapsed = ?self.elapsed, skipped, "session live");
            }
            Connected::Refused(error) => {
                tracing::info!(%error, close = error.close_code().code, elapsed = ?self.elapsed, "snapshot failed")
            }
            Connected::Interrupted(why) => tracing::info!(elapsed = ?self.elapsed, ?why, "snapshot call abandoned"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::application::delivery::Delivery;
    use crate::domain::audience::Audience;
    use crate::domain::entity::{Action, EntityKey, EntityKind};
    use crate::domain::frame::Frame;
    use crate::domain::ids::EntityId;
    use crate::domain::snapshot::{SectionObjects, Snapshot};

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const T1: &str = "a1111111-1111-4111-8111-111111111111";
    const T2: &str = "a2222222-2222-4222-8222-222222222222";
    const RESTAURANT: &str = "e1111111-1111-4111-8111-111111111111";
    const BODY: &str = r#"{"data":{"id":"11111111-1111-4111-8111-111111111111","restaurantId":"e1111111-1111-4111-8111-111111111111","tables":[
        {"id":"a1111111-1111-4111-8111-111111111111","updatedAt":"2026-01-10T16:00:00.000Z"},{"id":"a2222222-2222-4222-8222-222222222222","updatedAt":"2026-01-10T16:00:00.000Z"}]}}"#;

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
        async fn fetch(&self, request: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
            let SnapshotRequest { section, token, client_addr, request_id } = request;
            self.calls.borrow_mut().push(format!("{section} {token} {client_addr} {request_id}"));
            tokio::time::sleep(self.delay).await;
            (self.answer)()
        }
    }

    #[derive(Default)]
    struct RecordedTables(RefCell<Vec<LearnedSection>>);

    impl SectionReporter for RecordedTables {
        fn report(&self, learned: LearnedSection) {
            self.0.borrow_mut().push(learned);
        }
    }

    /// One link, known from Kafka, in every section.
    struct OneLink;

    impl FloorPlan for OneLink {
        fn section_objects(&self, _section: SectionId) -> SectionObjects {
            SectionObjects { json: r#"[{"id":"so1","object":{"id":"o1"}}]"#.into(), versions: vec![] }
        }
    }

    /// Kafka told that `.0` owns [`RESTAURANT`], the snapshot's.
    struct Owner(Option<UserId>);

    impl RestaurantOwners for Owner {
        fn restaurant_of(&self, _section: SectionId) -> Option<EntityId> {
            Some(RESTAURANT.into())
        }

        fn owner_of(&self, _section: SectionId, restaurant: Option<&EntityId>) -> Option<UserId> {
            self.0.clone().filter(|_| restaurant.is_some_and(|restaurant| &**restaurant == RESTAURANT))
        }
    }

    fn section() -> SectionId {
        SectionId::parse(S1).unwrap()
    }

    const OWNER: &str = "0a111111-1111-4111-8111-111111111111";

    fn user() -> UserId {
        UserId::new(OWNER)
    }

    /// The user, with the role OWNER.
    fn owner_viewer() -> Viewer {
        Viewer { subject: user(), staff_role: false, owner_role: true }
    }

    /// Who connects, and whom Kafka told owns the snapshot's restaurant.
    struct Who {
        viewer: Viewer,
        owner: Option<UserId>,
    }

    impl Who {
        /// An owner of another restaurant than the snapshot's.
        fn stranger() -> Self {
            Self { viewer: owner_viewer(), owner: Some(UserId::new("0b222222-2222-4222-8222-222222222222")) }
        }
    }

    fn held_update(table: &str, updated_at: &str) -> Arc<Delivery> {
        Arc::new(Delivery {
            frames: Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"id":"{table}"}}"#)).into(),
            key: EntityKey::new(EntityKind::Table, table),
            action: Action::Updated,
            updated_at: crate::domain::timestamp::parse_millis(updated_at),
            ends_section: false,
            routed_at: std::time::Instant::now(),
            position: None,
        })
    }

    fn request() -> SnapshotRequest<'static> {
        SnapshotRequest {
            section: section(),
            token: "the-token",
            client_addr: "203.0.113.9".parse().unwrap(),
            request_id: "req-1",
        }
    }

    /// Registers a client on a fresh hub and runs its snapshot phase, which
    /// `interruption` ends after 30 s.
    async fn connect_until(
        api: &FakeApi,
        tables: &RecordedTables,
        held: &[Arc<Delivery>],
        interruption: Interruption,
    ) -> (Rc<Outbox>, Connected) {
        connect_as(Who::stranger(), api, tables, held, interruption).await
    }

    async fn connect_as(
        who: Who,
        api: &FakeApi,
        tables: &RecordedTables,
        held: &[Arc<Delivery>],
        interruption: Interruption,
    ) -> (Rc<Outbox>, Connected) {
        let Who { viewer, owner } = who;
        let hub = Rc::new(RefCell::new(SectionHub::default()));
        let registration = register(&hub, section(), QueueLimits { max_frames: 16, max_bytes: 1 << 20 }, user());
        for delivery in held {
            hub.borrow_mut().fan_out(section(), delivery);
        }
        let interrupted = async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            interruption
        };
        let outbox = registration.outbox();
        let ports =
            SnapshotPorts { snapshots: api, reports: tables, floor: &OneLink, owners: &Owner(owner), deflater: None };
        let connected = fetch_snapshot(ports, outbox, request(), &viewer, interrupted).await;
        (Rc::clone(outbox), connected)
    }

    async fn connect(api: &FakeApi, tables: &RecordedTables, held: &[Arc<Delivery>]) -> (Rc<Outbox>, Connected) {
        connect_until(api, tables, held, Interruption::Shutdown).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_goes_first_reports_its_tables_and_drops_held_events_it_covers() {
        let api = FakeApi::answering(|| Ok(Snapshot::parse(BODY.as_bytes()).unwrap()));
        let tables = RecordedTables::default();
        let stale = held_update(T1, "2026-01-10T15:00:00.000Z");
        let fresh = held_update(T2, "2026-01-10T17:00:00.000Z");
        let (outbox, connected) = connect(&api, &tables, &[stale, Arc::clone(&fresh)]).await;

        assert_eq!(connected, Connected::Live { skipped: 1 });
        assert_eq!(
            *api.calls.borrow(),
            vec![format!("{S1} the-token 203.0.113.9 req-1")],
            "one call, with the client's token, address and request id"
        );
        let learned = LearnedSection {
            section: section(),
            restaurant: Some(RESTAURANT.into()),
            table_ids: vec![EntityId::from(T1), EntityId::from(T2)],
        };
        assert_eq!(*tables.0.borrow(), vec![learned]);
        let first = outbox.front().unwrap();
        let frame: serde_json::Value = serde_json::from_slice(first.frame.utf8_bytes()).unwrap();
        assert_eq!(frame["event"], "section.snapshot");
        assert_eq!(
            frame["payload"]["objects"],
            serde_json::json!([{"id": "so1", "object": {"id": "o1"}}]),
            "added from Kafka"
        );
        outbox.pop_written(first.seq);
        assert_eq!(outbox.front().map(|next| next.frame), Some(fresh.frames.full().clone()));
        assert!(outbox.close_request().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_owner_of_the_snapshots_restaurant_goes_live_as_staff_and_others_as_public() {
        let api = FakeApi::answering(|| Ok(Snapshot::parse(BODY.as_bytes()).unwrap()));
        let tables = RecordedTables::default();
        let owner = Who { viewer: owner_viewer(), owner: Some(user()) };
        let (outbox, _) = connect_as(owner, &api, &tables, &[], Interruption::Shutdown).await;
        assert_eq!(outbox.audience(), Audience::Staff);
        let (outbox, _) = connect_as(Who::stranger(), &api, &tables, &[], Interruption::Shutdown).await;
        assert_eq!(outbox.audience(), Audience::Public { viewer: user() });
        let unknown = Who { viewer: owner_viewer(), owner: None };
        let (outbox, _) = connect_as(unknown, &api, &tables, &[], Interruption::Shutdown).await;
        assert_eq!(outbox.audience(), Audience::Public { viewer: user() }, "a restaurant nobody owns");
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
            let (outbox, connected) = connect(&api, &tables, &[held_update(T1, "2026-01-10T17:00:00.000Z")]).await;
            assert!(matches!(connected, Connected::Refused(_)), "{connected:?}");
            assert_eq!(outbox.close_request().unwrap().code.code, code);
            assert_eq!(outbox.front(), None, "held events are never written to a refused client");
            assert!(tables.0.borrow().is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_api_is_abandoned_at_shutdown_with_1001_and_silently_when_the_client_leaves() {
        let api = FakeApi { delay: Duration::from_secs(3600), ..FakeApi::answering(|| Err(SnapshotError::TimedOut)) };
        let tables = RecordedTables::default();
        let (outbox, connected) = connect(&api, &tables, &[]).await;
        assert_eq!(connected, Connected::Interrupted(Interruption::Shutdown));
        assert_eq!(outbox.close_request().unwrap().code, CloseCode::GOING_AWAY);

        let (outbox, connected) = connect_until(&api, &tables, &[], Interruption::ClientGone).await;
        assert_eq!(connected, Connected::Interrupted(Interruption::ClientGone));
        assert_eq!(outbox.close_request(), None, "nobody left to send a close frame to");
        assert_eq!(outbox.front(), None);
    }

    #[tokio::test]
    async fn a_session_that_panics_leaves_its_section() {
        let hub = Rc::new(RefCell::new(SectionHub::default()));
        let local = tokio::task::LocalSet::new();
        let session = local.spawn_local({
            let hub = Rc::clone(&hub);
            async move {
                let _registration =
                    register(&hub, section(), QueueLimits { max_frames: 4, max_bytes: 1 << 20 }, user());
                panic!("a bug in a session");
            }
        });
        local.await;
        assert!(session.await.unwrap_err().is_panic());
        assert_eq!(hub.borrow().subscribers(section()), 0);
    }
}
