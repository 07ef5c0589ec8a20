//! Whether the gateway can deliver what it promises: `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the Kafka ingest, read by the HTTP server.
#[derive(Default, Debug)]
pub struct Readiness {
    links_rebuilt: AtomicBool,
    assigned: AtomicBool,
    broker_up: AtomicBool,
}

impl Readiness {
    pub fn set_links_rebuilt(&self) {
        self.links_rebuilt.store(true, Ordering::Release);
    }

    pub fn set_assigned(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::Release);
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Release);
    }

    /// Ready when the object → section links were rebuilt, the consumer has
    /// its partitions, and a broker connection is up.
    pub fn is_ready(&self) -> bool {
        self.links_rebuilt.load(Ordering::Acquire)
            && self.assigned.load(Ordering::Acquire)
            && self.broker_up.load(Ordering::Acquire)
    }
}
