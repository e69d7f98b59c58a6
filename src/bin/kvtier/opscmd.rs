//! The operator commands: `kvtier config check|default` and `kvtier stat`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kvtier::ops::config;
use kvtier::ops::{probe, stat};

/// `kvtier config ...`.
#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Check a configuration file as the daemons would load it (with KVTIER_* variables
    /// applied): unknown fields and bad values are errors naming the field. Unless --offline,
    /// also resolve and connect to every agent.pool_servers entry (1 s each) and read the
    /// secret files.
    Check(CheckArgs),
    /// Print a configuration file with every key at its default, commented.
    Default,
}

/// `kvtier config check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The file.
    file: PathBuf,
    /// Check values only: no name resolution, connection or file read.
    #[arg(long)]
    offline: bool,
    /// Sections to check (the daemon's and log). Default: all.
    #[arg(long, value_delimiter = ',', default_value = "log,agent,pool")]
    sections: Vec<String>,
    /// Print the effective configuration (TOML) after the check.
    #[arg(long)]
    print: bool,
}

/// Runs `kvtier config ...`.
pub fn config_cmd(c: ConfigCmd) -> Result<()> {
    match c {
        ConfigCmd::Default => {
            print!("{}", config::default_file());
            Ok(())
        }
        ConfigCmd::Check(a) => {
            let sections: Vec<&str> = a.sections.iter().map(String::as_str).collect();
            for s in &sections {
                if !config::SECTIONS.contains(s) {
                    bail!("--sections: `{s}` is not one of log, agent, pool");
                }
            }
            let loaded = crate::daemon::load(Some(&a.file), &[], &sections)?;
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let cfg = loaded.config;
            let mut checked = "values";
            if !a.offline {
                probe::check_files(&cfg, &sections)?;
                if sections.contains(&"agent") {
                    probe::check_pool_servers(&cfg.agent, Duration::from_secs(1))?;
                }
                checked = "values, pool servers reachable, secret files readable";
            }
            if a.print {
                print!("{}", cfg.to_toml());
            }
            eprintln!(
                "{}: ok ({}; sections {})",
                a.file.display(),
                checked,
                sections.join(", ")
            );
            Ok(())
        }
    }
}

/// `kvtier stat`.
#[derive(Args)]
pub struct StatArgs {
    /// The daemon's metrics address: host:port or http://host:port (the agent's default is
    /// 127.0.0.1:9464, a pool server's 127.0.0.1:9465).
    #[arg(default_value = "127.0.0.1:9464")]
    addr: String,
    /// Scrape once, print, and exit (counts since start; no rates).
    #[arg(long)]
    once: bool,
    /// JSON instead of the table: the counts by tier, op, queue and tenant, and every series.
    #[arg(long)]
    json: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Seconds one scrape may take.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
}

/// Runs `kvtier stat`.
pub fn stat_cmd(a: StatArgs) -> Result<()> {
    if !(a.interval > 0.0 && a.timeout > 0.0) {
        bail!("--interval and --timeout must be above zero");
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    if a.once {
        let s = stat::scrape(&a.addr, timeout)?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&stat::summary(&a.addr, &s))?
            );
        } else {
            print!("{}", stat::render(&a.addr, &s, None));
        }
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<stat::Snapshot> = None;
    loop {
        let frame = match stat::scrape(&a.addr, timeout) {
            Ok(s) => {
                let out = if a.json {
                    format!("{}\n", serde_json::to_string(&stat::summary(&a.addr, &s))?)
                } else {
                    stat::render(&a.addr, &s, prev.as_ref())
                };
                prev = Some(s);
                out
            }
            Err(e) => format!("kvtier stat {}: {e} (retrying)\n", a.addr),
        };
        let mut out = std::io::stdout().lock();
        if tty && !a.json {
            // Redraw in place: home, the frame, then clear what the last frame left below.
            write!(out, "\x1b[H\x1b[2J{frame}")?;
            write!(out, "\n(every {} s; Ctrl-C to quit)\n", a.interval)?;
        } else {
            write!(out, "{frame}")?;
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}
