//! The events the harness publishes, as Kafka records and as the raw writer's frames.

use super::*;

// ---------------------------------------------------------------------------------------------
// Events: the same bytes for Kafka (a v2 `table.updated` or `reservation.updated` record) and for
// the raw writer (the WebSocket text frame the gateway makes of it)

/// What the harness publishes (`LOAD_EVENT`).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum EventKind {
    /// `table.updated` on `mesa-ya.tables.events`: one frame for everyone.
    Table,
    /// `reservation.updated` on `mesa-ya.reservations.events`: a full frame for staff and a
    /// public one cut to `WS_PUBLIC_RESERVATION_FIELDS` (SPEC §2.7).
    Reservation,
}

impl EventKind {
    pub(crate) fn from_setting() -> Self {
        match std::env::var("LOAD_EVENT").unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "" | "table" => EventKind::Table,
            "reservation" => EventKind::Reservation,
            other => panic!("LOAD_EVENT={other}: expected table or reservation"),
        }
    }

    pub(crate) fn topic(self) -> &'static str {
        match self {
            EventKind::Table => "mesa-ya.tables.events",
            EventKind::Reservation => "mesa-ya.reservations.events",
        }
    }

    /// The event of the frames the gateway sends.
    pub(crate) fn event(self) -> &'static str {
        match self {
            EventKind::Table => "table.updated",
            EventKind::Reservation => "reservation.updated",
        }
    }

    /// The fourth group of the entities' UUIDs (the snapshot's tables have `9…`).
    pub(crate) fn id_group(self) -> char {
        match self {
            EventKind::Table => '8',
            EventKind::Reservation => 'a',
        }
    }
}

/// The id of snapshot table `k` of section `section` (what the stand-in API serves).
pub(crate) fn snapshot_table_id(section: usize, k: u64) -> String {
    format!("00000000-0000-4000-9{section:03x}-{k:012x}")
}

/// `WS_PUBLIC_RESERVATION_FIELDS` in the reservation mode: the gateway's default, and the
/// harness's `loadSeq` and `loadSent`, so that public clients can check their sequence and
/// measure latency. The padding (`notes`) stays private, so the cut really shrinks the frame.
pub(crate) fn public_reservation_fields() -> String {
    format!("{DEFAULT_PUBLIC_RESERVATION_FIELDS},loadSeq,loadSent")
}

pub(crate) struct Events {
    pub(crate) kind: EventKind,
    pub(crate) sections: Vec<String>,
    /// Tables in each section's snapshot: a reservation's `tableId` is one of them, so it routes
    /// at once.
    pub(crate) snapshot_tables: u64,
    pub(crate) padding: String,
    pub(crate) epoch: Instant,
}

impl Events {
    pub(crate) fn new(
        kind: EventKind,
        sections: Vec<String>,
        snapshot_tables: usize,
        event_bytes: usize,
        epoch: Instant,
    ) -> Self {
        assert!(
            kind == EventKind::Table || snapshot_tables > 0,
            "LOAD_EVENT=reservation needs LOAD_SNAPSHOT_TABLES ≥ 1: a reservation routes by its table"
        );
        let snapshot_tables = snapshot_tables as u64;
        let mut events = Self { kind, sections, snapshot_tables, padding: String::new(), epoch };
        let base = events.record(0, 0, 0).len();
        events.padding = "x".repeat(event_bytes.saturating_sub(base));
        events
    }

    /// The id of the entity of event `seq` of `section`: one of [`ENTITIES_PER_SECTION`].
    pub(crate) fn entity_id(&self, section: usize, seq: u64) -> String {
        format!("00000000-0000-4000-{}{section:03x}-{:012x}", self.kind.id_group(), seq % ENTITIES_PER_SECTION)
    }

    pub(crate) fn data(&self, section: usize, seq: u64, sent_us: u64) -> String {
        let id = self.entity_id(section, seq);
        // A new `updatedAt` for every event of a section, so none is taken for an older copy.
        let secs = seq / 1000;
        let updated =
            format!("2026-01-10T{:02}:{:02}:{:02}.{:03}Z", 16 + secs / 3600 % 8, secs / 60 % 60, secs % 60, seq % 1000);
        let fields = match self.kind {
            EventKind::Table => format!(
                concat!(
                    r#""sectionId":"{section_id}","number":1,"capacity":4,"posX":10,"posY":10,"width":2,"height":2,"#,
                    r#""tableImageId":"0f7d2c8e-1111-4a2b-9c3d-4e5f60718293","#,
                    r#""chairImageId":"6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b","status":"AVAILABLE","isAvailable":true"#
                ),
                section_id = self.sections[section],
            ),
            EventKind::Reservation => format!(
                concat!(
                    r#""restaurantId":"{restaurant}","userId":"{diner}","userName":"María José Andrade","#,
                    r#""userEmail":"maria.andrade@example.com","tableId":"{table}","reservationDate":"2026-01-15","#,
                    r#""reservationTime":"2026-01-15T19:30:00.000Z","numberOfGuests":4,"status":"CONFIRMED""#
                ),
                restaurant = fixtures::RESTAURANT_ID,
                diner = DINER,
                table = snapshot_table_id(section, seq % self.snapshot_tables),
            ),
        };
        format!(
            concat!(
                r#"{{"loadSeq":{seq},"loadSent":{sent},"id":"{id}",{fields},"#,
                r#""createdAt":"2026-01-10T15:04:05.101Z","updatedAt":"{updated}","notes":"{padding}"}}"#
            ),
            seq = seq,
            sent = sent_us,
            id = id,
            fields = fields,
            updated = updated,
            padding = self.padding,
        )
    }

    pub(crate) fn record(&self, section: usize, seq: u64, sent_us: u64) -> String {
        let data = self.data(section, seq, sent_us);
        let id = self.entity_id(section, seq);
        format!(r#"{{"timestamp":"2026-01-10T16:00:00.500Z","event_type":"updated","entity_id":"{id}","data":{data}}}"#)
    }

    /// The text of the gateway's frame for this event: the full one (staff's).
    pub(crate) fn frame_text(&self, payload: &str) -> String {
        format!(r#"{{"event":"{}","payload":{payload}}}"#, self.kind.event())
    }

    /// The gateway's frame for this event, WebSocket-framed.
    pub(crate) fn frame(&self, section: usize, seq: u64, sent_us: u64) -> Vec<u8> {
        text_frame(&[self.frame_text(&self.data(section, seq, sent_us)).as_bytes()])
    }

    /// Bytes of a record, of the full frame's text and of the public frame's text, the latter
    /// cut as the gateway cuts it (the same for reservations only).
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        let data = self.data(0, 0, 0);
        let public = match self.kind {
            EventKind::Table => data.clone(),
            EventKind::Reservation => {
                PublicFields::parse(&public_reservation_fields()).cut(&data).unwrap_or(data.clone())
            }
        };
        (self.record(0, 0, 0).len(), self.frame_text(&data).len(), self.frame_text(&public).len())
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// One WebSocket text frame (a server's: not masked) whose payload is `parts` one after the other.
pub(crate) fn text_frame(parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut frame = Vec::with_capacity(len + 10);
    frame.push(0x81);
    match len {
        n if n < 126 => frame.push(n as u8),
        n if n <= 0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

/// `count` section ids spread evenly over the gateway's `shards`.
pub(crate) fn balanced_sections(count: usize, shards: usize) -> Vec<String> {
    let mut sections = Vec::new();
    while sections.len() < count {
        let want = sections.len() % shards;
        let id = uuid::Uuid::new_v4().to_string();
        if SectionId::parse(&id).expect("a UUID").shard(shards) == want {
            sections.push(id);
        }
    }
    sections
}
