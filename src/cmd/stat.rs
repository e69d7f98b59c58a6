//! `kvtier stat`: watch a running agent or pool server (from its /metrics).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use kvtier_core::error::{Error, Result};
use kvtier_ops::stat;

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
pub fn run(a: StatArgs) -> Result<()> {
    if !(a.interval > 0.0 && a.timeout > 0.0) {
        return Err(Error::invalid(
            "--interval and --timeout must be above zero",
        ));
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    if a.once {
        let s = stat::scrape(&a.addr, timeout)?;
        if a.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&stat::summary(&a.addr, &s))
                    .expect("the report serialises")
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
                    format!(
                        "{}\n",
                        serde_json::to_string(&stat::summary(&a.addr, &s))
                            .expect("the report serialises")
                    )
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
            write!(out, "\x1b[H\x1b[2J{frame}")
                .map_err(|e| Error::io("writing to the terminal", e))?;
            write!(out, "\n(every {} s; Ctrl-C to quit)\n", a.interval)
                .map_err(|e| Error::io("writing to the terminal", e))?;
        } else {
            write!(out, "{frame}").map_err(|e| Error::io("writing to the terminal", e))?;
        }
        out.flush()
            .map_err(|e| Error::io("writing to the terminal", e))?;
        drop(out);
        std::thread::sleep(Duration::from_secs_f64(a.interval));
    }
}
