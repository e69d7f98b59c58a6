//! The `kvtier` command: one binary with subcommands.

mod cmd;
mod daemon;

use clap::{Parser, Subcommand};
use kvtier_core::error::Result;

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
    Bench(cmd::bench::BenchCmd),
    /// Print the block keys of a token sequence (the key spec, docs/key-spec.md).
    Keys(cmd::keys::KeysArgs),
    /// Replay a request trace through kvtier's tiers and eviction policy (capacity planning).
    Sim(cmd::sim::SimArgs),
    /// Run the node agent (by default with an embedded pool on a local data directory).
    #[command(visible_alias = "up")]
    Agent(daemon::DaemonArgs<daemon::AgentKeys>),
    /// Run a pool server: a segment store on this node's disk served over TCP.
    Pool(daemon::DaemonArgs<daemon::PoolKeys>),
    /// Check a configuration file, or print the default one.
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
    /// Watch a running agent or pool server (from its /metrics): hit ratio, throughput, usage,
    /// errors; refreshes in place.
    Stat(cmd::stat::StatArgs),
}

/// Parses `2MiB`, `512KiB`, `1GiB`, `4096`, `1.5GB`.
pub(crate) fn parse_size(s: &str) -> kvtier_core::error::Result<u64> {
    kvtier_ops::config::ByteSize::parse(s).map(|b| b.0)
}

/// Prints a report as pretty JSON (`--json`).
pub(crate) fn print_json(report: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).expect("the report serialises")
    );
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
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
        Cmd::Bench(c) => cmd::bench::run(c),
        Cmd::Keys(a) => cmd::keys::run(a),
        Cmd::Sim(a) => cmd::sim::run(a),
        Cmd::Agent(_) => cmd::up::run(loaded),
        Cmd::Pool(_) => cmd::pool::run(loaded),
        Cmd::Config(c) => cmd::config::run(c),
        Cmd::Stat(a) => cmd::stat::run(a),
    }
}
