//! Outgoing text frames. A frame is built once (per event, or per snapshot)
//! and the same bytes are written to every subscriber that gets it: its text,
//! or, to a connection that negotiated permessage-deflate, its compressed
//! form when it has one (SPEC §2.9).

use bytes::Bytes;

use super::entity::{Action, EntityKind};

/// The bytes of one JSON text frame. Invariant: valid UTF-8, because every
/// constructor takes `&str`; transport relies on it to skip re-validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    text: Bytes,
    /// The text as one permessage-deflate message (RFC 7692 §7.2.1: a raw
    /// deflate stream, its `00 00 ff ff` tail removed), when that is shorter.
    deflated: Option<Bytes>,
}

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
        Self::text(Bytes::from(text))
    }

    /// `{"event":"section.snapshot","payload":<payload>}`.
    pub fn snapshot(payload_json: &str) -> Self {
        let mut text = String::with_capacity(payload_json.len() + 40);
        text.push_str(r#"{"event":"section.snapshot","payload":"#);
        text.push_str(payload_json);
        text.push('}');
        Self::text(Bytes::from(text))
    }

    /// `{"event":"section.position","payload":{"token":"<token>"}}`. The
    /// token is base64url, so it needs no escaping.
    pub fn position(token: &str) -> Self {
        Self::text(Bytes::from(format!(r#"{{"event":"section.position","payload":{{"token":"{token}"}}}}"#)))
    }

    /// `{"event":"section.resumed","payload":{"replayed":<replayed>}}`.
    pub fn resumed(replayed: usize) -> Self {
        Self::text(Bytes::from(format!(r#"{{"event":"section.resumed","payload":{{"replayed":{replayed}}}}}"#)))
    }

    /// `{"event":"auth.expiring","payload":{"exp":<exp>}}` (SPEC §2.8).
    pub fn auth_expiring(exp: u64) -> Self {
        Self::text(Bytes::from(format!(r#"{{"event":"auth.expiring","payload":{{"exp":{exp}}}}}"#)))
    }

    /// `{"event":"auth.refreshed","payload":{"exp":<exp>}}`.
    pub fn auth_refreshed(exp: u64) -> Self {
        Self::text(Bytes::from(format!(r#"{{"event":"auth.refreshed","payload":{{"exp":{exp}}}}}"#)))
    }

    /// `{"event":"auth.refresh_failed","payload":{"reason":"<reason>"}}`;
    /// `reason` is one of the fixed labels, so it needs no escaping.
    pub fn auth_refresh_failed(reason: &str) -> Self {
        Self::text(Bytes::from(format!(r#"{{"event":"auth.refresh_failed","payload":{{"reason":"{reason}"}}}}"#)))
    }

    pub const fn from_static(text: &'static str) -> Self {
        Self { text: Bytes::from_static(text.as_bytes()), deflated: None }
    }

    const fn text(text: Bytes) -> Self {
        Self { text, deflated: None }
    }

    /// The same frame, with its compressed form.
    pub fn with_deflated(self, deflated: Bytes) -> Self {
        Self { deflated: Some(deflated), ..self }
    }

    /// The length of its text (what a queue counts, whichever form is sent).
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// What keeping it costs: its text and its compressed form.
    pub fn held_bytes(&self) -> usize {
        self.text.len() + self.deflated.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The frame's bytes, guaranteed UTF-8 (see the type's invariant).
    pub fn utf8_bytes(&self) -> &Bytes {
        &self.text
    }

    /// Its compressed form, if it has one.
    pub fn deflated(&self) -> Option<&Bytes> {
        self.deflated.as_ref()
    }
}

/// `object_json` (a JSON object's text) with one more key: `"key": value`
/// added last. `None` when the text is not an object.
pub fn with_key(object_json: &str, key: &str, value_json: &str) -> Option<String> {
    let inner = object_json.trim().strip_prefix('{')?.strip_suffix('}')?;
    let separator = if inner.trim().is_empty() { "" } else { "," };
    Some(format!("{{{inner}{separator}\"{key}\":{value_json}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_added_last_to_any_object() {
        assert_eq!(with_key(r#"{"id":"x"}"#, "object", r#"{"a":1}"#).unwrap(), r#"{"id":"x","object":{"a":1}}"#);
        assert_eq!(with_key(" { } ", "objects", "[]").unwrap(), r#"{ "objects":[]}"#);
        assert_eq!(with_key("[1]", "objects", "[]"), None);
    }

    #[test]
    fn event_frame_is_the_documented_json() {
        let frame = Frame::event(EntityKind::SectionObject, Action::Deleted, r#"{"id":"x"}"#);
        let parsed: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        assert_eq!(parsed, serde_json::json!({"event":"section-object.deleted","payload":{"id":"x"}}));
    }

    #[test]
    fn resume_frames_are_the_documented_json() {
        let position: serde_json::Value = serde_json::from_slice(Frame::position("AbC-_9").utf8_bytes()).unwrap();
        assert_eq!(position, serde_json::json!({"event":"section.position","payload":{"token":"AbC-_9"}}));
        let resumed: serde_json::Value = serde_json::from_slice(Frame::resumed(3).utf8_bytes()).unwrap();
        assert_eq!(resumed, serde_json::json!({"event":"section.resumed","payload":{"replayed":3}}));
    }

    #[test]
    fn snapshot_frame_wraps_payload() {
        let frame = Frame::snapshot(r#"{"id":"s","tables":[]}"#);
        let parsed: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        assert_eq!(parsed["event"], "section.snapshot");
        assert_eq!(parsed["payload"]["tables"], serde_json::json!([]));
    }
}
