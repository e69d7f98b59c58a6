//! The server's requests, one function per op: [`PoolServer::put`], [`PoolServer::get`],
//! [`PoolServer::exists`], [`PoolServer::delete`], [`PoolServer::stats_reply`]. A request
//! that fails answers with the status of its error's kind ([`status_of`]) and its text as the
//! body, and counts in `errors`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::Instrument;

use super::records::{check_header, record_len_of, status_of};
use super::{PoolOp, PoolServer};
use crate::wire::{self, Body, Frame, Op, Status};
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::key::BlockKey;

impl PoolServer {
    /// Serves one request (TCP or UCX) inside a span of its own
    /// (`pool_request{op, key, bytes}`), timed into the op's latency histogram. `hash`: a
    /// put payload's xxh3-64, when it was computed while the body arrived (else the put
    /// computes it).
    pub(super) async fn handle_request(
        self: Arc<Self>,
        f: Frame,
        body: AlignedBuf,
        hash: Option<u64>,
    ) -> (Frame, Body) {
        let op = PoolOp::of(f.op);
        let span = tracing::info_span!(
            "pool_request",
            op = kvtier_core::metrics::OpSet::name(op),
            key = %f.key,
            bytes = f.body_len,
            tier = "disk"
        );
        let t0 = std::time::Instant::now();
        let me = self.clone();
        let (frame, resp) = async move {
            let r = me.serve_request(f, body, hash).await;
            tracing::debug!(status = ?r.0.status, "done");
            r
        }
        .instrument(span)
        .await;
        self.latency.observe(op, t0.elapsed());
        (frame, resp)
    }

    async fn serve_request(
        self: Arc<Self>,
        f: Frame,
        body: AlignedBuf,
        hash: Option<u64>,
    ) -> (Frame, Body) {
        let res = match f.op {
            Op::Put => self.clone().put(&f, body, hash).await,
            Op::Get => self.clone().get(&f).await,
            Op::Exists => self.exists(&f, &body),
            Op::Delete => Ok(self.delete(&f)),
            Op::Stats => Ok(self.stats_reply(&f)),
            Op::Hello | Op::Auth | Op::UcxHello => Err(Error::invalid(format!(
                "{:?} is only valid during the handshake",
                f.op
            ))),
        };
        res.unwrap_or_else(|e| self.failed(&f, status_of(&e), &e))
    }

    /// The answer to a failed request: `status`, the error's text as the body; counted.
    pub(super) fn failed(&self, f: &Frame, status: Status, e: &Error) -> (Frame, Body) {
        self.counters.errors.inc();
        let b = e.to_string().into_bytes();
        (Frame::response(f, status, b.len() as u32), Body::Bytes(b))
    }

    /// `Put`: a whole record. Its header is checked here, then one trip to a blocking thread
    /// checks the payload (unless its checksum was computed while the body arrived) and writes
    /// and indexes it. A record is stored only if its checksum holds, so a bad copy never
    /// hides an older good one, not even after a restart; and a bad one takes no space at all.
    async fn put(
        self: Arc<Self>,
        f: &Frame,
        body: AlignedBuf,
        hash: Option<u64>,
    ) -> Result<(Frame, Body)> {
        self.counters.puts.inc();
        if self.draining.load(Ordering::Relaxed) {
            let e = Error::new(ErrorKind::Unavailable, "the server is draining");
            return Ok(self.failed(f, Status::Draining, &e));
        }
        if let Err(e) = check_header(&body, f.key, None) {
            self.counters.bad_records.inc();
            self.bufs.give(body);
            return Err(e);
        }
        let (s, key) = (self.clone(), f.key);
        let (body, outcome) = tokio::task::spawn_blocking(move || {
            let res = s.put_whole(&body, key, hash);
            (body, res)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("put task failed: {e}")))?;
        self.bufs.give(body);
        outcome?;
        // Write-around: the DRAM cache holds what is read (most blocks are never read
        // again); an older cached copy of this key is replaced.
        let old = self.cache.lock().forget(&f.key);
        if let Some(old) = old {
            self.recycle(old);
        }
        Ok((Frame::response(f, Status::Ok, 0), Body::Empty))
    }

    /// Stores a put's whole record (on a blocking thread): verifies it (`hash`: its payload's
    /// checksum, computed while it arrived, else here), then appends it to the store, which
    /// indexes it only once it is written. A bad record is counted and takes no space.
    fn put_whole(&self, record: &[u8], key: BlockKey, hash: Option<u64>) -> Result<()> {
        if let Err(v) = kvtier_core::block::verify_record(record, Some(key), hash) {
            self.counters.bad_records.inc();
            return Err(Error::from(v));
        }
        self.store.put_record(record)
    }

    /// `Get`: from the DRAM cache, else from the store (on a blocking thread), then into the
    /// cache unless the request bypasses it.
    async fn get(self: Arc<Self>, f: &Frame) -> Result<(Frame, Body)> {
        self.counters.gets.inc();
        let bypass = f.flags & wire::FLAG_BYPASS_CACHE != 0;
        if !bypass {
            if let Some(r) = self.cache.lock().get(&f.key) {
                // The store's policy hears of the use too (it decides what survives a
                // segment's eviction).
                self.store.touch(f.key);
                self.counters.cache_hits.inc();
                self.counters.get_hits.inc();
                let len = record_len_of(&r);
                self.counters.cache_bytes_out.add(len as u64);
                return Ok((Frame::response(f, Status::Ok, len as u32), Body::Record(r)));
            }
        }
        let epoch = self.cache.lock().epoch(&f.key);
        let (s, key) = (self.clone(), f.key);
        let found = tokio::task::spawn_blocking(move || {
            let Some(len) = s.store.record_len(key) else {
                return Ok(None);
            };
            let mut buf = s.bufs.take(len);
            match s.store.get_into_slice(key, &mut buf) {
                Ok(Some(_)) => Ok(Some(buf)),
                other => {
                    s.bufs.give(buf);
                    other.map(|_| None)
                }
            }
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("get task failed: {e}")))??;
        let Some(buf) = found else {
            return Ok((Frame::response(f, Status::NotFound, 0), Body::Empty));
        };
        self.counters.get_hits.inc();
        let buf = Arc::new(buf);
        if !bypass && self.cfg.cache_bytes > 0 {
            self.cache_insert(f.key, buf.clone(), epoch);
        }
        let len = record_len_of(&buf);
        Ok((
            Frame::response(f, Status::Ok, len as u32),
            Body::Record(buf),
        ))
    }

    /// `Exists`: one byte per key of the body (1: held in the cache or the store).
    fn exists(&self, f: &Frame, body: &[u8]) -> Result<(Frame, Body)> {
        self.counters.exists.inc();
        let keys = wire::decode_keys(body)?;
        // The store first (its own index, no cache lock), then the cache a slice of keys per
        // lock, so that a 65,536-key ask never holds up gets and puts behind the cache's lock.
        let mut out: Vec<u8> = keys.iter().map(|k| self.store.contains(*k) as u8).collect();
        for (ks, o) in keys.chunks(256).zip(out.chunks_mut(256)) {
            let cache = self.cache.lock();
            for (k, o) in ks.iter().zip(o) {
                *o |= cache.contains(k) as u8;
            }
        }
        Ok((
            Frame::response(f, Status::Ok, out.len() as u32),
            Body::Bytes(out),
        ))
    }

    /// `Delete`: from the cache and the store; `NotFound` when the store did not hold it.
    fn delete(&self, f: &Frame) -> (Frame, Body) {
        self.counters.deletes.inc();
        let status = if self.store.remove(f.key) {
            Status::Ok
        } else {
            Status::NotFound
        };
        // After the store forgot it: a read racing the delete cannot cache it again.
        let old = self.cache.lock().forget(&f.key);
        if let Some(r) = old {
            self.recycle(r);
        }
        (Frame::response(f, status, 0), Body::Empty)
    }

    /// `Stats`: the server's [`super::PoolServerStats`] as JSON.
    fn stats_reply(&self, f: &Frame) -> (Frame, Body) {
        let b = serde_json::to_vec(&self.stats()).expect("stats serialise");
        (
            Frame::response(f, Status::Ok, b.len() as u32),
            Body::Bytes(b),
        )
    }
}
