//! The member set of a [`PoolClient`]: the configured list, or a cluster's membership as it
//! changes ([`PoolClient::set_members`], fed by [`crate::cluster::watch`]).

use super::*;

/// The members known at one time: their placement and connection state.
pub(super) struct View {
    /// `None` while no member is known (a cluster whose membership is not read yet).
    pub(super) placement: Option<Placement>,
    pub(super) states: Vec<Arc<MemberState>>,
    /// When this view replaced the one before.
    pub(super) since: Instant,
}

impl View {
    /// The members holding `key`, most preferred first (none while no member is known).
    pub(super) fn replicas(&self, key: BlockKey) -> Vec<Arc<MemberState>> {
        match &self.placement {
            Some(p) => p
                .replicas(key)
                .into_iter()
                .map(|i| self.states[i].clone())
                .collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn replication(&self) -> usize {
        self.placement.as_ref().map_or(0, Placement::replication)
    }
}

impl PoolClient {
    /// The member set now.
    pub(super) fn view(&self) -> Arc<View> {
        self.view.read().clone()
    }

    /// Replaces the member set (a cluster's membership changed). Connections to members
    /// that stay are kept; keys are placed on the new set at once, and for
    /// [`REBALANCE_GRACE`] a miss is also asked of the replicas in the set before. The
    /// replication factor is the configured one, or the number of members when fewer. An
    /// empty set leaves every call failing with `Unavailable` until members are known.
    pub fn set_members(&self, mut members: Vec<Member>) -> Result<()> {
        // In the order given (member indices stay those of the list), each address once.
        let mut seen = std::collections::HashSet::new();
        members.retain(|m| seen.insert(m.addr.clone()));
        let old = self.view();
        if old
            .placement
            .as_ref()
            .map_or(members.is_empty(), |p| p.members() == members)
        {
            return Ok(());
        }
        let placement = if members.is_empty() {
            None
        } else {
            let r = self.cfg.replication.min(members.len());
            Some(Placement::new(members, r)?)
        };
        let states = placement
            .as_ref()
            .map(|p| {
                p.members()
                    .iter()
                    .map(|m| {
                        old.states
                            .iter()
                            .find(|s| s.addr == m.addr)
                            .cloned()
                            .unwrap_or_else(|| {
                                Arc::new(MemberState {
                                    addr: m.addr.clone(),
                                    conns: Mutex::new(Vec::new()),
                                    next: AtomicUsize::new(0),
                                    down_until: Mutex::new(None),
                                    connecting: tokio::sync::Mutex::new(()),
                                })
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let new = Arc::new(View {
            placement,
            states,
            since: Instant::now(),
        });
        tracing::info!(
            members = ?new.placement.as_ref().map(|p| p.members().iter().map(|m| m.addr.as_str()).collect::<Vec<_>>()),
            "pool member set changed"
        );
        self.counters.membership_changes.inc();
        *self.previous.write() = old.placement.is_some().then_some(old);
        *self.view.write() = new;
        Ok(())
    }

    /// The replicas of `key` in the set before the current one, while within
    /// [`REBALANCE_GRACE`] of the change, less those in `asked`.
    pub(super) fn previous_replicas(
        &self,
        key: BlockKey,
        asked: &[Arc<MemberState>],
    ) -> Vec<Arc<MemberState>> {
        let cur = self.view();
        if cur.since.elapsed() > REBALANCE_GRACE {
            return Vec::new();
        }
        match self.previous.read().as_ref() {
            Some(p) => p
                .replicas(key)
                .into_iter()
                .filter(|m| !asked.iter().any(|a| a.addr == m.addr))
                .collect(),
            None => Vec::new(),
        }
    }

    /// etcd's state as this client sees it (in a cluster; never up otherwise).
    pub fn cluster_health(&self) -> &crate::cluster::ClusterHealth {
        &self.cluster_health
    }

    /// The placement in use (`None` while no member is known).
    pub fn placement(&self) -> Option<Placement> {
        self.view().placement.clone()
    }

    /// Follows the membership of cluster `c`: the first one seen within etcd's timeout
    /// before this returns (so that the first calls are placed), every later one as it
    /// comes. The watch holds the client weakly: dropping the client ends it.
    pub(super) fn follow(self: &Arc<Self>, c: crate::cluster::ClusterConfig) {
        let first_within = c.timeout;
        let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
        self.rt
            .spawn(crate::cluster::watch(c, self.cluster_health.clone(), tx));
        let mut first = rx.clone();
        let seen = self.block(async move {
            let r = tokio::time::timeout(first_within, first.wait_for(|m| !m.is_empty())).await;
            r.ok().and_then(|r| r.ok().map(|m| m.clone()))
        });
        match seen {
            Some(m) => self.apply(&m),
            None => tracing::warn!(
                "no pool member seen in etcd yet; saves are dropped until one registers"
            ),
        }
        let weak = Arc::downgrade(self);
        self.rt.spawn(async move {
            while rx.changed().await.is_ok() {
                let m = rx.borrow_and_update().clone();
                let Some(c) = weak.upgrade() else { break };
                c.apply(&m);
            }
        });
    }

    fn apply(&self, infos: &[crate::cluster::MemberInfo]) {
        if let Err(e) = self.set_members(crate::cluster::placed_members(infos)) {
            tracing::warn!(error = %e, "ignoring a membership the pool cannot place on");
        }
    }
}
