//! The Kafka the dev command runs against.
//!
//! By default librdkafka's mock cluster, inside this process: nothing to install, up in
//! milliseconds. It listens on a TCP port of 127.0.0.1 and speaks the Kafka protocol, so the
//! gateway (another process) connects to it as to any broker; what the gateway asks of Kafka —
//! metadata, watermarks, reading from the earliest offset, a consumer group with a regex
//! subscription — is what the test below checks it answers. Tests of the gateway itself never use
//! it: they run against a real broker (tansu). The mock keeps records in memory, until the dev
//! command stops.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use mesaya_testkit::broker::{self, Broker, SECTION_TOPICS};
use mesaya_testkit::sample;

/// Which Kafka to run against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// librdkafka's mock cluster, in process.
    Mock,
    /// A tansu broker process (`TANSU_BIN`, see `scripts/ensure-tansu.sh`), in memory.
    Tansu,
    /// A Kafka that already runs, at these bootstrap servers.
    External(String),
}

pub enum Kafka {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Tansu(Broker),
    External(String),
}

impl Kafka {
    /// Starts (or reaches) the chosen Kafka and makes sure the section topics exist.
    pub async fn start(choice: Choice) -> Result<Kafka, String> {
        match choice {
            Choice::Mock => {
                let cluster = MockCluster::new(1).map_err(|e| format!("cannot start the mock Kafka cluster: {e}"))?;
                // The mock broker answers no CreateTopics request (admin API): topics are made
                // through its own call, like a topic an operator created beforehand.
                for topic in sample::TOPICS {
                    cluster
                        .create_topic(topic, 1, 1)
                        .map_err(|e| format!("mock cluster: cannot create {topic}: {e}"))?;
                }
                Ok(Kafka::Mock(cluster))
            }
            Choice::Tansu => Ok(Kafka::Tansu(Broker::start_memory().await)),
            Choice::External(bootstrap) => {
                broker::create_topics(&bootstrap, &SECTION_TOPICS, 1).await.map_err(|e| format!("{bootstrap}: {e}"))?;
                Ok(Kafka::External(bootstrap))
            }
        }
    }

    /// `host:port[,…]`, for `bootstrap.servers` / `KAFKA_BROKERS`.
    pub fn bootstrap(&self) -> String {
        match self {
            Kafka::Mock(cluster) => cluster.bootstrap_servers(),
            Kafka::Tansu(broker) => broker.bootstrap(),
            Kafka::External(bootstrap) => bootstrap.clone(),
        }
    }

    /// One line for the terminal.
    pub fn describe(&self) -> String {
        match self {
            Kafka::Mock(cluster) => {
                format!("librdkafka mock cluster in this process at {} (in memory)", cluster.bootstrap_servers())
            }
            Kafka::Tansu(broker) => {
                format!("tansu at {} (in memory; log {})", broker.bootstrap(), broker.log_path().display())
            }
            Kafka::External(bootstrap) => format!("Kafka at {bootstrap}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesaya_testkit::producer::EventProducer;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);
    const LINKS: &str = "mesa-ya.section-objects.events";

    fn consumer_config(bootstrap: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("dev-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false");
        config
    }

    /// What the gateway's Kafka adapter does at start and then live, against the mock cluster:
    /// metadata listing the topics, watermarks, a read from the earliest offset up to the high
    /// watermark (the link rebuild), and a consumer group subscribed by regex receiving records.
    #[tokio::test]
    async fn the_mock_cluster_serves_what_the_gateway_asks_of_kafka() {
        let kafka = Kafka::start(Choice::Mock).await.unwrap();
        let bootstrap = kafka.bootstrap();
        assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap}");
        let producer = EventProducer::new(&bootstrap);
        for payload in [b"first".as_slice(), b"second"] {
            producer.send(LINKS, payload).await;
        }

        let rebuild: BaseConsumer = consumer_config(&bootstrap).create().unwrap();
        let (metadata, watermarks, records) = tokio::task::spawn_blocking(move || {
            let metadata = rebuild.fetch_metadata(None, WAIT).unwrap();
            let topics: Vec<(String, usize)> =
                metadata.topics().iter().map(|t| (t.name().to_string(), t.partitions().len())).collect();
            let watermarks = rebuild.fetch_watermarks(LINKS, 0, WAIT).unwrap();
            let mut assignment = TopicPartitionList::new();
            assignment.add_partition_offset(LINKS, 0, Offset::Beginning).unwrap();
            rebuild.assign(&assignment).unwrap();
            let mut records = Vec::new();
            while records.len() < 2 {
                let message = rebuild.poll(WAIT).expect("a record within the wait").unwrap();
                records.push(message.payload().unwrap().to_vec());
            }
            (topics, watermarks, records)
        })
        .await
        .unwrap();
        for topic in sample::TOPICS {
            assert!(metadata.contains(&(topic.to_string(), 1)), "{topic} missing from {metadata:?}");
        }
        assert_eq!(watermarks, (0, 2));
        assert_eq!(records, [b"first".to_vec(), b"second".to_vec()]);

        let live: StreamConsumer = consumer_config(&bootstrap).set("auto.offset.reset", "earliest").create().unwrap();
        // Shaped like the gateway's default, leaving reservations out.
        live.subscribe(&[r"^mesa-ya\.(sections|tables|objects|section-objects)\.(events|updated)$"]).unwrap();
        producer.send("mesa-ya.tables.events", b"live").await;
        // From the earliest offsets: the two section-objects records may come first.
        let received = tokio::time::timeout(Duration::from_secs(30), async {
            let mut received = Vec::new();
            while !received.contains(&("mesa-ya.tables.events".to_string(), b"live".to_vec())) {
                let message = live.recv().await.unwrap();
                received.push((message.topic().to_string(), message.payload().unwrap().to_vec()));
            }
            received
        })
        .await
        .expect("the group consumer got no record on mesa-ya.tables.events within 30 s");
        assert!(received.len() <= 3, "{received:?}");
        let mut assigned: Vec<String> =
            live.assignment().unwrap().elements().iter().map(|e| e.topic().to_string()).collect();
        assigned.sort();
        let mut expected: Vec<&str> = sample::TOPICS.into_iter().filter(|t| !t.contains("reservations")).collect();
        expected.sort();
        assert_eq!(assigned, expected);
    }
}
