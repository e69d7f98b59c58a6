//! Helpers shared by the integration tests: real `kvtier pool` server processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

/// A `kvtier pool` process and what it printed.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stderr: Arc<parking_lot::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kvtier pool` process on `listen` serving `data`, printing its address.
pub fn start_server(data: &Path, listen: &str, secret: Option<&Path>) -> Server {
    start_server_with(data, listen, secret, &[])
}

/// A server with extra `kvtier pool` flags.
pub fn start_server_with(
    data: &Path,
    listen: &str,
    secret: Option<&Path>,
    extra: &[&str],
) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvtier"));
    cmd.args([
        "pool",
        "--listen",
        listen,
        "--control",
        "none",
        "--segment-bytes",
        "1MiB",
    ])
    .args([
        "--capacity",
        "256MiB",
        "--cache-bytes",
        "4MiB",
        "--io",
        "psync",
    ])
    .arg("--data")
    .arg(data)
    .args(extra)
    .env("KVTIER_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(s) = secret {
        cmd.arg("--secret-file").arg(s);
    }
    let mut child = cmd.spawn().expect("start kvtier pool");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(a) = line.trim().strip_prefix("kvtier pool: data ") {
            addr = Some(a.to_string());
        }
        if line.contains("objects recovered") {
            break;
        }
        line.clear();
    }
    let stderr = Arc::new(parking_lot::Mutex::new(String::new()));
    let (mut err, sink) = (child.stderr.take().unwrap(), stderr.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    std::thread::spawn(move || {
        // Keep draining stdout so the server never blocks on it.
        let mut s = String::new();
        while out.read_line(&mut s).unwrap_or(0) > 0 {
            s.clear();
        }
    });
    Server {
        child,
        addr: addr.expect("the server printed its address"),
        stderr,
    }
}

/// A test block object of `payload` bytes: pseudo-random bytes from `i`, sealed under `key`.
pub fn test_object(
    i: u64,
    payload: usize,
    key: kvtier_core::BlockKey,
    layout: u64,
) -> kvtier_core::block::BlockObject {
    let mut o = kvtier_core::block::BlockObject::new(payload).unwrap();
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in o.payload_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    o.seal(key, layout, 0);
    o
}

/// A TCP address that accepts connections and never answers (a stopped server, or one whose
/// network black-holes): its connections are held open for the rest of the test.
pub fn black_hole() -> String {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let held: Vec<_> = hole.incoming().take(64).collect();
        drop(held);
    });
    addr
}
