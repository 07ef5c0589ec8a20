//! Any REST body: a snapshot or an error, never a panic, and an accepted
//! snapshot's frame is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesaya_realtime::domain::snapshot::Snapshot;

fuzz_target!(|body: &[u8]| {
    if let Ok(snapshot) = Snapshot::parse(body) {
        // simd-json, not serde_json: with `raw_value` on, serde_json treats
        // the key `$serde_json::private::RawValue` specially (a fuzzer find).
        let mut frame = snapshot.frame.utf8_bytes().to_vec();
        let frame = simd_json::to_owned_value(&mut frame).expect("an accepted snapshot frames as JSON");
        assert_eq!(frame["event"], "section.snapshot");
    }
});
