//! The UCX data plane (feature `ucx`), over UCX's tcp transport on loopback (`UCX_TLS=tcp`;
//! on an RDMA fabric the same code takes the fast path): one pool server process serving a
//! UCX client and a TCP client at once, same semantics, every byte checked.
#![cfg(feature = "ucx")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use kvtier_core::block::BlockObject;
use kvtier_core::buf::AlignedBuf;
use kvtier_core::BlockKey;
use kvtier_pool::client::{PoolClient, PoolClientConfig, Transport};
use kvtier_pool::placement::Member;

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(0xC0FFEE << 64 | i as u128)
}

fn record(i: u64, size: usize) -> Arc<AlignedBuf> {
    let mut o = BlockObject::new(size).unwrap();
    for (j, b) in o.payload_mut().iter_mut().enumerate() {
        *b = (j as u64 ^ i.wrapping_mul(0x9E37_79B9)) as u8;
    }
    o.seal(key(i), 1, 0);
    Arc::new(o.into_record())
}

fn client(addr: &str, t: Transport) -> Arc<PoolClient> {
    let mut c = PoolClientConfig::new(vec![Member {
        addr: addr.to_string(),
        weight: 1.0,
    }]);
    c.transport = t;
    c.timeout = Duration::from_secs(10);
    PoolClient::new(c).unwrap()
}

#[test]
fn ucx_and_tcp_clients_are_served_at_once() {
    // The test's own client and the server both read UCX_TLS from the environment.
    std::env::set_var(
        "UCX_TLS",
        std::env::var("KVTIER_TEST_UCX_TLS").unwrap_or("tcp".into()),
    );
    let dir = tempfile::tempdir().unwrap();
    let server =
        common::start_server_with(&dir.path().join("data"), "127.0.0.1:0", None, &["--ucx"]);
    let ucx = client(&server.addr, Transport::Ucx);
    let tcp = client(&server.addr, Transport::Tcp);
    let run = |c: Arc<PoolClient>, base: u64| {
        std::thread::spawn(move || {
            let c2 = c.clone();
            c.block(async move {
                for i in base..base + 60 {
                    // Sizes from under a page to 500 kB: eager and rendezvous protocols alike.
                    let size = [1000, 70_000, 500_000][(i % 3) as usize];
                    assert_eq!(c2.put(record(i, size)).await.unwrap(), 1);
                }
                for i in base..base + 60 {
                    let size = [1000, 70_000, 500_000][(i % 3) as usize];
                    let got = c2.get(key(i), i % 2 == 0).await.unwrap().expect("stored");
                    assert_eq!(&got[..], &record(i, size)[..], "object {i}");
                }
                let keys: Vec<BlockKey> = (base..base + 61).map(key).collect();
                let ex = c2.exists(&keys).await.unwrap();
                assert!(ex[..60].iter().all(|&x| x) && !ex[60]);
                assert!(c2.delete(key(base)).await.unwrap());
                assert!(c2.get(key(base), false).await.unwrap().is_none());
            });
        })
    };
    let (a, b) = (run(ucx.clone(), 0), run(tcp.clone(), 1000));
    a.join().expect("the UCX client's checks");
    b.join().expect("the TCP client's checks");
    // Both clients reached the same store: each sees the other's objects.
    let (u2, t2) = (ucx.clone(), tcp.clone());
    assert!(ucx
        .block(async move { u2.get(key(1001), false).await })
        .unwrap()
        .is_some());
    assert!(tcp
        .block(async move { t2.get(key(1), false).await })
        .unwrap()
        .is_some());
    assert_eq!(ucx.client_stats().corrupt, 0);
    let st = {
        let c = tcp.clone();
        tcp.block(async move { c.server_stats(0).await }).unwrap()
    };
    assert_eq!(st["puts"].as_u64(), Some(120), "{st}");
}
