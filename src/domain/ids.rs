//! Identifiers.

use std::fmt;
use std::sync::Arc;

/// A restaurant section, the unit clients subscribe to. Always a UUID: the
/// upstream API validates it with a UUID pipe, so anything else is a 400.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct SectionId(uuid::Uuid);

impl SectionId {
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::try_parse(text).ok().map(Self)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0.into_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }

    /// The shard that owns this section. Stable for the life of the process,
    /// so every connection and every event of a section meet on one thread.
    pub fn shard(&self, shards: usize) -> usize {
        let bits = self.0.as_u128();
        // Fold and mix: UUIDv4 bits are random already, but ids minted by
        // other generators (v1, v7) share long prefixes.
        let folded = (bits as u64) ^ ((bits >> 64) as u64);
        let mixed = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((mixed >> 32) % shards.max(1) as u64) as usize
    }
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Any other entity's id (table, object, section-object, reservation),
/// always in [`canonical_id`]'s spelling: we only compare ids, never
/// interpret them.
pub type EntityId = Arc<str>;

/// A UUID in its one canonical spelling (lower case, hyphenated), or `None`
/// for text that is not one. `Uuid::try_parse` also takes braces, `urn:uuid:`,
/// upper case and the unhyphenated form: without this, one id would key a
/// map five ways.
pub fn canonical_id(text: &str) -> Option<EntityId> {
    let uuid = uuid::Uuid::try_parse(text).ok()?;
    Some(uuid.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_uuids() {
        assert!(SectionId::parse("5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11").is_some());
        assert!(SectionId::parse("not-a-uuid").is_none());
        assert!(SectionId::parse("").is_none());
    }

    #[test]
    fn every_spelling_of_a_uuid_is_one_id() {
        let id = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
        for spelling in
            [id.to_string(), id.to_uppercase(), id.replace('-', ""), format!("{{{id}}}"), format!("urn:uuid:{id}")]
        {
            assert_eq!(canonical_id(&spelling).as_deref(), Some(id), "{spelling}");
        }
        assert_eq!(canonical_id("table-1"), None);
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        let id = SectionId::parse("5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11").unwrap();
        for shards in 1..16 {
            assert!(id.shard(shards) < shards);
            assert_eq!(id.shard(shards), id.shard(shards));
        }
    }

    #[test]
    fn sections_spread_over_shards() {
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let id = SectionId(uuid::Uuid::new_v4());
            counts[id.shard(4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "uneven spread: {counts:?}");
    }
}
