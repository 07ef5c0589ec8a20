//! Reading an upgrade request: the section, the token and its source. The
//! token is never logged; only its source is, and the kind of route the
//! request came on instead of its path.

use http::header::{
    AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use std::net::IpAddr;

use http::{HeaderMap, Method, Uri};
use ipnet::IpNet;

use crate::application::ports::X_FORWARDED_FOR;

const PREFIX: &str = "/ws/restaurant/";

/// Where a token was found, in the order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Path,
    AuthorizationHeader,
    Subprotocol,
    Query,
}

impl TokenSource {
    pub fn label(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::AuthorizationHeader => "authorization",
            Self::Subprotocol => "subprotocol",
            Self::Query => "query",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeTarget<'a> {
    pub section: &'a str,
    pub token: Option<(String, TokenSource)>,
    /// The client offered the `bearer` subprotocol: we must answer with it.
    pub offers_bearer: bool,
    /// `?resume=`: the client opted in to resuming, with a token (empty at
    /// its first connect).
    pub resume: Option<String>,
}

/// `Some` when the path is one of ours, whatever else is wrong with it.
pub fn parse_target<'a>(uri: &'a Uri, headers: &HeaderMap) -> Option<UpgradeTarget<'a>> {
    let rest = uri.path().strip_prefix(PREFIX)?;
    let (section, path_token) = match rest.split_once('/') {
        Some((section, token)) if !token.contains('/') => (section, Some(token).filter(|t| !t.is_empty())),
        Some(_) => return None,
        None => (rest, None),
    };
    let offered = subprotocols(headers);
    let offers_bearer = offered.first().is_some_and(|p| p.eq_ignore_ascii_case("bearer"));
    let token = path_token
        .map(|t| (t.to_string(), TokenSource::Path))
        .or_else(|| bearer_header(headers).map(|t| (t, TokenSource::AuthorizationHeader)))
        .or_else(|| offers_bearer.then(|| offered.get(1).map(|t| (t.clone(), TokenSource::Subprotocol))).flatten())
        .or_else(|| query_param(uri, "token").filter(|t| !t.is_empty()).map(|t| (t.to_string(), TokenSource::Query)));
    let resume = query_param(uri, "resume").map(str::to_string);
    Some(UpgradeTarget { section, token, offers_bearer, resume })
}

fn bearer_header(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string()).filter(|t| !t.is_empty())
}

fn subprotocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// A query parameter's raw value (`?name` alone counts as empty). Tokens
/// (JWT, resume) are URL-safe: nothing to decode.
fn query_param<'u>(uri: &'u Uri, wanted: &str) -> Option<&'u str> {
    uri.query()?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| value)
}

/// The handshake key when this is a WebSocket upgrade (RFC 6455 §4.2.1).
pub fn websocket_key<'h>(method: &Method, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    let has_token = |name, wanted: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(wanted))
    };
    let ok = method == Method::GET
        && has_token(CONNECTION, "upgrade")
        && has_token(UPGRADE, "websocket")
        && headers.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    ok.then(|| headers.get(SEC_WEBSOCKET_KEY).map(|k| k.as_bytes())).flatten()
}

/// What may be logged of a WebSocket path: its kind. Any segment may be a
/// token, on our route and on the earlier service's (`/ws/tables/…`), so
/// the path itself never is.
pub fn route_kind(uri: &Uri) -> &'static str {
    let path = uri.path();
    if path.starts_with(PREFIX) {
        "restaurant"
    } else if path.starts_with("/ws/tables/") {
        "legacy_tables"
    } else {
        "other"
    }
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the right-most `X-Forwarded-For` address that is not itself a
/// trusted proxy. Never the left-most: the client writes that one itself.
/// Addresses are compared canonically: an IPv4-mapped IPv6 peer (what a
/// dual-stack listener sees) is its IPv4 address.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    // One entry per comma-separated item; `None` for a header line that is
    // not visible ASCII, which cannot be read, so nothing before it can be
    // believed either.
    let forwarded: Vec<Option<&str>> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .flat_map(|value| match value.to_str() {
            Ok(line) => line.split(',').map(|entry| Some(entry.trim())).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    // Walk back from the proxy nearest to us: the first hop that is not one
    // of ours is the client. What stands before it is the client's word, and
    // an entry that is not an address ends what we can believe.
    let mut client = peer;
    for entry in forwarded.iter().rev() {
        let Some(addr) = entry.and_then(forwarded_address) else { break };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// The address the per-address cap on pending connections counts a
/// connection or request under: the client's, or none for one of our own
/// proxies, whose connections carry many clients (SPEC §1.1).
pub fn counted_address(addr: IpAddr, trusted: &[IpNet]) -> Option<IpAddr> {
    let addr = addr.to_canonical();
    (!trusted.iter().any(|net| net.contains(&addr))).then_some(addr)
}

/// One `X-Forwarded-For` entry as an address: bare (`10.0.0.5`,
/// `2001:db8::1`), bracketed (`[2001:db8::1]`) or with a port
/// (`10.0.0.5:4711`, `[2001:db8::1]:4711`), as proxies write them.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let addr = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(addr.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// (section, token and its source, offers the bearer subprotocol)
    type Parsed = (String, Option<(String, TokenSource)>, bool);

    fn target(uri: &str, headers: &[(http::HeaderName, &str)]) -> Option<Parsed> {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        parse_target(&uri, &map).map(|t| (t.section.to_string(), t.token, t.offers_bearer))
    }

    #[test]
    fn finds_the_token_in_precedence_order() {
        let all = [(AUTHORIZATION, "Bearer from-header"), (SEC_WEBSOCKET_PROTOCOL, "bearer, from-protocol")];
        let (section, token, offers) = target("/ws/restaurant/s1/from-path?token=from-query", &all).unwrap();
        assert_eq!(section, "s1");
        assert_eq!(token, Some(("from-path".into(), TokenSource::Path)));
        assert!(offers);
        assert_eq!(
            target("/ws/restaurant/s1?token=q", &all).unwrap().1,
            Some(("from-header".into(), TokenSource::AuthorizationHeader))
        );
        assert_eq!(
            target("/ws/restaurant/s1?token=q", &all[1..]).unwrap().1,
            Some(("from-protocol".into(), TokenSource::Subprotocol))
        );
        assert_eq!(target("/ws/restaurant/s1?a=b&token=q", &[]).unwrap().1, Some(("q".into(), TokenSource::Query)));
        assert_eq!(target("/ws/restaurant/s1", &[(AUTHORIZATION, "Basic abc")]).unwrap().1, None);
    }

    #[test]
    fn resume_is_opted_in_with_or_without_a_token() {
        let resume = |uri: &str| parse_target(&uri.parse().unwrap(), &HeaderMap::new()).unwrap().resume;
        assert_eq!(resume("/ws/restaurant/s1/jwt"), None, "not opted in");
        assert_eq!(resume("/ws/restaurant/s1/jwt?resume="), Some(String::new()), "first connect");
        assert_eq!(resume("/ws/restaurant/s1/jwt?resume"), Some(String::new()));
        assert_eq!(resume("/ws/restaurant/s1?token=jwt&resume=AbC-_9"), Some("AbC-_9".into()));
    }

    #[test]
    fn only_our_paths_match() {
        assert!(target("/ws/restaurant/s1/t/extra", &[]).is_none());
        assert!(target("/ws/other/s1", &[]).is_none());
        assert_eq!(target("/ws/restaurant/s1/", &[]).unwrap().1, None);
    }

    #[test]
    fn client_address_believes_only_trusted_proxies_and_never_the_left_most_entry() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_str(value).unwrap());
            headers
        };
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let proxy = ip("10.1.2.3");
        let untrusted_peer = ip("198.51.100.7");

        assert_eq!(client_address(untrusted_peer, &xff("1.2.3.4"), &trusted), untrusted_peer, "a spoofer's header");
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy, "no header: the proxy itself");
        assert_eq!(client_address(proxy, &xff("203.0.113.5"), &trusted), ip("203.0.113.5"));
        assert_eq!(
            client_address(proxy, &xff("6.6.6.6, 203.0.113.5, 10.9.9.9"), &trusted),
            ip("203.0.113.5"),
            "right-most untrusted, past our own proxies"
        );
        assert_eq!(client_address(proxy, &xff("10.5.5.5"), &trusted), ip("10.5.5.5"), "only proxies: the first");
        assert_eq!(client_address(proxy, &xff("garbage"), &trusted), proxy);
        assert_eq!(client_address(proxy, &xff("6.6.6.6, junk, 10.7.7.7"), &trusted), ip("10.7.7.7"));
        assert_eq!(client_address(proxy, &xff("2001:db8::1"), &trusted), ip("2001:db8::1"));
    }

    #[test]
    fn client_addresses_are_read_as_proxies_write_them() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("203.0.113.5"));
        let mapped = ip("::ffff:10.1.2.3");
        assert_eq!(client_address(mapped, &headers, &trusted), ip("203.0.113.5"), "a mapped peer is its IPv4");
        assert_eq!(client_address(ip("::ffff:198.51.100.7"), &headers, &trusted), ip("198.51.100.7"));

        for (entry, expected) in [
            ("203.0.113.5:4711", "203.0.113.5"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("::ffff:203.0.113.5", "203.0.113.5"),
        ] {
            headers.insert(
                X_FORWARDED_FOR.clone(),
                HeaderValue::from_str(&format!("6.6.6.6, {entry}, 10.0.0.9:80")).unwrap(),
            );
            assert_eq!(client_address(ip("10.1.2.3"), &headers, &trusted), ip(expected), "{entry}");
        }

        // A line that is not ASCII cannot be read: the walk stops there.
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("6.6.6.6"));
        headers.append(X_FORWARDED_FOR.clone(), HeaderValue::from_bytes("203.0.113.5, caf\u{e9}".as_bytes()).unwrap());
        headers.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static("10.7.7.7"));
        assert_eq!(client_address(ip("10.1.2.3"), &headers, &trusted), ip("10.7.7.7"), "not 6.6.6.6 from before it");
    }

    #[test]
    fn our_proxies_are_counted_under_no_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(counted_address(ip("203.0.113.5"), &trusted), Some(ip("203.0.113.5")));
        assert_eq!(counted_address(ip("10.1.2.3"), &trusted), None);
        assert_eq!(counted_address(ip("::ffff:10.1.2.3"), &trusted), None, "a mapped proxy is still ours");
        assert_eq!(counted_address(ip("::ffff:203.0.113.5"), &trusted), Some(ip("203.0.113.5")));
    }

    #[test]
    fn routes_are_logged_by_kind_only() {
        let kind = |path: &str| route_kind(&path.parse().unwrap());
        assert_eq!(kind("/ws/restaurant/s1/secret.jwt"), "restaurant");
        assert_eq!(kind("/ws/restaurant/secret.jwt/s1"), "restaurant");
        assert_eq!(kind("/ws/tables/s1/secret.jwt"), "legacy_tables");
        assert_eq!(kind("/ws/secret.jwt"), "other");
    }

    #[test]
    fn recognises_websocket_upgrades() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert_eq!(websocket_key(&Method::GET, &headers), None, "no key");
        headers.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(websocket_key(&Method::GET, &headers).is_some());
        assert_eq!(websocket_key(&Method::POST, &headers), None);
    }
}
