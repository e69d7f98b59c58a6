//! The agent in this process as engines and peers meet it, on real Unix sockets in a temporary
//! directory: who may use it, as the kernel tells it (engines of other uids are this test binary
//! re-executed under `setpriv`, which needs root: as another user only the single-uid checks
//! run), a descriptor socket that never accepts, and a shutdown while the pool stalls.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_agent::access::TenantRule;
use kvtier_agent::client::{AgentClient, ClientConfig};
use kvtier_agent::proto;
use kvtier_agent::{AgentConfig, State};
use kvtier_core::error::ErrorKind;
use kvtier_core::tier::host::HostArenaConfig;
use kvtier_core::BlockKey;

const OBJECT: usize = 16 << 10;
const SLOTS: u64 = 64;
const DIGEST: u64 = 0x5eed;
/// The uid a guest engine runs as, and one no tenant allows.
const GUEST: u32 = 65534;
const STRANGER: u32 = 65533;

struct Running {
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn agent_config(socket: &Path, tenants: &[String]) -> AgentConfig {
    let mut cfg = AgentConfig::new(socket);
    cfg.arena = HostArenaConfig {
        capacity_bytes: SLOTS * kvtier_core::block::record_len(OBJECT) as u64,
        payload_len: OBJECT,
        ..Default::default()
    };
    cfg.access.rules = tenants
        .iter()
        .map(|t| TenantRule::parse(t).unwrap())
        .collect();
    cfg
}

/// An agent in this process (its own runtime on a thread), memory only, of [`SLOTS`] slots.
fn start(socket: &Path, tenants: &[String]) -> Running {
    start_with(agent_config(socket, tenants))
}

fn start_with(cfg: AgentConfig) -> Running {
    let (state_tx, state_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let bound = kvtier_agent::bind(&cfg).unwrap();
            state_tx.send(bound.state()).unwrap();
            bound
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
    });
    let state = state_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    Running {
        state,
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn client_config(socket: &Path, engine: &str) -> ClientConfig {
    let mut c = ClientConfig::new(socket, DIGEST, OBJECT as u64);
    c.engine = engine.into();
    c.timeout = Duration::from_secs(2);
    c
}

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(0xACCE_5500_0000_0000_0000_0000_0000_0000 | i as u128)
}

fn block(i: u64) -> Vec<u8> {
    (0..OBJECT).map(|j| (i as usize * 31 + j) as u8).collect()
}

fn save(c: &mut AgentClient, ids: std::ops::Range<u64>) -> u32 {
    let keys: Vec<BlockKey> = ids.clone().map(key).collect();
    c.save(&keys, |i, p| {
        p.copy_from_slice(&block(ids.start + i as u64));
        Ok(())
    })
    .unwrap()
}

fn loads_back(c: &mut AgentClient, ids: std::ops::Range<u64>) -> bool {
    let keys: Vec<BlockKey> = ids.clone().map(key).collect();
    let mut ok = true;
    let got = c
        .load(&keys, |i, p| ok &= p == &block(ids.start + i as u64)[..])
        .unwrap();
    ok && got.iter().all(|&d| d)
}

fn refused(state: &State, reason: &str) -> u64 {
    let s = state.stats();
    s.refused.iter().find(|(r, _)| *r == reason).unwrap().1
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs this test binary's `peer_child` as `uid` in `role`; returns its output, asserting it
/// exited cleanly.
fn as_uid(uid: u32, role: &str, socket: &Path, victim: u64) -> String {
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "peer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVTIER_PEER_ROLE", role)
        .env("KVTIER_SOCKET", socket)
        .env("KVTIER_VICTIM", victim.to_string())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{role} as uid {uid} failed:\n{text}");
    text
}

/// A raw gRPC connection to the agent, to name sessions the client would never name.
async fn raw(socket: PathBuf) -> proto::agent_client::AgentClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://kvtier-agent")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    proto::agent_client::AgentClient::new(channel)
}

#[test]
#[ignore = "a child process of the peer tests"]
fn peer_child() {
    let socket = PathBuf::from(std::env::var("KVTIER_SOCKET").unwrap());
    let victim: u64 = std::env::var("KVTIER_VICTIM").unwrap().parse().unwrap();
    match std::env::var("KVTIER_PEER_ROLE").unwrap().as_str() {
        "guest" => {
            // Its own tenant works: it saves and loads.
            let mut c = AgentClient::connect(client_config(&socket, "vllm rank 0")).unwrap();
            assert_eq!(save(&mut c, 100..104), 4);
            assert!(loads_back(&mut c, 100..104));
            // The owner's tenant is refused, and says why.
            let e = AgentClient::connect(client_config(&socket, "owner/rank 0"))
                .err()
                .expect("a guest was given the owner's tenant");
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("may not use tenant `owner`"), "{e}");
            // The owner's session cannot be named from this uid.
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let mut g = raw(socket.clone()).await;
                let bye = g
                    .goodbye(proto::GoodbyeRequest { session: victim })
                    .await
                    .unwrap_err();
                assert_eq!(bye.code(), tonic::Code::PermissionDenied, "{bye:?}");
                let look = g
                    .lookup(proto::LookupRequest {
                        session: victim,
                        keys: vec![proto::Key { lo: 1, hi: 2 }],
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(look.code(), tonic::Code::PermissionDenied, "{look:?}");
            });
            println!("guest ok");
        }
        "stranger" => {
            let e = AgentClient::connect(client_config(&socket, "anything"))
                .err()
                .expect("a uid no tenant allows was served");
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("agent.tenants"), "{e}");
            println!("stranger ok");
        }
        r => panic!("unknown role {r}"),
    }
}

/// A temporary directory other uids may traverse (the agent's socket directory is made inside).
fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_peer_gets_only_its_tenants_and_never_another_uids_session() {
    let dir = shared_tempdir();
    let socket = dir.path().join("run/agent.sock");
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    let a = start(
        &socket,
        &[
            format!("owner: uid={me}"),
            format!("guest: uid={GUEST} arena=50%"),
        ],
    );
    // With tenants the sockets are open to every uid (each peer is checked), the directory
    // only traversable.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&socket), 0o666);
    assert_eq!(mode(socket.parent().unwrap()), 0o711);

    let mut owner = AgentClient::connect(client_config(&socket, "rank 0")).unwrap();
    assert_eq!(save(&mut owner, 0..8), 8);
    // The owner's uid may not use the guest's tenant either.
    let e = AgentClient::connect(client_config(&socket, "guest/rank 0"))
        .err()
        .expect("the owner was given the guest's tenant");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(refused(&a.state, "tenant"), 1);

    if !is_root() {
        eprintln!("not root: the checks across uids (setpriv) did not run");
        return;
    }
    let victim = owner.session().unwrap();
    assert!(as_uid(GUEST, "guest", &socket, victim).contains("guest ok"));
    assert!(as_uid(STRANGER, "stranger", &socket, victim).contains("stranger ok"));
    // The guest's calls on the owner's session were refused, not run: it still loads.
    assert!(loads_back(&mut owner, 0..8));
    assert_eq!(refused(&a.state, "no_tenant"), 1);
    assert_eq!(refused(&a.state, "tenant"), 2);
    assert_eq!(refused(&a.state, "not_owner"), 2);
    let tenants: Vec<String> = a
        .state
        .stats()
        .tenants
        .into_iter()
        .map(|t| t.tenant)
        .collect();
    assert_eq!(tenants, ["owner", "guest"]);
}

#[test]
fn a_tenant_and_a_session_hold_at_most_their_share_of_the_arena() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    let a = start(
        &socket,
        &[
            format!("small: uid={me} arena=25%"),
            format!("big: uid={me}"),
        ],
    );
    let window = (SLOTS / 4) as usize;
    let keys = |from: u64| -> Vec<BlockKey> { (from..from + window as u64).map(key).collect() };
    // The small tenant's share is one window: a first session takes it all, uncommitted...
    let mut s1 = AgentClient::connect(client_config(&socket, "small/a")).unwrap();
    let (g, _) = s1.begin_save(&keys(0)).unwrap();
    assert_eq!(g.len(), window);
    // ...so a second session of the tenant gets nothing (the save is dropped, counted)...
    let mut s2 = AgentClient::connect(client_config(&socket, "small/b")).unwrap();
    let (g, considered) = s2.begin_save(&keys(1000)).unwrap();
    assert_eq!((g.len(), considered), (0, window));
    let st = a.state.stats();
    assert!(
        st.lease_limited.contains(&("tenant", 1)),
        "{:?}",
        st.lease_limited
    );
    assert!(st.dropped_saves.contains(&("lease_limit", window as u64)));
    // ...while another tenant is untouched, and one session of it holds at most three
    // quarters of the arena however often it asks.
    let mut big = AgentClient::connect(client_config(&socket, "big/a")).unwrap();
    let mut held = 0;
    for round in 0..4u64 {
        held += big.begin_save(&keys(2000 + round * 100)).unwrap().0.len();
    }
    assert_eq!(held, SLOTS as usize * 3 / 4);
    let st = a.state.stats();
    assert!(st
        .lease_limited
        .iter()
        .any(|&(s, n)| s == "session" && n >= 1));
    assert_eq!(st.leases as usize, window + held);
}

#[test]
fn without_tenants_the_sockets_are_owner_and_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/agent.sock");
    let _a = start(&socket, &[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&socket), 0o660);
    assert_eq!(mode(&kvtier_agent::fd_socket_path(&socket)), 0o660);
    assert_eq!(mode(socket.parent().unwrap()), 0o750);
    // Open mode: any name is its own tenant, up to its first `/`.
    let mut c = AgentClient::connect(client_config(&socket, "team/rank 0")).unwrap();
    assert_eq!(save(&mut c, 0..2), 2);
    assert_eq!(_a.state.stats().tenants[0].tenant, "team");
    // Names are bounded: they reach logs and metric labels.
    let e = AgentClient::connect(client_config(&socket, &"x".repeat(300)))
        .err()
        .expect("a 300-byte engine name was taken");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("at most 256 bytes"), "{e}");
}

#[test]
fn a_socket_directory_others_may_write_or_own_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = kvtier_agent::bind(&agent_config(&open.join("agent.sock"), &[]))
        .err()
        .expect("an agent bound in a world-writable directory");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("lets other users write"), "{e}");
    if is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(GUEST), Some(GUEST)).unwrap();
        let e = kvtier_agent::bind(&agent_config(&theirs.join("agent.sock"), &[]))
            .err()
            .expect("an agent bound in another user's directory");
        assert!(
            e.to_string().contains(&format!("owned by uid {GUEST}")),
            "{e}"
        );
    }
}

#[test]
fn an_agent_that_never_accepts_is_a_timeout_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let fd_path = kvtier_agent::fd_socket_path(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&fd_path).unwrap();
    // SAFETY: a valid listening socket; a backlog of 0 queues one connection at most.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    // Fill the backlog with connections nobody accepts (a stopped agent's).
    let mut queued = Vec::new();
    loop {
        // SAFETY: plain syscalls on a fresh descriptor, owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(fd >= 0);
        // SAFETY: fd is ours.
        let s =
            unsafe { <std::os::unix::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let p = std::os::unix::ffi::OsStrExt::as_bytes(fd_path.as_os_str());
        for (d, &b) in addr.sun_path.iter_mut().zip(p) {
            *d = b as libc::c_char;
        }
        // SAFETY: a valid socket and address.
        let r = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r != 0 {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
            break;
        }
        queued.push(s);
        assert!(queued.len() < 64, "the backlog never filled");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut cfg = client_config(&socket, "rank 0");
    cfg.timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(AgentClient::connect(cfg).err().map(|e| e.kind()));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("connecting to an agent that never accepts hung past its deadline");
    assert_eq!(got, Some(ErrorKind::Timeout));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn a_shutdown_while_the_pool_stalls_ends_within_its_drain_time() {
    // A pool server that accepts and never answers (stopped, or its network black-holed): every
    // write-behind batch takes the pool client's whole deadline to fail.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    let hold = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in hole.incoming().take(64) {
            conns.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(&dir.path().join("agent.sock"), &[]);
    let mut pool =
        kvtier_pool::client::PoolClientConfig::new(vec![kvtier_pool::placement::Member {
            addr,
            weight: 1.0,
        }]);
    pool.timeout = Duration::from_secs(1);
    cfg.pool = Some(kvtier_pool::PoolSpec::Servers(pool));
    cfg.shutdown_drain = Duration::from_millis(200);
    let mut a = start_with(cfg);
    let mut c =
        AgentClient::connect(client_config(&dir.path().join("agent.sock"), "rank 0")).unwrap();
    // Half the arena is held for write-behind: 32 blocks, four batches of 8, 4 s of stalled
    // puts to drain them all.
    let saved = save(&mut c, 0..32);
    assert!(saved >= 24, "{saved}");
    drop(c);
    let t0 = Instant::now();
    drop(a.stop.take());
    a.thread.take().unwrap().join().unwrap();
    let took = t0.elapsed();
    // The drain time, plus the batch in flight when it ran out.
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let s = a.state.stats();
    assert!(
        s.dropped_writes > 0,
        "the blocks left were not counted: {s:?}"
    );
    assert_eq!(s.pool_writes, 0);
    drop(hold);
}
