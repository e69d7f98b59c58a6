//! The host-memory tier: a fixed-capacity arena of equal slots in a `memfd_create` mapping (so
//! the agent can hand the same memory to engine processes), an index, eviction by a policy
//! ([`PolicyKind`]: hit density by default, see [`crate::policy::HitDensity`]), and pins.
//!
//! A slot holds one record (`[header][payload][pad]`, see [`crate::block`]), so a slot can be
//! written to disk or the wire as it is. Writers get an exclusive [`WriteSlot`] from a free slot;
//! readers get a pinned [`ReadSlot`]; pinned slots are never evicted or reused.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::block::{record_len, BlockHeader, HEADER_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::key::BlockKey;
use crate::metrics::{Counter, StoreStats};
use crate::policy::{EvictionPolicy, InsertInfo};

mod config;
pub use config::HostArenaConfig;

/// Index of a slot in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// Outcome of committing a written slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The object is now indexed.
    Stored(SlotId),
    /// The key was already present; the new slot was released (dedup).
    AlreadyPresent,
}

/// The memfd-backed slot arena. Thread-safe.
pub struct HostArena {
    fd: OwnedFd,
    base: *mut u8,
    map_len: usize,
    slot_len: usize,
    payload_len: usize,
    pins: Box<[AtomicU32]>,
    /// Per slot: the layout digest of its object (readable without touching the header).
    digests: Box<[AtomicU64]>,
    /// Per slot: whether the header's checksum has been computed (see `commit_slot_unsealed`).
    sealed: Box<[AtomicBool]>,
    index: DashMap<BlockKey, SlotId>,
    /// Eviction order; the index is the truth, the policy only ranks keys.
    policy: Mutex<Box<dyn EvictionPolicy<BlockKey>>>,
    free: Mutex<Vec<SlotId>>,
    hits: Counter,
    misses: Counter,
    puts: Counter,
    evictions: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

// SAFETY: the mapping is owned by the arena; slots are handed out either exclusively (WriteSlot,
// taken off the free list) or shared and pinned (ReadSlot), never both at once.
unsafe impl Send for HostArena {}
// SAFETY: as above; all shared state is behind atomics, DashMap or mutexes.
unsafe impl Sync for HostArena {}

impl HostArena {
    /// Creates the memfd, sizes it and maps it.
    pub fn new(cfg: &HostArenaConfig) -> Result<Self> {
        cfg.validate()?;
        let slot_len = record_len(cfg.payload_len);
        let nslots = (cfg.capacity_bytes / slot_len as u64) as u32;
        let map_len = nslots as usize * slot_len;
        let name = std::ffi::CString::new(cfg.name.as_str())
            .map_err(|_| Error::invalid("host arena `name` must not contain NUL"))?;
        // SAFETY: plain syscalls on a fresh fd; results are checked.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(Error::io(
                "memfd_create for the host arena",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a valid, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), map_len as libc::off_t) } != 0 {
            return Err(Error::io(
                "sizing the host arena memfd",
                std::io::Error::last_os_error(),
            )
            .with_context("bytes", map_len));
        }
        // Every engine holds this descriptor: sealed, none of them can shrink the arena (which
        // would SIGBUS the agent and every other engine) or grow it, and the seals are final.
        // SAFETY: valid fd; F_ADD_SEALS takes an int of seal flags.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(Error::io(
                "sealing the host arena memfd against resizing",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: mapping a file we own of exactly map_len bytes.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(
                Error::io("mapping the host arena", std::io::Error::last_os_error())
                    .with_context("bytes", map_len),
            );
        }
        Ok(HostArena {
            fd,
            base: base as *mut u8,
            map_len,
            slot_len,
            payload_len: cfg.payload_len,
            pins: (0..nslots).map(|_| AtomicU32::new(0)).collect(),
            digests: (0..nslots).map(|_| AtomicU64::new(0)).collect(),
            sealed: (0..nslots).map(|_| AtomicBool::new(false)).collect(),
            index: DashMap::new(),
            policy: Mutex::new(cfg.policy.build(nslots as usize)),
            free: Mutex::new((0..nslots).rev().map(SlotId).collect()),
            hits: Counter::default(),
            misses: Counter::default(),
            puts: Counter::default(),
            evictions: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
        })
    }

    /// The memfd, to share the arena with another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes of one slot (a record: header + payload, page-aligned).
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Payload bytes per object.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.pins.len() as u32
    }

    /// Byte offset of a slot within the memfd (what another process maps).
    pub fn slot_offset(&self, slot: SlotId) -> u64 {
        slot.0 as u64 * self.slot_len as u64
    }

    /// Objects currently indexed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Marks `key` as used for eviction (no pin, no counters); false when absent.
    pub fn touch(&self, key: BlockKey) -> bool {
        if !self.index.contains_key(&key) {
            return false;
        }
        self.policy.lock().access(key);
        true
    }

    /// True when `key` is indexed (no pin, no policy update, no hit/miss counted).
    pub fn contains(&self, key: BlockKey) -> bool {
        self.index.contains_key(&key)
    }

    fn slot_ptr(&self, slot: SlotId) -> *mut u8 {
        debug_assert!((slot.0 as usize) < self.pins.len());
        // SAFETY: slot < nslots, so the offset is within the mapping.
        unsafe { self.base.add(slot.0 as usize * self.slot_len) }
    }

    /// Takes a free slot for writing, evicting an unpinned object (the policy's choice) if none
    /// is free. Fails with `NoSpace` only when every slot is pinned or being written.
    pub fn reserve(&self) -> Result<WriteSlot<'_>> {
        Ok(WriteSlot {
            arena: self,
            slot: Some(self.reserve_slot()?),
        })
    }

    fn evict_one(&self) -> Result<SlotId> {
        let mut policy = self.policy.lock();
        let unpinned = |k: &BlockKey| {
            self.index
                .get(k)
                .is_some_and(|s| self.pins[s.0 as usize].load(Ordering::Acquire) == 0)
        };
        // The policy picks among unpinned keys; a reader may pin the victim between the pick and
        // the removal (readers pin under the index shard lock), so retry a few times.
        for _ in 0..8 {
            let Some(key) = policy.evict(&mut |k| unpinned(k)) else {
                break;
            };
            match self.index.remove_if(&key, |_, s| {
                self.pins[s.0 as usize].load(Ordering::Acquire) == 0
            }) {
                Some((_, slot)) => {
                    self.evictions.inc();
                    return Ok(slot);
                }
                None if self.index.contains_key(&key) => policy.insert(key, InsertInfo::default()),
                None => {}
            }
        }
        Err(Error::no_space(
            "host arena is full and every slot is pinned by a reader or writer; retry, or raise `capacity_bytes`",
        )
        .with_context("slots", self.slots()))
    }

    /// Takes a free slot for a writer outside this process (the agent leases it to an engine),
    /// evicting if needed. The caller owns it until [`commit_slot`](Self::commit_slot) or
    /// [`abandon_slot`](Self::abandon_slot).
    pub fn reserve_slot(&self) -> Result<SlotId> {
        let free = self.free.lock().pop();
        match free {
            Some(s) => Ok(s),
            None => self.evict_one(),
        }
    }

    /// Returns a reserved, uncommitted slot to the free list.
    pub fn abandon_slot(&self, slot: SlotId) {
        self.free.lock().push(slot);
    }

    /// The bytes of a slot (a whole record: header, payload, padding).
    ///
    /// # Safety
    /// The caller must own the slot's reservation (from [`reserve_slot`](Self::reserve_slot),
    /// not yet committed or abandoned) and must not hold another reference to its bytes.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot_bytes_mut(&self, slot: SlotId) -> &mut [u8] {
        // SAFETY: in bounds; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.slot_ptr(slot), self.slot_len) }
    }

    /// Seals a reserved slot's header over its payload and indexes it under `key`; the slot
    /// is released instead when `key` is already present.
    pub fn commit_slot(
        &self,
        slot: SlotId,
        key: BlockKey,
        layout_digest: u64,
        info: InsertInfo<BlockKey>,
    ) -> Commit {
        self.write_header(slot, key, layout_digest, true);
        self.index_slot(slot, key, layout_digest, true, info)
    }

    /// Indexes a reserved slot under `key` without computing its payload checksum yet (the
    /// header carries key and layout, checksum 0), so a save costs the engine no hashing.
    /// Whoever sends the record out of memory calls [`seal`](Self::seal) first; objects that
    /// never leave memory are never hashed.
    pub fn commit_slot_unsealed(
        &self,
        slot: SlotId,
        key: BlockKey,
        layout_digest: u64,
        info: InsertInfo<BlockKey>,
    ) -> Commit {
        self.write_header(slot, key, layout_digest, false);
        self.index_slot(slot, key, layout_digest, false, info)
    }

    fn write_header(&self, slot: SlotId, key: BlockKey, layout_digest: u64, checksum: bool) {
        let p = self.slot_ptr(slot);
        // SAFETY: the caller owns the slot (reserved, or pinned by the only sealer); header and
        // payload are disjoint parts of it.
        let payload = unsafe { std::slice::from_raw_parts(p.add(HEADER_LEN), self.payload_len) };
        let h = if checksum {
            BlockHeader::new(key, layout_digest, payload, 0)
        } else {
            BlockHeader::with_checksum(key, layout_digest, payload.len() as u64, 0, 0)
        };
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(h.as_bytes().as_ptr(), p, HEADER_LEN) };
    }

    /// Computes the payload checksum of a slot committed unsealed and writes the final header.
    /// The slot must be pinned by the caller, and only one thread may seal (the agent's
    /// write-behind): nothing else reads an unsealed header.
    pub fn seal(&self, slot: SlotId, key: BlockKey) {
        if self.sealed[slot.0 as usize].load(Ordering::Acquire) {
            return;
        }
        self.write_header(slot, key, self.slot_digest(slot), true);
        self.sealed[slot.0 as usize].store(true, Ordering::Release);
    }

    /// Whether a slot's header checksum is computed.
    pub fn is_sealed(&self, slot: SlotId) -> bool {
        self.sealed[slot.0 as usize].load(Ordering::Acquire)
    }

    /// The layout digest of the object in a (pinned) slot.
    pub fn slot_digest(&self, slot: SlotId) -> u64 {
        self.digests[slot.0 as usize].load(Ordering::Acquire)
    }

    /// Indexes a reserved slot whose record (header included) is already complete and verified,
    /// e.g. read through from disk.
    pub fn commit_record(&self, slot: SlotId, key: BlockKey, info: InsertInfo<BlockKey>) -> Commit {
        // SAFETY: the caller owns the reservation and the record is complete.
        let digest = BlockHeader::decode(unsafe {
            std::slice::from_raw_parts(self.slot_ptr(slot), HEADER_LEN)
        })
        .map(|h| h.layout_digest())
        .unwrap_or(0);
        self.index_slot(slot, key, digest, true, info)
    }

    fn index_slot(
        &self,
        slot: SlotId,
        key: BlockKey,
        digest: u64,
        sealed: bool,
        info: InsertInfo<BlockKey>,
    ) -> Commit {
        // Published before the index makes the slot visible.
        self.digests[slot.0 as usize].store(digest, Ordering::Release);
        self.sealed[slot.0 as usize].store(sealed, Ordering::Release);
        let mut policy = self.policy.lock();
        match self.index.entry(key) {
            dashmap::Entry::Occupied(entry) => {
                drop(entry);
                drop(policy);
                self.free.lock().push(slot);
                Commit::AlreadyPresent
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(slot);
                policy.insert(key, info);
                self.puts.inc();
                self.bytes_in.add(self.payload_len as u64);
                Commit::Stored(slot)
            }
        }
    }

    /// Pins the slot of `key` (no eviction until [`unpin`](Self::unpin)) and marks it used.
    pub fn pin(&self, key: BlockKey) -> Option<SlotId> {
        self.get(key).map(|r| {
            let slot = r.slot;
            std::mem::forget(r);
            slot
        })
    }

    /// Pins a reserved slot before it is committed, so that from the moment it is indexed it
    /// cannot be evicted (the agent holds blocks not yet written behind to the pool this way).
    /// Released with [`unpin`](Self::unpin), also when the commit finds the key present.
    pub fn hold(&self, slot: SlotId) {
        self.pins[slot.0 as usize].fetch_add(1, Ordering::AcqRel);
    }

    /// Releases one pin of a slot.
    pub fn unpin(&self, slot: SlotId) {
        self.pins[slot.0 as usize].fetch_sub(1, Ordering::AcqRel);
    }

    /// Pins and returns the object stored under `key`, marking it recently used.
    pub fn get(&self, key: BlockKey) -> Option<ReadSlot<'_>> {
        let slot = {
            let entry = self.index.get(&key)?;
            let slot = *entry;
            self.pins[slot.0 as usize].fetch_add(1, Ordering::AcqRel);
            slot
        };
        self.policy.lock().access(key);
        self.hits.inc();
        self.bytes_out.add(self.payload_len as u64);
        Some(ReadSlot { arena: self, slot })
    }

    /// Like [`get`](Self::get) but counts a miss when absent.
    pub fn lookup(&self, key: BlockKey) -> Option<ReadSlot<'_>> {
        let r = self.get(key);
        if r.is_none() {
            self.misses.inc();
        }
        r
    }

    /// Removes `key` unless a reader has it pinned. Returns whether it was removed.
    pub fn remove(&self, key: BlockKey) -> bool {
        let mut policy = self.policy.lock();
        match self.index.remove_if(&key, |_, s| {
            self.pins[s.0 as usize].load(Ordering::Acquire) == 0
        }) {
            Some((_, slot)) => {
                policy.remove(key);
                self.free.lock().push(slot);
                true
            }
            None => false,
        }
    }

    /// Counter snapshot.
    pub fn stats(&self) -> StoreStats {
        let objects = self.index.len() as u64;
        StoreStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            puts: self.puts.get(),
            evictions: self.evictions.get(),
            corrupt: Vec::new(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            objects,
            used_bytes: objects * self.slot_len as u64,
            capacity_bytes: self.map_len as u64,
        }
    }

    /// Slots currently pinned by readers.
    pub fn pinned(&self) -> usize {
        self.pins
            .iter()
            .filter(|p| p.load(Ordering::Relaxed) > 0)
            .count()
    }
}

impl Drop for HostArena {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; all slot borrows have ended (they borrow &self).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

/// An exclusive, not yet indexed slot. Dropping it without [`commit`](Self::commit) frees it.
pub struct WriteSlot<'a> {
    arena: &'a HostArena,
    slot: Option<SlotId>,
}

impl WriteSlot<'_> {
    /// The slot's id.
    pub fn id(&self) -> SlotId {
        self.slot.expect("slot present until commit")
    }

    /// The payload area to fill.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let p = self.arena.slot_ptr(self.id());
        // SAFETY: the slot is exclusively ours (taken off the free list, not indexed).
        unsafe { std::slice::from_raw_parts_mut(p.add(HEADER_LEN), self.arena.payload_len) }
    }

    /// Seals the header (checksumming the payload) and indexes the object under `key`. If
    /// `key` is already present the slot is released and `AlreadyPresent` returned.
    pub fn commit(self, key: BlockKey, layout_digest: u64) -> Commit {
        self.commit_with(key, layout_digest, InsertInfo::default())
    }

    /// Like [`commit`](Self::commit), telling the eviction policy the block's parent in its
    /// prefix chain.
    pub fn commit_with(
        mut self,
        key: BlockKey,
        layout_digest: u64,
        info: InsertInfo<BlockKey>,
    ) -> Commit {
        let slot = self.slot.take().expect("slot present until commit");
        self.arena.commit_slot(slot, key, layout_digest, info)
    }
}

impl Drop for WriteSlot<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.arena.abandon_slot(slot);
        }
    }
}

/// A pinned, indexed slot; unpinned on drop.
pub struct ReadSlot<'a> {
    arena: &'a HostArena,
    slot: SlotId,
}

impl ReadSlot<'_> {
    /// The slot's id.
    pub fn id(&self) -> SlotId {
        self.slot
    }

    /// The whole record (header, payload, padding), e.g. to write it to disk unchanged.
    pub fn record(&self) -> &[u8] {
        // SAFETY: the slot is pinned: not evicted, not reused, only read while pinned.
        unsafe { std::slice::from_raw_parts(self.arena.slot_ptr(self.slot), self.arena.slot_len) }
    }

    /// The header.
    pub fn header(&self) -> BlockHeader {
        bytemuck::pod_read_unaligned(&self.record()[..HEADER_LEN])
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.record()[HEADER_LEN..HEADER_LEN + self.arena.payload_len]
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        self.arena.unpin(self.slot);
    }
}

/// Puts a copy of `payload` under `key` (for callers that do not write in place).
pub fn put_copy(
    arena: &HostArena,
    key: BlockKey,
    layout_digest: u64,
    payload: &[u8],
) -> Result<Commit> {
    if payload.len() != arena.payload_len {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "payload is {} bytes; this arena stores {}-byte objects",
                payload.len(),
                arena.payload_len
            ),
        ));
    }
    // Dedup before taking a slot: reserving could evict another object for nothing.
    if arena.contains(key) {
        return Ok(Commit::AlreadyPresent);
    }
    let mut w = arena.reserve()?;
    w.payload_mut().copy_from_slice(payload);
    Ok(w.commit(key, layout_digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyKind;
    use std::sync::Arc;

    fn arena_with(slots: u64, payload: usize, policy: PolicyKind) -> HostArena {
        HostArena::new(&HostArenaConfig {
            capacity_bytes: slots * record_len(payload) as u64,
            payload_len: payload,
            name: "test".into(),
            policy,
        })
        .unwrap()
    }

    /// An arena with the default policy.
    fn arena(slots: u64, payload: usize) -> HostArena {
        arena_with(slots, payload, PolicyKind::default())
    }

    fn k(i: u128) -> BlockKey {
        BlockKey::from_u128(i)
    }

    #[test]
    fn no_holder_of_the_descriptor_can_resize_the_arena() {
        let a = arena(4, 1000);
        let len = a.slots() as i64 * a.slot_len() as i64;
        for to in [0, len / 2, len * 2] {
            // SAFETY: a valid descriptor; ftruncate only reports the seal.
            let r = unsafe { libc::ftruncate(a.fd().as_raw_fd(), to) };
            assert_eq!(
                r, -1,
                "ftruncate to {to} bytes of a {len}-byte arena went through"
            );
        }
    }

    #[test]
    fn put_get_and_lru_eviction() {
        let a = arena_with(3, 1000, PolicyKind::Lru);
        for i in 0..3u8 {
            assert!(matches!(
                put_copy(&a, k(i as u128), 9, &[i; 1000]).unwrap(),
                Commit::Stored(_)
            ));
        }
        assert_eq!(
            put_copy(&a, k(1), 9, &[1; 1000]).unwrap(),
            Commit::AlreadyPresent
        );
        // Touch 0 so that 1 is the least recently used.
        assert_eq!(a.get(k(0)).unwrap().payload(), &[0u8; 1000][..]);
        put_copy(&a, k(3), 9, &[3; 1000]).unwrap();
        assert!(!a.contains(k(1)));
        assert!(a.contains(k(0)) && a.contains(k(2)) && a.contains(k(3)));
        let r = a.get(k(3)).unwrap();
        let h = BlockHeader::decode(r.record()).unwrap();
        assert_eq!(h.key(), k(3));
        assert!(h.verify_payload(r.payload()).is_ok());
        assert_eq!(a.stats().evictions, 1);
        assert!(a.lookup(k(1)).is_none());
        assert_eq!(a.stats().misses, 1);
    }

    #[test]
    fn the_default_policy_evicts_chain_tails_first() {
        let a = arena(3, 100);
        let put = |key: u128, parent: Option<u128>| {
            let mut w = a.reserve().unwrap();
            w.payload_mut().fill(key as u8);
            w.commit_with(
                k(key),
                0,
                InsertInfo {
                    parent: parent.map(k),
                },
            )
        };
        put(1, None);
        put(2, Some(1));
        put(3, Some(2));
        // Full: the chain 1-2-3 loses its tail, not its head (the oldest).
        put(10, None);
        assert!(a.contains(k(1)) && a.contains(k(2)) && !a.contains(k(3)));
        put(11, None);
        assert!(a.contains(k(1)) && !a.contains(k(2)));
        put(12, None);
        assert!(!a.contains(k(1)) && a.contains(k(10)) && a.contains(k(11)));
        assert_eq!(a.stats().evictions, 3);
    }

    #[test]
    fn pinned_slots_are_never_evicted() {
        let a = arena(2, 100);
        put_copy(&a, k(1), 0, &[1; 100]).unwrap();
        put_copy(&a, k(2), 0, &[2; 100]).unwrap();
        let p1 = a.get(k(1)).unwrap();
        let p2 = a.get(k(2)).unwrap();
        let e = a.reserve().err().expect("all pinned: no space");
        assert_eq!(e.kind(), ErrorKind::NoSpace);
        assert!(!a.remove(k(1)), "a pinned object cannot be removed");
        drop(p2);
        put_copy(&a, k(3), 0, &[3; 100]).unwrap();
        assert!(!a.contains(k(2)));
        assert_eq!(p1.payload(), &[1u8; 100][..]);
        drop(p1);
        assert_eq!(a.pinned(), 0);
    }

    #[test]
    fn abandoned_writes_free_their_slot() {
        let a = arena(1, 100);
        {
            let mut w = a.reserve().unwrap();
            w.payload_mut().fill(7);
        }
        put_copy(&a, k(1), 0, &[1; 100]).unwrap();
        assert_eq!(a.stats().evictions, 0);
        assert!(put_copy(&a, k(1), 0, &[1; 99]).is_err());
    }

    #[test]
    fn memfd_is_shareable() {
        let a = arena(2, 100);
        put_copy(&a, k(5), 0, &[5; 100]).unwrap();
        let slot = a.get(k(5)).unwrap().id();
        // Read the same bytes through the fd, as another process would after SCM_RIGHTS.
        let mut buf = vec![0u8; 100];
        let n = unsafe {
            libc::pread(
                a.fd().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                100,
                (a.slot_offset(slot) + HEADER_LEN as u64) as i64,
            )
        };
        assert_eq!(n, 100);
        assert_eq!(buf, vec![5u8; 100]);
    }

    #[test]
    fn concurrent_readers_and_writers_see_whole_objects() {
        let a = Arc::new(arena(16, 4096));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let key = (i % 40) as u128;
                        let fill = (key as u8).wrapping_mul(3);
                        if (i + t) % 2 == 0 {
                            let _ = put_copy(&a, k(key), 0, &[fill; 4096]);
                        } else if let Some(r) = a.get(k(key)) {
                            assert!(
                                r.payload().iter().all(|&b| b == fill),
                                "torn read of key {key}"
                            );
                            assert_eq!(r.header().key(), k(key));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(a.pinned(), 0);
        assert!(a.len() <= 16);
    }
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn unsealed_commits_are_sealed_before_leaving_memory() {
        let a = HostArena::new(&HostArenaConfig {
            capacity_bytes: 4 * record_len(1000) as u64,
            payload_len: 1000,
            ..Default::default()
        })
        .unwrap();
        let key = BlockKey::from_u128(77);
        let slot = a.reserve_slot().unwrap();
        unsafe { a.slot_bytes_mut(slot)[HEADER_LEN..HEADER_LEN + 1000].fill(9) };
        assert_eq!(
            a.commit_slot_unsealed(slot, key, 0xD1, InsertInfo::default()),
            Commit::Stored(slot)
        );
        assert_eq!(a.slot_digest(slot), 0xD1);
        assert!(!a.is_sealed(slot));
        let r = a.get(key).unwrap();
        let h = BlockHeader::decode(r.record()).unwrap();
        assert_eq!((h.key(), h.layout_digest()), (key, 0xD1));
        assert!(h.verify_payload(r.payload()).is_err(), "no checksum yet");
        a.seal(r.id(), key);
        assert!(a.is_sealed(r.id()));
        let h = BlockHeader::decode(r.record()).unwrap();
        assert!(h.verify_payload(r.payload()).is_ok());
        assert_eq!(h.key(), key);
    }
}
