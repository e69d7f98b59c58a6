//! Opening a store directory: checks that it is usable, then rebuilds the index from the
//! segment files. Sealed segments are walked header by header; unsealed ones (being written
//! when the process died) are read in full and every record's payload is verified. Torn or
//! corrupt records are discarded and their header page zeroed, so they are gone for good.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::block::{BlockHeader, VerifyError, HEADER_LEN};
use crate::buf::{AlignedBuf, ALIGN};
use crate::error::{Error, ErrorKind, Result};
use crate::key::BlockKey;
use crate::tier::io::{open_file, IoEngine};

use super::file::{parse_segment_name, Segment, SegmentHeader};
use super::{RecoveryReport, SegmentStoreConfig};

/// A record found on disk.
pub(super) struct Rec {
    pub key: BlockKey,
    pub off: u64,
    pub len: u32,
}

/// Segments found, by id, with their records in file order.
pub(super) type Found = BTreeMap<u64, (Arc<Segment>, Vec<Rec>)>;

/// What a scan found: segments and records, the report, and discarded records by reason.
pub(super) type Scan = (Found, RecoveryReport, Vec<(VerifyError, u64)>);

/// Window read at once while scanning an unsealed segment.
const SCAN_WINDOW: usize = 8 << 20;

/// Checks that the directory exists (or creates it when allowed), is a directory and is
/// writable, with an error that says what to do.
pub(super) fn check_dir(cfg: &SegmentStoreConfig) -> Result<()> {
    let dir = &cfg.dir;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::invalid("segment store path is not a directory")
                .with_context("dir", dir.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !cfg.create_dir {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "segment store directory does not exist; create it (or mount the disk), or set `create_dir`",
                )
                .with_context("dir", dir.display()));
            }
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io("creating the segment store directory", e)
                    .with_context("dir", dir.display())
            })?;
        }
        Err(e) => {
            return Err(Error::io("inspecting the segment store directory", e)
                .with_context("dir", dir.display()))
        }
    }
    let probe = dir.join(".kvtier-write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| {
        Error::io(
            "segment store directory is not writable (read-only file system or permissions)",
            e,
        )
        .with_context("dir", dir.display())
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Rebuilds the segment list and records from the directory.
pub(super) fn scan(cfg: &SegmentStoreConfig, io: &dyn IoEngine) -> Result<Scan> {
    let mut report = RecoveryReport::default();
    let mut corrupt: BTreeMap<VerifyError, u64> = BTreeMap::new();
    let mut found = Found::new();
    let entries = std::fs::read_dir(&cfg.dir).map_err(|e| {
        Error::io("listing the segment store directory", e).with_context("dir", cfg.dir.display())
    })?;
    let mut ids: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_name))
        .collect();
    ids.sort_unstable();
    for id in ids {
        let path = super::file::segment_path(&cfg.dir, id);
        let ctx = |e: std::io::Error| {
            Error::io("recovering a segment", e).with_context("path", path.display())
        };
        let (file, _) = open_file(&path, false, true, cfg.direct_io).map_err(ctx)?;
        let size = file.metadata().map_err(ctx)?.len();
        let mut page = AlignedBuf::zeroed(ALIGN);
        let header = if size >= ALIGN as u64 {
            io.read_at(&file, &mut page, 0)
                .ok()
                .and_then(|_| SegmentHeader::decode(&page))
        } else {
            None
        };
        let header = header.filter(|h| h.id == id);
        if header.is_none() && size < 2 * ALIGN as u64 {
            tracing::warn!(path = %path.display(), "removing a segment file without a valid header and no room for a record");
            std::fs::remove_file(&path).map_err(ctx)?;
            report.removed_files += 1;
            continue;
        }
        // A bad header page (a torn or flipped page 0) does not condemn the records after it:
        // the segment is scanned in full as if unsealed, each record verified, and its header
        // rewritten.
        if header.is_none() {
            tracing::warn!(path = %path.display(), "a segment file's header is damaged; scanning every record");
        }
        let sealed = header.is_some_and(|h| h.sealed());
        report.segments += 1;
        let limit = size - size % ALIGN as u64;
        let (records, end) = if let Some(header) = header.filter(|_| sealed) {
            (
                walk_sealed(io, &file, header.end.min(limit)),
                header.end.min(limit),
            )
        } else {
            report.unsealed += 1;
            let (records, end, bad) = scan_unsealed(io, &file, limit);
            for (off, reason) in bad {
                report.discarded += 1;
                *corrupt.entry(reason).or_default() += 1;
                tracing::warn!(path = %path.display(), offset = off, reason = reason.as_str(), "discarding a torn record");
                // Zero its header page so no later scan can take it for a record.
                io.write_at(&file, &AlignedBuf::zeroed(ALIGN), off)
                    .map_err(ctx)?;
            }
            (records, end)
        };
        report.records += records.len();
        let seg = Segment::existing(id, file, path.clone(), size, end);
        if !sealed {
            seg.write_seal(io, end, records.len() as u64).map_err(ctx)?;
        }
        seg.state.lock().sealed = true;
        found.insert(id, (seg, records));
    }
    Ok((found, report, corrupt.into_iter().collect()))
}

/// Header-only walk of a sealed segment. A page that is not a header (a record zeroed after a
/// failed write) is skipped a page at a time.
fn walk_sealed(io: &dyn IoEngine, file: &std::fs::File, end: u64) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut page = AlignedBuf::zeroed(ALIGN);
    let mut off = ALIGN as u64;
    while off + ALIGN as u64 <= end {
        if io.read_at(file, &mut page, off).is_err() {
            break;
        }
        match BlockHeader::decode(&page) {
            Ok(h) if off + h.record_len() as u64 <= end => {
                out.push(Rec {
                    key: h.key(),
                    off,
                    len: h.record_len() as u32,
                });
                off += h.record_len() as u64;
            }
            _ => off += ALIGN as u64,
        }
    }
    out
}

/// Full scan of an unsealed segment: returns good records, the end of the last good record,
/// and the offsets of torn or corrupt ones with the reason.
fn scan_unsealed(
    io: &dyn IoEngine,
    file: &std::fs::File,
    limit: u64,
) -> (Vec<Rec>, u64, Vec<(u64, VerifyError)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut end = ALIGN as u64;
    let mut window = AlignedBuf::zeroed(SCAN_WINDOW);
    let mut record = AlignedBuf::zeroed(0);
    let mut win_start = u64::MAX;
    let mut win_len = 0usize;
    let mut off = ALIGN as u64;
    while off + ALIGN as u64 <= limit {
        // Keep `off` inside the window.
        if off < win_start || off + ALIGN as u64 > win_start + win_len as u64 {
            win_start = off;
            win_len = ((limit - off) as usize).min(SCAN_WINDOW);
            if io.read_at(file, &mut window[..win_len], off).is_err() {
                break;
            }
        }
        let at = (off - win_start) as usize;
        let header = match BlockHeader::decode(&window[at..at + ALIGN]) {
            Ok(h) => h,
            Err(VerifyError::BadMagic) => {
                off += ALIGN as u64; // never written
                continue;
            }
            Err(reason) => {
                bad.push((off, reason)); // a torn header: its length is unknown
                off += ALIGN as u64;
                continue;
            }
        };
        let len = header.record_len();
        if off + len as u64 > limit {
            bad.push((off, VerifyError::Length));
            off += ALIGN as u64;
            continue;
        }
        let bytes: &[u8] = if at + len <= win_len {
            &window[at..at + len]
        } else {
            if record.len() < len {
                record = AlignedBuf::zeroed(len);
            }
            if io.read_at(file, &mut record[..len], off).is_err() {
                break;
            }
            &record[..len]
        };
        match header.verify_payload(&bytes[HEADER_LEN..HEADER_LEN + header.payload_len() as usize])
        {
            Ok(()) => {
                good.push(Rec {
                    key: header.key(),
                    off,
                    len: len as u32,
                });
                end = off + len as u64;
            }
            Err(reason) => bad.push((off, reason)),
        }
        off += len as u64;
    }
    (good, end, bad)
}
