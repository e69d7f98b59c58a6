//! The daemons (`kvtier agent`, alias `up`; `kvtier pool`): their flags (one per configuration
//! key, generated from [`config::KEYS`]), loading the configuration, logging, and running them
//! with their metrics endpoint.

use std::marker::PhantomData;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use kvtier_core::error::{Error, Result};
use kvtier_ops::config::{self, Config, LogFormat, LogSection, Override};

/// Which section a daemon's flags set.
pub trait Section {
    /// `agent` or `pool`.
    const NAME: &'static str;
}

/// `[agent]`.
pub struct AgentKeys;
impl Section for AgentKeys {
    const NAME: &'static str = "agent";
}

/// `[pool]`.
pub struct PoolKeys;
impl Section for PoolKeys {
    const NAME: &'static str = "pool";
}

/// A daemon's arguments: the configuration file, and one flag per key of its section.
pub struct DaemonArgs<S> {
    /// `--config FILE` (or `KVTIER_CONFIG`).
    pub config: Option<PathBuf>,
    /// `--dry-run`: print the effective configuration and exit.
    pub dry_run: bool,
    /// The flags given, as overrides of the file and the environment.
    pub flags: Vec<Override>,
    _section: PhantomData<S>,
}

fn flag_help(k: &config::Key) -> String {
    let default = match k.default {
        Some(d) => format!("; default {d}"),
        None => String::new(),
    };
    format!("{} [config {}, env {}{default}]", k.help, k.path(), k.env())
}

impl<S: Section> Args for DaemonArgs<S> {
    fn augment_args(cmd: Command) -> Command {
        let mut cmd = cmd
            .arg(
                Arg::new("config")
                    .long("config")
                    .env("KVTIER_CONFIG")
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(PathBuf))
                    .help("Configuration file (TOML; `kvtier config default` prints one). Flags and KVTIER_* variables override it."),
            )
            .arg(
                Arg::new("dry-run")
                    .long("dry-run")
                    .action(ArgAction::SetTrue)
                    .help("Check the configuration (file, environment, flags), print it, and exit."),
            );
        for k in config::keys_of(S::NAME) {
            let long = k.flag().trim_start_matches("--").to_string();
            let mut a = Arg::new(k.name)
                .long(long)
                .value_name(k.name.to_ascii_uppercase())
                .help(flag_help(k));
            if k.is_switch() {
                a = a
                    .num_args(0..=1)
                    .require_equals(true)
                    .default_missing_value("true");
            } else if k.is_list() {
                a = a.action(ArgAction::Append).value_delimiter(',');
            }
            cmd = cmd.arg(a);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<S: Section> FromArgMatches for DaemonArgs<S> {
    fn from_arg_matches(m: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        let mut flags = Vec::new();
        for k in config::keys_of(S::NAME) {
            if m.value_source(k.name) != Some(clap::parser::ValueSource::CommandLine) {
                continue;
            }
            let values: Vec<String> = m
                .get_raw(k.name)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            flags.push(Override {
                key: k,
                value: values.join(","),
                from: format!("flag {}", k.flag()),
            });
        }
        Ok(DaemonArgs {
            config: m.get_one::<PathBuf>("config").cloned(),
            dry_run: m.get_flag("dry-run"),
            flags,
            _section: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The global `--log-format` and `--log-level` flags as overrides.
pub fn log_flags(format: Option<String>, level: Option<String>) -> Vec<Override> {
    let mut out = Vec::new();
    for (name, v) in [("format", format), ("level", level)] {
        if let Some(v) = v {
            let key = config::keys_of("log")
                .find(|k| k.name == name)
                .expect("a log key");
            out.push(Override {
                key,
                value: v,
                from: format!("flag {}", key.flag()),
            });
        }
    }
    out
}

/// Loads the configuration of `sections` from `file`, the environment and `flags`.
pub fn load(
    file: Option<&std::path::Path>,
    flags: &[Override],
    sections: &[&str],
) -> Result<config::Loaded> {
    // vars() would panic on a variable that is not UTF-8, anyone's: take ours, lossily.
    let env = std::env::vars_os().filter_map(|(k, v)| {
        let k = k.into_string().ok()?;
        k.starts_with("KVTIER_")
            .then(|| (k, v.to_string_lossy().into_owned()))
    });
    Config::load(file, env, flags, sections)
}

/// Sets up logging (to stderr) and logs the configuration's warnings.
pub fn init_logs(l: &LogSection, warnings: &[String]) {
    let filter = tracing_subscriber::EnvFilter::try_new(&l.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match l.format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().with_current_span(true).with_span_list(true).init(),
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Binds the metrics endpoint of a daemon and serves it until `stop` says so. A busy address
/// is an error when the address was configured (`explicit`); at the built-in default it is a
/// warning, so that several daemons can run on one machine without a configuration.
pub async fn metrics_endpoint(
    who: &str,
    addr: Option<std::net::SocketAddr>,
    field: &str,
    explicit: bool,
    handler: kvtier_ops::http::Handler,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let l = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if !explicit => {
            tracing::warn!(%addr, error = %e, "no metrics endpoint: the default address is taken; set {field}");
            println!("kvtier {who}: metrics off ({addr}: {e}; set {field})");
            return Ok(());
        }
        Err(e) => {
            return Err(Error::io(format!("{field}: cannot listen on {addr}"), e));
        }
    };
    println!(
        "kvtier {who}: metrics http://{}/metrics",
        l.local_addr()
            .map_err(|e| Error::io("the metrics listener", e))?
    );
    tokio::spawn(kvtier_ops::http::serve(l, handler, async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok(())
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct T {
        #[command(subcommand)]
        cmd: C,
    }

    #[derive(clap::Subcommand)]
    enum C {
        Agent(DaemonArgs<AgentKeys>),
        Pool(DaemonArgs<PoolKeys>),
    }

    #[test]
    fn every_flag_is_a_key_and_every_key_a_flag() {
        let cmd = T::command();
        for (sub, section) in [("agent", "agent"), ("pool", "pool")] {
            let c = cmd.find_subcommand(sub).unwrap();
            let flags: Vec<String> = c
                .get_arguments()
                .filter(|a| !["config", "dry-run", "help"].contains(&a.get_id().as_str()))
                .map(|a| format!("--{}", a.get_long().unwrap()))
                .collect();
            let keys: Vec<String> = config::keys_of(section).map(|k| k.flag()).collect();
            assert_eq!(flags, keys, "{sub}");
        }
    }

    #[test]
    fn flags_become_overrides() {
        use clap::Parser;
        let t = T::try_parse_from([
            "t",
            "agent",
            "--arena-bytes",
            "48MiB",
            "--pool-servers",
            "a:1,b:2",
            "--pool-servers",
            "c:3",
            "--no-pool",
            "--data",
            "d",
        ])
        .unwrap();
        let C::Agent(a) = t.cmd else { panic!() };
        let got: Vec<(String, String)> = a
            .flags
            .iter()
            .map(|o| (o.key.path(), o.value.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("agent.data".to_string(), "d".to_string()),
                ("agent.arena_bytes".into(), "48MiB".into()),
                ("agent.no_pool".into(), "true".into()),
                ("agent.pool_servers".into(), "a:1,b:2,c:3".into()),
            ]
        );
        let t = T::try_parse_from(["t", "pool", "--ucx=false", "--capacity", "1GiB"]).unwrap();
        let C::Pool(p) = t.cmd else { panic!() };
        assert_eq!(p.flags.len(), 2);
        assert_eq!(p.flags[1].value, "false");
    }
}
