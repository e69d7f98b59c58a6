//! The pool as a cluster on etcd: real etcd (three members on loopback) and real `kvtier
//! pool` processes that register themselves; a client that knows only the etcd endpoints.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::buf::AlignedBuf;
use kvtier_core::BlockKey;
use kvtier_pool::client::{PoolClient, PoolClientConfig};

const PAYLOAD: usize = 16 << 10;
const N: u64 = 400;

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()))
}

fn record(i: u64) -> Arc<AlignedBuf> {
    Arc::new(common::test_object(i, PAYLOAD, key(i), 7).into_record())
}

fn server(dir: &std::path::Path, i: usize, etcd: &common::Etcd) -> common::Server {
    common::start_server_with(
        &dir.join(format!("s{i}")),
        "127.0.0.1:0",
        None,
        &["--etcd", &etcd.flag(), "--cluster", "test"],
    )
}

/// Waits until the client places on exactly `addrs`.
fn wait_members(c: &PoolClient, addrs: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut now: Vec<String> = c
            .placement()
            .map(|p| p.members().iter().map(|m| m.addr.clone()).collect())
            .unwrap_or_default();
        now.sort();
        let mut want: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        want.sort();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members {now:?}, waiting for {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every one of the `N` records reads back byte-equal.
fn all_read_back(c: &Arc<PoolClient>) {
    for i in 0..N {
        let c2 = c.clone();
        let got = c
            .block(async move { c2.get(key(i), false).await })
            .unwrap()
            .unwrap_or_else(|| panic!("record {i} missing"));
        assert!(got[..] == record(i)[..], "record {i} differs");
        c.recycle(got);
    }
}

#[test]
fn servers_found_in_etcd_serve_through_a_server_loss_a_join_and_an_etcd_leader_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = common::Etcd::start(dir.path(), 3);
    let mut servers: Vec<Option<common::Server>> =
        (0..3).map(|i| Some(server(dir.path(), i, &etcd))).collect();
    let addrs: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().addr.clone())
        .collect();
    let c = etcd.client("test", 2);
    // The client was given no server: it finds the three in etcd.
    wait_members(
        &c,
        &[&addrs[0], &addrs[1], &addrs[2]],
        Duration::from_secs(10),
    );
    for i in 0..N {
        let c2 = c.clone();
        let stored = c.block(async move { c2.put(record(i)).await }).unwrap();
        assert_eq!(stored, 2, "record {i} not on two servers");
    }
    all_read_back(&c);

    // SIGKILL one server: its lease runs out, it leaves the membership, and every record
    // still reads back from its other copy.
    servers[0].take();
    wait_members(&c, &[&addrs[1], &addrs[2]], Duration::from_secs(15));
    all_read_back(&c);

    // Kill etcd's leader: the two left keep quorum; reads go on meanwhile, and a server
    // started now registers through them.
    let leader = etcd.leader();
    etcd.kill(leader);
    all_read_back(&c);
    let fresh = server(dir.path(), 3, &etcd);
    wait_members(
        &c,
        &[&addrs[1], &addrs[2], &fresh.addr],
        Duration::from_secs(20),
    );
    // Keys now placed on the new server are found on their other replica.
    all_read_back(&c);
    assert!(c.cluster_health().etcd_up());

    // A server stopped cleanly leaves at once (its entry deleted), not a lease later.
    let mut s = servers[1].take().unwrap();
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let _ = s.child.wait();
    wait_members(&c, &[&addrs[2], &fresh.addr], Duration::from_secs(3));
}

#[test]
fn etcd_gone_leaves_the_last_membership_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = common::Etcd::start(dir.path(), 1);
    let servers: Vec<common::Server> = (0..2).map(|i| server(dir.path(), i, &etcd)).collect();
    let c = etcd.client("test", 2);
    wait_members(
        &c,
        &[&servers[0].addr, &servers[1].addr],
        Duration::from_secs(10),
    );
    for i in 0..N {
        let c2 = c.clone();
        c.block(async move { c2.put(record(i)).await }).unwrap();
    }
    etcd.kill(0);
    // The watch notices within its keepalive; the members stay as last seen.
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.cluster_health().etcd_up() {
        assert!(
            Instant::now() < deadline,
            "etcd still seen up after it was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.placement().unwrap().members().len(), 2);
    all_read_back(&c);
}

#[test]
fn after_the_member_set_grows_a_key_missing_on_its_new_replicas_is_found_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<common::Server> = (0..4)
        .map(|i| common::start_server(&dir.path().join(format!("s{i}")), "127.0.0.1:0", None))
        .collect();
    let member = |s: &common::Server| kvtier_pool::placement::Member {
        addr: s.addr.clone(),
        weight: 1.0,
    };
    let c = PoolClient::new(PoolClientConfig::new(vec![member(&servers[0])])).unwrap();
    for i in 0..N {
        let c2 = c.clone();
        c.block(async move { c2.put(record(i)).await }).unwrap();
    }
    // Three members join at once: about 3/4 of the keys now belong to one of them, which
    // holds nothing yet.
    c.set_members(servers.iter().map(member).collect()).unwrap();
    let p = c.placement().unwrap();
    let moved = (0..N)
        .filter(|&i| p.members()[p.replicas(key(i))[0]].addr != servers[0].addr)
        .count() as u64;
    assert!(moved > N / 2, "{moved} of {N} keys moved");
    all_read_back(&c);
    assert_eq!(c.client_stats().previous_asked, moved);
}
