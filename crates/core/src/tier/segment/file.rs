//! One segment file: a header page, then page-aligned records appended in order.
//!
//! Page 0 holds a [`SegmentHeader`]: magic, version, id, size and, once the segment is sealed
//! (full, and no write in flight), the end offset of its last record. Sealed segments are
//! trusted record by record on recovery (headers only); unsealed ones are verified in full.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64;

use crate::buf::{AlignedBuf, ALIGN};
use crate::error::{Error, Result};
use crate::key::BlockKey;
use crate::tier::io::{open_file, IoEngine};

const SEGMENT_MAGIC: [u8; 8] = *b"KVTSEG\0\x01";
const SEGMENT_VERSION: u32 = 1;
const FLAG_SEALED: u32 = 1;

/// The first page of a segment file.
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
#[repr(C)]
pub(crate) struct SegmentHeader {
    magic: [u8; 8],
    version: u32,
    flags: u32,
    pub id: u64,
    pub segment_bytes: u64,
    /// End offset of the last record (sealed segments only).
    pub end: u64,
    /// Records written (sealed segments only).
    pub records: u64,
    reserved: u64,
    checksum: u64,
}

impl SegmentHeader {
    fn new(id: u64, segment_bytes: u64, sealed: Option<(u64, u64)>) -> Self {
        let (end, records) = sealed.unwrap_or((0, 0));
        let mut h = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: SEGMENT_VERSION.to_le(),
            flags: if sealed.is_some() {
                FLAG_SEALED.to_le()
            } else {
                0
            },
            id: id.to_le(),
            segment_bytes: segment_bytes.to_le(),
            end: end.to_le(),
            records: records.to_le(),
            reserved: 0,
            checksum: 0,
        };
        h.checksum = xxh3_64(&bytemuck::bytes_of(&h)[..56]).to_le();
        h
    }

    /// Parses page 0; `None` if it is not a valid segment header.
    pub fn decode(page: &[u8]) -> Option<Self> {
        let raw = page.get(..64)?;
        let h: SegmentHeader = bytemuck::pod_read_unaligned(raw);
        let ok = h.magic == SEGMENT_MAGIC
            && u32::from_le(h.version) == SEGMENT_VERSION
            && u64::from_le(h.checksum) == xxh3_64(&raw[..56]);
        ok.then(|| SegmentHeader {
            id: u64::from_le(h.id),
            segment_bytes: u64::from_le(h.segment_bytes),
            end: u64::from_le(h.end),
            records: u64::from_le(h.records),
            flags: u32::from_le(h.flags),
            ..h
        })
    }

    pub fn sealed(&self) -> bool {
        self.flags & FLAG_SEALED != 0
    }

    fn page(&self) -> AlignedBuf {
        let mut p = AlignedBuf::zeroed(ALIGN);
        p[..64].copy_from_slice(bytemuck::bytes_of(self));
        p
    }
}

/// Name of segment `id` in its directory.
pub(crate) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

/// Parses a segment file name back to its id.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Write bookkeeping of a segment.
#[derive(Debug, Default)]
pub(crate) struct SegState {
    /// Writes reserved but not finished.
    pub inflight: u32,
    /// No more reservations (the segment is full or was recovered).
    pub closed: bool,
    /// The sealed header has been written.
    pub sealed: bool,
    /// End of the last reserved record.
    pub end: u64,
}

/// An open segment. Readers keep an `Arc` so an evicted (unlinked) segment stays readable
/// until the last read ends.
pub(crate) struct Segment {
    pub id: u64,
    pub file: File,
    pub path: PathBuf,
    pub size: u64,
    pub state: Mutex<SegState>,
    /// `(key, offset)` of every record written, to find the index entries on eviction.
    pub keys: Mutex<Vec<(BlockKey, u64)>>,
    /// Bytes of records that the index still points to.
    pub live_bytes: AtomicU64,
}

impl Segment {
    /// Creates, preallocates and stamps a new, unsealed segment.
    pub fn create(
        io: &dyn IoEngine,
        dir: &Path,
        id: u64,
        size: u64,
        direct: bool,
    ) -> Result<(Arc<Self>, bool)> {
        let path = segment_path(dir, id);
        let (file, is_direct) = open_file(&path, true, true, direct).map_err(|e| {
            Error::io("creating a segment file", e).with_context("path", path.display())
        })?;
        let stamp = || -> std::io::Result<()> {
            io.allocate(&file, size)?;
            io.write_at(&file, &SegmentHeader::new(id, size, None).page(), 0)
        };
        if let Err(e) = stamp() {
            let _ = std::fs::remove_file(&path);
            let err = Error::io("preallocating a segment file", e)
                .with_context("path", path.display())
                .with_context("bytes", size);
            return Err(err);
        }
        let seg = Segment {
            id,
            file,
            path,
            size,
            state: Mutex::new(SegState {
                end: ALIGN as u64,
                ..Default::default()
            }),
            keys: Mutex::new(Vec::new()),
            live_bytes: AtomicU64::new(0),
        };
        Ok((Arc::new(seg), is_direct))
    }

    /// Wraps an existing file found on recovery.
    pub fn existing(id: u64, file: File, path: PathBuf, size: u64, end: u64) -> Arc<Self> {
        Arc::new(Segment {
            id,
            file,
            path,
            size,
            state: Mutex::new(SegState {
                closed: true,
                end,
                ..Default::default()
            }),
            keys: Mutex::new(Vec::new()),
            live_bytes: AtomicU64::new(0),
        })
    }

    /// Ends one reserved write; seals the segment when it was the last of a closed segment.
    pub fn finish_write(&self, io: &dyn IoEngine) {
        let mut st = self.state.lock();
        st.inflight -= 1;
        if st.closed && st.inflight == 0 {
            self.seal(io, &mut st);
        }
    }

    /// Writes the sealed header once (a failure leaves it unsealed: verified in full on
    /// recovery, slower and still correct).
    pub fn seal(&self, io: &dyn IoEngine, st: &mut SegState) {
        if st.sealed {
            return;
        }
        let records = self.keys.lock().len() as u64;
        match self.write_seal(io, st.end, records) {
            Ok(()) => st.sealed = true,
            Err(e) => {
                tracing::warn!(segment = %self.path.display(), error = %e, "could not seal segment")
            }
        }
    }

    /// Writes the sealed header: recovery will trust record headers up to `end`.
    pub fn write_seal(&self, io: &dyn IoEngine, end: u64, records: u64) -> std::io::Result<()> {
        io.write_at(
            &self.file,
            &SegmentHeader::new(self.id, self.size, Some((end, records))).page(),
            0,
        )
    }
}
