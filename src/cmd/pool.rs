//! `kvtier pool`: a pool server, a segment store on this node's disk served over TCP (or UCX).

use std::io::Write;

use kvtier_core::error::Result;
use kvtier_ops::config;
use kvtier_pool::server::PoolServer;

use crate::daemon::{metrics_endpoint, runtime, signalled};

/// `kvtier pool`: a pool server.
pub fn run(loaded: config::Loaded) -> Result<()> {
    let explicit = loaded.explicit.contains("pool.metrics_addr");
    let cfg = loaded.config;
    let p = cfg.pool.clone();
    let scfg = p.server_config()?;
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
