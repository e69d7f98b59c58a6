//! The TOML layer composes the components' configurations: each section becomes the
//! configuration its daemon runs with ([`AgentSection::agent_config`],
//! [`PoolSection::server_config`]), and the defaults of the sections come from the components'
//! own ([`AgentSection::default`], [`PoolSection::default`]). The components validate
//! themselves; their errors name their own fields, which [`in_keys`] renames to the file's keys.

use std::time::Duration;

use super::{field_error, AgentSection, PoolSection};
use kvtier_agent::AgentConfig;
use kvtier_core::error::{Error, Result};
use kvtier_core::tier::host::HostArenaConfig;
use kvtier_core::tier::io::IoMode;
use kvtier_core::tier::segment::SegmentStoreConfig;
use kvtier_pool::client::PoolClientConfig;
use kvtier_pool::placement::Member;
use kvtier_pool::server::PoolServerConfig;
use kvtier_pool::shared_dir::SharedDirConfig;
use kvtier_pool::PoolSpec;

/// `(component, its field, the file's key)`: where each component field is set from.
type KeyMap = [(&'static str, &'static str, &'static str)];

const AGENT_KEYS: &KeyMap = &[
    ("host arena", "capacity_bytes", "agent.arena_bytes"),
    ("host arena", "payload_len", "agent.object_bytes"),
    ("agent", "write_queue", "agent.write_queue"),
    ("agent", "socket", "agent.socket"),
    ("agent", "tenants", "agent.tenants"),
    ("segment store", "capacity_bytes", "agent.pool_bytes"),
    ("segment store", "segment_bytes", "agent.segment_bytes"),
    ("shared directory", "capacity_bytes", "agent.pool_bytes"),
    ("pool client", "members", "agent.pool_servers"),
    ("pool client", "replication", "agent.replication"),
    ("pool client", "timeout", "agent.pool_timeout_ms"),
    ("pool client", "transport", "agent.pool_transport"),
    ("cluster", "etcd", "agent.etcd"),
    ("cluster", "name", "agent.cluster"),
];

const POOL_KEYS: &KeyMap = &[
    ("segment store", "capacity_bytes", "pool.capacity"),
    ("segment store", "segment_bytes", "pool.segment_bytes"),
    ("pool server", "stream_chunk", "pool.stream_chunk"),
    ("pool server", "stall_timeout", "pool.stall_timeout_ms"),
    ("pool server", "max_connections", "pool.max_connections"),
    ("pool server", "idle_timeout", "pool.idle_timeout_ms"),
    ("pool server", "request_memory", "pool.request_memory"),
    ("pool server", "ucx", "pool.ucx"),
    ("pool server", "secret", "pool.secret_file"),
];

/// A component's error about one of its fields, restated about the file's key that sets it
/// (`agent.arena_bytes: ...`). Other errors pass unchanged.
fn in_keys(map: &KeyMap, e: Error) -> Error {
    let (Some(config), Some(field)) = (e.context("config"), e.context("field")) else {
        return e;
    };
    match map.iter().find(|(c, f, _)| *c == config && *f == field) {
        Some((_, _, key)) => field_error(key, e.message()),
        None => e,
    }
}

fn secret(path: &Option<std::path::PathBuf>, key: &str, read: bool) -> Result<Option<Vec<u8>>> {
    match path {
        Some(f) if read => kvtier_pool::auth::read_secret(f)
            .map(Some)
            .map_err(|e| field_error(key, e)),
        _ => Ok(None),
    }
}

impl Default for AgentSection {
    /// The components' defaults ([`HostArenaConfig`], [`SegmentStoreConfig`],
    /// [`PoolClientConfig`], [`AgentConfig`]), and the file's own: the data directory and the
    /// metrics address.
    fn default() -> Self {
        let arena = HostArenaConfig::default();
        let store = SegmentStoreConfig::new("kvtier-data");
        let client = PoolClientConfig::new(Vec::new());
        let agent = AgentConfig::new("");
        AgentSection {
            socket: None,
            data: store.dir,
            arena_bytes: super::ByteSize(arena.capacity_bytes),
            object_bytes: super::ByteSize(arena.payload_len as u64),
            pool_bytes: super::ByteSize(store.capacity_bytes),
            segment_bytes: super::ByteSize(store.segment_bytes),
            no_pool: false,
            pool_servers: Vec::new(),
            etcd: Vec::new(),
            cluster: kvtier_pool::cluster::ClusterConfig::new(Vec::new()).name,
            replication: client.replication,
            pool_secret_file: None,
            pool_transport: client.transport,
            pool_timeout_ms: client.timeout.as_millis() as u64,
            shared_dir: None,
            write_queue: agent.write_queue,
            tenants: Vec::new(),
            metrics_addr: super::OptAddr(Some(([127, 0, 0, 1], 9464).into())),
        }
    }
}

impl Default for PoolSection {
    /// The components' defaults ([`PoolServerConfig`], [`SegmentStoreConfig`]), and the
    /// file's own: addresses and the data directory.
    fn default() -> Self {
        let store = SegmentStoreConfig::new("kvtier-pool-data");
        let server = PoolServerConfig::new(([127, 0, 0, 1], 7070).into(), store.clone());
        PoolSection {
            listen: server.listen,
            control: super::OptAddr(Some(([127, 0, 0, 1], 7071).into())),
            data: store.dir,
            capacity: super::ByteSize(store.capacity_bytes),
            segment_bytes: super::ByteSize(store.segment_bytes),
            cache_bytes: super::ByteSize(server.cache_bytes),
            stream_chunk: super::ByteSize(server.stream_chunk as u64),
            stall_timeout_ms: server.stall_timeout.as_millis() as u64,
            max_connections: server.max_connections,
            idle_timeout_ms: server.idle_timeout.as_millis() as u64,
            request_memory: super::ByteSize(server.request_memory),
            secret_file: None,
            insecure_open: server.insecure_open,
            etcd: Vec::new(),
            cluster: kvtier_pool::cluster::ClusterConfig::new(Vec::new()).name,
            advertise: String::new(),
            zone: String::new(),
            io: "auto".into(),
            ucx: server.ucx,
            metrics_addr: super::OptAddr(Some(([127, 0, 0, 1], 9465).into())),
        }
    }
}

impl AgentSection {
    /// The agent's configuration, validated; reads the pool's secret file. Errors name the
    /// file's key (`agent.arena_bytes`).
    pub fn agent_config(&self) -> Result<AgentConfig> {
        self.build(true)
    }

    /// The configuration of this section, validated by its components (their errors restated
    /// under this file's keys); the secret file is read when `read`.
    pub(super) fn build(&self, read: bool) -> Result<AgentConfig> {
        let mut c = AgentConfig::new(
            self.socket
                .clone()
                .unwrap_or_else(kvtier_agent::default_socket),
        );
        c.arena.capacity_bytes = self.arena_bytes.0;
        c.arena.payload_len = usize::try_from(self.object_bytes.0).unwrap_or(usize::MAX);
        c.write_queue = self.write_queue;
        c.access.rules = self
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                kvtier_agent::access::TenantRule::parse(t)
                    .map_err(|e| field_error(format!("agent.tenants[{i}]"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        c.pool = if self.no_pool {
            None
        } else if !self.pool_servers.is_empty() || !self.etcd.is_empty() {
            let members = self
                .pool_servers
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    Member::parse(m).map_err(|e| {
                        field_error(
                            format!("agent.pool_servers[{i}]"),
                            format!("`{m}`: {}", e.message()),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut p = PoolClientConfig::new(members);
            p.replication = self.replication;
            p.timeout = Duration::from_millis(self.pool_timeout_ms);
            p.transport = self.pool_transport;
            p.secret = secret(&self.pool_secret_file, "agent.pool_secret_file", read)?;
            if !self.etcd.is_empty() {
                let mut c = kvtier_pool::cluster::ClusterConfig::new(self.etcd.clone());
                c.name = self.cluster.clone();
                p.cluster = Some(c);
            }
            Some(PoolSpec::Servers(p))
        } else if let Some(dir) = &self.shared_dir {
            let mut p = SharedDirConfig::new(dir);
            p.capacity_bytes = self.pool_bytes.0;
            Some(PoolSpec::SharedDir(p))
        } else {
            let mut p = SegmentStoreConfig::new(&self.data);
            p.capacity_bytes = self.pool_bytes.0;
            p.segment_bytes = self.segment_bytes.0;
            p.create_dir = true;
            Some(PoolSpec::Embedded(p))
        };
        c.validate().map_err(|e| in_keys(AGENT_KEYS, e))?;
        Ok(c)
    }

    /// The components' own checks, their errors naming this file's keys.
    pub(super) fn validate_components(&self) -> Result<()> {
        self.build(false).map(drop)
    }
}

impl PoolSection {
    /// The pool server's configuration, validated; reads the secret file. Errors name the
    /// file's key (`pool.capacity`).
    pub fn server_config(&self) -> Result<PoolServerConfig> {
        self.build(true)
    }

    /// The cluster this server registers in, and the address it registers (`pool.advertise`;
    /// `None`: the bound listen address); `None` without `pool.etcd`.
    pub fn cluster_config(
        &self,
    ) -> Result<Option<(kvtier_pool::cluster::ClusterConfig, Option<String>)>> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let mut c = kvtier_pool::cluster::ClusterConfig::new(self.etcd.clone());
        c.name = self.cluster.clone();
        c.validate().map_err(|e| match e.context("field") {
            Some("etcd") => field_error("pool.etcd", e.message()),
            Some("name") => field_error("pool.cluster", e.message()),
            _ => e,
        })?;
        let advertise = if self.advertise.is_empty() {
            if self.listen.ip().is_unspecified() {
                return Err(field_error(
                    "pool.advertise",
                    format!(
                        "empty while pool.listen is {}; set the address agents reach this server at",
                        self.listen
                    ),
                ));
            }
            None
        } else {
            Member::parse(&self.advertise)
                .map_err(|e| field_error("pool.advertise", e.message()))?;
            Some(self.advertise.clone())
        };
        Ok(Some((c, advertise)))
    }

    /// The configuration of this section, validated by its components (their errors restated
    /// under this file's keys); the secret file is read when `read`.
    pub(super) fn build(&self, read: bool) -> Result<PoolServerConfig> {
        let mut store = SegmentStoreConfig::new(&self.data);
        store.capacity_bytes = self.capacity.0;
        store.segment_bytes = self.segment_bytes.0;
        store.create_dir = true;
        store.io = IoMode::parse(&self.io).map_err(|_| {
            field_error(
                "pool.io",
                format!("`{}` is not `auto`, `io_uring` or `psync`", self.io),
            )
        })?;
        let mut c = PoolServerConfig::new(self.listen, store);
        c.control = self.control.0;
        c.cache_bytes = self.cache_bytes.0;
        c.ucx = self.ucx;
        c.stream_chunk = usize::try_from(self.stream_chunk.0).unwrap_or(usize::MAX);
        c.stall_timeout = Duration::from_millis(self.stall_timeout_ms);
        c.max_connections = self.max_connections;
        c.idle_timeout = Duration::from_millis(self.idle_timeout_ms);
        c.request_memory = self.request_memory.0;
        c.secret = secret(&self.secret_file, "pool.secret_file", read)?;
        c.insecure_open = self.insecure_open;
        if !read && self.secret_file.is_some() {
            // Checked without reading the file: a secret is configured.
            c.secret = Some(b"(not read while checking)".to_vec());
        }
        c.validate().map_err(|e| in_keys(POOL_KEYS, e))?;
        Ok(c)
    }

    /// The components' own checks, their errors naming this file's keys.
    pub(super) fn validate_components(&self) -> Result<()> {
        self.build(false).map(drop)
    }
}

/// Where a daemon's data lives, for its start-up line.
pub fn describe_pool(spec: Option<&PoolSpec>) -> String {
    match spec {
        None => "none".to_string(),
        Some(PoolSpec::Embedded(c)) => format!(
            "{} ({})",
            c.dir.display(),
            super::ByteSize(c.capacity_bytes)
        ),
        Some(PoolSpec::Servers(c)) => format!(
            "{} server(s), replication {}",
            c.members.len(),
            c.replication
        ),
        Some(PoolSpec::SharedDir(c)) => format!("shared directory {}", c.dir.display()),
    }
}
