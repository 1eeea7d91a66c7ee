//! What the admin API sees of rooms, sessions and tracks.

use serde::Serialize;

/// One room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    /// Its name.
    pub name: String,
    /// Its sessions (participants), oldest first.
    pub sessions: Vec<SessionInfo>,
}

/// One session (a participant's peer connection).
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    /// The resource id (as in `/resource/{id}`).
    pub id: String,
    /// `publisher` or `viewer`.
    pub role: &'static str,
    /// The token identity, when authentication is on.
    pub identity: Option<String>,
    /// Whether ICE and DTLS are up.
    pub connected: bool,
    /// A viewer's bandwidth estimate, kbit/s: from transport-wide feedback
    /// with estimation on, or the loss-based estimate once its receiver
    /// reports showed congestion; `None` otherwise.
    pub estimate_kbps: Option<u64>,
    /// Tracks it publishes.
    pub tracks: Vec<TrackInfo>,
}

/// One published track.
#[derive(Debug, Clone, Serialize)]
pub struct TrackInfo {
    /// Track id, for `/api/rooms/{room}/tracks/{id}`.
    pub id: u64,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// Muted by an operator.
    pub muted: bool,
    /// Viewers following it.
    pub subscribers: usize,
    /// Its layers (one without simulcast).
    pub layers: Vec<LayerInfo>,
}

/// One layer of a track.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// The simulcast rid, if any.
    pub rid: Option<String>,
    /// Whether packets arrived in the last 1.5 s.
    pub active: bool,
    /// Payload bitrate over the last second, kbit/s.
    pub bitrate_kbps: u64,
}

/// A participant that publishes in a room, as conference clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantInfo {
    /// The name viewers follow it by (`/whep/{room}?participant=`).
    pub name: String,
    /// It publishes audio.
    pub audio: bool,
    /// It publishes video.
    pub video: bool,
    /// Simulcast layers of its video (1 without simulcast).
    pub video_layers: usize,
}

/// A participant who is speaking, as conference clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpeakerInfo {
    /// The participant's name.
    pub name: String,
    /// The mean level of its voice over the last 1.6 s, dBov (0 is the
    /// loudest; speech into a microphone reads about -20 to -40).
    pub level_dbov: i8,
}
