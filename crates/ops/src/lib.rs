//! Operating kvtier: the configuration file ([`config`]), the daemons' HTTP endpoint
//! ([`http`]: `/metrics`, `/healthz`, `/readyz`), their metric pages ([`render`], in the text
//! format of [`prom`]), readiness ([`probe`]) and `kvtier stat` ([`stat`]).
//!
//! This module sits above the agent and the pool (it reads their counters) and below the
//! binary.

pub mod config;
pub mod http;
pub mod probe;
pub mod prom;
pub mod render;
pub mod stat;

use std::sync::Arc;

use http::{Handler, Response};

fn route(
    path: &str,
    metrics: impl FnOnce() -> String,
    ready: impl FnOnce() -> kvtier_core::error::Result<()>,
) -> Response {
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: prom::CONTENT_TYPE,
            body: metrics(),
        },
        // Liveness: the process answers.
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => match ready() {
            Ok(()) => Response::text(200, "ready\n"),
            Err(why) => Response::text(503, format!("not ready: {why}\n")),
        },
        "/" => Response::text(200, "kvtier: /metrics /healthz /readyz\n"),
        _ => Response::text(404, "not found; try /metrics, /healthz or /readyz\n"),
    }
}

/// The agent's endpoint: its metrics, and ready while serving with its pool reachable.
pub fn agent_handler(readiness: probe::AgentReadiness, state: Arc<kvtier_agent::State>) -> Handler {
    Arc::new(move |path: &str| route(path, || render::agent(&state), || readiness.ready()))
}

/// A pool server's endpoint: its metrics, and ready while serving and not draining.
pub fn pool_handler(server: Arc<kvtier_pool::server::PoolServer>) -> Handler {
    Arc::new(move |path: &str| {
        route(
            path,
            || render::pool(&server),
            || probe::pool_ready(&server),
        )
    })
}
