//! The client side of the UCX data plane: a thread per connection sending the pool client's
//! frames and answering its pending requests.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::wire::Frame;
use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind, Result};

type Outgoing = (Frame, Option<Arc<AlignedBuf>>, Vec<u8>);
type Pending = Arc<parking_lot::Mutex<HashMap<u64, oneshot::Sender<crate::wire::Reply>>>>;

/// Starts a client's UCX thread over an authenticated TCP connection: exchanges worker
/// addresses with `UcxHello`, then serves frames from `out` and answers into `pending`.
pub(crate) async fn connect_client(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    out: mpsc::Receiver<Outgoing>,
    pending: Pending,
    dead: Arc<AtomicBool>,
    max_body: u32,
    bufs: Arc<BufPool>,
) -> Result<Arc<Bell>> {
    use crate::wire::{Op, Status};
    use tokio::io::AsyncWriteExt;
    let bell = Arc::new(Bell::new()?);
    let (addr_tx, addr_rx) = oneshot::channel::<Result<Vec<u8>>>();
    let (peer_tx, peer_rx) = std::sync::mpsc::channel::<Option<(u32, Vec<u8>)>>();
    let b2 = bell.clone();
    let dead_watch = dead.clone();
    std::thread::Builder::new()
        .name("kvtier-ucx-client".into())
        .spawn(move || {
            let w = match Worker::new().and_then(|w| w.address().map(|a| (w, a))) {
                Ok((w, a)) => {
                    let _ = addr_tx.send(Ok(a));
                    w
                }
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return;
                }
            };
            let Ok(Some((cid, server_addr))) = peer_rx.recv() else {
                return;
            };
            match w.connect(&server_addr) {
                Ok(ep) => client_loop(&w, ep, cid, out, pending, dead, b2, max_body, bufs),
                Err(e) => {
                    tracing::warn!(error = %e, "UCX connect failed");
                    dead.store(true, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| Error::io("starting the UCX client thread", e))?;
    let addr = addr_rx
        .await
        .map_err(|_| Error::new(ErrorKind::Io, "the UCX client thread died"))??;
    let f = Frame::request(
        Op::UcxHello,
        0,
        kvtier_core::BlockKey::default(),
        addr.len() as u32,
    );
    let res = async {
        wr.write_all(&f.encode()).await?;
        wr.write_all(&addr).await
    }
    .await;
    if let Err(e) = res {
        let _ = peer_tx.send(None);
        return Err(Error::io("sending the UCX address", e));
    }
    match crate::wire::conn::read_frame(&mut rd, 1 << 20).await {
        Ok((f, body)) if f.op == Op::UcxHello && f.status == Status::Ok && body.len() > 4 => {
            let cid = u32::from_le_bytes(body[..4].try_into().expect("4 bytes"));
            let _ = peer_tx.send(Some((cid, body[4..].to_vec())));
        }
        Ok((_, body)) => {
            let _ = peer_tx.send(None);
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "the pool server refused UCX: {}",
                    String::from_utf8_lossy(&body)
                ),
            ));
        }
        Err(e) => {
            let _ = peer_tx.send(None);
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("UCX setup failed: {e}"),
            ));
        }
    }
    // The TCP connection is the session: keep it open; its closing by the server ends UCX.
    let (b3, d3) = (bell.clone(), dead_watch);
    tokio::spawn(async move {
        let _keep = wr;
        let mut b = [0u8; 64];
        use tokio::io::AsyncReadExt;
        while matches!(rd.read(&mut b).await, Ok(n) if n > 0) {}
        d3.store(true, Ordering::Relaxed);
        b3.ring();
    });
    Ok(bell)
}

#[allow(clippy::too_many_arguments)]
fn client_loop(
    w: &Worker,
    ep: sys::ucp_ep_h,
    cid: u32,
    mut out: mpsc::Receiver<Outgoing>,
    pending: Pending,
    dead: Arc<AtomicBool>,
    bell: Arc<Bell>,
    max_body: u32,
    bufs: Arc<BufPool>,
) {
    let mut inflight: Vec<(*mut c_void, Keep)> = Vec::new();
    let mut bodies: Vec<(*mut c_void, (Frame, AlignedBuf))> = Vec::new();
    let fail = |why: String| {
        dead.store(true, Ordering::Relaxed);
        for (_, tx) in pending.lock().drain() {
            let _ = tx.send(Err(Error::new(ErrorKind::Unavailable, why.clone())));
        }
    };
    let deliver = |f: Frame, body: AlignedBuf| {
        if let Some(tx) = pending.lock().remove(&f.id) {
            let _ = tx.send(Ok((f, body, None)));
        }
    };
    loop {
        let mut busy = w.progress();
        bell.drain();
        loop {
            match out.try_recv() {
                Ok((f, rec, bytes)) => {
                    busy = true;
                    let keep = match rec {
                        Some(r) => Some(Keep::Record(r)),
                        None => Some(Keep::Bytes(bytes)),
                    };
                    if let Err(e) = send_frame(w, ep, cid, &f, keep, &mut inflight) {
                        fail(e.to_string());
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    // The client dropped this connection.
                    dead.store(true, Ordering::Relaxed);
                    w.close(ep);
                    return;
                }
            }
        }
        busy |= reap(&mut inflight);
        loop {
            match w.recv_header() {
                Ok(None) => break,
                Ok(Some((_, h))) => {
                    busy = true;
                    match Frame::decode(&h, max_body) {
                        Ok(f) if f.body_len == 0 => deliver(f, AlignedBuf::zeroed(0)),
                        Ok(f) => {
                            let mut buf = bufs.take(f.body_len as usize);
                            match w.recv_body(&mut buf, tag(cid, f.id, true)) {
                                Ok(Posted::Done) => deliver(f, buf),
                                Ok(Posted::Pending(req)) => bodies.push((req, (f, buf))),
                                Err(e) => fail(e.to_string()),
                            }
                        }
                        Err(e) => fail(format!("bad frame from the server: {e}")),
                    }
                }
                Err(e) => {
                    fail(e.to_string());
                    break;
                }
            }
        }
        for ((f, buf), st) in completed(&mut bodies) {
            busy = true;
            if st == sys::UCS_OK as sys::ucs_status_t {
                deliver(f, buf);
            } else {
                fail(ucx_err("receiving a body", st).to_string());
            }
        }
        if dead.load(Ordering::Relaxed) && inflight.is_empty() {
            fail("the UCX session ended".into());
            w.close(ep);
            return;
        }
        if !busy {
            w.wait(&[bell.0.as_raw_fd()], 100);
        }
    }
}
