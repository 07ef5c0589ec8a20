//! Frames compressed for permessage-deflate (SPEC §2.9), once for every
//! subscriber: the ingest thread compresses each event's variants as it
//! builds them, and a shard each snapshot body it sends (a body equal to the
//! section's last one reuses its compressed bytes). A connection that
//! negotiated the extension is written the compressed bytes; the others,
//! and every connection for a frame under the size floor or one that
//! compression would not shorten, the text.
//!
//! Every message is a deflate stream of its own (the gateway answers with
//! `server_no_context_takeover`), so one compressed copy serves everyone.

use std::collections::HashMap;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

use crate::domain::audience::Variants;
use crate::domain::frame::Frame;
use crate::domain::ids::SectionId;
use crate::telemetry::METRICS;

/// What a sync flush ends a deflate stream with, and RFC 7692 §7.2.1 has
/// the sender remove.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compresses frames one at a time; one per thread that builds frames.
pub struct Deflater {
    /// Frames shorter than this are sent as they are.
    min_bytes: usize,
    /// Reset for every message: its buffers are kept, its history is not.
    stream: Compress,
}

impl Deflater {
    pub fn new(min_bytes: usize) -> Self {
        Self { min_bytes, stream: Compress::new(Compression::default(), false) }
    }

    /// `frame` with its compressed form, when it is long enough and
    /// compressing shortens it.
    pub fn compress(&mut self, frame: Frame) -> Frame {
        if frame.len() < self.min_bytes.max(1) {
            return frame;
        }
        let deflated = self.deflate(frame.utf8_bytes());
        METRICS.frames_deflated.inc();
        if deflated.len() < frame.len() { frame.with_deflated(Bytes::from(deflated)) } else { frame }
    }

    /// Every variant of an event, each compressed once.
    pub fn compress_variants(&mut self, variants: Variants) -> Variants {
        variants.map_frames(|frame| self.compress(frame))
    }

    /// One message as RFC 7692 §7.2.1 has it sent: a raw deflate stream
    /// ended by a sync flush, whose empty stored block's tail is removed.
    fn deflate(&mut self, text: &[u8]) -> Vec<u8> {
        self.stream.reset();
        let mut out = Vec::with_capacity(text.len() / 2 + 64);
        loop {
            let read = self.stream.total_in() as usize;
            // Only an error of the caller's making (a flush out of order) is
            // possible here: a reset stream always takes input.
            self.stream.compress_vec(&text[read..], &mut out, FlushCompress::Sync).expect("a reset deflate stream");
            // A flush is complete when it left room in the output.
            if self.stream.total_in() as usize == text.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        debug_assert!(out.ends_with(&TAIL), "a sync flush ends with an empty stored block");
        out.truncate(out.len().saturating_sub(TAIL.len()));
        out
    }
}

/// What the kept compressed snapshots may hold, per shard: their text and
/// their compressed bytes.
const MAX_SNAPSHOT_BYTES: usize = 4 << 20;

/// A shard's snapshot compression: the last compressed snapshot frame of
/// each section, so that the clients of a reconnect storm, who get the same
/// body, share one compression (and one copy of its bytes).
pub struct SnapshotDeflater {
    deflater: Deflater,
    by_section: HashMap<SectionId, Frame>,
    bytes: usize,
}

impl SnapshotDeflater {
    pub fn new(min_bytes: usize) -> Self {
        Self { deflater: Deflater::new(min_bytes), by_section: HashMap::new(), bytes: 0 }
    }

    /// `frame`, the snapshot frame a client of `section` is sent, with its
    /// compressed form: the kept one when the text is the same.
    pub fn compress(&mut self, section: SectionId, frame: Frame) -> Frame {
        if let Some(kept) = self.by_section.get(&section)
            && kept.utf8_bytes() == frame.utf8_bytes()
        {
            return kept.clone();
        }
        let compressed = self.deflater.compress(frame);
        self.keep(section, compressed.clone());
        compressed
    }

    /// Keeps `frame` as the section's latest; every other section's is
    /// forgotten first when the limit would be passed.
    fn keep(&mut self, section: SectionId, frame: Frame) {
        if let Some(old) = self.by_section.remove(&section) {
            self.bytes -= cost(&old);
        }
        let cost = cost(&frame);
        if cost > MAX_SNAPSHOT_BYTES {
            return;
        }
        if self.bytes + cost > MAX_SNAPSHOT_BYTES {
            self.by_section.clear();
            self.bytes = 0;
        }
        self.bytes += cost;
        self.by_section.insert(section, frame);
    }
}

fn cost(frame: &Frame) -> usize {
    frame.len() + frame.deflated().map_or(0, Bytes::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::entity::{Action, EntityKind};
    use flate2::{Decompress, FlushDecompress};
    use proptest::prelude::*;

    /// What a client does (RFC 7692 §7.2.2): the tail put back, inflated.
    fn inflate(deflated: &[u8]) -> Vec<u8> {
        let mut message = deflated.to_vec();
        message.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        Decompress::new(false).decompress_vec(&message, &mut out, FlushDecompress::Sync).unwrap();
        out
    }

    fn table(padding: usize) -> Frame {
        let payload = format!(r#"{{"id":"a1111111-1111-4111-8111-111111111111","notes":"{}"}}"#, "x".repeat(padding));
        Frame::event(EntityKind::Table, Action::Updated, &payload)
    }

    #[test]
    fn frames_below_the_floor_or_that_would_not_shrink_stay_as_they_are() {
        let mut deflater = Deflater::new(256);
        assert_eq!(deflater.compress(table(10)).deflated(), None, "under 256 bytes");
        let noise: String = (0..400).map(|i| char::from(b'!' + ((i * 7919 + i / 3) % 90) as u8)).collect();
        let incompressible = Frame::event(EntityKind::Table, Action::Updated, &format!(r#""{noise}""#));
        let kept = deflater.compress(incompressible.clone());
        assert!(kept.deflated().is_none_or(|deflated| deflated.len() < incompressible.len()));
        assert!(deflater.compress(table(500)).deflated().is_some());
        assert_eq!(Deflater::new(0).compress(Frame::from_static("")).deflated(), None, "nothing to compress");
    }

    #[test]
    fn a_snapshot_body_is_compressed_once_per_section_while_it_stays_the_same() {
        let mut snapshots = SnapshotDeflater::new(256);
        let section = SectionId::parse("11111111-1111-4111-8111-111111111111").unwrap();
        let body = |n: usize| Frame::snapshot(&format!(r#"{{"id":"s","tables":[{}]}}"#, r#"{"id":"t"},"#.repeat(n)));
        let first = snapshots.compress(section, body(100));
        let again = snapshots.compress(section, body(100));
        let (first_bytes, again_bytes) = (first.deflated().unwrap(), again.deflated().unwrap());
        assert_eq!(first_bytes.as_ptr(), again_bytes.as_ptr(), "the same bytes, not compressed again");
        let changed = snapshots.compress(section, body(101));
        assert_ne!(changed.deflated(), first.deflated());
        assert_eq!(inflate(changed.deflated().unwrap()), changed.utf8_bytes().to_vec());
    }

    proptest! {
        /// Whatever the text, the compressed form is one RFC 7692 message
        /// that inflates back to it; and a deflater reused for the next
        /// frame carries nothing over (every message stands alone).
        #[test]
        fn compressed_frames_inflate_to_their_text(texts in prop::collection::vec("[ -~]{0,3000}", 1..4)) {
            let mut deflater = Deflater::new(0);
            for text in texts {
                let frame = deflater.compress(Frame::event(EntityKind::Table, Action::Updated, &format!("{text:?}")));
                if let Some(deflated) = frame.deflated() {
                    prop_assert!(deflated.len() < frame.len());
                    prop_assert_eq!(inflate(deflated), frame.utf8_bytes().to_vec());
                }
            }
        }
    }
}
