//! libkvtier's background loads against a real agent whose pool stalls: a load waiting on the
//! pool never holds up the engine's saves (the load runs on a session of its own), and freeing
//! its ticket stops it after the window in flight.

mod common;

use std::ffi::CString;
use std::time::{Duration, Instant};

use kvtier::client::*;
use kvtier::keys::kvt_key;
use kvtier::layout::*;
use kvtier::load::*;
use kvtier::status::{KVT_ERR_TIMEOUT, KVT_OK};

#[test]
fn a_load_stalled_on_the_pool_never_holds_up_a_save() {
    // A pool server that accepts and never answers: reads through it wait out the load budget.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hole.incoming().take(64) {
            held.push(c);
        }
    });
    let kind = CString::new("vllm-cpu").unwrap();
    let dtype = CString::new("bf16").unwrap();
    let lp = kvt_layout_params {
        kind: kind.as_ptr(),
        num_layers: 2,
        num_blocks: 16,
        block_size: 16,
        num_kv_heads: 2,
        head_size: 64,
        dtype: dtype.as_ptr(),
    };
    let mut layout = std::ptr::null_mut();
    // SAFETY: valid params; out writable.
    assert_eq!(unsafe { kvt_layout_new(&lp, &mut layout) }, KVT_OK);
    // SAFETY: a live layout.
    let object = unsafe { kvt_layout_object_len(layout) };
    let layer = unsafe { kvt_layout_layer_bytes(layout) } as usize;
    let agent = common::Agent::start_with(
        tempfile::tempdir().unwrap(),
        &object.to_string(),
        &["--pool-servers", &addr, "--pool-timeout-ms", "5000"],
    );
    let socket = CString::new(agent.socket.to_str().unwrap()).unwrap();
    let params = kvt_client_params {
        socket: socket.as_ptr(),
        layout,
        engine: std::ptr::null(),
        timeout_ms: 5000,
        load_budget_ms: 3000,
    };
    let mut client = std::ptr::null_mut();
    // SAFETY: valid params; out writable.
    assert_eq!(unsafe { kvt_client_connect(&params, &mut client) }, KVT_OK);
    let mut layers = vec![vec![7u8; layer]; 2];
    let ptrs: Vec<*mut u8> = layers.iter_mut().map(|l| l.as_mut_ptr()).collect();
    // SAFETY: live handles; the layer buffers outlive the client.
    assert_eq!(
        unsafe { kvt_register_kv(client, layout, ptrs.as_ptr(), 2) },
        KVT_OK
    );
    // A load of blocks the arena does not hold: the agent reads them through the stalled pool.
    let keys: Vec<kvt_key> = (0..4).map(|i| kvt_key { lo: 100 + i, hi: 9 }).collect();
    let blocks: Vec<u32> = (0..4).collect();
    let mut ticket = std::ptr::null_mut();
    // SAFETY: live client; arrays of 4.
    assert_eq!(
        unsafe { kvt_load_start(client, keys.as_ptr(), blocks.as_ptr(), 4, &mut ticket) },
        KVT_OK
    );
    // Meanwhile the engine saves other blocks: done while the load still waits on the pool.
    let save_keys: Vec<kvt_key> = (0..4).map(|i| kvt_key { lo: 200 + i, hi: 9 }).collect();
    let save_blocks: Vec<u32> = (4..8).collect();
    let mut stored = 0usize;
    // SAFETY: live client; arrays of 4.
    let st = unsafe {
        kvt_save(
            client,
            save_keys.as_ptr(),
            save_blocks.as_ptr(),
            4,
            &mut stored,
        )
    };
    assert_eq!((st, stored), (KVT_OK, 4));
    let mut loaded = [9u8; 4];
    // SAFETY: a live ticket; room for 4.
    assert_eq!(
        unsafe { kvt_ticket_wait(ticket, 0, loaded.as_mut_ptr(), 4) },
        KVT_ERR_TIMEOUT,
        "the save waited for the whole load"
    );
    // Freeing the ticket cancels the load: it returns once the window in flight ends (within
    // the load budget), and no block of it was written.
    let t0 = Instant::now();
    // SAFETY: a live ticket, freed once.
    unsafe { kvt_ticket_free(ticket) };
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(layers.iter().all(|l| l[..].iter().all(|&b| b == 7)));
    // SAFETY: live handles, freed once.
    unsafe {
        kvt_client_free(client);
        kvt_layout_free(layout);
    }
    drop(agent);
}
