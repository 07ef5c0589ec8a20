//! The client-facing protocol constants: close codes (README, "Close codes") and the
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

/// What a client sends instead of a ping frame (browsers cannot send those).
pub fn is_application_ping(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        event: &'a str,
    }
    // Cheap pre-check: most client text is pings, and anything long is not.
    text.len() < 256 && serde_json::from_str::<Probe<'_>>(text).is_ok_and(|probe| probe.event == "ping")
}

pub const PONG_FRAME: &str = r#"{"event":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_application_ping() {
        assert!(is_application_ping(r#"{"event":"ping"}"#));
        assert!(is_application_ping(r#" { "event" : "ping", "id": 3 } "#));
        assert!(!is_application_ping(r#"{"event":"pong"}"#));
        assert!(!is_application_ping("ping"));
        assert!(!is_application_ping(r#"{"event":1}"#));
    }
}
