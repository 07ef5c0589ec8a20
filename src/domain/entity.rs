//! Entity kinds and actions, and the event names clients see.

use super::ids::EntityId;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum EntityKind {
    Section,
    Table,
    Object,
    SectionObject,
    Reservation,
    Restaurant,
}

impl EntityKind {
    /// The kind named by a topic's domain segment (`mesa-ya.<domain>.…`).
    pub fn from_topic_domain(domain: &str) -> Option<Self> {
        Some(match domain {
            "sections" => Self::Section,
            "tables" => Self::Table,
            "objects" => Self::Object,
            "section-objects" => Self::SectionObject,
            "reservations" => Self::Reservation,
            "restaurants" => Self::Restaurant,
            _ => return None,
        })
    }

    /// The prefix of client event names (`table.updated`).
    pub fn event_prefix(self) -> &'static str {
        match self {
            Self::Section => "section",
            Self::Table => "table",
            Self::Object => "object",
            Self::SectionObject => "section-object",
            Self::Reservation => "reservation",
            Self::Restaurant => "restaurant",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Action {
    Created,
    Updated,
    Deleted,
    /// Restaurants only: their status changed (open, closed, suspended).
    StatusChanged,
}

impl Action {
    pub fn parse(verb: &str) -> Option<Self> {
        Some(match verb {
            "created" => Self::Created,
            "updated" => Self::Updated,
            "deleted" => Self::Deleted,
            "status_changed" => Self::StatusChanged,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::StatusChanged => "status_changed",
        }
    }
}

/// Identifies one entity across kinds: the unit of conflation and of the
/// snapshot/stream handoff comparison.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct EntityKey {
    pub kind: EntityKind,
    pub id: EntityId,
}

impl EntityKey {
    pub fn new(kind: EntityKind, id: impl Into<EntityId>) -> Self {
        Self { kind, id: id.into() }
    }
}
