//! Records at the server: the DRAM cache in front of the disk, the checks of a put's header and of
//! the streamed-put settings, and the status answering a store error.

use std::sync::Arc;
use std::time::Duration;

use crate::wire::Status;
use kvtier_core::block::{BlockHeader, VerifyError};
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;

/// A byte-bounded cache of whole records, evicting by the tiers' policy (hit density by
/// default, see `kvtier_core::policy`), so the DRAM in front of the disk keeps what is read again.
pub(super) struct Cache {
    pub(super) map: kvtier_core::policy::WeightedCache<BlockKey, Arc<AlignedBuf>>,
}

impl Cache {
    pub(super) fn get(&mut self, key: &BlockKey) -> Option<Arc<AlignedBuf>> {
        self.map.get(key).cloned()
    }

    /// Inserts a record; returns what was pushed out (for the caller to recycle).
    pub(super) fn insert(&mut self, key: BlockKey, rec: Arc<AlignedBuf>) -> Vec<Arc<AlignedBuf>> {
        let len = rec.len() as u64;
        self.map.insert(key, rec, len)
    }

    pub(super) fn remove(&mut self, key: &BlockKey) -> Option<Arc<AlignedBuf>> {
        self.map.remove(key)
    }

    pub(super) fn contains(&self, key: &BlockKey) -> bool {
        self.map.contains(key)
    }
}

/// Checks the streamed-put settings (the server's and `pool.*`'s, one rule): a chunk is 0
/// (no streaming) or a multiple of 4 KiB from 64 KiB to 64 MiB, and the stall limit is not 0.
/// The error names the setting (`stream_chunk`, `stall_timeout`; see [`Error::bad_field`]).
pub fn check_streaming(stream_chunk: usize, stall_timeout: Duration) -> Result<()> {
    let c = stream_chunk;
    if c != 0
        && (c % kvtier_core::buf::ALIGN != 0
            || !(64 << 10..=crate::wire::MAX_OBJECT_PAYLOAD).contains(&c))
    {
        return Err(Error::bad_field(
            "pool server",
            "stream_chunk",
            format!("{c} bytes is not a multiple of 4 KiB from 64 KiB to 64 MiB (0 turns streaming off)"),
        ));
    }
    if stall_timeout.is_zero() {
        return Err(Error::bad_field(
            "pool server",
            "stall_timeout",
            "0; at least 1 ms",
        ));
    }
    Ok(())
}

pub(super) fn record_len_of(r: &AlignedBuf) -> usize {
    BlockHeader::decode(r)
        .map(|h| h.record_len())
        .unwrap_or(r.len())
        .min(r.len())
}

/// Checks a put's record header (in the first bytes of `body`) against the frame's key and
/// the body's length (`len`, or `body.len()` when the body is whole).
pub(super) fn check_header(body: &[u8], key: BlockKey, len: Option<usize>) -> Result<BlockHeader> {
    let h = BlockHeader::decode(body)?;
    if h.key() != key {
        return Err(VerifyError::WrongKey.into());
    }
    let len = len.unwrap_or(body.len());
    if h.record_len() != len {
        return Err(Error::invalid(format!(
            "a put body is one page-aligned record of {} bytes, got {len}",
            h.record_len(),
        )));
    }
    Ok(h)
}

/// The status answering a store error: no space, or a plain error.
pub(super) fn status_of(e: &Error) -> Status {
    if e.kind() == ErrorKind::NoSpace {
        Status::NoSpace
    } else {
        Status::Error
    }
}
