//! The bundle parser on arbitrary bytes: never panics, and whatever it accepts is
//! exactly the canonical form of its own content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_agent::prove::bundle::{ParsedBundle, canonical_bytes};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ParsedBundle::parse(data) {
        let value: serde_json::Value =
            serde_json::from_slice(data).expect("accepted bytes are JSON");
        assert_eq!(
            canonical_bytes(&value).unwrap(),
            data,
            "accepted bytes must be canonical"
        );
        let _ = p.typed_body();
        let stem = p.envelope.object_stem();
        assert!(
            !stem.contains(".."),
            "object key escapes its folder: {stem}"
        );
    }
});
