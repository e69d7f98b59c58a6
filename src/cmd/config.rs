//! `kvtier config check|default`: check a configuration file, or print the default one.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use kvtier_core::error::{Error, Result};
use kvtier_ops::{config, probe};

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
pub fn run(c: ConfigCmd) -> Result<()> {
    match c {
        ConfigCmd::Default => {
            print!("{}", config::default_file());
            Ok(())
        }
        ConfigCmd::Check(a) => {
            let sections: Vec<&str> = a.sections.iter().map(String::as_str).collect();
            for s in &sections {
                if !config::SECTIONS.contains(s) {
                    return Err(Error::invalid(format!(
                        "--sections: `{s}` is not one of log, agent, pool"
                    )));
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
