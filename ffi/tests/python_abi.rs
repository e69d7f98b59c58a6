//! The Python ctypes binding (`integrations/python/kvtier`) against libkvtier.so and the committed
//! header: key vectors (with extra keys), errors, the copy engine, two Python engine processes
//! sharing blocks through a real agent, and the binding's ctypes signatures, structs and status
//! codes against `ffi/include/kvtier.h`. The scripts are in `tests/python/binding/`.

use std::process::Command;

mod common;
use common::{build_ffi, lib_dir, python, Agent};

fn run_py(script: &str, args: &[&str]) -> String {
    build_ffi();
    let py = python();
    let out = Command::new(&py)
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/python/binding")
                .join(script),
        )
        .args(args)
        .env("KVTIER_LIB", lib_dir().join("libkvtier.so"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {py}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_binding_reproduces_vectors_and_copies() {
    let out = run_py("test_abi.py", &[]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn python_binding_matches_the_committed_header() {
    let out = run_py("test_header.py", &[]);
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn python_engine_saves_and_another_python_process_loads() {
    let agent = Agent::start_in(tempfile::tempdir().unwrap());
    let sock = agent.socket.display().to_string();
    assert!(run_py("test_agent.py", &["save", &sock]).contains("saved 256"));
    assert!(run_py("test_agent.py", &["load", &sock]).contains("load ok"));
}
