//! `--with-prometheus`: Debian's Prometheus scraping the dev gateway's admin listener, with the
//! alert rules of `deploy/prometheus/alerts.yml` loaded, so that the dashboard's queries can be
//! tried against live numbers.

use std::path::Path;
use std::time::Duration;

use mesaya_testkit::prometheus::{self, Prometheus};

/// Scrapes more often than production would, so that a newcomer sees rates move.
const SCRAPE_EVERY: Duration = Duration::from_secs(2);

/// A few of the dashboard's queries (`deploy/grafana/mesaya-realtime.json`), to paste into
/// Prometheus's expression browser.
const QUERIES: [&str; 3] = [
    "sum(rate(mesaya_frames_sent_total[1m]))",
    "histogram_quantile(0.99, sum by (le) (rate(mesaya_delivery_seconds_bucket[1m])))",
    "histogram_quantile(0.99, sum by (topic, le) (rate(mesaya_kafka_record_age_seconds_bucket[1m])))",
];

pub const NOT_INSTALLED: &str =
    "--with-prometheus: prometheus is not installed (apt-get install prometheus, or set PROMETHEUS_BIN)";

/// Starts Prometheus on `port` against the admin listener on `admin_port`, waits until it is
/// ready and prints where it is.
pub async fn start(admin_port: u16, port: u16) -> Result<Prometheus, String> {
    let bin = prometheus::binary().ok_or(NOT_INSTALLED)?;
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/alerts.yml");
    let mut server = Prometheus::start(&bin, &format!("127.0.0.1:{admin_port}"), &[&rules], SCRAPE_EVERY, Some(port))?;
    server.wait_ready(Duration::from_secs(30)).await;
    println!("  prometheus: {} (scraping the admin listener every {SCRAPE_EVERY:?}; alerts at /alerts)", server.url());
    for query in QUERIES {
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        println!("              {}/graph?g0.expr={encoded}", server.url());
    }
    Ok(server)
}
