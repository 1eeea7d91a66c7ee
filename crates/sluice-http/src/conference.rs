//! The conference WebSocket, `GET /conference/{room}/ws`: it tells a
//! conference client who publishes in the room, and again whenever that
//! changes, so the client can watch each participant
//! (`POST /whep/{room}?participant=NAME`).
//!
//! Messages from the server are JSON text frames:
//! `{"type": "participants", "participants": [{"name", "audio", "video",
//! "video_layers"}]}`, `{"type": "speakers", "speakers": [{"name",
//! "level_dbov"}]}` (who speaks, loudest first, whenever that changes),
//! `{"type": "ended", "reason": "replaced" | "removed"
//! | "room_closed"}` when the server ended the client's own WHIP session
//! (the same name published again elsewhere, an admin removed it or closed
//! the room), and `{"type": "error", "status", "detail"}` before it closes.
//! With authentication on, the client sends its token in the query
//! (`?token=`) or as its first message, `{"type": "join", "token": "…"}`,
//! within 10 s. A publishing client names its WHIP session with
//! `{"type": "publishing", "session": "<resource id>"}` to hear of its end.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sluice_server::admin::ParticipantInfo;
use sluice_server::{Caller, PublisherStatus};
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use crate::AppState;
use crate::auth::{Claims, forbidden};
use crate::problem::Problem;
use crate::whip::check_room_name;

/// How long a client may take to send its join message.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message a client may send: its messages are a token or a
/// resource id in a line of JSON. A longer one closes the socket.
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// The query of the WebSocket request.
#[derive(Debug, Deserialize)]
pub(crate) struct ConferenceQuery {
    /// The bearer token, for clients that cannot send headers (browsers).
    token: Option<String>,
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    /// The first message of a client that did not put its token in the
    /// query.
    Join { token: Option<String> },
    /// The resource id of the client's own WHIP session.
    Publishing { session: String },
}

/// `GET /conference/{room}/ws`: upgrade to the conference WebSocket.
pub(crate) async fn websocket(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<ConferenceQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Problem> {
    check_room_name(&room)?;
    // A token in the query is checked before the upgrade, so a bad one
    // gets a plain HTTP 401 or 403.
    let access = match (&query.token, state.auth.enabled()) {
        (_, false) => Access::Open,
        (Some(token), true) => {
            let claims = state
                .auth
                .verify(token)
                .map_err(|e| Problem::new(StatusCode::UNAUTHORIZED, e).with_challenge())?;
            check_grants(&claims, &room)?;
            Access::Token(caller_of(claims))
        }
        (None, true) => Access::AwaitingJoin,
    };
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| run(socket, state, room, access)))
}

/// Who the client is, as far as the upgrade knows.
enum Access {
    /// Authentication is off.
    Open,
    /// The query's token said.
    Token(Caller),
    /// Its first message must carry a token.
    AwaitingJoin,
}

fn caller_of(claims: Claims) -> Caller {
    Caller {
        identity: claims.sub,
        admin: claims.grants.admin,
    }
}

/// A conference client may watch the room if it may publish or subscribe.
fn check_grants(claims: &Claims, room: &str) -> Result<(), Problem> {
    if !claims.covers_room(room) {
        return Err(forbidden(format!(
            "the token is not valid for room {room:?}"
        )));
    }
    let g = &claims.grants;
    if !(g.publish || g.subscribe || g.admin) {
        return Err(forbidden("the token grants neither publish nor subscribe"));
    }
    Ok(())
}

async fn run(mut socket: WebSocket, state: AppState, room: String, access: Access) {
    let caller = match access {
        Access::Open => None,
        Access::Token(caller) => Some(caller),
        Access::AwaitingJoin => match join(&mut socket, &state, &room).await {
            Ok(claims) => Some(caller_of(claims)),
            Err(problem) => {
                let _ = close_with(&mut socket, &problem).await;
                return;
            }
        },
    };
    let mut changes = state.control.room_changes();
    let mut ends = state.control.session_ends();
    let Ok(mut speakers) = state.control.watch_speakers(&room).await else {
        return; // the media server is gone
    };
    if !speakers.borrow().is_empty() {
        speakers.mark_changed(); // tell the newcomer who speaks already
    }
    // The client's own WHIP session, once it named it and it was live.
    let mut publishing: Option<String> = None;
    let mut sent: Option<Vec<ParticipantInfo>> = None;
    loop {
        let Ok(participants) = state.control.participants(&room).await else {
            return; // the media server is gone
        };
        if sent.as_ref() != Some(&participants) {
            let text = json!({ "type": "participants", "participants": participants });
            if socket
                .send(Message::Text(text.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            sent = Some(participants);
        }
        // Wait for a change in this room (or a missed one), or the client.
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(changed) if *changed == *room => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                },
                changed = speakers.changed() => {
                    if changed.is_err() {
                        return; // the media server is gone
                    }
                    let list = speakers.borrow_and_update().clone();
                    let text = json!({ "type": "speakers", "speakers": list });
                    if socket.send(Message::Text(text.to_string().into())).await.is_err() {
                        return;
                    }
                }
                end = ends.recv() => {
                    let reason = match end {
                        Ok(end) if publishing.as_deref() == Some(&*end.resource) => Some(end.reason),
                        Ok(_) => None,
                        // Missed some: ask about ours.
                        Err(RecvError::Lagged(_)) => match &publishing {
                            Some(session) => ended(&state, &room, session, &caller).await,
                            None => None,
                        },
                        Err(RecvError::Closed) => return,
                    };
                    if let Some(reason) = reason {
                        publishing = None;
                        if send_ended(&mut socket, reason).await.is_err() {
                            return;
                        }
                    }
                }
                message = socket.recv() => match message {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(Message::Text(text))) => {
                        let Ok(ClientMessage::Publishing { session }) = serde_json::from_str(&text) else {
                            continue;
                        };
                        // It may have ended before the client got to name it.
                        let status = state
                            .control
                            .publisher_status(&room, &session, caller.clone())
                            .await;
                        match status {
                            Ok(PublisherStatus::Live) => publishing = Some(session),
                            Ok(PublisherStatus::Ended(reason)) => {
                                if send_ended(&mut socket, reason).await.is_err() {
                                    return;
                                }
                            }
                            Ok(PublisherStatus::Unknown) | Err(_) => {
                                debug!(room, "a conference client named a session it cannot follow");
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

/// Why the server ended the client's session `session`, if it did.
async fn ended(
    state: &AppState,
    room: &str,
    session: &str,
    caller: &Option<Caller>,
) -> Option<sluice_server::EndReason> {
    match state
        .control
        .publisher_status(room, session, caller.clone())
        .await
    {
        Ok(PublisherStatus::Ended(reason)) => Some(reason),
        _ => None,
    }
}

/// Tell the client the server ended its session.
async fn send_ended(
    socket: &mut WebSocket,
    reason: sluice_server::EndReason,
) -> Result<(), axum::Error> {
    let text = json!({ "type": "ended", "reason": reason.as_str() });
    socket.send(Message::Text(text.to_string().into())).await
}

/// Wait for `{"type": "join", "token": …}` and check the token; returns
/// its claims.
async fn join(socket: &mut WebSocket, state: &AppState, room: &str) -> Result<Claims, Problem> {
    let unauthorized = |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, detail);
    let message = tokio::time::timeout(JOIN_TIMEOUT, socket.recv())
        .await
        .map_err(|_| unauthorized("no join message with a token within 10 s"))?;
    let Some(Ok(Message::Text(text))) = message else {
        return Err(unauthorized("the first message must be a join message"));
    };
    let Ok(ClientMessage::Join { token }) = serde_json::from_str(&text) else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "the first message must be {\"type\": \"join\", \"token\": \"…\"}",
        ));
    };
    let token = token.ok_or_else(|| unauthorized("the join message carries no token"))?;
    let claims = state.auth.verify(&token).map_err(unauthorized)?;
    check_grants(&claims, room)?;
    debug!(room, identity = %claims.sub, "conference client joined");
    Ok(claims)
}

/// Send an error message, then close with a code that names the status
/// (4000 + the HTTP status, e.g. 4401).
async fn close_with(socket: &mut WebSocket, problem: &Problem) -> Result<(), axum::Error> {
    let status = problem.status;
    let detail = problem.detail.clone();
    let text = json!({ "type": "error", "status": status, "detail": detail });
    socket.send(Message::Text(text.to_string().into())).await?;
    socket
        .send(Message::Close(Some(CloseFrame {
            code: 4000 + status,
            reason: detail.into(),
        })))
        .await
}
