//! Serves the floor-plan page (`dev/floorplan.html`), the client library's bundle it is built on
//! (`dev/mesaya-realtime.min.js`, made from `clients/js` by `npm run bundle:dev`), the small JSON
//! that tells it where to connect, and fresh tokens, over plain HTTP on 127.0.0.1.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use crate::server::Server;

/// The page and the library bundle, compiled in so that the dev command and the browser test serve
/// the same bytes, and a person needs no JavaScript tooling to see the page.
pub const FLOORPLAN_HTML: &str = include_str!("../../../dev/floorplan.html");
pub const LIBRARY_BUNDLE: &str = include_str!("../../../dev/mesaya-realtime.min.js");

/// Makes a JWT the gateway accepts, each time the page asks (`GET /token`): the page sends it as
/// the `bearer` subprotocol, and again in band when the gateway says it is expiring.
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// What `GET /config.json` tells the page; its own query string (`?gateway=&section=&token=`)
/// overrides each field (a `token` given there is used for every connection and refresh).
#[derive(Clone)]
pub struct PageConfig {
    /// The gateway's base WebSocket URL, e.g. `ws://127.0.0.1:8080`.
    pub gateway: String,
    pub tokens: TokenSource,
    /// `(id, name)` of the sections the page offers, the first shown by default.
    pub sections: Vec<(String, String)>,
}

impl PageConfig {
    fn to_json(&self) -> String {
        let sections: Vec<_> = self.sections.iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
        json!({"gateway": self.gateway, "sections": sections}).to_string()
    }
}

/// The running page server. Dropping it shuts it down.
pub struct FloorPlanPage {
    server: Server,
}

impl FloorPlanPage {
    /// Serves the page on 127.0.0.1:`port` (0: any free port); fails if the port is taken.
    pub fn start(port: u16, config: &PageConfig) -> Result<Self, String> {
        let tokens = config.tokens.clone();
        let config = Bytes::from(config.to_json());
        let server = Server::start("floor-plan page", port, move |request| {
            let response = match request.uri().path() {
                "/" | "/floorplan.html" => {
                    ok("text/html; charset=utf-8", Bytes::from_static(FLOORPLAN_HTML.as_bytes()))
                }
                "/mesaya-realtime.min.js" => {
                    ok("text/javascript; charset=utf-8", Bytes::from_static(LIBRARY_BUNDLE.as_bytes()))
                }
                "/config.json" => ok("application/json", config.clone()),
                "/token" => ok("text/plain", Bytes::from(tokens())),
                _ => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(b"not found")))
                    .expect("valid response"),
            };
            async move { response }
        })?;
        Ok(Self { server })
    }

    /// `http://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("{}/", self.server.base_url())
    }
}

fn ok(content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        // The page is edited while the dev command runs: a reload must show the new file.
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(body))
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::get;

    #[tokio::test]
    async fn serves_the_page_its_library_its_config_and_a_new_token_each_time() {
        let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        let config = PageConfig {
            gateway: "ws://127.0.0.1:8080".into(),
            tokens: Arc::new(move || format!("t0k3n-{}", counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed))),
            sections: vec![("s-1".into(), "Terraza".into())],
        };
        let page = FloorPlanPage::start(0, &config).unwrap();
        let (status, html) = get(&page.url()).await;
        assert_eq!(status, 200);
        assert_eq!(html, FLOORPLAN_HTML);
        assert_eq!(get(&format!("{}mesaya-realtime.min.js", page.url())).await, (200, LIBRARY_BUNDLE.to_string()));
        let (status, body) = get(&format!("{}config.json", page.url())).await;
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, json!({"gateway": "ws://127.0.0.1:8080", "sections": [{"id": "s-1", "name": "Terraza"}]}));
        assert_eq!(get(&format!("{}token", page.url())).await, (200, "t0k3n-0".to_string()));
        assert_eq!(get(&format!("{}token", page.url())).await, (200, "t0k3n-1".to_string()));
        assert_eq!(get(&format!("{}nope", page.url())).await.0, 404);
    }
}
