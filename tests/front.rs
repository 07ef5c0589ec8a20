//! End to end: the HTTP front, before any upgrade (SPEC §1.1, §1.4). Connections that have not
//! upgraded are bounded for the instance (`HTTP_MAX_PENDING`: the longest-idle is closed to make
//! room) and for each client address (`HTTP_MAX_PENDING_PER_IP`: the new one is closed at once,
//! unanswered), request heads are bounded (431), and with `ADMIN_PORT` the operations endpoints
//! live on a listener of their own, which a flood of the public port does not reach.
//!
//! Every address of 127.0.0.0/8 is this machine's: clients that must differ connect from
//! 127.0.0.2, 127.0.1.7 and so on. Real gateway binary, real tansu broker, real stand-in API,
//! real sockets.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use mesaya_testkit::{client, gateway, wait};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

const PENDING: &str = "mesaya_http_pending";
const EVICTED: &str = "mesaya_http_pending_evicted_total";
const REFUSED: &str = "mesaya_http_pending_refused_total";

/// The gateway's open-file limit in the flood tests: fewer descriptors than
/// the flood has connections.
const OPEN_FILES: u64 = 1400;
/// Connections in a flood.
const FLOOD: usize = 1500;
/// Connections per source address in a flood: within the default
/// `HTTP_MAX_PENDING_PER_IP`, so that only the instance's cap applies.
const FLOOD_PER_ADDRESS: usize = 30;
/// `HTTP_MAX_PENDING` in the flood tests.
const MAX_PENDING: usize = 20;
/// How often a flood connection sends a request: well within the 10 s
/// header read timeout, which so never ends it.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// The default `HTTP_MAX_PENDING_PER_IP`.
const PER_IP: usize = 32;
/// How soon a refused connection must be closed to count as "at once".
const AT_ONCE: Duration = Duration::from_secs(2);

fn address(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

async fn connect_from(local: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// An HTTP/1.1 keep-alive client on `stream`.
async fn keep_alive(stream: TcpStream) -> SendRequest<Empty<Bytes>> {
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    // The connection's I/O; it ends when the server closes or the sender is dropped.
    tokio::spawn(connection);
    sender
}

/// `GET path` with `headers` on a kept-alive connection: the status, or
/// `None` when the server closed the connection without an answer.
async fn ask(sender: &mut SendRequest<Empty<Bytes>>, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    sender.ready().await.ok()?;
    let mut request = http::Request::get(path).header("host", "gateway");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Empty::new()).unwrap()).await.ok()?;
    let status = response.status().as_u16();
    response.into_body().collect().await.ok()?;
    Some(status)
}

/// Whether the server closes `stream` within `within`, having sent nothing.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("the server sent bytes to a client that asked nothing"),
        Err(_) => false,
    }
}

/// `FLOOD` connections from `FLOOD / FLOOD_PER_ADDRESS` addresses that hold
/// their place in the HTTP phase for as long as the gateway lets them: each
/// sends a keep-alive request every `KEEP_ALIVE_EVERY`. Dropping it closes
/// them.
struct Flood {
    _connections: JoinSet<()>,
    /// Connections connected.
    connected: Arc<AtomicUsize>,
    /// Connections whose first request was answered, or that were closed.
    settled: Arc<AtomicUsize>,
}

impl Flood {
    fn start(port: u16) -> Flood {
        let (connected, settled) = (Arc::default(), Arc::<AtomicUsize>::default());
        let mut connections = JoinSet::new();
        for n in 0..FLOOD {
            let from = address(0, 1, 1 + (n / FLOOD_PER_ADDRESS) as u8);
            connections.spawn(hold(from, port, Arc::clone(&connected), Arc::clone(&settled)));
        }
        Flood { _connections: connections, connected, settled }
    }

    /// Waits, at most `WAIT`, until every connection has settled; returns
    /// how many connected. Does not panic: what the gateway made of the
    /// flood is for the test to check.
    async fn settle(&self) -> usize {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.settled.load(Ordering::Relaxed) < FLOOD && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(wait::POLL_INTERVAL).await;
        }
        self.connected.load(Ordering::Relaxed)
    }
}

async fn hold(from: IpAddr, port: u16, connected: Arc<AtomicUsize>, settled: Arc<AtomicUsize>) {
    let Ok(Ok(stream)) = tokio::time::timeout(WAIT, connect_from(from, port)).await else {
        settled.fetch_add(1, Ordering::Relaxed);
        return;
    };
    connected.fetch_add(1, Ordering::Relaxed);
    let mut sender = keep_alive(stream).await;
    let mut first = true;
    loop {
        let answered = ask(&mut sender, "/nothing-here", &[]).await.is_some();
        if std::mem::take(&mut first) {
            settled.fetch_add(1, Ordering::Relaxed);
        }
        if !answered {
            return;
        }
        tokio::time::sleep(KEEP_ALIVE_EVERY).await;
    }
}

/// With fewer descriptors than a flood has idle keep-alive connections, the
/// flood cannot take them all: past `HTTP_MAX_PENDING` the longest-idle
/// connection is closed to make room, so accepts never fail, a new client
/// still upgrades and gets its snapshot (its API call finds a descriptor),
/// and `/readyz` answers.
#[tokio::test]
async fn a_flood_of_idle_connections_beyond_the_descriptors_leaves_room_for_clients_and_probes() {
    let stack = Stack::start_with_open_files(&[("HTTP_MAX_PENDING", MAX_PENDING.to_string())], OPEN_FILES).await;
    let section = new_id();
    stack.serve_section(&section, vec![]);

    let flood = Flood::start(stack.gateway.port());
    let connected = flood.settle().await;
    assert!(connected > OPEN_FILES as usize, "the flood holds more connections than the gateway has descriptors");
    let (mut client, snapshot) = stack.watch(&section).await;
    assert_eq!(snapshot["payload"]["id"], section.as_str());
    assert_eq!(stack.gateway.get("/readyz").await.0, 200);

    let pending = stack.metric(PENDING, "").await;
    assert!(pending <= MAX_PENDING as f64, "{pending} connections not upgraded");
    let evicted = stack.metric(EVICTED, "").await;
    assert!(evicted >= (connected - MAX_PENDING) as f64, "{evicted} evicted of {connected}");
    assert!(!stack.gateway.logs().contains("accept failed"), "no accept ran out of descriptors");
    client.close().await;
}

/// The `HTTP_MAX_PENDING_PER_IP`+1st connection from one address that has
/// not upgraded is closed at once, unanswered, while another address is
/// served; a place comes back when one of the address's connections ends.
#[tokio::test]
async fn one_address_holds_at_most_http_max_pending_per_ip_connections_before_the_upgrade() {
    let stack = Stack::start().await;
    let section = new_id();
    stack.serve_section(&section, vec![]);
    let (greedy, port) = (address(0, 0, 2), stack.gateway.port());

    let mut held = Vec::new();
    for _ in 0..=PER_IP {
        held.push(connect_from(greedy, port).await.expect("connect"));
    }
    // Two shards accept concurrently: which of them comes last is theirs to say.
    let closed = join_all(held.iter_mut().map(|stream| closed_within(stream, AT_ONCE))).await;
    assert_eq!(closed.iter().filter(|closed| **closed).count(), 1, "one of {} closed at once", PER_IP + 1);
    held.remove(closed.iter().position(|closed| *closed).unwrap());

    let (mut client, _) = stack.watch(&section).await;
    assert_eq!(stack.gateway.get("/readyz").await.0, 200);
    assert_eq!(stack.metric(REFUSED, r#"reason="per_ip""#).await, 1.0);
    // The held ones and the probe's own connection (the earlier probes' may
    // take a moment to be seen closing).
    wait_metric(&stack, PENDING, "the held connections", |n| n == (PER_IP + 1) as f64).await;

    drop(held.pop());
    wait_metric(&stack, PENDING, "the closed connection to leave", |n| n == PER_IP as f64).await;
    let mut again = connect_from(greedy, port).await.expect("connect");
    assert!(!closed_within(&mut again, QUIET).await, "the freed place is taken again");
    assert_eq!(stack.metric(REFUSED, r#"reason="per_ip""#).await, 1.0);
    client.close().await;
}

/// Behind a trusted proxy the cap counts the forwarded client, request by
/// request: a proxy connection whose request is for a client that already
/// holds its connections is closed unanswered, another client's is
/// answered, and the proxy's own address is never capped.
#[tokio::test]
async fn behind_a_trusted_proxy_the_cap_counts_each_forwarded_client_not_the_proxy() {
    let stack = Stack::start_with(&[("TRUSTED_PROXIES", "127.0.0.2".into())]).await;
    let (proxy, port) = (address(0, 0, 2), stack.gateway.port());
    let for_client = |client: &'static str| [("x-forwarded-for", client)];

    let mut kept = Vec::new();
    for _ in 0..PER_IP {
        let mut connection = keep_alive(connect_from(proxy, port).await.unwrap()).await;
        assert_eq!(ask(&mut connection, "/nothing-here", &for_client("203.0.113.7")).await, Some(404));
        kept.push(connection);
    }
    let mut one_more = keep_alive(connect_from(proxy, port).await.unwrap()).await;
    assert_eq!(ask(&mut one_more, "/nothing-here", &for_client("203.0.113.7")).await, None, "closed unanswered");
    let mut other_client = keep_alive(connect_from(proxy, port).await.unwrap()).await;
    assert_eq!(ask(&mut other_client, "/nothing-here", &for_client("203.0.113.8")).await, Some(404));

    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(connect_from(proxy, port).await.unwrap());
    }
    let closed = join_all(idle.iter_mut().map(|stream| closed_within(stream, QUIET))).await;
    assert!(closed.iter().all(|closed| !closed), "{} connections from the proxy, none capped", PER_IP + 1 + 8);
    assert_eq!(stack.metric(REFUSED, r#"reason="per_ip""#).await, 1.0);
}

/// A request head with more headers, or more bytes, than the front takes is
/// answered 431; one within both limits is served.
#[tokio::test]
async fn request_heads_beyond_the_limits_are_answered_431() {
    let stack = Stack::start().await;
    let url = format!("{}/healthz", stack.gateway.url());
    let fillers = |count: usize, bytes: usize| -> Vec<(String, String)> {
        (0..count).map(|n| (format!("x-filler-{n}"), "v".repeat(bytes))).collect()
    };
    let get = async |headers: Vec<(String, String)>| {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        client::get_with(&url, &headers).await.0
    };
    assert_eq!(get(fillers(40, 200)).await, 200, "40 headers, 8 KB: within the limits");
    assert_eq!(get(fillers(60, 1)).await, 431, "60 headers");
    assert_eq!(get(fillers(1, 20 << 10)).await, 431, "a 20 KiB header");
    assert_eq!(stack.metric(REFUSED, r#"reason="headers_too_large""#).await, 2.0);
}

/// With `ADMIN_PORT` set, `/healthz`, `/readyz` and `/metrics` are served on
/// the admin listener only (404 on the public port, and the admin listener
/// serves nothing else); while the public port is flooded beyond its
/// descriptors, the admin listener still answers. It ends with the drain
/// after a SIGTERM, not at the drain's deadline.
#[tokio::test]
async fn with_admin_port_the_probes_have_a_listener_of_their_own_that_a_flood_does_not_reach() {
    let admin_port = gateway::free_port();
    let mut stack = Stack::start_with_open_files(
        &[
            ("ADMIN_PORT", admin_port.to_string()),
            ("HTTP_MAX_PENDING", MAX_PENDING.to_string()),
            // Far beyond WAIT: a process that waited for the deadline would show.
            ("DRAIN_TIMEOUT", "60s".to_string()),
        ],
        OPEN_FILES,
    )
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(stack.gateway.get(path).await.0, 404, "{path} on the public port");
        assert_eq!(stack.gateway.get_ops(path).await.0, 200, "{path} on the admin port");
    }
    let section = new_id();
    stack.serve_section(&section, vec![]);
    for path in [format!("/ws/restaurant/{section}/{}", token()), "/nothing-here".to_string()] {
        assert_eq!(stack.gateway.get_ops(&path).await.0, 404, "the admin listener serves the probes only");
    }

    let flood = Flood::start(stack.gateway.port());
    assert_eq!(stack.gateway.get_ops("/readyz").await.0, 200, "while the flood comes in");
    let connected = flood.settle().await;
    assert!(connected > OPEN_FILES as usize);
    assert_eq!(stack.gateway.get_ops("/readyz").await.0, 200, "with the flood in place");
    assert_eq!(stack.gateway.get_ops("/healthz").await.0, 200);
    assert!(stack.metric(EVICTED, "").await >= (connected - MAX_PENDING) as f64);
    let (mut client, _) = stack.watch(&section).await;
    client.close().await;
    wait_metric(&stack, "mesaya_connections", "the client to leave", |n| n == 0.0).await;

    stack.gateway.terminate();
    let exit = stack.gateway.wait_exit(WAIT).await.expect("the process exits once drained");
    assert_eq!(exit.code(), Some(0));
    assert!(!stack.gateway.logs().contains("threads still running"), "every thread ended with the drain");
}
