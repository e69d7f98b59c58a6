//! `kvtier pool`: a pool server, a segment store on this node's disk served over TCP (or UCX).

use std::io::Write;

use kvtier_core::error::Result;
use kvtier_ops::config;
use kvtier_pool::cluster;
use kvtier_pool::server::PoolServer;

use crate::daemon::{metrics_endpoint, runtime, signalled};

/// `kvtier pool`: a pool server.
pub fn run(loaded: config::Loaded) -> Result<()> {
    let explicit = loaded.explicit.contains("pool.metrics_addr");
    let cfg = loaded.config;
    let p = cfg.pool.clone();
    let scfg = p.server_config()?;
    let cluster = p.cluster_config()?;
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
        let data_addr = bound.data_addr().to_string();
        let registration = cluster.map(|(c, addr)| {
            let info = cluster::MemberInfo {
                addr: addr.unwrap_or(data_addr),
                // The share of keys follows the capacity (1 per GiB).
                weight: (st.store.capacity_bytes as f64 / (1u64 << 30) as f64).max(1e-3),
                capacity_bytes: st.store.capacity_bytes,
                zone: p.zone.clone(),
                state: cluster::MemberState::Serving,
            };
            println!(
                "kvtier pool: registering {} in etcd cluster `{}`",
                info.addr, c.name
            );
            let health = cluster::ClusterHealth::new();
            let reg = std::sync::Arc::new(cluster::register(c, health, info));
            // A drained server takes no new keys: it says so in its registration.
            let (r, mut draining) = (reg.clone(), server.watch_draining());
            let poll = tokio::spawn(async move {
                loop {
                    r.set_state(if *draining.borrow_and_update() {
                        cluster::MemberState::Draining
                    } else {
                        cluster::MemberState::Serving
                    });
                    if draining.changed().await.is_err() {
                        break;
                    }
                }
            });
            (reg, poll)
        });
        std::io::stdout().flush().ok();
        bound
            .serve(async move {
                signalled().await;
                eprintln!("kvtier pool: shutting down");
                let _ = stop_tx.send(true);
            })
            .await?;
        if let Some((reg, poll)) = registration {
            // Out of the cluster at once, not when the lease runs out.
            poll.abort();
            let _ = poll.await;
            if let Ok(r) = std::sync::Arc::try_unwrap(reg) {
                r.leave().await;
            }
        }
        Ok(())
    })
}
