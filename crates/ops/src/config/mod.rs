//! One TOML configuration for the daemons: `[log]`, `[agent]` (`kvtier agent`, alias
//! `kvtier up`) and `[pool]` (`kvtier pool`).
//!
//! Layers, each over the one before: the defaults below, the file, environment variables
//! (`KVTIER_<SECTION>_<KEY>`, e.g. `KVTIER_AGENT_ARENA_BYTES=4GiB`), then flags (`--arena-bytes`).
//! Every key has all three spellings ([`KEYS`]). Unknown fields and bad values are rejected
//! with the field's name and what is allowed; nothing is silently rewritten.

mod compose;
mod keys;
mod validate;
mod value;

pub use compose::describe_pool;
pub use keys::{default_file, keys_of, Key, KEYS, SECTIONS};
pub use value::{ByteSize, LogFormat, OptAddr, PoolTransport};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use kvtier_core::error::{Error, Result};
use value::FromText;

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// See [`KEYS`]. Default: `human`.
    pub format: LogFormat,
    /// See [`KEYS`]. Default: `warn`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Human,
            level: "warn".into(),
        }
    }
}

/// `[agent]`: `kvtier agent` (and `kvtier up`); becomes an [`kvtier_agent::AgentConfig`]
/// ([`AgentSection::agent_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// See [`KEYS`] (its default comes from the component it configures).
    pub socket: Option<PathBuf>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub data: PathBuf,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub arena_bytes: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub object_bytes: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub pool_bytes: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub segment_bytes: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub no_pool: bool,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub pool_servers: Vec<String>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub etcd: Vec<String>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub cluster: String,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub replication: usize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub pool_secret_file: Option<PathBuf>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub pool_transport: PoolTransport,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub pool_timeout_ms: u64,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub shared_dir: Option<PathBuf>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub write_queue: usize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub tenants: Vec<String>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub metrics_addr: OptAddr,
}

/// `[pool]`: `kvtier pool`; becomes a [`kvtier_pool::server::PoolServerConfig`]
/// ([`PoolSection::server_config`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// See [`KEYS`] (its default comes from the component it configures).
    pub listen: SocketAddr,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub control: OptAddr,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub data: PathBuf,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub capacity: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub segment_bytes: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub cache_bytes: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub stream_chunk: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub stall_timeout_ms: u64,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub max_connections: usize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub idle_timeout_ms: u64,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub request_memory: ByteSize,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub secret_file: Option<PathBuf>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub insecure_open: bool,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub etcd: Vec<String>,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub cluster: String,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub advertise: String,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub zone: String,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub io: String,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub ucx: bool,
    /// See [`KEYS`] (its default comes from the component it configures).
    pub metrics_addr: OptAddr,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[log]`.
    pub log: LogSection,
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[pool]`.
    pub pool: PoolSection,
}

/// Generates `set` (a key from text) and `FIELDS` for a section; a name that is not a field
/// does not compile, and a test checks that every field is listed.
macro_rules! setters {
    ($ty:ty, [$($field:ident),* $(,)?]) => {
        impl $ty {
            /// The keys, in file order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn set(&mut self, key: &str, text: &str) -> Option<Result<()>> {
                match key {
                    $(stringify!($field) => Some(FromText::from_text(text).map(|v| self.$field = v)),)*
                    _ => None,
                }
            }
        }
    };
}

setters!(LogSection, [format, level]);
setters!(
    AgentSection,
    [
        socket,
        data,
        arena_bytes,
        object_bytes,
        pool_bytes,
        segment_bytes,
        no_pool,
        pool_servers,
        etcd,
        cluster,
        replication,
        pool_secret_file,
        pool_transport,
        pool_timeout_ms,
        shared_dir,
        write_queue,
        tenants,
        metrics_addr,
    ]
);
setters!(
    PoolSection,
    [
        listen,
        control,
        data,
        capacity,
        segment_bytes,
        cache_bytes,
        stream_chunk,
        stall_timeout_ms,
        max_connections,
        idle_timeout_ms,
        request_memory,
        secret_file,
        insecure_open,
        etcd,
        cluster,
        advertise,
        zone,
        io,
        ucx,
        metrics_addr,
    ]
);

/// A value set over the file: by an environment variable or a flag.
#[derive(Debug, Clone)]
pub struct Override {
    /// The key.
    pub key: &'static Key,
    /// Its value as text (lists comma-separated, switches `true`/`false`).
    pub value: String,
    /// Where it came from, for messages: `env KVTIER_AGENT_DATA`, `flag --data`.
    pub from: String,
}

/// What [`Config::load`] returns: the configuration and anything worth a warning.
#[derive(Debug)]
pub struct Loaded {
    /// The effective configuration (validated for the sections asked for).
    pub config: Config,
    /// Warnings to log once logging is set up (unknown environment variables).
    pub warnings: Vec<String>,
    /// The keys the file, the environment or a flag set (`agent.metrics_addr`); the others
    /// have their defaults.
    pub explicit: std::collections::BTreeSet<String>,
}

fn field_error(field: impl std::fmt::Display, problem: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{field}: {problem}"))
}

impl Config {
    /// Parses a file's text (no validation beyond types). Errors name the field
    /// (`pool.capacity: ...`) and the line.
    pub fn parse(text: &str) -> Result<Config> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(text, None, &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            toml_error(text, Some(path), e.inner())
        })
    }

    /// Reads and parses a file; also returns the keys it sets (`agent.data`).
    fn read_with_keys(path: &Path) -> Result<(Config, Vec<String>)> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io("reading the configuration file", e).with_context("path", path.display())
        })?;
        let c = Config::parse(&text).map_err(|e| e.with_context("file", path.display()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            Error::invalid(e.message().to_string()).with_context("file", path.display())
        })?;
        let keys = table
            .iter()
            .filter_map(|(s, v)| Some((s, v.as_table()?)))
            .flat_map(|(s, t)| t.keys().map(move |k| format!("{s}.{k}")))
            .collect();
        Ok((c, keys))
    }

    /// The layers: defaults, then `file`, then `env` (the process environment, as pairs), then
    /// `flags`; then [`validate`](Self::validate) of `sections`. Environment variables apply to
    /// `sections` only.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[Override],
        sections: &[&str],
    ) -> Result<Loaded> {
        let (mut config, mut explicit) = match file {
            Some(p) => {
                let (c, keys) = Config::read_with_keys(p)?;
                (c, keys.into_iter().collect())
            }
            None => (Config::default(), std::collections::BTreeSet::new()),
        };
        let (from_env, warnings) = env_overrides(env, sections);
        for o in from_env.iter().chain(flags) {
            config.apply(o)?;
            explicit.insert(o.key.path());
        }
        config.validate(sections)?;
        Ok(Loaded {
            config,
            warnings,
            explicit,
        })
    }

    /// Sets one key from text.
    pub fn apply(&mut self, o: &Override) -> Result<()> {
        let (s, k) = (o.key.section, o.key.name);
        let r = match s {
            "log" => self.log.set(k, &o.value),
            "agent" => self.agent.set(k, &o.value),
            "pool" => self.pool.set(k, &o.value),
            _ => None,
        };
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => {
                Err(field_error(o.key.path(), why.message()).with_context("from", &o.from))
            }
            None => {
                Err(field_error(o.key.path(), "not a configuration key")
                    .with_context("from", &o.from))
            }
        }
    }

    /// Checks the values of `sections` (`log`, `agent`, `pool`); the first bad one is an
    /// error naming its field and what is allowed.
    pub fn validate(&self, sections: &[&str]) -> Result<()> {
        for s in sections {
            match *s {
                "log" => self.log.validate()?,
                "agent" => self.agent.validate()?,
                "pool" => self.pool.validate()?,
                other => return Err(Error::invalid(format!("unknown section `{other}`"))),
            }
        }
        Ok(())
    }

    /// The configuration as a TOML file (unset optional keys are left out).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serialises")
    }
}

fn toml_error(text: &str, path: Option<String>, e: &toml::de::Error) -> Error {
    let mut msg = match path.as_deref() {
        Some(p) if !p.is_empty() && p != "." => format!("{p}: {}", e.message().trim()),
        _ => e.message().trim().to_string(),
    };
    if let Some(span) = e.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        msg.push_str(&format!(" (line {line})"));
    }
    Error::invalid(msg)
}

/// Overrides from `KVTIER_<SECTION>_<KEY>` variables of `sections`. A variable with a
/// section's prefix that names no key is a warning, not an error: the environment is shared
/// with other software (Kubernetes, for one, adds `<SERVICE>_PORT` variables).
pub fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
    sections: &[&str],
) -> (Vec<Override>, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut legacy_level = None;
    for (name, value) in env {
        if name == "KVTIER_LOG" && sections.contains(&"log") {
            legacy_level = Some(value);
            continue;
        }
        for s in sections {
            let prefix = format!("KVTIER_{}_", s.to_ascii_uppercase());
            if !name.starts_with(&prefix) {
                continue;
            }
            match keys_of(s).find(|k| k.env() == name) {
                Some(key) => out.push(Override {
                    key,
                    value: value.clone(),
                    from: format!("env {name}"),
                }),
                None => warnings.push(format!(
                    "environment variable {name} names no `[{s}]` key (ignored); the keys are {}",
                    keys_of(s).map(|k| k.env()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
    }
    // KVTIER_LOG (the older name) counts unless KVTIER_LOG_LEVEL is set.
    if let Some(v) = legacy_level {
        if !out.iter().any(|o| o.key.path() == "log.level") {
            let key = keys_of("log")
                .find(|k| k.name == "level")
                .expect("log.level");
            out.insert(
                0,
                Override {
                    key,
                    value: v,
                    from: "env KVTIER_LOG".into(),
                },
            );
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests;
