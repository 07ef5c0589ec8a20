//! `updatedAt` values. Upstream writes `Date#toISOString()` (ms precision,
//! `Z`), but replayed or hand-made data may use offsets, so we compare parsed
//! instants rather than strings.

/// Milliseconds since the Unix epoch, or `None` when the text is not RFC 3339.
pub fn parse_millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|instant| instant.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nest_iso_strings_and_offsets() {
        let a = parse_millis("2026-01-10T16:00:00.480Z").unwrap();
        let b = parse_millis("2026-01-10T17:00:00.480+01:00").unwrap();
        assert_eq!(a, b);
        assert!(parse_millis("2026-01-10T16:00:00.481Z").unwrap() > a);
        assert_eq!(parse_millis("yesterday"), None);
    }
}
