//! The bodies of kvtier's fuzz targets: each takes arbitrary bytes and must never panic, and
//! checks a property that would catch a wrong answer. `cargo fuzz` drives them (one binary per
//! target under `fuzz_targets/`, coverage-guided); `tests/fuzz_corpus.rs` runs the same code over
//! the committed corpus and seeded random mutations in every test run.

use std::ffi::CString;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};

use kvtier_core::block::BlockObject;
use kvtier_core::BlockKey;

/// Every target, by name (the names of `fuzz_targets/*.rs` and of `corpus/*/`).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("frame", frame),
    ("agent_messages", agent_messages),
    ("segment_recovery", segment_recovery),
    ("shared_dir_object", shared_dir_object),
    ("config", config),
    ("abi_args", abi_args),
];

/// Draws values from the input, then zeros when it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn rest(&mut self) -> &[u8] {
        std::mem::take(&mut self.0)
    }
}

/// The pool's frame decoder: whatever it accepts re-encodes to the same header bytes.
pub fn frame(data: &[u8]) {
    use kvtier_pool::wire::{decode_stream, Frame, HEADER_LEN};
    let (frames, _err) = decode_stream(data, 1 << 16);
    if let Some(first) = frames.first() {
        assert_eq!(&first.encode()[..], &data[..HEADER_LEN]);
        assert_eq!(Frame::decode(&first.encode(), 1 << 16), Ok(*first));
    }
}

const OBJECT: usize = 4096;
const DIGEST: u64 = 0xF022;

/// An agent's state with one open session (its descriptor connection held open).
struct AgentFixture {
    state: Arc<kvtier_agent::State>,
    session: u64,
    token: u64,
    _conn: UnixStream,
    _dir: tempfile::TempDir,
    lock: Mutex<()>,
}

fn agent() -> &'static AgentFixture {
    static F: OnceLock<AgentFixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = kvtier_agent::AgentConfig::new(dir.path().join("agent.sock"));
        cfg.arena.capacity_bytes = 16 * kvtier_core::block::record_len(OBJECT) as u64;
        cfg.arena.payload_len = OBJECT;
        let state = kvtier_agent::State::new(&cfg).unwrap();
        let fd_path = dir.path().join("fd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&fd_path).unwrap();
        state.clone().serve_descriptors(listener);
        let conn = UnixStream::connect(&fd_path).unwrap();
        let (_fd, token, _len) = kvtier_agent::fdpass::recv_fd(&conn).unwrap();
        // SAFETY: no preconditions.
        let uid = unsafe { libc::geteuid() };
        let session = state
            .hello(token, DIGEST, OBJECT as u64, "fuzz", Some(uid))
            .unwrap();
        AgentFixture {
            state,
            session,
            token,
            _conn: conn,
            _dir: dir,
            lock: Mutex::new(()),
        }
    })
}

fn keys_of(k: &[kvtier_agent::proto::Key]) -> Vec<BlockKey> {
    k.iter()
        .map(|k| BlockKey::from_u128(((k.hi as u128) << 64) | k.lo as u128))
        .collect()
}

/// The agent's protocol messages: arbitrary bytes decoded as each request and run against a
/// live agent state, on its real session or on the session the message names. Nothing panics,
/// and every lease granted is released, so none is left behind.
pub fn agent_messages(data: &[u8]) {
    use kvtier_agent::proto;
    use prost::Message;
    let f = agent();
    let _one_at_a_time = f.lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut input = Input(data);
    let which = input.byte();
    let real = input.byte() & 1 == 1;
    let body = input.rest();
    let s = &f.state;
    let session = |named: u64| if real { f.session } else { named };
    let uid = Some(unsafe { libc::geteuid() });
    let mut granted = Vec::new();
    match which % 7 {
        0 => {
            if let Ok(m) = proto::HelloRequest::decode(body) {
                let token = if real { f.token } else { m.fd_token };
                if let Ok(id) = s.hello(token, m.layout_digest, m.object_len, &m.engine, uid) {
                    s.goodbye(id);
                }
            }
        }
        1 => {
            if let Ok(m) = proto::LookupRequest::decode(body) {
                let budget = std::time::Duration::from_micros(m.budget_us % 10_000);
                let recompute = std::time::Duration::from_micros(m.recompute_us);
                let _ = s.authorize(m.session, uid);
                let _ = s.lookup(
                    session(m.session),
                    &keys_of(&m.keys),
                    m.prefetch,
                    Some(budget),
                    Some(recompute),
                );
            }
        }
        2 => {
            if let Ok(m) = proto::BeginSaveRequest::decode(body) {
                if let Ok((g, next)) = s.begin_save(session(m.session), &keys_of(&m.keys)) {
                    assert!(next as usize <= m.keys.len());
                    // Commit the first half (filled with whatever the arena holds: the agent
                    // must not care), so that later loads find blocks; release the rest.
                    let (commit, release) = g.split_at(g.len() / 2);
                    let leases: Vec<u64> = commit.iter().map(|g| g.lease).collect();
                    if !leases.is_empty() {
                        s.commit_save(f.session, &leases).unwrap();
                    }
                    granted.extend(release.iter().map(|g| g.lease));
                }
            }
        }
        3 => {
            if let Ok(m) = proto::CommitSaveRequest::decode(body) {
                let _ = s.commit_save(session(m.session), &m.leases);
            }
        }
        4 => {
            if let Ok(m) = proto::BeginLoadRequest::decode(body) {
                let budget = std::time::Duration::from_millis(m.budget_ms as u64 % 100);
                if let Ok((g, next)) = s.begin_load(session(m.session), &keys_of(&m.keys), budget) {
                    assert!(next as usize <= m.keys.len());
                    granted.extend(g.iter().map(|g| g.lease));
                }
            }
        }
        5 => {
            if let Ok(m) = proto::EndLoadRequest::decode(body) {
                let _ = s.end_load(session(m.session), &m.leases);
            }
        }
        _ => {
            if let Ok(m) = proto::GoodbyeRequest::decode(body) {
                // The fixture's own session stays open: only others are closed.
                if m.session != f.session {
                    s.goodbye(m.session);
                }
            }
        }
    }
    if !granted.is_empty() {
        s.end_load(f.session, &granted).unwrap();
    }
    assert_eq!(s.stats().leases, 0, "a lease was left behind");
}

fn test_object(i: u64, payload: usize) -> BlockObject {
    let mut o = BlockObject::new(payload).unwrap();
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in o.payload_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    o.seal(BlockKey::from_u128(0xF0_0000 + i as u128), DIGEST, 0);
    o
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Overwrites `file` at offsets the input picks with bytes it gives, or truncates it.
fn mutate(file: &std::path::Path, input: &mut Input) {
    let mut bytes = std::fs::read(file).unwrap();
    let edits = input.byte() % 8;
    for _ in 0..edits {
        if bytes.is_empty() {
            break;
        }
        let at = input.u32() as usize % bytes.len();
        match input.byte() % 4 {
            0 => bytes.truncate(at),
            _ => {
                let n = (input.byte() % 64) as usize + 1;
                for (d, s) in bytes[at..].iter_mut().zip(input.bytes(n)) {
                    *d = *s;
                }
            }
        }
    }
    std::fs::write(file, &bytes).unwrap();
}

/// Segment files at recovery: a real store writes records derived from the input, the input
/// then overwrites or truncates its files (or replaces one with its own bytes), and the
/// reopened store must give back every record either exactly as written or as a miss; it may
/// never give wrong bytes, and it must take new writes.
pub fn segment_recovery(data: &[u8]) {
    use kvtier_core::tier::segment::{SegmentStore, SegmentStoreConfig};
    let mut input = Input(data);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SegmentStoreConfig::new(dir.path());
    cfg.capacity_bytes = 1 << 20;
    cfg.segment_bytes = 64 << 10;
    cfg.create_dir = true;
    cfg.io = kvtier_core::tier::io::IoMode::Psync;
    let n = (input.byte() % 24) as u64 + 1;
    let objects: Vec<BlockObject> = (0..n)
        .map(|i| test_object(i, 100 + (i as usize * 613) % 6000))
        .collect();
    {
        let store = SegmentStore::open(cfg.clone()).unwrap();
        for o in &objects {
            store.put(o).unwrap();
        }
        if input.byte() & 1 == 0 {
            store.flush().unwrap();
        }
    }
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    files.sort();
    if !files.is_empty() {
        let f = &files[input.byte() as usize % files.len()];
        if input.byte() % 4 == 0 {
            std::fs::write(f, input.rest()).unwrap();
        } else {
            mutate(f, &mut input);
        }
    }
    let Ok(store) = SegmentStore::open(cfg) else {
        return; // a clean refusal to open is allowed; a panic is not
    };
    for o in &objects {
        if let Ok(Some(got)) = store.get(o.header().key()) {
            // The header and payload; a record's padding to its page carries nothing.
            assert_eq!(got.header(), o.header(), "recovery gave a wrong header");
            assert!(got.payload() == o.payload(), "recovery gave wrong bytes");
        }
    }
    let fresh = test_object(1000, 2000);
    if store.put(&fresh).is_ok() {
        let got = store
            .get(fresh.header().key())
            .unwrap()
            .expect("a fresh put is readable");
        assert!(got.payload() == fresh.payload());
    }
}

/// A shared directory's object files: one written by the store, then overwritten, truncated or
/// replaced by the input. A get is the object exactly, or a miss.
pub fn shared_dir_object(data: &[u8]) {
    use kvtier_pool::shared_dir::{SharedDirConfig, SharedDirStore};
    use kvtier_pool::PoolBackend;
    let mut input = Input(data);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SharedDirConfig::new(dir.path());
    cfg.capacity_bytes = 1 << 20;
    cfg.create_dir = true;
    let store = SharedDirStore::open(cfg).unwrap();
    let o = test_object(input.byte() as u64, 64 + input.byte() as usize * 16);
    store.put_record(o.record()).unwrap();
    let mut files = Vec::new();
    files_under(&dir.path().join("objects"), &mut files);
    assert_eq!(files.len(), 1, "one object, one file");
    if input.byte() % 4 == 0 {
        std::fs::write(&files[0], input.rest()).unwrap();
    } else {
        mutate(&files[0], &mut input);
    }
    let mut buf = vec![0u8; o.record().len() + 8192];
    if let Ok(Some(h)) = store.get_into_slice(o.header().key(), &mut buf) {
        // The header and payload; padding carries nothing.
        let end = kvtier_core::block::HEADER_LEN + o.payload().len();
        assert_eq!(h, o.header(), "a wrong header was served");
        assert!(
            buf[..end] == o.record()[..end],
            "a corrupt object was served"
        );
    }
}

/// The TOML configuration: any text parses or is refused with an error, and what parses
/// validates and composes without panicking.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = kvtier_ops::config::Config::parse(&text) {
        let _ = c.validate(&["log", "agent", "pool"]);
        let _ = c.to_toml();
    }
}

/// A length below `max` drawn from the input.
fn input_len(input: &mut Input, max: usize) -> usize {
    input.byte() as usize % max
}

fn c_string(input: &mut Input, n: usize) -> CString {
    let raw: Vec<u8> = input.bytes(n).iter().copied().filter(|&b| b != 0).collect();
    CString::new(raw).expect("NULs removed")
}

/// The C ABI's argument checks: layouts and namespaces from arbitrary numbers and strings (not
/// always UTF-8, sometimes NULL), and block keys from arbitrary tokens into an output of
/// arbitrary room. What the ABI accepts must be what the core computes.
pub fn abi_args(data: &[u8]) {
    use kvtier_ffi::keys::*;
    use kvtier_ffi::layout::*;
    let mut input = Input(data);
    let kinds = ["vllm-flash", "vllm-cpu", "layer-major", "vllm_mla"];
    let dtypes = ["bf16", "fp16", "fp32", "fp8_e4m3", "int4"];
    let pick = |input: &mut Input, from: &[&str]| -> CString {
        let i = input.byte() as usize;
        if i % 8 == 7 {
            c_string(input, 12)
        } else {
            CString::new(from[i % from.len()]).unwrap()
        }
    };
    let kind = pick(&mut input, &kinds);
    let dtype = pick(&mut input, &dtypes);
    // Mostly small (0 is refused), sometimes any 32-bit value (sizes that overflow).
    let small = |input: &mut Input| match input.byte() {
        b @ 0..=0xef => (b % 16) as u32,
        _ => input.u32(),
    };
    let lp = kvt_layout_params {
        kind: kind.as_ptr(),
        num_layers: small(&mut input),
        num_blocks: small(&mut input),
        block_size: small(&mut input),
        num_kv_heads: small(&mut input),
        head_size: small(&mut input),
        dtype: dtype.as_ptr(),
    };
    let mut layout = std::ptr::null_mut();
    // SAFETY: valid params and strings; out writable.
    let st = unsafe { kvt_layout_new(&lp, &mut layout) };
    if st == 0 {
        // SAFETY: a live layout.
        let len = unsafe { kvt_layout_object_len(layout) };
        assert!(len > 0);
        // SAFETY: ours, freed once.
        unsafe { kvt_layout_free(layout) };
    } else {
        assert!(layout.is_null(), "a refused layout was handed out");
    }
    let n = 1 + input_len(&mut input, 16);
    let model = c_string(&mut input, n);
    let n = 1 + input_len(&mut input, 8);
    let layout_id = c_string(&mut input, n);
    let dtype = pick(&mut input, &dtypes);
    let salt = input.bytes(8).to_vec();
    let np = kvt_namespace_params {
        model: model.as_ptr(),
        revision: if input.byte() & 1 == 0 {
            std::ptr::null()
        } else {
            model.as_ptr()
        },
        kv_dtype: dtype.as_ptr(),
        layout_id: layout_id.as_ptr(),
        tokens_per_block: small(&mut input),
        tp_size: (input.byte() % 5) as u32,
        tp_rank: (input.byte() % 5) as u32,
        pp_size: (input.byte() % 3) as u32,
        pp_rank: (input.byte() % 3) as u32,
        salt: if salt.is_empty() {
            std::ptr::null()
        } else {
            salt.as_ptr()
        },
        salt_len: salt.len(),
    };
    let mut ns = std::ptr::null_mut();
    // SAFETY: valid params and strings; out writable.
    if unsafe { kvt_namespace_new(&np, &mut ns) } != 0 {
        assert!(ns.is_null(), "a refused namespace was handed out");
        return;
    }
    let tokens: Vec<u32> = (0..input.byte() as usize * 4)
        .map(|_| input.u32())
        .collect();
    let cap = input.byte() as usize;
    let mut out = vec![kvt_key { lo: 0, hi: 0 }; cap];
    let mut n = usize::MAX;
    // SAFETY: buffers of the lengths given; ns live.
    let st = unsafe {
        kvt_block_keys(
            ns,
            tokens.as_ptr(),
            tokens.len(),
            std::ptr::null(),
            0,
            out.as_mut_ptr(),
            cap,
            &mut n,
        )
    };
    let params = kvtier_core::NamespaceParams {
        model: model.to_str().unwrap().to_string(),
        revision: if np.revision.is_null() {
            String::new()
        } else {
            model.to_str().unwrap().to_string()
        },
        kv_dtype: kvtier_core::KvDtype::parse(dtype.to_str().unwrap()).unwrap(),
        layout_id: layout_id.to_str().unwrap().to_string(),
        tokens_per_block: np.tokens_per_block,
        tp_size: np.tp_size,
        tp_rank: np.tp_rank,
        pp_size: np.pp_size,
        pp_rank: np.pp_rank,
        salt: salt.clone(),
    };
    let want = kvtier_core::Namespace::new(&params)
        .expect("the ABI accepted what the core refuses")
        .block_keys(&tokens);
    if st == 0 {
        let got: Vec<BlockKey> = out[..n].iter().map(|&k| k.into()).collect();
        assert_eq!(got, want, "the ABI's keys differ from the core's");
    } else {
        assert!(cap < want.len(), "refused with room for every key");
    }
    // SAFETY: ours, freed once.
    unsafe { kvt_namespace_free(ns) };
}
