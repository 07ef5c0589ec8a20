//! The Kafka adapter: one thread, one rdkafka consumer, feeding every record
//! to the ingest use case (`application::ingest`).
//!
//! Offsets are an explicit lifecycle here:
//! 1. *Rebuild*: read every partition of the sections, tables, objects and
//!    section-objects topics from its earliest retained offset up to the
//!    high watermark seen at start, teaching the router the tables, links,
//!    objects and restaurants of sections made before this process started.
//! 2. *Live*: join a group of our own (unique suffix, so every instance gets
//!    every partition). On every assignment each partition gets an explicit
//!    start: its resume point if we consumed it before (a rejoin after a
//!    broker outage loses nothing), where the rebuild stopped for
//!    section-objects, else its high watermark *queried now* (latest). The
//!    consumer reports ready only after that, so an event produced once
//!    `/readyz` says 200 is never skipped by a lazily resolved "latest".
//!
//! Nothing is committed: a restarted instance starts from latest again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::Receiver;
use rdkafka::admin::{AdminClient, AdminOptions, OwnedResourceSpecifier, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use regex::Regex;

use prometheus::IntGauge;

use crate::application::ingest::{Ingest, Record};
use crate::application::ports::{Dispatch, LearnedSection};
use crate::application::readiness::Readiness;
use crate::application::router::LinkCounts;
use crate::config::KafkaSettings;
use crate::domain::entity::EntityKind;
use crate::domain::envelope;
use crate::domain::position::{PartitionId, Position, Positions};
use crate::shutdown::Shutdown;
use crate::telemetry::METRICS;
use crate::telemetry::events::{RecordSkipped, ReservationsExpired};
use crate::telemetry::freshness::Freshness;

const POLL_INTERVAL: Duration = Duration::from_millis(100);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_DELAY: Duration = Duration::from_secs(2);
const RETENTION_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

type PartitionKey = (String, i32);

/// `KAFKA_TOPICS`: exact names and `^regex` patterns.
struct TopicSelection(Vec<Result<String, Regex>>);

impl TopicSelection {
    fn new(topics: &[String]) -> Self {
        Self(
            topics
                .iter()
                .map(|topic| match topic.strip_prefix('^') {
                    // Validated at configuration time.
                    Some(_) => Err(Regex::new(topic).expect("KAFKA_TOPICS regex validated by config")),
                    None => Ok(topic.clone()),
                })
                .collect(),
        )
    }

    fn selects(&self, topic: &str) -> bool {
        self.0.iter().any(|entry| match entry {
            Ok(name) => name == topic,
            Err(pattern) => pattern.is_match(topic),
        })
    }
}

/// The kinds whose retained history the rebuild reads: the ones that
/// teach the maps (tables, links, objects, restaurants of sections and
/// their owners).
const REBUILT_KINDS: [EntityKind; 5] =
    [EntityKind::Section, EntityKind::Table, EntityKind::Object, EntityKind::SectionObject, EntityKind::Restaurant];

/// The `mesaya_router_links` gauges, resolved once: set after every record.
struct LinkGauges {
    tables: IntGauge,
    section_objects: IntGauge,
    objects: IntGauge,
    restaurants: IntGauge,
    restaurant_owners: IntGauge,
    held_reservations: IntGauge,
}

impl LinkGauges {
    fn new() -> Self {
        let gauge = |kind| METRICS.router_links.with_label_values(&[kind]);
        Self {
            tables: gauge("table"),
            section_objects: gauge("section_object"),
            objects: gauge("object"),
            restaurants: gauge("restaurant"),
            restaurant_owners: gauge("restaurant_owner"),
            held_reservations: gauge("held_reservation"),
        }
    }

    fn set(&self, counts: LinkCounts) {
        self.tables.set(counts.tables as i64);
        self.section_objects.set(counts.section_objects as i64);
        self.objects.set(counts.objects as i64);
        self.restaurants.set(counts.restaurants as i64);
        self.restaurant_owners.set(counts.restaurant_owners as i64);
        self.held_reservations.set(counts.held_reservations as i64);
    }
}

pub struct KafkaIngest<D> {
    settings: KafkaSettings,
    group_id: String,
    ingest: Ingest<D>,
    learned_sections: Receiver<LearnedSection>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
    link_gauges: LinkGauges,
    freshness: Freshness,
}

impl<D: Dispatch> KafkaIngest<D> {
    pub fn new(
        settings: KafkaSettings,
        ingest: Ingest<D>,
        learned_sections: Receiver<LearnedSection>,
        readiness: Arc<Readiness>,
        shutdown: Shutdown,
    ) -> Self {
        let group_id = format!("{}-{}", settings.group_id_prefix, uuid::Uuid::new_v4().simple());
        Self {
            settings,
            group_id,
            ingest,
            learned_sections,
            readiness,
            shutdown,
            link_gauges: LinkGauges::new(),
            freshness: Freshness::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Runs until shutdown. Broker trouble is retried, never fatal.
    pub fn run(mut self) {
        tracing::info!(group_id = %self.group_id, brokers = %self.settings.brokers, "kafka ingest starting");
        let start_offsets = loop {
            match self.rebuild_links() {
                Ok(offsets) => break offsets,
                Err(error) => {
                    tracing::warn!(%error, "rebuilding section-object links failed; retrying");
                    if self.sleep_unless_stopped(RETRY_DELAY) {
                        return;
                    }
                }
            }
        };
        self.readiness.set_links_rebuilt();
        let counts = self.ingest.link_counts();
        self.link_gauges.set(counts);
        tracing::info!(
            tables = counts.tables,
            section_object_links = counts.section_objects,
            objects = counts.objects,
            restaurants = counts.restaurants,
            "tables, links and objects rebuilt"
        );

        let consumer = loop {
            match self.live_consumer(start_offsets.clone()) {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::warn!(%error, "creating the kafka consumer failed; retrying");
                    if self.sleep_unless_stopped(RETRY_DELAY) {
                        return;
                    }
                }
            }
        };
        while !self.stopped() {
            let polled = consumer.poll(POLL_INTERVAL);
            for (partition, start) in consumer.context().take_assigned() {
                self.ingest.assigned(partition, start);
            }
            let record = match &polled {
                Some(Ok(message)) => Some(Record {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    payload: message.payload().unwrap_or_default(),
                }),
                _ => None,
            };
            // After the poll, which may block for a whole interval, and
            // before its record: a reservation published right after a client
            // got a snapshot naming its table must find the table (a shard
            // reports the tables before it writes the snapshot frame). And
            // every turn, records or not: on quiet topics or during a broker
            // outage the reports would pile up, and held reservations must
            // expire on time.
            self.learn_sections(record.map(|record| record.position()));
            ReservationsExpired { count: self.ingest.expire_held() }.emit();
            if let (Some(record), Some(Ok(message))) = (record, &polled) {
                self.freshness.consumed(
                    record.topic,
                    record.partition,
                    message.timestamp().to_millis(),
                    std::time::SystemTime::now(),
                );
                self.handle_record(record);
                consumer.context().resume_after(record.topic, record.partition, record.offset);
            }
            if let Some(Err(error)) = &polled {
                tracing::warn!(%error, "kafka consumer error");
            }
            self.ingest.tell_progress(record.is_none());
        }
        self.readiness.set_assigned(false);
        tracing::info!("kafka ingest stopped");
    }

    fn sleep_unless_stopped(&self, duration: Duration) -> bool {
        let deadline = std::time::Instant::now() + duration;
        while std::time::Instant::now() < deadline {
            if self.stopped() {
                return true;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.stopped()
    }

    /// What snapshots showed, reported by the shards. `upcoming` is the
    /// record about to be handled, if any.
    fn learn_sections(&mut self, upcoming: Option<Position>) {
        for learned in self.learned_sections.try_iter() {
            let released = self.ingest.learn_section(learned, upcoming);
            METRICS.events_routed.inc_by(released as u64);
        }
    }

    fn handle_record(&mut self, record: Record<'_>) {
        METRICS.events_consumed.inc();
        match self.ingest.handle(record) {
            Ok(sections) => METRICS.events_routed.inc_by(sections as u64),
            Err(skip) => RecordSkipped {
                topic: record.topic,
                partition: record.partition,
                offset: record.offset,
                reason: skip.label(),
            }
            .emit(),
        }
        self.link_gauges.set(self.ingest.link_counts());
    }

    /// Phase 1 of the offset lifecycle. Returns each rebuilt partition's high
    /// watermark: where the live consumer takes over.
    fn rebuild_links(&mut self) -> KafkaResult<Positions> {
        let consumer: BaseConsumer = client_config(&self.settings, &format!("{}-rebuild", self.group_id))
            .set("enable.partition.eof", "true")
            .create()?;
        let selection = TopicSelection::new(&self.settings.topics);
        let metadata = consumer.fetch_metadata(None, METADATA_TIMEOUT)?;
        let mut ends = Positions::default();
        let mut remaining = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        let mut rebuilt_topics = Vec::new();
        for topic in metadata.topics() {
            let name = topic.name();
            let rebuilt = envelope::topic_kind(name).is_some_and(|kind| REBUILT_KINDS.contains(&kind));
            if !rebuilt || !selection.selects(name) {
                continue;
            }
            rebuilt_topics.push(name.to_string());
            for partition in topic.partitions() {
                let (low, high) = consumer.fetch_watermarks(name, partition.id(), METADATA_TIMEOUT)?;
                ends.advance(PartitionId::new(name, partition.id()), high);
                if high > low {
                    assignment.add_partition_offset(name, partition.id(), Offset::Beginning)?;
                    remaining.insert((name.to_string(), partition.id()), high);
                }
            }
        }
        self.warn_on_finite_retention(&rebuilt_topics);
        if remaining.is_empty() {
            return Ok(ends);
        }
        consumer.assign(&assignment)?;
        while !remaining.is_empty() && !self.stopped() {
            self.learn_sections(None);
            match consumer.poll(POLL_INTERVAL) {
                None => {}
                Some(Ok(message)) => {
                    self.ingest.rebuild(message.topic(), message.payload().unwrap_or_default());
                    let key = (message.topic().to_string(), message.partition());
                    if remaining.get(&key).is_some_and(|&high| message.offset() + 1 >= high) {
                        remaining.remove(&key);
                    }
                }
                // EOF names only a partition number, so ask where each
                // partition stands: compaction can leave the last offsets
                // below the high watermark without a record.
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    for element in consumer.position()?.elements() {
                        let key = (element.topic().to_string(), element.partition());
                        if let (Offset::Offset(position), Some(&high)) = (element.offset(), remaining.get(&key))
                            && position >= high
                        {
                            remaining.remove(&key);
                        }
                    }
                }
                Some(Err(error)) => return Err(error),
            }
        }
        Ok(ends)
    }

    /// What is older than a rebuilt topic's retention cannot be rebuilt: say
    /// so once at start. A broker that cannot answer is not an error.
    fn warn_on_finite_retention(&self, topics: &[String]) {
        let asked = || -> KafkaResult<Vec<(String, String)>> {
            let admin: AdminClient<DefaultClientContext> = client_config(&self.settings, &self.group_id).create()?;
            let specifiers: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
            // Short: a broker that does not answer (librdkafka's mock cluster)
            // must not hold readiness back for long.
            let options = AdminOptions::new().request_timeout(Some(RETENTION_QUERY_TIMEOUT));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|_| KafkaError::AdminOpCreation("no runtime for the admin call".into()))?;
            let described = runtime.block_on(admin.describe_configs(&specifiers, &options))?;
            Ok(described
                .into_iter()
                .flatten()
                .filter_map(|resource| {
                    let OwnedResourceSpecifier::Topic(topic) = &resource.specifier else { return None };
                    let retention = resource.get("retention.ms")?.value.clone()?;
                    Some((topic.clone(), retention))
                })
                .collect())
        };
        match asked() {
            Ok(retentions) => {
                for (topic, retention_ms) in retentions.into_iter().filter(|(_, ms)| ms != "-1") {
                    tracing::warn!(
                        topic,
                        retention_ms,
                        "finite retention: tables, links, objects and restaurant owners older than this are forgotten at a restart; \
                         give this topic unlimited retention (retention.ms=-1)"
                    );
                }
            }
            Err(error) => tracing::debug!(%error, "the broker did not describe topic retention"),
        }
    }

    /// Phase 2: the group consumer that feeds the router.
    fn live_consumer(&self, start_offsets: Positions) -> KafkaResult<BaseConsumer<IngestContext>> {
        let context = IngestContext {
            readiness: Arc::clone(&self.readiness),
            resume_points: Mutex::new(start_offsets),
            assigned: Mutex::default(),
        };
        let consumer: BaseConsumer<IngestContext> = client_config(&self.settings, &self.group_id)
            .set("statistics.interval.ms", "1000")
            .set("fetch.wait.max.ms", self.settings.fetch_wait_max.as_millis().to_string())
            // Pick up topics created after start that match a regex.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .create_with_context(context)?;
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        Ok(consumer)
    }
}

fn client_config(settings: &KafkaSettings, group_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", group_id)
        .set("client.id", "mesaya-realtime")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("allow.auto.create.topics", "false")
        .set("log_level", "4");
    config
}

/// For `--check-config`: asks the brokers for their topics, as the rebuild
/// does at start, and returns how many of them `KAFKA_TOPICS` selects (the
/// gateway is never ready with none). Fails if no broker answers within
/// `timeout`.
pub fn probe(settings: &KafkaSettings, timeout: Duration) -> KafkaResult<usize> {
    let consumer: BaseConsumer = client_config(settings, &format!("{}-check", settings.group_id_prefix)).create()?;
    let selection = TopicSelection::new(&settings.topics);
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata.topics().iter().filter(|topic| selection.selects(topic.name())).count())
}

struct IngestContext {
    readiness: Arc<Readiness>,
    /// Next offset to read per partition (the resume point of a rejoin):
    /// seeded by the rebuild, advanced by every consumed record. Only the ingest thread touches it (record
    /// handling and rebalance callbacks both run inside `poll`), so the lock
    /// is never contended; rdkafka requires the context to be `Sync`.
    resume_points: Mutex<Positions>,
    /// Partitions assigned and where reading starts, for the ingest thread
    /// to take after the poll that assigned them.
    assigned: Mutex<Vec<(PartitionId, i64)>>,
}

impl IngestContext {
    fn take_assigned(&self) -> Vec<(PartitionId, i64)> {
        std::mem::take(&mut *self.assigned.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn resume_points(&self) -> std::sync::MutexGuard<'_, Positions> {
        self.resume_points.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn resume_after(&self, topic: &str, partition: i32, offset: i64) {
        self.resume_points().set(PartitionId::new(topic, partition), offset + 1);
    }

    fn start_offset(&self, consumer: &BaseConsumer<Self>, topic: &str, partition: i32) -> Offset {
        let mut points = self.resume_points();
        let id = PartitionId::new(topic, partition);
        if let Some(offset) = points.get(id) {
            return Offset::Offset(offset);
        }
        match consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT) {
            Ok((_, high)) => {
                points.advance(id, high);
                Offset::Offset(high)
            }
            Err(error) => {
                tracing::warn!(%error, topic, partition, "cannot resolve latest offset; starting at end");
                Offset::End
            }
        }
    }
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        let broker_up = statistics.brokers.values().any(|broker| broker.nodeid >= 0 && broker.state == "UP");
        self.readiness.set_broker_up(broker_up);
        for (topic, stats) in &statistics.topics {
            for (partition, partition_stats) in &stats.partitions {
                // librdkafka's own `consumer_lag` is measured from committed
                // offsets, and we commit none: measure from what we consumed
                // (`app_offset`), or from where fetching resumes before that.
                let position = [partition_stats.app_offset, partition_stats.next_offset].into_iter().find(|&o| o >= 0);
                if let (true, Some(position)) = (*partition >= 0 && partition_stats.hi_offset >= 0, position) {
                    METRICS
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set((partition_stats.hi_offset - position).max(0));
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.readiness.set_broker_up(false);
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, partitions: &mut TopicPartitionList) {
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            if let Err(error) = consumer.unassign() {
                tracing::warn!(%error, "unassign failed");
            }
            self.readiness.set_assigned(false);
            tracing::info!(?err, "partitions revoked");
            return;
        }
        let assigned: Vec<PartitionKey> =
            partitions.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        for (topic, partition) in &assigned {
            let start = self.start_offset(consumer, topic, *partition);
            if let Offset::Offset(start) = start {
                self.assigned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((PartitionId::new(topic, *partition), start));
            }
            if let Err(error) = partitions.set_partition_offset(topic, *partition, start) {
                tracing::warn!(%error, topic, partition, "setting start offset failed");
            }
        }
        match consumer.assign(partitions) {
            Ok(()) => {
                self.readiness.set_assigned(true);
                tracing::info!(partitions = assigned.len(), "partitions assigned");
            }
            Err(error) => tracing::error!(%error, "assign failed"),
        }
    }
}
