//! What crosses threads into a shard: routed events from the ingest thread
//! and upgraded sockets from whichever shard accepted them.
//!
//! Events travel on a bounded channel: a shard that falls behind makes the
//! ingest thread wait (Kafka lag grows and shows in the lag metric) instead
//! of growing memory, and nothing is dropped. Sockets travel on a channel of
//! their own that never blocks an accepting shard: admission control bounds
//! how many sessions exist, and so how many can be on their way.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::application::admission::Permit;
use crate::application::delivery::{Delivery, Unseen};
use crate::application::ports::Dispatch;
use crate::domain::access::Claims;
use crate::domain::ids::SectionId;
use crate::domain::position::{Position, Progress};
use crate::shutdown::Shutdown;
use crate::telemetry::METRICS;

/// Routed events a shard may have waiting before the ingest thread waits.
pub const EVENT_CAPACITY: usize = 16 * 1024;
/// How often a waiting ingest thread looks up to see whether to give up.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);

/// An upgraded socket on its way to the shard that owns its section.
pub struct HandedOff {
    pub stream: std::net::TcpStream,
    /// Bytes the HTTP parser read past the handshake (a client may pipeline
    /// its first frame).
    pub read_buf: Bytes,
    pub section: SectionId,
    pub token: String,
    pub claims: Claims,
    pub client: ClientInfo,
    /// The session's place under the admission limits, held to its end.
    pub permit: Permit,
    /// `?resume=`, with the token the client brought (empty at its first
    /// connect).
    pub resume: Option<String>,
    /// permessage-deflate was negotiated (SPEC §2.9).
    pub deflate: bool,
}

/// Who is on the other end, as far as the gateway tells the API.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub addr: IpAddr,
    /// Unique per session: sent as `X-Request-Id`, and in every log line of
    /// the session.
    pub request_id: String,
}

/// What the ingest thread tells a shard, in record order.
#[derive(Debug)]
pub enum ShardMessage {
    /// A frame for one of the shard's sections.
    Deliver(SectionId, Arc<Delivery>),
    /// Every frame this shard gets from records of that partition before
    /// this offset has arrived.
    RecordDone(Position),
    /// Where the ingest stands on every partition.
    Progress(Arc<Progress>),
    /// A record that reached none of this instance's sections, though it
    /// may have concerned some.
    Unseen(Unseen),
}

/// The sending half: cloned into every thread that feeds the shard.
#[derive(Clone)]
pub struct Mailbox {
    events: Sender<ShardMessage>,
    sockets: Sender<Box<HandedOff>>,
    wake: Arc<Notify>,
    /// Resolved once: `send` is on the per-event path.
    pushed: IntCounter,
}

/// The receiving half, owned by the shard's thread.
pub struct Inbox {
    pub events: Receiver<ShardMessage>,
    pub sockets: Receiver<Box<HandedOff>>,
    wake: Arc<Notify>,
}

/// The shard stopped; the socket comes back to the sender.
pub struct ShardGone(pub Box<HandedOff>);

pub fn mailbox(shard: usize, event_capacity: usize) -> (Mailbox, Inbox) {
    let (events_tx, events_rx) = crossbeam_channel::bounded(event_capacity);
    let (sockets_tx, sockets_rx) = crossbeam_channel::unbounded();
    let wake = Arc::new(Notify::new());
    let pushed = METRICS.shard_mailbox_pushed.with_label_values(&[&shard.to_string()]);
    (
        Mailbox { events: events_tx, sockets: sockets_tx, wake: Arc::clone(&wake), pushed },
        Inbox { events: events_rx, sockets: sockets_rx, wake },
    )
}

impl Mailbox {
    /// Waits while the shard's event queue is full; gives the event up only
    /// at shutdown or once the shard has stopped.
    fn send_event(&self, event: ShardMessage, shutdown: &Shutdown) {
        let mut event = event;
        loop {
            match self.events.send_timeout(event, SHUTDOWN_CHECK) {
                Ok(()) => break,
                Err(SendTimeoutError::Timeout(back)) if !shutdown.is_triggered() => {
                    // The shard may be asleep on a full queue it has not
                    // seen yet.
                    self.wake.notify_one();
                    event = back;
                }
                Err(_) => return,
            }
        }
        self.pushed.inc();
        self.wake.notify_one();
    }

    pub fn adopt(&self, handed_off: Box<HandedOff>) -> Result<(), ShardGone> {
        self.sockets.send(handed_off).map_err(|error| ShardGone(error.into_inner()))?;
        self.pushed.inc();
        self.wake.notify_one();
        Ok(())
    }
}

impl Inbox {
    /// Resolves after the next send (at once if one came since the last
    /// call).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// All shards' mailboxes: where a section's traffic goes.
#[derive(Clone)]
pub struct Shards {
    mailboxes: Arc<[Mailbox]>,
    shutdown: Shutdown,
}

impl Shards {
    pub fn new(mailboxes: Vec<Mailbox>, shutdown: Shutdown) -> Self {
        Self { mailboxes: mailboxes.into(), shutdown }
    }

    pub fn owner(&self, section: SectionId) -> &Mailbox {
        &self.mailboxes[self.owner_index(section)]
    }

    fn owner_index(&self, section: SectionId) -> usize {
        section.shard(self.mailboxes.len())
    }
}

/// The ingest thread's way to the shards: it remembers which shards got
/// frames of the record in hand, to tell only them when it is done.
pub struct ShardDispatch {
    shards: Shards,
    touched: RefCell<Vec<bool>>,
}

impl ShardDispatch {
    pub fn new(shards: Shards) -> Self {
        let touched = RefCell::new(vec![false; shards.mailboxes.len()]);
        Self { shards, touched }
    }
}

impl Dispatch for ShardDispatch {
    fn dispatch(&self, section: SectionId, delivery: Arc<Delivery>) {
        let shard = self.shards.owner_index(section);
        self.touched.borrow_mut()[shard] = true;
        self.shards.mailboxes[shard].send_event(ShardMessage::Deliver(section, delivery), &self.shards.shutdown);
    }

    fn record_done(&self, next: Position) {
        for (shard, touched) in self.touched.borrow_mut().iter_mut().enumerate() {
            if std::mem::take(touched) {
                self.shards.mailboxes[shard].send_event(ShardMessage::RecordDone(next), &self.shards.shutdown);
            }
        }
    }

    fn progress(&self, progress: Arc<Progress>) {
        for mailbox in self.shards.mailboxes.iter() {
            mailbox.send_event(ShardMessage::Progress(Arc::clone(&progress)), &self.shards.shutdown);
        }
    }

    fn unseen(&self, unseen: &Unseen) {
        for mailbox in self.shards.mailboxes.iter() {
            mailbox.send_event(ShardMessage::Unseen(unseen.clone()), &self.shards.shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::entity::{Action, EntityKey, EntityKind};
    use crate::domain::frame::Frame;

    const S1: &str = "11111111-1111-4111-8111-111111111111";

    fn delivery(n: usize) -> Arc<Delivery> {
        Arc::new(Delivery {
            frames: Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"n":{n}}}"#)).into(),
            key: EntityKey::new(EntityKind::Table, "t"),
            action: Action::Updated,
            updated_at: None,
            ends_section: false,
            routed_at: std::time::Instant::now(),
            position: None,
        })
    }

    #[test]
    fn a_full_shard_makes_the_dispatcher_wait_and_loses_nothing() {
        let (mailbox, inbox) = mailbox(0, 4);
        let shards = ShardDispatch::new(Shards::new(vec![mailbox], Shutdown::default()));
        let section = SectionId::parse(S1).unwrap();
        let dispatcher = std::thread::spawn(move || {
            for n in 0..100 {
                shards.dispatch(section, delivery(n));
            }
        });
        let mut received = Vec::new();
        while received.len() < 100 {
            let ShardMessage::Deliver(_, delivery) = inbox.events.recv().unwrap() else {
                panic!("only frames were sent")
            };
            assert!(inbox.events.len() <= 4, "the queue never holds more than its capacity");
            received.push(String::from_utf8(delivery.frames.full().utf8_bytes().to_vec()).unwrap());
        }
        dispatcher.join().unwrap();
        let expected: Vec<String> =
            (0..100).map(|n| format!(r#"{{"event":"table.updated","payload":{{"n":{n}}}}}"#)).collect();
        assert_eq!(received, expected, "every event, in order");
    }

    #[test]
    fn a_waiting_dispatcher_gives_up_at_shutdown() {
        let (mailbox, _inbox) = mailbox(0, 1);
        let shutdown = Shutdown::default();
        let shards = ShardDispatch::new(Shards::new(vec![mailbox], shutdown.clone()));
        let section = SectionId::parse(S1).unwrap();
        shards.dispatch(section, delivery(0));
        let blocked = std::thread::spawn(move || shards.dispatch(section, delivery(1)));
        shutdown.trigger();
        blocked.join().unwrap();
    }
}
