//! The UCX data plane of the pool (feature `ucx`): on an RDMA fabric the fast path, here a
//! correctness check over UCX's tcp and shared-memory transports.
//!
//! Bound with bindgen against the system's UCX headers (Debian `libucx-dev`, UCX 1.13).
//! Connection setup happens on the TCP data-plane connection: handshake and authentication as
//! for any client, then a `UcxHello` frame carrying the client's worker address, answered with a
//! client id and the server's worker address (UCX 1.13's sockaddr listener hangs with `sm`, so
//! addresses travel over our own socket). That TCP connection stays open: its closing ends the
//! session. Frames then travel as UCX tagged messages, header and body separately:
//!
//! ```text
//! tag bit 63       body (1) or header (0)
//! tag bits 62..40  client id
//! tag bits 39..0   request id
//! ```
//!
//! Each side runs one thread that owns its UCX context and worker (UCX workers are used from
//! one thread): it sends queued frames, probes for incoming headers, posts receives for bodies
//! straight into page-aligned buffers, and sleeps on the worker's event descriptor (armed) and
//! an eventfd that the tokio side rings when it queues something. Requests are handled by the
//! same code as TCP requests (the [`crate::wire::Handler`] that the pool server is), so semantics are identical.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::wire::{Frame, HEADER_LEN};
use kvtier_core::buf::{AlignedBuf, BufPool};
use kvtier_core::error::{Error, ErrorKind, Result};

/// Generated bindings to `<ucp/api/ucp.h>`.
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    unused_imports,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/ucx.rs"));
}

const BODY_BIT: u64 = 1 << 63;
const ID_BITS: u32 = 40;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
const CID_MASK: u64 = (1 << 23) - 1;

fn tag(cid: u32, id: u64, body: bool) -> u64 {
    ((body as u64) << 63) | ((cid as u64 & CID_MASK) << ID_BITS) | (id & ID_MASK)
}

fn cid_of(tag: u64) -> u32 {
    ((tag >> ID_BITS) & CID_MASK) as u32
}

fn ucx_err(what: &str, status: sys::ucs_status_t) -> Error {
    // SAFETY: ucs_status_string returns a static C string for any status.
    let msg = unsafe { std::ffi::CStr::from_ptr(sys::ucs_status_string(status)) }
        .to_string_lossy()
        .into_owned();
    Error::new(ErrorKind::Unavailable, format!("UCX {what} failed: {msg}"))
}

/// A status pointer as UCX returns it: NULL (done), an error, or a request to poll.
enum Posted {
    Done,
    Pending(*mut c_void),
}

fn posted(what: &str, p: sys::ucs_status_ptr_t) -> Result<Posted> {
    let v = p as usize;
    let err_last = sys::UCS_ERR_LAST as isize as usize;
    if p.is_null() {
        Ok(Posted::Done)
    } else if v >= err_last {
        Err(ucx_err(what, v as isize as sys::ucs_status_t))
    } else {
        Ok(Posted::Pending(p))
    }
}

/// Polls a request: `None` while in progress, else its final status (the request is freed).
fn check(req: *mut c_void) -> Option<sys::ucs_status_t> {
    // SAFETY: `req` is a live request returned by a *_nbx call and not yet freed.
    let st = unsafe { sys::ucp_request_check_status(req) };
    if st == sys::UCS_INPROGRESS as sys::ucs_status_t {
        return None;
    }
    // SAFETY: completed; freed exactly once.
    unsafe { sys::ucp_request_free(req) };
    Some(st)
}

/// A UCX context and one worker, owned by one thread.
struct Worker {
    ctx: sys::ucp_context_h,
    w: sys::ucp_worker_h,
    efd: i32,
}

impl Worker {
    fn new() -> Result<Worker> {
        // SAFETY: plain calls into UCX with initialised parameter structs; every handle is
        // checked before use and released in Drop.
        unsafe {
            let mut config: *mut sys::ucp_config_t = std::ptr::null_mut();
            let st = sys::ucp_config_read(std::ptr::null(), std::ptr::null(), &mut config);
            if st != sys::UCS_OK as sys::ucs_status_t {
                return Err(ucx_err("reading the configuration", st));
            }
            let params = sys::ucp_params_t {
                field_mask: sys::UCP_PARAM_FIELD_FEATURES as u64,
                features: (sys::UCP_FEATURE_TAG | sys::UCP_FEATURE_WAKEUP) as u64,
                ..Default::default()
            };
            let mut ctx: sys::ucp_context_h = std::ptr::null_mut();
            let st = sys::ucp_init_version(
                sys::UCP_API_MAJOR,
                sys::UCP_API_MINOR,
                &params,
                config,
                &mut ctx,
            );
            sys::ucp_config_release(config);
            if st != sys::UCS_OK as sys::ucs_status_t {
                return Err(ucx_err("initialising", st));
            }
            let wp = sys::ucp_worker_params_t {
                field_mask: sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
                thread_mode: sys::UCS_THREAD_MODE_SINGLE,
                ..Default::default()
            };
            let mut w: sys::ucp_worker_h = std::ptr::null_mut();
            let st = sys::ucp_worker_create(ctx, &wp, &mut w);
            if st != sys::UCS_OK as sys::ucs_status_t {
                sys::ucp_cleanup(ctx);
                return Err(ucx_err("creating a worker", st));
            }
            let mut efd = -1;
            let st = sys::ucp_worker_get_efd(w, &mut efd);
            if st != sys::UCS_OK as sys::ucs_status_t {
                sys::ucp_worker_destroy(w);
                sys::ucp_cleanup(ctx);
                return Err(ucx_err("getting the worker's event descriptor", st));
            }
            Ok(Worker { ctx, w, efd })
        }
    }

    fn address(&self) -> Result<Vec<u8>> {
        // SAFETY: the worker is live; the address is copied and released.
        unsafe {
            let mut a: *mut sys::ucp_address_t = std::ptr::null_mut();
            let mut len = 0usize;
            let st = sys::ucp_worker_get_address(self.w, &mut a, &mut len);
            if st != sys::UCS_OK as sys::ucs_status_t {
                return Err(ucx_err("getting the worker address", st));
            }
            let v = std::slice::from_raw_parts(a as *const u8, len).to_vec();
            sys::ucp_worker_release_address(self.w, a);
            Ok(v)
        }
    }

    fn connect(&self, addr: &[u8]) -> Result<sys::ucp_ep_h> {
        let params = sys::ucp_ep_params_t {
            field_mask: (sys::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
                | sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE) as u64,
            address: addr.as_ptr() as *const sys::ucp_address_t,
            err_mode: sys::UCP_ERR_HANDLING_MODE_PEER,
            ..Default::default()
        };
        let mut ep: sys::ucp_ep_h = std::ptr::null_mut();
        // SAFETY: the address bytes outlive the call (UCX copies what it needs).
        let st = unsafe { sys::ucp_ep_create(self.w, &params, &mut ep) };
        if st != sys::UCS_OK as sys::ucs_status_t {
            return Err(ucx_err("connecting an endpoint", st));
        }
        Ok(ep)
    }

    fn close(&self, ep: sys::ucp_ep_h) {
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS,
            flags: sys::UCP_EP_CLOSE_FLAG_FORCE,
            ..Default::default()
        };
        // SAFETY: `ep` is live and closed once; the request is polled to completion.
        let p = unsafe { sys::ucp_ep_close_nbx(ep, &param) };
        if let Ok(Posted::Pending(req)) = posted("closing an endpoint", p) {
            for _ in 0..100_000 {
                self.progress();
                if check(req).is_some() {
                    return;
                }
            }
        }
    }

    fn progress(&self) -> bool {
        let mut any = false;
        // SAFETY: the worker is live and used from this thread only.
        while unsafe { sys::ucp_worker_progress(self.w) } != 0 {
            any = true;
        }
        any
    }

    /// Sends `len` bytes at `ptr` with `tag`. The bytes must stay valid until the returned
    /// request (if any) completes.
    fn send(&self, ep: sys::ucp_ep_h, ptr: *const u8, len: usize, tag: u64) -> Result<Posted> {
        let param = sys::ucp_request_param_t::default();
        // SAFETY: the caller keeps `ptr..ptr+len` alive until completion.
        let p = unsafe { sys::ucp_tag_send_nbx(ep, ptr as *const c_void, len, tag, &param) };
        posted("sending", p)
    }

    /// Receives the next header message (body bit clear): its tag and frame bytes.
    fn recv_header(&self) -> Result<Option<(u64, [u8; HEADER_LEN])>> {
        let mut info = sys::ucp_tag_recv_info_t::default();
        // SAFETY: probing with remove=1 hands us the message, which we receive at once.
        let msg = unsafe { sys::ucp_tag_probe_nb(self.w, 0, BODY_BIT, 1, &mut info) };
        if msg.is_null() {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        let len = info.length.min(HEADER_LEN);
        let param = sys::ucp_request_param_t::default();
        // SAFETY: `h` lives on this frame until the request completes below.
        let p = unsafe {
            sys::ucp_tag_msg_recv_nbx(self.w, h.as_mut_ptr() as *mut c_void, len, msg, &param)
        };
        if let Posted::Pending(req) = posted("receiving a header", p)? {
            loop {
                self.progress();
                if let Some(st) = check(req) {
                    if st != sys::UCS_OK as sys::ucs_status_t {
                        return Err(ucx_err("receiving a header", st));
                    }
                    break;
                }
            }
        }
        if info.length != HEADER_LEN {
            return Err(Error::invalid(format!(
                "a UCX header message of {} bytes (expected {HEADER_LEN})",
                info.length
            )));
        }
        Ok(Some((info.sender_tag, h)))
    }

    /// Posts the receive of a body with exactly `tag` into `buf`.
    fn recv_body(&self, buf: &mut AlignedBuf, tag: u64) -> Result<Posted> {
        let param = sys::ucp_request_param_t::default();
        // SAFETY: the caller keeps `buf` alive and unmoved until completion.
        let p = unsafe {
            sys::ucp_tag_recv_nbx(
                self.w,
                buf.as_mut_ptr() as *mut c_void,
                buf.len(),
                tag,
                u64::MAX,
                &param,
            )
        };
        posted("receiving a body", p)
    }

    /// Arms the worker and sleeps until it or one of `fds` is readable, at most `ms`.
    fn wait(&self, fds: &[i32], ms: i32) {
        // SAFETY: arming a live worker; UCS_ERR_BUSY means events are pending (do not sleep).
        let st = unsafe { sys::ucp_worker_arm(self.w) };
        if st != sys::UCS_OK as sys::ucs_status_t {
            return;
        }
        let mut p: Vec<libc::pollfd> = std::iter::once(self.efd)
            .chain(fds.iter().copied())
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfd.
        unsafe { libc::poll(p.as_mut_ptr(), p.len() as _, ms) };
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: handles created in `new`, destroyed once, endpoints closed before.
        unsafe {
            sys::ucp_worker_destroy(self.w);
            sys::ucp_cleanup(self.ctx);
        }
    }
}

/// An eventfd the tokio side rings to wake a UCX thread.
pub(crate) struct Bell(OwnedFd);

impl Bell {
    fn new() -> Result<Bell> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io(
                "creating an eventfd",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Bell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the thread.
    pub(crate) fn ring(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr() as *const c_void, 8) };
    }

    fn drain(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reading 8 bytes from our non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), b.as_mut_ptr() as *mut c_void, 8) };
    }
}

/// What keeps a send's bytes alive until UCX is done with them.
enum Keep {
    Header(Box<[u8; HEADER_LEN]>),
    Record(Arc<AlignedBuf>),
    Bytes(Vec<u8>),
}

impl Keep {
    fn ptr_len(&self, body_len: usize) -> (*const u8, usize) {
        match self {
            Keep::Header(h) => (h.as_ptr(), HEADER_LEN),
            Keep::Record(r) => (r.as_ptr(), body_len),
            Keep::Bytes(b) => (b.as_ptr(), b.len()),
        }
    }
}

/// Sends a frame and its body; pushes the requests still in flight onto `inflight`.
fn send_frame(
    w: &Worker,
    ep: sys::ucp_ep_h,
    cid: u32,
    f: &Frame,
    body: Option<Keep>,
    inflight: &mut Vec<(*mut c_void, Keep)>,
) -> Result<()> {
    let h = Keep::Header(Box::new(f.encode()));
    let mut parts = vec![(h, tag(cid, f.id, false))];
    if let Some(b) = body {
        if f.body_len > 0 {
            parts.push((b, tag(cid, f.id, true)));
        }
    }
    for (keep, t) in parts {
        let (p, len) = keep.ptr_len(f.body_len as usize);
        if let Posted::Pending(req) = w.send(ep, p, len, t)? {
            inflight.push((req, keep));
        }
    }
    Ok(())
}

/// Removes the entries whose request completed, with its final status.
fn completed<T>(pending: &mut Vec<(*mut c_void, T)>) -> Vec<(T, sys::ucs_status_t)> {
    let mut done = Vec::new();
    let mut i = 0;
    while i < pending.len() {
        match check(pending[i].0) {
            None => i += 1,
            Some(st) => done.push((pending.swap_remove(i).1, st)),
        }
    }
    done
}

fn reap(inflight: &mut Vec<(*mut c_void, Keep)>) -> bool {
    let before = inflight.len();
    inflight.retain(|(req, _)| check(*req).is_none());
    before != inflight.len()
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

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
    use super::wire::{Op, Status};
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
