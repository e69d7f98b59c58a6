//! `kvtier pool`: a pool server, a segment store on this node's disk served over TCP (or UCX).

use std::io::Write;
use std::time::Duration;

use kvtier_core::error::Result;
use kvtier_core::tier::io::IoMode;
use kvtier_core::tier::segment::SegmentStoreConfig;
use kvtier_ops::config;
use kvtier_pool::server::{PoolServer, PoolServerConfig};

use crate::daemon::{metrics_endpoint, runtime, signalled};

/// `kvtier pool`: a pool server.
pub fn run(loaded: config::Loaded) -> Result<()> {
    let explicit = loaded.explicit.contains("pool.metrics_addr");
    let cfg = loaded.config;
    let p = cfg.pool.clone();
    let mut store = SegmentStoreConfig::new(&p.data);
    store.capacity_bytes = p.capacity.0;
    store.segment_bytes = p.segment_bytes.0;
    store.create_dir = true;
    store.io = IoMode::parse(&p.io).map_err(|e| e.with_context("field", "pool.io"))?;
    let mut scfg = PoolServerConfig::new(p.listen, store);
    scfg.control = p.control.0;
    scfg.cache_bytes = p.cache_bytes.0;
    scfg.ucx = p.ucx;
    scfg.stream_chunk = p.stream_chunk.0 as usize;
    scfg.stall_timeout = Duration::from_millis(p.stall_timeout_ms);
    if let Some(f) = &p.secret_file {
        scfg.secret = Some(
            kvtier_pool::auth::read_secret(f)
                .map_err(|e| e.with_context("field", "pool.secret_file"))?,
        );
    }
    runtime()?.block_on(async move {
        let bound = PoolServer::bind(scfg).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        println!("kvtier pool: data {}", bound.data_addr());
        if let Some(c) = bound.control_addr() {
            println!("kvtier pool: control {c}");
        }
        let server = bound.server();
        metrics_endpoint(
            "pool",
            p.metrics_addr.0,
            "pool.metrics_addr",
            explicit,
            kvtier_ops::pool_handler(server.clone()),
            stop_rx,
        )
        .await?;
        let st = server.stats();
        println!(
            "kvtier pool: {} objects recovered in {} ({} MiB of {} MiB)",
            st.store.objects,
            p.data.display(),
            st.store.used_bytes >> 20,
            st.store.capacity_bytes >> 20
        );
        std::io::stdout().flush().ok();
        bound
            .serve(async move {
                signalled().await;
                eprintln!("kvtier pool: shutting down");
                let _ = stop_tx.send(true);
            })
            .await?;
        Ok(())
    })
}
