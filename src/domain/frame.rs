//! Outgoing text frames. A frame is built once (per event, or per snapshot)
//! and the same bytes are written to every subscriber that gets it.

use bytes::Bytes;

use super::entity::{Action, EntityKind};

/// The bytes of one JSON text frame. Invariant: valid UTF-8, because every
/// constructor takes `&str`; transport relies on it to skip re-validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// `{"event":"<entity>.<action>","payload":<payload>}`.
    pub fn event(kind: EntityKind, action: Action, payload_json: &str) -> Self {
        let prefix = kind.event_prefix();
        let verb = action.as_str();
        let mut text = String::with_capacity(payload_json.len() + prefix.len() + verb.len() + 24);
        text.push_str(r#"{"event":""#);
        text.push_str(prefix);
        text.push('.');
        text.push_str(verb);
        text.push_str(r#"","payload":"#);
        text.push_str(payload_json);
        text.push('}');
        Self(Bytes::from(text))
    }

    /// `{"event":"section.snapshot","payload":<payload>}`.
    pub fn snapshot(payload_json: &str) -> Self {
        let mut text = String::with_capacity(payload_json.len() + 40);
        text.push_str(r#"{"event":"section.snapshot","payload":"#);
        text.push_str(payload_json);
        text.push('}');
        Self(Bytes::from(text))
    }

    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The frame's bytes, guaranteed UTF-8 (see the type's invariant).
    pub fn utf8_bytes(&self) -> &Bytes {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_is_the_documented_json() {
        let frame = Frame::event(EntityKind::SectionObject, Action::Deleted, r#"{"id":"x"}"#);
        let parsed: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        assert_eq!(parsed, serde_json::json!({"event":"section-object.deleted","payload":{"id":"x"}}));
    }

    #[test]
    fn snapshot_frame_wraps_payload() {
        let frame = Frame::snapshot(r#"{"id":"s","tables":[]}"#);
        let parsed: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        assert_eq!(parsed["event"], "section.snapshot");
        assert_eq!(parsed["payload"]["tables"], serde_json::json!([]));
    }
}
