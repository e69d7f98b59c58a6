//! One TOML configuration for the daemons: `[log]`, `[agent]` (`kvtier agent`, alias
//! `kvtier up`) and `[pool]` (`kvtier pool`).
//!
//! Layers, each over the one before: the defaults below, the file, environment variables
//! (`KVTIER_<SECTION>_<KEY>`, e.g. `KVTIER_AGENT_ARENA_BYTES=4GiB`), then flags (`--arena-bytes`).
//! Every key has all three spellings ([`KEYS`]). Unknown fields and bad values are rejected
//! with the field's name and what is allowed; nothing is silently rewritten.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One configuration key: its section and name, its default as written in the file, and what
/// it does. The table [`KEYS`] drives the flags, the environment variables, the commented
/// default file (`kvtier config default`) and the README's reference.
#[derive(Debug)]
pub struct Key {
    /// `log`, `agent` or `pool`.
    pub section: &'static str,
    /// The key inside its section.
    pub name: &'static str,
    /// The default as a TOML value; `None` when unset by default.
    pub default: Option<&'static str>,
    /// For a key unset by default: an example value (TOML), shown commented out.
    pub example: &'static str,
    /// What it does.
    pub help: &'static str,
}

impl Key {
    /// `agent.arena_bytes`.
    pub fn path(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }

    /// `--arena-bytes` (`--log-format` for the `[log]` section, whose flags are global).
    pub fn flag(&self) -> String {
        let name = self.name.replace('_', "-");
        match self.section {
            "log" => format!("--log-{name}"),
            _ => format!("--{name}"),
        }
    }

    /// `KVTIER_AGENT_ARENA_BYTES`.
    pub fn env(&self) -> String {
        format!("KVTIER_{}_{}", self.section, self.name).to_ascii_uppercase()
    }

    /// Whether the key is a switch (a flag without a value).
    pub fn is_switch(&self) -> bool {
        matches!(self.default, Some("true") | Some("false"))
    }

    /// Whether the key is a list (comma-separated in flags and the environment).
    pub fn is_list(&self) -> bool {
        self.default.is_some_and(|d| d.starts_with('['))
    }
}

macro_rules! key {
    ($section:literal, $name:literal, $default:expr, $example:literal, $help:literal) => {
        Key {
            section: $section,
            name: $name,
            default: $default,
            example: $example,
            help: $help,
        }
    };
}

/// Every configuration key, in file order.
pub const KEYS: &[Key] = &[
    key!("log", "format", Some("\"human\""), "",
        "Log format: `human` (text lines) or `json` (one object per line, with the fields of the request's span)."),
    key!("log", "level", Some("\"warn\""), "",
        "Log filter: a level (error, warn, info, debug, trace) or tracing directives such as `kvtier=debug,tonic=warn`. The environment variable KVTIER_LOG is read too (its older name)."),
    key!("agent", "socket", None, "\"/run/kvtier/agent.sock\"",
        "gRPC socket engines connect to (the descriptor socket is this path + `.fd`). Default: $XDG_RUNTIME_DIR/kvtier/agent.sock, else /tmp/kvtier-$UID/agent.sock."),
    key!("agent", "data", Some("\"kvtier-data\""), "",
        "Directory of the embedded pool's segment files (created if missing)."),
    key!("agent", "arena_bytes", Some("\"1GiB\""), "",
        "Host memory shared with engines (a size: bytes, or with a unit: KiB, MiB, GiB, TiB, KB, MB, GB, TB)."),
    key!("agent", "object_bytes", Some("\"2MiB\""), "",
        "Payload bytes of one block object: the engines' layout object size (at most 64 MiB)."),
    key!("agent", "pool_bytes", Some("\"16GiB\""), "",
        "Capacity of the embedded pool on disk, or of the shared directory."),
    key!("agent", "segment_bytes", Some("\"64MiB\""), "",
        "Segment file size of the embedded pool (a multiple of 4 KiB, at least 64 KiB)."),
    key!("agent", "no_pool", Some("false"), "",
        "Memory only: no pool."),
    key!("agent", "pool_servers", Some("[]"), "",
        "Use pool servers (`kvtier pool`) instead of the embedded pool: `host:port` or `host:port=weight` each."),
    key!("agent", "replication", Some("1"), "",
        "Copies of each block on pool servers (at most the number of servers)."),
    key!("agent", "pool_secret_file", None, "\"/etc/kvtier/secret/pool-secret\"",
        "File with the pool servers' shared secret."),
    key!("agent", "pool_transport", Some("\"tcp\""), "",
        "Transport to pool servers: `tcp`, or `ucx` (built with feature `ucx`)."),
    key!("agent", "pool_timeout_ms", Some("2000"), "",
        "Deadline of one call to pool servers, reconnects and every replica included, in milliseconds."),
    key!("agent", "shared_dir", None, "\"/mnt/shared/kvtier\"",
        "Use a directory shared by every node (a parallel file system) instead of the embedded pool; `pool_bytes` bounds it."),
    key!("agent", "write_queue", Some("4096"), "",
        "Blocks waiting to be written behind to the pool, at most; when full the oldest is dropped (a future miss, counted)."),
    key!("agent", "metrics_addr", Some("\"127.0.0.1:9464\""), "",
        "HTTP address of /metrics, /healthz and /readyz, or `none`."),
    key!("pool", "listen", Some("\"0.0.0.0:7070\""), "",
        "Data-plane address (framed binary protocol over TCP)."),
    key!("pool", "control", Some("\"127.0.0.1:7071\""), "",
        "Control-plane address (gRPC: health, stats, drain), or `none`."),
    key!("pool", "data", Some("\"kvtier-pool-data\""), "",
        "Directory of the segment files (created if missing)."),
    key!("pool", "capacity", Some("\"16GiB\""), "",
        "Capacity on disk (at least two segments)."),
    key!("pool", "segment_bytes", Some("\"64MiB\""), "",
        "Segment file size (a multiple of 4 KiB, at least 64 KiB)."),
    key!("pool", "cache_bytes", Some("\"1GiB\""), "",
        "DRAM cache of hot objects in front of the disk (0: none)."),
    key!("pool", "secret_file", None, "\"/etc/kvtier/secret/pool-secret\"",
        "File holding the shared secret peers must prove (at least 16 bytes). Without it the data plane is open to anyone who can reach the port."),
    key!("pool", "io", Some("\"auto\""), "",
        "I/O engine: `auto` (io_uring, else psync), `io_uring` or `psync`."),
    key!("pool", "ucx", Some("false"), "",
        "Also serve UCX clients (built with feature `ucx`; UCX_TLS etc. from the environment)."),
    key!("pool", "metrics_addr", Some("\"127.0.0.1:9465\""), "",
        "HTTP address of /metrics, /healthz and /readyz, or `none`."),
];

/// The keys of `section`.
pub fn keys_of(section: &str) -> impl Iterator<Item = &'static Key> + '_ {
    KEYS.iter().filter(move |k| k.section == section)
}

/// The sections, in file order.
pub const SECTIONS: [&str; 3] = ["log", "agent", "pool"];

/// A size in bytes: an integer, or a string with a unit (`"1GiB"`, `"512KiB"`, `"1.5GB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `2MiB`, `512KiB`, `1GiB`, `4096`, `1.5GB`.
    pub fn parse(s: &str) -> std::result::Result<ByteSize, String> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(format!("`{s}` is negative; a size is 0 or more"));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (examples: 4096, 256KiB, 2MiB, 1GiB)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            u => {
                return Err(format!(
                    "unknown size unit `{u}` in `{s}` (use KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
                ))
            }
        };
        let v = n * mult as f64;
        if !(v.is_finite() && v < u64::MAX as f64) {
            return Err(format!("`{s}` is too large"));
        }
        Ok(ByteSize(v as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if v != 0 && v % (1u64 << shift) == 0 {
                return write!(f, "{}{unit}", v >> shift);
            }
        }
        write!(f, "{v}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"2MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is 0 or more")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A listening address, or `none` for no listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptAddr(pub Option<SocketAddr>);

impl OptAddr {
    fn parse(s: &str) -> std::result::Result<OptAddr, String> {
        match s.trim() {
            "none" => Ok(OptAddr(None)),
            t => t
                .parse()
                .map(|a| OptAddr(Some(a)))
                .map_err(|_| format!("`{s}` is not an address such as 127.0.0.1:9464 (or `none`)")),
        }
    }
}

impl Serialize for OptAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for OptAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        OptAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Transport from the agent to pool servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolTransport {
    /// The framed protocol over TCP.
    #[default]
    Tcp,
    /// UCX (feature `ucx`).
    Ucx,
}

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

/// `[agent]`: `kvtier agent` (and `kvtier up`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Default: runtime directory (see [`KEYS`]).
    pub socket: Option<PathBuf>,
    /// Default: `kvtier-data`.
    pub data: PathBuf,
    /// Default: `1 GiB`.
    pub arena_bytes: ByteSize,
    /// Default: `2 MiB`.
    pub object_bytes: ByteSize,
    /// Default: `16 GiB`.
    pub pool_bytes: ByteSize,
    /// Default: `64 MiB`.
    pub segment_bytes: ByteSize,
    /// Default: `false`.
    pub no_pool: bool,
    /// Default: none (the embedded pool).
    pub pool_servers: Vec<String>,
    /// Default: `1`.
    pub replication: usize,
    /// Default: none.
    pub pool_secret_file: Option<PathBuf>,
    /// Default: `tcp`.
    pub pool_transport: PoolTransport,
    /// Default: `2000`.
    pub pool_timeout_ms: u64,
    /// Default: none.
    pub shared_dir: Option<PathBuf>,
    /// Default: `4096`.
    pub write_queue: usize,
    /// Default: `127.0.0.1:9464`.
    pub metrics_addr: OptAddr,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            socket: None,
            data: "kvtier-data".into(),
            arena_bytes: ByteSize(1 << 30),
            object_bytes: ByteSize(2 << 20),
            pool_bytes: ByteSize(16 << 30),
            segment_bytes: ByteSize(64 << 20),
            no_pool: false,
            pool_servers: Vec::new(),
            replication: 1,
            pool_secret_file: None,
            pool_transport: PoolTransport::Tcp,
            pool_timeout_ms: 2000,
            shared_dir: None,
            write_queue: 4096,
            metrics_addr: OptAddr(Some(([127, 0, 0, 1], 9464).into())),
        }
    }
}

/// `[pool]`: `kvtier pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Default: `0.0.0.0:7070`.
    pub listen: SocketAddr,
    /// Default: `127.0.0.1:7071`.
    pub control: OptAddr,
    /// Default: `kvtier-pool-data`.
    pub data: PathBuf,
    /// Default: `16 GiB`.
    pub capacity: ByteSize,
    /// Default: `64 MiB`.
    pub segment_bytes: ByteSize,
    /// Default: `1 GiB`.
    pub cache_bytes: ByteSize,
    /// Default: none.
    pub secret_file: Option<PathBuf>,
    /// Default: `auto`.
    pub io: String,
    /// Default: `false`.
    pub ucx: bool,
    /// Default: `127.0.0.1:9465`.
    pub metrics_addr: OptAddr,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            listen: ([0, 0, 0, 0], 7070).into(),
            control: OptAddr(Some(([127, 0, 0, 1], 7071).into())),
            data: "kvtier-pool-data".into(),
            capacity: ByteSize(16 << 30),
            segment_bytes: ByteSize(64 << 20),
            cache_bytes: ByteSize(1 << 30),
            secret_file: None,
            io: "auto".into(),
            ucx: false,
            metrics_addr: OptAddr(Some(([127, 0, 0, 1], 9465).into())),
        }
    }
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

/// Values from text (flags and environment variables).
trait FromText: Sized {
    fn from_text(s: &str) -> std::result::Result<Self, String>;
}

impl FromText for ByteSize {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        ByteSize::parse(s)
    }
}

impl FromText for OptAddr {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        OptAddr::parse(s)
    }
}

impl FromText for SocketAddr {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address such as 0.0.0.0:7070"))
    }
}

impl FromText for bool {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("`{s}` is not `true` or `false`")),
        }
    }
}

macro_rules! from_text_number {
    ($($t:ty),*) => {$(
        impl FromText for $t {
            fn from_text(s: &str) -> std::result::Result<Self, String> {
                let t = s.trim().replace('_', "");
                if t.starts_with('-') {
                    return Err(format!("`{s}` is negative; expected a whole number, 0 or more"));
                }
                t.parse().map_err(|_| format!("`{s}` is not a whole number"))
            }
        }
    )*};
}
from_text_number!(usize, u64);

impl FromText for String {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        Ok(s.to_string())
    }
}

impl FromText for PathBuf {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() {
            return Err("a path cannot be empty".into());
        }
        Ok(PathBuf::from(s))
    }
}

/// An empty text unsets an optional key.
impl FromText for Option<PathBuf> {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        Ok((!s.is_empty()).then(|| PathBuf::from(s)))
    }
}

/// Comma-separated; an empty text is an empty list.
impl FromText for Vec<String> {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect())
    }
}

impl FromText for LogFormat {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not `human` or `json`")),
        }
    }
}

impl FromText for PoolTransport {
    fn from_text(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "tcp" => Ok(PoolTransport::Tcp),
            "ucx" => Ok(PoolTransport::Ucx),
            _ => Err(format!("`{s}` is not `tcp` or `ucx`")),
        }
    }
}

/// Generates `set` (a key from text) and `FIELDS` for a section; a name that is not a field
/// does not compile, and a test checks that every field is listed.
macro_rules! setters {
    ($ty:ty, [$($field:ident),* $(,)?]) => {
        impl $ty {
            /// The keys, in file order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn set(&mut self, key: &str, text: &str) -> Option<std::result::Result<(), String>> {
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
        replication,
        pool_secret_file,
        pool_transport,
        pool_timeout_ms,
        shared_dir,
        write_queue,
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
        secret_file,
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

    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<Config> {
        Config::read_with_keys(path).map(|(c, _)| c)
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
            Some(Err(why)) => Err(field_error(o.key.path(), why).with_context("from", &o.from)),
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

/// Largest record the pool's data plane carries (its `max_body`).
const MAX_OBJECT: u64 = 64 << 20;

fn check_segment(field: &str, seg: ByteSize) -> Result<()> {
    if seg.0 % 4096 != 0 || seg.0 < 64 << 10 {
        return Err(field_error(
            field,
            format!("{seg} is not a multiple of 4 KiB of at least 64 KiB"),
        ));
    }
    Ok(())
}

impl LogSection {
    fn validate(&self) -> Result<()> {
        tracing_subscriber::EnvFilter::try_new(&self.level).map_err(|e| {
            field_error(
                "log.level",
                format!("`{}` is not a level (error, warn, info, debug, trace) or a list of tracing directives: {e}", self.level),
            )
        })?;
        Ok(())
    }
}

impl AgentSection {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let obj = self.object_bytes.0;
        if obj == 0 || obj > MAX_OBJECT {
            return Err(field_error(
                "agent.object_bytes",
                format!("{} is outside 1 byte to 64MiB", self.object_bytes),
            ));
        }
        let slot = crate::block::record_len(obj as usize) as u64;
        if self.arena_bytes.0 < slot {
            return Err(field_error(
                "agent.arena_bytes",
                format!(
                    "{} holds no {}-byte object; at least {} ({} per slot)",
                    self.arena_bytes,
                    obj,
                    ByteSize(slot),
                    slot
                ),
            ));
        }
        if self
            .socket
            .as_ref()
            .is_some_and(|s| s.as_os_str().is_empty())
        {
            return Err(field_error(
                "agent.socket",
                "an empty path; leave it out for the default",
            ));
        }
        let chosen: Vec<&str> = [
            (self.no_pool, "agent.no_pool"),
            (!self.pool_servers.is_empty(), "agent.pool_servers"),
            (self.shared_dir.is_some(), "agent.shared_dir"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if chosen.len() > 1 {
            return Err(field_error(
                chosen[1],
                format!("conflicts with {}: choose one pool (none, servers, a shared directory, or the embedded one)", chosen[0]),
            ));
        }
        if self.pool_servers.is_empty() && self.shared_dir.is_none() && !self.no_pool {
            check_segment("agent.segment_bytes", self.segment_bytes)?;
            if self.pool_bytes.0 < 2 * self.segment_bytes.0 {
                return Err(field_error(
                    "agent.pool_bytes",
                    format!(
                        "{} holds fewer than two segments of agent.segment_bytes = {}",
                        self.pool_bytes, self.segment_bytes
                    ),
                ));
            }
            if self.segment_bytes.0 < slot {
                return Err(field_error(
                    "agent.segment_bytes",
                    format!("{} holds no {}-byte object", self.segment_bytes, obj),
                ));
            }
        }
        if self.shared_dir.is_some() && self.pool_bytes.0 == 0 {
            return Err(field_error(
                "agent.pool_bytes",
                "0; the shared directory needs room",
            ));
        }
        for (i, m) in self.pool_servers.iter().enumerate() {
            crate::pool::placement::Member::parse(m).map_err(|e| {
                field_error(
                    format!("agent.pool_servers[{i}]"),
                    format!("`{m}`: {}", e.message()),
                )
            })?;
        }
        if self.replication == 0 {
            return Err(field_error("agent.replication", "0; at least 1"));
        }
        if !self.pool_servers.is_empty() && self.replication > self.pool_servers.len() {
            return Err(field_error(
                "agent.replication",
                format!(
                    "{} copies on {} server(s); at most as many as agent.pool_servers",
                    self.replication,
                    self.pool_servers.len()
                ),
            ));
        }
        if self.pool_transport == PoolTransport::Ucx && cfg!(not(feature = "ucx")) {
            return Err(field_error(
                "agent.pool_transport",
                "`ucx`, but this kvtier was built without feature `ucx`; use `tcp`",
            ));
        }
        if self.pool_timeout_ms == 0 {
            return Err(field_error("agent.pool_timeout_ms", "0; at least 1"));
        }
        if self.write_queue == 0 {
            return Err(field_error("agent.write_queue", "0; at least 1"));
        }
        Ok(())
    }
}

impl PoolSection {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_segment("pool.segment_bytes", self.segment_bytes)?;
        if self.capacity.0 == 0 {
            return Err(field_error("pool.capacity", "0; a pool needs room"));
        }
        if self.capacity.0 < 2 * self.segment_bytes.0 {
            return Err(field_error(
                "pool.capacity",
                format!(
                    "{} holds fewer than two segments of pool.segment_bytes = {}",
                    self.capacity, self.segment_bytes
                ),
            ));
        }
        crate::tier::io::IoMode::parse(&self.io).map_err(|_| {
            field_error(
                "pool.io",
                format!("`{}` is not `auto`, `io_uring` or `psync`", self.io),
            )
        })?;
        if self.ucx && cfg!(not(feature = "ucx")) {
            return Err(field_error(
                "pool.ucx",
                "true, but this kvtier was built without feature `ucx`",
            ));
        }
        if self
            .secret_file
            .as_ref()
            .is_some_and(|s| s.as_os_str().is_empty())
        {
            return Err(field_error(
                "pool.secret_file",
                "an empty path; leave it out for none",
            ));
        }
        Ok(())
    }
}

/// The commented default file (`kvtier config default`): every key with its default, its
/// environment variable and its flag.
pub fn default_file() -> String {
    let mut out = String::from(
        "# kvtier configuration. Every key is optional; the values shown are the defaults.\n\
         # Precedence: defaults < this file < environment (KVTIER_<SECTION>_<KEY>) < flags.\n\
         # Sizes are bytes or strings with a unit (\"512KiB\", \"2MiB\", \"16GiB\", \"1GB\").\n",
    );
    for section in SECTIONS {
        out.push_str(&format!("\n[{section}]\n"));
        for (i, k) in keys_of(section).enumerate() {
            if i > 0 {
                out.push('\n');
            }
            for line in wrap(k.help, 94) {
                out.push_str(&format!("# {line}\n"));
            }
            out.push_str(&format!("# env {}, flag {}\n", k.env(), k.flag()));
            match k.default {
                Some(d) => out.push_str(&format!("{} = {d}\n", k.name)),
                None => out.push_str(&format!("# {} = {}\n", k.name, k.example)),
            }
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for w in text.split_whitespace() {
        let last = lines.last_mut().expect("one line at least");
        if !last.is_empty() && last.len() + 1 + w.len() > width {
            lines.push(w.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(w);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, sections: &[&str]) -> String {
        match Config::parse(text).and_then(|c| c.validate(sections).map(|_| c)) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_default_file_is_the_defaults_and_lists_every_key() {
        let text = default_file();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
        for k in KEYS {
            assert!(text.contains(&format!("{} = ", k.name)), "{}", k.path());
            assert!(text.contains(&k.env()) && text.contains(&k.flag()));
        }
        Config::default().validate(&SECTIONS).unwrap();
        // The examples of keys unset by default are valid values too.
        let mut all = Config::default();
        for k in KEYS.iter().filter(|k| k.default.is_none()) {
            let doc = format!("[{}]\n{} = {}\n", k.section, k.name, k.example);
            let c = Config::parse(&doc).unwrap();
            assert_ne!(c, Config::default(), "{}", k.path());
            let o = Override {
                key: k,
                value: k.example.trim_matches('"').to_string(),
                from: "test".into(),
            };
            all.apply(&o).unwrap();
        }
        // Every field of every section is a key (the serialised form, with every optional
        // key set, has exactly the keys of the table).
        let table: toml::Table = toml::from_str(&all.to_toml()).unwrap();
        for s in SECTIONS {
            let fields: Vec<&str> = table[s]
                .as_table()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let mut keys: Vec<&str> = keys_of(s).map(|k| k.name).collect();
            let mut fields_sorted = fields.clone();
            fields_sorted.sort();
            keys.sort();
            assert_eq!(fields_sorted, keys, "[{s}]");
        }
        let order = |s: &str| keys_of(s).map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(order("log"), LogSection::FIELDS);
        assert_eq!(order("agent"), AgentSection::FIELDS);
        assert_eq!(order("pool"), PoolSection::FIELDS);
    }

    #[test]
    fn every_key_takes_its_default_as_text() {
        let mut c = Config::default();
        for k in KEYS.iter().filter(|k| k.default.is_some()) {
            let d = k.default.unwrap();
            let text = match d {
                "[]" => String::new(),
                d => d.trim_matches('"').to_string(),
            };
            c.apply(&Override {
                key: k,
                value: text,
                from: "test".into(),
            })
            .unwrap_or_else(|e| panic!("{}: {e}", k.path()));
        }
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_fields_are_named_with_what_is_allowed() {
        let e = err("[agent]\narena_byte = \"1GiB\"\n", &["agent"]);
        assert!(
            e.contains("arena_byte") && e.contains("arena_bytes") && e.contains("line 2"),
            "{e}"
        );
        let e = err("[agnet]\n", &["agent"]);
        assert!(e.contains("agnet") && e.contains("agent"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[pool]\ncapacity = -1\n", "pool.capacity", "negative"),
            (
                "[pool]\ncapacity = \"-5GiB\"\n",
                "pool.capacity",
                "negative",
            ),
            ("[pool]\ncapacity = 0\n", "pool.capacity", "room"),
            (
                "[pool]\ncapacity = \"12 parsecs\"\n",
                "pool.capacity",
                "unit",
            ),
            (
                "[pool]\nsegment_bytes = 100000\n",
                "pool.segment_bytes",
                "4 KiB",
            ),
            ("[pool]\nio = \"aio\"\n", "pool.io", "psync"),
            ("[pool]\nlisten = \"nowhere\"\n", "pool.listen", ""),
            (
                "[pool]\nmetrics_addr = \"9465\"\n",
                "pool.metrics_addr",
                "none",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format", "json"),
            ("[log]\nlevel = \"kvtier=loud\"\n", "log.level", "level"),
            (
                "[agent]\nreplication = 0\n",
                "agent.replication",
                "at least 1",
            ),
            (
                "[agent]\npool_servers = [\"a:1\"]\nreplication = 2\n",
                "agent.replication",
                "at most",
            ),
            (
                "[agent]\npool_servers = [\"a:1\", \"b\"]\n",
                "agent.pool_servers[1]",
                "host:port",
            ),
            (
                "[agent]\nno_pool = true\nshared_dir = \"/x\"\n",
                "agent.shared_dir",
                "conflicts",
            ),
            (
                "[agent]\narena_bytes = \"1MiB\"\n",
                "agent.arena_bytes",
                "holds no",
            ),
            (
                "[agent]\nobject_bytes = \"1GiB\"\n",
                "agent.object_bytes",
                "64MiB",
            ),
            ("[agent]\nwrite_queue = \"many\"\n", "agent.write_queue", ""),
            (
                "[agent]\npool_transport = \"udp\"\n",
                "agent.pool_transport",
                "tcp",
            ),
        ];
        for (text, field, what) in cases {
            let sections = ["log", "agent", "pool"];
            let e = err(text, &sections);
            assert!(e.contains(field) && e.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn layers_apply_in_order_and_sections_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.toml");
        std::fs::write(&f, "[agent]\narena_bytes = \"2GiB\"\nobject_bytes = \"1MiB\"\n[pool]\ncapacity = \"1TiB\"\n").unwrap();
        let env = vec![
            ("KVTIER_AGENT_ARENA_BYTES".to_string(), "3GiB".to_string()),
            ("KVTIER_AGENT_WRITE_QUEUE".to_string(), "10".to_string()),
            (
                "KVTIER_AGENT_PORT".to_string(),
                "tcp://10.0.0.1:80".to_string(),
            ),
            ("KVTIER_POOL_CAPACITY".to_string(), "-1".to_string()),
            ("KVTIER_LOG".to_string(), "info".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let arena = KEYS
            .iter()
            .find(|k| k.path() == "agent.arena_bytes")
            .unwrap();
        let flags = [Override {
            key: arena,
            value: "4GiB".into(),
            from: "flag --arena-bytes".into(),
        }];
        // Pool variables do not touch an agent's configuration.
        let l = Config::load(Some(&f), env.clone(), &flags, &["log", "agent"]).unwrap();
        assert_eq!(
            l.config.agent.arena_bytes,
            ByteSize(4 << 30),
            "flag over env over file"
        );
        assert_eq!(
            l.config.agent.object_bytes,
            ByteSize(1 << 20),
            "file over default"
        );
        assert_eq!(l.config.agent.write_queue, 10, "env over default");
        assert_eq!(l.config.pool.capacity, ByteSize(1 << 40));
        assert_eq!(l.config.log.level, "info");
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("KVTIER_AGENT_PORT"));
        let l = Config::load(Some(&f), env.clone(), &[], &["log", "agent"]).unwrap();
        assert_eq!(
            l.config.agent.arena_bytes,
            ByteSize(3 << 30),
            "env over file"
        );
        let explicit: Vec<&str> = l.explicit.iter().map(String::as_str).collect();
        assert_eq!(
            explicit,
            [
                "agent.arena_bytes",
                "agent.object_bytes",
                "agent.write_queue",
                "log.level",
                "pool.capacity"
            ]
        );
        let e = Config::load(Some(&f), env, &[], &["log", "pool"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pool.capacity") && e.contains("KVTIER_POOL_CAPACITY"),
            "{e}"
        );
        // KVTIER_LOG_LEVEL wins over the older KVTIER_LOG.
        let env = vec![
            ("KVTIER_LOG_LEVEL".to_string(), "debug".to_string()),
            ("KVTIER_LOG".to_string(), "info".to_string()),
        ];
        let l = Config::load(None, env, &[], &["log"]).unwrap();
        assert_eq!(l.config.log.level, "debug");
    }

    #[test]
    fn sizes_print_in_the_unit_they_parse_from() {
        for s in ["1GiB", "64MiB", "4KiB", "4097", "1TiB", "0"] {
            assert_eq!(ByteSize::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(ByteSize::parse("1.5GB").unwrap(), ByteSize(1_500_000_000));
        assert_eq!(
            Config::parse("[pool]\ncapacity = 4096\n")
                .unwrap()
                .pool
                .capacity,
            ByteSize(4096)
        );
    }
}
