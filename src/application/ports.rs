//! What the use cases need from the outside world.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use crate::domain::access::Claims;
use crate::domain::audience::UserId;
use crate::domain::ids::{EntityId, SectionId};
use crate::domain::position::{Position, Positions, Progress};
use crate::domain::protocol::CloseCode;
use crate::domain::snapshot::{SectionObjects, Snapshot};

use super::delivery::{Delivery, Unseen};

/// Verifies a bearer token's signature and registered claims.
pub trait TokenVerifier: Send + Sync {
    fn verify(&self, token: &str) -> Result<Claims, InvalidToken>;
}

/// Why a token was refused; the text goes to logs (never the token itself).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid token: {reason}")]
pub struct InvalidToken {
    pub reason: String,
    /// It was good but its `exp` has passed (an in-band refresh tells the
    /// client so).
    pub expired: bool,
}

impl InvalidToken {
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), expired: false }
    }

    pub fn expired() -> Self {
        Self { reason: "expired".into(), expired: true }
    }
}

/// Fetches a section's full state with the client's own token. Called once
/// per connection, on the shard that owns the section; dropping the future
/// abandons the call.
pub trait SnapshotSource {
    fn fetch(&self, request: SnapshotRequest<'_>) -> impl Future<Output = Result<Snapshot, SnapshotError>>;
}

/// The header that names a client's address: read from trusted proxies at
/// the upgrade, and sent to the API with the snapshot call.
pub static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// One connection's snapshot call.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotRequest<'a> {
    pub section: SectionId,
    /// The client's own token: the API has the last word on the section.
    pub token: &'a str,
    /// The client's address, so that the API's per-client rate limits see
    /// the client and not this gateway: sent as [`X_FORWARDED_FOR`].
    pub client_addr: IpAddr,
    /// Unique per session; the session's log lines carry it too.
    pub request_id: &'a str,
}

/// Every way the snapshot call can fail, each with the close code the client
/// gets for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("API answered 429")]
    RateLimited,
    #[error("API answered 401")]
    Unauthorized,
    #[error("API answered 403")]
    Forbidden,
    #[error("API answered 404")]
    NotFound,
    #[error("API answered {0}")]
    Rejected(u16),
    #[error("API answered {0}")]
    ServerError(u16),
    #[error("API timed out")]
    TimedOut,
    #[error("API unreachable: {0}")]
    Unreachable(String),
    #[error("API body unparseable")]
    Unparseable,
}

impl SnapshotError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::RateLimited => CloseCode::TRY_AGAIN_LATER,
            Self::Unauthorized => CloseCode::UNAUTHORIZED,
            Self::Forbidden => CloseCode::FORBIDDEN,
            Self::NotFound => CloseCode::NOT_FOUND,
            Self::Rejected(_) => CloseCode::API_REJECTED,
            Self::ServerError(_) | Self::TimedOut | Self::Unreachable(_) | Self::Unparseable => CloseCode::BAD_GATEWAY,
        }
    }

    /// Metric label of the outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Rejected(_) => "rejected",
            Self::ServerError(_) => "server_error",
            Self::TimedOut => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Unparseable => "unparseable",
        }
    }
}

/// Where routed events go: the shard that owns each section. Called on the
/// ingest thread, once per (event, section), and in the same order as the
/// records: the shards learn how far the ingest has come from the same
/// queues that bring them the frames, so a position they know never runs
/// ahead of the frames they hold.
pub trait Dispatch {
    fn dispatch(&self, section: SectionId, delivery: Arc<Delivery>);
    /// Every frame of the record before `next` was dispatched: told to the
    /// shards that got some of them since the last call.
    fn record_done(&self, next: Position);
    /// Where the ingest stands on every partition, told to every shard.
    fn progress(&self, progress: Arc<Progress>);
    /// A record this instance could not route, told to every shard before
    /// the record is done.
    fn unseen(&self, unseen: &Unseen);
}

/// Where a fetched snapshot reports what it showed of its section (its
/// tables, its restaurant), so that the ingest use case can route
/// reservations and restaurant events there. Called on a shard thread.
pub trait SectionReporter {
    fn report(&self, learned: LearnedSection);
}

/// What a snapshot showed about its section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnedSection {
    pub section: SectionId,
    pub restaurant: Option<EntityId>,
    pub table_ids: Vec<EntityId>,
}

/// A section's objects as Kafka told them, for snapshots whose API body has
/// none.
pub trait FloorPlan {
    fn section_objects(&self, section: SectionId) -> SectionObjects;
}

/// A section's restaurant and who owns it, as Kafka told them: that owner
/// is staff of the section (SPEC §2.7).
pub trait RestaurantOwners {
    fn restaurant_of(&self, section: SectionId) -> Option<EntityId>;

    /// `restaurant` is the section's restaurant when the caller knows it (a
    /// snapshot names it); otherwise the one Kafka told.
    fn owner_of(&self, section: SectionId, restaurant: Option<&EntityId>) -> Option<UserId>;
}

/// Signs and reads resume tokens: a section's Kafka positions, bound to the
/// section and the user, with the time they were issued.
pub trait ResumeTokens {
    /// Refuses what would make a token longer than [`ResumeTokens::open`]
    /// reads.
    fn issue(&self, grant: &ResumeGrant<'_>) -> Result<String, TooManyPartitions>;
    /// What a token says, if this secret signed it; `sub` is the resuming
    /// user, compared with the one it was issued to.
    fn open(&self, token: &str, sub: &str) -> Result<OpenedToken, InvalidResumeToken>;
}

/// What a resume token is issued for.
#[derive(Clone, Copy, Debug)]
pub struct ResumeGrant<'a> {
    pub section: SectionId,
    pub sub: &'a str,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    /// When the snapshot that began this chain of resumes was fetched
    /// (seconds since the Unix epoch): the API was last asked then.
    pub chain_started: u64,
    pub positions: &'a Positions,
}

/// The instance consumes more partitions than one token can name.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyPartitions;

/// A token whose signature holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedToken {
    pub section: SectionId,
    /// Issued to the user who presents it.
    pub same_sub: bool,
    pub issued_at: u64,
    pub chain_started: u64,
    pub positions: Positions,
}

/// Not a token this secret signed (or not a token at all).
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidResumeToken;
