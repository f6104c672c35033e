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
        // Exactly five components, none empty and none starting with a dot, so the
        // key can never name a folder above the host's own ("..", ".", "").
        let parts: Vec<&str> = stem.split('/').collect();
        assert_eq!(parts.len(), 5, "object key has extra folders: {stem}");
        assert!(
            parts.iter().all(|c| !c.is_empty() && !c.starts_with('.')),
            "object key escapes its folder: {stem}"
        );
    }
});
