//! Negotiating permessage-deflate (RFC 7692 §5, §7.1; SPEC §2.9): the first
//! offer in the client's `Sec-WebSocket-Extensions` that the gateway can
//! honour is accepted, with `server_no_context_takeover` (every server
//! message is compressed on its own, once for all its subscribers) and
//! `client_no_context_takeover` (every client message is inflated on its
//! own, so a connection keeps no inflate state between messages). RFC 7692
//! lets a server add both to any offer it accepts.
//!
//! The gateway compresses with a 32 KiB window, so an offer limiting the
//! server's window below that (`server_max_window_bits` < 15) is declined,
//! as is any offer RFC 7692 §7 says must be: an unknown parameter, a value
//! where none belongs or a missing or invalid one, a parameter twice. The
//! client's own window needs no limit: messages are inflated with a 32 KiB
//! window, which reads any.

use http::HeaderMap;
use http::header::SEC_WEBSOCKET_EXTENSIONS;

const NAME: &str = "permessage-deflate";
/// What an accepted offer is answered with.
pub const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The answer to an offer that asked for `server_max_window_bits=15`: an
/// accepted limit is echoed (RFC 7692 §7.1.2.1).
pub const ACCEPTED_WITH_WINDOW: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15";
/// The window the gateway compresses with: 2^15 bytes.
const SERVER_WINDOW_BITS: u8 = 15;

/// The `Sec-WebSocket-Extensions` answer when an offer is accepted.
pub fn negotiate(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        // A line that is not visible ASCII holds no offer we could read.
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| split_outside_quotes(line, ','))
        .find_map(accept)
}

/// The answer to one `extension *( ";" param )` element, if it is a
/// permessage-deflate offer the gateway can honour.
fn accept(offer: &str) -> Option<&'static str> {
    let mut parts = split_outside_quotes(offer, ';');
    let name = parts.next()?.trim();
    if !name.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = Seen::default();
    for param in parts {
        let (name, value) = parse_param(param)?;
        let first = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => value.is_none() && !std::mem::replace(&mut seen.server_no_takeover, true),
            "client_no_context_takeover" => value.is_none() && !std::mem::replace(&mut seen.client_no_takeover, true),
            // A value is required; below our window, we cannot honour it.
            "server_max_window_bits" => {
                let bits = window_bits(value?)?;
                bits >= SERVER_WINDOW_BITS && seen.server_window.replace(bits).is_none()
            }
            // With or without a value: what the client may use, at most.
            "client_max_window_bits" => {
                let valid = value.is_none_or(|value| window_bits(value).is_some());
                valid && !std::mem::replace(&mut seen.client_window, true)
            }
            _ => false,
        };
        if !first {
            return None;
        }
    }
    Some(if seen.server_window.is_some() { ACCEPTED_WITH_WINDOW } else { ACCEPTED })
}

/// The parameters an offer named so far: each may appear once.
#[derive(Default)]
struct Seen {
    server_no_takeover: bool,
    client_no_takeover: bool,
    server_window: Option<u8>,
    client_window: bool,
}

/// `token [ "=" ( token | quoted-string ) ]` (RFC 6455 §9.1): the name, and
/// the value unquoted, which must be a token too.
fn parse_param(param: &str) -> Option<(&str, Option<String>)> {
    let (name, value) = match param.split_once('=') {
        Some((name, value)) => (name.trim(), Some(value.trim())),
        None => (param.trim(), None),
    };
    if !is_token(name) {
        return None;
    }
    let value = match value {
        None => None,
        Some(quoted) if quoted.starts_with('"') => Some(unquote(quoted)?),
        Some(token) => Some(token.to_string()),
    };
    value.as_deref().is_none_or(is_token).then_some((name, value))
}

/// A quoted-string's content, its escapes undone.
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut text = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return None,
            c => text.push(c),
        }
    }
    Some(text)
}

/// A window size: a decimal 8-15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(value: String) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `text` split at `separator`s that are not inside a quoted-string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (at, c) in current.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&current[at + 1..]);
                    return Some(&current[..at]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn offered(lines: &[&str]) -> Option<&'static str> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(line).unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn what_browsers_and_libraries_offer_is_accepted() {
        // Chromium, Firefox, Node's ws, Python's websockets.
        assert_eq!(offered(&["permessage-deflate; client_max_window_bits"]), Some(ACCEPTED));
        assert_eq!(offered(&["permessage-deflate"]), Some(ACCEPTED));
        assert_eq!(offered(&["permessage-deflate; client_max_window_bits=12"]), Some(ACCEPTED));
        assert_eq!(
            offered(&["permessage-deflate; server_no_context_takeover; client_no_context_takeover"]),
            Some(ACCEPTED)
        );
        assert_eq!(offered(&["permessage-deflate; server_max_window_bits=15"]), Some(ACCEPTED_WITH_WINDOW));
        assert_eq!(offered(&["Permessage-Deflate; Client_Max_Window_Bits=\"10\""]), Some(ACCEPTED));
    }

    #[test]
    fn offers_that_cannot_be_honoured_are_declined_and_the_next_one_tried() {
        assert_eq!(offered(&[]), None);
        assert_eq!(offered(&["x-webkit-deflate-frame"]), None);
        for offer in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; level=9",
            "permessage-deflate; client_max_window_bits=\"1 0\"",
            "permessage-deflate; =15",
        ] {
            assert_eq!(offered(&[offer]), None, "{offer}");
        }
        let fallback = "permessage-deflate; server_max_window_bits=10, permessage-deflate";
        assert_eq!(offered(&[fallback]), Some(ACCEPTED), "the second offer");
        assert_eq!(offered(&["foo; bar=\"a,b\"", "permessage-deflate"]), Some(ACCEPTED), "over two lines");
    }

    /// One parameter of an offer, as a generator writes it.
    #[derive(Clone, Debug)]
    enum Param {
        ServerNoTakeover,
        ClientNoTakeover,
        ServerWindow(u8),
        ClientWindow(Option<u8>),
        Unknown,
    }

    impl Param {
        fn text(&self, quote: bool) -> String {
            let value = |bits: u8| if quote { format!("\"{bits}\"") } else { bits.to_string() };
            match self {
                Self::ServerNoTakeover => "server_no_context_takeover".into(),
                Self::ClientNoTakeover => "client_no_context_takeover".into(),
                Self::ServerWindow(bits) => format!("server_max_window_bits={}", value(*bits)),
                Self::ClientWindow(None) => "client_max_window_bits".into(),
                Self::ClientWindow(Some(bits)) => format!("client_max_window_bits={}", value(*bits)),
                Self::Unknown => "x_extra".into(),
            }
        }

        fn name(&self) -> &'static str {
            match self {
                Self::ServerNoTakeover => "snt",
                Self::ClientNoTakeover => "cnt",
                Self::ServerWindow(_) => "sw",
                Self::ClientWindow(_) => "cw",
                Self::Unknown => "unknown",
            }
        }
    }

    fn param() -> impl Strategy<Value = Param> {
        prop_oneof![
            Just(Param::ServerNoTakeover),
            Just(Param::ClientNoTakeover),
            (6u8..18).prop_map(Param::ServerWindow),
            prop::option::of(6u8..18).prop_map(Param::ClientWindow),
            Just(Param::Unknown),
        ]
    }

    /// What RFC 7692 and the gateway's window say of an offer.
    fn model(params: &[Param]) -> Option<&'static str> {
        let mut names: Vec<_> = params.iter().map(Param::name).collect();
        names.sort_unstable();
        let twice = names.windows(2).any(|pair| pair[0] == pair[1]);
        let valid = params.iter().all(|param| match param {
            Param::ServerWindow(bits) => *bits == 15,
            Param::ClientWindow(bits) => bits.is_none_or(|bits| (8..=15).contains(&bits)),
            Param::Unknown => false,
            _ => true,
        });
        let window = params.iter().any(|param| matches!(param, Param::ServerWindow(_)));
        (valid && !twice).then_some(if window { ACCEPTED_WITH_WINDOW } else { ACCEPTED })
    }

    proptest! {
        /// However an offer is spelled (spaces, quoted values, where it
        /// stands among others), it is accepted exactly when the RFC's rules
        /// and the gateway's window allow, with the answer they call for.
        #[test]
        fn offers_are_judged_by_the_rfc_rules(
            params in prop::collection::vec(param(), 0..5),
            quote in any::<bool>(),
            spaces in prop::collection::vec(prop::sample::select(vec!["", " ", "  ", "\t"]), 12),
            before in prop::option::of(prop::sample::select(vec!["foo", "x-webkit-deflate-frame", "bar; a=\"b,c;d\""])),
        ) {
            let space = |i: usize| spaces[i % spaces.len()];
            let mut offer = format!("{}permessage-deflate", space(0));
            for (i, param) in params.iter().enumerate() {
                offer.push_str(&format!("{};{}{}", space(i + 1), space(i + 2), param.text(quote)));
            }
            let line = match before {
                Some(other) => format!("{other},{offer}"),
                None => offer,
            };
            prop_assert_eq!(offered(&[&line]), model(&params), "{}", line);
        }

        /// Anything at all in the header: never a panic, and an answer, if
        /// any, is one of the two the gateway can honour.
        #[test]
        fn any_header_is_read_without_panicking(line in "[ -~\t]{0,120}") {
            if let Ok(value) = HeaderValue::from_str(&line) {
                let mut headers = HeaderMap::new();
                headers.insert(SEC_WEBSOCKET_EXTENSIONS, value);
                let answer = negotiate(&headers);
                prop_assert!(answer.is_none_or(|answer| answer == ACCEPTED || answer == ACCEPTED_WITH_WINDOW));
            }
        }

        /// An offer made of known words in any order with any separators:
        /// accepted only if it begins with the extension's name.
        #[test]
        fn only_permessage_deflate_is_accepted(words in prop::collection::vec(
            prop::sample::select(vec!["permessage-deflate", "client_max_window_bits", "server_no_context_takeover", ";", ",", "=", "\"", "15"]),
            0..10,
        )) {
            let line = words.concat();
            let mut headers = HeaderMap::new();
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, HeaderValue::from_str(&line).unwrap());
            if negotiate(&headers).is_some() {
                prop_assert!(split_outside_quotes(&line, ',').any(|offer| offer.trim().to_ascii_lowercase().starts_with(NAME)));
            }
        }
    }
}
