//! RFC 9457 problem details, the body of every error response.

use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An HTTP error with a human-readable explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// HTTP status code.
    pub status: u16,
    /// Short summary of the problem class.
    pub title: String,
    /// What exactly is wrong with this request.
    pub detail: String,
}

impl Problem {
    /// A problem with `status` and a specific `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// Fallback for unknown paths.
pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("nothing at {}", uri.path()))
}
