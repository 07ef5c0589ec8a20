//! The snapshot call: `GET {REST_BASE_URL}{SECTION_SNAPSHOT_PATH}` with the
//! client's own token, on keep-alive HTTP/1.1 connections to the API. One
//! instance per shard, so its connections stay on the shard's thread; all of
//! them share one budget of API connections ([`ApiBudget`]).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, HOST};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::application::ports::{SnapshotError, SnapshotRequest, SnapshotSource, X_FORWARDED_FOR};
use crate::domain::ids::SectionId;
use crate::domain::snapshot::Snapshot;
use crate::telemetry::{Counted, METRICS};

use super::recent_snapshots::RecentSnapshots;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A section's layout is small; anything far bigger is not a snapshot.
const MAX_BODY_BYTES: usize = 16 << 20;
/// An API connection idle longer is not used again (and is closed when a
/// call comes across it): a proxy or NAT between may have dropped it without
/// a word. (hyper-util's pool default, which the gateway used before it kept
/// its own connections.)
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = SendRequest<Empty<Bytes>>;

/// What every shard's snapshot source shares, so that the API connections
/// of the whole instance stay within the descriptors the configuration
/// keeps for them: at most `SNAPSHOT_CONCURRENCY` calls in flight, and as
/// many connections kept idle between calls (one shard's idle connections
/// cannot serve another's calls, so without the second cap each shard could
/// keep that many).
pub struct ApiBudget {
    calls: Semaphore,
    idle: AtomicUsize,
    max_idle: usize,
}

impl ApiBudget {
    pub fn new(concurrency: usize) -> Arc<Self> {
        Arc::new(Self { calls: Semaphore::new(concurrency), idle: AtomicUsize::new(0), max_idle: concurrency })
    }

    /// Whether one more connection may be kept idle; it counts from now on.
    fn keep_idle(&self) -> bool {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |idle| (idle < self.max_idle).then_some(idle + 1))
            .is_ok()
    }

    /// An idle connection was taken out (used, or dropped).
    fn idle_taken(&self) {
        self.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The API's address, read once from `REST_BASE_URL`.
struct Api {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` header: the host, and the port when the URL names one
    /// other than 80.
    host: HeaderValue,
    /// The URL's path, put before `SECTION_SNAPSHOT_PATH` (empty for none).
    path_prefix: String,
}

impl Api {
    /// `None` when `base_url` is not `http://host[:port][/path]`, which the
    /// configuration has already refused.
    fn parse(base_url: &str) -> Option<Self> {
        let uri: Uri = base_url.parse().ok()?;
        let host = uri.host()?;
        let port = uri.port_u16();
        let authority = match port {
            Some(port) if port != 80 => format!("{host}:{port}"),
            _ => host.to_string(),
        };
        Some(Self {
            address: format!("{host}:{}", port.unwrap_or(80)),
            host: HeaderValue::from_str(&authority).ok()?,
            path_prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// Each shard keeps its own keep-alive connections, in a plain list: a call
/// takes one and puts it back once the answer is read. hyper-util's pool did
/// the same with a lock, shared state and a connect raced against every
/// checkout, which cost about 3 % of a connect's instructions.
pub struct HttpSnapshotSource {
    api: Api,
    path_template: String,
    timeout: Duration,
    /// Shared by every shard's source.
    budget: Arc<ApiBudget>,
    in_flight_gauge: IntGauge,
    /// This shard's connections to the API that no call is using, and since
    /// when.
    idle: RefCell<Vec<(Sender, Instant)>>,
    /// The last body each section's call read here, parsed.
    recent: RefCell<RecentSnapshots>,
}

impl HttpSnapshotSource {
    /// `base_url` is `REST_BASE_URL` as the configuration checked it.
    pub fn new(base_url: &str, path_template: &str, timeout: Duration, budget: Arc<ApiBudget>) -> Self {
        Self {
            api: Api::parse(base_url).expect("REST_BASE_URL is checked at start-up"),
            path_template: path_template.to_string(),
            timeout,
            budget,
            in_flight_gauge: METRICS.snapshot_calls_in_flight.clone(),
            idle: RefCell::default(),
            recent: RefCell::default(),
        }
    }

    /// Waits for a place among the calls in flight, then makes the call.
    async fn request_in_turn(&self, call: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        let _place = self.budget.calls.acquire().await.map_err(|_| unreachable("shutting down"))?;
        let _counted = Counted::new(&self.in_flight_gauge);
        self.request(call).await
    }

    async fn request(&self, call: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        let path = self.path_template.replace("{id}", &call.section.to_string());
        let request = Request::get(format!("{}{path}", self.api.path_prefix))
            .header(HOST, self.api.host.clone())
            .header(AUTHORIZATION, format!("Bearer {}", call.token))
            .header(ACCEPT, "application/json")
            // Exactly one address: the API's throttler keys on the first.
            .header(&X_FORWARDED_FOR, call.client_addr.to_string())
            .header(&X_REQUEST_ID, call.request_id)
            .body(Empty::new())
            .map_err(|_| unreachable("invalid request URI"))?;
        let (response, connection) = self.send(request).await?;
        let status = response.status();
        // Read whatever the status, so that the connection can carry the
        // next call: a 401 or 429 storm must not turn into a connect storm.
        // A connection whose answer was not read to its end (too big, cut
        // off, or the call was cancelled) is dropped, which closes it.
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await;
        if body.is_ok() && self.budget.keep_idle() {
            self.idle.borrow_mut().push((connection, Instant::now()));
        }
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(SnapshotError::Unauthorized),
            StatusCode::FORBIDDEN => return Err(SnapshotError::Forbidden),
            StatusCode::NOT_FOUND => return Err(SnapshotError::NotFound),
            StatusCode::TOO_MANY_REQUESTS => return Err(SnapshotError::RateLimited),
            status if status.is_client_error() => return Err(SnapshotError::Rejected(status.as_u16())),
            status => return Err(SnapshotError::ServerError(status.as_u16())),
        }
        let body = body.map_err(|_| SnapshotError::Unparseable)?.to_bytes();
        self.parse(call.section, &body)
    }

    /// Parses `body`, unless it is the one this shard read for the section
    /// last time.
    fn parse(&self, section: SectionId, body: &[u8]) -> Result<Snapshot, SnapshotError> {
        if let Some(snapshot) = self.recent.borrow().get(section, body) {
            METRICS.snapshot_bodies_reused.inc();
            return Ok(snapshot);
        }
        let snapshot = Snapshot::parse(body).map_err(|_| SnapshotError::Unparseable)?;
        self.recent.borrow_mut().keep(section, body, &snapshot);
        Ok(snapshot)
    }

    /// Sends on an idle connection when one is open, else on a new one. The
    /// API closes keep-alive connections it finds idle (Node's default is
    /// after 5 s): a request that such a connection could no longer take
    /// (hyper hands it back unsent) is sent again on a new one. A request
    /// that went out is never sent twice: if the API closes the connection
    /// just after it, the call fails, as it did with hyper-util.
    async fn send(&self, request: Request<Empty<Bytes>>) -> Result<(Response<Incoming>, Sender), SnapshotError> {
        let mut request = request;
        while let Some(mut connection) = self.take_idle() {
            match connection.try_send_request(request).await {
                Ok(response) => return Ok((response, connection)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(unreachable(failed.into_error())),
                },
            }
        }
        let mut connection = self.connect().await?;
        let response = connection.send_request(request).await.map_err(unreachable)?;
        Ok((response, connection))
    }

    /// The most recently used open connection. The ones passed over (the
    /// API hung up, or they sat too long) are dropped, which closes them.
    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let fresh_since = Instant::now().checked_sub(IDLE_TIMEOUT);
        std::iter::from_fn(|| idle.pop())
            .inspect(|_| self.budget.idle_taken())
            .find(|(connection, since)| connection.is_ready() && fresh_since.is_none_or(|fresh| *since >= fresh))
            .map(|(connection, _)| connection)
    }

    async fn connect(&self) -> Result<Sender, SnapshotError> {
        let stream = self.connect_any().await?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(unreachable)?;
        // The connection's I/O runs beside the session on this shard, and
        // ends when the API or the last sender closes it.
        tokio::task::spawn_local(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "API connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Tries the API's addresses in turn (a name may have an IPv6 and an
    /// IPv4 one), each for its share of `REST_TIMEOUT` as hyper-util did, so
    /// that one that never answers leaves time for the next.
    async fn connect_any(&self) -> Result<TcpStream, SnapshotError> {
        let addresses: Vec<_> = tokio::net::lookup_host(&self.api.address).await.map_err(unreachable)?.collect();
        let attempt = self.timeout / addresses.len().max(1) as u32;
        let mut last = format!("{} resolves to no address", self.api.address);
        for address in addresses {
            match tokio::time::timeout(attempt, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last = format!("{address}: {error}"),
                Err(_) => last = format!("{address}: no answer within {attempt:?}"),
            }
        }
        Err(unreachable(last))
    }
}

/// The API could not be reached or talked to, and why.
fn unreachable(why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Unreachable(why.to_string())
}

impl SnapshotSource for HttpSnapshotSource {
    /// `REST_TIMEOUT` covers the wait for a place too: a client waits no
    /// longer in all than one call may take.
    async fn fetch(&self, call: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        tokio::time::timeout(self.timeout, self.request_in_turn(call)).await.unwrap_or(Err(SnapshotError::TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::LocalSet;

    use super::*;
    use crate::domain::ids::SectionId;

    const BODY: &str = r#"{"data":{"id":"5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11","tables":[]}}"#;

    /// An API on a plain socket that answers every request with `status` and
    /// a section. With `close_after_answer` it closes each connection after
    /// its first answer, without saying so in the answer, as Node does to a
    /// keep-alive connection once it has sat idle. Returns its URL and how
    /// many connections it has accepted.
    async fn api(status: &'static str, close_after_answer: bool) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(read @ 1..) = stream.read(&mut chunk).await {
                        request.extend_from_slice(&chunk[..read]);
                        if !request.ends_with(b"\r\n\r\n") {
                            continue;
                        }
                        request.clear();
                        let answer = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                            BODY.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() || close_after_answer {
                            break;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    /// The section call every test makes.
    fn a_request() -> SnapshotRequest<'static> {
        let section = SectionId::parse("5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11").unwrap();
        SnapshotRequest { section, token: "jwt", client_addr: Ipv4Addr::LOCALHOST.into(), request_id: "r1" }
    }

    /// Three calls in a row: what each returned, and how many connections
    /// the API accepted for them.
    async fn call_three_times(
        status: &'static str,
        close_after_answer: bool,
    ) -> (Vec<Result<(), SnapshotError>>, usize) {
        let (url, accepted) = api(status, close_after_answer).await;
        let source = HttpSnapshotSource::new(&url, "/sections/{id}", Duration::from_secs(5), ApiBudget::new(1));
        let request = a_request();
        let mut outcomes = Vec::new();
        LocalSet::new()
            .run_until(async {
                for _ in 0..3 {
                    outcomes.push(source.fetch(request).await.map(|_| ()));
                }
            })
            .await;
        (outcomes, accepted.load(Ordering::SeqCst))
    }

    #[test]
    fn the_api_address_keeps_the_urls_port_and_path() {
        let api = Api::parse("http://api.internal:3000/v2").unwrap();
        assert_eq!((api.address.as_str(), api.host.to_str().unwrap()), ("api.internal:3000", "api.internal:3000"));
        assert_eq!(api.path_prefix, "/v2");
        let api = Api::parse("http://api").unwrap();
        assert_eq!((api.address.as_str(), api.host.to_str().unwrap()), ("api:80", "api"), "no port named");
        assert_eq!(Api::parse("http://api:80").unwrap().host.to_str().unwrap(), "api", "the default port");
        assert_eq!(api.path_prefix, "");
        assert_eq!(Api::parse("http://[::1]:8080").unwrap().address, "[::1]:8080");
    }

    #[tokio::test]
    async fn one_kept_alive_connection_carries_every_call() {
        assert_eq!(call_three_times("200 OK", false).await, (vec![Ok(()), Ok(()), Ok(())], 1));
    }

    #[tokio::test]
    async fn a_connection_the_api_closed_is_not_used_again() {
        assert_eq!(call_three_times("200 OK", true).await, (vec![Ok(()), Ok(()), Ok(())], 3));
    }

    /// Two shards' sources with room for one call and one idle connection:
    /// once the first shard keeps its connection, the second closes each of
    /// its own after the call, so the instance never holds more API
    /// connections than its budget.
    #[tokio::test]
    async fn the_instance_keeps_no_more_idle_connections_than_its_budget() {
        let (url, accepted) = api("200 OK", false).await;
        let budget = ApiBudget::new(1);
        let shard = || HttpSnapshotSource::new(&url, "/sections/{id}", Duration::from_secs(5), Arc::clone(&budget));
        let (first, second) = (shard(), shard());
        let request = a_request();
        let mut counts = Vec::new();
        LocalSet::new()
            .run_until(async {
                for source in [&first, &second, &second, &first] {
                    source.fetch(request).await.expect("a snapshot");
                    counts.push(accepted.load(Ordering::SeqCst));
                }
            })
            .await;
        assert_eq!(counts, vec![1, 2, 3, 3], "the second shard kept none; the first reused its own");
    }

    #[tokio::test]
    async fn an_error_answer_leaves_its_connection_for_the_next_call() {
        let refused = || Err(SnapshotError::Unauthorized);
        assert_eq!(call_three_times("401 Unauthorized", false).await, (vec![refused(), refused(), refused()], 1));
    }
}
