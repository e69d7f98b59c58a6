//! Streamed puts: a large put's body goes to disk while it is still crossing the socket.
//!
//! Read whole and then written, a 4 MiB put costs the socket time plus the disk time. Here the
//! record's extent is reserved in the segment store when the header arrives
//! ([`SegmentStore::reserve_record`](kvtier_core::tier::segment::SegmentStore::reserve_record));
//! the body is read in chunks (`stream_chunk`, 2 MiB by default), each chunk is written to its
//! place with O_DIRECT on a blocking thread while the next one is read (so several writes of
//! one put are in flight: one 4 MiB put in flight, 1.37-1.44 GB/s against 1.08-1.20 with one
//! writer thread per put, two A/B runs on b545f97's pipeline: 1 MiB chunks, 4 KiB pages, a
//! hasher thread), and the payload is checksummed as each chunk comes in. When the last chunk
//! is in, what is left is the last writes; then the record is indexed. Until then nothing can
//! find it; a record that fails its checksum, a part that fails to write, or a connection that
//! ends or stalls inside the body is abandoned (its header page, which the store writes only
//! at the commit, never reaches the disk, so recovery does not find it either), and after a
//! crash mid-write recovery verifies the unsealed segment's records in full.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

use super::{check_header, Body, PoolOp, PoolServer};
use crate::wire::conn::{PayloadHasher, ReadError};
use crate::wire::{Frame, Op, Status};
use kvtier_core::buf::AlignedBuf;
use kvtier_core::error::{Error, ErrorKind};
use kvtier_core::tier::segment::RecordSlot;

/// The rest of a streamed put, run as its own task: it answers the request.
pub(crate) type Finish = Pin<Box<dyn Future<Output = (Frame, Body)> + Send>>;

/// One chunk's write: the chunk comes back to be reused.
type Part = JoinHandle<(Arc<AlignedBuf>, io::Result<()>)>;

/// Reads exactly `buf.len()` bytes, each call bounded by `limit` (a peer that stalls inside a
/// body must not hold a reserved extent for ever).
async fn read_part<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), ReadError> {
    match tokio::time::timeout(limit, rd.read_exact(buf)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Err(_) => Err(ReadError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("a put's body stalled for more than {limit:?}"),
        ))),
    }
}

impl PoolServer {
    /// Whether the body of `f` is streamed to disk as it arrives rather than read whole
    /// first: a put of at least two chunks, while taking writes, with no other put in flight
    /// (`others`). Streaming overlaps one request's socket and disk time; with two or more
    /// puts in flight their socket and disk times overlap each other already, and fewer,
    /// whole-body writes measured faster (4 MiB puts, A/B runs on b545f97's pipeline, before
    /// huge-page buffers: 2 in flight 1.80-1.91 GB/s whole against 1.49-1.53 streamed; 8 in
    /// flight 2.68 and 2.35 with this rule against 2.16 and 1.95 streaming every put).
    pub(super) fn streams(&self, f: &Frame, others: usize) -> bool {
        f.op == Op::Put
            && others == 0
            && self.cfg.stream_chunk > 0
            && f.body_len as usize >= 2 * self.cfg.stream_chunk
            && !self.draining.load(Ordering::Relaxed)
    }

    /// Reads the body of the put `f` from `rd`, chunk by chunk, each written to disk while
    /// the next one arrives. Returns the rest of the request (the last writes, the index
    /// entry, the answer) to run as a task of its own, so the connection's next
    /// frame is read meanwhile; or the error that ends the connection (it ended or stalled
    /// inside the body). A record refused for its header or for lack of space has its body
    /// read and dropped, and is answered with the reason.
    pub(super) async fn receive_put<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        f: Frame,
        rd: &mut R,
    ) -> Result<Finish, ReadError> {
        self.counters.puts.inc();
        self.counters.streamed_puts.inc();
        let len = f.body_len as usize;
        let chunk = self.cfg.stream_chunk;
        let limit = self.cfg.stall_timeout;
        let mut first = self.bufs.take(chunk);
        read_part(rd, &mut first, limit).await?;
        let header = match check_header(&first, f.key, Some(len)) {
            Ok(h) => h,
            Err(e) => {
                self.skip_body(rd, len - chunk, first).await?;
                self.counters.bad_records.inc();
                return Ok(self.answered(f, Instant::now(), Status::Error, e));
            }
        };
        // Space is taken (a segment may roll, and another be evicted) only for a record whose
        // header checks out.
        let s = self.clone();
        let slot = match tokio::task::spawn_blocking(move || s.store.reserve_record(len)).await {
            Ok(Ok(slot)) => Arc::new(slot),
            Ok(Err(e)) => {
                self.skip_body(rd, len - chunk, first).await?;
                return Ok(self.answered(f, Instant::now(), super::status_of(&e), e));
            }
            Err(e) => {
                self.skip_body(rd, len - chunk, first).await?;
                let e = Error::new(ErrorKind::Io, format!("put task failed: {e}"));
                return Ok(self.answered(f, Instant::now(), Status::Error, e));
            }
        };
        // The payload is checksummed chunk by chunk as it arrives, on this task (each chunk is
        // still in the cache its receive copy left it in).
        let mut hasher = PayloadHasher::for_header(&header);
        let write = |at: usize, c: Arc<AlignedBuf>| -> Part {
            let slot = slot.clone();
            tokio::task::spawn_blocking(move || {
                let res = slot.write_part(at, &c);
                (c, res)
            })
        };
        hasher.feed(0, &first);
        let first = Arc::new(first);
        let mut parts = std::collections::VecDeque::from([write(0, first.clone())]);
        // Chunk writes of this put in flight, at most; past that the reader waits for the
        // oldest (bounding the blocking threads one large put can take).
        const WRITES_IN_FLIGHT: usize = 8;
        let mut failed: Option<Error> = None;
        let mut at = chunk;
        while at < len {
            if parts.len() >= WRITES_IN_FLIGHT {
                let oldest = parts.pop_front().expect("not empty");
                self.settle_one(oldest, &mut failed).await;
            }
            let n = chunk.min(len - at);
            let mut c = self.bufs.take(n);
            if let Err(e) = read_part(rd, &mut c, limit).await {
                // The connection ends; the extent is abandoned once its writes are done.
                let me = self.clone();
                tokio::spawn(async move {
                    me.settle(parts, &mut failed).await;
                    me.abandon(slot).await;
                    me.counters.errors.inc();
                });
                return Err(e);
            }
            hasher.feed(at, &c);
            parts.push_back(write(at, Arc::new(c)));
            at += n;
        }
        // Timed from the body's last byte, as a put read whole is (its time in the server).
        let t0 = Instant::now();
        let matches = hasher.digest() == Some(header.payload_checksum());
        let me = self.clone();
        Ok(Box::pin(async move {
            me.settle(parts, &mut failed).await;
            let outcome = if !matches {
                me.counters.bad_records.inc();
                Err(Error::from(
                    kvtier_core::block::VerifyError::PayloadChecksum,
                ))
            } else if let Some(e) = failed {
                Err(e)
            } else {
                // On a blocking thread: ending the reservation may seal the segment (a page
                // write), and a synced store syncs.
                let (s, sl) = (me.clone(), slot.clone());
                let res = tokio::task::spawn_blocking(move || s.store.commit_record(&sl, f.key))
                    .await
                    .unwrap_or_else(|e| {
                        Err(Error::new(ErrorKind::Io, format!("put task failed: {e}")))
                    });
                res
            };
            me.recycle(first);
            if let Err(e) = outcome {
                me.abandon(slot).await;
                return me.refusal(f, t0, Status::Error, e);
            }
            // Write-around, as for a put read whole: an older cached copy is replaced.
            let old = me.cache.lock().forget(&f.key);
            if let Some(old) = old {
                me.recycle(old);
            }
            me.latency.observe(PoolOp::Put, t0.elapsed());
            (Frame::response(&f, Status::Ok, 0), Body::Empty)
        }))
    }

    /// Waits for one chunk write, gives the chunk back, and keeps the first failure.
    async fn settle_one(&self, part: Part, failed: &mut Option<Error>) {
        match part.await {
            Ok((c, res)) => {
                if let Err(e) = res {
                    failed.get_or_insert(Error::io("writing a streamed record", e));
                }
                self.recycle(c);
            }
            Err(e) => {
                failed.get_or_insert(Error::new(ErrorKind::Io, format!("write task failed: {e}")));
            }
        }
    }

    /// Waits for every chunk write still in flight (see [`settle_one`](Self::settle_one)).
    async fn settle(&self, parts: std::collections::VecDeque<Part>, failed: &mut Option<Error>) {
        for p in parts {
            self.settle_one(p, failed).await;
        }
    }

    /// Abandons a record (a page write: on a blocking thread).
    async fn abandon(self: &Arc<Self>, slot: Arc<RecordSlot>) {
        let s = self.clone();
        let _ = tokio::task::spawn_blocking(move || s.store.abandon_record(&slot)).await;
    }

    /// Reads and drops `left` more body bytes (a refused put's), reusing `buf`.
    async fn skip_body<R: AsyncRead + Unpin>(
        &self,
        rd: &mut R,
        mut left: usize,
        mut buf: AlignedBuf,
    ) -> Result<(), ReadError> {
        while left > 0 {
            let n = left.min(buf.len());
            read_part(rd, &mut buf[..n], self.cfg.stall_timeout).await?;
            left -= n;
        }
        self.bufs.give(buf);
        Ok(())
    }

    /// An error answer to a streamed put, counted and timed like any request's.
    fn refusal(&self, f: Frame, t0: Instant, status: Status, e: Error) -> (Frame, Body) {
        self.latency.observe(PoolOp::Put, t0.elapsed());
        tracing::debug!(key = %f.key, ?status, reason = %e, "streamed put refused");
        self.failed(&f, status, &e)
    }

    /// [`refusal`](Self::refusal), as the rest of a request.
    fn answered(&self, f: Frame, t0: Instant, status: Status, e: Error) -> Finish {
        let resp = self.refusal(f, t0, status, e);
        Box::pin(std::future::ready(resp))
    }
}
