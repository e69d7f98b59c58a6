//! The TOML configuration (see `kvtier_fuzz::config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvtier_fuzz::config(data));
