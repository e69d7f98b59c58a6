//! The pool server's gRPC control plane: health and stats for anyone who reaches it (probes,
//! `kvtier stat`), drain and undrain from this host only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::PoolServer;
use crate::proto;

/// The gRPC control plane.
pub(super) struct Control(pub(super) Arc<PoolServer>);

#[tonic::async_trait]
impl proto::pool_server::Pool for Control {
    async fn health(
        &self,
        _: tonic::Request<proto::HealthRequest>,
    ) -> std::result::Result<tonic::Response<proto::HealthReply>, tonic::Status> {
        Ok(tonic::Response::new(proto::HealthReply {
            serving: !self.0.draining.load(Ordering::Relaxed),
            draining: self.0.draining.load(Ordering::Relaxed),
        }))
    }

    async fn stats(
        &self,
        _: tonic::Request<proto::StatsRequest>,
    ) -> std::result::Result<tonic::Response<proto::StatsReply>, tonic::Status> {
        let s = self.0.stats();
        Ok(tonic::Response::new(proto::StatsReply {
            objects: s.store.objects,
            used_bytes: s.store.used_bytes,
            capacity_bytes: s.store.capacity_bytes,
            json: serde_json::to_string(&s).expect("stats serialise"),
        }))
    }

    async fn drain(
        &self,
        req: tonic::Request<proto::DrainRequest>,
    ) -> std::result::Result<tonic::Response<proto::DrainReply>, tonic::Status> {
        from_this_host(&req, "Drain")?;
        let s = self.0.clone();
        tokio::task::spawn_blocking(move || s.drain())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(proto::DrainReply {}))
    }

    async fn undrain(
        &self,
        req: tonic::Request<proto::UndrainRequest>,
    ) -> std::result::Result<tonic::Response<proto::UndrainReply>, tonic::Status> {
        from_this_host(&req, "Undrain")?;
        self.0.undrain();
        Ok(tonic::Response::new(proto::UndrainReply {}))
    }
}

/// Refuses a call unless its peer is on this host: a loopback address, or the connection's own
/// local address (a caller in the same pod reaching the pod's IP). The control plane may listen
/// where probes and Prometheus reach it; what changes the server's state does not go with it.
fn from_this_host<T>(req: &tonic::Request<T>, what: &str) -> Result<(), tonic::Status> {
    let info = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>();
    let (local, remote) = (
        info.and_then(|i| i.local_addr),
        info.and_then(|i| i.remote_addr),
    );
    match remote {
        Some(r) if r.ip().to_canonical().is_loopback() || Some(r.ip()) == local.map(|l| l.ip()) => {
            Ok(())
        }
        _ => Err(tonic::Status::permission_denied(format!(
            "{what} is accepted from the pool server's own host only (got a call from {}); run it \
             there, e.g. in the pod",
            remote.map_or("an unknown peer".to_string(), |r| r.to_string())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pool_server::Pool;
    use tonic::transport::server::TcpConnectInfo;

    fn from<T>(msg: T, remote: &str, local: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.extensions_mut().insert(TcpConnectInfo {
            local_addr: Some(local.parse().unwrap()),
            remote_addr: Some(remote.parse().unwrap()),
        });
        r
    }

    #[test]
    fn drain_and_undrain_come_from_this_host_only() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut store = kvtier_core::tier::segment::SegmentStoreConfig::new(dir.path());
            store.capacity_bytes = 4 << 20;
            store.segment_bytes = 1 << 20;
            store.create_dir = true;
            let cfg = super::super::PoolServerConfig::new("127.0.0.1:0".parse().unwrap(), store);
            let c = Control(PoolServer::bind(cfg).await.unwrap().server());
            let me = "10.1.2.3:7071";
            // Another host: refused, and the server keeps taking writes.
            let e = c
                .drain(from(proto::DrainRequest {}, "10.9.9.9:4000", me))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            assert!(!c.0.is_draining());
            // This host, by its own address and by loopback: drained, then undrained.
            c.drain(from(proto::DrainRequest {}, "10.1.2.3:4000", me))
                .await
                .unwrap();
            assert!(c.0.is_draining());
            let e = c
                .undrain(from(proto::UndrainRequest {}, "10.9.9.9:4000", me))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(c.0.is_draining());
            c.undrain(from(proto::UndrainRequest {}, "127.0.0.1:4000", me))
                .await
                .unwrap();
            assert!(!c.0.is_draining());
            // A request without connection info (not over TCP) is not trusted either.
            let e = c.drain(tonic::Request::new(proto::DrainRequest {})).await;
            assert!(e.is_err() && !c.0.is_draining());
        });
    }
}
