//! The agent's protocol messages against a live agent state (see `kvtier_fuzz::agent_messages`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvtier_fuzz::agent_messages(data));
