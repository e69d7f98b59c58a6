//! The NVMe segment store: a log-structured block store in a directory.
//!
//! Records (`[header][payload][pad]`, see [`crate::block`]) are appended with aligned O_DIRECT
//! writes to preallocated segment files of a fixed size. An in-memory index maps keys to
//! `(segment, offset)`. Capacity is a hard bound on the number of segment files; when a new
//! segment is needed at the bound, the oldest segment is evicted whole, after re-appending
//! the records the eviction policy values (second chance, bounded to half a segment; see
//! [`SegmentStore`] for the rule). Every read verifies the record's checksum: a mismatch is a
//! miss, counted by reason, and the entry is dropped. On open, the store recovers its index
//! from the segment files (see `recover`).

mod evict;
mod file;
mod recover;
mod slot;

pub use slot::RecordSlot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::block::{BlockHeader, BlockObject, VerifyError};
use crate::buf::{AlignedBuf, ALIGN};
use crate::error::{Error, ErrorKind, Result};
use crate::key::BlockKey;
use crate::metrics::{Counter, StoreCounters, StoreStats};
use crate::policy::{EvictionPolicy, InsertInfo, PolicyKind};
use crate::tier::io::{IoEngine, IoMode};

use file::Segment;

/// When a put is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// When the write has reached the device (O_DIRECT): survives a crash of the process.
    #[default]
    Written,
    /// After `fdatasync`: also survives power loss on devices with a volatile cache.
    Synced,
}

/// Configuration of a [`SegmentStore`].
#[derive(Debug, Clone)]
pub struct SegmentStoreConfig {
    /// Directory of the segment files. Default: none (must be set).
    pub dir: PathBuf,
    /// Hard bound on the bytes of segment files. At least two segments. Default: `16 GiB`.
    pub capacity_bytes: u64,
    /// Size of each segment file; a multiple of 4 KiB, at least 64 KiB. Default: `64 MiB`.
    pub segment_bytes: u64,
    /// I/O engine. Default: `Auto` (io_uring, else psync).
    pub io: IoMode,
    /// Open files with O_DIRECT (bypassing the page cache) where the file system allows.
    /// Default: `true`.
    pub direct_io: bool,
    /// When a put is acknowledged. Default: `Written`.
    pub durability: Durability,
    /// Create the directory if it is missing. Default: `false` (a missing directory is an
    /// error, which catches a mistyped or unmounted path).
    pub create_dir: bool,
    /// Re-append valuable objects when their segment is evicted (see [`SegmentStore`]).
    /// Default: `true`.
    pub second_chance: bool,
    /// The policy that decides which objects get a second chance (see [`SegmentStore`]; with
    /// `Lru`, the objects read since they were written). Default: `HitDensity`.
    pub policy: PolicyKind,
}

impl SegmentStoreConfig {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SegmentStoreConfig {
            dir: dir.into(),
            capacity_bytes: 16 << 30,
            segment_bytes: 64 << 20,
            io: IoMode::Auto,
            direct_io: true,
            durability: Durability::Written,
            create_dir: false,
            second_chance: true,
            policy: PolicyKind::default(),
        }
    }

    /// Checks the values; the error names the bad field (see [`Error::bad_field`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |field, msg: String| Err(Error::bad_field("segment store", field, msg));
        if self.segment_bytes % ALIGN as u64 != 0 || self.segment_bytes < 16 * ALIGN as u64 {
            return bad(
                "segment_bytes",
                format!(
                    "{} bytes is not a multiple of 4 KiB of at least 64 KiB",
                    self.segment_bytes
                ),
            );
        }
        if self.capacity_bytes == 0 {
            return bad("capacity_bytes", "0; a pool needs room".into());
        }
        if self.capacity_bytes < 2 * self.segment_bytes {
            return bad(
                "capacity_bytes",
                format!(
                    "{} bytes holds fewer than two segments of {} bytes (`segment_bytes`)",
                    self.capacity_bytes, self.segment_bytes
                ),
            );
        }
        Ok(())
    }

    /// [`validate`](Self::validate), and each segment holds a record of `payload_len` bytes.
    pub fn validate_for(&self, payload_len: usize) -> Result<()> {
        self.validate()?;
        let rec = crate::block::record_len(payload_len) as u64;
        if self.segment_bytes < rec {
            return Err(Error::bad_field(
                "segment store",
                "segment_bytes",
                format!(
                    "{} bytes holds no {payload_len}-byte object ({rec} bytes with its header)",
                    self.segment_bytes
                ),
            ));
        }
        Ok(())
    }

    fn max_segments(&self) -> usize {
        (self.capacity_bytes / self.segment_bytes) as usize
    }
}

/// Where a record lives.
#[derive(Debug)]
struct Loc {
    seg: u64,
    off: u64,
    len: u32,
    /// Read since written: earns a second chance on eviction when the policy has no ranking.
    hot: AtomicBool,
}

struct Active {
    seg: Arc<Segment>,
    offset: u64,
}

/// Counters of a segment store.
#[derive(Default)]
struct Counters {
    store: StoreCounters,
    segments_evicted: Counter,
    second_chances: Counter,
    write_errors: Counter,
    torn_on_recovery: Counter,
}

/// Whether a record is appended by a client or re-appended by a second chance.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Put,
    SecondChance,
}

type Policy = Box<dyn EvictionPolicy<BlockKey>>;

/// The log-structured segment store. Thread-safe: many readers and writers at once.
///
/// Eviction is by whole segments, oldest first (a log cannot free a record in the middle), so
/// the eviction policy ([`SegmentStoreConfig::policy`]) does not pick victims: it sees every
/// put (an insert), every verified hit (an access), every removal and every record dropped with
/// its segment (an eviction, which hit density remembers), and decides which of the victim
/// segment's live records are re-appended. With hit density: those used more than once
/// (counting uses before an earlier eviction, remembered by the policy) whose learnt hit
/// density is at least the median of the victim's live records and above zero, highest density
/// first; a re-append takes log space that the victim's typical record would otherwise hold
/// a little longer, so a record earns it by being worth more than that. While the policy has
/// learnt nothing about the victim's records (every density 0), and with LRU, the rule is
/// the records read since they were written. Re-appends are bounded to half a segment per
/// eviction, so the log always advances and capacity stays a hard bound.
pub struct SegmentStore {
    cfg: SegmentStoreConfig,
    io: Arc<dyn IoEngine>,
    direct: bool,
    index: DashMap<BlockKey, Loc>,
    /// Built when the first record's size is known (the policy wants a capacity in records).
    /// Never locked while an index entry is held.
    policy: Mutex<Option<Policy>>,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    active: Mutex<Active>,
    next_id: AtomicU64,
    counters: Counters,
}

/// What [`SegmentStore::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Segments that were not sealed (written at the time of a crash) and were verified fully.
    pub unsealed: usize,
    /// Records indexed.
    pub records: usize,
    /// Torn or corrupt records discarded.
    pub discarded: usize,
    /// Files removed because their segment header was invalid (a crash while creating them).
    pub removed_files: usize,
}

impl SegmentStore {
    /// Opens (recovering) or creates a store in `cfg.dir`.
    pub fn open(cfg: SegmentStoreConfig) -> Result<Self> {
        Self::open_with_io(cfg.clone(), cfg.io.build()?).map(|(s, _)| s)
    }

    /// Like [`open`](Self::open) with an explicit I/O engine, returning what recovery found.
    pub fn open_with_io(
        cfg: SegmentStoreConfig,
        io: Arc<dyn IoEngine>,
    ) -> Result<(Self, RecoveryReport)> {
        cfg.validate()?;
        recover::check_dir(&cfg)?;
        let (found, report, corrupt) = recover::scan(&cfg, io.as_ref())?;
        let next = found.keys().next_back().map_or(1, |id| id + 1);
        let (seg, direct) = Segment::create(
            io.as_ref(),
            &cfg.dir,
            next,
            cfg.segment_bytes,
            cfg.direct_io,
        )?;
        if cfg.direct_io && !direct {
            tracing::warn!(dir = %cfg.dir.display(), "file system refuses O_DIRECT; using buffered I/O");
        }
        let mut segments = BTreeMap::new();
        let index = DashMap::new();
        for (id, (segment, records)) in found {
            segments.insert(id, segment.clone());
            for r in records {
                segment.keys.lock().push((r.key, r.off));
                segment
                    .live_bytes
                    .fetch_add(r.len as u64, Ordering::Relaxed);
                // Ids ascend, so a key in a newer segment replaces the older entry.
                if let Some(old) = index.insert(
                    r.key,
                    Loc {
                        seg: id,
                        off: r.off,
                        len: r.len,
                        hot: AtomicBool::new(false),
                    },
                ) {
                    if let Some(s) = segments.get(&old.seg) {
                        let s: &Arc<Segment> = s;
                        s.live_bytes.fetch_sub(old.len as u64, Ordering::Relaxed);
                    }
                }
            }
        }
        segments.insert(next, seg.clone());
        // Tell the policy about the recovered records, oldest segment first.
        let mut policy: Option<Policy> = None;
        for (id, s) in &segments {
            for (key, off) in s.keys.lock().iter() {
                let len = match index.get(key) {
                    Some(l) if l.seg == *id && l.off == *off => l.len,
                    _ => continue,
                };
                policy
                    .get_or_insert_with(|| build_policy(&cfg, len as u64))
                    .insert(*key, InsertInfo::default());
            }
        }
        let store = SegmentStore {
            io,
            direct,
            index,
            policy: Mutex::new(policy),
            segments: RwLock::new(segments),
            active: Mutex::new(Active {
                seg,
                offset: ALIGN as u64,
            }),
            next_id: AtomicU64::new(next + 1),
            counters: Counters::default(),
            cfg,
        };
        store.counters.torn_on_recovery.add(report.discarded as u64);
        for (reason, n) in corrupt {
            for _ in 0..n {
                store.counters.store.corrupt.record(reason);
            }
        }
        // A smaller capacity than last time: evict the oldest until within the bound.
        while store.segments.read().len() > store.cfg.max_segments() {
            match store.pick_victim(Some(next)) {
                Some(v) => store.drop_segment(v, false),
                None => break,
            }
        }
        tracing::info!(dir = %store.cfg.dir.display(), ?report, "segment store open");
        Ok((store, report))
    }

    /// The configuration in use.
    pub fn config(&self) -> &SegmentStoreConfig {
        &self.cfg
    }

    /// Name of the I/O engine in use, and whether files are opened with O_DIRECT.
    pub fn io_mode(&self) -> (&'static str, bool) {
        (self.io.name(), self.direct)
    }

    /// Objects indexed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every indexed key, a snapshot (writes meanwhile may or may not be in it).
    pub fn keys(&self) -> Vec<BlockKey> {
        self.index.iter().map(|e| *e.key()).collect()
    }

    /// True when `key` is indexed (not verified; no counters).
    pub fn contains(&self, key: BlockKey) -> bool {
        self.index.contains_key(&key)
    }

    /// Stores a sealed object. Returns when the write has completed per `durability`.
    /// An existing object of the same key is replaced (the old record becomes dead space).
    pub fn put(&self, obj: &BlockObject) -> Result<()> {
        self.append(obj.record(), obj.header().key(), Origin::Put)
    }

    /// Stores a complete record (header, payload, padding) from a page-aligned buffer, such as
    /// a host-arena slot, without copying it. The header is checked (not the payload: whoever
    /// sealed it computed the checksum, and every read verifies it).
    pub fn put_record(&self, record: &[u8]) -> Result<()> {
        let h = BlockHeader::decode(record).map_err(Error::from)?;
        if record.len() < h.record_len() || record.as_ptr() as usize % ALIGN != 0 {
            return Err(Error::invalid(
                "a record must be page-aligned and hold its whole payload",
            ));
        }
        self.append(&record[..h.record_len()], h.key(), Origin::Put)
    }

    /// The policy, built for records of `len` bytes if it is not yet.
    fn policy_for(&self, len: u64) -> MutexGuard<'_, Option<Policy>> {
        let mut p = self.policy.lock();
        if p.is_none() {
            *p = Some(build_policy(&self.cfg, len));
        }
        p
    }

    fn with_policy(&self, f: impl FnOnce(&mut Policy)) {
        if let Some(p) = self.policy.lock().as_mut() {
            f(p)
        }
    }

    fn check_len(&self, len: u64) -> Result<()> {
        if len > self.cfg.segment_bytes - ALIGN as u64 || len % ALIGN as u64 != 0 || len == 0 {
            return Err(Error::invalid(format!(
                "record of {len} bytes does not fit a {}-byte segment (or is not page-aligned); raise `segment_bytes`",
                self.cfg.segment_bytes
            )));
        }
        Ok(())
    }

    fn append(&self, record: &[u8], key: BlockKey, origin: Origin) -> Result<()> {
        let len = record.len() as u64;
        self.check_len(len)?;
        let (seg, off, victim) = self.reserve(len)?;
        let mut res = self.io.write_at(&seg.file, record, off);
        if res.is_ok() && self.cfg.durability == Durability::Synced {
            res = self.io.sync(&seg.file);
        }
        if res.is_err() {
            // Best effort: make sure recovery never takes a half-written record for a good one.
            let _ = self.io.write_at(&seg.file, &AlignedBuf::zeroed(ALIGN), off);
        } else {
            seg.keys.lock().push((key, off));
            seg.live_bytes.fetch_add(len, Ordering::Relaxed);
            // Indexed before the write is finished: once it is, the segment may be sealed and
            // evicted, and its eviction must find this entry to drop it.
            self.index_record(seg.id, off, len, key, origin);
        }
        self.finish_write(&seg);
        if let Err(e) = res {
            self.counters.write_errors.inc();
            return Err(
                Error::io("writing a record", e).with_context("segment", seg.path.display())
            );
        }
        if let Some(v) = victim {
            self.drop_segment(v, origin == Origin::Put && self.cfg.second_chance);
        }
        Ok(())
    }

    /// Points the index at a record now on disk.
    fn index_record(&self, seg: u64, off: u64, len: u64, key: BlockKey, origin: Origin) {
        let loc = Loc {
            seg,
            off,
            len: len as u32,
            hot: AtomicBool::new(false),
        };
        if let Some(old) = self.index.insert(key, loc) {
            if let Some(s) = self.segments.read().get(&old.seg) {
                s.live_bytes.fetch_sub(old.len as u64, Ordering::Relaxed);
            }
        }
        if origin == Origin::Put {
            if let Some(p) = self.policy_for(len).as_mut() {
                p.insert(key, InsertInfo::default());
            }
        }
        self.counters.store.puts.inc();
        self.counters.store.bytes_in.add(len);
    }

    /// Reserves `len` bytes in the active segment, rolling to a new one when it is full.
    fn reserve(&self, len: u64) -> Result<(Arc<Segment>, u64, Option<Arc<Segment>>)> {
        let mut active = self.active.lock();
        let mut victim = None;
        if active.offset + len > active.seg.size {
            let old = active.seg.clone();
            self.close_segment(&old, active.offset);
            if self.segments.read().len() >= self.cfg.max_segments() {
                victim = Some(self.pick_victim(None).ok_or_else(|| {
                    Error::no_space(
                        "segment store is full and every segment still has writes in flight; retry",
                    )
                    .with_context("dir", self.cfg.dir.display())
                })?);
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (seg, _) = match Segment::create(
                self.io.as_ref(),
                &self.cfg.dir,
                id,
                self.cfg.segment_bytes,
                self.cfg.direct_io,
            ) {
                Ok(s) => s,
                Err(e) => {
                    // Keep the old segment active (it is closed, so every put fails fast with
                    // this error until space appears); the victim's space is released anyway.
                    drop(active);
                    if let Some(v) = victim {
                        self.drop_segment(v, false);
                    }
                    return Err(e);
                }
            };
            self.segments.write().insert(id, seg.clone());
            *active = Active {
                seg,
                offset: ALIGN as u64,
            };
        }
        let off = active.offset;
        active.offset += len;
        let mut st = active.seg.state.lock();
        st.inflight += 1;
        st.end = active.offset;
        drop(st);
        Ok((active.seg.clone(), off, victim))
    }

    fn close_segment(&self, seg: &Arc<Segment>, end: u64) {
        let mut st = seg.state.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        st.end = end;
        if st.inflight == 0 {
            seg.seal(self.io.as_ref(), &mut st);
        }
    }

    fn finish_write(&self, seg: &Arc<Segment>) {
        seg.finish_write(self.io.as_ref());
    }

    fn verify(&self, record: &[u8], key: BlockKey) -> Result<BlockHeader, VerifyError> {
        crate::block::verify_record(record, Some(key), None)
    }

    /// Reads and verifies the object under `key` into `buf` (grown if needed). Returns its
    /// header, or `None` on a miss, including a record that failed verification (counted by
    /// reason and dropped from the index). The payload is `buf[HEADER_LEN..][..payload_len]`.
    pub fn get_into(&self, key: BlockKey, buf: &mut AlignedBuf) -> Result<Option<BlockHeader>> {
        // One index lookup sizes the buffer and locates the record: a writer indexing `key`
        // in between cannot make the buffer too small.
        let Some(at) = self.locate(key) else {
            self.counters.store.misses.inc();
            return Ok(None);
        };
        if buf.len() < at.2 {
            *buf = AlignedBuf::zeroed(at.2);
        }
        self.read_located(key, at, buf)
    }

    /// Where `key`'s record is (segment, offset, length), marking it used for the second chance.
    fn locate(&self, key: BlockKey) -> Option<(u64, u64, usize)> {
        self.index.get(&key).map(|l| {
            l.hot.store(true, Ordering::Relaxed);
            (l.seg, l.off, l.len as usize)
        })
    }

    /// The record length of `key` if indexed.
    pub fn record_len(&self, key: BlockKey) -> Option<usize> {
        self.index.get(&key).map(|l| l.len as usize)
    }

    /// Like [`get_into`](Self::get_into) into a caller's page-aligned buffer (a host-arena
    /// slot, say). A buffer too small for the record is a miss.
    pub fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>> {
        let Some(at) = self.locate(key) else {
            self.counters.store.misses.inc();
            return Ok(None);
        };
        self.read_located(key, at, buf)
    }

    fn read_located(
        &self,
        key: BlockKey,
        (seg_id, off, len): (u64, u64, usize),
        buf: &mut [u8],
    ) -> Result<Option<BlockHeader>> {
        let Some(seg) = self.segments.read().get(&seg_id).cloned() else {
            // Evicted between the index lookup and now.
            self.counters.store.misses.inc();
            return Ok(None);
        };
        if buf.len() < len || buf.as_ptr() as usize % ALIGN != 0 {
            self.counters.store.misses.inc();
            return Err(Error::invalid(format!(
                "read buffer of {} bytes (page-aligned: {}) for a {len}-byte record",
                buf.len(),
                buf.as_ptr() as usize % ALIGN == 0
            )));
        }
        if let Err(e) = self.io.read_at(&seg.file, &mut buf[..len], off) {
            self.counters.store.misses.inc();
            return Err(
                Error::io("reading a record", e).with_context("segment", seg.path.display())
            );
        }
        match self.verify(&buf[..len], key) {
            Ok(h) => {
                self.counters.store.hits.inc();
                self.counters.store.bytes_out.add(h.payload_len());
                self.with_policy(|p| p.access(key));
                Ok(Some(h))
            }
            Err(reason) => {
                self.counters.store.corrupt.record(reason);
                self.counters.store.misses.inc();
                if self
                    .index
                    .remove_if(&key, |_, l| l.seg == seg_id && l.off == off)
                    .is_some()
                {
                    self.with_policy(|p| p.remove(key));
                }
                tracing::warn!(%key, segment = %seg.path.display(), offset = off, reason = reason.as_str(), "dropping corrupt record");
                Ok(None)
            }
        }
    }

    /// Reads and verifies the object under `key` into a new buffer; `None` on a miss.
    pub fn get(&self, key: BlockKey) -> Result<Option<BlockObject>> {
        let mut buf = AlignedBuf::zeroed(0);
        Ok(match self.get_into(key, &mut buf)? {
            Some(_) => Some(BlockObject::from_record(buf, Some(key), None).map_err(Error::from)?),
            None => None,
        })
    }

    /// Marks `key` as used without reading it: for a hit served by a cache in front of the
    /// store, so the eviction policy (and the second chance) count it. False when absent.
    pub fn touch(&self, key: BlockKey) -> bool {
        let found = self
            .index
            .get(&key)
            .map(|l| l.hot.store(true, Ordering::Relaxed))
            .is_some();
        if found {
            self.with_policy(|p| p.access(key));
        }
        found
    }

    /// Removes `key` from the index (its space is reclaimed when its segment is evicted).
    pub fn remove(&self, key: BlockKey) -> bool {
        match self.index.remove(&key) {
            Some((_, l)) => {
                if let Some(s) = self.segments.read().get(&l.seg) {
                    s.live_bytes.fetch_sub(l.len as u64, Ordering::Relaxed);
                }
                self.with_policy(|p| p.remove(key));
                true
            }
            None => false,
        }
    }

    /// Makes every acknowledged write durable against power loss: `fdatasync` of every
    /// segment file (cheap for files with nothing unsynced). Not needed with
    /// `Durability::Synced`, where each put syncs before it returns.
    pub fn flush(&self) -> Result<()> {
        let segs: Vec<Arc<Segment>> = self.segments.read().values().cloned().collect();
        for seg in segs {
            self.io.sync(&seg.file).map_err(|e| {
                Error::io("syncing a segment", e).with_context("segment", seg.path.display())
            })?;
        }
        Ok(())
    }

    /// Counter snapshot.
    pub fn stats(&self) -> StoreStats {
        let used = self.segments.read().values().map(|s| s.size).sum();
        let objects = self.index.len() as u64;
        self.counters
            .store
            .snapshot(objects, used, self.cfg.capacity_bytes)
    }

    /// Store-specific counters beyond [`StoreStats`].
    pub fn detail(&self) -> SegmentStats {
        let c = &self.counters;
        let segs = self.segments.read();
        SegmentStats {
            segments: segs.len() as u64,
            segments_evicted: c.segments_evicted.get(),
            second_chances: c.second_chances.get(),
            write_errors: c.write_errors.get(),
            torn_on_recovery: c.torn_on_recovery.get(),
            live_bytes: segs
                .values()
                .map(|s| s.live_bytes.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// Failures of `reason` counted so far.
    pub fn corrupt_count(&self, reason: VerifyError) -> u64 {
        self.counters.store.corrupt.get(reason)
    }
}

/// Segment-store counters beyond [`StoreStats`].
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct SegmentStats {
    /// Segment files in use.
    pub segments: u64,
    /// Segments evicted whole.
    pub segments_evicted: u64,
    /// Objects re-appended when their segment was evicted (the policy valued them).
    pub second_chances: u64,
    /// Puts that failed with an I/O error (e.g. disk full).
    pub write_errors: u64,
    /// Torn or corrupt records discarded when the store was opened.
    pub torn_on_recovery: u64,
    /// Bytes of records the index points to.
    pub live_bytes: u64,
}

impl std::fmt::Debug for SegmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentStore")
            .field("dir", &self.cfg.dir)
            .field("objects", &self.len())
            .finish()
    }
}

/// The policy for a store of `cfg` whose records are `record_len` bytes.
fn build_policy(cfg: &SegmentStoreConfig, record_len: u64) -> Policy {
    let records = (cfg.capacity_bytes / record_len.max(ALIGN as u64)).max(1);
    cfg.policy
        .build(usize::try_from(records).unwrap_or(usize::MAX))
}

/// True when an error means the store cannot take writes right now (full disk or capacity).
pub fn is_no_space(e: &Error) -> bool {
    e.kind() == ErrorKind::NoSpace
}

#[cfg(test)]
mod tests;
