//! A shard's subscriber registry: section → the outboxes of its clients.
//! Owned by one shard thread, so it needs no lock. A fan-out only queues;
//! [`SectionHub::write_fanned_out`] then writes, once per client per shard turn, so a
//! client that got several events in one turn gets them in one write.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::domain::ids::SectionId;
use crate::domain::protocol::CloseCode;

use super::delivery::Delivery;
use super::outbox::{Outbox, PushOutcome};

/// What one fan-out did, for metrics and for the shard's turn.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct FanOutReport {
    pub queued: usize,
    pub conflated: usize,
    pub slow_closed: usize,
    /// A client's queue filled past its mark and only its writer task can
    /// write it: the shard should end its turn so that the task runs.
    pub writers_needed: bool,
}

#[derive(Default)]
pub struct SectionHub {
    sections: HashMap<SectionId, Vec<Rc<Outbox>>>,
    /// Outboxes with events pushed since the last write, in push order.
    marked_for_writing: Vec<Rc<Outbox>>,
}

impl SectionHub {
    pub fn subscribe(&mut self, section: SectionId, outbox: Rc<Outbox>) {
        self.sections.entry(section).or_default().push(outbox);
    }

    /// Idempotent: a client the hub already dropped (slow, section deleted)
    /// unsubscribes again when its session ends.
    pub fn unsubscribe(&mut self, section: SectionId, outbox: &Rc<Outbox>) {
        if let Some(outboxes) = self.sections.get_mut(&section) {
            outboxes.retain(|o| !Rc::ptr_eq(o, outbox));
            if outboxes.is_empty() {
                self.sections.remove(&section);
            }
        }
    }

    /// Wakes every client's writer task, to look at what changed around it
    /// (shutdown).
    pub fn nudge_all(&self) {
        self.sections.values().flatten().for_each(|outbox| outbox.nudge());
    }

    /// How many clients watch `section` on this shard.
    pub fn subscribers(&self, section: SectionId) -> usize {
        self.sections.get(&section).map_or(0, Vec::len)
    }

    pub fn fan_out(&mut self, section: SectionId, delivery: &Arc<Delivery>) -> FanOutReport {
        let mut report = FanOutReport::default();
        let Some(outboxes) = self.sections.get_mut(&section) else {
            return report;
        };
        let marked_for_writing = &mut self.marked_for_writing;
        outboxes.retain(|outbox| {
            let conflated = match outbox.push_event(Arc::clone(delivery)) {
                PushOutcome::Queued => 0,
                PushOutcome::Conflated(dropped) => dropped,
                PushOutcome::Overflowed => {
                    report.slow_closed += 1;
                    outbox.close_now(CloseCode::SLOW_CONSUMER);
                    return false;
                }
                PushOutcome::AlreadySent => return true,
                PushOutcome::Closing => return false,
            };
            report.queued += 1;
            report.conflated += conflated;
            report.writers_needed |= outbox.take_pressure();
            if outbox.mark_for_writing() {
                marked_for_writing.push(Rc::clone(outbox));
            }
            true
        });
        if delivery.ends_section {
            for outbox in self.sections.remove(&section).unwrap_or_default() {
                outbox.close_after_queue(CloseCode::NORMAL);
            }
        }
        report
    }

    /// Writes what the fan-outs since the last write queued: to each socket
    /// that takes it now, from here; the writer tasks of the others are woken.
    pub fn write_fanned_out(&mut self) {
        for outbox in self.marked_for_writing.drain(..) {
            outbox.write_or_wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::outbox::tests::{self as outboxes, write_front};
    use crate::domain::entity::{Action, EntityKey, EntityKind};
    use crate::domain::frame::Frame;

    const S1: &str = "11111111-1111-4111-8111-111111111111";

    /// An outbox past its handoff, its snapshot frame already written.
    fn live_outbox(max_frames: usize) -> Rc<Outbox> {
        Rc::new(outboxes::live_outbox(max_frames))
    }

    fn delivery(id: &str, ends_section: bool) -> Arc<Delivery> {
        Arc::new(Delivery {
            frames: Frame::event(EntityKind::Table, Action::Updated, "{}").into(),
            key: EntityKey::new(EntityKind::Table, id),
            action: Action::Updated,
            updated_at: None,
            ends_section,
            routed_at: std::time::Instant::now(),
            position: None,
        })
    }

    #[test]
    fn a_slow_client_is_dropped_without_affecting_others() {
        let section = SectionId::parse(S1).unwrap();
        let mut hub = SectionHub::default();
        let (slow, fast) = (live_outbox(2), live_outbox(100));
        hub.subscribe(section, Rc::clone(&slow));
        hub.subscribe(section, Rc::clone(&fast));
        let mut slow_closed = 0;
        for id in ["a", "b", "c"] {
            slow_closed += hub.fan_out(section, &delivery(id, false)).slow_closed;
            write_front(&fast);
        }
        assert_eq!(slow_closed, 1);
        assert_eq!(slow.close_request().unwrap().code, CloseCode::SLOW_CONSUMER);
        assert!(fast.close_request().is_none());
        assert_eq!(hub.fan_out(section, &delivery("d", false)).queued, 1);
    }

    #[test]
    fn a_turn_writes_once_to_each_client_however_many_events_it_got() {
        use crate::application::outbox::DirectWriter;
        use outboxes::Socket;
        use std::cell::Cell;

        let section = SectionId::parse(S1).unwrap();
        let mut hub = SectionHub::default();
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let outbox = live_outbox(100);
                let socket = Rc::new(Socket { room: Cell::new(10), ..Socket::default() });
                outbox.attach(Rc::clone(&socket) as Rc<dyn DirectWriter>);
                hub.subscribe(section, Rc::clone(&outbox));
                socket
            })
            .collect();
        for id in ["a", "b", "c"] {
            hub.fan_out(section, &delivery(id, false));
        }
        // Far below the queues' pressure marks.
        assert!(clients.iter().all(|socket| socket.writes.get() == 0), "fan-outs only queue");
        hub.write_fanned_out();
        for socket in &clients {
            assert_eq!((socket.writes.get(), socket.received.borrow().len()), (1, 3));
        }
        hub.write_fanned_out();
        assert!(clients.iter().all(|socket| socket.writes.get() == 1), "nothing new, nothing written");
    }

    #[test]
    fn a_deleted_section_closes_its_clients_after_the_event() {
        let section = SectionId::parse(S1).unwrap();
        let mut hub = SectionHub::default();
        let client = live_outbox(10);
        hub.subscribe(section, Rc::clone(&client));
        hub.fan_out(section, &delivery("s", true));
        assert!(client.front().is_some(), "the delete itself is still written");
        assert_eq!(client.close_request().unwrap().code, CloseCode::NORMAL);
        assert_eq!(hub.fan_out(section, &delivery("x", false)), FanOutReport::default());
    }

    /// A shard writes the same bytes to every subscriber. Routed
    /// end to end: one object event, linked to two sections with three
    /// clients between them, queues one buffer for all three.
    #[test]
    fn every_subscriber_gets_the_same_frame_bytes() {
        use crate::application::delivery::Stamp;
        use crate::application::router::EventRouter;
        use crate::domain::envelope;

        const S2: &str = "22222222-2222-4222-8222-222222222222";
        let parse = |topic: &str, json: serde_json::Value| {
            envelope::parse(topic, json.to_string().as_bytes(), 1 << 20).unwrap()
        };
        const OBJECT: &str = "b1111111-1111-4111-8111-111111111111";
        let links = ["c1111111-1111-4111-8111-111111111111", "c2222222-2222-4222-8222-222222222222"];
        let now = Stamp { at: std::time::Instant::now(), position: None };
        let mut router = EventRouter::default();
        for (link, sec) in links.into_iter().zip([S1, S2]) {
            let data = serde_json::json!({"id": link, "sectionId": sec, "objectId": OBJECT});
            let event =
                parse("mesa-ya.section-objects.events", serde_json::json!({"event_type": "created", "data": data}));
            router.route(event, now, |_, _| {}).unwrap();
        }

        let mut hub = SectionHub::default();
        let clients = [(S1, live_outbox(10)), (S1, live_outbox(10)), (S2, live_outbox(10))];
        for (sec, outbox) in &clients {
            hub.subscribe(SectionId::parse(sec).unwrap(), Rc::clone(outbox));
        }
        let object = serde_json::json!({"event_type": "updated", "data": {"id": OBJECT, "posX": 3}});
        let mut queued = 0;
        router
            .route(parse("mesa-ya.objects.events", object), now, |section, delivery| {
                queued += hub.fan_out(section, &delivery).queued
            })
            .unwrap();
        assert_eq!(queued, 3);

        let frames: Vec<Frame> = clients.iter().map(|(_, outbox)| outbox.front().expect("queued").frame).collect();
        let text: serde_json::Value = serde_json::from_slice(frames[0].utf8_bytes()).unwrap();
        assert_eq!(text["event"], "object.updated");
        for frame in &frames[1..] {
            assert_eq!(frame.utf8_bytes().as_ptr(), frames[0].utf8_bytes().as_ptr(), "same buffer, not a copy");
            assert_eq!(frame.len(), frames[0].len());
        }
    }
}
