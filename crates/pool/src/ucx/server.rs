//! The server side of the UCX data plane: one thread serving every UCX client of a pool server
//! through its [`crate::wire::Handler`].

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::*;
use crate::wire::Frame;
use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind, Result};

/// Messages from the server's tokio side to its UCX thread.
pub(crate) enum ToServer {
    /// A client's worker address; answer its id and the server's address.
    Register(Vec<u8>, oneshot::Sender<Result<(u32, Vec<u8>)>>),
    /// The client's TCP control connection closed.
    Unregister(u32),
    /// A response to send.
    Send(u32, Frame, crate::wire::Body),
}

/// The server's UCX thread, reached through a channel and a bell.
pub(crate) struct UcxServer {
    tx: std::sync::mpsc::Sender<ToServer>,
    bell: Arc<Bell>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UcxServer {
    /// Starts the UCX thread; requests are handed to `handle` on `rt`.
    pub(crate) fn start(
        server: Arc<dyn crate::wire::Handler>,
        rt: tokio::runtime::Handle,
        max_body: u32,
    ) -> Result<UcxServer> {
        let (tx, rx) = std::sync::mpsc::channel::<ToServer>();
        let bell = Arc::new(Bell::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (tx2, bell2, stop2) = (tx.clone(), bell.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("kvtier-ucx".into())
            .spawn(move || {
                let w = match Worker::new() {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                server_loop(w, rx, tx2, bell2, stop2, server, rt, max_body);
            })
            .map_err(|e| Error::io("starting the UCX thread", e))?;
        ready_rx
            .recv()
            .map_err(|_| Error::new(ErrorKind::Io, "the UCX thread died"))??;
        Ok(UcxServer {
            tx,
            bell,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a message for the UCX thread.
    pub(crate) fn send(&self, m: ToServer) {
        let _ = self.tx.send(m);
        self.bell.ring();
    }
}

impl Drop for UcxServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.bell.ring();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn server_loop(
    w: Worker,
    rx: std::sync::mpsc::Receiver<ToServer>,
    tx: std::sync::mpsc::Sender<ToServer>,
    bell: Arc<Bell>,
    stop: Arc<AtomicBool>,
    server: Arc<dyn crate::wire::Handler>,
    rt: tokio::runtime::Handle,
    max_body: u32,
) {
    let my_addr = w.address().unwrap_or_default();
    let mut eps: HashMap<u32, sys::ucp_ep_h> = HashMap::new();
    let mut next_cid = 1u32;
    let mut inflight: Vec<(*mut c_void, Keep)> = Vec::new();
    let mut bodies: Vec<(*mut c_void, (u32, Frame, AlignedBuf))> = Vec::new();
    let bufs = BufPool::new(64 << 20);
    let dispatch = |cid: u32, f: Frame, body: AlignedBuf| {
        let (s, tx, bell) = (server.clone(), tx.clone(), bell.clone());
        rt.spawn(async move {
            let (rf, rb) = s.handle(f, body, None).await;
            let _ = tx.send(ToServer::Send(cid, rf, rb));
            bell.ring();
        });
    };
    while !stop.load(Ordering::Relaxed) {
        let mut busy = w.progress();
        bell.drain();
        while let Ok(m) = rx.try_recv() {
            busy = true;
            match m {
                ToServer::Register(addr, reply) => {
                    let cid = next_cid;
                    next_cid = (next_cid % CID_MASK as u32) + 1;
                    let r = w.connect(&addr).map(|ep| {
                        eps.insert(cid, ep);
                        (cid, my_addr.clone())
                    });
                    let _ = reply.send(r);
                }
                ToServer::Unregister(cid) => {
                    if let Some(ep) = eps.remove(&cid) {
                        w.close(ep);
                    }
                }
                ToServer::Send(cid, f, body) => {
                    let Some(&ep) = eps.get(&cid) else { continue };
                    let keep = match body {
                        crate::wire::Body::Empty => None,
                        crate::wire::Body::Bytes(b) => Some(Keep::Bytes(b)),
                        crate::wire::Body::Record(r) => Some(Keep::Record(r)),
                    };
                    if let Err(e) = send_frame(&w, ep, cid, &f, keep, &mut inflight) {
                        tracing::warn!(client = cid, error = %e, "UCX send failed");
                    }
                }
            }
        }
        busy |= reap(&mut inflight);
        // New requests: headers, then their bodies straight into page-aligned buffers.
        loop {
            match w.recv_header() {
                Ok(None) => break,
                Ok(Some((t, h))) => {
                    busy = true;
                    let cid = cid_of(t);
                    match Frame::decode(&h, max_body) {
                        Ok(f) if f.body_len == 0 => dispatch(cid, f, AlignedBuf::zeroed(0)),
                        Ok(f) => {
                            let mut buf = bufs.take(f.body_len as usize);
                            match w.recv_body(&mut buf, tag(cid, f.id, true)) {
                                Ok(Posted::Done) => dispatch(cid, f, buf),
                                Ok(Posted::Pending(req)) => bodies.push((req, (cid, f, buf))),
                                Err(e) => {
                                    tracing::warn!(client = cid, error = %e, "UCX receive failed")
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(client = cid, reason = %e, "closing a UCX client: bad frame");
                            if let Some(ep) = eps.remove(&cid) {
                                w.close(ep);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "UCX receive failed");
                    break;
                }
            }
        }
        for ((cid, f, buf), st) in completed(&mut bodies) {
            busy = true;
            if st == sys::UCS_OK as sys::ucs_status_t {
                dispatch(cid, f, buf);
            } else {
                tracing::warn!(client = cid, error = %ucx_err("receiving a body", st), "dropping a request");
            }
        }
        if !busy {
            w.wait(&[bell.0.as_raw_fd()], 100);
        }
    }
    for (_, ep) in eps.drain() {
        w.close(ep);
    }
}
