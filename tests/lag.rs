//! End to end: lag that tells the truth (issue 25, point 6). A broker that answers late makes
//! every delivery seconds late while `mesaya_kafka_consumer_lag`, which only compares the
//! broker's high watermark with our position, reads 0. The age of each consumed record (now
//! minus its Kafka timestamp) and the time of each partition's last record show it. (Here the
//! lag reads 0 too; the test does not insist, it only quotes it.)
//!
//! The slow broker is librdkafka's mock cluster (a Kafka-protocol broker in this process, on a
//! TCP port; the gateway is a separate process talking to it as to any broker) with a round-trip
//! time set on its broker: tansu has no such setting.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use mesaya_testkit::api::StandInApi;
use mesaya_testkit::broker::SECTION_TOPICS;
use mesaya_testkit::fixtures::v2;
use mesaya_testkit::gateway::{self, Gateway};
use mesaya_testkit::producer::EventProducer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

const TOPIC: &str = "mesa-ya.tables.events";
/// How late the broker answers every request once slowed down.
const BROKER_DELAY: Duration = Duration::from_secs(3);
const AGE: &str = "mesaya_kafka_record_age_seconds";

fn slow_enough_cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("the mock cluster starts");
    for topic in SECTION_TOPICS {
        cluster.create_topic(topic, 1, 1).expect("the mock cluster creates its topics");
    }
    cluster
}

async fn metrics(gateway: &Gateway) -> String {
    let (status, body) = gateway.get_ops("/metrics").await;
    assert_eq!(status, 200);
    body
}

#[tokio::test]
async fn records_a_slow_broker_hands_over_late_are_seen_late_whatever_the_lag_reads() {
    let cluster = slow_enough_cluster();
    let api = StandInApi::start();
    let section = new_id();
    let table_id = new_id();
    serve_section(&api, &section, vec![table(&table_id, &section, 1)]);
    let mut env = gateway::wiring_to(&cluster.bootstrap_servers(), &api, SECRET);
    env.push(("SHARDS", "1".to_string()));
    let mut gateway = Gateway::start(binary(), &env);
    gateway.wait_ready(Duration::from_secs(30)).await;
    let (mut client, _) = watch_on(&gateway, &section).await;
    let producer = EventProducer::new(&cluster.bootstrap_servers());

    // A broker answering at once: a fresh record.
    producer.send_json(TOPIC, &v2("updated", &table_id, table(&table_id, &section, 2))).await;
    assert_eq!(client.next_json(WAIT).await["event"], "table.updated");
    let body = metrics(&gateway).await;
    let labels = format!("topic=\"{TOPIC}\"");
    assert_eq!(metric_value(&body, &format!("{AGE}_count"), &labels), 1.0, "the record's age observed");
    assert_eq!(metric_value(&body, &format!("{AGE}_bucket"), &format!("{labels},le=\"1\"")), 1.0, "under 1 s old");

    // The broker slows down: the next record is handed over seconds after it was produced.
    cluster.broker_round_trip_time(1, BROKER_DELAY).expect("the mock broker takes a round-trip time");
    let produced_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    producer.send_json(TOPIC, &v2("updated", &table_id, table(&table_id, &section, 3))).await;
    assert_eq!(client.next_json(WAIT + BROKER_DELAY * 4).await["event"], "table.updated");
    let body = metrics(&gateway).await;
    let lag = metric_value(&body, "mesaya_kafka_consumer_lag", &labels);
    assert_eq!(metric_value(&body, &format!("{AGE}_count"), &labels), 2.0, "{body}");
    assert_eq!(
        metric_value(&body, &format!("{AGE}_bucket"), &format!("{labels},le=\"1\"")),
        1.0,
        "the late record is over 1 s old (consumer lag reads {lag})"
    );
    assert!(metric_value(&body, &format!("{AGE}_sum"), &labels) >= 1.0, "{body}");
    let last_record = metric_value(&body, "mesaya_kafka_last_record_timestamp_seconds", &labels);
    assert!(last_record >= produced_at, "the partition's last record came at {last_record}, after {produced_at}");
}
