//! Crash test of the segment store: a writer process is SIGKILLed mid-stream, the store is
//! reopened by another process, and every acknowledged object must be there and verify; torn
//! records (a real kill mid-write, plus one cut-off record planted at the tail of the unsealed
//! segment, as a power cut would leave it) must be gone.
//!
//! The writer is this same test binary re-executed with `crash_writer_child` (an ignored test
//! that only runs when asked for by name, with `KVTIER_CRASH_DIR` set).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use kvtier_core::block::{BlockHeader, BlockObject};
use kvtier_core::buf::ALIGN;
use kvtier_core::tier::io::Psync;
use kvtier_core::tier::segment::{Durability, SegmentStore, SegmentStoreConfig};
use kvtier_core::BlockKey;

const PAYLOAD: usize = 60_000;

fn config(dir: &Path) -> SegmentStoreConfig {
    let mut c = SegmentStoreConfig::new(dir);
    c.segment_bytes = 1 << 20;
    c.capacity_bytes = 512 << 20; // no eviction: every acknowledged object must survive
    c.durability = Durability::Written;
    c
}

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(0x5EED_0000_0000_0000_0000_0000_0000_0000 | i as u128)
}

fn object(i: u64) -> BlockObject {
    let mut o = BlockObject::new(PAYLOAD).unwrap();
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in o.payload_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    o.seal(key(i), 1, 0);
    o
}

/// The writer: two threads putting objects `start..`, printing `acked N` after each put returns.
#[test]
#[ignore = "child process of crash_kill_reopen_verify"]
fn crash_writer_child() {
    let dir = std::env::var("KVTIER_CRASH_DIR").expect("run by crash_kill_reopen_verify");
    let start: u64 = std::env::var("KVTIER_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let store = Arc::new(SegmentStore::open(config(Path::new(&dir))).unwrap());
    println!("ready");
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = store.clone();
            s.spawn(move || {
                let mut i = start + t;
                loop {
                    store.put(&object(i)).unwrap();
                    println!("acked {i}");
                    i += 2;
                }
            });
        }
    });
}

/// Plants a record cut off halfway (header and the first part of the payload) after the last
/// record of the newest (unsealed) segment, where a power cut could leave one.
fn plant_torn_record(dir: &Path, torn: &BlockObject) -> bool {
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&newest)
        .unwrap();
    let size = f.metadata().unwrap().len();
    let mut off = ALIGN as u64;
    let mut end = off;
    let mut page = vec![0u8; ALIGN];
    while off + ALIGN as u64 <= size {
        f.read_exact_at(&mut page, off).unwrap();
        match BlockHeader::decode(&page) {
            Ok(h) => {
                off += h.record_len() as u64;
                end = off;
            }
            Err(_) => off += ALIGN as u64,
        }
    }
    let len = torn.record().len() as u64;
    if end + len > size {
        return false;
    }
    f.write_all_at(&torn.record()[..PAYLOAD / 2], end).unwrap();
    true
}

#[test]
fn crash_kill_reopen_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut planted = 0;
    let mut start = 0u64;
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KVTIER_CRASH_DIR", dir.path())
            .env("KVTIER_CRASH_START", start.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this_round = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            // libtest may print "test crash_writer_child ... " before the first line.
            if let Some(n) = line.split("acked ").nth(1) {
                acked.push(n.trim().parse().unwrap());
                this_round += 1;
                if this_round == 150 + 40 * round {
                    // SIGKILL while both threads are still writing.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    break;
                }
            }
        }
        // Acks already in the pipe when the kill landed count too.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.split("acked ").nth(1) {
                acked.push(n.trim().parse().unwrap());
            }
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "the writer must have been killed");
        let torn = object(1_000_000 + round);
        if plant_torn_record(dir.path(), &torn) {
            planted += 1;
        }

        // Reopen in this process (a new process relative to the killed writer).
        let (store, report) =
            SegmentStore::open_with_io(config(dir.path()), Arc::new(Psync)).unwrap();
        assert!(
            report.unsealed >= 1,
            "the killed writer's active segment is unsealed: {report:?}"
        );
        for &i in &acked {
            let got = store.get(key(i)).unwrap().unwrap_or_else(|| {
                panic!("round {round}: acknowledged object {i} lost; {report:?}")
            });
            assert_eq!(
                got.payload(),
                object(i).payload(),
                "object {i} came back different"
            );
        }
        assert!(
            !store.contains(torn.header().key()),
            "round {round}: a torn record was indexed"
        );
        // Whatever else is indexed (written but not yet acknowledged at the kill) verifies too.
        let max = acked.iter().max().copied().unwrap_or(0) + 8;
        for i in start..max {
            if let Some(o) = store.get(key(i)).unwrap() {
                assert_eq!(o.payload(), object(i).payload());
            }
        }
        assert_eq!(
            store.stats().corrupt.iter().map(|(_, n)| n).sum::<u64>(),
            report.discarded as u64
        );
        drop(store);
        // Torn records are gone for good: a second open discards nothing.
        let (_, again) = SegmentStore::open_with_io(config(dir.path()), Arc::new(Psync)).unwrap();
        assert_eq!(again.discarded, 0, "round {round}: {again:?}");
        eprintln!(
            "round {round}: {} acked so far; recovery {report:?}",
            acked.len()
        );
        start = max + 2;
    }
    assert!(
        planted >= 2,
        "torn records were planted in only {planted} of 3 rounds"
    );
}
