//! The browser pages, embedded in the binary (no build step).

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// `GET /`: what is running and where to go.
pub(crate) async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

/// `GET /publish/{room}`: camera and microphone over WHIP.
pub(crate) async fn publish() -> Html<&'static str> {
    Html(include_str!("../assets/publish.html"))
}

/// `GET /watch/{room}`: the WHEP player.
pub(crate) async fn watch() -> Html<&'static str> {
    Html(include_str!("../assets/watch.html"))
}

/// `GET /conference/{room}`: a video meeting in the browser.
pub(crate) async fn conference() -> Html<&'static str> {
    Html(include_str!("../assets/conference.html"))
}

/// `GET /assets/conference.js`: the conference page's client.
pub(crate) async fn conference_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/conference.js"),
    )
}

/// `GET /assets/sluice.js`: the WHIP/WHEP client shared by the pages.
pub(crate) async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/sluice.js"),
    )
}

/// `GET /assets/sluice.css`: the pages' style.
pub(crate) async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/sluice.css"),
    )
}
