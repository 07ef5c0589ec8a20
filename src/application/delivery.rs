//! A routed event, ready to be written: the unit that travels from the ingest
//! thread to a shard and sits in client queues.

use std::time::Instant;

use crate::domain::audience::{Audience, Variants};
use crate::domain::entity::{Action, EntityKey};
use crate::domain::frame::Frame;
use crate::domain::ids::EntityId;
use crate::domain::position::Position;

#[derive(Debug)]
pub struct Delivery {
    /// Built once on the ingest thread, one frame per audience that sees it
    /// differently; shared by every subscriber.
    pub frames: Variants,
    pub key: EntityKey,
    pub action: Action,
    pub updated_at: Option<i64>,
    /// The section was deleted: its clients are closed (1000) after this.
    pub ends_section: bool,
    /// When the ingest thread routed it: the start of the gateway's own
    /// share of the latency (`mesaya_delivery_seconds`).
    pub routed_at: Instant,
    /// The Kafka record it came from (for a reservation held until its
    /// table was known: where the ingest stood when it was released).
    /// Resume buffers and resume tokens are made of these.
    pub position: Option<Position>,
}

impl Delivery {
    /// The frame a subscriber of `audience` gets.
    pub fn frame_for(&self, audience: &Audience) -> &Frame {
        self.frames.for_audience(audience)
    }
}

/// A record this instance could not route, though another instance may
/// have (a reservation whose table is unknown here, a restaurant event whose
/// sections are): the shards must not claim their resume buffers cover it
/// for the sections it may have concerned, those of `restaurant` and those
/// whose restaurant is unknown here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unseen {
    pub position: Position,
    /// `None`: the record named no restaurant, so it may concern any section.
    pub restaurant: Option<EntityId>,
}

/// When and from where the ingest thread routes: every frame of one record
/// (or of one release of held reservations) carries the same.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub at: Instant,
    pub position: Option<Position>,
}
