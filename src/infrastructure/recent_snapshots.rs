//! The last snapshot body each section's call read, with what it parsed to.
//! The API answers every client of a section with the same bytes until the
//! section changes, so in a reconnect storm most bodies are the one before:
//! those are not parsed again. Parsing is pure, so a byte-for-byte equal body
//! gives the same snapshot; any other body is parsed as usual.

use std::collections::HashMap;

use crate::domain::ids::SectionId;
use crate::domain::snapshot::Snapshot;

/// What the kept bodies and snapshots may hold, per shard, as [`cost`]
/// counts it.
const MAX_BYTES: usize = 4 << 20;
/// An entry's own memory besides the bytes of its body, frame and payload
/// (the frame's envelope, the map's slot, the allocations), generously.
const PER_ENTRY: usize = 576;
/// Each entity the snapshot knows: a `versions` slot with its id, a table id.
const PER_ENTITY: usize = 96;

#[derive(Default)]
pub struct RecentSnapshots {
    by_section: HashMap<SectionId, Kept>,
    bytes: usize,
}

struct Kept {
    body: Box<[u8]>,
    snapshot: Snapshot,
    cost: usize,
}

impl RecentSnapshots {
    /// The snapshot `body` parses to, when it is the body last kept for
    /// `section`.
    pub fn get(&self, section: SectionId, body: &[u8]) -> Option<Snapshot> {
        let kept = self.by_section.get(&section)?;
        (*kept.body == *body).then(|| kept.snapshot.clone())
    }

    /// Keeps `body` and its snapshot as the section's latest. A body over the
    /// limit on its own is not kept; when the limit would be passed, every
    /// other section's is forgotten first.
    pub fn keep(&mut self, section: SectionId, body: &[u8], snapshot: &Snapshot) {
        if let Some(old) = self.by_section.remove(&section) {
            self.bytes -= old.cost;
        }
        let cost = cost(body, snapshot);
        if cost > MAX_BYTES {
            return;
        }
        if self.bytes + cost > MAX_BYTES {
            self.by_section.clear();
            self.bytes = 0;
        }
        self.bytes += cost;
        self.by_section.insert(section, Kept { body: body.into(), snapshot: snapshot.clone(), cost });
    }
}

/// The body, and the frame and payload its snapshot holds (each about as
/// long as the body), with the entry's and the entities' own memory.
fn cost(body: &[u8], snapshot: &Snapshot) -> usize {
    3 * body.len() + PER_ENTRY + PER_ENTITY * (snapshot.versions.len() + snapshot.table_ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::entity::{EntityKey, EntityKind};
    use crate::domain::snapshot::SectionObjects;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";

    fn section(id: &str) -> SectionId {
        SectionId::parse(id).unwrap()
    }

    fn body(name: &str, tables: usize) -> Vec<u8> {
        let tables: Vec<String> =
            (0..tables).map(|t| format!(r#"{{"id":"a{t:07}-1111-4111-8111-111111111111"}}"#)).collect();
        format!(r#"{{"data":{{"id":"{S1}","name":"{name}","tables":[{}]}}}}"#, tables.join(",")).into_bytes()
    }

    fn table_count(snapshot: &Snapshot) -> usize {
        snapshot.table_ids.len()
    }

    #[test]
    fn only_the_same_bytes_for_the_same_section_are_answered() {
        let mut recent = RecentSnapshots::default();
        let first = body("Terraza", 2);
        recent.keep(section(S1), &first, &Snapshot::parse(&first).unwrap());
        let again = recent.get(section(S1), &first).expect("the same body");
        assert_eq!(again.frame, Snapshot::parse(&first).unwrap().frame);
        assert_eq!(table_count(&again), 2);
        assert!(recent.get(section(S1), &body("Terraza", 3)).is_none(), "the section changed");
        assert!(recent.get(section(S2), &first).is_none(), "another section");
    }

    #[test]
    fn adding_objects_to_an_answer_leaves_the_kept_snapshot_as_parsed() {
        let mut recent = RecentSnapshots::default();
        let bare = body("Terraza", 1);
        let parsed = Snapshot::parse(&bare).unwrap();
        recent.keep(section(S1), &bare, &parsed);
        let mut answered = recent.get(section(S1), &bare).unwrap();
        let link = EntityKey::new(EntityKind::SectionObject, "so1");
        answered.add_objects(SectionObjects { json: r#"[{"id":"so1"}]"#.into(), versions: vec![(link, 7)] });
        assert_ne!(answered.frame, parsed.frame);

        let again = recent.get(section(S1), &bare).unwrap();
        assert!(again.lacks_objects());
        assert_eq!((again.frame, again.versions), (parsed.frame, parsed.versions));
    }

    #[test]
    fn a_newer_body_replaces_the_sections_last() {
        let mut recent = RecentSnapshots::default();
        let (old, new) = (body("Terraza", 1), body("Terraza", 4));
        recent.keep(section(S1), &old, &Snapshot::parse(&old).unwrap());
        recent.keep(section(S1), &new, &Snapshot::parse(&new).unwrap());
        assert!(recent.get(section(S1), &old).is_none());
        assert_eq!(recent.get(section(S1), &new).map(|s| table_count(&s)), Some(4));
        assert_eq!(recent.bytes, cost(&new, &Snapshot::parse(&new).unwrap()));
    }

    #[test]
    fn what_is_kept_stays_under_the_limit() {
        let mut recent = RecentSnapshots::default();
        let big = body(&"a".repeat(1 << 20), 1);
        let snapshot = Snapshot::parse(&big).unwrap();
        assert!(cost(&big, &snapshot) * 2 > MAX_BYTES && cost(&big, &snapshot) <= MAX_BYTES, "one fits, two do not");
        recent.keep(section(S1), &big, &snapshot);
        recent.keep(section(S2), &big, &snapshot);
        assert!(recent.bytes <= MAX_BYTES);
        assert!(recent.get(section(S1), &big).is_none(), "forgotten to make room");
        assert!(recent.get(section(S2), &big).is_some());

        let huge = body(&"a".repeat(3 << 19), 1);
        recent.keep(section(S1), &huge, &Snapshot::parse(&huge).unwrap());
        assert!(recent.get(section(S1), &huge).is_none(), "over the limit on its own");
        assert!(recent.bytes <= MAX_BYTES);
    }
}
