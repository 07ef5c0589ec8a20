//! Serves the floor-plan page (`dev/floorplan.html`, one self-contained file) and the small JSON
//! that tells it where to connect, over plain HTTP on 127.0.0.1.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use crate::server::Server;

/// The page, compiled in so that the dev command and the browser test serve the same bytes.
pub const FLOORPLAN_HTML: &str = include_str!("../../../dev/floorplan.html");

/// What `GET /config.json` tells the page; its own query string (`?gateway=&section=&token=`)
/// overrides each field.
#[derive(Clone, Debug)]
pub struct PageConfig {
    /// The gateway's base WebSocket URL, e.g. `ws://127.0.0.1:8080`.
    pub gateway: String,
    /// A JWT the gateway accepts; the page sends it as the `bearer` subprotocol.
    pub token: String,
    /// `(id, name)` of the sections the page offers, the first shown by default.
    pub sections: Vec<(String, String)>,
}

impl PageConfig {
    fn to_json(&self) -> String {
        let sections: Vec<_> = self.sections.iter().map(|(id, name)| json!({"id": id, "name": name})).collect();
        json!({"gateway": self.gateway, "token": self.token, "sections": sections}).to_string()
    }
}

/// The running page server. Dropping it shuts it down.
pub struct FloorPlanPage {
    server: Server,
}

impl FloorPlanPage {
    /// Serves the page on 127.0.0.1:`port` (0: any free port); fails if the port is taken.
    pub fn start(port: u16, config: &PageConfig) -> Result<Self, String> {
        let config = Bytes::from(config.to_json());
        let server = Server::start("floor-plan page", port, move |request| {
            let response = match request.uri().path() {
                "/" | "/floorplan.html" => {
                    ok("text/html; charset=utf-8", Bytes::from_static(FLOORPLAN_HTML.as_bytes()))
                }
                "/config.json" => ok("application/json", config.clone()),
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
    async fn serves_the_page_and_its_config() {
        let config = PageConfig {
            gateway: "ws://127.0.0.1:8080".into(),
            token: "t0k3n".into(),
            sections: vec![("s-1".into(), "Terraza".into())],
        };
        let page = FloorPlanPage::start(0, &config).unwrap();
        let (status, html) = get(&page.url()).await;
        assert_eq!(status, 200);
        assert_eq!(html, FLOORPLAN_HTML);
        let (status, body) = get(&format!("{}config.json", page.url())).await;
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            json!({"gateway": "ws://127.0.0.1:8080", "token": "t0k3n", "sections": [{"id": "s-1", "name": "Terraza"}]})
        );
        assert_eq!(get(&format!("{}nope", page.url())).await.0, 404);
    }
}
