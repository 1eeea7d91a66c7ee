//! CORS for every response, so WHIP/WHEP clients on other origins work.
//!
//! Preflight `OPTIONS` requests reach the route handlers (which add
//! `Accept-Post` and `Allow`); this layer only adds the CORS headers.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;

/// Response headers a browser script may read.
const EXPOSED: &str = "Location, ETag, Link, Accept-Patch, Accept-Post";
/// Methods the API uses.
const METHODS: &str = "GET, POST, PATCH, DELETE, OPTIONS";
/// Request headers the API reads.
const HEADERS: &str = "Authorization, Content-Type, If-Match";

/// Add CORS headers to the response of any request.
pub(crate) async fn cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
    }
    response
}
