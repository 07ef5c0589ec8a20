//! Any Kafka record, on any of our topics: the parser returns an event or a
//! rejection, never panics; whatever it accepts the router can route.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesaya_realtime::application::router::EventRouter;
use mesaya_realtime::domain::envelope;

const TOPICS: [&str; 6] = [
    "mesa-ya.tables.events",
    "mesa-ya.sections.deleted",
    "mesa-ya.section-objects.created",
    "mesa-ya.objects.events",
    "mesa-ya.reservations.updated",
    "mesa-ya.tables.selecting",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, record)) = data.split_first() else { return };
    let topic = TOPICS[usize::from(selector) % TOPICS.len()];
    if let Ok(event) = envelope::parse(topic, record, 1 << 20) {
        let mut router = EventRouter::default();
        let _ = router.route(event, |_, delivery| {
            assert!(std::str::from_utf8(delivery.frame.utf8_bytes()).is_ok());
        });
    }
});
