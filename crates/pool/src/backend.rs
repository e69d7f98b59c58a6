//! What the agent writes behind to and reads through from: the [`PoolBackend`] trait, and its
//! embedded implementation (the segment store).

use kvtier_core::block::BlockHeader;
use kvtier_core::error::Result;
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::StoreStats;
use kvtier_core::tier::segment::SegmentStore;

/// What the agent needs from a pool. Implementations are thread-safe and block the caller
/// (the agent calls them from its write-behind and prefetch threads, and within a budget on
/// loads); remote ones bound every call by a deadline.
pub trait PoolBackend: Send + Sync {
    /// A short name for logs: `embedded`, `servers`, `shared-dir`.
    fn kind(&self) -> &'static str;

    /// Stores a complete, sealed, page-aligned record (header, payload, padding).
    fn put_record(&self, record: &[u8]) -> Result<()>;

    /// [`put_record`](Self::put_record) for several records; remote backends send them all
    /// at once. One result per record, in order.
    fn put_many(&self, records: &[&[u8]]) -> Vec<Result<()>> {
        records.iter().map(|r| self.put_record(r)).collect()
    }

    /// Reads and verifies the record of `key` into `buf` (page-aligned, at least the record's
    /// length). `None` on a miss, including a record that failed verification.
    fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>>;

    /// [`get_into_slice`](Self::get_into_slice) for several keys, each into its own buffer;
    /// remote backends fetch them all at once. One result per request, in order.
    fn get_many_into(
        &self,
        reqs: &mut [(BlockKey, &mut [u8])],
    ) -> Vec<Result<Option<BlockHeader>>> {
        reqs.iter_mut()
            .map(|(k, b)| self.get_into_slice(*k, b))
            .collect()
    }

    /// Whether `key` is stored (may be stale by the time it is read: a later get can miss).
    fn contains(&self, key: BlockKey) -> bool;

    /// Which of `keys` are stored. Remote backends ask in one batch per server.
    fn contains_many(&self, keys: &[BlockKey]) -> Vec<bool> {
        keys.iter().map(|k| self.contains(*k)).collect()
    }

    /// Counters for stats views.
    fn stats(&self) -> StoreStats;
}

impl PoolBackend for SegmentStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn put_record(&self, record: &[u8]) -> Result<()> {
        SegmentStore::put_record(self, record)
    }

    fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>> {
        SegmentStore::get_into_slice(self, key, buf)
    }

    fn contains(&self, key: BlockKey) -> bool {
        SegmentStore::contains(self, key)
    }

    fn stats(&self) -> StoreStats {
        SegmentStore::stats(self)
    }
}
