//! Metrics, exposed as Prometheus text on `/metrics`. Cross-cutting, like
//! logging: any layer may count into it. Label values are fixed sets
//! (reasons, outcomes, shard numbers), never ids. What is both logged and
//! counted is an internal event in [`events`].

pub mod events;
pub mod freshness;
pub mod logs;

use std::sync::LazyLock;

use prometheus::process_collector::ProcessCollector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub audience_connections: IntGaugeVec,
    pub frames_cut: IntCounterVec,
    pub upgrades_refused: IntCounterVec,
    pub http_pending: IntGauge,
    pub http_pending_evicted: IntCounter,
    pub http_pending_refused: IntCounterVec,
    pub events_consumed: IntCounter,
    pub events_routed: IntCounter,
    pub events_dropped: IntCounterVec,
    pub frames_sent: IntCounter,
    pub deflate_bytes_before: IntCounter,
    pub deflate_bytes_after: IntCounter,
    pub frames_deflated: IntCounter,
    pub frames_conflated: IntCounter,
    pub slow_consumer_closes: IntCounter,
    pub snapshot_seconds: HistogramVec,
    pub delivery_seconds: Histogram,
    pub snapshot_outcomes: IntCounterVec,
    pub snapshot_calls_in_flight: IntGauge,
    pub snapshot_bodies_reused: IntCounter,
    pub handoff_skipped: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub record_age_seconds: HistogramVec,
    pub last_record_timestamp: GaugeVec,
    pub shard_mailbox_pushed: IntCounterVec,
    pub shard_mailbox_popped: IntCounterVec,
    pub router_links: IntGaugeVec,
    pub client_messages: IntCounterVec,
    pub kafka_ready: IntGauge,
    pub resumes: IntCounterVec,
    pub frames_replayed: IntCounter,
    pub positions_sent: IntCounter,
    pub positions_withheld: IntCounter,
    pub resume_buffer_frames: IntGauge,
    pub resume_buffer_bytes: IntGauge,
    pub log_lines_dropped: IntCounter,
    pub token_refreshes: IntCounterVec,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::register);

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl Metrics {
    fn register() -> Self {
        let r = Registry::new();
        let snapshot_seconds = HistogramVec::new(
            HistogramOpts::new("mesaya_snapshot_duration_seconds", "Latency of the snapshot REST call")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["outcome"],
        )
        .expect("valid metric");
        r.register(Box::new(snapshot_seconds.clone())).expect("unique metric");
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "mesaya_delivery_seconds",
                "From routing a Kafka record to writing its frame to a client socket (the gateway's own latency)",
            )
            .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )
        .expect("valid metric");
        r.register(Box::new(delivery_seconds.clone())).expect("unique metric");
        let record_age_seconds = HistogramVec::new(
            HistogramOpts::new(
                "mesaya_kafka_record_age_seconds",
                "Age of each Kafka record when consumed: now minus its Kafka timestamp (late even when the lag reads 0)",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
            &["topic"],
        )
        .expect("valid metric");
        r.register(Box::new(record_age_seconds.clone())).expect("unique metric");
        let last_record_timestamp = GaugeVec::new(
            Opts::new(
                "mesaya_kafka_last_record_timestamp_seconds",
                "When a record was last consumed from the partition (Unix time; time() minus it is the time since)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        r.register(Box::new(last_record_timestamp.clone())).expect("unique metric");
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_start_time_seconds (restarts) and the rest.
        r.register(Box::new(ProcessCollector::for_self())).expect("unique metric");
        Self {
            connections: gauge_vec(&r, "mesaya_connections", "Open WebSocket connections", &["shard"]),
            audience_connections: gauge_vec(
                &r,
                "mesaya_audience_connections",
                "Live WebSocket connections by audience (staff see reservations whole, public see them cut)",
                &["audience"],
            ),
            frames_cut: counter_vec(
                &r,
                "mesaya_frames_cut_total",
                "Events that got a public frame with private fields left out, by entity",
                &["kind"],
            ),
            upgrades_refused: counter_vec(
                &r,
                "mesaya_upgrades_refused_total",
                "Upgrades answered with an HTTP error",
                &["status"],
            ),
            http_pending: gauge(
                &r,
                "mesaya_http_pending",
                "Connections on the public port that have not upgraded (at most HTTP_MAX_PENDING)",
            ),
            http_pending_evicted: counter(
                &r,
                "mesaya_http_pending_evicted_total",
                "Connections not upgraded closed at HTTP_MAX_PENDING, the longest-idle first, to make room",
            ),
            http_pending_refused: counter_vec(
                &r,
                "mesaya_http_pending_refused_total",
                "Connections not upgraded closed by a limit: per_ip (HTTP_MAX_PENDING_PER_IP), headers_too_large (431)",
                &["reason"],
            ),
            events_consumed: counter(&r, "mesaya_events_consumed_total", "Kafka records consumed"),
            events_routed: counter(&r, "mesaya_events_routed_total", "(event, section) deliveries sent to shards"),
            events_dropped: counter_vec(&r, "mesaya_events_dropped_total", "Kafka records skipped", &["reason"]),
            frames_sent: counter(&r, "mesaya_frames_sent_total", "Text frames written to clients"),
            deflate_bytes_before: counter(
                &r,
                "mesaya_compression_bytes_before_total",
                "Text frame payload bytes written to connections that negotiated permessage-deflate, as if uncompressed",
            ),
            deflate_bytes_after: counter(
                &r,
                "mesaya_compression_bytes_after_total",
                "Text frame payload bytes written to those connections as sent (compressed, or plain when small)",
            ),
            frames_deflated: counter(
                &r,
                "mesaya_frames_compressed_total",
                "Frames compressed (permessage-deflate): once per event variant and per snapshot body, not per client",
            ),
            frames_conflated: counter(
                &r,
                "mesaya_frames_conflated_total",
                "Queued frames replaced by a newer state of the same entity",
            ),
            slow_consumer_closes: counter(&r, "mesaya_slow_consumer_closes_total", "Clients closed with 4408"),
            snapshot_seconds,
            delivery_seconds,
            snapshot_outcomes: counter_vec(
                &r,
                "mesaya_snapshot_outcomes_total",
                "Snapshot calls by outcome",
                &["outcome"],
            ),
            snapshot_calls_in_flight: gauge(
                &r,
                "mesaya_snapshot_calls_in_flight",
                "Snapshot calls waiting for the API now (at most SNAPSHOT_CONCURRENCY)",
            ),
            snapshot_bodies_reused: counter(
                &r,
                "mesaya_snapshot_bodies_reused_total",
                "Snapshot bodies not parsed again: the same bytes as the section's last one on this shard",
            ),
            handoff_skipped: counter(
                &r,
                "mesaya_handoff_skipped_total",
                "Held events not sent because the snapshot already had them",
            ),
            consumer_lag: gauge_vec(
                &r,
                "mesaya_kafka_consumer_lag",
                "Messages behind the high watermark",
                &["topic", "partition"],
            ),
            record_age_seconds,
            last_record_timestamp,
            shard_mailbox_pushed: counter_vec(
                &r,
                "mesaya_shard_mailbox_pushed_total",
                "Messages sent to a shard",
                &["shard"],
            ),
            shard_mailbox_popped: counter_vec(
                &r,
                "mesaya_shard_mailbox_popped_total",
                "Messages a shard handled",
                &["shard"],
            ),
            router_links: gauge_vec(&r, "mesaya_router_links", "Links the router knows", &["kind"]),
            client_messages: counter_vec(&r, "mesaya_client_messages_total", "Frames received from clients", &["kind"]),
            kafka_ready: gauge(&r, "mesaya_kafka_ready", "1 when the consumer is connected and assigned"),
            resumes: counter_vec(
                &r,
                "mesaya_resumes_total",
                "Connections that brought a resume token, by outcome (resumed, or why they got a snapshot)",
                &["outcome"],
            ),
            frames_replayed: counter(&r, "mesaya_resume_frames_replayed_total", "Frames replayed to resumed clients"),
            positions_sent: counter(&r, "mesaya_resume_positions_sent_total", "section.position frames queued"),
            positions_withheld: counter(
                &r,
                "mesaya_resume_positions_withheld_total",
                "section.position frames not sent: more partitions than a resume token can name",
            ),
            resume_buffer_frames: gauge(&r, "mesaya_resume_buffer_frames", "Frames kept in the replay buffers"),
            resume_buffer_bytes: gauge(
                &r,
                "mesaya_resume_buffer_bytes",
                "Bytes kept in the replay buffers: frames and their bookkeeping",
            ),
            log_lines_dropped: counter(
                &r,
                "mesaya_log_lines_dropped_total",
                "Log lines dropped because the log writer's buffer was full (logging never blocks)",
            ),
            token_refreshes: counter_vec(
                &r,
                "mesaya_token_refreshes_total",
                "In-band token refreshes by outcome (refreshed, or the reason of auth.refresh_failed)",
                &["outcome"],
            ),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        // The log writer counts its own drops; the counter catches up here.
        let dropped = logs::dropped_lines();
        self.log_lines_dropped.inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("Prometheus text is UTF-8")
    }
}

/// One in `gauge` for as long as this lives, however that ends (a future
/// dropped half-way included).
pub struct Counted<'a>(&'a IntGauge);

impl<'a> Counted<'a> {
    pub fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
