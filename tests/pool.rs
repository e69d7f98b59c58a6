//! Pool servers as real processes on loopback: replication across a SIGKILL and a restart,
//! and a server that keeps serving everyone else while peers send it garbage.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::buf::AlignedBuf;
use kvtier_core::BlockKey;
use kvtier_pool::client::{PoolClient, PoolClientConfig, Splice};
use kvtier_pool::placement::Member;
use kvtier_pool::wire::{Frame, Op, Status, HEADER_LEN};

use common::{start_server, Server};

const PAYLOAD: usize = 20_000;

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()))
}

fn record(i: u64) -> Arc<AlignedBuf> {
    Arc::new(common::test_object(i, PAYLOAD, key(i), 7).into_record())
}

fn client(members: &[String], replication: usize, secret: Option<&[u8]>) -> Arc<PoolClient> {
    client_with(members, replication, secret, |_| {})
}

fn client_with(
    members: &[String],
    replication: usize,
    secret: Option<&[u8]>,
    tune: impl FnOnce(&mut PoolClientConfig),
) -> Arc<PoolClient> {
    let mut cfg = PoolClientConfig::new(
        members
            .iter()
            .map(|a| Member {
                addr: a.clone(),
                weight: 1.0,
            })
            .collect(),
    );
    cfg.replication = replication;
    cfg.secret = secret.map(|s| s.to_vec());
    cfg.timeout = Duration::from_secs(5);
    tune(&mut cfg);
    PoolClient::new(cfg).unwrap()
}

fn stats(c: &Arc<PoolClient>, m: usize) -> serde_json::Value {
    let c2 = c.clone();
    c.block(async move { c2.server_stats(m).await }).unwrap()
}

#[test]
fn replicated_objects_survive_a_killed_server_which_recovers_and_serves_again() {
    const N: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = (0..3)
        .map(|i| start_server(&dir.path().join(format!("s{i}")), "127.0.0.1:0", None))
        .collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let c = client(&addrs, 2, None);

    // 1,000 objects, each stored on both of its replicas.
    let c2 = c.clone();
    let stored: Vec<usize> = c.block(async move {
        let mut out = Vec::new();
        for i in 0..N {
            out.push(c2.put(record(i)).await.unwrap());
        }
        out
    });
    assert!(
        stored.iter().all(|&n| n == 2),
        "every put reached both replicas"
    );
    let on: Vec<u64> = (0..3)
        .map(|m| stats(&c, m)["store"]["objects"].as_u64().unwrap())
        .collect();
    assert_eq!(on.iter().sum::<u64>(), 2 * N, "objects per server: {on:?}");

    // SIGKILL server 1: every object is still readable, byte-equal.
    let victim = 1;
    let expect_on_victim = (0..N)
        .filter(|&i| c.placement().unwrap().replicas(key(i)).contains(&victim))
        .count() as u64;
    assert_eq!(expect_on_victim, on[victim]);
    servers[victim].child.kill().unwrap();
    servers[victim].child.wait().unwrap();
    let c2 = c.clone();
    let t0 = Instant::now();
    let missing = c.block(async move {
        let mut missing = Vec::new();
        for i in 0..N {
            match c2.get(key(i), false).await {
                Ok(Some(r)) => assert_eq!(&r[..], &record(i)[..], "object {i}"),
                other => missing.push((i, format!("{other:?}"))),
            }
        }
        missing
    });
    assert!(missing.is_empty(), "unreadable after the kill: {missing:?}");
    println!(
        "read {N} objects with one of three servers dead in {:?}",
        t0.elapsed()
    );

    // Restart it on the same port and directory: it recovers its index and serves again.
    let port_addr = addrs[victim].clone();
    servers[victim] = start_server(&dir.path().join(format!("s{victim}")), &port_addr, None);
    let alone = client(std::slice::from_ref(&port_addr), 1, None);
    let recovered = stats(&alone, 0)["store"]["objects"].as_u64().unwrap();
    assert_eq!(
        recovered, expect_on_victim,
        "the restarted server recovered its index"
    );
    let a2 = alone.clone();
    let c3 = c.clone();
    let served = alone.block(async move {
        let mut served = 0;
        for i in (0..N).filter(|&i| c3.placement().unwrap().replicas(key(i)).contains(&victim)) {
            let r = a2
                .get(key(i), true)
                .await
                .unwrap()
                .expect("recovered object");
            assert_eq!(&r[..], &record(i)[..]);
            served += 1;
        }
        served
    });
    assert_eq!(served, expect_on_victim);
    // The first client, which marked the server down when it died, writes to it again: a new
    // object placed on it reaches both replicas (bounded wait for the down mark to lapse).
    let fresh = (N..N + 1000)
        .find(|&i| c.placement().unwrap().replicas(key(i)).contains(&victim))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c2 = c.clone();
        let stored = c.block(async move { c2.put(record(fresh)).await }).unwrap();
        if stored == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server never took writes again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let a2 = alone.clone();
    let back = alone
        .block(async move { a2.get(key(fresh), true).await })
        .unwrap();
    assert_eq!(
        &back.expect("on the restarted server")[..],
        &record(fresh)[..]
    );
    for cs in [c.client_stats(), alone.client_stats()] {
        assert_eq!(
            cs.corrupt, 0,
            "no read returned bytes failing their checksum"
        );
    }
}

/// Reads until the server closes the connection (or 5 s pass).
fn closed_by_server(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Connects and reads the server's hello (header and nonce).
fn raw_connect(addr: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let f = Frame::decode(&h, 64).unwrap();
    assert_eq!(f.op, Op::Hello);
    let mut nonce = vec![0u8; f.body_len as usize];
    s.read_exact(&mut nonce).unwrap();
    (s, nonce)
}

/// A raw connection past the handshake: with the proof for `secret`, or an empty one for a
/// server without a secret.
fn authed(addr: &str, secret: Option<&[u8]>) -> TcpStream {
    let (mut s, nonce) = raw_connect(addr);
    let proof = secret.map_or_else(Vec::new, |k| kvtier_pool::auth::proof(k, &nonce).to_vec());
    let len = proof.len() as u32;
    s.write_all(&Frame::request(Op::Auth, 0, BlockKey::default(), len).encode())
        .unwrap();
    s.write_all(&proof).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    assert_eq!(Frame::decode(&h, 0).unwrap().op, Op::Auth);
    s
}

#[test]
fn a_client_with_a_secret_refuses_a_server_that_cannot_prove_it() {
    // An impostor on the address the agent was given: a server without the secret accepts any
    // proof, so only the server's own proof of the client's nonce tells it apart.
    let dir = tempfile::tempdir().unwrap();
    let impostor = start_server(&dir.path().join("data"), "127.0.0.1:0", None);
    let c = client(
        std::slice::from_ref(&impostor.addr),
        1,
        Some(b"correct horse battery staple 42"),
    );
    let c2 = c.clone();
    let e = c.block(async move { c2.put(record(1)).await }).unwrap_err();
    assert!(
        e.to_string().contains("did not prove the shared secret"),
        "{e}"
    );
    // A server with another secret refuses the client first.
    let secret_path = dir.path().join("secret");
    std::fs::write(&secret_path, b"another secret, 32 bytes long!!").unwrap();
    let other = start_server(&dir.path().join("data2"), "127.0.0.1:0", Some(&secret_path));
    let c = client(
        std::slice::from_ref(&other.addr),
        1,
        Some(b"correct horse battery staple 42"),
    );
    let c2 = c.clone();
    let e = c.block(async move { c2.put(record(1)).await }).unwrap_err();
    assert!(e.to_string().contains("refused the connection"), "{e}");
}

#[test]
fn an_existence_check_larger_than_one_frame_is_answered_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), "127.0.0.1:0", None);
    let c = client(std::slice::from_ref(&server.addr), 1, None);
    let n = kvtier_pool::wire::MAX_EXISTS_KEYS as u64 + 5_000;
    let c2 = c.clone();
    c.block(async move {
        c2.put(record(3)).await?;
        c2.put(record(n - 2)).await
    })
    .unwrap();
    let keys: Vec<BlockKey> = (0..n).map(key).collect();
    let c2 = c.clone();
    let got = c.block(async move { c2.exists(&keys).await }).unwrap();
    let held: Vec<u64> = (0..n).filter(|&i| got[i as usize]).collect();
    assert_eq!(
        held,
        [3, n - 2],
        "the keys past one frame's worth were not asked"
    );
}

#[test]
fn a_stalled_replica_costs_its_copy_not_the_call() {
    // Two replicas: a real server, and one that accepts and never answers (stopped, or its
    // network black-holed).
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), "127.0.0.1:0", None);
    let hole_addr = common::black_hole();
    let members = [server.addr.clone(), hole_addr];
    let c = client_with(&members, 2, None, |cfg| {
        cfg.timeout = Duration::from_secs(1);
        cfg.down_for = Duration::from_secs(30);
    });
    // A key whose first replica is the stalled one.
    let i = (0..)
        .find(|&i| c.placement().unwrap().replicas(key(i))[0] == 1)
        .unwrap();
    // The put succeeds on the live replica, as documented, instead of timing out whole.
    let c2 = c.clone();
    let stored = c.block(async move { c2.put(record(i)).await }).unwrap();
    assert_eq!(stored, 1);
    // The stalled replica was marked down: the get goes to the live one and finds it.
    let c2 = c.clone();
    let t0 = Instant::now();
    let got = c.block(async move { c2.get(key(i), false).await }).unwrap();
    assert_eq!(&got.expect("the live replica has it")[..], &record(i)[..]);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let st = c.client_stats();
    assert!(st.replica_timeouts >= 1 && st.put_partial == 1, "{st:?}");
}

#[test]
fn a_stalled_first_replica_leaves_the_next_time_to_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"), "127.0.0.1:0", None);
    let hole_addr = common::black_hole();
    // The record is put straight to the live server, so the client has not met the stalled one.
    let direct = client(std::slice::from_ref(&server.addr), 1, None);
    let members = [server.addr.clone(), hole_addr];
    let c = client_with(&members, 2, None, |cfg| {
        cfg.timeout = Duration::from_secs(2)
    });
    let i = (0..)
        .find(|&i| c.placement().unwrap().replicas(key(i))[0] == 1)
        .unwrap();
    let d2 = direct.clone();
    direct
        .block(async move { d2.put(record(i)).await })
        .unwrap();
    let c2 = c.clone();
    let got = c.block(async move { c2.get(key(i), false).await }).unwrap();
    assert_eq!(
        &got.expect("found on the second replica")[..],
        &record(i)[..]
    );
    // Also for existence checks.
    let c2 = c.clone();
    let i2 = (i + 1..)
        .find(|&j| c.placement().unwrap().replicas(key(j))[0] == 1)
        .unwrap();
    let d2 = direct.clone();
    direct
        .block(async move { d2.put(record(i2)).await })
        .unwrap();
    let got = c.block(async move { c2.exists(&[key(i2)]).await }).unwrap();
    assert_eq!(got, [true]);
}

/// A counter of the server's stats.
/// [`authed`] without a secret, retried while the server is at its connection cap (it closes
/// a connection over the cap before its hello) until a slot frees.
fn authed_when_room(addr: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut h = [0u8; HEADER_LEN];
        if s.read_exact(&mut h).is_ok() {
            let f = Frame::decode(&h, 64).unwrap();
            assert_eq!(f.op, Op::Hello);
            let mut nonce = vec![0u8; f.body_len as usize];
            s.read_exact(&mut nonce).unwrap();
            s.write_all(&Frame::request(Op::Auth, 0, BlockKey::default(), 0).encode())
                .unwrap();
            s.read_exact(&mut h).unwrap();
            assert_eq!(Frame::decode(&h, 0).unwrap().op, Op::Auth);
            s.set_read_timeout(None).unwrap();
            return s;
        }
        assert!(Instant::now() < deadline, "the server stayed at its cap");
        std::thread::yield_now();
    }
}

fn server_counter(c: &Arc<PoolClient>, name: &str) -> u64 {
    let c2 = c.clone();
    let st = c.block(async move { c2.server_stats(0).await }).unwrap();
    st[name].as_u64().unwrap()
}

#[test]
fn a_pool_server_caps_connections_and_closes_idle_and_stuck_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_server_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        None,
        &[
            "--max-connections",
            "2",
            "--idle-timeout-ms",
            "300",
            "--stall-timeout-ms",
            "500",
        ],
    );
    let addr = server.addr.clone();
    // Two connections are served; a third is closed at once, without a hello.
    let (a, _) = raw_connect(&addr);
    let (b, _) = raw_connect(&addr);
    let mut third = TcpStream::connect(&addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut h = [0u8; HEADER_LEN];
    assert!(
        third.read_exact(&mut h).is_err(),
        "a third connection was served"
    );
    drop((a, b));
    // A connection that sends nothing after its handshake is closed after the idle time. (The
    // server notices the two closes above on its own time: until then a connection is refused.)
    assert!(
        closed_by_server(authed_when_room(&addr)),
        "an idle connection stayed open"
    );
    // A peer asking for big answers and never reading them: closed after the stall time,
    // its requests ended (the connection count comes back down).
    let big = Arc::new(common::test_object(1, 900 << 10, key(1), 7).into_record());
    let c = client(std::slice::from_ref(&addr), 1, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The idle connection's slot, too, comes back when the server has seen it closed.
        let (c2, big) = (c.clone(), big.clone());
        match c.block(async move { c2.put(big).await }) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no room for a client: {e}"),
        }
        std::thread::yield_now();
    }
    let mut stuck = authed_when_room(&addr);
    for id in 0..200 {
        stuck
            .write_all(&Frame::request(Op::Get, id, key(1), 0).encode())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_counter(&c, "stalled") == 0 {
        assert!(
            Instant::now() < deadline,
            "a peer that reads nothing kept its connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Closed: what it reads is what was on its way, far from the 200 answers, then the end.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n) = stuck.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got < 100 * (900 << 10), "{got} bytes came after the close");
    assert!(server_counter(&c, "idle_closed") >= 1);
    assert!(server_counter(&c, "over_capacity") >= 1);
}

#[test]
fn a_pool_other_hosts_reach_needs_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .args([
            "pool",
            "--listen",
            "0.0.0.0:0",
            "--control",
            "none",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an open pool on 0.0.0.0 started");
    assert!(
        err.contains("pool.secret_file") && err.contains("insecure_open"),
        "{err}"
    );
    // Accepted when asked for in so many words, and on loopback by default.
    let open = common::start_server_with(
        &dir.path().join("data"),
        "0.0.0.0:0",
        None,
        &["--insecure-open"],
    );
    let port = open.addr.rsplit(':').next().unwrap();
    let c = client(&[format!("127.0.0.1:{port}")], 1, None);
    let c2 = c.clone();
    c.block(async move { c2.put(record(1)).await }).unwrap();
}

#[test]
fn bad_peers_are_disconnected_with_a_logged_reason_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("secret");
    let secret = b"correct horse battery staple 42";
    std::fs::write(&secret_path, secret).unwrap();
    let server = start_server(&dir.path().join("data"), "127.0.0.1:0", Some(&secret_path));
    let addr = server.addr.clone();
    let good = client(std::slice::from_ref(&addr), 1, Some(secret));
    let g = good.clone();
    good.block(async move { g.put(record(1)).await }).unwrap();

    // No credential: a put straight away, instead of the answer to the challenge.
    let (mut s, _) = raw_connect(&addr);
    let rec = record(2);
    s.write_all(&Frame::request(Op::Put, 1, key(2), rec.len() as u32).encode())
        .unwrap();
    let _ = s.write_all(&rec);
    assert!(closed_by_server(s), "no credential");
    // A wrong credential.
    let (mut s, nonce) = raw_connect(&addr);
    let proof = kvtier_pool::auth::proof(b"not the secret at all!", &nonce);
    s.write_all(&Frame::request(Op::Auth, 0, BlockKey::default(), 32).encode())
        .unwrap();
    s.write_all(&proof).unwrap();
    assert!(closed_by_server(s), "wrong credential");
    // A client configured without the secret gets a clear error.
    let anon = client(std::slice::from_ref(&addr), 1, None);
    let a2 = anon.clone();
    let e = anon
        .block(async move { a2.get(key(1), false).await })
        .unwrap_err();
    assert!(e.to_string().contains("requires a shared secret"), "{e}");

    // Authenticated peers sending bad frames.
    let mut s = authed(&addr, Some(&secret[..]));
    let mut f = Frame::request(Op::Get, 1, key(1), 0).encode();
    f[0..4].copy_from_slice(b"HTTP");
    s.write_all(&f).unwrap();
    assert!(closed_by_server(s), "wrong magic");
    let mut s = authed(&addr, Some(&secret[..]));
    s.write_all(&Frame::request(Op::Put, 1, key(3), u32::MAX).encode())
        .unwrap();
    assert!(closed_by_server(s), "oversized length");
    let mut s = authed(&addr, Some(&secret[..]));
    s.write_all(&Frame::request(Op::Put, 1, key(3), 8192).encode())
        .unwrap();
    s.write_all(&[0u8; 100]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_server(s), "truncated frame");
    let mut s = authed(&addr, Some(&secret[..]));
    s.write_all(&Frame::request(Op::Get, 1, key(1), 0).encode()[..20])
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_server(s), "truncated header");
    // A well-formed put of a record that fails its checksum is refused, not stored.
    let mut s = authed(&addr, Some(&secret[..]));
    let (st, why) = raw_put(&mut s, 9, key(2), &flipped(&rec, 200));
    assert_eq!(st, Status::Error);
    assert!(why.contains("checksum"), "{why}");
    // A bad copy of a stored key is refused and leaves the good copy in place.
    let (st, why) = raw_put(&mut s, 10, key(1), &flipped(&record(1), 300));
    assert_eq!(st, Status::Error);
    assert!(why.contains("checksum"), "{why}");

    // The good client was served throughout.
    let g = good.clone();
    good.block(async move {
        let one = g
            .get(key(1), true)
            .await
            .unwrap()
            .expect("the good copy stays");
        assert!(one[..record(1).len()] == record(1)[..]);
        assert!(
            g.get(key(2), false).await.unwrap().is_none(),
            "the corrupt put was not stored"
        );
        g.put(record(4)).await.unwrap();
        assert!(g.get(key(4), true).await.unwrap().is_some());
    });
    let st = stats(&good, 0);
    // No credential, a wrong one, and the client without a secret (which hangs up itself).
    assert_eq!(st["auth_failures"].as_u64(), Some(3), "{st}");
    assert_eq!(st["bad_frames"].as_u64(), Some(4), "{st}");
    assert_eq!(st["bad_records"].as_u64(), Some(2), "{st}");
    // Each closing is logged with its reason.
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = [
        "wrong or missing shared secret",
        "wrong magic",
        "exceeds the limit",
        "truncated frame",
    ];
    loop {
        let log = server.stderr.lock().clone();
        if want.iter().all(|w| log.contains(w)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing reasons in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A record of `payload` bytes for key `i`, as a put body.
fn big_record(i: u64, payload: usize) -> Arc<AlignedBuf> {
    Arc::new(common::test_object(i, payload, key(i), 7).into_record())
}

/// Sends a put of `body` under `k` on a raw connection and reads the answer: (status, text).
/// A copy of `rec` with the byte at `at` flipped.
fn flipped(rec: &[u8], at: usize) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(rec.len());
    b.copy_from_slice(rec);
    b[at] ^= 1;
    b
}

fn raw_put(s: &mut TcpStream, id: u64, k: BlockKey, body: &[u8]) -> (Status, String) {
    s.write_all(&Frame::request(Op::Put, id, k, body.len() as u32).encode())
        .unwrap();
    s.write_all(body).unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).unwrap();
    let f = Frame::decode(&h, 1 << 20).unwrap();
    assert_eq!(f.id, id);
    let mut text = vec![0u8; f.body_len as usize];
    s.read_exact(&mut text).unwrap();
    (f.status, String::from_utf8_lossy(&text).into_owned())
}

#[test]
fn large_puts_stream_to_disk_and_bad_cut_or_stalled_bodies_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 64 KiB chunks: a 900 KB record crosses in 14 of them.
    let flags = ["--stream-chunk", "64KiB", "--stall-timeout-ms", "300"];
    let server = common::start_server_with(&data, "127.0.0.1:0", None, &flags);
    let addr = server.addr.clone();
    // Zero-copy sends even to this host (by default only to other hosts'), so that path is
    // exercised end to end too.
    let c = client_with(std::slice::from_ref(&addr), 1, None, |c| {
        c.splice = Splice::Always
    });
    const BIG: usize = 900_000;
    // Good records: 16 one at a time (each streamed: a put is streamed when it is the only one
    // in flight), then 8 at once (some streamed, some read whole).
    let c2 = c.clone();
    c.block(async move {
        for i in 0..16u64 {
            assert_eq!(c2.put(big_record(i, BIG)).await.unwrap(), 1);
        }
        let mut puts = tokio::task::JoinSet::new();
        for i in 16..24u64 {
            let c = c2.clone();
            puts.spawn(async move { c.put(big_record(i, BIG)).await });
        }
        while let Some(r) = puts.join_next().await {
            assert_eq!(r.unwrap().unwrap(), 1);
        }
        for i in 0..24u64 {
            let want = big_record(i, BIG);
            for bypass in [true, false] {
                let got = c2.get(key(i), bypass).await.unwrap().expect("stored");
                assert!(
                    got[..want.len()] == want[..],
                    "object {i} came back different"
                );
            }
        }
    });
    // A record failing its checksum, and one under the wrong key: refused, nothing stored,
    // and the same connection goes on (the rest of each body was read and dropped).
    let mut s = authed(&addr, None);
    let good = big_record(100, BIG);
    let (st, why) = raw_put(&mut s, 1, key(100), &flipped(&good, BIG / 2));
    assert_eq!(st, Status::Error);
    assert!(why.contains("checksum"), "{why}");
    let used = || stats(&c, 0)["store"]["used_bytes"].as_u64().unwrap();
    let before = used();
    let (st, why) = raw_put(&mut s, 2, key(101), &good);
    assert_eq!(st, Status::Error);
    assert!(why.contains("wrong_key"), "{why}");
    assert_eq!(
        used(),
        before,
        "a record refused for its header takes no space"
    );
    let (st, why) = raw_put(&mut s, 3, key(100), &good);
    assert_eq!((st, why.as_str()), (Status::Ok, ""));
    // A body cut off half-way, and one that stalls: the connection is closed with a reason.
    let cut = big_record(200, BIG);
    let mut s = authed(&addr, None);
    s.write_all(&Frame::request(Op::Put, 1, key(200), cut.len() as u32).encode())
        .unwrap();
    s.write_all(&cut[..BIG / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_server(s), "cut body");
    let stall = big_record(201, BIG);
    let mut s = authed(&addr, None);
    s.write_all(&Frame::request(Op::Put, 1, key(201), stall.len() as u32).encode())
        .unwrap();
    s.write_all(&stall[..BIG / 3]).unwrap();
    let t0 = Instant::now();
    assert!(closed_by_server(s), "stalled body");
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "closed after the stall timeout"
    );
    let c2 = c.clone();
    c.block(async move {
        for (i, want) in [(100, true), (101, false), (200, false), (201, false)] {
            assert_eq!(
                c2.get(key(i), true).await.unwrap().is_some(),
                want,
                "object {i}"
            );
        }
    });
    let st = stats(&c, 0);
    assert_eq!(st["bad_records"].as_u64(), Some(2), "{st}");
    // The puts sent one at a time took the streaming path.
    let streamed = st["streamed_puts"].as_u64().unwrap();
    assert!((16 + 5..=24 + 5).contains(&streamed), "{st}");
    assert_eq!(st["store"]["objects"].as_u64(), Some(25), "{st}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = server.stderr.lock().clone();
        if log.contains("truncated frame") && log.contains("stalled for more than") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing reasons in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killed and restarted on its directory: exactly the good records come back.
    drop(c);
    drop(server);
    let server = common::start_server_with(&data, "127.0.0.1:0", None, &flags);
    let c = client(std::slice::from_ref(&server.addr), 1, None);
    let c2 = c.clone();
    c.block(async move {
        for i in (0..24u64).chain([100]) {
            let want = big_record(i, BIG);
            let got = c2.get(key(i), true).await.unwrap().expect("recovered");
            assert!(
                got[..want.len()] == want[..],
                "object {i} came back different"
            );
        }
        for i in [101, 200, 201] {
            assert!(c2.get(key(i), true).await.unwrap().is_none(), "object {i}");
        }
    });
    assert_eq!(stats(&c, 0)["store"]["objects"].as_u64(), Some(25));
}

/// Connects to a server without a secret (an empty proof).
#[test]
fn a_server_killed_while_puts_stream_keeps_every_acknowledged_record_and_no_torn_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = ["--stream-chunk", "64KiB"];
    let server = common::start_server_with(&data, "127.0.0.1:0", None, &flags);
    let c = client(std::slice::from_ref(&server.addr), 1, None);
    const BIG: usize = 900_000;
    // One writer putting big records one after another (each streamed); the server is
    // SIGKILLed while it writes.
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let (c2, a2) = (c.clone(), acked.clone());
    // At most 200 records (one 1 MiB segment each, within the 256 MiB capacity: none is
    // evicted before the kill).
    let writer = std::thread::spawn(move || {
        for i in 1000..1200u64 {
            let c3 = c2.clone();
            match c2.block(async move { c3.put(big_record(i, BIG)).await }) {
                Ok(_) => a2.lock().push(i),
                Err(_) => return i, // the first put the dead server did not acknowledge
            }
        }
        u64::MAX
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().len() < 20 {
        assert!(!writer.is_finished(), "the writer stopped early");
        assert!(Instant::now() < deadline, "20 puts took more than 20 s");
        std::thread::sleep(Duration::from_millis(1)); // polling; the writer needs the cores
    }
    // Kill as soon as the server has started streaming a put it has not acknowledged: most
    // likely while its chunks are being written.
    loop {
        let started = stats(&c, 0)["streamed_puts"].as_u64().unwrap();
        if started > acked.lock().len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline && !writer.is_finished(),
            "never saw a put streaming that was not yet acknowledged"
        );
    }
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let cut = writer.join().unwrap();
    assert_ne!(cut, u64::MAX, "the writer saw the server die");
    let acked = acked.lock().clone();
    // Restarted on its directory: every acknowledged record back, byte-equal; the one cut off
    // (and the few after it the client tried) absent or whole, never different bytes.
    let server = common::start_server_with(&data, "127.0.0.1:0", None, &flags);
    let c = client(std::slice::from_ref(&server.addr), 1, None);
    let c2 = c.clone();
    let acked2 = acked.clone();
    let found_cut = c.block(async move {
        for &i in &acked2 {
            let want = big_record(i, BIG);
            let got = c2
                .get(key(i), true)
                .await
                .unwrap()
                .expect("acknowledged, so recovered");
            assert!(
                got[..want.len()] == want[..],
                "object {i} came back different"
            );
        }
        let got = c2.get(key(cut), true).await.unwrap();
        if let Some(got) = &got {
            let want = big_record(cut, BIG);
            assert!(
                got[..want.len()] == want[..],
                "the cut-off object came back different"
            );
        }
        got.is_some()
    });
    let cs = c.client_stats();
    assert_eq!(
        cs.corrupt, 0,
        "no read returned bytes failing their checksum"
    );
    let objects = stats(&c, 0)["store"]["objects"].as_u64().unwrap();
    assert_eq!(objects, acked.len() as u64 + found_cut as u64);
    let torn = server
        .stderr
        .lock()
        .matches("discarding a torn record")
        .count();
    println!(
        "{} acknowledged before the kill, all recovered; the cut-off put {}; torn records discarded on recovery: {torn}",
        acked.len(),
        if found_cut { "landed whole" } else { "left nothing" }
    );
}

/// `kvtier bench pool` end to end on a tiny workload (its figures are not asserted: CI does not
/// time things): every phase, the minimal references and `--beside-tcp` included, runs to its
/// end within a deadline, and every get of kvtier and of the minimal reference was checked.
#[test]
fn bench_pool_runs_every_phase_and_checks_every_get() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kvtier"))
        .args(["bench", "pool", "--dir"])
        .arg(dir.path())
        .args(["--sizes", "256KiB", "--concurrency", "2", "--total", "4MiB"])
        .args(["--rounds", "1", "--beside-tcp", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kvtier bench pool did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{status}: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let row = |sys: &str, op: &str| {
        rows.iter()
            .find(|r| r["system"] == sys && r["op"] == op)
            .unwrap_or_else(|| panic!("no {sys} {op} row: {out}"))
    };
    for (sys, op) in [
        ("disk", "raw_write"),
        ("disk", "raw_read"),
        ("disk", "raw_write_beside_tcp"),
        ("minimal", "put"),
        ("kvtier", "put"),
    ] {
        assert!(row(sys, op)["gbps"].as_f64().unwrap() > 0.0, "{sys} {op}");
    }
    for (sys, op) in [
        ("minimal", "get"),
        ("kvtier", "get_disk"),
        ("kvtier", "get_cached"),
    ] {
        let r = row(sys, op);
        assert_eq!(r["verified"], r["objects"], "{sys} {op}: every get checked");
        assert!(r["gbps"].as_f64().unwrap() > 0.0, "{sys} {op}");
    }
}
