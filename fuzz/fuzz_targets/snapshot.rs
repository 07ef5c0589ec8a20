//! Any REST body: a snapshot or an error, never a panic, and an accepted
//! snapshot's frame is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesaya_realtime::domain::snapshot::Snapshot;

fuzz_target!(|body: &[u8]| {
    if let Ok(snapshot) = Snapshot::parse(body) {
        let frame: serde_json::Value =
            serde_json::from_slice(snapshot.frame.utf8_bytes()).expect("an accepted snapshot frames as JSON");
        assert_eq!(frame["event"], "section.snapshot");
    }
});
