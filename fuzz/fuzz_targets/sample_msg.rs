//! Fuzz the uploaded-sample decoder: it may only return errors, and what it
//! accepts must encode back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shiftnn_runtime::adapt::{decode_sample, encode_sample};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_sample(data) {
        assert_eq!(encode_sample(&m), data);
    }
});
