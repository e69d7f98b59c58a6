//! The fuzz targets in every test run: each target's body (`tests/fuzz/src/lib.rs`, the code
//! `cargo fuzz` drives) over its committed seed corpus (`tests/fuzz/seeds/TARGET/`), then over
//! seeded random mutations of it (a fixed number per target; `KVTIER_FUZZ_SEED` picks another
//! seed, `KVTIER_FUZZ_ROUNDS` scales the count). A failing input is printed in hex and written
//! to `target/fuzz-failures/`, to add to the corpus once fixed.

#[allow(dead_code, clippy::all)]
#[path = "fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`: flipped bits, overwritten or inserted bytes, a cut, or a splice.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            3 if !v.is_empty() => v.truncate(rng.below(v.len())),
            4 if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                v.splice(i..i, other[j..].iter().copied().take(64));
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

fn run_one(target: &str, f: fn(&[u8]), input: &[u8]) {
    if let Err(p) = std::panic::catch_unwind(|| f(input)) {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{target}-{:016x}", xxhash(input))), input);
        eprintln!("{target}: failing input ({} bytes): {hex}", input.len());
        std::panic::resume_unwind(p);
    }
}

fn xxhash(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

/// Inputs per target: slow targets (a store opened on disk per input) get fewer.
fn rounds(target: &str) -> usize {
    let scale: usize = std::env::var("KVTIER_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    scale
        * match target {
            "segment_recovery" => 300,
            "shared_dir_object" => 600,
            _ => 5_000,
        }
}

fn fuzz(target: &str) {
    let f = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .expect("a target")
        .1;
    let seeds = corpus(target);
    assert!(
        !seeds.is_empty(),
        "no corpus for {target} in {:?}",
        corpus_dir(target)
    );
    for s in &seeds {
        run_one(target, f, s);
    }
    let seed: u64 = std::env::var("KVTIER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b76_7469_6572);
    eprintln!(
        "{target}: {} corpus inputs, then {} mutations of seed {seed}",
        seeds.len(),
        rounds(target)
    );
    let mut rng = Rng(seed | 1);
    for _ in 0..rounds(target) {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        run_one(target, f, &input);
    }
}

#[test]
fn every_target_has_a_corpus_and_a_test() {
    let here = std::fs::read_to_string(file!()).unwrap();
    for (name, _) in targets::TARGETS {
        assert!(
            here.contains(&format!("fuzz(\"{name}\")")),
            "{name} is not run here"
        );
        let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(bin.exists(), "no cargo-fuzz target {bin:?}");
    }
}

#[test]
fn frame_decoder() {
    fuzz("frame");
}

#[test]
fn agent_messages() {
    fuzz("agent_messages");
}

#[test]
fn segment_recovery() {
    fuzz("segment_recovery");
}

#[test]
fn shared_dir_object() {
    fuzz("shared_dir_object");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn abi_args() {
    fuzz("abi_args");
}

/// Writes the seed corpus, `tests/fuzz/seeds/` (`cargo test --test fuzz_corpus -- --ignored write_seed_corpus`).
#[test]
#[ignore = "regenerates tests/fuzz/seeds"]
fn write_seed_corpus() {
    use kvtier_agent::proto;
    use prost::Message;
    let put = |target: &str, name: &str, bytes: Vec<u8>| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    // Frames: a request of each op, one with a body length.
    use kvtier_pool::wire::{Frame, Op};
    let ops = [
        Op::Hello,
        Op::Auth,
        Op::Put,
        Op::Get,
        Op::Exists,
        Op::Delete,
        Op::Stats,
        Op::UcxHello,
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let key = kvtier_core::BlockKey::from_u128(i as u128);
        let f = Frame::request(op, i as u64, key, (i * 100) as u32)
            .encode()
            .to_vec();
        put("frame", &format!("op{i}"), f);
    }
    // Agent messages: (which, on the real session?, message).
    let k = |i: u64| proto::Key { lo: i, hi: 7 };
    let msgs: Vec<(u8, Vec<u8>)> = vec![
        (
            0,
            proto::HelloRequest {
                abi_version: 1,
                layout_digest: 0xF022,
                object_len: 4096,
                engine: "team/rank 0".into(),
                fd_token: 1,
            }
            .encode_to_vec(),
        ),
        (
            1,
            proto::LookupRequest {
                session: 1,
                keys: (0..6).map(k).collect(),
                prefetch: true,
                budget_us: 100,
                recompute_us: 50,
            }
            .encode_to_vec(),
        ),
        (
            2,
            proto::BeginSaveRequest {
                session: 1,
                keys: (0..20).map(k).collect(),
            }
            .encode_to_vec(),
        ),
        (
            3,
            proto::CommitSaveRequest {
                session: 1,
                leases: vec![1, 2, 3],
            }
            .encode_to_vec(),
        ),
        (
            4,
            proto::BeginLoadRequest {
                session: 1,
                keys: (0..20).map(k).collect(),
                budget_ms: 10,
            }
            .encode_to_vec(),
        ),
        (
            5,
            proto::EndLoadRequest {
                session: 1,
                leases: vec![9],
            }
            .encode_to_vec(),
        ),
        (6, proto::GoodbyeRequest { session: 5 }.encode_to_vec()),
    ];
    for (which, m) in msgs {
        for real in [0u8, 1] {
            let mut v = vec![which, real];
            v.extend_from_slice(&m);
            put("agent_messages", &format!("msg{which}-{real}"), v);
        }
    }
    // Segment files and object files: how many objects, then edits.
    for (i, seed) in [
        vec![3u8, 0, 0, 1, 2, 0x10, 0, 0, 0, 1, 8, 0xff],
        vec![23u8, 1, 1, 0],
        vec![10u8, 0, 2, 3, 0xff, 0xff, 0, 0, 2, 40, 0, 0, 0, 1, 0xAA],
        vec![5u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0],
    ]
    .into_iter()
    .enumerate()
    {
        put("segment_recovery", &format!("s{i}"), seed.clone());
        put("shared_dir_object", &format!("s{i}"), seed);
    }
    // Configuration: the default file, and files of each kind of value.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .args(["config", "default"])
        .output()
        .unwrap();
    put("config", "default.toml", out.stdout);
    put("config", "agent.toml", b"[agent]\narena_bytes = \"1GiB\"\npool_servers = [\"a:1=2\", \"b:2\"]\nreplication = 2\ntenants = [\"chat: uid=1 arena=25%\"]\n".to_vec());
    put("config", "pool.toml", b"[pool]\nlisten = \"127.0.0.1:7070\"\ncapacity = 4096\nio = \"psync\"\ninsecure_open = true\n[log]\nlevel = \"kvtier=debug\"\n".to_vec());
    // ABI arguments, in the order the target draws them: layout kind and dtype, five layout
    // numbers, model and layout id (length, bytes), dtype, salt, revision, tokens per block,
    // tp size and rank, pp size and rank, tokens (count / 4, values), room for keys.
    let valid = |room: u8| {
        let mut v = vec![0u8, 0, 2, 4, 2, 2, 8, 4];
        v.extend_from_slice(b"model");
        v.push(2);
        v.extend_from_slice(b"lay");
        v.extend_from_slice(&[0, b's', b'a', b'l', b't', 1, 2, 3, 4, 1, 4, 2, 1, 1, 0, 10]);
        v.extend((0..40u32).flat_map(|t| (t * 7919).to_le_bytes()));
        v.push(room);
        v
    };
    put("abi_args", "s0", valid(20));
    put("abi_args", "s1", valid(5));
    put("abi_args", "s2", vec![2u8, 1, 0xff, 0xff, 0xff, 0xff, 0xff]);
    put("abi_args", "s3", [vec![7u8, 7], vec![b'x'; 40]].concat());
}
