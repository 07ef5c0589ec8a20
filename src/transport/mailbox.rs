//! What crosses threads into a shard: routed events from the ingest thread
//! and upgraded sockets from whichever shard accepted them.
//!
//! A shard's mailbox is a crossbeam channel plus a `Notify`: senders push
//! without blocking, the shard drains in batches.

use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TryIter};
use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::application::delivery::Delivery;
use crate::application::ports::Dispatch;
use crate::domain::access::Claims;
use crate::domain::ids::SectionId;
use crate::telemetry::METRICS;

/// An upgraded socket on its way to the shard that owns its section.
pub struct HandedOff {
    pub stream: std::net::TcpStream,
    /// Bytes the HTTP parser read past the handshake (a client may pipeline
    /// its first frame).
    pub read_buf: Bytes,
    pub section: SectionId,
    pub token: String,
    pub claims: Claims,
}

pub enum ShardMessage {
    /// A routed event for the subscribers of a section.
    Event(SectionId, Arc<Delivery>),
    /// A client to serve from now on.
    Adopt(Box<HandedOff>),
}

/// The sending half: cloned into every thread that feeds the shard.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<ShardMessage>,
    wake: Arc<Notify>,
    /// Resolved once: `send` is on the per-event path.
    pushed: IntCounter,
}

/// The receiving half, owned by the shard's thread.
pub struct Inbox {
    rx: Receiver<ShardMessage>,
    wake: Arc<Notify>,
}

/// The shard stopped; the message comes back to the sender.
pub struct ShardGone(pub ShardMessage);

pub fn mailbox(shard: usize) -> (Mailbox, Inbox) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Notify::new());
    let pushed = METRICS.shard_mailbox_pushed.with_label_values(&[&shard.to_string()]);
    (Mailbox { tx, wake: Arc::clone(&wake), pushed }, Inbox { rx, wake })
}

impl Mailbox {
    pub fn send(&self, message: ShardMessage) -> Result<(), ShardGone> {
        self.tx.send(message).map_err(|error| ShardGone(error.into_inner()))?;
        self.pushed.inc();
        self.wake.notify_one();
        Ok(())
    }
}

impl Inbox {
    /// What is waiting now, without blocking.
    pub fn ready(&self) -> TryIter<'_, ShardMessage> {
        self.rx.try_iter()
    }

    /// Resolves after the next `send` (at once if one came since the last
    /// call).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// All shards' mailboxes: where a section's traffic goes.
#[derive(Clone)]
pub struct Shards(Arc<[Mailbox]>);

impl Shards {
    pub fn new(mailboxes: Vec<Mailbox>) -> Self {
        Self(mailboxes.into())
    }

    pub fn owner(&self, section: SectionId) -> &Mailbox {
        &self.0[section.shard(self.0.len())]
    }
}

impl Dispatch for Shards {
    fn dispatch(&self, section: SectionId, delivery: Arc<Delivery>) {
        // Fails only once the shard has stopped, during shutdown: nobody is
        // left to receive the event.
        let _ = self.owner(section).send(ShardMessage::Event(section, delivery));
    }
}
