//! `kvtier agent` (alias `kvtier up`): the node agent, by default with an embedded pool on a
//! local data directory.

use std::io::Write;

use kvtier_core::error::Result;
use kvtier_ops::{config, probe};

use crate::daemon::{metrics_endpoint, runtime, signalled};

/// `kvtier agent` (alias `up`): the node agent.
pub fn run(loaded: config::Loaded) -> Result<()> {
    let explicit = loaded.explicit.contains("agent.metrics_addr");
    let cfg = loaded.config;
    let a = cfg.agent.clone();
    let agent_cfg = a.agent_config()?;
    let socket = agent_cfg.socket.clone();
    let pool_desc = config::describe_pool(agent_cfg.pool.as_ref());
    runtime()?.block_on(async move {
        let bound = kvtier_agent::bind(&agent_cfg)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let state = bound.state();
        let readiness = probe::AgentReadiness::new(state.clone(), probe::PoolCheck::for_agent(&a));
        println!("kvtier agent: socket {}", socket.display());
        metrics_endpoint(
            "agent",
            a.metrics_addr.0,
            "agent.metrics_addr",
            explicit,
            kvtier_ops::agent_handler(readiness, state),
            stop_rx,
        )
        .await?;
        println!(
            "kvtier agent: arena {} of {} objects; pool {}",
            a.arena_bytes, a.object_bytes, pool_desc
        );
        std::io::stdout().flush().ok();
        bound
            .serve(async move {
                signalled().await;
                eprintln!("kvtier agent: shutting down");
                let _ = stop_tx.send(true);
            })
            .await?;
        Ok(())
    })
}
