//! A shared directory's object files, overwritten and truncated (see `kvtier_fuzz::shared_dir_object`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvtier_fuzz::shared_dir_object(data));
