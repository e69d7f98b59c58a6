//! The pool's frame decoder on arbitrary bytes: it must never panic, and whatever it accepts
//! must re-encode to the same header bytes.
#![no_main]

use kvtier_pool::wire::{decode_stream, Frame, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (frames, _err) = decode_stream(data, 1 << 16);
    if let Some(first) = frames.first() {
        assert_eq!(&first.encode()[..], &data[..HEADER_LEN]);
        assert_eq!(Frame::decode(&first.encode(), 1 << 16), Ok(*first));
    }
});
