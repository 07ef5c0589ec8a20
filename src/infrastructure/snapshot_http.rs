//! The snapshot call: `GET {REST_BASE_URL}{SECTION_SNAPSHOT_PATH}` with the
//! client's own token, on a pooled hyper client. One instance per shard, so
//! pooled connections stay on the shard's thread; all of them share one
//! limit on calls in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderName, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use prometheus::IntGauge;
use tokio::sync::Semaphore;

use crate::application::ports::{SnapshotError, SnapshotRequest, SnapshotSource};
use crate::domain::snapshot::Snapshot;
use crate::telemetry::{Counted, METRICS};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A section's layout is small; anything far bigger is not a snapshot.
const MAX_BODY_BYTES: usize = 16 << 20;

pub struct HttpSnapshotSource {
    client: Client<HttpConnector, Empty<Bytes>>,
    base_url: String,
    path_template: String,
    timeout: Duration,
    /// Calls in flight on the whole instance: shared by every shard's source.
    in_flight: Arc<Semaphore>,
    in_flight_gauge: IntGauge,
}

impl HttpSnapshotSource {
    /// `in_flight` holds one permit per call allowed at once, instance-wide.
    pub fn new(base_url: &str, path_template: &str, timeout: Duration, in_flight: Arc<Semaphore>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base_url: base_url.to_string(),
            path_template: path_template.to_string(),
            timeout,
            in_flight,
            in_flight_gauge: METRICS.snapshot_calls_in_flight.clone(),
        }
    }

    /// Waits for a place among the calls in flight, then makes the call.
    async fn request_in_turn(&self, call: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        let _place = self.in_flight.acquire().await.map_err(|_| SnapshotError::Unreachable("shutting down".into()))?;
        let _counted = Counted::new(&self.in_flight_gauge);
        self.request(call).await
    }

    async fn request(&self, call: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        let uri = format!("{}{}", self.base_url, self.path_template.replace("{id}", &call.section.to_string()));
        let request = Request::get(uri)
            .header(AUTHORIZATION, format!("Bearer {}", call.token))
            .header(ACCEPT, "application/json")
            // Exactly one address: the API's throttler keys on the first.
            .header(&X_FORWARDED_FOR, call.client_addr.to_string())
            .header(&X_REQUEST_ID, call.request_id)
            .body(Empty::new())
            .map_err(|_| SnapshotError::Unreachable("invalid request URI".into()))?;
        let response = self.client.request(request).await.map_err(|e| SnapshotError::Unreachable(e.to_string()))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(SnapshotError::Unauthorized),
            StatusCode::FORBIDDEN => return Err(SnapshotError::Forbidden),
            StatusCode::NOT_FOUND => return Err(SnapshotError::NotFound),
            StatusCode::TOO_MANY_REQUESTS => return Err(SnapshotError::RateLimited),
            status if status.is_client_error() => return Err(SnapshotError::Rejected(status.as_u16())),
            status => return Err(SnapshotError::ServerError(status.as_u16())),
        }
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|_| SnapshotError::Unparseable)?
            .to_bytes();
        Snapshot::parse(&body).map_err(|_| SnapshotError::Unparseable)
    }
}

impl SnapshotSource for HttpSnapshotSource {
    /// `REST_TIMEOUT` covers the wait for a place too: a client waits no
    /// longer in all than one call may take.
    async fn fetch(&self, call: SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        tokio::time::timeout(self.timeout, self.request_in_turn(call)).await.unwrap_or(Err(SnapshotError::TimedOut))
    }
}
