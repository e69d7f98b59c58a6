//! Helpers shared by the ffi integration tests: where cargo puts the libraries, building them
//! as engines get them, and a real `kvtier up` agent in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// target/<profile>, where cargo put libkvtier.a (this test runs from target/<profile>/deps).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// `cargo test` builds only what tests link (no staticlib, no cdylib): build the library as
/// engines get it, into the same target directory.
pub fn build_ffi() {
    let target = lib_dir().parent().unwrap().to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "kvtier-ffi", "--lib", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building libkvtier failed");
}

/// The Python interpreter: $KVTIER_PYTHON, else the venv `.ci/run` builds, else python3.
pub fn python() -> String {
    let venv = "/var/cache/kvtier/pytest-venv/bin/python";
    std::env::var("KVTIER_PYTHON").unwrap_or_else(|_| {
        if Path::new(venv).exists() {
            venv.into()
        } else {
            "python3".into()
        }
    })
}

/// A `kvtier up` agent for the C engine tests (32 KiB objects: the C test's layout).
pub struct Agent {
    pub child: std::process::Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    pub fn start_in(dir: tempfile::TempDir) -> Agent {
        Agent::start_with(dir, "32KiB", &[])
    }

    /// An agent for objects of `object_bytes`, with extra `kvtier up` flags.
    pub fn start_with(dir: tempfile::TempDir, object_bytes: &str, extra: &[&str]) -> Agent {
        let target = lib_dir().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-p", "kvtier", "--bin", "kvtier", "--target-dir"])
            .arg(&target)
            .status()
            .unwrap();
        assert!(built.success(), "building kvtier failed");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(lib_dir().join("kvtier"))
            .args([
                "up",
                "--arena-bytes",
                "24MiB",
                "--object-bytes",
                object_bytes,
                "--pool-bytes",
                "64MiB",
                "--segment-bytes",
                "4MiB",
            ])
            .arg("--socket")
            .arg(&socket)
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Ready when both sockets accept (bounded wait).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let fd = PathBuf::from(format!("{}.fd", socket.display()));
        while std::os::unix::net::UnixStream::connect(&socket).is_err()
            || std::os::unix::net::UnixStream::connect(&fd).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Agent {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn kill(mut self) -> tempfile::TempDir {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
