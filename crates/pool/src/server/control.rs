//! The pool server's gRPC control plane: health, stats, drain.

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
        _: tonic::Request<proto::DrainRequest>,
    ) -> std::result::Result<tonic::Response<proto::DrainReply>, tonic::Status> {
        let s = self.0.clone();
        tokio::task::spawn_blocking(move || s.drain())
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(proto::DrainReply {}))
    }
}
