//! Operating kvtier, against the real binaries: `/metrics` counts exactly what traffic did on
//! an agent and a pool server, `/readyz` follows the pool, `kvtier stat --once --json` prints
//! the counts of `/metrics`, logs come as JSON with the span of each request, configuration
//! errors name their field, and the Kubernetes manifests agree with what the binaries serve
//! and accept.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvtier::agent::client::{AgentClient, ClientConfig};
use kvtier::ops::stat::{self, Snapshot};
use kvtier::BlockKey;

const OBJECT: usize = 64 << 10;
const DIGEST: u64 = 0x0b5e_55ed;
const T: Duration = Duration::from_secs(5);

fn kvtier() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvtier"));
    // Only what a test sets: no KVTIER_* from the environment running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("KVTIER_") {
            c.env_remove(k);
        }
    }
    c
}

/// A daemon process and the lines it printed at start.
struct Daemon {
    child: Child,
    lines: Vec<String>,
}

impl Daemon {
    /// Starts `args` and reads stdout until a line containing `ready_line`.
    fn start(mut cmd: Command, ready_line: &str, stderr: Stdio) -> Daemon {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start kvtier");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 {
            lines.push(line.trim().to_string());
            if line.contains(ready_line) {
                break;
            }
            line.clear();
        }
        assert!(
            lines.last().is_some_and(|l| l.contains(ready_line)),
            "the daemon exited early: {lines:?}"
        );
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Daemon { child, lines }
    }

    /// The value printed after `prefix`.
    fn printed(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {:?}", self.lines))
            .trim()
            .to_string()
    }

    /// `host:port` of its metrics endpoint.
    fn metrics(&self, who: &str) -> String {
        let url = self.printed(&format!("kvtier {who}: metrics http://"));
        url.trim_end_matches("/metrics").to_string()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_pool(dir: &Path, extra: &[&str]) -> Daemon {
    let mut c = kvtier();
    c.args([
        "pool",
        "--listen",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .args(["--segment-bytes", "1MiB", "--capacity", "64MiB"])
    .args(["--cache-bytes", "4MiB", "--io", "psync", "--data"])
    .arg(dir)
    .args(extra);
    Daemon::start(c, "objects recovered", Stdio::null())
}

fn start_agent(dir: &Path, extra: &[&str], stderr: Stdio) -> (Daemon, PathBuf) {
    let socket = dir.join("agent.sock");
    let mut c = kvtier();
    c.args(["agent", "--arena-bytes", "16MiB", "--object-bytes", "64KiB"])
        .args(["--metrics-addr", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .arg("--data")
        .arg(dir.join("data"))
        .args(extra);
    (Daemon::start(c, "kvtier agent: arena", stderr), socket)
}

fn client(socket: &Path, engine: &str) -> AgentClient {
    let mut c = ClientConfig::new(socket, DIGEST, OBJECT as u64);
    c.engine = engine.to_string();
    c.timeout = Duration::from_secs(5);
    AgentClient::connect(c).expect("connect to the agent")
}

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(0x0b5e_0000_0000_0000_0000_0000_0000_0000 | i as u128)
}

fn keys(r: std::ops::Range<u64>) -> Vec<BlockKey> {
    r.map(key).collect()
}

fn block(i: usize) -> Vec<u8> {
    (0..OBJECT).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn scrape(addr: &str) -> Snapshot {
    stat::scrape(addr, T).expect("scrape /metrics")
}

/// A series (name, labels) and how much it should have moved.
type Expect<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Changes of every series between two scrapes.
struct Delta {
    before: Snapshot,
    after: Snapshot,
}

impl Delta {
    fn of(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let after = self
            .after
            .get(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} after"));
        after - self.before.get(name, labels).unwrap_or(0.0)
    }

    fn check(&self, who: &str, expected: &[Expect]) {
        let mut wrong = Vec::new();
        for (name, labels, v) in expected {
            let got = self.of(name, labels);
            if got != *v {
                wrong.push(format!("{name}{labels:?}: moved by {got}, expected {v}"));
            }
        }
        assert!(wrong.is_empty(), "{who}:\n{}", wrong.join("\n"));
    }
}

fn wait_for(addr: &str, name: &str, labels: &[(&str, &str)], v: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = scrape(addr).get(name, labels);
        if got == Some(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {got:?}, waited for {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    kvtier::ops::http::get(addr, path, T).unwrap()
}

fn wait_ready(addr: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(addr, "/readyz");
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const REC: f64 = kvtier::block::record_len(OBJECT) as f64;
const OBJ: f64 = OBJECT as f64;

#[test]
fn metrics_count_what_the_traffic_did_and_stat_prints_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let pool = start_pool(&dir.path().join("pool"), &["--control", "127.0.0.1:0"]);
    let pool_data = pool.printed("kvtier pool: data ");
    let pool_m = pool.metrics("pool");
    let log = std::fs::File::create(dir.path().join("a.log")).unwrap();
    let servers = ["--pool-servers", pool_data.as_str()];
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let mut json_logs = servers.to_vec();
    json_logs.extend(["--log-format", "json", "--log-level", "kvtier=debug"]);
    let (a, a_sock) = start_agent(&a_dir, &json_logs, Stdio::from(log));
    let (b, b_sock) = start_agent(&b_dir, &servers, Stdio::null());
    let (a_m, b_m) = (a.metrics("agent"), b.metrics("agent"));

    assert_eq!(get(&a_m, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&a_m, "/nothing").0, 404);
    wait_ready(&a_m, 200);
    wait_ready(&pool_m, 200);
    let (p0, a0, b0) = (scrape(&pool_m), scrape(&a_m), scrape(&b_m));

    // Node A: 16 blocks saved (and written behind), saved again (all deduplicated), loaded,
    // 4 blocks that were never saved asked for, and a lookup running past the saved prefix.
    let mut ca = client(&a_sock, "tenant-a");
    let stored = ca
        .save(&keys(0..16), |i, p| {
            p.copy_from_slice(&block(i));
            Ok(())
        })
        .unwrap();
    assert_eq!(stored, 16);
    wait_for(&a_m, "kvtier_agent_pool_writes_total", &[], 16.0);
    assert_eq!(ca.save(&keys(0..16), |_, _| unreachable!()).unwrap(), 0);
    let got = ca
        .load(&keys(0..16), |i, p| assert!(p == block(i)))
        .unwrap();
    assert!(got.iter().all(|&d| d));
    let got = ca.load(&keys(100..104), |_, _| {}).unwrap();
    assert!(got.iter().all(|&d| !d));
    assert_eq!(ca.lookup(&keys(0..20), false).unwrap(), (16, 16));
    // Node B: the same 16 blocks, through from the pool server, then again from memory.
    let mut cb = client(&b_sock, "tenant-b");
    for _ in 0..2 {
        let got = cb
            .load(&keys(0..16), |i, p| assert!(p == block(i)))
            .unwrap();
        assert!(got.iter().all(|&d| d));
    }

    let a1 = scrape(&a_m);
    let d = Delta {
        before: a0,
        after: a1.clone(),
    };
    let memory = [("tier", "memory")];
    let pool_t = [("tier", "pool")];
    let ta = [("tenant", "tenant-a")];
    let op = |o: &'static str| [("op", o)];
    d.check(
        "agent A",
        &[
            ("kvtier_agent_sessions", &[], 1.0),
            ("kvtier_agent_leases", &[], 0.0),
            ("kvtier_hits_total", &memory, 16.0),
            ("kvtier_hits_total", &pool_t, 0.0),
            ("kvtier_misses_total", &memory, 4.0),
            ("kvtier_misses_total", &pool_t, 4.0),
            ("kvtier_agent_saved_blocks_total", &[], 16.0),
            ("kvtier_agent_deduplicated_blocks_total", &[], 16.0),
            ("kvtier_agent_pool_writes_total", &[], 16.0),
            ("kvtier_dropped_writes_total", &[], 0.0),
            ("kvtier_bytes_in_total", &memory, 16.0 * OBJ),
            ("kvtier_bytes_out_total", &memory, 16.0 * OBJ),
            ("kvtier_bytes_in_total", &pool_t, 16.0 * REC),
            ("kvtier_bytes_out_total", &pool_t, 0.0),
            ("kvtier_used_bytes", &memory, 16.0 * REC),
            ("kvtier_objects", &memory, 16.0),
            ("kvtier_evictions_total", &memory, 0.0),
            ("kvtier_queue_depth", &[("queue", "write_behind")], 0.0),
            ("kvtier_request_duration_seconds_count", &op("hello"), 1.0),
            ("kvtier_request_duration_seconds_count", &op("lookup"), 1.0),
            (
                "kvtier_request_duration_seconds_count",
                &op("begin_save"),
                2.0,
            ),
            // one commit per batch of four filled blocks
            (
                "kvtier_request_duration_seconds_count",
                &op("commit_save"),
                4.0,
            ),
            (
                "kvtier_request_duration_seconds_count",
                &op("begin_load"),
                2.0,
            ),
            (
                "kvtier_request_duration_seconds_count",
                &op("end_load"),
                2.0,
            ),
            ("kvtier_request_duration_seconds_count", &op("stats"), 0.0),
            ("kvtier_tenant_sessions", &ta, 1.0),
            ("kvtier_tenant_saved_blocks_total", &ta, 16.0),
            ("kvtier_tenant_loaded_blocks_total", &ta, 16.0),
            ("kvtier_tenant_missed_blocks_total", &ta, 4.0),
            ("kvtier_tenant_used_bytes", &ta, 16.0 * REC),
        ],
    );
    let tb = [("tenant", "tenant-b")];
    Delta {
        before: b0,
        after: scrape(&b_m),
    }
    .check(
        "agent B",
        &[
            ("kvtier_agent_sessions", &[], 1.0),
            ("kvtier_hits_total", &memory, 16.0),
            ("kvtier_hits_total", &pool_t, 16.0),
            ("kvtier_misses_total", &memory, 16.0),
            ("kvtier_misses_total", &pool_t, 0.0),
            ("kvtier_bytes_out_total", &memory, 32.0 * OBJ),
            ("kvtier_bytes_out_total", &pool_t, 16.0 * REC),
            ("kvtier_bytes_in_total", &pool_t, 0.0),
            ("kvtier_agent_saved_blocks_total", &[], 0.0),
            ("kvtier_objects", &memory, 16.0),
            (
                "kvtier_request_duration_seconds_count",
                &op("begin_load"),
                2.0,
            ),
            ("kvtier_tenant_loaded_blocks_total", &tb, 32.0),
            // blocks read through from the pool belong to no tenant
            ("kvtier_tenant_used_bytes", &tb, 0.0),
        ],
    );
    // The pool server: 16 puts; 20 gets (4 misses from A, 16 hits from B, all from disk: the
    // cache fills on reads); an existence check per block written behind, and one for A's
    // lookup past its memory.
    let cache = [("tier", "cache")];
    let disk = [("tier", "disk")];
    Delta {
        before: p0,
        after: scrape(&pool_m),
    }
    .check(
        "pool server",
        &[
            ("kvtier_pool_requests_total", &op("put"), 16.0),
            ("kvtier_pool_requests_total", &op("get"), 20.0),
            ("kvtier_pool_requests_total", &op("exists"), 17.0),
            ("kvtier_pool_requests_total", &op("delete"), 0.0),
            ("kvtier_request_duration_seconds_count", &op("put"), 16.0),
            ("kvtier_request_duration_seconds_count", &op("get"), 20.0),
            ("kvtier_request_duration_seconds_count", &op("exists"), 17.0),
            ("kvtier_hits_total", &cache, 0.0),
            ("kvtier_hits_total", &disk, 16.0),
            ("kvtier_misses_total", &cache, 20.0),
            ("kvtier_misses_total", &disk, 4.0),
            ("kvtier_bytes_in_total", &disk, 16.0 * REC),
            ("kvtier_bytes_out_total", &disk, 16.0 * OBJ),
            ("kvtier_bytes_out_total", &cache, 0.0),
            ("kvtier_objects", &disk, 16.0),
            ("kvtier_objects", &cache, 16.0),
            ("kvtier_evictions_total", &disk, 0.0),
            ("kvtier_pool_errors_total", &[], 0.0),
            ("kvtier_pool_bad_records_total", &[], 0.0),
            (
                "kvtier_pool_rejected_connections_total",
                &[("reason", "auth")],
                0.0,
            ),
            ("kvtier_pool_draining", &[], 0.0),
        ],
    );

    // `kvtier stat --once --json` prints the counts of /metrics: every series, and the
    // summary built from them (nothing moves on an idle agent between the two scrapes).
    let out = kvtier()
        .args(["stat", "--once", "--json", &format!("http://{a_m}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let scraped = scrape(&a_m);
    assert_eq!(scraped.samples, a1.samples, "the agent was idle");
    let printed: BTreeMap<String, f64> = v["metrics"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
        .collect();
    let expected: BTreeMap<String, f64> = scraped
        .samples
        .iter()
        .map(|s| (s.series(), s.value))
        .collect();
    assert_eq!(printed, expected);
    assert_eq!(v["role"], "agent");
    assert_eq!(v["tiers"]["memory"]["hits"], 16);
    assert_eq!(v["tiers"]["pool"]["misses"], 4);
    assert_eq!(v["hit_ratio"], 0.8);
    assert_eq!(v["engines"], 1);
    assert_eq!(v["requests"]["commit_save"]["count"], 4);
    assert_eq!(v["tenants"]["tenant-a"]["saved_blocks"], 16);
    assert_eq!(v["errors"]["dropped_writes"], 0);
    // The table view of the same scrape.
    let out = kvtier().args(["stat", "--once", &a_m]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("80.0% since start"),
        "{text}"
    );
    assert!(text.contains("tenant-a"), "{text}");

    // Logs: JSON lines, each request's inside its span (op, session, blocks).
    drop(ca);
    wait_for(&a_m, "kvtier_agent_sessions", &[], 0.0);
    let logs = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    let lookup = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|j| j["span"]["name"] == "rpc" && j["span"]["op"] == "lookup")
        .unwrap_or_else(|| panic!("no JSON log line in a lookup span:\n{logs}"));
    assert_eq!(lookup["span"]["blocks"], 20);
    assert_eq!(lookup["span"]["bytes"], 20 * OBJECT);
    assert_eq!(lookup["fields"]["message"], "done");

    // Readiness follows the pool: a draining pool server is not ready; an agent whose pool
    // servers are all gone is not either.
    let control = pool.printed("kvtier pool: control ");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c =
            kvtier::pool::proto::pool_client::PoolClient::connect(format!("http://{control}"))
                .await
                .unwrap();
        c.drain(kvtier::pool::proto::DrainRequest {}).await.unwrap();
    });
    let why = wait_ready(&pool_m, 503);
    assert!(why.contains("draining"), "{why}");
    assert_eq!(scrape(&pool_m).get("kvtier_pool_draining", &[]), Some(1.0));
    drop(pool);
    let why = wait_ready(&a_m, 503);
    assert!(why.contains("no pool server reachable"), "{why}");
    drop((a, b));
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run kvtier")
}

fn fails_naming(out: Output, words: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "accepted; stderr: {err}");
    for w in words {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    err
}

#[test]
fn bad_configurations_fail_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let check = |p: &Path| run(kvtier().args(["config", "check"]).arg(p));

    // An unknown field: named, with the fields allowed.
    let p = file(
        "unknown.toml",
        "[agent]\narena_bytes = \"1GiB\"\narena_byte = \"2GiB\"\n",
    );
    fails_naming(
        check(&p),
        &["arena_byte", "expected one of", "`arena_bytes`", "line 3"],
    );
    // A negative capacity.
    let p = file("negative.toml", "[pool]\ncapacity = -1\n");
    fails_naming(check(&p), &["pool.capacity", "negative"]);
    // ... also when the daemon starts with it, and when it comes from a variable or a flag.
    fails_naming(
        run(kvtier()
            .args(["pool", "--listen", "127.0.0.1:0", "--config"])
            .arg(&p)),
        &["pool.capacity", "negative"],
    );
    fails_naming(
        run(kvtier()
            .args(["pool", "--dry-run"])
            .env("KVTIER_POOL_CAPACITY", "-5GiB")),
        &["pool.capacity", "negative", "KVTIER_POOL_CAPACITY"],
    );
    fails_naming(
        run(kvtier().args(["up", "--dry-run", "--arena-bytes=-1"])),
        &["agent.arena_bytes", "negative", "--arena-bytes"],
    );
    // An unreachable pool server (refused), and one whose name does not resolve: named by
    // position; --offline checks values only.
    let p = file(
        "unreachable.toml",
        "[agent]\npool_servers = [\"127.0.0.1:1\"]\n",
    );
    fails_naming(
        check(&p),
        &["agent.pool_servers[0]", "127.0.0.1:1", "unreachable"],
    );
    let out = run(kvtier().args(["config", "check", "--offline"]).arg(&p));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = file(
        "unresolvable.toml",
        "[agent]\npool_servers = [\"127.0.0.1:1\", \"no-such-host.invalid:7070=2\"]\nreplication = 2\n",
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = listener.local_addr().unwrap().to_string();
    let p2 = file(
        "half.toml",
        &format!("[agent]\npool_servers = [\"{up}\", \"no-such-host.invalid:7070=2\"]\n"),
    );
    fails_naming(
        check(&p2),
        &["agent.pool_servers[1]", "no-such-host.invalid", "resolve"],
    );
    fails_naming(check(&p), &["agent.pool_servers[0]"]);
    // A value outside what is allowed says what is.
    let p = file("format.toml", "[log]\nformat = \"xml\"\n");
    fails_naming(check(&p), &["log.format", "human", "json"]);

    // The default file checks, and starts nothing.
    let out = run(kvtier().args(["config", "default"]));
    assert!(out.status.success());
    let p = file("default.toml", &String::from_utf8_lossy(&out.stdout));
    let out = check(&p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Precedence: flags over the environment over the file.
    let p = file(
        "layers.toml",
        "[agent]\narena_bytes = \"2GiB\"\nwrite_queue = 7\nreplication = 1\n",
    );
    let out = run(kvtier()
        .args(["agent", "--dry-run", "--config"])
        .arg(&p)
        .args(["--write-queue", "9"])
        .env("KVTIER_AGENT_ARENA_BYTES", "3GiB")
        .env("KVTIER_AGENT_WRITE_QUEUE", "8"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(effective["agent"]["arena_bytes"].as_str(), Some("3GiB"));
    assert_eq!(effective["agent"]["write_queue"].as_integer(), Some(9));
    drop(listener);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests (integrations/k8s)

use yaml_rust2::{Yaml, YamlLoader};

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or_else(|| panic!("not a string: {y:?}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], |v| v.as_slice())
}

/// `9Gi`, `200Gi`, `512Mi`, `1G` in bytes.
fn quantity(q: &str) -> u64 {
    let (num, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = num.parse().unwrap();
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        u => panic!("unit {u}"),
    }
}

fn container<'a>(pod: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The volume mounted at `path` in container `c` of `pod`, and the mount.
fn volume_at<'a>(pod: &'a Yaml, c: &'a Yaml, path: &str) -> (&'a Yaml, &'a Yaml) {
    let m = list(&c["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(path))
        .unwrap_or_else(|| panic!("nothing mounted at {path}"));
    let v = list(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap_or_else(|| panic!("no volume {:?}", m["name"]));
    (v, m)
}

/// A probe's port as a number (a port name is resolved through the container's ports).
fn probe_port(c: &Yaml, probe: &str, path: &str) -> i64 {
    let get = &c[probe]["httpGet"];
    assert_eq!(get["path"].as_str(), Some(path), "{probe}");
    match &get["port"] {
        Yaml::Integer(p) => *p,
        Yaml::String(name) => list(&c["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("{probe}: no port named {name}")),
        other => panic!("{probe}: port {other:?}"),
    }
}

fn port_named(c: &Yaml, name: &str) -> i64 {
    list(&c["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

fn parent(p: &str) -> String {
    Path::new(p).parent().unwrap().to_str().unwrap().to_string()
}

/// Runs a daemon container's args (and literal environment) through the real CLI with
/// `--dry-run`, its `--config` pointing at `config`; returns the effective configuration.
fn dry_run(c: &Yaml, config: &Path) -> (String, toml::Table) {
    let mut args: Vec<String> = list(&c["args"]).iter().map(|a| s(a).to_string()).collect();
    let i = args
        .iter()
        .position(|a| a == "--config")
        .expect("--config in args");
    let in_pod = std::mem::replace(&mut args[i + 1], config.to_str().unwrap().to_string());
    let mut cmd = kvtier();
    cmd.args(&args).arg("--dry-run");
    for e in list(&c["env"]) {
        let (name, value) = (s(&e["name"]), s(&e["value"]));
        assert!(
            kvtier::ops::config::KEYS.iter().any(|k| k.env() == name),
            "{name} is not a configuration variable"
        );
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "kvtier {args:?} --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        in_pod,
        toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap(),
    )
}

#[test]
fn kubernetes_manifests_agree_with_the_binaries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut docs: Vec<Yaml> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        let parsed = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(!parsed.is_empty(), "{f}: no document");
        for d in parsed {
            assert!(d["apiVersion"].as_str().is_some(), "{f}: no apiVersion");
            let kind = s(&d["kind"]).to_string();
            if kind != "Kustomization" {
                assert!(d["metadata"]["name"].as_str().is_some(), "{f}: no name");
                if kind != "Namespace" {
                    assert_eq!(d["metadata"]["namespace"].as_str(), Some("kvtier"), "{f}");
                }
            }
            docs.push(d);
        }
    }
    let find = |kind: &str, name: &str| -> &Yaml {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    // The kustomization applies every manifest.
    let kz = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Kustomization"))
        .unwrap();
    let mut resources: Vec<&str> = list(&kz["resources"]).iter().map(s).collect();
    resources.sort();
    let others: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(resources, others);

    // The ConfigMap's file: the real parser, and the real `kvtier config check`.
    let cm = find("ConfigMap", "kvtier-config");
    let text = s(&cm["data"]["kvtier.toml"]);
    let cfg = kvtier::ops::config::Config::parse(text).unwrap();
    cfg.validate(&kvtier::ops::config::SECTIONS).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("kvtier.toml");
    std::fs::write(&file, text).unwrap();
    let out = run(kvtier().args(["config", "check", "--offline"]).arg(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut socket_host_dir = String::new();
    let mut agent_gid = 0;
    let mut agent_socket = String::new();
    for (kind, name, section) in [
        ("DaemonSet", "kvtier-agent", "agent"),
        ("StatefulSet", "kvtier-pool", "pool"),
    ] {
        let obj = find(kind, name);
        let pod = &obj["spec"]["template"]["spec"];
        let c = container(pod, "kvtier");
        assert_eq!(
            s(&list(&c["args"])[0]),
            section,
            "{name} runs `kvtier {section}`"
        );
        // Args and environment are accepted by the real CLI, on the ConfigMap's file.
        let (config_in_pod, eff) = dry_run(c, &file);
        let eff = eff[section].as_table().unwrap();
        let (v, m) = volume_at(pod, c, &parent(&config_in_pod));
        assert_eq!(
            v["configMap"]["name"].as_str(),
            Some("kvtier-config"),
            "{name}"
        );
        assert_eq!(m["readOnly"].as_bool(), Some(true));
        assert!(config_in_pod.ends_with("/kvtier.toml"));
        // Probes go to the metrics port of the configuration, which listens on every
        // interface (kubelet probes the pod IP).
        let metrics: std::net::SocketAddr = eff["metrics_addr"].as_str().unwrap().parse().unwrap();
        assert!(
            metrics.ip().is_unspecified(),
            "{name}: metrics on {metrics}"
        );
        let mport = metrics.port() as i64;
        assert_eq!(port_named(c, "metrics"), mport, "{name}");
        assert_eq!(probe_port(c, "livenessProbe", "/healthz"), mport, "{name}");
        assert_eq!(probe_port(c, "readinessProbe", "/readyz"), mport, "{name}");
        let annotations = &obj["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(mport.to_string().as_str())
        );
        let req = &c["resources"]["requests"];
        assert!(
            req["cpu"].as_str().is_some() && req["memory"].as_str().is_some(),
            "{name}"
        );
        let memory = quantity(s(&req["memory"]));
        for m in list(&c["volumeMounts"]) {
            let known = list(&pod["volumes"]).iter().any(|v| v["name"] == m["name"])
                || list(&obj["spec"]["volumeClaimTemplates"])
                    .iter()
                    .any(|v| v["metadata"]["name"] == m["name"]);
            assert!(known, "{name}: mount {:?} has no volume", m["name"]);
        }
        assert_eq!(pod["enableServiceLinks"].as_bool(), Some(false), "{name}");
        let secret_key = if section == "agent" {
            "pool_secret_file"
        } else {
            "secret_file"
        };
        let secret = eff[secret_key].as_str().unwrap();
        let (v, _) = volume_at(pod, c, &parent(secret));
        assert_eq!(
            v["secret"]["secretName"].as_str(),
            Some("kvtier-pool-secret")
        );

        if section == "agent" {
            let arena = cfg.agent.arena_bytes.0;
            assert!(
                memory >= arena,
                "the agent's memory request covers its arena"
            );
            agent_socket = eff["socket"].as_str().unwrap().to_string();
            let (v, _) = volume_at(pod, c, &parent(&agent_socket));
            socket_host_dir = s(&v["hostPath"]["path"]).to_string();
            let (_, _) = volume_at(pod, c, eff["data"].as_str().unwrap());
            agent_gid = pod["securityContext"]["runAsGroup"].as_i64().unwrap();
        } else {
            let listen: std::net::SocketAddr = eff["listen"].as_str().unwrap().parse().unwrap();
            let control: std::net::SocketAddr = eff["control"].as_str().unwrap().parse().unwrap();
            assert_eq!(port_named(c, "data"), listen.port() as i64);
            assert_eq!(port_named(c, "control"), control.port() as i64);
            assert!(
                memory >= cfg.pool.cache_bytes.0,
                "the pool's memory request covers its cache"
            );
            // The data directory is a persistent volume at least as large as the capacity.
            let m = list(&c["volumeMounts"])
                .iter()
                .find(|m| m["mountPath"].as_str() == eff["data"].as_str())
                .expect("the pool's data directory is mounted");
            let pvc = list(&obj["spec"]["volumeClaimTemplates"])
                .iter()
                .find(|v| v["metadata"]["name"] == m["name"])
                .expect("the data directory is a volume claim");
            let storage = quantity(s(&pvc["spec"]["resources"]["requests"]["storage"]));
            assert!(storage >= cfg.pool.capacity.0);
            // A headless Service names each pod; its ports are the container's.
            let svc_name = s(&obj["spec"]["serviceName"]);
            let svc = find("Service", svc_name);
            assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"));
            for p in list(&svc["spec"]["ports"]) {
                assert_eq!(
                    port_named(c, s(&p["targetPort"])),
                    p["port"].as_i64().unwrap()
                );
            }
            // Every pool server the agents list is a pod of this StatefulSet, on its port.
            let replicas = obj["spec"]["replicas"].as_i64().unwrap();
            let ns = s(&obj["metadata"]["namespace"]);
            assert!(!cfg.agent.pool_servers.is_empty());
            assert!(cfg.agent.replication as i64 <= replicas);
            for m in &cfg.agent.pool_servers {
                let ok = (0..replicas).any(|i| {
                    *m == format!(
                        "{name}-{i}.{svc_name}.{ns}.svc.cluster.local:{}",
                        listen.port()
                    )
                });
                assert!(ok, "agent.pool_servers: {m} is no pod of {name}");
            }
        }
    }

    // The inference pod: vLLM with the connector, the agent's socket directory mounted from
    // the same host path, in the agent's group.
    let vllm = find("Deployment", "vllm");
    let pod = &vllm["spec"]["template"]["spec"];
    let c = container(pod, "vllm");
    let args: Vec<&str> = list(&c["args"]).iter().map(s).collect();
    let i = args
        .iter()
        .position(|a| *a == "--kv-transfer-config")
        .unwrap();
    let kv: serde_json::Value = serde_json::from_str(args[i + 1]).unwrap();
    assert_eq!(kv["kv_connector"], "KvtierConnector");
    assert_eq!(kv["kv_connector_module_path"], "kvtier_vllm.connector");
    let extra = kv["kv_connector_extra_config"].as_object().unwrap();
    assert_eq!(extra.keys().collect::<Vec<_>>(), ["socket"]);
    assert_eq!(extra["socket"], agent_socket.as_str());
    let (v, _) = volume_at(pod, c, &parent(&agent_socket));
    assert_eq!(s(&v["hostPath"]["path"]), socket_host_dir);
    let groups: Vec<i64> = list(&pod["securityContext"]["supplementalGroups"])
        .iter()
        .filter_map(Yaml::as_i64)
        .collect();
    assert!(
        groups.contains(&agent_gid),
        "the engine joins the agent's group"
    );
    let env = |n: &str| {
        list(&c["env"])
            .iter()
            .find(|e| e["name"].as_str() == Some(n))
            .map(|e| s(&e["value"]).to_string())
            .unwrap_or_else(|| panic!("no {n}"))
    };
    let client_dir = list(&c["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some("kvtier-client"))
        .map(|m| s(&m["mountPath"]).to_string())
        .unwrap();
    assert!(env("KVTIER_LIB").starts_with(&client_dir));
    assert!(env("PYTHONPATH").starts_with(&client_dir));
    // The connector it names exists, and takes a `socket` setting.
    let vllm_pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("integrations/vllm/kvtier_vllm");
    let connector = std::fs::read_to_string(vllm_pkg.join("connector.py")).unwrap();
    assert!(connector.contains("class KvtierConnector"));
    let settings = std::fs::read_to_string(vllm_pkg.join("config.py")).unwrap();
    assert!(
        settings.contains("\n    socket: str"),
        "the connector's settings have `socket`"
    );
}

/// The README's operations section lists every configuration key and every metric the daemons
/// export.
#[test]
fn the_readme_documents_every_key_and_metric() {
    use kvtier::agent::{AgentStats, TenantStats};
    use kvtier::metrics::{HistogramSnapshot, StoreStats};
    use kvtier::ops::render;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let ops = &readme[readme.find("## Operations").expect("an Operations section")..];
    for k in kvtier::ops::config::KEYS {
        for s in [k.path(), k.env(), k.flag()] {
            assert!(ops.contains(&format!("`{s}`")), "README: {s}");
        }
    }
    let agent = AgentStats {
        pool: Some((
            "embedded".into(),
            StoreStats {
                capacity_bytes: 1,
                corrupt: vec![("payload_checksum", 0)],
                ..StoreStats::default()
            },
        )),
        tenants: vec![TenantStats::default()],
        ..AgentStats::default()
    };
    let h = [("lookup", HistogramSnapshot::default())];
    let pages = [
        render::agent_page(&agent, &h),
        render::pool_page(&Default::default(), &h),
    ];
    for page in pages {
        for s in kvtier::ops::prom::parse(&page).unwrap() {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| s.name.strip_suffix(x))
                .unwrap_or(&s.name);
            assert!(ops.contains(&format!("`{name}`")), "README: metric {name}");
        }
    }
}
