//! The pool client's configuration: members, replication, deadline, transport, splicing.

use std::time::Duration;

use crate::placement::Member;
use kvtier_core::error::{Error, Result};

/// How bytes travel to pool servers (also the agent's `agent.pool_transport` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The framed protocol over TCP.
    #[default]
    Tcp,
    /// UCX tagged messages (feature `ucx`), set up over the TCP connection.
    Ucx,
}

impl Transport {
    /// Parses `tcp` or `ucx`.
    pub fn parse(s: &str) -> Result<Transport> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "ucx" => Ok(Transport::Ucx),
            _ => Err(Error::invalid("the pool transport is `tcp` or `ucx`").with_context("got", s)),
        }
    }
}

/// Configuration of a pool client.
#[derive(Debug, Clone)]
pub struct PoolClientConfig {
    /// TCP (default) or UCX.
    pub transport: Transport,
    /// The pool servers (with [`cluster`](Self::cluster): those to start from, may be none).
    pub members: Vec<Member>,
    /// Where the member set comes from in a cluster: the client watches it in etcd and
    /// places on the live members. `None`: the list in [`members`](Self::members) only.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Copies of each object. Default 1.
    pub replication: usize,
    /// The shared secret, when the servers require one.
    pub secret: Option<Vec<u8>>,
    /// Deadline of one call (all replicas and reconnects included). Default 2 s.
    pub timeout: Duration,
    /// Connections per server. Default 2.
    pub conns_per_member: usize,
    /// How long a failed server is skipped. Default 1 s.
    pub down_for: Duration,
    /// Largest response body accepted. Default [`crate::wire::MAX_BODY`] (64 MiB + a page).
    pub max_body: u32,
    /// Bytes of idle response buffers kept for reuse. Default 256 MiB.
    pub buffer_pool_bytes: usize,
    /// When records of 256 KiB and more are sent without copying them. Default
    /// [`Splice::Remote`].
    pub splice: Splice,
}

/// When the pool client sends a large record over TCP without copying it (`vmsplice` and
/// `splice`, see [`super::splice`]; it falls back to copying where the kernel refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Splice {
    /// To servers on other hosts only. To one on this host (a loopback address, or this
    /// side's own address) the receiver would copy out of the sender's pages one 4 KiB
    /// fragment at a time, which is slower than copying the body twice (4 MiB sends on one
    /// loopback TCP connection: 2.5 GB/s spliced, 4.5-5.4 GB/s copied).
    Remote,
    /// To every server.
    Always,
    /// Never.
    Never,
}

impl PoolClientConfig {
    /// Checks the values; the error names the bad field (see [`Error::bad_field`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |field, msg: String| Err(Error::bad_field("pool client", field, msg));
        if let Some(c) = &self.cluster {
            c.validate()?;
        } else if self.members.is_empty() {
            return bad(
                "members",
                "none; list at least one `host:port`, or give etcd endpoints".into(),
            );
        }
        if self.replication == 0 {
            return bad("replication", "0; at least 1".into());
        }
        if self.cluster.is_none() && self.replication > self.members.len() {
            return bad(
                "replication",
                format!(
                    "{} copies on {} server(s); at most as many as the servers",
                    self.replication,
                    self.members.len()
                ),
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "0; at least 1 ms".into());
        }
        if self.conns_per_member == 0 {
            return bad("conns_per_member", "0; at least 1".into());
        }
        if self.transport == Transport::Ucx && cfg!(not(feature = "ucx")) {
            return bad(
                "transport",
                "`ucx`, but this kvtier was built without feature `ucx`; use `tcp`".into(),
            );
        }
        Ok(())
    }

    /// Defaults around a member list.
    pub fn new(members: Vec<Member>) -> Self {
        PoolClientConfig {
            transport: Transport::Tcp,
            members,
            cluster: None,
            replication: 1,
            secret: None,
            timeout: Duration::from_secs(2),
            conns_per_member: 2,
            down_for: Duration::from_secs(1),
            max_body: crate::wire::MAX_BODY,
            buffer_pool_bytes: 256 << 20,
            splice: Splice::Remote,
        }
    }
}
