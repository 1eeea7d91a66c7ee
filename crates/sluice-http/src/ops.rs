//! Operating endpoints: liveness, readiness, metrics, and the request
//! counter every response passes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};

use crate::AppState;
use crate::problem::Problem;

/// Seconds a client should wait before retrying while the server drains.
pub const DRAIN_RETRY_AFTER_SECS: u64 = 30;

/// Whether the server still takes new sessions (shared with the binary,
/// which flips it on SIGTERM).
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Stop taking new sessions.
    pub fn start_draining(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// 503 with `Retry-After` while draining.
    pub(crate) fn check(&self) -> Result<(), Problem> {
        if self.is_draining() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down and takes no new sessions",
            )
            .with_retry_after(DRAIN_RETRY_AFTER_SECS));
        }
        Ok(())
    }
}

/// `GET /healthz`: the process is alive.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while taking new sessions, 503 while draining.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<&'static str, Problem> {
    state.readiness.check()?;
    Ok("ready\n")
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.update_process();
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&state.metrics.registry.gather(), &mut body) {
        return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        body,
    )
        .into_response()
}

/// Count every request by route template (never the raw path, which
/// would make a label per session id), method and status.
pub(crate) async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}
