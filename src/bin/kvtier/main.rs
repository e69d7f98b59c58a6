//! The `kvtier` command: one binary with subcommands.

mod daemon;
mod opscmd;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kvtier::bench;
use kvtier::tier::io::IoMode;
use kvtier::{KvDtype, Namespace, NamespaceParams};

#[derive(Parser)]
#[command(
    name = "kvtier",
    version,
    about = "A KV-cache offload tier for LLM inference servers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log format: human or json [config log.format, env KVTIER_LOG_FORMAT; default "human"].
    #[arg(long, global = true, value_name = "FORMAT", display_order = 1000)]
    log_format: Option<String>,
    /// Log filter: a level or tracing directives [config log.level, env KVTIER_LOG_LEVEL or
    /// KVTIER_LOG; default "warn"].
    #[arg(long, global = true, value_name = "FILTER", display_order = 1000)]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure kvtier against the machine's ceilings.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Print the block keys of a token sequence (the key spec, docs/key-spec.md).
    Keys(KeysArgs),
    /// Replay a request trace through kvtier's tiers and eviction policy (capacity planning).
    Sim(SimArgs),
    /// Run the node agent (by default with an embedded pool on a local data directory).
    #[command(visible_alias = "up")]
    Agent(daemon::DaemonArgs<daemon::AgentKeys>),
    /// Run a pool server: a segment store on this node's disk served over TCP.
    Pool(daemon::DaemonArgs<daemon::PoolKeys>),
    /// Check a configuration file, or print the default one.
    #[command(subcommand)]
    Config(opscmd::ConfigCmd),
    /// Watch a running agent or pool server (from its /metrics): hit ratio, throughput, usage,
    /// errors; refreshes in place.
    Stat(opscmd::StatArgs),
}

#[derive(Args)]
struct SimArgs {
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

#[derive(Subcommand)]
enum BenchCmd {
    /// Segment store put/get against raw O_DIRECT I/O of the same bytes, in one run.
    Disk(DiskArgs),
    /// Block-key hashing throughput on one core.
    Keys(KeyBenchArgs),
    /// Save/load through the agent against single-thread memcpy; lookup latency.
    Abi(AbiArgs),
    /// Pool server put/get over loopback TCP against the disk's ceiling and real peers.
    Pool(PoolBenchArgs),
    /// Median TTFT under real vLLM (CPU) at 2k/4k/8k tokens: miss, kvtier hit (same and other
    /// replica), ExampleConnector hit, vLLM's prefix cache. Runs scripts/bench_ttft.sh; every
    /// argument after `ttft` goes to it (`--sizes 8192 --rounds 5 --extra-tokens 1 --json`).
    Ttft(TtftArgs),
}

#[derive(Args)]
struct TtftArgs {
    /// Arguments for scripts/bench_ttft.py.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct PoolBenchArgs {
    /// Directory on the disk to measure (the pool's data and the raw baseline's file).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Object sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256KiB,1MiB,4MiB", value_parser = parse_size)]
    sizes: Vec<u64>,
    /// Requests in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    concurrency: Vec<usize>,
    /// Bytes per phase and round.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    total: u64,
    /// Rounds: each phase (raw disk, kvtier, every peer) runs once per round, in turn, and
    /// medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measure a running pool server (`host:port`) instead of starting one.
    #[arg(long)]
    pool: Option<String>,
    /// Its shared secret file.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Also measure raw O_DIRECT writes while loopback TCP traffic runs beside them: what a
    /// writer whose bytes cross this machine's network stack can get from the disk.
    #[arg(long)]
    beside_tcp: bool,
    /// The client's transport: tcp, or ucx (built with feature `ucx`; the bench's server then
    /// serves UCX too; pick UCX's transports with `UCX_TLS`).
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Peers to run beside kvtier (each started by the bench on loopback): mooncake, lmcache,
    /// redis. Their venvs come from scripts/setup_peers.sh.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Folder of the peers' venvs.
    #[arg(long, default_value = "/var/cache/kvtier/peers")]
    peers_venvs: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AbiArgs {
    /// Blocks (2 MiB each) per save/load round.
    #[arg(long, default_value_t = 128)]
    blocks: usize,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Lookups of a 128-block prefix timed for the percentiles.
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DiskArgs {
    /// Directory on the disk to measure (a scratch folder is created inside and removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Payload bytes per object (e.g. 2MiB, 256KiB).
    #[arg(long, default_value = "2MiB", value_parser = parse_size)]
    object_size: u64,
    /// Bytes per phase and round.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    total: u64,
    /// Rounds (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent requests, for the raw baseline and the store alike.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// I/O engine: auto, psync or io_uring.
    #[arg(long, default_value = "auto")]
    io: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct KeyBenchArgs {
    /// Tokens per prompt.
    #[arg(long, default_value_t = 131_072)]
    prompt_tokens: usize,
    /// Seconds to measure each block size.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct KeysArgs {
    /// Model identity.
    #[arg(long)]
    model: String,
    /// Weights revision.
    #[arg(long, default_value = "")]
    revision: String,
    /// KV dtype (float16, bfloat16, float32, fp8_e4m3, fp8_e5m2).
    #[arg(long, default_value = "bfloat16")]
    dtype: String,
    /// Engine layout id (vllm-flash, vllm-cpu, layer-major).
    #[arg(long, default_value = "vllm-flash")]
    layout: String,
    /// Tokens per block.
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Tensor-parallel size and rank.
    #[arg(long, default_value_t = 1)]
    tp_size: u32,
    #[arg(long, default_value_t = 0)]
    tp_rank: u32,
    /// Pipeline-parallel size and rank.
    #[arg(long, default_value_t = 1)]
    pp_size: u32,
    #[arg(long, default_value_t = 0)]
    pp_rank: u32,
    /// Tenant / cache salt.
    #[arg(long, default_value = "")]
    salt: String,
    /// Token ids.
    tokens: Vec<u32>,
}

/// Parses `2MiB`, `512KiB`, `1GiB`, `4096`, `1.5GB`.
fn parse_size(s: &str) -> Result<u64, String> {
    kvtier::ops::config::ByteSize::parse(s).map(|b| b.0)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let log = daemon::log_flags(cli.log_format, cli.log_level);
    // The daemons read the file, the environment and their flags; every other command reads
    // only the logging keys (environment and flags).
    let (file, mut flags, sections) = match &cli.cmd {
        Cmd::Agent(a) => (a.config.clone(), a.flags.clone(), vec!["log", "agent"]),
        Cmd::Pool(a) => (a.config.clone(), a.flags.clone(), vec!["log", "pool"]),
        _ => (None, Vec::new(), vec!["log"]),
    };
    flags.extend(log);
    let loaded = daemon::load(file.as_deref(), &flags, &sections)?;
    let dry_run = match &cli.cmd {
        Cmd::Agent(a) => a.dry_run,
        Cmd::Pool(a) => a.dry_run,
        _ => false,
    };
    if dry_run {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        print!("{}", loaded.config.to_toml());
        return Ok(());
    }
    daemon::init_logs(&loaded.config.log, &loaded.warnings);
    match cli.cmd {
        Cmd::Bench(BenchCmd::Disk(a)) => bench_disk(a),
        Cmd::Bench(BenchCmd::Keys(a)) => bench_keys(a),
        Cmd::Bench(BenchCmd::Abi(a)) => bench_abi(a),
        Cmd::Bench(BenchCmd::Pool(a)) => bench_pool(a),
        Cmd::Bench(BenchCmd::Ttft(a)) => bench_ttft(a),
        Cmd::Keys(a) => keys(a),
        Cmd::Sim(a) => sim(a),
        Cmd::Agent(_) => daemon::agent(loaded),
        Cmd::Pool(_) => daemon::pool(loaded),
        Cmd::Config(c) => opscmd::config_cmd(c),
        Cmd::Stat(a) => opscmd::stat_cmd(a),
    }
}

fn sim(a: SimArgs) -> Result<()> {
    use kvtier::sim::{self, Capacity, Routing, SimConfig};
    let cfg = SimConfig {
        replicas: a.replicas,
        nodes: a.nodes,
        gpu: Capacity::parse(&a.gpu_blocks).context("--gpu-blocks")?,
        host: Capacity::parse(&a.host_blocks).context("--host-blocks")?,
        pool: Capacity::parse(&a.pool_blocks).context("--pool-blocks")?,
        routing: Routing::parse(&a.routing)?,
        policy: kvtier::policy::PolicyKind::parse(&a.policy)?,
        block_tokens: a.block_tokens,
        kv_bytes_per_token: a.kv_bytes_per_token,
        prefill_tokens_per_s: a.prefill_tps,
        host_gbps: a.host_gbps,
        pool_gbps: a.pool_gbps,
    };
    cfg.validate()?;
    let t0 = std::time::Instant::now();
    let trace = sim::trace::load(&a.trace, a.block_tokens)?;
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
                    c.trim()
                        .replace('_', "")
                        .parse::<usize>()
                        .with_context(|| format!("--sweep: `{c}` is not a number of blocks"))
                })
                .collect::<Result<_>>()?
        };
        let rows = sim::sweep(&trace, &caps, &cfg, |r| {
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
        std::fs::write(&a.plot, sim::plot::sweep_svg(&rows, &title))
            .with_context(|| format!("writing {}", a.plot.display()))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
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
    let r = sim::simulate(&trace, &cfg, |done, total| {
        eprintln!("kvtier sim: {done}/{total} requests")
    })?;
    eprintln!(
        "kvtier sim: replayed in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
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

fn bench_disk(a: DiskArgs) -> Result<()> {
    if a.object_size == 0 || a.total < a.object_size {
        bail!("--object-size must be at least 1 byte and --total at least one object");
    }
    let opts = bench::DiskBenchOptions {
        dir: a.dir,
        object_bytes: a.object_size as usize,
        total_bytes: a.total,
        rounds: a.rounds,
        threads: a.threads,
        io: IoMode::parse(&a.io)?,
    };
    let r = bench::disk(&opts, |msg| eprintln!("kvtier bench disk: {msg}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "disk bench: {} objects of {} KiB per phase, {} thread(s), io={}, O_DIRECT={}",
        r.objects,
        r.object_bytes >> 10,
        r.threads,
        r.io,
        r.direct
    );
    println!("{:<12} {:>10}   rounds (GB/s)", "phase", "GB/s");
    for p in &r.phases {
        let rounds: Vec<String> = p.rounds.iter().map(|x| format!("{x:.2}")).collect();
        println!("{:<12} {:>10.2}   {}", p.name, p.gbps, rounds.join(" "));
    }
    println!("put / raw write: {:.2}", r.put_ratio);
    println!("get / raw read:  {:.2}", r.get_ratio);
    Ok(())
}

fn bench_abi(a: AbiArgs) -> Result<()> {
    let opts = bench::AbiBenchOptions {
        blocks: a.blocks,
        rounds: a.rounds,
        lookups: a.lookups,
    };
    let r = bench::abi(&opts, |m| eprintln!("kvtier bench abi: {m}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("abi bench: {} blocks of {} KiB per round, agent in-process (memory only), one engine thread", r.blocks, r.object_bytes >> 10);
    println!("memcpy (1 thread)  {:>7.2} GB/s", r.memcpy_gbps);
    println!(
        "save               {:>7.2} GB/s   {:.2} of memcpy",
        r.save_gbps, r.save_ratio
    );
    println!(
        "load               {:>7.2} GB/s   {:.2} of memcpy",
        r.load_gbps, r.load_ratio
    );
    println!(
        "lookup, 128 blocks p50 {:.0} us, p99 {:.0} us",
        r.lookup_p50_us, r.lookup_p99_us
    );
    Ok(())
}

fn bench_ttft(a: TtftArgs) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = std::env::current_exe()?;
    let lib = exe.with_file_name("libkvtier.so");
    if !lib.exists() {
        bail!(
            "{} is missing: build it beside this binary with `cargo build --release -p kvtier-ffi`",
            lib.display()
        );
    }
    let status = std::process::Command::new(root.join("scripts/bench_ttft.sh"))
        .args(&a.args)
        .env("KVTIER_BIN", &exe)
        .env("KVTIER_LIB", &lib)
        .status()
        .context("running scripts/bench_ttft.sh")?;
    if !status.success() {
        bail!("the TTFT bench failed ({status})");
    }
    Ok(())
}

fn bench_pool(a: PoolBenchArgs) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let opts = bench::pool::PoolBenchOptions {
        dir: a.dir,
        sizes: a.sizes.iter().map(|&s| s as usize).collect(),
        concurrency: a.concurrency,
        total_bytes: a.total,
        rounds: a.rounds,
        pool: a.pool,
        secret: a
            .secret_file
            .as_deref()
            .map(kvtier::pool::auth::read_secret)
            .transpose()?,
        server_exe: std::env::current_exe()?,
        transport: kvtier::pool::client::Transport::parse(&a.transport)?,
        beside_tcp: a.beside_tcp,
        peers: a.peers,
        peers_script: root.join("benches/peers/peer_bench.py"),
        peers_venvs: a.peers_venvs,
    };
    let r = bench::pool::pool(&opts, |m| eprintln!("kvtier bench pool: {m}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{:<9} {:<11} {:>9} {:>5} {:>8} {:>10} {:>10} {:>9}",
        "system", "op", "size", "conc", "GB/s", "p50 us", "p99 us", "verified"
    );
    for row in &r.rows {
        println!(
            "{:<9} {:<11} {:>6} KiB {:>5} {:>8.2} {:>10.0} {:>10.0} {:>9}",
            row.system,
            row.op,
            row.size >> 10,
            row.concurrency,
            row.gbps,
            row.p50_us,
            row.p99_us,
            row.verified
        );
    }
    // Ratios, like against like, per size and concurrency.
    let find = |sys: &str, op: &str, size: usize, c: usize| {
        r.rows
            .iter()
            .find(|x| x.system == sys && x.op == op && x.size == size && x.concurrency == c)
            .map(|x| x.gbps)
    };
    for size in &opts.sizes {
        for &c in &opts.concurrency {
            let mut parts = Vec::new();
            let mut ratio = |name: &str, a: Option<f64>, b: Option<f64>| {
                if let (Some(a), Some(b)) = (a, b) {
                    parts.push(format!("{name} {:.2}", a / b));
                }
            };
            // kvtier's op against a reference row (system, op).
            for (ours, sys, op) in [
                ("put", "disk", "raw_write"),
                ("put", "disk", "raw_write_beside_tcp"),
                ("get_disk", "disk", "raw_read"),
                ("put", "minimal", "put"),
                ("get_disk", "minimal", "get"),
            ] {
                let name = match sys {
                    "disk" => format!("{ours}/{op}"),
                    _ => format!("{ours}/{sys}_{op}"),
                };
                ratio(
                    &name,
                    find("kvtier", ours, *size, c),
                    find(sys, op, *size, c),
                );
            }
            for p in ["mooncake", "lmcache", "redis"] {
                ratio(
                    &format!("get_cached/{p}_get"),
                    find("kvtier", "get_cached", *size, c),
                    find(p, "get", *size, c),
                );
                ratio(
                    &format!("put/{p}_put"),
                    find("kvtier", "put", *size, c),
                    find(p, "put", *size, c),
                );
            }
            if !parts.is_empty() {
                println!("{} KiB, {c} in flight: {}", size >> 10, parts.join(", "));
            }
        }
    }
    // Against the disk's ceiling: the best raw figure at any concurrency, per size.
    let best = |sys: &str, op: &str, size: usize| {
        r.rows
            .iter()
            .filter(|x| x.system == sys && x.op == op && x.size == size)
            .max_by(|a, b| a.gbps.total_cmp(&b.gbps))
            .map(|x| (x.gbps, x.concurrency))
    };
    // And against the minimal put/get over loopback TCP (what the network and the disk give
    // together on this machine).
    for &size in &opts.sizes {
        for (ours, sys, raw, what) in [
            ("put", "disk", "raw_write", "disk ceiling"),
            ("get_disk", "disk", "raw_read", "disk ceiling"),
            ("put", "minimal", "put", "loopback TCP + disk ceiling"),
            ("get_disk", "minimal", "get", "loopback TCP + disk ceiling"),
        ] {
            if let (Some((a, ca)), Some((b, cb))) =
                (best("kvtier", ours, size), best(sys, raw, size))
            {
                println!(
                    "{} KiB: best {ours} {a:.2} GB/s ({ca} in flight) / {what} {sys} {raw} {b:.2} GB/s ({cb} in flight) = {:.2}",
                    size >> 10,
                    a / b
                );
            }
        }
    }
    for (p, why) in &r.skipped {
        println!("skipped {p}: {why}");
    }
    Ok(())
}

fn bench_keys(a: KeyBenchArgs) -> Result<()> {
    let rows = bench::keys(a.prompt_tokens, a.seconds)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "block-key hashing, one core, {}-token prompt",
        a.prompt_tokens
    );
    println!("{:>16} {:>12} {:>14}", "tokens/block", "GB/s", "ns/block");
    for r in rows {
        println!(
            "{:>16} {:>12.2} {:>14.1}",
            r.tokens_per_block, r.gbps, r.ns_per_block
        );
    }
    Ok(())
}

fn keys(a: KeysArgs) -> Result<()> {
    let ns = Namespace::new(&NamespaceParams {
        model: a.model,
        revision: a.revision,
        kv_dtype: KvDtype::parse(&a.dtype)?,
        layout_id: a.layout,
        tokens_per_block: a.block_size,
        tp_size: a.tp_size,
        tp_rank: a.tp_rank,
        pp_size: a.pp_size,
        pp_rank: a.pp_rank,
        salt: a.salt.into_bytes(),
    })
    .context("invalid namespace")?;
    println!("namespace {}", ns.digest());
    for (i, k) in ns.block_keys(&a.tokens).iter().enumerate() {
        println!("block {i} {k}");
    }
    Ok(())
}
