//! A pool server's registration in etcd: a key under the cluster's prefix, bound to a lease
//! the server renews.

use std::sync::Arc;
use std::time::Duration;

use super::{backoff, etcd_error, ClusterConfig, ClusterHealth, MemberInfo, MemberState};
use kvtier_core::error::{Error, ErrorKind};

/// A running registration: the task renewing it, and the record it publishes.
pub struct Registration {
    info: tokio::sync::watch::Sender<MemberInfo>,
    task: tokio::task::JoinHandle<()>,
    cfg: ClusterConfig,
}

impl Registration {
    /// Publishes a new state (drain: `Draining`, so that no new keys are placed here).
    pub fn set_state(&self, state: MemberState) {
        self.info.send_if_modified(|m| {
            let changed = m.state != state;
            m.state = state;
            changed
        });
    }

    /// Leaves the cluster: stops renewing and deletes the entry (the others then stop placing
    /// keys here at once rather than when the lease runs out). Best effort within the etcd
    /// timeout.
    pub async fn leave(self) {
        self.task.abort();
        let key = format!("{}{}", self.cfg.prefix(), self.info.borrow().addr);
        let cfg = self.cfg.clone();
        let _ = tokio::time::timeout(cfg.timeout, async move {
            if let Ok(mut c) = cfg.connect().await {
                let _ = c.delete(key, None).await;
            }
        })
        .await;
    }
}

/// Registers `info` in `cfg`'s cluster and keeps it registered for ever (on the current
/// tokio runtime): a lease of [`ClusterConfig::lease_ttl`] renewed three times per lifetime;
/// when etcd is unreachable the loop retries, and when the lease was lost (expired while
/// etcd was away, or this process was frozen) it registers again with a new one.
pub fn register(cfg: ClusterConfig, health: Arc<ClusterHealth>, info: MemberInfo) -> Registration {
    let (tx, rx) = tokio::sync::watch::channel(info);
    let c = cfg.clone();
    let task = tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            let e = register_once(&c, &health, rx.clone(), &mut delay).await;
            health.errors.inc();
            health.set_up(false);
            tracing::warn!(error = %e, "pool server registration in etcd lost; registering again");
            tokio::time::sleep(backoff(&mut delay)).await;
        }
    });
    Registration {
        info: tx,
        task,
        cfg,
    }
}

async fn register_once(
    cfg: &ClusterConfig,
    health: &ClusterHealth,
    mut rx: tokio::sync::watch::Receiver<MemberInfo>,
    delay: &mut Duration,
) -> Error {
    let run = async {
        let mut client = cfg.connect().await?;
        let t = cfg.timeout;
        let timed = |what: &'static str| {
            move |_| Error::new(ErrorKind::Timeout, format!("etcd: {what} timed out"))
        };
        let ttl = cfg.lease_ttl.as_secs() as i64;
        let lease = tokio::time::timeout(t, client.lease_grant(ttl, None))
            .await
            .map_err(timed("granting a lease"))?
            .map_err(|e| etcd_error("granting a lease", e))?
            .id();
        let put = |client: &mut etcd_client::Client, info: &MemberInfo| {
            let key = format!("{}{}", cfg.prefix(), info.addr);
            let value = serde_json::to_vec(info).expect("a member record serialises");
            let mut client = client.clone();
            async move {
                tokio::time::timeout(
                    t,
                    client.put(
                        key,
                        value,
                        Some(etcd_client::PutOptions::new().with_lease(lease)),
                    ),
                )
                .await
                .map_err(timed("registering"))?
                .map_err(|e| etcd_error("registering", e))
                .map(drop)
            }
        };
        let info = rx.borrow_and_update().clone();
        put(&mut client, &info).await?;
        let (mut keeper, mut answers) = tokio::time::timeout(t, client.lease_keep_alive(lease))
            .await
            .map_err(timed("renewing the lease"))?
            .map_err(|e| etcd_error("renewing the lease", e))?;
        health.set_up(true);
        *delay = Duration::from_millis(200);
        tracing::info!(addr = %info.addr, state = info.state.as_str(), lease, "registered in etcd");
        let every = cfg.lease_ttl / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    keeper
                        .keep_alive()
                        .await
                        .map_err(|e| etcd_error("renewing the lease", e))?;
                    let answer = tokio::time::timeout(t, answers.message())
                        .await
                        .map_err(timed("renewing the lease"))?
                        .map_err(|e| etcd_error("renewing the lease", e))?;
                    match answer {
                        Some(a) if a.ttl() > 0 => health.set_up(true),
                        _ => {
                            return Err::<(), _>(Error::new(
                                ErrorKind::Unavailable,
                                "the lease expired (etcd away or this process paused for longer than its lifetime)",
                            ))
                        }
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let info = rx.borrow_and_update().clone();
                    put(&mut client, &info).await?;
                    tracing::info!(addr = %info.addr, state = info.state.as_str(), "registration updated");
                }
            }
        }
    };
    match run.await {
        Ok(()) => Error::new(ErrorKind::Unavailable, "registration ended"),
        Err(e) => e,
    }
}
