//! How fresh what the consumer reads is. `mesaya_kafka_consumer_lag` only
//! compares our position with the high watermark the broker last reported,
//! so a broker that stalls its fetches reads 0 while every delivery is
//! seconds late. Two measures that do not trust the broker's figures: the
//! age of each record consumed (now minus its Kafka timestamp), and when
//! each partition last gave a record.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, Histogram};

use super::METRICS;

/// One partition's metrics, resolved once: looking labels up per record
/// would cost the ingest thread a hash of every label value.
struct PartitionMetrics {
    /// `mesaya_kafka_record_age_seconds{topic}`, shared by the topic's partitions.
    age: Histogram,
    /// `mesaya_kafka_last_record_timestamp_seconds{topic,partition}`.
    last_record: Gauge,
}

/// Owned by the ingest thread; nested by topic so that a record finds its
/// partition without allocating a key.
#[derive(Default)]
pub struct Freshness(HashMap<String, HashMap<i32, PartitionMetrics>>);

impl Freshness {
    /// A record was consumed from `topic`/`partition`, stamped by Kafka at
    /// `timestamp_ms` (milliseconds since the epoch) if it carries a stamp.
    pub fn consumed(&mut self, topic: &str, partition: i32, timestamp_ms: Option<i64>, now: SystemTime) {
        let metrics = self.partition(topic, partition);
        let now_seconds = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64();
        metrics.last_record.set(now_seconds);
        if let Some(stamp) = timestamp_ms.filter(|&ms| ms > 0) {
            // A producer whose clock runs ahead would make ages negative.
            metrics.age.observe((now_seconds - stamp as f64 / 1000.0).max(0.0));
        }
    }

    fn partition(&mut self, topic: &str, partition: i32) -> &PartitionMetrics {
        if !self.0.contains_key(topic) {
            self.0.insert(topic.to_string(), HashMap::new());
        }
        let partitions = self.0.get_mut(topic).expect("inserted above");
        partitions.entry(partition).or_insert_with(|| PartitionMetrics {
            age: METRICS.record_age_seconds.with_label_values(&[topic]),
            last_record: METRICS.last_record_timestamp.with_label_values(&[topic, &partition.to_string()]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_record_is_observed_at_its_age_and_its_partition_stamped_now() {
        let topic = "freshness-test.late";
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut freshness = Freshness::default();
        freshness.consumed(topic, 3, Some(1_000_000_000 - 4_500), now);
        let age = METRICS.record_age_seconds.with_label_values(&[topic]);
        assert_eq!((age.get_sample_count(), age.get_sample_sum()), (1, 4.5));
        let stamped = METRICS.last_record_timestamp.with_label_values(&[topic, "3"]).get();
        assert_eq!(stamped, 1_000_000.0);
    }

    #[test]
    fn records_without_a_stamp_or_from_the_future_have_no_negative_age() {
        let topic = "freshness-test.odd";
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut freshness = Freshness::default();
        freshness.consumed(topic, 0, None, now);
        freshness.consumed(topic, 0, Some(1_000_000_000 + 2_000), now);
        let age = METRICS.record_age_seconds.with_label_values(&[topic]);
        assert_eq!((age.get_sample_count(), age.get_sample_sum()), (1, 0.0), "the stampless one is not observed");
    }
}
