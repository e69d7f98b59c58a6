//! `kvtier agent` (alias `kvtier up`): the node agent, by default with an embedded pool on a
//! local data directory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use kvtier_agent::AgentConfig;
use kvtier_core::error::Result;
use kvtier_core::tier::host::HostArenaConfig;
use kvtier_core::tier::segment::SegmentStoreConfig;
use kvtier_ops::{config, probe};
use kvtier_pool::{client::PoolClientConfig, placement::Member, shared_dir, PoolSpec};

use crate::daemon::{metrics_endpoint, runtime, signalled};

fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("kvtier/agent.sock"),
        None => PathBuf::from(format!("/tmp/kvtier-{}/agent.sock", unsafe {
            libc::getuid()
        })),
    }
}

/// `kvtier agent` (alias `up`): the node agent.
pub fn run(loaded: config::Loaded) -> Result<()> {
    let explicit = loaded.explicit.contains("agent.metrics_addr");
    let cfg = loaded.config;
    let a = cfg.agent.clone();
    let socket = a.socket.clone().unwrap_or_else(default_socket);
    let pool = if a.no_pool {
        None
    } else if !a.pool_servers.is_empty() {
        let members = a
            .pool_servers
            .iter()
            .map(|m| Member::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.with_context("field", "agent.pool_servers"))?;
        let mut c = PoolClientConfig::new(members);
        c.replication = a.replication;
        c.timeout = Duration::from_millis(a.pool_timeout_ms);
        c.transport = a.pool_transport;
        if let Some(f) = &a.pool_secret_file {
            c.secret = Some(
                kvtier_pool::auth::read_secret(f)
                    .map_err(|e| e.with_context("field", "agent.pool_secret_file"))?,
            );
        }
        Some(PoolSpec::Servers(c))
    } else if let Some(dir) = &a.shared_dir {
        let mut c = shared_dir::SharedDirConfig::new(dir);
        c.capacity_bytes = a.pool_bytes.0;
        Some(PoolSpec::SharedDir(c))
    } else {
        let mut c = SegmentStoreConfig::new(&a.data);
        c.capacity_bytes = a.pool_bytes.0;
        c.segment_bytes = a.segment_bytes.0;
        c.create_dir = true;
        Some(PoolSpec::Embedded(c))
    };
    let pool_desc = match &pool {
        None => "none".to_string(),
        Some(PoolSpec::Embedded(_)) => format!("{} ({})", a.data.display(), a.pool_bytes),
        Some(PoolSpec::Servers(c)) => format!(
            "{} server(s), replication {}",
            c.members.len(),
            c.replication
        ),
        Some(PoolSpec::SharedDir(c)) => format!("shared directory {}", c.dir.display()),
    };
    let agent_cfg = AgentConfig {
        socket: socket.clone(),
        arena: HostArenaConfig {
            capacity_bytes: a.arena_bytes.0,
            payload_len: a.object_bytes.0 as usize,
            ..Default::default()
        },
        pool,
        write_queue: a.write_queue,
    };
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
