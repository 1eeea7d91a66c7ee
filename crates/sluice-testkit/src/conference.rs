//! A conference client's WebSocket (`GET /conference/{room}/ws`): what a
//! conference page opens to learn who publishes in its room, and on which
//! it names its own WHIP session to hear why the server ended it.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::peer::PeerError;

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server says on the conference WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConferenceMessage {
    /// The participants that publish audio or video now, by name.
    Participants(Vec<String>),
    /// The server ended this client's own WHIP session (`replaced`,
    /// `removed` or `room_closed`).
    Ended(String),
    /// The server refused the client; it closes the socket next.
    Error {
        /// The HTTP status the refusal stands for.
        status: u16,
        /// What was wrong.
        detail: String,
    },
}

/// An open conference WebSocket.
pub struct ConferenceSocket {
    stream: Stream,
}

impl ConferenceSocket {
    /// Open the conference WebSocket of `room` on the server at `url`
    /// (`http://host:port`), with `token` in the query when the server
    /// wants one.
    pub async fn connect(
        url: &str,
        room: &str,
        token: Option<&str>,
    ) -> Result<ConferenceSocket, PeerError> {
        let base = url
            .strip_prefix("http://")
            .ok_or_else(|| PeerError::Local(format!("{url} is not an http:// URL")))?;
        let mut ws = format!("ws://{base}/conference/{room}/ws");
        if let Some(token) = token {
            ws = format!("{ws}?token={token}");
        }
        let (stream, _) = tokio_tungstenite::connect_async(ws)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(response) => PeerError::Status(
                    response.status().as_u16(),
                    String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                        .into_owned(),
                ),
                other => PeerError::Http(other.to_string()),
            })?;
        Ok(ConferenceSocket { stream })
    }

    /// Name the WHIP session at `resource` (its URL) as this client's own.
    pub async fn name_session(&mut self, resource: &str) -> Result<(), PeerError> {
        let session = resource.rsplit('/').next().unwrap_or(resource);
        let message = json!({ "type": "publishing", "session": session });
        self.stream
            .send(Message::Text(message.to_string().into()))
            .await
            .map_err(|e| PeerError::Http(e.to_string()))
    }

    /// The next message the client understands; `None` once the socket
    /// is closed.
    pub async fn next(&mut self) -> Option<ConferenceMessage> {
        loop {
            match self.stream.next().await? {
                Ok(Message::Text(text)) => {
                    if let Some(message) = serde_json::from_str(&text).ok().and_then(parse) {
                        return Some(message);
                    }
                }
                Ok(_) => {} // pings, pongs, the close frame
                Err(_) => return None,
            }
        }
    }
}

/// A server message as a [`ConferenceMessage`], if it is one.
fn parse(message: Value) -> Option<ConferenceMessage> {
    match message["type"].as_str()? {
        "participants" => Some(ConferenceMessage::Participants(
            message["participants"]
                .as_array()?
                .iter()
                .filter(|p| p["audio"] == true || p["video"] == true)
                .filter_map(|p| Some(p["name"].as_str()?.to_owned()))
                .collect(),
        )),
        "ended" => Some(ConferenceMessage::Ended(
            message["reason"].as_str()?.to_owned(),
        )),
        "error" => Some(ConferenceMessage::Error {
            status: u16::try_from(message["status"].as_u64()?).ok()?,
            detail: message["detail"].as_str().unwrap_or_default().to_owned(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_understood() {
        let participants = json!({"type": "participants", "participants": [
            {"name": "ann", "audio": true, "video": true, "video_layers": 3},
            {"name": "bob", "audio": false, "video": false, "video_layers": 0},
            {"name": "cy", "audio": true, "video": false, "video_layers": 0},
        ]});
        assert_eq!(
            parse(participants),
            Some(ConferenceMessage::Participants(vec![
                "ann".into(),
                "cy".into()
            ]))
        );
        assert_eq!(
            parse(json!({"type": "ended", "reason": "replaced"})),
            Some(ConferenceMessage::Ended("replaced".into()))
        );
        assert_eq!(
            parse(json!({"type": "error", "status": 403, "detail": "no grant"})),
            Some(ConferenceMessage::Error {
                status: 403,
                detail: "no grant".into()
            })
        );
        assert_eq!(parse(json!({"type": "later"})), None);
        assert_eq!(parse(json!({"type": "participants"})), None);
    }
}
