//! The admin API under `/api`: see and steer rooms. Admin tokens only
//! (anyone while authentication is off, which only happens on loopback).

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sluice_server::admin::RoomInfo;
use tracing::info;

use crate::AppState;
use crate::auth::forbidden;
use crate::problem::Problem;
use crate::whip::control_problem;

/// `GET /api/rooms` body.
#[derive(Serialize)]
pub(crate) struct Rooms {
    rooms: Vec<RoomInfo>,
}

/// `DELETE /api/rooms/{room}` body.
#[derive(Serialize)]
pub(crate) struct Closed {
    closed_sessions: usize,
}

/// `POST /api/rooms/{room}/tracks/{track}/mute` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mute {
    muted: bool,
}

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 4096;

/// 401/403 unless the caller holds an admin token (or auth is off).
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), Problem> {
    match state.auth.caller(headers)? {
        Some(claims) if !claims.grants.admin => {
            Err(forbidden("the admin API needs an admin token"))
        }
        _ => Ok(()),
    }
}

/// `GET /api/rooms`: every room with its sessions, tracks and layers.
pub(crate) async fn list_rooms(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Rooms>, Problem> {
    require_admin(&state, &headers)?;
    let rooms = state.control.rooms(None).await.map_err(control_problem)?;
    Ok(Json(Rooms { rooms }))
}

/// `GET /api/rooms/{room}`.
pub(crate) async fn get_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RoomInfo>, Problem> {
    require_admin(&state, &headers)?;
    let rooms = state
        .control
        .rooms(Some(&room))
        .await
        .map_err(control_problem)?;
    rooms
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no room {room:?}")))
}

/// `DELETE /api/rooms/{room}`: end every session of the room.
pub(crate) async fn close_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Closed>, Problem> {
    require_admin(&state, &headers)?;
    let closed_sessions = state
        .control
        .close_room(&room)
        .await
        .map_err(|e| not_found_as(e, format!("no room {room:?}")))?;
    info!(room = %room, closed_sessions, "admin closed a room");
    Ok(Json(Closed { closed_sessions }))
}

/// `DELETE /api/rooms/{room}/participants/{id}`: end one session.
pub(crate) async fn remove_participant(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    require_admin(&state, &headers)?;
    state
        .control
        .remove_session(&room, &id)
        .await
        .map_err(|e| not_found_as(e, format!("no session {id:?} in room {room:?}")))?;
    Ok(StatusCode::OK)
}

/// `POST /api/rooms/{room}/tracks/{track}/mute` with `{"muted": bool}`.
pub(crate) async fn mute_track(
    State(state): State<AppState>,
    Path((room, track)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Problem> {
    require_admin(&state, &headers)?;
    let no_track = || format!("no track {track:?} in room {room:?}");
    let id: u64 = track
        .parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, no_track()))?;
    let bytes = to_bytes(body, MAX_ADMIN_BODY)
        .await
        .map_err(|_| Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"))?;
    let Mute { muted } = serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"muted\": true|false}}: {e}"),
        )
    })?;
    state
        .control
        .mute_track(&room, id, muted)
        .await
        .map_err(|e| not_found_as(e, no_track()))?;
    Ok(StatusCode::OK)
}

/// A control error, with a specific message for "not found".
fn not_found_as(e: sluice_server::ControlError, detail: String) -> Problem {
    match e {
        sluice_server::ControlError::NotFound => Problem::new(StatusCode::NOT_FOUND, detail),
        other => control_problem(other),
    }
}
