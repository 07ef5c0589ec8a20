//! The client-facing protocol constants: close codes (docs/protocol.md, "Close codes") and the
//! fixed application frames.

/// A WebSocket close code with the reason text we send with it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CloseCode {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseCode {
    pub const NORMAL: Self = Self { code: 1000, reason: "section deleted" };
    /// The answer to a client's own close frame.
    pub const CLOSE_ACKNOWLEDGED: Self = Self { code: 1000, reason: "" };
    pub const GOING_AWAY: Self = Self { code: 1001, reason: "server shutting down" };
    pub const PROTOCOL_ERROR: Self = Self { code: 1002, reason: "malformed frame" };
    pub const UNSUPPORTED_DATA: Self = Self { code: 1003, reason: "binary frames are not accepted" };
    pub const INVALID_PAYLOAD: Self = Self { code: 1007, reason: "text frame is not valid UTF-8" };
    pub const POLICY_VIOLATION: Self = Self { code: 1008, reason: "too many client frames" };
    pub const UNFINISHED_MESSAGE: Self =
        Self { code: 1008, reason: "fragmented message of more than 64 fragments or not finished in time" };
    pub const TOO_LARGE: Self = Self { code: 1009, reason: "client frame too large" };
    pub const INTERNAL_ERROR: Self = Self { code: 1011, reason: "internal error" };
    pub const TRY_AGAIN_LATER: Self = Self { code: 1013, reason: "snapshot API rate limited" };
    pub const BAD_GATEWAY: Self = Self { code: 1014, reason: "snapshot API unavailable" };
    pub const API_REJECTED: Self = Self { code: 4400, reason: "snapshot API rejected the request" };
    pub const UNAUTHORIZED: Self = Self { code: 4401, reason: "unauthorized" };
    pub const TOKEN_EXPIRED: Self = Self { code: 4401, reason: "token expired" };
    pub const FORBIDDEN: Self = Self { code: 4403, reason: "forbidden" };
    pub const NOT_FOUND: Self = Self { code: 4404, reason: "section not found" };
    pub const SLOW_CONSUMER: Self = Self { code: 4408, reason: "slow consumer: reconnect for a fresh snapshot" };
}

/// What a client's text frame asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// `{"event":"ping"}`: browsers cannot send ping frames.
    Ping,
    /// `{"event":"auth.refresh","payload":{"token":"<jwt>"}}` (SPEC §2.8);
    /// `None` when the frame names the event but carries no token.
    Refresh(Option<String>),
    /// Anything else: ignored.
    Other,
}

impl ClientMessage {
    pub fn parse(text: &str) -> Self {
        #[derive(serde::Deserialize)]
        struct Probe<'a> {
            #[serde(borrow)]
            event: &'a str,
            payload: Option<RefreshPayload>,
        }
        #[derive(serde::Deserialize)]
        struct RefreshPayload {
            token: Option<String>,
        }
        let Ok(probe) = serde_json::from_str::<Probe<'_>>(text) else {
            // `{"event":"auth.refresh", …}` that is not quite right is still a refresh.
            return if text.contains(r#""auth.refresh""#) { Self::Refresh(None) } else { Self::Other };
        };
        match probe.event {
            "ping" => Self::Ping,
            "auth.refresh" => Self::Refresh(probe.payload.and_then(|payload| payload.token).filter(|t| !t.is_empty())),
            _ => Self::Other,
        }
    }
}

pub const PONG_FRAME: &str = r#"{"event":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_are_pings_refreshes_or_ignored() {
        assert_eq!(ClientMessage::parse(r#"{"event":"ping"}"#), ClientMessage::Ping);
        assert_eq!(ClientMessage::parse(r#" { "event" : "ping", "id": 3 } "#), ClientMessage::Ping);
        assert_eq!(ClientMessage::parse(r#"{"event":"pong"}"#), ClientMessage::Other);
        assert_eq!(ClientMessage::parse(r#"{"event":1}"#), ClientMessage::Other);
        assert_eq!(
            ClientMessage::parse(r#"{"event":"auth.refresh","payload":{"token":"a.b.c"}}"#),
            ClientMessage::Refresh(Some("a.b.c".into()))
        );
        for malformed in [
            r#"{"event":"auth.refresh"}"#,
            r#"{"event":"auth.refresh","payload":{"token":7}}"#,
            r#"{"event":"auth.refresh","payload":{"token":""}}"#,
            r#"{"event":"auth.refresh","payload":"#,
        ] {
            assert_eq!(ClientMessage::parse(malformed), ClientMessage::Refresh(None), "{malformed}");
        }
        assert_eq!(ClientMessage::parse(r#"{"event":"noise"}"#), ClientMessage::Other);
        assert_eq!(ClientMessage::parse("not json"), ClientMessage::Other);
    }
}
