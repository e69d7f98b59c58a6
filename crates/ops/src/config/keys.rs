//! The table of configuration keys, and the commented default file made from it.

/// One configuration key: its section and name, its default as written in the file, and what
/// it does. The table [`KEYS`] drives the flags, the environment variables, the commented
/// default file (`kvtier config default`) and the reference in docs/operations.md.
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
    key!("agent", "etcd", Some("[]"), "",
        "Find the pool servers in etcd instead of a list: the etcd endpoints, `host:port` each. The agent watches the cluster's members and places blocks on those serving."),
    key!("agent", "cluster", Some("\"kvtier\""), "",
        "Name of the pool cluster in etcd (its members are under `/kvtier/NAME/members/`)."),
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
    key!("agent", "tenants", Some("[]"), "",
        "Who may use the agent: `NAME: uid=UID gid=GID arena=SHARE` each (any number of uid= and gid=; arena= a percent or size, the slots the tenant's sessions may hold at once). Empty: every process that can open the sockets (owner and group). Set: the sockets open to all, each peer checked by its kernel credentials; an engine named `NAME/...` asks for tenant NAME, any other name gets its peer's first allowed tenant."),
    key!("agent", "metrics_addr", Some("\"127.0.0.1:9464\""), "",
        "HTTP address of /metrics, /healthz and /readyz, or `none`."),
    key!("pool", "listen", Some("\"127.0.0.1:7070\""), "",
        "Data-plane address (framed binary protocol over TCP). An address other hosts reach needs `secret_file` (or `insecure_open`)."),
    key!("pool", "control", Some("\"127.0.0.1:7071\""), "",
        "Control-plane address (gRPC: health and stats for anyone who reaches it; drain and undrain from this host only), or `none`."),
    key!("pool", "data", Some("\"kvtier-pool-data\""), "",
        "Directory of the segment files (created if missing)."),
    key!("pool", "capacity", Some("\"16GiB\""), "",
        "Capacity on disk (at least two segments)."),
    key!("pool", "segment_bytes", Some("\"64MiB\""), "",
        "Segment file size (a multiple of 4 KiB, at least 64 KiB)."),
    key!("pool", "cache_bytes", Some("\"1GiB\""), "",
        "DRAM cache of hot objects in front of the disk (0: none)."),
    key!("pool", "stream_chunk", Some("\"2MiB\""), "",
        "A put of at least two chunks, when no other put is in flight, is written to disk chunk by chunk while its body arrives (a multiple of 4 KiB from 64 KiB to 64 MiB; 0: read every body whole first)."),
    key!("pool", "stall_timeout_ms", Some("10000"), "",
        "Longest wait for the next chunk of a streamed put's body, for a whole body, and for a peer to take an answer, before its connection is closed, in milliseconds."),
    key!("pool", "max_connections", Some("4096"), "",
        "Connections served at once, at most; more are closed as they arrive (counted as rejected)."),
    key!("pool", "idle_timeout_ms", Some("300000"), "",
        "A connection with no request for this long is closed, in milliseconds (clients reconnect)."),
    key!("pool", "request_memory", Some("\"2GiB\""), "",
        "Bytes of request bodies held at once across all connections, at most (at least 64 MiB and a page): a request waits for room before its body is read."),
    key!("pool", "secret_file", None, "\"/etc/kvtier/secret/pool-secret\"",
        "File holding the shared secret peers must prove, and the server proves back (at least 16 bytes). Without it the data plane is open to anyone who can reach the port: allowed on loopback only, unless `insecure_open`."),
    key!("pool", "insecure_open", Some("false"), "",
        "Serve a data plane other hosts reach without `secret_file`: anyone who reaches the port may read and overwrite every object. Without it such a server refuses to start."),
    key!("pool", "etcd", Some("[]"), "",
        "Register in etcd as a member of the pool cluster (`host:port` each); empty: no cluster, agents list this server themselves."),
    key!("pool", "cluster", Some("\"kvtier\""), "",
        "Name of the pool cluster in etcd."),
    key!("pool", "advertise", Some("\"\""), "",
        "Data-plane address registered in etcd, as agents reach it; empty: the listen address (which must then not be 0.0.0.0)."),
    key!("pool", "zone", Some("\"\""), "",
        "Failure domain registered in etcd (rack, zone), for operators reading the membership."),
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
