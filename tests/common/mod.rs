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

/// A real etcd cluster on loopback (Debian's `etcd-server`): `members` processes, each with
/// its data in `dir`. Killed on drop.
pub struct Etcd {
    pub members: Vec<Option<Child>>,
    /// Client URLs, `127.0.0.1:port` each.
    pub endpoints: Vec<String>,
}

impl Etcd {
    pub fn start(dir: &Path, members: usize) -> Etcd {
        let ports: Vec<(u16, u16)> = (0..members)
            .map(|_| {
                let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                (
                    a.local_addr().unwrap().port(),
                    b.local_addr().unwrap().port(),
                )
            })
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let children = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let bin = std::env::var("KVTIER_ETCD").unwrap_or_else(|_| "etcd".into());
                let child = Command::new(&bin)
                    .args(["--name", &format!("e{i}")])
                    .arg("--data-dir")
                    .arg(dir.join(format!("etcd{i}")))
                    .args([
                        "--listen-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                        "--advertise-client-urls",
                        &format!("http://127.0.0.1:{client}"),
                        "--listen-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                        "--initial-advertise-peer-urls",
                        &format!("http://127.0.0.1:{peer}"),
                        "--initial-cluster",
                        &initial,
                        "--initial-cluster-state",
                        "new",
                        "--log-level",
                        "error",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!(
                            "starting {bin} (apt-get install etcd-server, or set KVTIER_ETCD): {e}"
                        )
                    });
                Some(child)
            })
            .collect();
        let etcd = Etcd {
            members: children,
            endpoints: ports
                .iter()
                .map(|(c, _)| format!("127.0.0.1:{c}"))
                .collect(),
        };
        etcd.wait_healthy();
        etcd
    }

    /// A pool client that knows only these endpoints and the cluster's name.
    pub fn client(
        &self,
        cluster: &str,
        replication: usize,
    ) -> Arc<kvtier_pool::client::PoolClient> {
        let mut cfg = kvtier_pool::client::PoolClientConfig::new(Vec::new());
        let mut c = kvtier_pool::cluster::ClusterConfig::new(self.endpoints.clone());
        c.name = cluster.into();
        cfg.cluster = Some(c);
        cfg.replication = replication;
        kvtier_pool::client::PoolClient::new(cfg).unwrap()
    }

    /// `a,b,c`: the endpoints as one flag value.
    pub fn flag(&self) -> String {
        self.endpoints.join(",")
    }

    /// Waits until every live member answers `etcdctl endpoint health`.
    pub fn wait_healthy(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let live: Vec<String> = self
            .endpoints
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.is_some())
            .map(|(e, _)| e.clone())
            .collect();
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &live.join(","), "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "etcd did not become healthy"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The index of the member that is the raft leader now.
    pub fn leader(&self) -> usize {
        for (i, e) in self.endpoints.iter().enumerate() {
            if self.members[i].is_none() {
                continue;
            }
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", e, "endpoint", "status", "-w", "json"])
                .output()
                .unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            let st = &v[0]["Status"];
            if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"] {
                return i;
            }
        }
        panic!("no etcd leader found");
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
