//! The gateway's stack (tansu, the stand-in API, the gateway) and the server a row measures.

use super::*;

// ---------------------------------------------------------------------------------------------
// The gateway stack

pub(crate) struct Stack {
    // Field order is drop order: the gateway goes before the broker and the API.
    pub(crate) gateway: Gateway,
    pub(crate) producer: FutureProducer,
    pub(crate) deliveries: Vec<DeliveryFuture>,
    pub(crate) produce_errors: usize,
    pub(crate) _api: StandInApi,
    pub(crate) _broker: Broker,
}

/// What the harness sets on the gateway, unless forwarded: room for every connection of a row
/// (`WS_MAX_CONNECTIONS` within the open-file limit of 20 000, beside `HTTP_MAX_PENDING` and the
/// descriptors the gateway keeps for the API and Kafka), every client a user of its own, and the
/// clients' connects, which all come from 127.0.0.1 at `LOAD_CONNECT_CONCURRENCY` at once, uncapped
/// per address.
pub(crate) const GATEWAY_SETTINGS: [(&str, &str); 5] = [
    ("WS_MAX_CONNECTIONS", "19200"),
    ("WS_MAX_CONNECTIONS_PER_USER", "0"),
    ("HTTP_MAX_PENDING", "256"),
    ("HTTP_MAX_PENDING_PER_IP", "0"),
    ("LOG_LEVEL", "warn"),
];

/// Gateway variables the harness forwards when they are set in its own environment.
pub(crate) const FORWARDED: [&str; 17] = [
    "SHARDS",
    "RESUME_SECRET",
    "RESUME_WINDOW",
    "RESUME_BUFFER",
    "RESUME_BUFFER_BYTES",
    "WS_QUEUE_MAX_FRAMES",
    "WS_QUEUE_MAX_BYTES",
    "KAFKA_FETCH_WAIT_MAX",
    "SNAPSHOT_CONCURRENCY",
    "WS_MAX_CONNECTIONS",
    "HTTP_MAX_PENDING",
    "HTTP_MAX_PENDING_PER_IP",
    "WS_PING_INTERVAL",
    "WS_WRITE_TIMEOUT",
    "WS_COMPRESSION",
    "WS_COMPRESSION_MIN_BYTES",
    "LOG_LEVEL",
];

/// The gateway's variables the harness sets besides the wiring (its own defaults, then the
/// forwarded ones).
pub(crate) fn gateway_env(event: EventKind) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> =
        GATEWAY_SETTINGS.iter().map(|(name, value)| (*name, value.to_string())).collect();
    env.push(("KAFKA_FETCH_WAIT_MAX", "10ms".to_string()));
    if event == EventKind::Reservation {
        env.push(("WS_PUBLIC_RESERVATION_FIELDS", public_reservation_fields()));
    }
    for name in FORWARDED {
        if let Ok(value) = std::env::var(name) {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
    }
    env
}

pub(crate) fn gateway_env_summary(event: EventKind) -> String {
    gateway_env(event).iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(" ")
}

impl Stack {
    pub(crate) async fn start(sections: &[String], settings: &Settings) -> Stack {
        let broker = Broker::start_memory().await;
        let api = stand_in_api(sections, settings.snapshot_tables);
        let mut env = gateway::wiring(&broker, &api, SECRET);
        for (name, value) in gateway_env(settings.event) {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
        let mut gateway = Gateway::start(&gateway_binary(), &env);
        gateway.wait_ready(Duration::from_secs(60)).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("linger.ms", std::env::var("LOAD_LINGER_MS").unwrap_or_else(|_| "1".into()))
            .set("message.timeout.ms", "30000")
            .create()
            .expect("producer");
        Stack { gateway, producer, deliveries: Vec::new(), produce_errors: 0, _api: api, _broker: broker }
    }

    pub(crate) async fn metrics(&self) -> String {
        self.gateway.get("/metrics").await.1
    }
}

/// The stand-in API serving each of `sections` with `snapshot_tables` tables.
pub(crate) fn stand_in_api(sections: &[String], snapshot_tables: usize) -> StandInApi {
    let api = StandInApi::start();
    for (s, section) in sections.iter().enumerate() {
        let tables = (0..snapshot_tables)
            .map(|k| fixtures::table_json(&snapshot_table_id(s, k as u64), section, fixtures::CREATED_AT))
            .collect();
        api.set_section(section, fixtures::nest_snapshot(section, tables));
    }
    api
}

pub(crate) enum Server {
    Gateway(Box<Stack>),
    Raw(RawServer),
}

impl Server {
    pub(crate) async fn start(kind: Kind, sections: &[String], settings: &Settings) -> Server {
        match kind {
            Kind::Gateway => Server::Gateway(Box::new(Stack::start(sections, settings).await)),
            Kind::Raw => Server::Raw(RawServer::start(settings.shards, None)),
            Kind::RawSnapshot => {
                Server::Raw(RawServer::start(settings.shards, Some(stand_in_api(sections, settings.snapshot_tables))))
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        match self {
            Server::Gateway(stack) => stack.gateway.pid(),
            Server::Raw(raw) => raw.child.id(),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        match self {
            Server::Gateway(stack) => stack.gateway.port(),
            Server::Raw(raw) => raw.port,
        }
    }

    pub(crate) fn publish(&mut self, events: &Events, section: usize, seq: u64) {
        let sent = events.now_us();
        match self {
            Server::Gateway(stack) => {
                let record = events.record(section, seq, sent);
                loop {
                    match stack.producer.send_result(FutureRecord::<(), _>::to(events.kind.topic()).payload(&record)) {
                        Ok(delivery) => {
                            stack.deliveries.push(delivery);
                            break;
                        }
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            _,
                        )) => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => {
                            stack.produce_errors += 1;
                            break;
                        }
                    }
                }
            }
            Server::Raw(raw) => raw.send_event(&events.sections[section], &events.frame(section, seq, sent)),
        }
    }

    pub(crate) fn flush(&mut self) {
        if let Server::Raw(raw) = self {
            raw.stdin.flush().expect("the raw writer's stdin");
        }
    }

    /// Waits for every produced record's acknowledgement; the number that failed.
    pub(crate) async fn settle(&mut self) -> usize {
        match self {
            Server::Gateway(stack) => {
                for delivery in std::mem::take(&mut stack.deliveries) {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        stack.produce_errors += 1;
                    }
                }
                stack.produce_errors
            }
            Server::Raw(_) => 0,
        }
    }

    /// Frames the server has written (gateway: `mesaya_frames_sent_total`; raw: written or
    /// queued on a socket).
    pub(crate) async fn frames_sent(&mut self) -> u64 {
        match self {
            Server::Gateway(stack) => metric_sum(&stack.metrics().await, "mesaya_frames_sent_total") as u64,
            Server::Raw(raw) => raw.stats().frames,
        }
    }

    /// Connections the server holds (gateway: `mesaya_connections`).
    pub(crate) async fn connections(&mut self) -> u64 {
        match self {
            Server::Gateway(stack) => metric_sum(&stack.metrics().await, "mesaya_connections") as u64,
            Server::Raw(raw) => raw.stats().conns,
        }
    }
}
