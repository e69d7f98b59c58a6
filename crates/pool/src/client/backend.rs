//! The pool client as the agent sees it: [`PoolBackend`] with blocking calls on the client's
//! runtime, each within the deadline.

use std::sync::Arc;

use super::{futures_join_all, PoolClient};
use crate::backend::PoolBackend;
use kvtier_core::block::BlockHeader;
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, Result};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::StoreStats;

impl PoolClient {
    /// Copies a fetched record into the caller's buffer (the record buffer is reused).
    fn copy_out(&self, got: Option<AlignedBuf>, buf: &mut [u8]) -> Result<Option<BlockHeader>> {
        let Some(rec) = got else {
            return Ok(None);
        };
        let h = BlockHeader::decode(&rec).map_err(Error::from)?;
        let len = h.record_len().min(rec.len());
        if buf.len() < len {
            return Err(Error::invalid(format!(
                "read buffer of {} bytes for a {len}-byte record",
                buf.len()
            )));
        }
        buf[..len].copy_from_slice(&rec[..len]);
        self.recycle(rec);
        Ok(Some(h))
    }
}

/// The agent's view: blocking calls on the client's runtime, each within the deadline.
impl PoolBackend for Arc<PoolClient> {
    fn kind(&self) -> &'static str {
        "servers"
    }

    fn put_record(&self, record: &[u8]) -> Result<()> {
        self.put_many(&[record])
            .pop()
            .expect("one record, one result")
    }

    /// Every record copied out (the caller's memory may be reused once this returns), then
    /// all put at once.
    fn put_many(&self, records: &[&[u8]]) -> Vec<Result<()>> {
        let copies: Vec<Result<AlignedBuf>> = records
            .iter()
            .map(|record| {
                let h = BlockHeader::decode(record).map_err(Error::from)?;
                let len = h.record_len().min(record.len());
                let mut buf = self.bufs.take(len);
                buf.copy_from_slice(&record[..len]);
                Ok(buf)
            })
            .collect();
        let c = self.clone();
        self.block(async move {
            let puts = copies.into_iter().map(|b| {
                let c = c.clone();
                async move {
                    let buf = Arc::new(b?);
                    let r = c.put(buf.clone()).await.map(|_| ());
                    if let Ok(b) = Arc::try_unwrap(buf) {
                        c.recycle(b);
                    }
                    r
                }
            });
            futures_join_all(puts).await
        })
    }

    fn get_into_slice(&self, key: BlockKey, buf: &mut [u8]) -> Result<Option<BlockHeader>> {
        self.get_many_into(&mut [(key, buf)])
            .pop()
            .expect("one request, one result")
    }

    /// Every get at once (each with its own deadline), then copied into its buffer.
    fn get_many_into(
        &self,
        reqs: &mut [(BlockKey, &mut [u8])],
    ) -> Vec<Result<Option<BlockHeader>>> {
        let keys: Vec<BlockKey> = reqs.iter().map(|r| r.0).collect();
        let c = self.clone();
        let got = self.block(async move {
            futures_join_all(keys.into_iter().map(|k| {
                let c = c.clone();
                async move { c.get(k, false).await }
            }))
            .await
        });
        reqs.iter_mut()
            .zip(got)
            .map(|((_, buf), r)| self.copy_out(r?, buf))
            .collect()
    }

    fn contains(&self, key: BlockKey) -> bool {
        self.contains_many(&[key])[0]
    }

    fn contains_many(&self, keys: &[BlockKey]) -> Vec<bool> {
        let (c, ks) = (self.clone(), keys.to_vec());
        match self.block(async move { c.exists(&ks).await }) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "pool lookup failed (treated as a miss)");
                vec![false; keys.len()]
            }
        }
    }

    fn stats(&self) -> StoreStats {
        let c = self.client_stats();
        StoreStats {
            hits: c.hits,
            misses: c.misses,
            puts: c.puts,
            corrupt: vec![("payload_checksum", c.corrupt)],
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            ..StoreStats::default()
        }
    }
}
