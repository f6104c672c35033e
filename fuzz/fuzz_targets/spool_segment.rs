//! The spool segment parser on arbitrary bytes: never panics, never allocates beyond
//! its limit, and what it accepts encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msp_agent::prove::spool::{encode_segment, parse_segment};

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = parse_segment(data) {
        assert_eq!(encode_segment(&records), data);
    }
});
