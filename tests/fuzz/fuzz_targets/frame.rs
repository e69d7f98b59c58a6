//! The pool's frame decoder on arbitrary bytes (see `kvtier_fuzz::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvtier_fuzz::frame(data));
