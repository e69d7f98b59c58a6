//! The Python ctypes binding (`integrations/python/kvtier`) against libkvtier.so: key vectors
//! (with extra keys), errors, and the copy engine.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn python_binding_reproduces_vectors_and_copies() {
    let ffi = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-p", "kvtier-ffi", "--lib", "--target-dir"])
        .arg(profile_dir.parent().unwrap())
        .current_dir(&ffi)
        .status()
        .unwrap();
    assert!(built.success());
    let venv = "/var/cache/kvtier/pytest-venv/bin/python";
    let python = std::env::var("KVTIER_PYTHON").unwrap_or_else(|_| {
        if Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    });
    let out = Command::new(&python)
        .arg(ffi.join("../integrations/python/tests/test_abi.py"))
        .env("KVTIER_LIB", profile_dir.join("libkvtier.so"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
