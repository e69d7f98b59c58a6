//! A pool as a cluster: membership in etcd, placement over the live members, and
//! re-replication when they change.
//!
//! - Each `kvtier pool` server registers under `/kvtier/<cluster>/members/<addr>` with a lease
//!   it keeps alive ([`register`]): its address, weight, capacity, zone and state
//!   ([`MemberState`]). A server that dies stops renewing; etcd deletes its entry when the
//!   lease runs out ([`ClusterConfig::lease_ttl`]).
//! - Agents, `kvtier stat` and the servers themselves watch the prefix ([`watch`]) and place
//!   keys by weighted rendezvous hashing over the members that are joining or serving
//!   ([`placed_members`]); a draining member takes no new keys.
//! - When the set changes, clients ask a key's replicas in the set before when its new
//!   replicas miss ([`crate::client::REBALANCE_GRACE`]).
//! - etcd unreachable: everyone keeps the last membership they saw and serves on it (logged,
//!   counted, [`ClusterHealth::etcd_up`] false), and catches up when etcd is back.
//!
//! Placement differences between two views (a watch lagging behind) cost misses and extra
//! copies, never wrong data: every record is checked against its key and checksum on the way
//! back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::placement::Member;
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::metrics::Counter;

mod register;
mod watch;

pub use register::{register, Registration};
pub use watch::watch;

/// Where a cluster's membership lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// etcd endpoints, `host:port` (or `http://host:port`), at least one.
    pub etcd: Vec<String>,
    /// The cluster's name: its members are under `/kvtier/<name>/members/`. Default `kvtier`.
    pub name: String,
    /// Lifetime of a server's registration without renewal: a dead server leaves the
    /// membership this long after it stopped. Whole seconds, at least 2. Default 5 s.
    pub lease_ttl: Duration,
    /// Deadline of one etcd call (connecting included). Default 2 s.
    pub timeout: Duration,
}

impl ClusterConfig {
    /// Defaults around a list of endpoints.
    pub fn new(etcd: Vec<String>) -> Self {
        ClusterConfig {
            etcd,
            name: "kvtier".into(),
            lease_ttl: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }

    /// Checks the values; the error names the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, msg: String| Err(Error::bad_field("cluster", field, msg));
        if self.etcd.is_empty() {
            return bad("etcd", "no endpoints; list at least one `host:port`".into());
        }
        for e in &self.etcd {
            let hostport = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            match hostport.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => return bad("etcd", format!("`{e}` is not `host:port`")),
            }
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return bad(
                "name",
                format!(
                    "`{}`: letters, digits, `-`, `_` and `.` only, not empty",
                    self.name
                ),
            );
        }
        if self.lease_ttl < Duration::from_secs(2) {
            return bad("lease_ttl", format!("{:?}; at least 2 s", self.lease_ttl));
        }
        if self.timeout.is_zero() {
            return bad("timeout", "0; at least 1 ms".into());
        }
        Ok(())
    }

    /// The key prefix of the members.
    pub fn prefix(&self) -> String {
        format!("/kvtier/{}/members/", self.name)
    }

    /// Connects to etcd (any endpoint that answers).
    pub(crate) async fn connect(&self) -> Result<etcd_client::Client> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            // A silent connection (etcd stopped, a partition) fails a watch within seconds
            // instead of leaving it waiting forever.
            .with_keep_alive(Duration::from_secs(1), self.timeout)
            .with_keep_alive_while_idle(true);
        match tokio::time::timeout(
            self.timeout,
            etcd_client::Client::connect(&self.etcd, Some(opts)),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(etcd_error("connecting", e)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "etcd {:?} did not answer within {:?}",
                    self.etcd, self.timeout
                ),
            )),
        }
    }
}

pub(crate) fn etcd_error(what: &str, e: etcd_client::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("etcd: {what}: {e}"))
}

/// A member's state in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Registered; receiving its share of keys (placed on like a serving member).
    Joining,
    /// Serving its share.
    Serving,
    /// Taking no new keys; handing what it holds to the others before it leaves.
    Draining,
}

impl MemberState {
    /// Its name in the registration and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Serving => "serving",
            MemberState::Draining => "draining",
        }
    }
}

/// What a server registers about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// `host:port` of its data plane, as clients reach it.
    pub addr: String,
    /// Relative share of keys. Positive.
    pub weight: f64,
    /// Capacity of its store, bytes.
    pub capacity_bytes: u64,
    /// Failure domain (rack, zone); informational.
    #[serde(default)]
    pub zone: String,
    /// Joining, serving or draining.
    pub state: MemberState,
}

/// The members keys are placed on: those joining or serving, with a usable weight.
pub fn placed_members(infos: &[MemberInfo]) -> Vec<Member> {
    infos
        .iter()
        .filter(|m| m.state != MemberState::Draining && m.weight.is_finite() && m.weight > 0.0)
        .map(|m| Member {
            addr: m.addr.clone(),
            weight: m.weight,
        })
        .collect()
}

/// Whether etcd answers, and counters of the membership seen through it.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    up: AtomicBool,
    members: AtomicU64,
    /// etcd calls or streams that failed (each is retried).
    pub errors: Counter,
    /// Membership changes seen.
    pub changes: Counter,
}

impl ClusterHealth {
    /// A new health record (etcd not reached yet).
    pub fn new() -> Arc<Self> {
        Arc::new(ClusterHealth::default())
    }

    /// Whether the last etcd call or stream succeeded.
    pub fn etcd_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Members in the last membership seen.
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::Relaxed)
    }

    pub(crate) fn set_up(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was && !up {
            tracing::warn!("etcd unreachable: serving on the last membership seen");
        } else if !was && up {
            tracing::info!("etcd reached");
        }
    }

    pub(crate) fn set_members(&self, n: usize) {
        self.members.store(n as u64, Ordering::Relaxed);
    }
}

/// Waits `d`, doubled up to 5 s on every failure in a row (the retry pace of the loops).
pub(crate) fn backoff(d: &mut Duration) -> Duration {
    let now = *d;
    *d = (*d * 2).min(Duration::from_secs(5));
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configurations_name_the_field() {
        let ok = ClusterConfig::new(vec!["127.0.0.1:2379".into()]);
        ok.validate().unwrap();
        let mut c = ok.clone();
        c.etcd.clear();
        assert!(c.validate().unwrap_err().to_string().contains("etcd"));
        let mut c = ok.clone();
        c.etcd = vec!["nohost".into()];
        assert!(c.validate().unwrap_err().to_string().contains("nohost"));
        let mut c = ok.clone();
        c.name = "a/b".into();
        assert!(c.validate().unwrap_err().to_string().contains("name"));
        let mut c = ok;
        c.lease_ttl = Duration::from_secs(1);
        assert!(c.validate().unwrap_err().to_string().contains("lease_ttl"));
    }

    #[test]
    fn draining_members_take_no_keys() {
        let m = |addr: &str, state| MemberInfo {
            addr: addr.into(),
            weight: 1.0,
            capacity_bytes: 1 << 30,
            zone: String::new(),
            state,
        };
        let placed = placed_members(&[
            m("a:1", MemberState::Serving),
            m("b:1", MemberState::Draining),
            m("c:1", MemberState::Joining),
        ]);
        let addrs: Vec<_> = placed.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(addrs, ["a:1", "c:1"]);
        let json = serde_json::to_string(&m("a:1", MemberState::Draining)).unwrap();
        assert!(json.contains("\"draining\""), "{json}");
    }
}
