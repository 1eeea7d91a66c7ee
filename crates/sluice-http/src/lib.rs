//! The HTTP control plane: WHIP (RFC 9725) and WHEP endpoints, session
//! resources, and the browser pages the binary serves.
//!
//! Every error is an RFC 9457 `application/problem+json` body; every
//! response carries CORS headers so pages on other origins can publish and
//! watch.

mod admin;
pub mod auth;
mod conference;
mod cors;
pub mod limits;
pub mod ops;
mod pages;
mod problem;
mod whip;

use axum::Router;
use axum::middleware;
use axum::routing::{delete, get, post};
use sluice_server::{ControlHandle, Metrics};

pub use auth::Auth;
pub use limits::{HttpLimits, RateLimiter};
pub use ops::Readiness;
pub use problem::Problem;
use problem::not_allowed;

/// State shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    /// The media server.
    pub control: ControlHandle,
    /// The token verifier (disabled when no keys are configured).
    pub auth: Auth,
    /// Every metric, rendered at `/metrics`.
    pub metrics: Metrics,
    /// Whether new sessions are still taken.
    pub readiness: Readiness,
    /// Body size and request rate limits.
    pub limits: HttpLimits,
    /// Session POSTs per client address.
    pub rate: RateLimiter,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::index).fallback(not_allowed("GET")))
        .route(
            "/publish/{room}",
            get(pages::publish).fallback(not_allowed("GET")),
        )
        .route(
            "/watch/{room}",
            get(pages::watch).fallback(not_allowed("GET")),
        )
        .route(
            "/assets/sluice.js",
            get(pages::script).fallback(not_allowed("GET")),
        )
        .route(
            "/conference/{room}",
            get(pages::conference).fallback(not_allowed("GET")),
        )
        .route(
            "/assets/conference.js",
            get(pages::conference_script).fallback(not_allowed("GET")),
        )
        .route(
            "/assets/sluice.css",
            get(pages::style).fallback(not_allowed("GET")),
        )
        .route(
            "/api/rooms",
            get(admin::list_rooms).fallback(not_allowed("GET")),
        )
        .route(
            "/api/rooms/{room}",
            get(admin::get_room)
                .delete(admin::close_room)
                .fallback(not_allowed("GET, DELETE")),
        )
        .route(
            "/api/rooms/{room}/participants/{id}",
            delete(admin::remove_participant).fallback(not_allowed("DELETE")),
        )
        .route(
            "/api/rooms/{room}/tracks/{track}/mute",
            post(admin::mute_track).fallback(not_allowed("POST")),
        )
        .route("/healthz", get(ops::healthz).fallback(not_allowed("GET")))
        .route("/readyz", get(ops::readyz).fallback(not_allowed("GET")))
        .route("/metrics", get(ops::metrics).fallback(not_allowed("GET")))
        .route(
            "/whip/{room}",
            post(whip::publish)
                .options(whip::endpoint_options)
                .fallback(not_allowed("OPTIONS, POST")),
        )
        .route(
            "/whep/{room}",
            post(whip::watch)
                .options(whip::endpoint_options)
                .fallback(not_allowed("OPTIONS, POST")),
        )
        .route(
            "/resource/{id}",
            delete(whip::delete_resource)
                .patch(whip::patch_resource)
                .options(whip::resource_options)
                .fallback(not_allowed("OPTIONS, PATCH, DELETE")),
        )
        .route(
            "/conference/{room}/ws",
            get(conference::websocket).fallback(not_allowed("GET")),
        )
        .route(
            "/resource/{id}/layer",
            post(whip::choose_layer)
                .options(whip::layer_options)
                .fallback(not_allowed("OPTIONS, POST")),
        )
        .fallback(problem::not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            ops::count_requests,
        ))
        .layer(middleware::from_fn(cors::cors))
        .with_state(state)
}
