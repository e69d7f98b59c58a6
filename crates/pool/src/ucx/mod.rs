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

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::wire::{Frame, HEADER_LEN};
use kvtier_core::buf::AlignedBuf;
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

mod client;
mod server;

pub(crate) use client::connect_client;
pub(crate) use server::{ToServer, UcxServer};
