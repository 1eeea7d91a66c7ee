//! RFC 9457 problem details, the body of every error response.

use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
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
    /// Send `WWW-Authenticate: Bearer` (401 responses).
    #[serde(skip)]
    challenge: bool,
    /// Seconds for a `Retry-After` header (429, 503).
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem with `status` and a specific `detail`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            detail: detail.into(),
            challenge: false,
            retry_after: None,
        }
    }

    /// Add a `WWW-Authenticate: Bearer` challenge.
    pub fn with_challenge(mut self) -> Self {
        self.challenge = true;
        self
    }

    /// Add a `Retry-After` header.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        let h = response.headers_mut();
        if self.challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice\", error=\"invalid_token\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Fallback for unknown paths.
pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("nothing at {}", uri.path()))
}

/// A handler answering `405` with an `Allow` header and a problem body,
/// for the methods a route does not take.
pub(crate) fn not_allowed(
    allow: &'static str,
) -> impl Fn(Method) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move |method: Method| {
        let mut response = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here; allowed: {allow}"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        std::future::ready(response)
    }
}
