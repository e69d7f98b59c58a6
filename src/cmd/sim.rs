//! `kvtier sim`: replay a request trace through kvtier's tiers and eviction policy (capacity
//! planning; the replay is in `kvtier-sim`).

use std::path::PathBuf;

use clap::Args;
use kvtier_core::error::{Error, Result};

#[derive(Args)]
pub struct SimArgs {
    /// Trace in the Mooncake format (JSON lines: timestamp, input_length, output_length, hash_ids).
    #[arg(long)]
    trace: PathBuf,
    /// Engine replicas.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Nodes (replica r runs on node r % nodes).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// GPU prefix cache per replica, in blocks (`none`, a number, or `inf`).
    #[arg(long, default_value = "none")]
    gpu_blocks: String,
    /// Host-memory tier per node, in blocks (`none`, a number, or `inf`).
    #[arg(long, default_value = "none")]
    host_blocks: String,
    /// Shared pool, in blocks (`none`, a number, or `inf`).
    #[arg(long, default_value = "inf")]
    pool_blocks: String,
    /// Routing: round-robin or prefix-aware.
    #[arg(long, default_value = "round-robin")]
    routing: String,
    /// Eviction policy of every tier: hit-density (the tiers' default) or lru.
    #[arg(long, default_value = "hit-density")]
    policy: String,
    /// Tokens per trace block.
    #[arg(long, default_value_t = 512)]
    block_tokens: u64,
    /// KV bytes per token of the model (default: 128 KiB, an 8B-class model in bf16).
    #[arg(long, default_value_t = 131_072)]
    kv_bytes_per_token: u64,
    /// Prefill throughput of one replica, tokens per second.
    #[arg(long, default_value_t = 8000.0)]
    prefill_tps: f64,
    /// Host tier to GPU bandwidth, GB/s.
    #[arg(long, default_value_t = 20.0)]
    host_gbps: f64,
    /// Pool to GPU bandwidth, GB/s.
    #[arg(long, default_value_t = 5.0)]
    pool_gbps: f64,
    /// Capacity sweep of one shared tier: comma-separated capacities in blocks, or `default`
    /// (1k to 200k). Compares LRU, kvtier's default policy (hit density) and the offline optimum.
    #[arg(long)]
    sweep: Option<String>,
    /// Where the sweep's plot goes (SVG).
    #[arg(long, default_value = "kvtier-sim-sweep.svg")]
    plot: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SimArgs) -> Result<()> {
    use kvtier_sim::{Capacity, Routing, SimConfig};
    let cfg = SimConfig {
        replicas: a.replicas,
        nodes: a.nodes,
        gpu: Capacity::parse(&a.gpu_blocks).map_err(|e| e.with_context("flag", "--gpu-blocks"))?,
        host: Capacity::parse(&a.host_blocks)
            .map_err(|e| e.with_context("flag", "--host-blocks"))?,
        pool: Capacity::parse(&a.pool_blocks)
            .map_err(|e| e.with_context("flag", "--pool-blocks"))?,
        routing: Routing::parse(&a.routing)?,
        policy: kvtier_core::policy::PolicyKind::parse(&a.policy)?,
        block_tokens: a.block_tokens,
        kv_bytes_per_token: a.kv_bytes_per_token,
        prefill_tokens_per_s: a.prefill_tps,
        host_gbps: a.host_gbps,
        pool_gbps: a.pool_gbps,
    };
    cfg.validate()?;
    let t0 = std::time::Instant::now();
    let trace = kvtier_sim::trace::load(&a.trace, a.block_tokens)?;
    eprintln!(
        "kvtier sim: {} requests loaded in {:.2} s",
        trace.len(),
        t0.elapsed().as_secs_f64()
    );
    if let Some(list) = a.sweep {
        let caps: Vec<usize> = if list == "default" {
            vec![1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000]
        } else {
            list.split(',')
                .map(|c| {
                    c.trim().replace('_', "").parse::<usize>().map_err(|_| {
                        Error::invalid(format!("--sweep: `{c}` is not a number of blocks"))
                    })
                })
                .collect::<Result<_>>()?
        };
        let rows = kvtier_sim::sweep(&trace, &caps, &cfg, |r| {
            eprintln!(
                "kvtier sim: capacity {} blocks done ({:.1} s)",
                r.capacity_blocks,
                t0.elapsed().as_secs_f64()
            )
        })?;
        let title = format!(
            "{}: token hit ratio by capacity",
            a.trace
                .file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        );
        std::fs::write(&a.plot, kvtier_sim::plot::sweep_svg(&rows, &title))
            .map_err(|e| Error::io("writing the plot", e).with_context("path", a.plot.display()))?;
        if a.json {
            crate::print_json(&rows);
            return Ok(());
        }
        println!(
            "{:>12} {:>10} {:>9} {:>12} {:>9} {:>10}",
            "blocks", "GiB", "LRU", "hit-density", "Belady", "HD/LRU"
        );
        for r in &rows {
            println!(
                "{:>12} {:>10.1} {:>8.2}% {:>11.2}% {:>8.2}% {:>10.3}",
                r.capacity_blocks,
                r.capacity_bytes as f64 / (1u64 << 30) as f64,
                r.lru * 100.0,
                r.hit_density * 100.0,
                r.belady * 100.0,
                r.hit_density / r.lru
            );
        }
        println!("plot: {}", a.plot.display());
        return Ok(());
    }
    let r = kvtier_sim::simulate(&trace, &cfg, |done, total| {
        eprintln!("kvtier sim: {done}/{total} requests")
    })?;
    eprintln!(
        "kvtier sim: replayed in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    if a.json {
        crate::print_json(&r);
        return Ok(());
    }
    println!(
        "{} requests, {} prompt tokens over {:.0} s; policy {}, routing {:?}, {} replica(s) on {} node(s)",
        r.requests, r.input_tokens, r.duration_s, a.policy, cfg.routing, cfg.replicas, cfg.nodes
    );
    println!(
        "{:>6} {:>14} {:>12} {:>10} {:>14} {:>14} {:>12}",
        "tier", "blocks each", "GiB each", "hit ratio", "read GB/s", "write GB/s", "evictions"
    );
    for t in &r.tiers {
        let blocks = t
            .capacity_blocks
            .map_or("unbounded".to_string(), |b| b.to_string());
        let gib = t.capacity_bytes.map_or("-".to_string(), |b| {
            format!("{:.1}", b as f64 / (1u64 << 30) as f64)
        });
        println!(
            "{:>6} {:>14} {:>12} {:>9.1}% {:>14.3} {:>14.3} {:>12}",
            t.tier,
            blocks,
            gib,
            t.hit_ratio * 100.0,
            t.read_bytes_per_s / 1e9,
            t.write_bytes_per_s / 1e9,
            t.evictions
        );
    }
    println!(
        "overall token hit ratio {:.1}%, prefill tokens saved {}",
        r.hit_ratio * 100.0,
        r.prefill_tokens_saved
    );
    println!(
        "TTFT estimate (no queueing): mean {:.3} s, p90 {:.3} s; without kvtier: mean {:.3} s, p90 {:.3} s",
        r.ttft.mean_s, r.ttft.p90_s, r.ttft.no_cache_mean_s, r.ttft.no_cache_p90_s
    );
    Ok(())
}
