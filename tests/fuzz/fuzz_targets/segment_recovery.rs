//! Segment files at recovery, overwritten and truncated (see `kvtier_fuzz::segment_recovery`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvtier_fuzz::segment_recovery(data));
