//! The C ABI's argument checks (see `kvtier_fuzz::abi_args`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvtier_fuzz::abi_args(data));
