//! Records written in parts (streamed puts): a reserved extent whose header page is written
//! last, at the commit.

use super::*;

/// The extent of one record being written in parts: see [`SegmentStore::reserve_record`].
/// Its first page (the record header) is held in memory and written last, by
/// [`SegmentStore::commit_record`], once every other byte is on disk: a record given up at
/// any point never has a header on disk for recovery to find.
pub struct RecordSlot {
    pub(super) seg: Arc<Segment>,
    pub(super) off: u64,
    pub(super) len: usize,
    pub(super) io: Arc<dyn IoEngine>,
    /// The record's first page, once the part holding it arrived.
    pub(super) head: parking_lot::Mutex<Option<AlignedBuf>>,
    /// Bytes written by successful parts.
    pub(super) written: AtomicU64,
    pub(super) finished: AtomicBool,
    pub(super) failed: AtomicBool,
}

impl RecordSlot {
    /// Writes `bytes` (a page-aligned buffer of whole pages) at byte `at` (page-aligned) of
    /// the record. Parts may go from any thread, in any order; a record is committed once
    /// every byte was written once. The record's first page is kept, not written (see
    /// [`RecordSlot`]).
    pub fn write_part(&self, at: usize, bytes: &[u8]) -> std::io::Result<()> {
        if self.finished.load(Ordering::Relaxed) {
            return Err(std::io::Error::other(
                "this record was already committed or abandoned",
            ));
        }
        if at % ALIGN != 0
            || bytes.len() % ALIGN != 0
            || bytes.as_ptr() as usize % ALIGN != 0
            || at + bytes.len() > self.len
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a record part is whole, page-aligned pages inside the record: {} bytes at {at} of a {}-byte record",
                    bytes.len(),
                    self.len
                ),
            ));
        }
        let (at, bytes) = if at == 0 {
            let mut head = AlignedBuf::zeroed(ALIGN);
            head.copy_from_slice(&bytes[..ALIGN]);
            *self.head.lock() = Some(head);
            self.written.fetch_add(ALIGN as u64, Ordering::Relaxed);
            (ALIGN, &bytes[ALIGN..])
        } else {
            (at, bytes)
        };
        if bytes.is_empty() {
            return Ok(());
        }
        match self
            .io
            .write_at(&self.seg.file, bytes, self.off + at as u64)
        {
            Ok(()) => {
                self.written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

impl RecordSlot {
    /// Gives the record up unless it is finished: zeroes its first page (best effort, even if
    /// no part reported success: a failed write may have left part of a header) so recovery
    /// never finds a header there, and ends the reservation. True when this ended it.
    pub(super) fn abandon(&self) -> bool {
        if self.finished.load(Ordering::Relaxed) {
            return false;
        }
        let _ = self
            .io
            .write_at(&self.seg.file, &AlignedBuf::zeroed(ALIGN), self.off);
        self.finish()
    }

    /// Ends the reservation once (true the first time).
    pub(super) fn finish(&self) -> bool {
        let first = !self.finished.swap(true, Ordering::Relaxed);
        if first {
            self.seg.finish_write(self.io.as_ref());
        }
        first
    }
}

impl Drop for RecordSlot {
    /// A slot neither committed nor abandoned is abandoned (one page write: the abandon paths
    /// do this themselves, off any async thread).
    fn drop(&mut self) {
        self.abandon();
    }
}

impl SegmentStore {
    /// Reserves the extent of one record of `len` bytes (page-aligned), to be written in parts
    /// ([`RecordSlot::write_part`], from any thread, in any order) while its bytes arrive (a
    /// pool server streams a put from the socket to the disk this way), then committed with
    /// [`commit_record`](Self::commit_record) or given up with
    /// [`abandon_record`](Self::abandon_record). Nothing finds the record before it is
    /// committed. Dropping the slot without either abandons it.
    pub fn reserve_record(&self, len: usize) -> Result<RecordSlot> {
        self.check_len(len as u64)?;
        let (seg, off, victim) = self.reserve(len as u64)?;
        let slot = RecordSlot {
            seg,
            off,
            len,
            io: self.io.clone(),
            head: parking_lot::Mutex::new(None),
            written: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        if let Some(v) = victim {
            self.drop_segment(v, self.cfg.second_chance);
        }
        Ok(slot)
    }

    /// Makes a reserved record findable under `key`, once every byte of it has been written
    /// (each byte once) and the caller has verified its payload (the store checks the header
    /// on every read, and the payload checksum on every read too). Syncs per `durability`.
    pub fn commit_record(&self, slot: &RecordSlot, key: BlockKey) -> Result<()> {
        let written = slot.written.load(Ordering::Relaxed);
        if slot.failed.load(Ordering::Relaxed)
            || slot.finished.load(Ordering::Relaxed)
            || written != slot.len as u64
        {
            self.abandon_record(slot);
            return Err(Error::invalid(format!(
                "a record slot is committed once, after all of its {} bytes were written ({written} were, a part failed: {})",
                slot.len,
                slot.failed.load(Ordering::Relaxed)
            )));
        }
        let seg = slot.seg.clone();
        // The header last: only now can recovery find the record.
        let head = slot.head.lock().take();
        let wrote = match &head {
            Some(h) => self.io.write_at(&seg.file, h, slot.off),
            None => Err(std::io::Error::other(
                "the record's first page never arrived",
            )),
        };
        if let Err(e) = wrote {
            self.counters.write_errors.inc();
            self.abandon_record(slot);
            return Err(Error::io("writing a record's header", e)
                .with_context("segment", seg.path.display()));
        }
        if self.cfg.durability == Durability::Synced {
            if let Err(e) = self.io.sync(&seg.file) {
                self.counters.write_errors.inc();
                self.abandon_record(slot);
                return Err(
                    Error::io("syncing a record", e).with_context("segment", seg.path.display())
                );
            }
        }
        let (off, len) = (slot.off, slot.len as u64);
        seg.keys.lock().push((key, off));
        seg.live_bytes.fetch_add(len, Ordering::Relaxed);
        // Indexed before the reservation ends (see `append`).
        self.index_record(seg.id, off, len, key, Origin::Put);
        slot.finish();
        Ok(())
    }

    /// Gives up a reserved record (a part failed, its bytes never all arrived, or they
    /// failed verification): nothing is indexed, and its first page is zeroed (best effort)
    /// so that recovery never finds a header there.
    pub fn abandon_record(&self, slot: &RecordSlot) {
        if slot.abandon() && slot.failed.load(Ordering::Relaxed) {
            self.counters.write_errors.inc();
        }
    }
}
