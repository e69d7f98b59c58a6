//! The gRPC glue: each call runs the [`State`] operation on the blocking pool (operations may
//! touch the disk) inside a span of its own (`rpc{op, session, blocks, bytes}`), times it into
//! the op's latency histogram, and maps errors to `tonic::Status` once, here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use tonic::{Request, Response, Status};

use super::proto::{self, agent_server::Agent};
use super::state::{AgentOp, Granted, State};
use kvtier_core::error::{Error, ErrorKind};
use kvtier_core::key::BlockKey;
use kvtier_core::metrics::OpSet;

pub(super) struct Service {
    state: Arc<State>,
}

impl Service {
    pub(super) fn new(state: Arc<State>) -> Self {
        Service { state }
    }

    /// The span of one request: `blocks` keys of `session`, `bytes` of payload they stand for.
    fn span(&self, op: AgentOp, session: u64, blocks: usize) -> tracing::Span {
        let bytes = blocks as u64 * self.state.arena().payload_len() as u64;
        tracing::info_span!(
            "rpc",
            op = op.name(),
            session,
            blocks,
            bytes,
            tier = "memory"
        )
    }

    /// Runs `f` on the blocking pool inside `span`, and records its latency under `op`
    async fn run<T: Send + 'static>(
        &self,
        op: AgentOp,
        span: tracing::Span,
        f: impl FnOnce(&Arc<State>) -> kvtier_core::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let state = self.state.clone();
        let t0 = Instant::now();
        let inner = span.clone();
        let r = tokio::task::spawn_blocking(move || inner.in_scope(|| f(&state)))
            .await
            .map_err(|e| Status::internal(format!("agent task failed: {e}")))?;
        let took = t0.elapsed();
        self.state.observe(op, took);
        async {
            match &r {
                Ok(_) => tracing::debug!(took_us = took.as_micros() as u64, "done"),
                Err(e) => tracing::debug!(took_us = took.as_micros() as u64, error = %e, "failed"),
            }
        }
        .instrument(span)
        .await;
        r.map_err(to_status)
    }
}

fn to_status(e: Error) -> Status {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::NoSpace => Status::resource_exhausted(msg),
        ErrorKind::Corrupt => Status::data_loss(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        ErrorKind::Unavailable => Status::unavailable(msg),
        ErrorKind::Timeout => Status::deadline_exceeded(msg),
        ErrorKind::PermissionDenied => Status::permission_denied(msg),
        ErrorKind::Io => Status::internal(msg),
    }
}

/// The uid of a request's peer (the kernel's `SO_PEERCRED` of its connection), if known.
fn caller<T>(req: &Request<T>) -> Option<u32> {
    req.extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|i| i.peer_cred)
        .map(|c| c.uid())
}

fn keys(k: &[proto::Key]) -> Vec<BlockKey> {
    k.iter()
        .map(|k| BlockKey::from_u128(((k.hi as u128) << 64) | k.lo as u128))
        .collect()
}

fn leases(g: Vec<Granted>) -> Vec<proto::Lease> {
    g.into_iter()
        .map(|g| proto::Lease {
            index: g.index,
            slot: g.slot,
            lease: g.lease,
        })
        .collect()
}

#[tonic::async_trait]
impl Agent for Service {
    async fn hello(
        &self,
        req: Request<proto::HelloRequest>,
    ) -> Result<Response<proto::HelloResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        let span = tracing::info_span!("rpc", op = AgentOp::Hello.name(), engine = %r.engine);
        let session = self
            .run(AgentOp::Hello, span, move |s| {
                s.hello(r.fd_token, r.layout_digest, r.object_len, &r.engine, uid)
            })
            .await?;
        let arena = self.state.arena();
        Ok(Response::new(proto::HelloResponse {
            session,
            slot_len: arena.slot_len() as u64,
            payload_offset: kvtier_core::block::HEADER_LEN as u64,
            slots: arena.slots(),
        }))
    }

    async fn lookup(
        &self,
        req: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        self.state.authorize(r.session, uid).map_err(to_status)?;
        let span = self.span(AgentOp::Lookup, r.session, r.keys.len());
        let (prefix_blocks, in_memory) = self
            .run(AgentOp::Lookup, span, move |s| {
                let budget = (r.budget_us > 0).then(|| Duration::from_micros(r.budget_us));
                let recompute = (r.recompute_us > 0).then(|| Duration::from_micros(r.recompute_us));
                s.lookup(r.session, &keys(&r.keys), r.prefetch, budget, recompute)
            })
            .await?;
        Ok(Response::new(proto::LookupResponse {
            prefix_blocks,
            in_memory,
        }))
    }

    async fn begin_save(
        &self,
        req: Request<proto::BeginSaveRequest>,
    ) -> Result<Response<proto::BeginSaveResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        self.state.authorize(r.session, uid).map_err(to_status)?;
        let span = self.span(AgentOp::BeginSave, r.session, r.keys.len());
        let (g, next) = self
            .run(AgentOp::BeginSave, span, move |s| {
                s.begin_save(r.session, &keys(&r.keys))
            })
            .await?;
        Ok(Response::new(proto::BeginSaveResponse {
            leases: leases(g),
            next,
        }))
    }

    async fn commit_save(
        &self,
        req: Request<proto::CommitSaveRequest>,
    ) -> Result<Response<proto::CommitSaveResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        self.state.authorize(r.session, uid).map_err(to_status)?;
        let span = self.span(AgentOp::CommitSave, r.session, r.leases.len());
        let (stored, deduplicated) = self
            .run(AgentOp::CommitSave, span, move |s| {
                s.commit_save(r.session, &r.leases)
            })
            .await?;
        Ok(Response::new(proto::CommitSaveResponse {
            stored,
            deduplicated,
        }))
    }

    async fn begin_load(
        &self,
        req: Request<proto::BeginLoadRequest>,
    ) -> Result<Response<proto::BeginLoadResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        self.state.authorize(r.session, uid).map_err(to_status)?;
        let budget = Duration::from_millis(r.budget_ms as u64);
        let span = self.span(AgentOp::BeginLoad, r.session, r.keys.len());
        let (g, next) = self
            .run(AgentOp::BeginLoad, span, move |s| {
                s.begin_load(r.session, &keys(&r.keys), budget)
            })
            .await?;
        Ok(Response::new(proto::BeginLoadResponse {
            leases: leases(g),
            next,
        }))
    }

    async fn end_load(
        &self,
        req: Request<proto::EndLoadRequest>,
    ) -> Result<Response<proto::EndLoadResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        self.state.authorize(r.session, uid).map_err(to_status)?;
        let span = self.span(AgentOp::EndLoad, r.session, r.leases.len());
        self.run(AgentOp::EndLoad, span, move |s| {
            s.end_load(r.session, &r.leases)
        })
        .await?;
        Ok(Response::new(proto::EndLoadResponse {}))
    }

    async fn goodbye(
        &self,
        req: Request<proto::GoodbyeRequest>,
    ) -> Result<Response<proto::GoodbyeResponse>, Status> {
        let uid = caller(&req);
        let r = req.into_inner();
        self.state.authorize(r.session, uid).map_err(to_status)?;
        let span = self.span(AgentOp::Goodbye, r.session, 0);
        self.run(AgentOp::Goodbye, span, move |s| {
            s.goodbye(r.session);
            Ok(())
        })
        .await?;
        Ok(Response::new(proto::GoodbyeResponse {}))
    }

    async fn stats(
        &self,
        _req: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let span = tracing::info_span!("rpc", op = AgentOp::Stats.name());
        let s = self.run(AgentOp::Stats, span, |s| Ok(s.stats())).await?;
        Ok(Response::new(proto::StatsResponse {
            sessions: s.sessions,
            arena_slots: s.arena_slots,
            arena_used: s.arena_used,
            leases: s.leases,
            hits_memory: s.hits_memory,
            hits_pool: s.hits_pool,
            misses: s.misses,
            saves: s.saves,
            deduplicated: s.deduplicated,
            pool_writes: s.pool_writes,
            dropped_writes: s.dropped_writes,
            corrupt: s.corrupt,
            reclaimed_leases: s.reclaimed_leases,
        }))
    }
}
