//! Loads: [`kvt_load_start`] copies a load into the engine's memory on a background thread,
//! window by window and layer by layer; the engine waits on its ticket for one layer
//! ([`kvt_ticket_wait_layer`]) or for the whole load ([`kvt_ticket_wait`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kvtier_core::key::BlockKey;
use kvtier_core::Error;

use crate::client::{check_blocks, closed, keys_of, kvt_client, registered, with_client, Inner};
use crate::keys::kvt_key;
use crate::status::{arg, guard, kvt_status, slice_arg, FfiError, KVT_ERR_TIMEOUT};

/// What a load's waiters see.
#[derive(Default)]
pub(crate) struct LoadState {
    /// The outcome (per-block delivered flags), once known.
    pub(crate) outcome: Option<Result<Vec<bool>, FfiError>>,
    /// How many leading layers of every block are copied into the engine's memory.
    pub(crate) layers_ready: u32,
}

/// A load's state and its signal.
pub(crate) type LoadProgress = (Mutex<LoadState>, Condvar);

/// An asynchronous load in flight.
pub struct kvt_ticket {
    state: Arc<LoadProgress>,
    n: usize,
    /// The layout's layer count.
    num_layers: u32,
    /// Set by `kvt_ticket_free`: copy no further block into the engine's memory.
    cancel: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts loading `keys[i]` into engine blocks `block_ids[i]` (`n` of each) on a background
/// thread; wait on the ticket in `*out`. The engine must not touch those blocks until the
/// ticket completes.
///
/// # Safety
/// As for [`kvt_save`]; registered memory must stay valid until the ticket completes.
#[no_mangle]
pub unsafe extern "C" fn kvt_load_start(
    client: *mut kvt_client,
    keys: *const kvt_key,
    block_ids: *const u32,
    n: usize,
    out: *mut *mut kvt_ticket,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let keys = keys_of(unsafe { slice_arg(keys, n, "keys") }?);
        // SAFETY: per the contract.
        let blocks = unsafe { slice_arg(block_ids, n, "block_ids") }?.to_vec();
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: per the contract.
        let c = unsafe { arg(client as *const kvt_client, "client") }?;
        let inner = c.inner.clone();
        let num_layers = with_client(client, |i| {
            let kv = registered(i)?;
            check_blocks(kv, &blocks)?;
            Ok(kv.layout.num_layers())
        })?;
        let state: Arc<LoadProgress> = Arc::new(Default::default());
        let done = state.clone();
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancel.clone();
        std::thread::Builder::new()
            .name("kvtier-load".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    load(&inner, &keys, &blocks, &stop, &done)
                }))
                .unwrap_or_else(|_| {
                    Err(FfiError {
                        status: crate::status::KVT_ERR_INTERNAL,
                        message: "internal error in a load".into(),
                    })
                });
                let (m, cv) = &*done;
                if let Ok(mut g) = m.lock() {
                    g.outcome = Some(result);
                }
                cv.notify_all();
            })
            .map_err(|e| FfiError::from(Error::io("starting a load thread", e)))?;
        // SAFETY: writable per the contract.
        unsafe {
            *out = Box::into_raw(Box::new(kvt_ticket {
                state,
                n,
                num_layers,
                cancel,
            }))
        };
        Ok(())
    })
}

/// Runs a load on the client's loader session (see [`Inner::loader`]): the client's lock is
/// taken only to copy each window into the engine's memory, never across the agent's reads
/// from the pool.
fn load(
    inner: &Mutex<Inner>,
    keys: &[BlockKey],
    blocks: &[u32],
    cancel: &std::sync::atomic::AtomicBool,
    progress: &LoadProgress,
) -> Result<Vec<bool>, FfiError> {
    let poisoned = || FfiError::invalid("the client is poisoned by an earlier panic");
    let (loader, cfg) = {
        let g = inner.lock().map_err(|_| poisoned())?;
        let c = g.client.as_ref().ok_or_else(closed)?;
        let mut cfg = c.config().clone();
        cfg.engine = format!("{} (loads)", cfg.engine)
            .chars()
            .take(kvtier_agent::access::MAX_ENGINE_NAME)
            .collect();
        (g.loader.clone(), cfg)
    };
    let mut turn = loader.lock().map_err(|_| poisoned())?;
    if turn.is_none() {
        *turn = Some(kvtier_agent::client::AgentClient::connect(cfg)?);
    }
    let c = turn.as_mut().expect("just connected");
    let mut failed = Vec::new();
    // Only the last window completes a layer of every block of the load.
    let report = |layer: u32| {
        let (m, cv) = progress;
        if let Ok(mut g) = m.lock() {
            g.layers_ready = g.layers_ready.max(layer + 1);
        }
        cv.notify_all();
    };
    let going = || !cancel.load(std::sync::atomic::Ordering::Acquire);
    let mut delivered = c.load_windows_while(keys, going, |window, last| {
        let g = inner.lock();
        // After a cancel the engine may already be reusing these blocks: never touch them.
        // Nor after a close, or without registered memory.
        let kv = match &g {
            Ok(g) if going() && g.client.is_some() => g.kv.as_ref(),
            _ => None,
        };
        let Some(kv) = kv else {
            failed.extend(window.iter().map(|&(i, _)| i));
            return;
        };
        let items: Vec<(u32, &[u8])> = window.iter().map(|&(i, p)| (blocks[i], p)).collect();
        let on_layer: &(dyn Fn(u32) + Sync) = if last { &report } else { &|_| {} };
        for (&(i, _), ok) in window.iter().zip(kv.scatter_many(&items, on_layer)) {
            if !ok {
                failed.push(i);
            }
        }
    })?;
    for i in failed {
        delivered[i] = false;
    }
    Ok(delivered)
}

/// Waits up to `timeout_ms` for a load. On `KVT_OK`, `loaded[i]` (room for `n`, the count
/// given to [`kvt_load_start`]) is 1 for each block delivered and 0 for each block that must
/// be recomputed. `KVT_ERR_TIMEOUT` if still running: the load goes on, so wait again, or free
/// the ticket (which cancels it) before reusing or recomputing those blocks. Otherwise the
/// load's own failure (every block must then be recomputed).
///
/// # Safety
/// `ticket` must be live; `loaded` must have room for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn kvt_ticket_wait(
    ticket: *mut kvt_ticket,
    timeout_ms: u32,
    loaded: *mut u8,
    n: usize,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let t = unsafe { arg(ticket as *const kvt_ticket, "ticket") }?;
        if n != t.n {
            return Err(FfiError::invalid(format!(
                "`n` is {n}; the load has {} blocks",
                t.n
            )));
        }
        if loaded.is_null() && n > 0 {
            return Err(FfiError::null("loaded"));
        }
        let (m, cv) = &*t.state;
        let g = m
            .lock()
            .map_err(|_| FfiError::invalid("the ticket is poisoned"))?;
        let (g, _) = cv
            .wait_timeout_while(g, Duration::from_millis(timeout_ms as u64), |r| {
                r.outcome.is_none()
            })
            .map_err(|_| FfiError::invalid("the ticket is poisoned"))?;
        match g.outcome.as_ref() {
            None => Err(FfiError {
                status: KVT_ERR_TIMEOUT,
                message: format!("the load did not finish within {timeout_ms} ms"),
            }),
            Some(Err(e)) => Err(FfiError {
                status: e.status,
                message: e.message.clone(),
            }),
            Some(Ok(flags)) => {
                for (i, &f) in flags.iter().enumerate() {
                    // SAFETY: room for n == flags.len() bytes per the contract.
                    unsafe { *loaded.add(i) = f as u8 };
                }
                Ok(())
            }
        }
    })
}

/// Waits up to `timeout_ms` until layer `layer` (0-based) of every block of a load is in the
/// engine's memory, or the load has ended (then [`kvt_ticket_wait`] tells which blocks were
/// delivered). Layers are copied in order, so an engine can compute layer `i` while the later
/// layers are still being copied; with a load larger than the agent's window, layers complete
/// with its last window. Writes into `*layers_ready` (may be NULL) how many leading layers are
/// copied (the layout's layer count once the load has ended). `KVT_ERR_TIMEOUT` if not there
/// yet: wait again, or free the ticket.
///
/// # Safety
/// `ticket` must be live; `layers_ready` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_ticket_wait_layer(
    ticket: *mut kvt_ticket,
    layer: u32,
    timeout_ms: u32,
    layers_ready: *mut u32,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let t = unsafe { arg(ticket as *const kvt_ticket, "ticket") }?;
        if layer >= t.num_layers {
            return Err(FfiError::invalid(format!(
                "layer {layer} is out of range: the layout has {} layers",
                t.num_layers
            )));
        }
        let ready = wait_layer(
            &t.state,
            layer,
            Duration::from_millis(timeout_ms as u64),
            t.num_layers,
        )?;
        if !layers_ready.is_null() {
            // SAFETY: non-NULL and writable per the contract.
            unsafe { *layers_ready = ready };
        }
        if ready > layer {
            Ok(())
        } else {
            Err(FfiError {
                status: KVT_ERR_TIMEOUT,
                message: format!("layer {layer} of the load did not arrive within {timeout_ms} ms"),
            })
        }
    })
}

/// Waits until layer `layer` is ready or the load has ended; the leading layers ready then
/// (`num_layers` once ended).
pub(crate) fn wait_layer(
    state: &LoadProgress,
    layer: u32,
    timeout: Duration,
    num_layers: u32,
) -> Result<u32, FfiError> {
    let (m, cv) = state;
    let g = m
        .lock()
        .map_err(|_| FfiError::invalid("the ticket is poisoned"))?;
    let (g, _) = cv
        .wait_timeout_while(g, timeout, |r| {
            r.outcome.is_none() && r.layers_ready <= layer
        })
        .map_err(|_| FfiError::invalid("the ticket is poisoned"))?;
    Ok(if g.outcome.is_some() {
        num_layers
    } else {
        g.layers_ready
    })
}

/// Frees a ticket. If the load is still running it is cancelled: no further block is copied
/// into the engine's memory, and this call returns only once no copy is in progress (at most
/// the client's call deadline), so the engine may reuse the blocks right after. NULL is a no-op.
///
/// # Safety
/// `ticket` must be NULL or a handle from [`kvt_load_start`] not freed before.
#[no_mangle]
pub unsafe extern "C" fn kvt_ticket_free(ticket: *mut kvt_ticket) {
    if ticket.is_null() {
        return;
    }
    // SAFETY: created by Box::into_raw.
    let t = unsafe { Box::from_raw(ticket) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.cancel.store(true, std::sync::atomic::Ordering::Release);
        let (m, cv) = &*t.state;
        if let Ok(g) = m.lock() {
            drop(cv.wait_while(g, |r| r.outcome.is_none()));
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Memory, Registered};
    use kvtier_core::dtype::KvDtype;
    use kvtier_core::layout::{KvLayout, LayoutKind};

    /// A load hands the engine its layers in order: when the wait for layer 0 returns, layer 0
    /// of every block is in place and the last layer is not (the copier is held inside the
    /// report of layer 0 until the waiter has looked), and every layer lands in the end.
    #[test]
    fn a_layer_wait_returns_before_the_last_layer_is_copied() {
        let layout = KvLayout::new(LayoutKind::VllmCpu, 4, 16, 16, 2, 8, KvDtype::Bf16).unwrap();
        let len = layout.layer_bytes() as usize;
        let blocks: Vec<u32> = (0..16).collect();
        let objects: Vec<Vec<u8>> = blocks
            .iter()
            .map(|&b| vec![b as u8 + 1; layout.object_len() as usize])
            .collect();
        let mut want = vec![vec![0u8; len]; 4];
        {
            let mut w: Vec<&mut [u8]> = want.iter_mut().map(|l| l.as_mut_slice()).collect();
            for &b in &blocks {
                layout.scatter(&objects[b as usize], &mut w, b).unwrap();
            }
        }
        let mut layers = vec![vec![0u8; len]; 4];
        let ptrs: Vec<usize> = layers.iter_mut().map(|l| l.as_mut_ptr() as usize).collect();
        let r = Registered {
            layout: layout.clone(),
            memory: Memory::Host(ptrs.clone()),
        };
        let state: LoadProgress = Default::default();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let report = |layer: u32| {
            let (m, cv) = &state;
            m.lock().unwrap().layers_ready = layer + 1;
            cv.notify_all();
            if layer == 0 {
                // Held until the waiter has looked (bounded: a failing waiter ends the test).
                let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
            }
        };
        std::thread::scope(|s| {
            // The waiter on its own thread, the copier (one thread) on this one.
            let waiter = s.spawn(|| {
                let ready = wait_layer(&state, 0, Duration::from_secs(30), 4).unwrap();
                // SAFETY: read-only views while the only copier is parked in the report of
                // layer 0.
                let view =
                    |l: usize| unsafe { std::slice::from_raw_parts(ptrs[l] as *const u8, len) };
                let first_in_place = view(0) == want[0].as_slice();
                let last_untouched = view(3).iter().all(|&b| b == 0);
                go_tx.send(()).unwrap();
                (ready, first_in_place, last_untouched)
            });
            let items: Vec<(u32, &[u8])> = blocks
                .iter()
                .map(|&b| (b, objects[b as usize].as_slice()))
                .collect();
            assert!(r.scatter_on(&items, &report, 1).iter().all(|&ok| ok));
            let (ready, first_in_place, last_untouched) = waiter.join().unwrap();
            assert_eq!(ready, 1, "layer 0 is reported alone");
            assert!(first_in_place, "layer 0 of every block is in place");
            assert!(
                last_untouched,
                "the last layer is not copied yet when layer 0's wait returns"
            );
        });
        assert_eq!(wait_layer(&state, 3, Duration::ZERO, 4).unwrap(), 4);
        assert_eq!(
            layers, want,
            "every layer of every block lands where the layout puts it"
        );
    }
}
