//! Records at the server: the DRAM cache in front of the disk, the checks of a put's header and of
//! the streamed-put settings, and the status answering a store error.

use std::sync::Arc;
use std::time::Duration;

use crate::wire::Status;
use kvtier_core::block::{BlockHeader, VerifyError};
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;

/// Stripes of [`Cache::writes`]: keys share a write count only one in this many.
const WRITE_STRIPES: usize = 64;

/// A byte-bounded cache of whole records, evicting by the tiers' policy (hit density by
/// default, see `kvtier_core::policy`), so the DRAM in front of the disk keeps what is read again.
///
/// A get that misses reads the store without the cache's lock, then caches what it read; a put
/// or delete of the same key landing meanwhile must win. Writes count per stripe of keys
/// ([`Cache::forget`]); a read notes the count before it reads ([`Cache::epoch`]) and caches
/// only if it has not moved ([`Cache::insert_if`]), so a replaced or deleted record never comes
/// back from the cache.
pub(super) struct Cache {
    pub(super) map: kvtier_core::policy::WeightedCache<BlockKey, Arc<AlignedBuf>>,
    writes: [u64; WRITE_STRIPES],
}

fn stripe(key: &BlockKey) -> usize {
    (key.as_u128() % WRITE_STRIPES as u128) as usize
}

impl Cache {
    pub(super) fn new(map: kvtier_core::policy::WeightedCache<BlockKey, Arc<AlignedBuf>>) -> Self {
        Cache {
            map,
            writes: [0; WRITE_STRIPES],
        }
    }

    pub(super) fn get(&mut self, key: &BlockKey) -> Option<Arc<AlignedBuf>> {
        self.map.get(key).cloned()
    }

    /// The write count of `key`'s stripe, to pass to [`Cache::insert_if`] after reading it.
    pub(super) fn epoch(&self, key: &BlockKey) -> u64 {
        self.writes[stripe(key)]
    }

    /// Inserts a record read when `key`'s stripe had seen `epoch` writes, unless a write landed
    /// since; returns what was pushed out (for the caller to recycle).
    pub(super) fn insert_if(
        &mut self,
        key: BlockKey,
        rec: Arc<AlignedBuf>,
        epoch: u64,
    ) -> Vec<Arc<AlignedBuf>> {
        if self.writes[stripe(&key)] != epoch {
            return Vec::new();
        }
        let len = rec.len() as u64;
        self.map.insert(key, rec, len)
    }

    /// A put or delete of `key` landed: drops its cached copy (returned, to recycle), and keeps
    /// reads already under way from caching what they read before it.
    pub(super) fn forget(&mut self, key: &BlockKey) -> Option<Arc<AlignedBuf>> {
        self.writes[stripe(key)] += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let mut c = Cache::new(kvtier_core::policy::WeightedCache::new(
            kvtier_core::policy::PolicyKind::default(),
            1 << 20,
        ));
        let (k, other) = (BlockKey::from_u128(7), BlockKey::from_u128(8));
        let rec = || Arc::new(AlignedBuf::zeroed(4096));
        // A read notes the count, a put of the key lands, the read's copy is stale: not cached.
        let seen = c.epoch(&k);
        assert!(c.forget(&k).is_none());
        c.insert_if(k, rec(), seen);
        assert!(!c.contains(&k));
        // A write to another stripe does not stop it.
        let seen = c.epoch(&k);
        c.forget(&other);
        c.insert_if(k, rec(), seen);
        assert!(c.contains(&k));
        // A delete drops the cached copy.
        assert!(c.forget(&k).is_some() && !c.contains(&k));
    }
}
