//! The agent as engines meet it: real `kvtier up` processes on Unix sockets in a temporary
//! directory, engines in separate processes (this test binary re-executed in a role).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvtier_agent::client::{AgentClient, ClientConfig};
use kvtier_core::BlockKey;

const OBJECT: usize = 64 << 10;
const DIGEST: u64 = 0x1a2b_3c4d;

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        Agent::start_with(dir, &[])
    }

    /// An agent whose socket and data live in `dir`, with extra `kvtier up` flags (which
    /// replace the sizes given here by default).
    fn start_with(dir: &Path, extra: &[&str]) -> Agent {
        let socket = dir.join("agent.sock");
        let sizes = [
            ("--arena-bytes", "48MiB"),
            ("--object-bytes", "64KiB"),
            ("--pool-bytes", "64MiB"),
            ("--segment-bytes", "4MiB"),
        ];
        let child = Command::new(env!("CARGO_BIN_EXE_kvtier"))
            .arg("up")
            .args(
                sizes
                    .iter()
                    .filter(|(flag, _)| !extra.contains(flag))
                    .flat_map(|(flag, v)| [*flag, *v]),
            )
            .arg("--socket")
            .arg(&socket)
            .arg("--data")
            .arg(dir.join("data"))
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent { child, socket };
        // Ready when a client can open a session (bounded wait: no fixed sleep).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if AgentClient::connect(agent.config()).is_ok() {
                return agent;
            }
            assert!(Instant::now() < deadline, "the agent did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self) -> ClientConfig {
        config(&self.socket)
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(socket: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(socket, DIGEST, OBJECT as u64);
    c.timeout = Duration::from_secs(2);
    c
}

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(0xB10C_0000_0000_0000_0000_0000_0000_0000 | i as u128)
}

fn block(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..OBJECT)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs this test binary as another engine process in `role`.
fn engine(role: &str, socket: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "engine_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVTIER_ROLE", role)
        .env("KVTIER_SOCKET", socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "a child process of the agent tests"]
fn engine_child() {
    let socket = PathBuf::from(std::env::var("KVTIER_SOCKET").unwrap());
    let mut c = AgentClient::connect(config(&socket)).unwrap();
    let keys: Vec<BlockKey> = (0..256).map(key).collect();
    match std::env::var("KVTIER_ROLE").unwrap().as_str() {
        // Another replica: finds the prefix, loads it into its own memory, checks the bytes.
        "reader" => {
            let (prefix, _) = c.lookup(&keys, true).unwrap();
            assert_eq!(prefix, 256);
            let mut mine = vec![vec![0u8; OBJECT]; 256];
            let got = c
                .load(&keys, |i, payload| mine[i].copy_from_slice(payload))
                .unwrap();
            assert!(got.iter().all(|&d| d), "every block delivered");
            for (i, m) in mine.iter().enumerate() {
                assert!(*m == block(i as u64), "block {i} differs");
            }
            println!("reader ok");
        }
        // Leases slots, says how many, then waits to be killed.
        "holder" => {
            let more: Vec<BlockKey> = (1000..1100).map(key).collect();
            let (g, considered) = c.begin_save(&more).unwrap();
            assert_eq!(considered, more.len(), "within one window");
            println!("leased {}", g.len());
            std::thread::sleep(Duration::from_secs(600));
        }
        r => panic!("unknown role {r}"),
    }
}

fn save_all(c: &mut AgentClient) -> u32 {
    let keys: Vec<BlockKey> = (0..256).map(key).collect();
    save_all_of(c, &keys)
}

/// Waits (bounded) until write-behind has put `n` blocks into the embedded pool.
fn wait_for_pool_writes(c: &mut AgentClient, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.stats().unwrap().pool_writes < n {
        assert!(Instant::now() < deadline, "write-behind did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn another_process_loads_what_one_saved() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut c = AgentClient::connect(agent.config()).unwrap();
    assert_eq!(save_all(&mut c), 256);
    // Saving again stores nothing: every key is present.
    assert_eq!(save_all(&mut c), 0);
    let out = engine("reader", &agent.socket).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = c.stats().unwrap();
    assert_eq!(s.saves, 256);
    assert!(s.deduplicated >= 256);
    assert!(s.hits_memory >= 256, "{s:?}");
    assert_eq!(s.leases, 0);
}

#[test]
fn a_dead_engines_leases_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut c = AgentClient::connect(agent.config()).unwrap();
    let before = c.stats().unwrap();
    let mut holder = engine("holder", &agent.socket);
    // libtest may print "test engine_child ... " on the same line before the child's output.
    let line = BufReader::new(holder.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("leased "))
        .expect("the holder exited without leasing");
    let leased: u64 = line
        .split("leased ")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(leased, 100);
    assert_eq!(c.stats().unwrap().leases, before.leases + 100);
    holder.kill().unwrap();
    holder.wait().unwrap();
    // The agent notices the closed descriptor connection; wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stats().unwrap();
        if s.leases == before.leases && s.reclaimed_leases == 100 {
            assert_eq!(
                s.arena_used, before.arena_used,
                "arena usage back where it was"
            );
            break;
        }
        assert!(Instant::now() < deadline, "leases not reclaimed: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The slots are free again: a full save fits.
    assert_eq!(save_all(&mut c), 256);
}

#[test]
fn a_killed_agent_is_an_error_within_the_deadline_then_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path());
    let mut c = AgentClient::connect(agent.config()).unwrap();
    assert_eq!(save_all(&mut c), 256);
    wait_for_pool_writes(&mut c, 256);
    let keys: Vec<BlockKey> = (0..256).map(key).collect();
    // Kill the agent while a load is running in this thread.
    let pid = agent.child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let t0 = Instant::now();
    let r = c.load(&keys, |_, _| {});
    let took = t0.elapsed();
    killer.join().unwrap();
    agent.kill();
    assert!(
        took < Duration::from_secs(3),
        "the load returned after {took:?}: past its deadline"
    );
    if let Ok(d) = &r {
        assert_eq!(d.len(), 256); // finished before the kill: a complete answer
    }
    // Dead agent: an error, fast.
    let t0 = Instant::now();
    assert!(c.lookup(&keys, false).is_err());
    assert!(t0.elapsed() < Duration::from_secs(3));
    // A new agent on the same socket and data: the client reconnects by itself, and the blocks
    // come back from the recovered pool, byte for byte.
    let agent = Agent::start(dir.path());
    let (prefix, in_memory) = c.lookup(&keys, false).unwrap();
    assert_eq!((prefix, in_memory), (256, 0));
    let mut ok = 0;
    let d = c
        .load(&keys, |i, p| {
            assert!(
                p == block(i as u64).as_slice(),
                "block {i} differs after recovery"
            );
            ok += 1;
        })
        .unwrap();
    assert!(d.iter().all(|&x| x));
    assert_eq!(ok, 256);
    assert_eq!(c.stats().unwrap().hits_pool, 256);
    drop(agent);
}

#[test]
fn a_stopped_agent_is_a_timeout_within_the_deadline_and_serves_again_when_continued() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut cfg = agent.config();
    cfg.timeout = Duration::from_millis(500);
    let mut c = AgentClient::connect(cfg.clone()).unwrap();
    let keys: Vec<BlockKey> = (0..32).map(key).collect();
    assert_eq!(save_all_of(&mut c, &keys), 32);
    // SIGSTOP: the agent's sockets stay open but nothing answers (a frozen process).
    let pid = agent.child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    // kill() returns before the stop lands: wait until every thread is in the stopped state,
    // or a thread still running could answer the lookup below.
    wait_until_stopped(pid);
    let t0 = Instant::now();
    let e = c.lookup(&keys, false).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(e.kind(), kvtier_core::ErrorKind::Timeout, "{e}");
    // A new engine connecting meanwhile: a timeout too, not a hang.
    let t0 = Instant::now();
    assert!(AgentClient::connect(cfg).is_err());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // Continued: the client reconnects and finds its blocks.
    let (prefix, _) = c.lookup(&keys, false).unwrap();
    assert_eq!(prefix, 32);
    drop(agent);
}

/// Waits until the kernel reports every thread of `pid` stopped ('T' in /proc/PID/task/*/stat).
fn wait_until_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let all_stopped = tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "agent {pid} did not stop");
        std::thread::yield_now();
    }
}

#[test]
fn lookup_prefetches_pool_blocks_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(dir.path());
    let mut c = AgentClient::connect(agent.config()).unwrap();
    assert_eq!(save_all(&mut c), 256);
    wait_for_pool_writes(&mut c, 256);
    agent.kill();
    let _agent = Agent::start(dir.path());
    let keys: Vec<BlockKey> = (0..256).map(key).collect();
    // The restarted agent has everything on disk and nothing in memory; a lookup with prefetch
    // brings the prefix into memory in the background.
    assert_eq!(c.lookup(&keys, true).unwrap(), (256, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.lookup(&keys, false).unwrap().1 < 256 {
        assert!(
            Instant::now() < deadline,
            "prefetch did not bring the blocks into memory"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = c
        .load(&keys, |i, p| assert!(p == block(i as u64).as_slice()))
        .unwrap();
    assert!(d.iter().all(|&x| x));
    let s = c.stats().unwrap();
    assert_eq!((s.hits_memory, s.hits_pool), (256, 0), "{s:?}");
}

#[test]
fn a_failed_copy_gives_its_slots_back() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut c = AgentClient::connect(agent.config()).unwrap();
    let keys: Vec<BlockKey> = (0..16).map(key).collect();
    // The engine fails to produce every other block (a copy error): the call reports it, and
    // those slots and keys are released at once, not held until the engine exits.
    let r = c.save(&keys, |i, payload| {
        if i % 2 == 1 {
            return Err(kvtier_core::Error::new(
                kvtier_core::ErrorKind::Io,
                "copy failed",
            ));
        }
        payload.copy_from_slice(&block(i as u64));
        Ok(())
    });
    assert!(r.is_err());
    let s = c.stats().unwrap();
    assert_eq!((s.leases, s.saves), (0, 8), "{s:?}");
    // The failed keys are not stuck "in flight": saving them again stores exactly those.
    assert_eq!(save_all_of(&mut c, &keys), 8);
}

fn save_all_of(c: &mut AgentClient, keys: &[BlockKey]) -> u32 {
    c.save(keys, |i, payload| {
        payload.copy_from_slice(&block(i as u64));
        Ok(())
    })
    .unwrap()
}

/// Node A's agent saves; node B's agent (another socket, its own memory, no shared disk of its
/// own) loads every block from the shared pool, byte-equal.
fn another_node_loads_through(pool_flags: &[&str]) {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Agent::start_with(a_dir.path(), pool_flags);
    let mut ca = AgentClient::connect(a.config()).unwrap();
    assert_eq!(save_all(&mut ca), 256);
    wait_for_pool_writes(&mut ca, 256);
    let b = Agent::start_with(b_dir.path(), pool_flags);
    // Every block comes through the pool on the load: give the read-through the time a debug
    // build on a loaded CI machine needs (the default budget is for serving, not for this).
    let mut cfg = b.config();
    cfg.timeout = Duration::from_secs(30);
    cfg.load_budget = Duration::from_secs(30);
    let mut cb = AgentClient::connect(cfg).unwrap();
    let keys: Vec<BlockKey> = (0..256).map(key).collect();
    assert_eq!(cb.lookup(&keys, false).unwrap(), (256, 0));
    let d = cb
        .load(&keys, |i, p| {
            assert!(p == block(i as u64).as_slice(), "block {i}")
        })
        .unwrap();
    assert!(d.iter().all(|&x| x));
    let s = cb.stats().unwrap();
    assert_eq!((s.hits_pool, s.corrupt), (256, 0), "{s:?}");
    assert!(
        !b_dir.path().join("data").exists(),
        "node B used no local pool"
    );
}

#[test]
fn another_node_loads_from_pool_servers() {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<common::Server> = (0..2)
        .map(|i| common::start_server(&dir.path().join(format!("s{i}")), "127.0.0.1:0", None))
        .collect();
    let members = format!("{},{}", servers[0].addr, servers[1].addr);
    another_node_loads_through(&["--pool-servers", &members, "--replication", "2"]);
}

#[test]
fn another_node_loads_from_pool_servers_found_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = common::Etcd::start(dir.path(), 1);
    let flags = ["--etcd", &etcd.flag(), "--cluster", "agents"];
    let servers: Vec<common::Server> = (0..2)
        .map(|i| {
            common::start_server_with(
                &dir.path().join(format!("s{i}")),
                "127.0.0.1:0",
                None,
                &flags,
            )
        })
        .collect();
    // Both registered before the agents start (the agents are given etcd only).
    let watcher = etcd.client("agents", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while watcher.placement().map_or(0, |p| p.members().len()) < servers.len() {
        assert!(Instant::now() < deadline, "the servers did not register");
        std::thread::sleep(Duration::from_millis(20));
    }
    another_node_loads_through(&[flags[0], flags[1], flags[2], flags[3], "--replication", "2"]);
}

#[test]
fn another_node_loads_from_a_shared_directory() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    another_node_loads_through(&["--shared-dir", shared.to_str().unwrap()]);
}

/// The arena is memory every engine maps: a load checks each granted slot's header (key,
/// layout, checksum) before copying out, so a slot whose header another process overwrote is a
/// miss, never another object's bytes.
#[test]
fn a_slot_whose_header_was_overwritten_is_a_miss_not_wrong_kv() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(dir.path(), &["--no-pool"]);
    let mut c = AgentClient::connect(agent.config()).unwrap();
    let keys = [key(1), key(2)];
    let (granted, _) = c.begin_save(&keys).unwrap();
    assert_eq!(granted.len(), 2);
    let mut slot_of_first = None;
    for g in &granted {
        c.payload_mut(g.slot)
            .unwrap()
            .copy_from_slice(&block(g.index as u64 + 1));
        if g.index == 0 {
            slot_of_first = Some(g.slot);
        }
    }
    let leases: Vec<u64> = granted.iter().map(|g| g.lease).collect();
    assert_eq!(c.commit_save(&leases).unwrap().0, 2);
    // Another process with the arena mapped rewrites a byte of the first block's key in its
    // header (the 64 bytes before the payload).
    let payload = c.payload_mut(slot_of_first.unwrap()).unwrap().as_mut_ptr();
    // SAFETY: the header lies in the same mapped slot, right before the payload.
    unsafe { *payload.sub(64).add(16) ^= 0x01 };
    let flags = c
        .load(&keys, |i, p| {
            assert!(
                p == block(i as u64 + 1).as_slice(),
                "block {i} delivered with other bytes"
            )
        })
        .unwrap();
    assert_eq!(
        flags,
        vec![false, true],
        "the forged slot is a miss, the other loads"
    );
}

/// Saves the blocks `ids` (each filled with `block(id)`); how many were stored.
fn save_ids(c: &mut AgentClient, ids: &[u64]) -> u32 {
    let keys: Vec<BlockKey> = ids.iter().map(|&i| key(i)).collect();
    c.save(&keys, |i, p| {
        p.copy_from_slice(&block(ids[i]));
        Ok(())
    })
    .unwrap()
}

/// Loads the blocks `ids`, checking each byte; how many were loaded.
fn load_ids(c: &mut AgentClient, ids: &[u64]) -> usize {
    let keys: Vec<BlockKey> = ids.iter().map(|&i| key(i)).collect();
    let d = c
        .load(&keys, |i, p| {
            assert!(p == block(ids[i]).as_slice(), "block {}", ids[i])
        })
        .unwrap();
    d.iter().filter(|&&x| x).count()
}

/// The smallest arena a window fits: 4 slots, a window of 1, 2 blocks held for write-behind.
#[test]
fn a_request_through_a_four_slot_arena_is_saved_and_loaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(dir.path(), &["--arena-bytes", "272KiB"]);
    let mut c = AgentClient::connect(agent.config()).unwrap();
    assert_eq!(c.stats().unwrap().arena_slots, 4);
    let ids: Vec<u64> = (60_000..60_011).collect();
    // One call considers a window: a quarter of the arena, here one key. (Its lease goes with
    // the session when the probe says goodbye.)
    let mut probe = AgentClient::connect(agent.config()).unwrap();
    let all: Vec<BlockKey> = ids.iter().map(|&i| key(i)).collect();
    let (granted, considered) = probe.begin_save(&all).unwrap();
    assert_eq!((granted.len(), considered), (1, 1));
    drop(probe);
    assert_eq!(
        save_ids(&mut c, &ids),
        ids.len() as u32,
        "every block saved"
    );
    assert_eq!(load_ids(&mut c, &ids), ids.len());
}

/// A request four times larger than the arena: the save streams through it (blocks are held
/// in memory until the pool has them, and later windows wait for that room), so every block is
/// kept; a lookup then promises all of them and a load delivers every one it promised,
/// byte-equal, window by window, in this session and in another engine's.
#[test]
fn a_request_larger_than_the_arena_is_saved_and_loaded_whole() {
    let dir = tempfile::tempdir().unwrap();
    // 16 slots of 68 KiB (a 64 KiB object, its header page).
    let agent = Agent::start_with(dir.path(), &["--arena-bytes", "1088KiB"]);
    let mut c = AgentClient::connect(agent.config()).unwrap();
    let slots = c.stats().unwrap().arena_slots;
    assert_eq!(slots, 16);
    let ids: Vec<u64> = (50_000..50_000 + 4 * slots).collect();
    assert_eq!(
        save_ids(&mut c, &ids),
        ids.len() as u32,
        "every block saved"
    );
    let keys: Vec<BlockKey> = ids.iter().map(|&i| key(i)).collect();
    let (promised, _) = c.lookup(&keys, false).unwrap();
    assert_eq!(
        promised as usize,
        keys.len(),
        "every block is in memory or the pool"
    );
    assert_eq!(
        load_ids(&mut c, &ids),
        ids.len(),
        "a lookup's promise is kept"
    );
    let mut other = AgentClient::connect(agent.config()).unwrap();
    assert_eq!(load_ids(&mut other, &ids), ids.len());
    // The agent has measured its reads from the pool now: a lookup whose budget fits none of
    // them stops at the pool, one without a bound counts every block.
    let (cut, in_memory) = c
        .lookup_within(&keys, false, Duration::from_micros(1))
        .unwrap();
    assert!(
        (cut as usize) < keys.len(),
        "{cut} of {} promised",
        keys.len()
    );
    assert_eq!(cut, in_memory, "only blocks in memory are promised");
    assert_eq!(
        c.lookup_within(&keys, false, Duration::ZERO).unwrap().0 as usize,
        keys.len()
    );
    // Weighed against recomputing: an engine that recomputes all of it in a microsecond gets
    // only what is in memory (a pool read costs more); one that takes an hour gets every block.
    let (cheap, in_memory) = c
        .lookup_vs_recompute(&keys, false, Duration::from_micros(1))
        .unwrap();
    assert!((cheap as usize) < keys.len(), "{cheap} promised");
    assert_eq!(cheap, in_memory, "no pool block is worth reading");
    assert_eq!(
        c.lookup_vs_recompute(&keys, false, Duration::from_secs(3600))
            .unwrap()
            .0 as usize,
        keys.len()
    );
    let s = c.stats().unwrap();
    assert_eq!(s.dropped_writes, 0);
    assert_eq!(s.misses, 0);
    assert!(s.hits_pool > 0, "most blocks came back from the pool");
}

/// With memory full, a load whose window mixes blocks in memory with blocks only in the pool
/// pins the ones in memory before it takes slots for the others: the slots for the pool's
/// blocks come from other, unpinned blocks, never from the window's own (which the policy
/// would pick first here: they are the least used).
#[test]
fn a_load_keeps_the_blocks_it_found_in_memory_while_it_reads_others_from_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let mut c = AgentClient::connect(agent.config()).unwrap();
    let slots = c.stats().unwrap().arena_slots;
    let pool_only: Vec<u64> = (1000..1004).collect();
    let in_memory: Vec<u64> = (2000..2004).collect();
    assert_eq!(save_ids(&mut c, &pool_only), 4);
    assert_eq!(save_ids(&mut c, &in_memory), 4);
    wait_for_pool_writes(&mut c, 8);
    // Used once: worth more than `pool_only`, which the fillers below push out of memory.
    assert_eq!(load_ids(&mut c, &in_memory), 4);
    let fillers: Vec<u64> = (10_000..10_000 + slots - 4).collect();
    for part in fillers.chunks(64) {
        assert_eq!(save_ids(&mut c, part), part.len() as u32);
    }
    wait_for_pool_writes(&mut c, 8 + fillers.len() as u64);
    // Used twice: worth more than `in_memory` now.
    for _ in 0..2 {
        for part in fillers.chunks(64) {
            assert_eq!(load_ids(&mut c, part), part.len());
        }
    }
    let keys = |ids: &[u64]| ids.iter().map(|&i| key(i)).collect::<Vec<_>>();
    assert_eq!(
        c.lookup(&keys(&pool_only), false).unwrap(),
        (4, 0),
        "the pool holds them, memory does not"
    );
    // (Not looked up: a lookup touches what is in memory, and they must stay the least used.)
    let before = c.stats().unwrap();
    // One window (8 blocks), interleaved.
    let window: Vec<u64> = in_memory
        .iter()
        .zip(&pool_only)
        .flat_map(|(&m, &p)| [m, p])
        .collect();
    assert_eq!(
        load_ids(&mut c, &window),
        8,
        "every block of the window loads"
    );
    let after = c.stats().unwrap();
    assert_eq!(
        (
            after.hits_memory - before.hits_memory,
            after.hits_pool - before.hits_pool
        ),
        (4, 4),
        "{after:?}"
    );
}
