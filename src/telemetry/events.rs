//! Internal events: one struct per thing worth both logging and counting, so
//! the log line and the metric can never drift apart. The outcome of a use
//! case is told next to its type, in `application` (`SnapshotFetched` in
//! `connect.rs`, `TokenRefreshed` in `refresh.rs`, `ResumeAttempted` in
//! `resume.rs`), so that telemetry needs no application type; every other
//! event is bumped from this file.

use crate::domain::protocol::CloseCode;

use super::METRICS;
use super::logs::LogBudget;

/// A Kafka record that was consumed but reached no client.
pub struct RecordSkipped<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'static str,
}

impl RecordSkipped<'_> {
    pub fn emit(self) {
        METRICS.events_dropped.with_label_values(&[self.reason]).inc();
        tracing::debug!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            "record skipped"
        );
    }
}

/// An upgrade answered with an HTTP error instead of a WebSocket.
pub struct UpgradeRefused<'a> {
    pub status: u16,
    pub why: &'a str,
    /// Which kind of path it came on; never the path itself, which may hold
    /// a token.
    pub route: &'static str,
}

/// Refused upgrades are logged a few times a second per status: anyone can
/// send bad requests, and a log flood would cost every client.
static REFUSALS_LOGGED: LogBudget = LogBudget::new();

impl UpgradeRefused<'_> {
    pub fn emit(self) {
        METRICS.upgrades_refused.with_label_values(&[&self.status.to_string()]).inc();
        if REFUSALS_LOGGED.allow(self.budget_kind()) {
            tracing::info!(status = self.status, why = self.why, route = self.route, "upgrade refused");
        }
    }

    fn budget_kind(&self) -> usize {
        match self.status {
            400 => 0,
            401 => 1,
            403 => 2,
            404 => 3,
            426 => 4,
            429 => 5,
            503 => 6,
            _ => 7,
        }
    }
}

/// A connection closed before its upgrade to keep the connections not
/// upgraded bounded (SPEC §1.1).
#[derive(Clone, Copy, Debug)]
pub enum PendingClosed {
    /// The longest-idle one, at `HTTP_MAX_PENDING`, to make room.
    Evicted,
    /// Its client address held `HTTP_MAX_PENDING_PER_IP` already: closed
    /// unanswered.
    ClientFull,
    /// Its request head had too many header lines or bytes: answered 431.
    HeadersTooLarge,
}

impl PendingClosed {
    pub fn emit(self) {
        match self {
            Self::Evicted => METRICS.http_pending_evicted.inc(),
            Self::ClientFull => METRICS.http_pending_refused.with_label_values(&["per_ip"]).inc(),
            Self::HeadersTooLarge => METRICS.http_pending_refused.with_label_values(&["headers_too_large"]).inc(),
        }
        // A flood makes one of these per connection: not for the default level.
        tracing::debug!(why = ?self, "connection closed before its upgrade");
    }
}

/// The server closed a client with a close frame.
pub struct SessionClosed {
    pub code: CloseCode,
}

impl SessionClosed {
    pub fn emit(self) {
        if self.code == CloseCode::SLOW_CONSUMER {
            METRICS.slow_consumer_closes.inc();
        }
        tracing::info!(close = self.code.code, reason = self.code.reason, "session closed");
    }
}

/// A client that asked for positions gets none: the instance consumes more
/// partitions than a token can name.
pub struct PositionsWithheld;

impl PositionsWithheld {
    pub fn emit(self) {
        METRICS.positions_withheld.inc();
        tracing::debug!("no section.position: more partitions than a resume token can name");
    }
}

/// Reservations held for a table that no snapshot or table event showed in
/// time.
pub struct ReservationsExpired {
    pub count: usize,
}

impl ReservationsExpired {
    pub fn emit(self) {
        if self.count > 0 {
            METRICS.events_dropped.with_label_values(&["held_expired"]).inc_by(self.count as u64);
            tracing::debug!(count = self.count, "held reservations expired: their tables never showed up");
        }
    }
}
