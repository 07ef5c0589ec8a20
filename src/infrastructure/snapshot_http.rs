//! The snapshot call: `GET {REST_BASE_URL}{SECTION_SNAPSHOT_PATH}` with the
//! client's own token, on a pooled hyper client. One instance per shard, so
//! pooled connections stay on the shard's thread.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::application::ports::{SnapshotError, SnapshotSource};
use crate::domain::ids::SectionId;
use crate::domain::snapshot::Snapshot;

/// A section's layout is small; anything far bigger is not a snapshot.
const MAX_BODY_BYTES: usize = 16 << 20;

pub struct HttpSnapshotSource {
    client: Client<HttpConnector, Empty<Bytes>>,
    base_url: String,
    path_template: String,
    timeout: Duration,
}

impl HttpSnapshotSource {
    pub fn new(base_url: &str, path_template: &str, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base_url: base_url.to_string(),
            path_template: path_template.to_string(),
            timeout,
        }
    }

    async fn request(&self, section: SectionId, token: &str) -> Result<Snapshot, SnapshotError> {
        let uri = format!("{}{}", self.base_url, self.path_template.replace("{id}", &section.to_string()));
        let request = Request::get(uri)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(ACCEPT, "application/json")
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
    async fn fetch(&self, section: SectionId, token: &str) -> Result<Snapshot, SnapshotError> {
        tokio::time::timeout(self.timeout, self.request(section, token)).await.unwrap_or(Err(SnapshotError::TimedOut))
    }
}
