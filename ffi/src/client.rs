//! The engine's connection to the node agent through the ABI: connect, register KV memory,
//! look up, save, and load asynchronously with a ticket.
//!
//! A client is safe to call from several threads (calls are serialised). After
//! [`kvt_client_close`] every call returns `KVT_ERR_CLOSED` until [`kvt_client_free`].

use std::ffi::c_char;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvtier_agent::client::{AgentClient, ClientConfig};
use kvtier_core::key::BlockKey;
use kvtier_core::layout::KvLayout;

use crate::keys::kvt_key;
use crate::layout::kvt_layout;
use crate::status::{arg, guard, kvt_status, slice_arg, str_arg, FfiError, KVT_ERR_CLOSED};

/// How to reach the agent.
#[repr(C)]
pub struct kvt_client_params {
    /// The agent's socket path (what `kvtier up` prints).
    pub socket: *const c_char,
    /// The engine's KV layout (the agent checks its object size; loads check its digest).
    pub layout: *const kvt_layout,
    /// A name for the agent's logs, or NULL.
    pub engine: *const c_char,
    /// Deadline of every call in milliseconds; 0 for the default (2000).
    pub timeout_ms: u32,
    /// Time the agent may spend reading through from the pool per load, in ms; 0 for 1000.
    pub load_budget_ms: u32,
}

/// Where the registered layer tensors live.
pub(crate) enum Memory {
    /// Host pointers: copies are memcpy.
    Host(Vec<usize>),
    /// Device pointers: copies go through the CUDA driver on the copier's stream.
    #[cfg(feature = "cuda")]
    Device {
        ptrs: Vec<u64>,
        copier: kvtier_core::gpu::CudaCopier,
    },
}

/// Registered KV memory: the layer tensors of one engine.
pub(crate) struct Registered {
    pub(crate) layout: KvLayout,
    pub(crate) memory: Memory,
}

impl Registered {
    fn gather(&self, block: u32, payload: &mut [u8]) -> kvtier_core::Result<()> {
        match &self.memory {
            Memory::Host(layers) => {
                let len = self.layout.layer_bytes() as usize;
                // SAFETY: registered pointers are valid for `len` bytes (kvt_register_kv contract).
                let views: Vec<&[u8]> = layers
                    .iter()
                    .map(|&p| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
                    .collect();
                self.layout.gather(&views, block, payload)
            }
            #[cfg(feature = "cuda")]
            Memory::Device { ptrs, copier } => copier.gather(&self.layout, ptrs, block, payload),
        }
    }

    fn scatter(&self, payload: &[u8], block: u32) -> kvtier_core::Result<()> {
        match &self.memory {
            Memory::Host(layers) => {
                let ptrs: Vec<*mut u8> = layers.iter().map(|&p| p as *mut u8).collect();
                // SAFETY: registered pointers are valid for a layer's bytes (kvt_register_kv
                // contract), and the engine leaves the blocks being loaded alone until the
                // ticket completes.
                unsafe { self.layout.scatter_to(payload, &ptrs, block) }
            }
            #[cfg(feature = "cuda")]
            Memory::Device { ptrs, copier } => copier.scatter(&self.layout, payload, ptrs, block),
        }
    }

    /// Copies a window of loaded objects into their blocks (`(block, payload)`); whether each
    /// landed. Host memory goes layer by layer: `on_layer(l)` is called, in order, once layer
    /// `l` of every block of the window is copied, so that the engine can start computing on
    /// the first layers while the later ones are copied. On up to [`COPY_THREADS`] threads at
    /// once, each taking whole blocks (one thread copies a large load at about a third of the
    /// machine's memory bandwidth). Device memory: block after block on the copier's stream,
    /// every layer reported at the end.
    pub(crate) fn scatter_many(
        &self,
        items: &[(u32, &[u8])],
        on_layer: &(dyn Fn(u32) + Sync),
    ) -> Vec<bool> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.scatter_on(items, on_layer, threads.min(COPY_THREADS))
    }

    /// [`scatter_many`](Self::scatter_many) on at most `threads` threads.
    pub(crate) fn scatter_on(
        &self,
        items: &[(u32, &[u8])],
        on_layer: &(dyn Fn(u32) + Sync),
        threads: usize,
    ) -> Vec<bool> {
        let num_layers = self.layout.num_layers();
        let threads = threads.min(items.len()).max(1);
        let distinct = {
            let mut seen = std::collections::HashSet::with_capacity(items.len());
            items.iter().all(|&(b, _)| seen.insert(b))
        };
        let layers = match &self.memory {
            Memory::Host(layers) if distinct => layers,
            _ => {
                // A window naming a block twice is copied in order, whole block by whole
                // block (the last copy wins), as is device memory.
                let ok = items
                    .iter()
                    .map(|&(b, p)| self.scatter(p, b).is_ok())
                    .collect();
                (0..num_layers).for_each(on_layer);
                return ok;
            }
        };
        let layout = &self.layout;
        // Per layer, how many copier threads are done with it; the next layer to report.
        let progress = Mutex::new((vec![0usize; num_layers as usize], 0u32));
        let per = items.len().div_ceil(threads).max(1);
        let parts = items.chunks(per).count().max(1);
        let layer_done = |layer: u32| {
            let Ok(mut g) = progress.lock() else { return };
            let (done, next) = &mut *g;
            done[layer as usize] += 1;
            while *next < num_layers && done[*next as usize] == parts {
                on_layer(*next);
                *next += 1;
            }
        };
        let copy_part = |part: &[(u32, &[u8])]| {
            let ptrs: Vec<*mut u8> = layers.iter().map(|&p| p as *mut u8).collect();
            let mut ok = vec![true; part.len()];
            for layer in 0..num_layers {
                for (k, &(b, p)) in part.iter().enumerate() {
                    // SAFETY: registered pointers are valid for a layer's bytes
                    // (kvt_register_kv contract); the window's blocks are distinct (checked
                    // above), and the engine leaves them alone until the ticket completes.
                    ok[k] &= unsafe { layout.scatter_layer_to(p, &ptrs, b, layer) }.is_ok();
                }
                layer_done(layer);
            }
            ok
        };
        if parts == 1 {
            return copy_part(items);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = items
                .chunks(per)
                .map(|part| (part.len(), s.spawn(|| copy_part(part))))
                .collect();
            // A copier that panicked landed none of its blocks for sure: all of them fail.
            handles
                .into_iter()
                .flat_map(|(n, h)| h.join().unwrap_or_else(|_| vec![false; n]))
                .collect()
        })
    }
}

/// Threads that copy one load's window into host memory at most.
const COPY_THREADS: usize = 4;

pub(crate) struct Inner {
    pub(crate) client: Option<AgentClient>,
    /// A second session for background loads, connected at the first: a load waiting on reads
    /// from the pool holds it, not `client`, so saves and lookups go on meanwhile. Loads take
    /// their turns on it.
    pub(crate) loader: Arc<Mutex<Option<AgentClient>>>,
    pub(crate) layout: KvLayout,
    pub(crate) kv: Option<Registered>,
}

/// An opaque connection to the agent.
pub struct kvt_client {
    pub(crate) inner: Arc<Mutex<Inner>>,
}

pub(crate) fn closed() -> FfiError {
    FfiError {
        status: KVT_ERR_CLOSED,
        message: "the client was closed".into(),
    }
}

pub(crate) fn keys_of(keys: &[kvt_key]) -> Vec<BlockKey> {
    keys.iter().map(|&k| k.into()).collect()
}

/// A write to a socket whose peer vanished raises SIGPIPE, whose default action kills the
/// process: an agent restart must never take the engine down. When SIGPIPE is at its default,
/// ignore it (as gRPC's C core does); writes then fail with EPIPE, which we handle.
fn ignore_sigpipe() {
    // SAFETY: querying and setting a signal disposition with valid sigaction structs.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_DFL
        {
            let mut ign: libc::sigaction = std::mem::zeroed();
            ign.sa_sigaction = libc::SIG_IGN;
            libc::sigaction(libc::SIGPIPE, &ign, std::ptr::null_mut());
        }
    }
}

/// Connects to the agent and opens a session in `*out`.
///
/// If SIGPIPE is at its default disposition (terminate), this sets it to ignored, as gRPC does:
/// otherwise an agent that dies mid-call would kill the engine.
///
/// # Safety
/// `params` and its strings and layout must be valid; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_client_connect(
    params: *const kvt_client_params,
    out: *mut *mut kvt_client,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let p = unsafe { arg(params, "params") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: per the contract.
        let socket = unsafe { str_arg(p.socket, "params.socket") }?;
        // SAFETY: per the contract.
        let layout = unsafe { arg(p.layout, "params.layout") }?.layout.clone();
        let mut cfg = ClientConfig::new(socket, layout.digest(), layout.object_len());
        if !p.engine.is_null() {
            // SAFETY: per the contract.
            cfg.engine = unsafe { str_arg(p.engine, "params.engine") }?.to_string();
        }
        if p.timeout_ms > 0 {
            cfg.timeout = Duration::from_millis(p.timeout_ms as u64);
        }
        if p.load_budget_ms > 0 {
            cfg.load_budget = Duration::from_millis(p.load_budget_ms as u64);
        }
        ignore_sigpipe();
        let client = AgentClient::connect(cfg)?;
        let inner = Inner {
            client: Some(client),
            loader: Default::default(),
            layout,
            kv: None,
        };
        // SAFETY: writable per the contract.
        unsafe {
            *out = Box::into_raw(Box::new(kvt_client {
                inner: Arc::new(Mutex::new(inner)),
            }))
        };
        Ok(())
    })
}

/// Closes the connection (its leases are released by the agent). The handle stays valid, and
/// every call on it returns `KVT_ERR_CLOSED`, until [`kvt_client_free`]. NULL is a no-op.
///
/// # Safety
/// `client` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn kvt_client_close(client: *mut kvt_client) {
    // SAFETY: per the contract.
    if let Some(c) = unsafe { client.as_ref() } {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if let Ok(mut g) = c.inner.lock() {
                g.client = None;
                // The loads' session too, unless a load holds it (it ends with that load).
                if let Ok(mut l) = g.loader.try_lock() {
                    *l = None;
                }
            }
        }));
    }
}

/// Closes and frees a client. NULL is a no-op. Loads still in flight finish on their own.
///
/// # Safety
/// `client` must be NULL or a handle from [`kvt_client_connect`] not freed before.
#[no_mangle]
pub unsafe extern "C" fn kvt_client_free(client: *mut kvt_client) {
    if !client.is_null() {
        // SAFETY: per the contract.
        unsafe { kvt_client_close(client) };
        // SAFETY: created by Box::into_raw.
        drop(unsafe { Box::from_raw(client) });
    }
}

pub(crate) fn with_client<T>(
    client: *const kvt_client,
    f: impl FnOnce(&mut Inner) -> Result<T, FfiError>,
) -> Result<T, FfiError> {
    // SAFETY: the exported functions' contract: NULL or a live handle.
    let c = unsafe { arg(client, "client") }?;
    let mut g = c
        .inner
        .lock()
        .map_err(|_| FfiError::invalid("the client is poisoned by an earlier panic"))?;
    if g.client.is_none() {
        return Err(closed());
    }
    f(&mut g)
}

/// Registers the engine's KV memory: `n_layers` host pointers to the layer tensors of
/// `layout` (which must describe the same objects as the connection's layout). Saves and loads
/// copy between these tensors and the agent's arena.
///
/// # Safety
/// The layer pointers must stay valid, each for the layout's layer bytes, until the client is
/// freed or memory is registered again.
#[no_mangle]
pub unsafe extern "C" fn kvt_register_kv(
    client: *mut kvt_client,
    layout: *const kvt_layout,
    layers: *const *mut u8,
    n_layers: usize,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let l = unsafe { arg(layout, "layout") }?.layout.clone();
        // SAFETY: per the contract.
        let ptrs = unsafe { slice_arg(layers, n_layers, "layers") }?;
        if ptrs.len() != l.num_layers() as usize {
            return Err(FfiError::invalid(format!(
                "{} layer pointers given; the layout has {} layers",
                ptrs.len(),
                l.num_layers()
            )));
        }
        if let Some(i) = ptrs.iter().position(|p| p.is_null()) {
            return Err(FfiError::null(&format!("layers[{i}]")));
        }
        register(
            client,
            l,
            Memory::Host(ptrs.iter().map(|&p| p as usize).collect()),
        )
    })
}

/// Installs registered memory after checking it matches the connection's layout.
fn register(client: *mut kvt_client, l: KvLayout, memory: Memory) -> Result<(), FfiError> {
    with_client(client, |inner| {
        if l.digest() != inner.layout.digest() {
            return Err(FfiError::invalid(
                "the registered layout differs from the one the client connected with",
            ));
        }
        inner.kv = Some(Registered { layout: l, memory });
        Ok(())
    })
}

/// Registers KV memory on a CUDA device: `n_layers` device pointers (`CUdeviceptr`) to the
/// layer tensors of `layout` on device `device`. Saves and loads then copy through the CUDA
/// driver on a stream of their own. Returns `KVT_ERR_INVALID` when libkvtier was built without
/// the `cuda` feature, and `KVT_ERR_UNAVAILABLE` when no CUDA driver or device is present.
///
/// # Safety
/// The device pointers must stay valid, each for the layout's layer bytes, until the client is
/// freed or memory is registered again.
#[no_mangle]
pub unsafe extern "C" fn kvt_register_kv_device(
    client: *mut kvt_client,
    layout: *const kvt_layout,
    layers: *const u64,
    n_layers: usize,
    device: i32,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let l = unsafe { arg(layout, "layout") }?.layout.clone();
        // SAFETY: per the contract.
        let ptrs = unsafe { slice_arg(layers, n_layers, "layers") }?.to_vec();
        if ptrs.len() != l.num_layers() as usize {
            return Err(FfiError::invalid(format!(
                "{} layer pointers given; the layout has {} layers",
                ptrs.len(),
                l.num_layers()
            )));
        }
        if let Some(i) = ptrs.iter().position(|&p| p == 0) {
            return Err(FfiError::null(&format!("layers[{i}]")));
        }
        register_device(client, l, ptrs, device)
    })
}

#[cfg(feature = "cuda")]
fn register_device(
    client: *mut kvt_client,
    l: KvLayout,
    ptrs: Vec<u64>,
    device: i32,
) -> Result<(), FfiError> {
    let copier = kvtier_core::gpu::CudaCopier::new(device)?;
    with_client(client, |inner| {
        if l.digest() != inner.layout.digest() {
            return Err(FfiError::invalid(
                "the registered layout differs from the one the client connected with",
            ));
        }
        inner.kv = Some(Registered {
            layout: l,
            memory: Memory::Device { ptrs, copier },
        });
        Ok(())
    })
}

#[cfg(not(feature = "cuda"))]
fn register_device(
    client: *mut kvt_client,
    _l: KvLayout,
    _ptrs: Vec<u64>,
    _device: i32,
) -> Result<(), FfiError> {
    with_client(client, |_| {
        Err(FfiError::invalid(
            "libkvtier was built without CUDA support: rebuild it with `--features cuda`",
        ))
    })
}

/// Writes into `*prefix` how many leading `keys` the agent (or its pool) holds, and starts
/// prefetching pool-resident ones into memory.
///
/// # Safety
/// `keys` must hold `n` keys; `prefix` writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_lookup(
    client: *mut kvt_client,
    keys: *const kvt_key,
    n: usize,
    prefix: *mut u32,
) -> kvt_status {
    // SAFETY: the same contract; a recompute time of 0 is no such bound.
    unsafe { kvt_lookup_vs_recompute(client, keys, n, 0, prefix) }
}

/// [`kvt_lookup`] that weighs loading against recomputing: `recompute_us` is the engine's
/// estimate of the time, in microseconds, to recompute all `n` blocks (from its own prefill
/// rate). `*prefix` then stops where reading more blocks from the pool (at the agent's
/// measured read time per block) would take longer than recomputing the blocks they complete,
/// so that a hit never costs more than a miss. `recompute_us` 0: unknown, as [`kvt_lookup`].
///
/// # Safety
/// `keys` must hold `n` keys; `prefix` writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_lookup_vs_recompute(
    client: *mut kvt_client,
    keys: *const kvt_key,
    n: usize,
    recompute_us: u64,
    prefix: *mut u32,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let keys = keys_of(unsafe { slice_arg(keys, n, "keys") }?);
        if prefix.is_null() {
            return Err(FfiError::null("prefix"));
        }
        let (p, _) = with_client(client, |inner| {
            Ok(inner
                .client
                .as_mut()
                .ok_or_else(closed)?
                .lookup_vs_recompute(&keys, true, Duration::from_micros(recompute_us))?)
        })?;
        // SAFETY: writable per the contract.
        unsafe { *prefix = p };
        Ok(())
    })
}

pub(crate) fn registered(inner: &Inner) -> Result<&Registered, FfiError> {
    inner
        .kv
        .as_ref()
        .ok_or_else(|| FfiError::invalid("no KV memory registered: call kvt_register_kv first"))
}

pub(crate) fn check_blocks(kv: &Registered, blocks: &[u32]) -> Result<(), FfiError> {
    match blocks.iter().find(|&&b| b >= kv.layout.num_blocks()) {
        Some(b) => Err(FfiError::invalid(format!(
            "block id {b} is out of range: the layout has {} blocks",
            kv.layout.num_blocks()
        ))),
        None => Ok(()),
    }
}

/// Saves engine blocks `block_ids[i]` under `keys[i]` (`n` of each): keys the agent already
/// holds are skipped; the others are gathered straight into the agent's arena. Writes the
/// number stored into `*stored` (may be NULL). The engine may reuse its blocks on return.
///
/// # Safety
/// `keys` and `block_ids` must hold `n` entries; registered memory must be valid.
#[no_mangle]
pub unsafe extern "C" fn kvt_save(
    client: *mut kvt_client,
    keys: *const kvt_key,
    block_ids: *const u32,
    n: usize,
    stored: *mut usize,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let keys = keys_of(unsafe { slice_arg(keys, n, "keys") }?);
        // SAFETY: per the contract.
        let blocks = unsafe { slice_arg(block_ids, n, "block_ids") }?.to_vec();
        let count = with_client(client, |inner| {
            let Inner { client, kv, .. } = inner;
            let kv = kv.as_ref().ok_or_else(|| {
                FfiError::invalid("no KV memory registered: call kvt_register_kv first")
            })?;
            check_blocks(kv, &blocks)?;
            let c = client.as_mut().ok_or_else(closed)?;
            Ok(c.save(&keys, |i, payload| kv.gather(blocks[i], payload))?)
        })?;
        if !stored.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { *stored = count as usize };
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_core::dtype::KvDtype;
    use kvtier_core::layout::LayoutKind;

    /// Objects scattered a window at a time on several threads land exactly where the layout's
    /// safe copy puts them one after the other, for every layout kind (two segments per block,
    /// and one), also when a window names a block twice (then copied in order, last one wins).
    #[test]
    fn parallel_scatter_matches_one_thread() {
        for kind in [
            LayoutKind::VllmFlash,
            LayoutKind::VllmCpu,
            LayoutKind::LayerMajor,
        ] {
            let layout = KvLayout::new(kind, 3, 12, 16, 2, 8, KvDtype::Bf16).unwrap();
            let len = layout.layer_bytes() as usize;
            let objects: Vec<Vec<u8>> = (0..12u32)
                .map(|o| {
                    (0..layout.object_len() as usize)
                        .map(|j| (j as u32).wrapping_mul(2654435761).wrapping_add(o * 97) as u8)
                        .collect()
                })
                .collect();
            for blocks in [vec![3u32, 0, 11, 5, 7, 1, 9], vec![4, 2, 4, 8]] {
                let windowed = || {
                    let mut layers = vec![vec![0u8; len]; 3];
                    let r = Registered {
                        layout: layout.clone(),
                        memory: Memory::Host(
                            layers.iter_mut().map(|l| l.as_mut_ptr() as usize).collect(),
                        ),
                    };
                    let items: Vec<(u32, &[u8])> = blocks
                        .iter()
                        .enumerate()
                        .map(|(k, &b)| (b, objects[k].as_slice()))
                        .collect();
                    let ok = r.scatter_many(&items, &|_| {});
                    assert!(ok.iter().all(|&x| x), "{kind:?}");
                    layers
                };
                // The reference: the layout's safe copy, one block after the other.
                let one_thread = || {
                    let mut layers = vec![vec![0u8; len]; 3];
                    let mut views: Vec<&mut [u8]> =
                        layers.iter_mut().map(|l| l.as_mut_slice()).collect();
                    for (k, &b) in blocks.iter().enumerate() {
                        layout.scatter(&objects[k], &mut views, b).unwrap();
                    }
                    layers
                };
                assert_eq!(windowed(), one_thread(), "{kind:?} {blocks:?}");
            }
        }
    }
}
