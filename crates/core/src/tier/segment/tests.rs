use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::block::HEADER_LEN;
use crate::tier::io::Psync;

const PAYLOAD: usize = 20_000; // a 24 KiB record

fn cfg(dir: &Path, segments: u64) -> SegmentStoreConfig {
    let mut c = SegmentStoreConfig::new(dir);
    c.segment_bytes = 256 << 10;
    c.capacity_bytes = segments * c.segment_bytes;
    c
}

fn obj(i: u64) -> BlockObject {
    let mut payload = vec![0u8; PAYLOAD];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    BlockObject::from_payload(key(i), 77, &payload).unwrap()
}

fn key(i: u64) -> BlockKey {
    BlockKey::from_u128(0xABCD_0000_0000_0000_0000_0000_0000_0000 | i as u128)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn check(store: &SegmentStore, i: u64) -> bool {
    match store.get(key(i)).unwrap() {
        Some(o) => {
            assert_eq!(
                o.payload(),
                obj(i).payload(),
                "object {i} came back different"
            );
            true
        }
        None => false,
    }
}

#[test]
fn put_get_miss_and_reopen() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    for i in 0..30 {
        store.put(&obj(i)).unwrap();
    }
    for i in 0..30 {
        assert!(check(&store, i));
    }
    assert!(store.get(key(999)).unwrap().is_none());
    let s = store.stats();
    assert_eq!((s.hits, s.misses, s.puts, s.objects), (30, 1, 30, 30));
    drop(store);
    let (store, report) = SegmentStore::open_with_io(cfg(d.path(), 8), Arc::new(Psync)).unwrap();
    assert_eq!(report.records, 30);
    assert_eq!(report.discarded, 0);
    for i in 0..30 {
        assert!(check(&store, i), "object {i} lost across reopen");
    }
    store.flush().unwrap();
    drop(store);
    let mut synced = cfg(d.path(), 8);
    synced.durability = Durability::Synced;
    let store = SegmentStore::open(synced).unwrap();
    store.put(&obj(31)).unwrap();
    assert!(check(&store, 31) && check(&store, 0));
}

#[test]
fn writing_three_times_capacity_stays_within_capacity_plus_one_segment() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), 6);
    let bound = c.capacity_bytes + c.segment_bytes;
    let store = SegmentStore::open(c.clone()).unwrap();
    let record = obj(0).record().len() as u64;
    let n = 3 * c.capacity_bytes / record;
    for i in 0..n {
        store.put(&obj(i)).unwrap();
        assert!(
            dir_bytes(d.path()) <= bound,
            "directory grew past capacity + one segment after {i} puts"
        );
    }
    assert!(store.detail().segments_evicted > 0);
    assert!(store.stats().evictions > 0);
    // The newest objects are all there; the oldest were evicted; whatever is returned verifies.
    assert!((n - 5..n).all(|i| check(&store, i)));
    assert!(!check(&store, 0));
    let present = (0..n).filter(|&i| check(&store, i)).count() as u64;
    assert!(present * record <= c.capacity_bytes);
}

#[test]
fn flipped_bytes_are_a_counted_miss() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    for i in 0..5 {
        store.put(&obj(i)).unwrap();
    }
    // Flip a byte inside the payload of the third record of the first segment.
    let seg = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let f = File::options().read(true).write(true).open(&seg).unwrap();
    let rec = obj(0).record().len() as u64;
    let at = ALIGN as u64 + 2 * rec + HEADER_LEN as u64 + 1234;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);
    assert!(
        store.get(key(2)).unwrap().is_none(),
        "a corrupt record must be a miss"
    );
    assert_eq!(store.corrupt_count(VerifyError::PayloadChecksum), 1);
    assert!(
        !store.contains(key(2)),
        "a corrupt record is dropped from the index"
    );
    assert!(check(&store, 1) && check(&store, 3));
    // A flipped header byte is caught too.
    let f = File::options().read(true).write(true).open(&seg).unwrap();
    let at = ALIGN as u64 + 3 * rec + 20;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 1], at).unwrap();
    assert!(store.get(key(3)).unwrap().is_none());
    assert_eq!(store.corrupt_count(VerifyError::HeaderChecksum), 1);
}

#[test]
fn torn_tail_record_is_gone_after_reopen() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    for i in 0..4 {
        store.put(&obj(i)).unwrap();
    }
    drop(store); // like a crash: the active segment is left unsealed
    let seg = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    // Append a torn record: the header and the first half of the payload only.
    let torn = obj(100);
    let rec = torn.record().len() as u64;
    let f = File::options().write(true).open(&seg).unwrap();
    f.write_all_at(&torn.record()[..PAYLOAD / 2], ALIGN as u64 + 4 * rec)
        .unwrap();
    drop(f);
    let (store, report) = SegmentStore::open_with_io(cfg(d.path(), 8), Arc::new(Psync)).unwrap();
    assert_eq!(report.discarded, 1, "{report:?}");
    assert_eq!(report.records, 4);
    assert!(!store.contains(key(100)));
    assert_eq!(store.detail().torn_on_recovery, 1);
    assert!((0..4).all(|i| check(&store, i)));
    drop(store);
    // Gone for good: the next open finds nothing to discard.
    let (_, report) = SegmentStore::open_with_io(cfg(d.path(), 8), Arc::new(Psync)).unwrap();
    assert_eq!(
        (report.records, report.discarded, report.unsealed),
        (4, 0, 1),
        "{report:?}"
    );
}

#[test]
fn a_damaged_header_page_costs_a_full_scan_not_the_segment() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    for i in 0..12 {
        store.put(&obj(i)).unwrap();
    }
    store.flush().unwrap();
    drop(store);
    let mut segs: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    // Flip bytes in the first (sealed, full) segment's header page.
    let f = File::options().write(true).open(&segs[0]).unwrap();
    f.write_all_at(b"garbage!", 0).unwrap();
    drop(f);
    let (store, report) = SegmentStore::open_with_io(cfg(d.path(), 8), Arc::new(Psync)).unwrap();
    assert_eq!(report.removed_files, 0, "{report:?}");
    assert_eq!(report.records, 12, "{report:?}");
    assert!((0..12).all(|i| check(&store, i)));
    drop(store);
    // Its header was rewritten: the next open walks it as sealed.
    let (store, report) = SegmentStore::open_with_io(cfg(d.path(), 8), Arc::new(Psync)).unwrap();
    assert_eq!((report.records, report.unsealed), (12, 1), "{report:?}");
    assert!((0..12).all(|i| check(&store, i)));
}

#[test]
fn second_chance_keeps_objects_that_are_read() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 4)).unwrap();
    let hot = [0u64, 3, 7];
    for i in 0..200 {
        store.put(&obj(i)).unwrap();
        for h in hot {
            if h <= i {
                assert!(check(&store, h), "hot object {h} evicted after {i} puts");
            }
        }
    }
    assert!(store.detail().second_chances > 0);
    assert!(
        !check(&store, 1) && !check(&store, 50),
        "cold objects are evicted"
    );
    let mut c = cfg(d.path(), 4);
    c.second_chance = false;
    let d2 = tempfile::tempdir().unwrap();
    c.dir = d2.path().to_path_buf();
    let plain = SegmentStore::open(c).unwrap();
    plain.put(&obj(0)).unwrap();
    assert!(check(&plain, 0));
    for i in 1..200 {
        plain.put(&obj(i)).unwrap();
    }
    assert!(
        !check(&plain, 0),
        "without second chance a read object is evicted all the same"
    );
}

/// Trains a store's policy on synthetic keys: every second key is used twice more, 1500 and
/// 3000 ticks after it is stored; the others never again.
fn train(store: &SegmentStore) {
    let mut guard = store.policy_for(4096);
    let p = guard.as_mut().unwrap();
    let mut pending = std::collections::VecDeque::new();
    let mut uses = std::collections::HashMap::new();
    for t in 0..20_000u64 {
        let k = key(1 << 40 | t);
        p.insert(k, InsertInfo::default());
        uses.insert(k, 1);
        if t % 2 == 0 {
            pending.push_back((t + 750, k));
        }
        while pending.front().is_some_and(|&(at, _)| at <= t) {
            let (at, k) = pending.pop_front().unwrap();
            p.access(k);
            *uses.get_mut(&k).unwrap() += 1;
            if uses[&k] == 2 {
                pending.push_back((at + 750, k));
            }
        }
        while p.len() > 2000 {
            let v = p.evict(&mut |_| true).unwrap();
            uses.remove(&v);
        }
    }
}

#[test]
fn second_chances_follow_the_policy_once_it_has_learnt() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 4)).unwrap();
    train(&store);
    let (used_twice, once, untracked, once_too, returned) =
        (key(1), key(2), key(3), key(4), key(5));
    {
        let mut guard = store.policy.lock();
        let p = guard.as_mut().unwrap();
        for k in [used_twice, once, once_too, returned] {
            p.insert(k, InsertInfo::default());
        }
        p.access(used_twice);
        // Stored, evicted with its segment, stored again: remembered as used twice.
        p.evicted(returned);
        p.insert(returned, InsertInfo::default());
        for i in 0..100 {
            p.insert(key(2 << 40 | i), InsertInfo::default());
        }
        let s = |k| p.standing(&k).unwrap();
        assert_eq!(
            (s(used_twice).uses, s(returned).uses, s(once).uses),
            (2, 2, 1)
        );
        assert!(
            s(used_twice).density > s(once).density,
            "the policy has learnt"
        );
    }
    // (key, offset, length, read since written)
    let live = [
        (once, 0, 4096, true),
        (used_twice, 0, 4096, false),
        (untracked, 0, 4096, true),
        (once_too, 0, 4096, false),
        (returned, 0, 4096, false),
    ];
    let keep: Vec<BlockKey> = store
        .second_chances(&live)
        .into_iter()
        .map(|i| live[i].0)
        .collect();
    // The policy's choice, not the read flag: the record used twice and the one that came back
    // after an eviction; the once-used record goes even though it was read. A record the
    // policy does not track falls back to the read flag.
    assert_eq!(keep.len(), 3, "{keep:?}");
    assert_eq!(keep[0], untracked);
    assert!(keep.contains(&used_twice) && keep.contains(&returned));

    // With LRU (no ranking): exactly the records read since they were written, oldest first.
    let d2 = tempfile::tempdir().unwrap();
    let mut c = cfg(d2.path(), 4);
    c.policy = PolicyKind::Lru;
    let lru = SegmentStore::open(c).unwrap();
    train(&lru);
    let keep: Vec<usize> = lru.second_chances(&live);
    assert_eq!(keep, vec![0, 2]);
}

#[test]
fn the_policy_sees_puts_hits_removals_and_evictions() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 4)).unwrap();
    for i in 0..5 {
        store.put(&obj(i)).unwrap();
    }
    assert!(check(&store, 0) && check(&store, 0));
    assert!(store.remove(key(1)));
    let uses = |i| {
        store
            .policy
            .lock()
            .as_ref()
            .unwrap()
            .standing(&key(i))
            .map(|s| s.uses)
    };
    assert_eq!((uses(0), uses(1), uses(2)), (Some(3), None, Some(1)));
    // A hit served by a cache in front of the store.
    assert!(store.touch(key(3)) && !store.touch(key(1)));
    assert_eq!(uses(3), Some(2));
    // Write until objects 0..5 are evicted with their segments (0 by its second chance too).
    for i in 5..200 {
        store.put(&obj(i)).unwrap();
    }
    assert!(!store.contains(key(2)));
    assert_eq!(uses(2), None);
    assert_eq!(
        store.policy.lock().as_ref().unwrap().len(),
        store.len(),
        "the policy tracks exactly the indexed objects"
    );
    // Stored again after its eviction: the policy remembers the first time.
    store.put(&obj(2)).unwrap();
    assert_eq!(uses(2), Some(2));
    // Reopening recovers the index and tells the policy about every object.
    drop(store);
    let store = SegmentStore::open(cfg(d.path(), 4)).unwrap();
    assert_eq!(store.policy.lock().as_ref().unwrap().len(), store.len());
}

#[test]
fn readers_run_while_writers_write() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(SegmentStore::open(cfg(d.path(), 16)).unwrap());
    let written = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let store = store.clone();
            let written = written.clone();
            s.spawn(move || {
                for i in 0..150 {
                    store.put(&obj(w * 1000 + i)).unwrap();
                    written.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for _ in 0..2 {
            let store = store.clone();
            let written = written.clone();
            s.spawn(move || {
                let mut hits = 0;
                while written.load(Ordering::Relaxed) < 300 {
                    for i in (0..150).step_by(7) {
                        // Whatever comes back must be the right bytes (check asserts it).
                        hits += check(&store, i) as u32;
                    }
                }
                hits
            });
        }
    });
    // Every put is counted; re-appends on eviction (second chances) count as puts too.
    assert_eq!(store.stats().puts, 300 + store.detail().second_chances);
    assert_eq!(store.corrupt_count(VerifyError::PayloadChecksum), 0);
}

#[test]
fn bad_directories_get_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("not-there");
    let e = SegmentStore::open(cfg(&missing, 4)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(
        e.to_string().contains("does not exist") && e.to_string().contains("not-there"),
        "{e}"
    );
    let mut c = cfg(&missing, 4);
    c.create_dir = true;
    SegmentStore::open(c).unwrap();

    let file = d.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let e = SegmentStore::open(cfg(&file, 4)).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");

    // Not writable: a read-only directory for ordinary users; root ignores modes, so use sysfs.
    let ro = if unsafe { libc::geteuid() } == 0 {
        std::path::PathBuf::from("/sys")
    } else {
        let p = d.path().join("ro");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        p
    };
    let e = SegmentStore::open(cfg(&ro, 4)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("not writable"), "{e}");

    let mut c = cfg(d.path(), 4);
    c.capacity_bytes = c.segment_bytes;
    assert!(SegmentStore::open(c)
        .unwrap_err()
        .to_string()
        .contains("capacity_bytes"));
    let mut c = cfg(d.path(), 4);
    c.segment_bytes = 5000;
    assert!(SegmentStore::open(c)
        .unwrap_err()
        .to_string()
        .contains("segment_bytes"));
}

/// A disk that fills up after `budget` bytes of allocation: ENOSPC, as a real full disk.
struct FullDisk {
    budget: AtomicU64,
}

impl IoEngine for FullDisk {
    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        Psync.read_at(file, buf, offset)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        Psync.write_at(file, buf, offset)
    }
    fn allocate(&self, file: &File, len: u64) -> std::io::Result<()> {
        let left = self.budget.load(Ordering::Relaxed);
        if left < len {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.budget.store(left - len, Ordering::Relaxed);
        Psync.allocate(file, len)
    }
    fn name(&self) -> &'static str {
        "full-disk"
    }
}

#[test]
fn a_full_disk_fails_puts_clearly_and_keeps_serving_reads() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(d.path(), 8);
    let disk = Arc::new(FullDisk {
        budget: AtomicU64::new(2 * c.segment_bytes),
    });
    let (store, _) = SegmentStore::open_with_io(c, disk.clone()).unwrap();
    let mut stored = 0;
    let err = loop {
        match store.put(&obj(stored)) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "the disk never filled");
    };
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert!(err.to_string().contains("segment"), "{err}");
    assert!(stored >= 10);
    assert!(
        (0..stored).all(|i| check(&store, i)),
        "reads keep working on a full disk"
    );
    // Space comes back: puts work again.
    disk.budget.store(1 << 30, Ordering::Relaxed);
    store.put(&obj(1000)).unwrap();
    assert!(check(&store, 1000));
}

/// Writes object `i` into a reserved slot in parts of `part` bytes, in reverse order (parts
/// may go in any order), leaving out the part at `skip`.
fn write_parts(store: &SegmentStore, i: u64, part: usize, skip: Option<usize>) -> RecordSlot {
    let o = obj(i);
    let rec = o.record();
    let slot = store.reserve_record(rec.len()).unwrap();
    let starts: Vec<usize> = (0..rec.len()).step_by(part).collect();
    for &at in starts.iter().rev() {
        if Some(at) == skip {
            continue;
        }
        let end = (at + part).min(rec.len());
        let mut b = AlignedBuf::zeroed(end - at);
        b.copy_from_slice(&rec[at..end]);
        slot.write_part(at, &b).unwrap();
    }
    slot
}

#[test]
fn records_written_in_parts_exist_once_committed_and_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    store.put(&obj(1)).unwrap();
    let slot = write_parts(&store, 2, 8192, None);
    assert!(
        !store.contains(key(2)),
        "nothing finds a record before it is committed"
    );
    assert!(store.get(key(2)).unwrap().is_none());
    // Every part is on disk but the header page, written only by the commit: a record given
    // up now would leave no header for recovery to find.
    let on_disk = |slot: &RecordSlot| {
        use std::os::unix::fs::FileExt;
        let mut page = vec![0u8; ALIGN];
        std::fs::File::open(&slot.seg.path)
            .unwrap()
            .read_exact_at(&mut page, slot.off)
            .unwrap();
        page
    };
    assert!(
        on_disk(&slot).iter().all(|&b| b == 0),
        "no header before the commit"
    );
    store.commit_record(&slot, key(2)).unwrap();
    assert_eq!(
        on_disk(&slot),
        obj(2).record()[..ALIGN],
        "the header, after it"
    );
    assert!(check(&store, 2));
    // Committing again, or writing after the commit, is refused.
    assert!(store.commit_record(&slot, key(2)).is_err());
    assert!(slot.write_part(4096, &AlignedBuf::zeroed(4096)).is_err());
    store.put(&obj(3)).unwrap();
    drop(store);
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    assert!(check(&store, 1) && check(&store, 2) && check(&store, 3));
    assert_eq!(store.len(), 3);
}

#[test]
fn abandoned_or_incomplete_records_are_never_found_even_after_reopen() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    // Every part written, then abandoned (say its checksum failed on the way in).
    let abandoned = write_parts(&store, 1, 4096, None);
    store.abandon_record(&abandoned);
    // A part missing: the commit is refused and the record abandoned.
    let partial = write_parts(&store, 2, 4096, Some(8192));
    let e = store.commit_record(&partial, key(2)).unwrap_err();
    assert!(e.to_string().contains("were written"), "{e}");
    // Dropped without a word (a task that died): abandoned too, and the segment still seals.
    drop(write_parts(&store, 3, 4096, None));
    store.put(&obj(4)).unwrap();
    for i in 1..=3 {
        assert!(store.get(key(i)).unwrap().is_none(), "object {i} was found");
    }
    assert!(check(&store, 4));
    // Fill the segment so it closes: it must seal (no reservation left open).
    for i in 10..30 {
        store.put(&obj(i)).unwrap();
    }
    assert!(store.detail().segments >= 2);
    drop(store);
    let store = SegmentStore::open_with_io(cfg(d.path(), 8), Arc::new(Psync))
        .map(|(s, report)| {
            assert_eq!(
                report.unsealed, 1,
                "only the active segment is unsealed: {report:?}"
            );
            s
        })
        .unwrap();
    for i in 1..=3 {
        assert!(
            store.get(key(i)).unwrap().is_none(),
            "object {i} was recovered"
        );
    }
    assert!(check(&store, 4) && check(&store, 10) && check(&store, 29));
}

#[test]
fn record_parts_outside_the_record_or_unaligned_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = SegmentStore::open(cfg(d.path(), 8)).unwrap();
    let len = obj(1).record().len();
    let slot = store.reserve_record(len).unwrap();
    let page = AlignedBuf::zeroed(4096);
    for (at, bytes) in [(100, &page[..]), (len, &page[..]), (0, &page[..100])] {
        let e = slot.write_part(at, bytes).unwrap_err();
        assert!(e.to_string().contains("a record part"), "{e}");
    }
    assert!(store.reserve_record(1000).is_err(), "not page-aligned");
    assert!(store.reserve_record(0).is_err());
    assert!(
        store.reserve_record(1 << 30).is_err(),
        "larger than a segment"
    );
    store.abandon_record(&slot);
}
