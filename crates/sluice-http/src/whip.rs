//! WHIP and WHEP endpoints and their session resources (RFC 9725).

use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sluice_server::{Caller, ControlError, LayerChoice, Role, SessionRequest};
use std::net::SocketAddr;
use std::time::Instant;

use tracing::info;

use crate::AppState;
use crate::auth::forbidden;
use crate::problem::Problem;

/// The query of a WHIP POST.
#[derive(Debug, Deserialize)]
pub(crate) struct PublishQuery {
    /// The participant name viewers follow this publisher by (ignored when
    /// authentication is on: the token's identity is the name).
    participant: Option<String>,
}

/// `POST /whip/{room}[?participant=NAME]`: publish into a room.
pub(crate) async fn publish(
    state: State<AppState>,
    client: ConnectInfo<SocketAddr>,
    room: Path<String>,
    Query(query): Query<PublishQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let asked = Asked {
        role: Role::Publisher,
        participant: query.participant.map(check_participant).transpose()?,
        layer: None,
    };
    create(state, client, room, headers, body, asked).await
}

/// The query of a WHEP POST.
#[derive(Debug, Deserialize)]
pub(crate) struct WatchQuery {
    /// The simulcast layer to receive: `auto` (the default) or `q`, `h`,
    /// `f` (also `low`, `medium`, `high`).
    layer: Option<String>,
    /// Follow this participant's publications instead of the room's newest
    /// publisher (a conference tile).
    participant: Option<String>,
}

/// `POST /whep/{room}[?layer=q|h|f|auto][&participant=NAME]`: watch a room.
pub(crate) async fn watch(
    state: State<AppState>,
    client: ConnectInfo<SocketAddr>,
    room: Path<String>,
    Query(query): Query<WatchQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let asked = Asked {
        role: Role::Viewer,
        participant: query.participant.map(check_participant).transpose()?,
        layer: query.layer.as_deref().map(parse_layer).transpose()?,
    };
    let mut response = create(state, client, room, headers, body, asked).await?;
    let Some(location) = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned)
    else {
        return Ok(response);
    };
    let link = format!("<{location}/layer>; rel=\"{LAYER_REL}\"");
    if let Ok(v) = HeaderValue::from_str(&link) {
        response.headers_mut().insert(header::LINK, v);
    }
    Ok(response)
}

/// The link relation of a viewer's layer-selection resource (the WHEP
/// layer extension).
const LAYER_REL: &str = "urn:ietf:params:whep:ext:core:layer";

fn parse_layer(name: &str) -> Result<LayerChoice, Problem> {
    name.parse()
        .map_err(|e: String| Problem::new(StatusCode::BAD_REQUEST, e))
}

/// The body of a layer selection: the layer to receive by name, or none
/// for automatic selection.
#[derive(Debug, Deserialize)]
struct LayerRequest {
    #[serde(rename = "encodingId")]
    encoding_id: Option<String>,
}

/// `POST /resource/{id}/layer`: choose the simulcast layer a viewer
/// receives (`{"encodingId": "h"}`), or go back to automatic (`{}`).
pub(crate) async fn choose_layer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Problem> {
    let content_type = header_str(&headers, header::CONTENT_TYPE);
    if !essence_is(content_type, "application/json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a layer request must be application/json, not {content_type:?}"),
        ));
    }
    let caller = resource_caller(&state, &headers)?;
    let text = read_text(body, state.limits.max_body_bytes).await?;
    let request: LayerRequest = serde_json::from_str(&text).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("a layer request is {{\"encodingId\": \"q\" | \"h\" | \"f\"}} or {{}}: {e}"),
        )
    })?;
    let choice = match request.encoding_id.as_deref() {
        Some(name) => parse_layer(name)?,
        None => LayerChoice::Auto,
    };
    state
        .control
        .choose_layer(&id, caller, choice)
        .await
        .map_err(control_problem)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a WHIP or WHEP POST asks for besides its room and offer.
struct Asked {
    role: Role,
    /// The publisher's name, or the participant a viewer follows.
    participant: Option<String>,
    /// A viewer's simulcast layer (`?layer=`).
    layer: Option<LayerChoice>,
}

async fn create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
    asked: Asked,
) -> Result<Response, Problem> {
    let Asked {
        role,
        participant,
        layer,
    } = asked;
    state.readiness.check()?;
    state.rate.check(client.ip(), Instant::now())?;
    check_room_name(&room)?;
    let caller = state.auth.caller(&headers)?;
    if let Some(claims) = &caller {
        let (granted, what) = match role {
            Role::Publisher => (claims.grants.publish, "publish"),
            Role::Viewer => (claims.grants.subscribe, "subscribe"),
        };
        if !claims.covers_room(&room) {
            return Err(forbidden(format!(
                "the token is not valid for room {room:?}"
            )));
        }
        if !(granted || claims.grants.admin) {
            return Err(forbidden(format!("the token does not grant {what}")));
        }
    }
    let content_type = header_str(&headers, header::CONTENT_TYPE);
    if !essence_is(content_type, "application/sdp") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the offer must be application/sdp, not {content_type:?}"),
        ));
    }
    let offer = read_text(body, state.limits.max_body_bytes).await?;
    let identity = caller.map(|c| c.sub);
    let participant = match role {
        // With authentication on, a publisher is known by its identity.
        Role::Publisher => identity.clone().or(participant),
        Role::Viewer => participant,
    };
    let created = state
        .control
        .create(SessionRequest {
            role,
            room,
            offer,
            identity,
            client: client.ip(),
            participant,
            layer,
        })
        .await
        .map_err(control_problem)?;
    let location = format!("/resource/{}", created.resource);
    let mut response = (StatusCode::CREATED, created.answer).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&created.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(ACCEPT_PATCH, HeaderValue::from_static(SDPFRAG));
    Ok(response)
}

/// `PATCH /resource/{id}`: trickle ICE candidates, or restart ICE.
pub(crate) async fn patch_resource(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let content_type = header_str(&headers, header::CONTENT_TYPE);
    if !essence_is(content_type, SDPFRAG) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a PATCH body must be {SDPFRAG}, not {content_type:?}"),
        ));
    }
    let caller = resource_caller(&state, &headers)?;
    let frag = read_text(body, state.limits.max_body_bytes).await?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    let patched = state
        .control
        .patch(&id, caller, if_match, &frag)
        .await
        .map_err(control_problem)?;
    let mut response = match patched.restart_answer {
        Some(answer) => {
            info!(resource = %id, "ICE restart");
            (StatusCode::OK, [(header::CONTENT_TYPE, SDPFRAG)], answer).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&patched.etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    Ok(response)
}

/// Who acts on a session resource (`None` while authentication is off).
fn resource_caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, Problem> {
    Ok(state.auth.caller(headers)?.map(|claims| Caller {
        identity: claims.sub,
        admin: claims.grants.admin,
    }))
}

/// The media type of trickle ICE / ICE restart fragments (RFC 8840).
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";
/// `Accept-Patch` header name.
const ACCEPT_PATCH: header::HeaderName = header::HeaderName::from_static("accept-patch");

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether a `Content-Type` value names `media_type` (parameters ignored).
fn essence_is(content_type: &str, media_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case(media_type))
}

/// Read a UTF-8 body of at most `limit` bytes.
async fn read_text(body: Body, limit: usize) -> Result<String, Problem> {
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))
}

/// `DELETE /resource/{id}`: end a session.
pub(crate) async fn delete_resource(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    let caller = resource_caller(&state, &headers)?;
    state
        .control
        .delete(&id, caller)
        .await
        .map_err(control_problem)?;
    info!(resource = %id, "session deleted by client");
    Ok(StatusCode::OK)
}

/// `OPTIONS` on a WHIP/WHEP endpoint: CORS preflight and what POST takes.
pub(crate) async fn endpoint_options() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, POST"),
            (
                header::HeaderName::from_static("accept-post"),
                "application/sdp",
            ),
        ],
    )
}

/// `OPTIONS` on a viewer's layer resource.
pub(crate) async fn layer_options() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, POST"),
            (
                header::HeaderName::from_static("accept-post"),
                "application/json",
            ),
        ],
    )
}

/// `OPTIONS` on a session resource.
pub(crate) async fn resource_options() -> impl IntoResponse {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, "OPTIONS, PATCH, DELETE"),
            (ACCEPT_PATCH, SDPFRAG),
        ],
    )
}

/// A participant name: 1 to 128 characters, no control characters.
fn check_participant(name: String) -> Result<String, Problem> {
    if !name.is_empty() && name.len() <= 128 && !name.chars().any(char::is_control) {
        Ok(name)
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "a participant name is 1 to 128 characters, without control characters",
        ))
    }
}

/// Rooms are named by URL-safe words: letters, digits, `-` and `_`.
pub(crate) fn check_room_name(room: &str) -> Result<(), Problem> {
    let valid = !room.is_empty()
        && room.len() <= 64
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "a room name is 1 to 64 letters, digits, '-' or '_'",
        ))
    }
}

/// The HTTP answer to a control-plane error.
pub(crate) fn control_problem(e: ControlError) -> Problem {
    let status = match &e {
        ControlError::Negotiate(sluice_server::NegotiateError::UnsupportedCodec(_)) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ControlError::Negotiate(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound => StatusCode::NOT_FOUND,
        ControlError::Forbidden | ControlError::RoomFull => StatusCode::FORBIDDEN,
        ControlError::NotAViewer => StatusCode::CONFLICT,
        ControlError::TooManySessions => StatusCode::TOO_MANY_REQUESTS,
        ControlError::TooManyRooms => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
        ControlError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ControlError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let problem = Problem::new(status, e.to_string());
    match e {
        ControlError::TooManyRooms | ControlError::TooManySessions => {
            problem.with_retry_after(CAPACITY_RETRY_AFTER_SECS)
        }
        _ => problem,
    }
}

/// Seconds a client should wait when the server or its address is full.
const CAPACITY_RETRY_AFTER_SECS: u64 = 10;
