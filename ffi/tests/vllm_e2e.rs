//! The vLLM connector's end-to-end tests on a real vLLM (CPU backend), run from `cargo test` so
//! that the README's one test command covers them: `scripts/vllm_e2e.sh` (pytest over
//! `tests/python/vllm/`, against this checkout's `kvtier` and `kvtier-vllm` packages installed into
//! the vLLM venv) with the release `kvtier` binary and libkvtier of this target directory.
//!
//! Needs the vLLM venv and the tiny model in the cache folder, which `.ci/run` builds
//! (`scripts/vllm_setup.sh tiny`, reused when present). Without them this test fails and says
//! so: it never passes with the feature missing.

mod common;

use std::process::Command;

#[test]
fn vllm_connector_end_to_end() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let cache = std::env::var("KVTIER_CACHE_DIR").unwrap_or_else(|_| "/var/cache/kvtier".into());
    let venv_ok = std::path::Path::new(&cache).join("vllm-venv/.kvtier-vllm-ok");
    assert!(
        venv_ok.exists(),
        "no vLLM venv at {cache}/vllm-venv: run `bash .ci/run` or `scripts/vllm_setup.sh tiny` first"
    );
    // The script uses the release `kvtier` and libkvtier of this target directory (building them
    // when missing; `.ci/run` builds them first), as an engine would get them.
    let target = common::lib_dir().parent().unwrap().to_path_buf();
    let status = Command::new(root.join("scripts/vllm_e2e.sh"))
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(root)
        .status()
        .expect("running scripts/vllm_e2e.sh");
    assert!(
        status.success(),
        "the vLLM end-to-end tests failed ({status})"
    );
}
