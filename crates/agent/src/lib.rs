//! The node agent: one per node. Owns the host-memory arena (a memfd shared with engine
//! processes), the node index, write-behind to the pool (today the embedded segment store),
//! read-through from it, leases on arena slots, and their reclamation when an engine dies.
//!
//! Two Unix sockets: `SOCKET` serves the gRPC control API ([`proto`]), `SOCKET.fd` hands each
//! engine the arena's descriptor (`SCM_RIGHTS`, see [`fdpass`]) and a token; the engine keeps
//! that connection open while it lives, and its closing releases every lease of the token's
//! sessions. Bytes never travel over gRPC: engines copy blocks straight into the arena.

pub mod access;
pub mod client;
pub mod fdpass;
mod service;
mod state;

/// The generated gRPC types of `proto/kvtier/v1/agent.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("kvtier.v1");
}

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvtier_core::error::{Error, Result};
use kvtier_core::tier::host::HostArenaConfig;
use kvtier_pool::PoolSpec;

pub use state::{AgentOp, AgentStats, PoolCall, State, TenantStats, MAX_TENANTS, OTHER_TENANT};

/// Configuration of an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Path of the gRPC socket; the descriptor socket is this path with `.fd` appended.
    pub socket: PathBuf,
    /// The shared arena. Its `payload_len` must equal the engines' block object size.
    pub arena: HostArenaConfig,
    /// The pool blocks are written behind to and read through from; `None` for memory only.
    pub pool: Option<PoolSpec>,
    /// Writes to the pool waiting at most; when full the oldest is dropped (a future miss,
    /// counted). Default: `4096`.
    pub write_queue: usize,
    /// Longest the agent spends at shutdown writing its queue to the pool; what is left then
    /// is dropped (counted as dropped writes, future misses). Default: 10 s.
    pub shutdown_drain: std::time::Duration,
    /// The tenants and the uids and gids that may use them; empty (the default): every process
    /// that can open the sockets (owner and group) may use any tenant.
    pub access: access::Access,
}

impl AgentConfig {
    /// Defaults around a socket path: the default arena ([`HostArenaConfig::default`]), no
    /// pool, a write queue of 4096.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        AgentConfig {
            socket: socket.into(),
            arena: HostArenaConfig::default(),
            pool: None,
            write_queue: 4096,
            shutdown_drain: std::time::Duration::from_secs(10),
            access: access::Access::default(),
        }
    }

    /// Checks the values (the arena's and the pool's too); the error names the bad field
    /// (see [`Error::bad_field`]).
    pub fn validate(&self) -> Result<()> {
        let payload = self.arena.payload_len;
        if payload == 0 || payload > kvtier_pool::wire::MAX_OBJECT_PAYLOAD {
            return Err(Error::bad_field(
                "host arena",
                "payload_len",
                format!("{payload} bytes is outside 1 byte to 64MiB (the pool's largest object)"),
            ));
        }
        self.arena.validate()?;
        if self.write_queue == 0 {
            return Err(Error::bad_field("agent", "write_queue", "0; at least 1"));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(Error::bad_field("agent", "socket", "an empty path"));
        }
        if let Some(p) = &self.pool {
            p.validate(payload)?;
        }
        self.access.validate()
    }
}

/// The agent's socket when none is configured: `$XDG_RUNTIME_DIR/kvtier/agent.sock`, else
/// `/tmp/kvtier-$UID/agent.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("kvtier/agent.sock"),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/kvtier-{}/agent.sock", unsafe {
            libc::getuid()
        })),
    }
}

/// The path of the descriptor socket that goes with a gRPC socket path.
pub fn fd_socket_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".fd");
    PathBuf::from(s)
}

/// Runs an agent until `shutdown` resolves: [`bind`], then [`BoundAgent::serve`].
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<Arc<State>> {
    bind(&cfg)?.serve(shutdown).await
}

/// An agent whose state exists and whose sockets are bound, not serving yet (so that a
/// metrics endpoint can be started on its state first).
pub struct BoundAgent {
    state: Arc<State>,
    grpc: tokio::net::UnixListener,
    fds: std::os::unix::net::UnixListener,
    socket: PathBuf,
    fd_path: PathBuf,
}

/// Creates the state (arena, pool) and binds both sockets: owner and group only, or, with
/// tenants configured, reachable by every uid (each peer is then checked by its credentials).
/// The socket directory is created owner and group only (with tenants: others may traverse
/// it), and refused if another user owns it or may write to it. Must be called within a tokio
/// runtime.
pub fn bind(cfg: &AgentConfig) -> Result<BoundAgent> {
    let state = State::new(cfg)?;
    if let Some(dir) = cfg.socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        socket_dir(dir, cfg.access.is_open())?;
    }
    let fd_path = fd_socket_path(&cfg.socket);
    for p in [&cfg.socket, &fd_path] {
        match std::fs::remove_file(p) {
            Ok(()) => tracing::info!(path = %p.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(
                    Error::io("removing a stale socket", e).with_context("path", p.display())
                )
            }
        }
    }
    let grpc = tokio::net::UnixListener::bind(&cfg.socket).map_err(|e| {
        Error::io("binding the agent socket", e).with_context("path", cfg.socket.display())
    })?;
    let fds = std::os::unix::net::UnixListener::bind(&fd_path).map_err(|e| {
        Error::io("binding the descriptor socket", e).with_context("path", fd_path.display())
    })?;
    let mode = if cfg.access.is_open() { 0o660 } else { 0o666 };
    for p in [&cfg.socket, &fd_path] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            Error::io("setting the socket's mode", e).with_context("path", p.display())
        })?;
    }
    Ok(BoundAgent {
        state,
        grpc,
        fds,
        socket: cfg.socket.clone(),
        fd_path,
    })
}

/// Creates the socket directory (mode 0750, or 0711 for `open == false`: other uids reach the
/// sockets, not the listing), or checks an existing one: it must be a directory owned by this
/// process's uid or root, and writable by nobody else. Otherwise another local user could have
/// made it (the default under /tmp) and could swap the sockets for their own. A sticky
/// directory owned by root (/tmp itself) is accepted.
fn socket_dir(dir: &Path, open: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ctx = |e: Error| e.with_context("dir", dir.display());
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ctx(Error::io("creating the socket directory's parent", e)))?;
            }
            match std::fs::create_dir(dir) {
                Ok(()) => {
                    let mode = if open { 0o750 } else { 0o711 };
                    return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                        .map_err(|e| ctx(Error::io("setting the socket directory's mode", e)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ctx(Error::io("creating the socket directory", e))),
            }
        }
        Err(e) => return Err(ctx(Error::io("reading the socket directory", e))),
        Ok(_) => {}
    }
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| ctx(Error::io("reading the socket directory", e)))?;
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    let refuse = |why: String| {
        Err(ctx(Error::new(
            kvtier_core::ErrorKind::PermissionDenied,
            format!(
                "refusing the socket directory {}: {why}; remove it, or give the agent a socket \
                 in a directory only it may write (agent.socket)",
                dir.display()
            ),
        )))
    };
    if !m.file_type().is_dir() {
        return refuse("it is not a directory (a symlink?)".into());
    }
    if m.uid() != me && m.uid() != 0 {
        return refuse(format!(
            "it is owned by uid {}, not this agent's uid {me}",
            m.uid()
        ));
    }
    // A sticky directory (/tmp) keeps others from removing or renaming the agent's sockets.
    let sticky = m.mode() & 0o1000 != 0;
    if m.mode() & 0o022 != 0 && !(sticky && m.uid() == 0) {
        return refuse(format!(
            "its mode {:o} lets other users write to it",
            m.mode() & 0o7777
        ));
    }
    Ok(())
}

impl BoundAgent {
    /// The agent's state (counters for metrics).
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then stops the write-behind worker after draining its
    /// queue and removes the sockets.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Arc<State>> {
        let BoundAgent {
            state,
            grpc,
            fds,
            socket,
            fd_path,
        } = self;
        state.clone().serve_descriptors(fds);
        tracing::info!(socket = %socket.display(), "agent listening");
        let svc = proto::agent_server::AgentServer::new(service::Service::new(state.clone()));
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(grpc),
                shutdown,
            )
            .await
            .map_err(|e| {
                Error::new(
                    kvtier_core::ErrorKind::Io,
                    format!("agent gRPC server failed: {e}"),
                )
            })?;
        state.stop();
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&fd_path);
        Ok(state)
    }
}
