//! Watching a cluster's membership in etcd.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{backoff, etcd_error, ClusterConfig, ClusterHealth, MemberInfo};
use kvtier_core::error::{Error, ErrorKind};

/// Watches the members of `cfg`'s cluster for ever, sending every membership seen (sorted by
/// address) on `tx`. While etcd is unreachable nothing is sent: the receivers keep the last
/// membership; the loop retries with a backoff and reads the whole membership again when it
/// reconnects. Returns when every receiver is gone.
pub async fn watch(
    cfg: ClusterConfig,
    health: Arc<ClusterHealth>,
    tx: tokio::sync::watch::Sender<Vec<MemberInfo>>,
) {
    let mut delay = Duration::from_millis(200);
    while !tx.is_closed() {
        let err = watch_once(&cfg, &health, &tx, &mut delay).await;
        health.errors.inc();
        health.set_up(false);
        tracing::debug!(error = %err, "etcd membership watch ended; retrying");
        tokio::time::sleep(backoff(&mut delay)).await;
    }
}

fn parse(key: &[u8], value: &[u8]) -> Option<MemberInfo> {
    match serde_json::from_slice::<MemberInfo>(value) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "ignoring a member entry that is not a kvtier member record");
            None
        }
    }
}

fn publish(
    members: &BTreeMap<Vec<u8>, MemberInfo>,
    health: &ClusterHealth,
    tx: &tokio::sync::watch::Sender<Vec<MemberInfo>>,
) {
    let mut list: Vec<MemberInfo> = members.values().cloned().collect();
    list.sort_by(|a, b| a.addr.cmp(&b.addr));
    list.dedup_by(|a, b| a.addr == b.addr);
    health.set_members(list.len());
    tx.send_if_modified(|cur| {
        if *cur == list {
            return false;
        }
        health.changes.inc();
        *cur = list;
        true
    });
}

async fn watch_once(
    cfg: &ClusterConfig,
    health: &ClusterHealth,
    tx: &tokio::sync::watch::Sender<Vec<MemberInfo>>,
    delay: &mut Duration,
) -> Error {
    let run = async {
        let mut client = cfg.connect().await?;
        let prefix = cfg.prefix();
        let got = tokio::time::timeout(
            cfg.timeout,
            client.get(
                prefix.clone(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            ),
        )
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "etcd: reading the members timed out"))?
        .map_err(|e| etcd_error("reading the members", e))?;
        let rev = got.header().map_or(0, |h| h.revision());
        let mut members = BTreeMap::new();
        for kv in got.kvs() {
            if let Some(m) = parse(kv.key(), kv.value()) {
                members.insert(kv.key().to_vec(), m);
            }
        }
        let mut stream = client
            .watch(
                prefix,
                Some(
                    etcd_client::WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
            .map_err(|e| etcd_error("watching the members", e))?;
        health.set_up(true);
        *delay = Duration::from_millis(200);
        publish(&members, health, tx);
        loop {
            let msg = stream
                .message()
                .await
                .map_err(|e| etcd_error("the members' watch", e))?;
            let Some(msg) = msg else {
                return Err::<(), _>(Error::new(
                    ErrorKind::Unavailable,
                    "etcd closed the members' watch",
                ));
            };
            if msg.canceled() {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("etcd cancelled the members' watch: {}", msg.cancel_reason()),
                ));
            }
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    etcd_client::EventType::Put => {
                        if let Some(m) = parse(kv.key(), kv.value()) {
                            members.insert(kv.key().to_vec(), m);
                        }
                    }
                    etcd_client::EventType::Delete => {
                        members.remove(kv.key());
                    }
                }
            }
            publish(&members, health, tx);
            if tx.is_closed() {
                return Ok(());
            }
        }
    };
    match run.await {
        Ok(()) => Error::new(ErrorKind::Unavailable, "no one watches the membership"),
        Err(e) => e,
    }
}
