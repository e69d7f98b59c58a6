//! Operating kvtier, against the real binaries: `/metrics` counts exactly what traffic did on
//! an agent and a pool server, `/readyz` follows the pool, `kvtier stat --once --json` prints
//! the counts of `/metrics`, logs come as JSON with the span of each request, configuration
//! errors name their field, and docs/operations.md documents every key and metric. (The Kubernetes
//! manifests: tests/k8s.rs.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kvtier_agent::client::{AgentClient, ClientConfig};
use kvtier_core::BlockKey;
use kvtier_ops::stat::{self, Snapshot};

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
    kvtier_ops::http::get(addr, path, T).unwrap()
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

const REC: f64 = kvtier_core::block::record_len(OBJECT) as f64;
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
    // The agents' own view of their calls to the pool servers.
    let call = |o: &'static str| [("op", o), ("backend", "servers")];
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
            (
                "kvtier_dropped_writes_total",
                &[("reason", "queue_full")],
                0.0,
            ),
            (
                "kvtier_dropped_writes_total",
                &[("reason", "pool_error")],
                0.0,
            ),
            ("kvtier_agent_save_waits_total", &[], 0.0),
            (
                "kvtier_agent_dropped_saves_total",
                &[("reason", "no_room")],
                0.0,
            ),
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
            (
                "kvtier_pool_call_duration_seconds_count",
                &call("put"),
                16.0,
            ),
            ("kvtier_pool_call_duration_seconds_count", &call("get"), 4.0),
            (
                "kvtier_pool_call_duration_seconds_count",
                &call("exists"),
                // per block: 16 written behind, 4 looked up past memory
                20.0,
            ),
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
            ("kvtier_pool_call_duration_seconds_count", &call("put"), 0.0),
            (
                "kvtier_pool_call_duration_seconds_count",
                &call("get"),
                16.0,
            ),
            (
                "kvtier_pool_call_duration_seconds_count",
                &call("exists"),
                0.0,
            ),
            // blocks read through from the pool belong to no tenant
            ("kvtier_tenant_used_bytes", &tb, 0.0),
        ],
    );
    // The pool server: 16 puts; 20 gets (4 misses from A, 16 hits from B, all from disk: the
    // cache fills on reads); existence checks below.
    let cache = [("tier", "cache")];
    let disk = [("tier", "disk")];
    let pool_d = Delta {
        before: p0,
        after: scrape(&pool_m),
    };
    // The write-behind checks existence a batch at a time (up to 8 blocks, as many as were
    // queued when it woke): 2 to 16 requests for 16 blocks, plus the lookup's one.
    for name in [
        "kvtier_pool_requests_total",
        "kvtier_request_duration_seconds_count",
    ] {
        let exists = pool_d.of(name, &op("exists"));
        assert!(
            (3.0..=17.0).contains(&exists),
            "pool server {name} exists: {exists}"
        );
    }
    pool_d.check(
        "pool server",
        &[
            ("kvtier_pool_requests_total", &op("put"), 16.0),
            ("kvtier_pool_requests_total", &op("get"), 20.0),
            ("kvtier_pool_requests_total", &op("delete"), 0.0),
            ("kvtier_request_duration_seconds_count", &op("put"), 16.0),
            ("kvtier_request_duration_seconds_count", &op("get"), 20.0),
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
    let mut ctl = rt
        .block_on(kvtier_pool::proto::pool_client::PoolClient::connect(
            format!("http://{control}"),
        ))
        .unwrap();
    rt.block_on(ctl.drain(kvtier_pool::proto::DrainRequest {}))
        .unwrap();
    let why = wait_ready(&pool_m, 503);
    assert!(why.contains("draining"), "{why}");
    // Undrained, it is ready again; then drained for good.
    rt.block_on(ctl.undrain(kvtier_pool::proto::UndrainRequest {}))
        .unwrap();
    wait_ready(&pool_m, 200);
    rt.block_on(ctl.drain(kvtier_pool::proto::DrainRequest {}))
        .unwrap();
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

/// The operations page (docs/operations.md) lists every configuration key and every metric the
/// daemons export.
#[test]
fn the_operations_page_documents_every_key_and_metric() {
    use kvtier_agent::{AgentStats, TenantStats};
    use kvtier_core::metrics::{HistogramSnapshot, StoreStats};
    use kvtier_ops::render;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let ops = &readme[readme.find("## Operations").expect("an Operations section")..];
    for k in kvtier_ops::config::KEYS {
        for s in [k.path(), k.env(), k.flag()] {
            assert!(ops.contains(&format!("`{s}`")), "docs/operations.md: {s}");
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
        shortened_lookups: vec![("budget", 0)],
        ..AgentStats::default()
    };
    let h = [("lookup", HistogramSnapshot::default())];
    let pages = [
        render::agent_page(&agent, &h, &[("get", HistogramSnapshot::default())]),
        render::pool_page(&Default::default(), &h),
    ];
    let mut exported = std::collections::BTreeSet::new();
    for page in pages {
        for s in kvtier_ops::prom::parse(&page).unwrap() {
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| s.name.strip_suffix(x))
                .unwrap_or(&s.name);
            assert!(
                ops.contains(&format!("`{name}`")),
                "docs/operations.md: metric {name}"
            );
            exported.insert(name.to_string());
        }
    }
    // Every declared family is on a page (none declared and never exported).
    for f in kvtier_core::metrics::Family::ALL {
        assert!(exported.contains(f.name()), "{f:?} is on no page");
    }
}
