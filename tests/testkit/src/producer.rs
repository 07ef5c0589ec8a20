//! Publishing upstream events the way the MesaYa API does: JSON values, no key, no headers.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// How long a send may wait for its delivery report before it fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

pub struct EventProducer {
    producer: FutureProducer,
}

impl EventProducer {
    pub fn new(bootstrap: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
            // Send each record at once: tests measure latency and ordering, not throughput.
            .set("linger.ms", "0")
            .create()
            .expect("cannot create Kafka producer");
        Self { producer }
    }

    /// Sends `payload` (null key, no headers) and waits for the broker's acknowledgement.
    /// Returns the `(partition, offset)` it was stored at; panics if delivery fails.
    pub async fn send(&self, topic: &str, payload: &[u8]) -> (i32, i64) {
        let record = FutureRecord::<(), [u8]>::to(topic).payload(payload);
        match self.producer.send(record, DELIVERY_TIMEOUT).await {
            Ok(delivery) => (delivery.partition, delivery.offset),
            Err((error, _)) => {
                panic!("delivery to {topic} failed: {error} (payload: {})", String::from_utf8_lossy(payload))
            }
        }
    }

    /// Sends `value` serialised as JSON text, as Nest's Kafka serializer does.
    pub async fn send_json(&self, topic: &str, value: &serde_json::Value) -> (i32, i64) {
        self.send(topic, value.to_string().as_bytes()).await
    }
}
