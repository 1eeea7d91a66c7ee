//! The typed interface between the control plane and the shards: a room
//! lives on one shard, chosen from its name, and a session's resource id
//! names the shard that holds it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sluice_router::LayerChoice;
use sluice_session::{NegotiateError, PayloadParams, Role, Session, SessionConfig};
use tracing::info;

use std::sync::Arc;

use crate::admin::{ParticipantInfo, RoomInfo, SpeakerInfo};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Settings of the media server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address put into ICE candidates; needed when the socket is bound
    /// to an unspecified address (0.0.0.0).
    pub public_ip: Option<IpAddr>,
    /// A peer silent for this long is dropped (RFC 7675 consent).
    pub consent_timeout: Duration,
    /// At most one keyframe request per publication (all its layers) per
    /// interval.
    pub keyframe_interval: Duration,
    /// Where viewers' bandwidth estimates start (bits per second); `None`
    /// turns estimation off.
    pub viewer_bwe_initial_bps: Option<u64>,
    /// Viewers without estimation get Sluice's direct egress.
    pub direct_egress: bool,
    /// Viewers on the direct egress move to a layer their path carries when
    /// their receiver reports show loss (`sluice_session::loss`).
    pub viewer_loss_estimate: bool,
    /// Capacity limits.
    pub limits: Limits,
}

/// How much one server, room or client may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Rooms with sessions at once.
    pub max_rooms: usize,
    /// Sessions (publishers and viewers) in one room.
    pub max_sessions_per_room: usize,
    /// Sessions created from one client IP address that are live at once.
    pub max_sessions_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_rooms: 1000,
            max_sessions_per_room: 1000,
            max_sessions_per_address: 100,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            public_ip: None,
            consent_timeout: Duration::from_secs(30),
            keyframe_interval: Duration::from_millis(350),
            viewer_bwe_initial_bps: None,
            direct_egress: true,
            viewer_loss_estimate: true,
            limits: Limits::default(),
        }
    }
}

impl ServerConfig {
    /// The host candidate to announce for a socket bound to `local`.
    pub fn candidate_address(&self, local: SocketAddr) -> std::io::Result<SocketAddr> {
        match self.public_ip {
            Some(ip) => Ok(SocketAddr::new(ip, local.port())),
            None if local.ip().is_unspecified() => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the UDP socket is bound to an unspecified address: set a public IP for ICE candidates",
            )),
            None => Ok(local),
        }
    }
}

/// Who asks for a change to a session, when authentication is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's identity (`sub`).
    pub identity: String,
    /// Admin tokens may act on anyone's sessions.
    pub admin: bool,
}

/// What a new session is for.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Publisher (WHIP) or viewer (WHEP).
    pub role: Role,
    /// The room.
    pub room: String,
    /// The client's SDP offer.
    pub offer: String,
    /// The token identity that asks (authentication on).
    pub identity: Option<String>,
    /// The HTTP client's address.
    pub client: IpAddr,
    /// For a publisher, the participant name viewers follow it by (one is
    /// made up when `None`); for a viewer, the participant to follow
    /// (`None`: the room's newest publisher).
    pub participant: Option<String>,
    /// For a viewer, the simulcast layer it asks for (`None`: automatic).
    pub layer: Option<LayerChoice>,
}

/// A session the shard created.
#[derive(Debug, Clone)]
pub struct Created {
    /// The unguessable resource id: 32 hex digits, the shard's index and
    /// then 120 random bits.
    pub resource: String,
    /// The SDP answer.
    pub answer: String,
    /// The resource's entity tag (changes with every ICE restart).
    pub etag: String,
}

/// The outcome of a PATCH on a session resource.
#[derive(Debug, Clone)]
pub struct Patched {
    /// The resource's entity tag after the patch.
    pub etag: String,
    /// The answer fragment, when the patch restarted ICE.
    pub restart_answer: Option<String>,
}

/// Why a control request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The offer was refused.
    Negotiate(NegotiateError),
    /// No session has that resource id.
    NotFound,
    /// The caller may not act on this session (another identity's).
    Forbidden,
    /// The server holds as many rooms as it may.
    TooManyRooms,
    /// The room holds as many sessions as it may.
    RoomFull,
    /// The client's address holds as many sessions as it may.
    TooManySessions,
    /// A PATCH came without `If-Match`.
    PreconditionRequired,
    /// A PATCH's `If-Match` names another ICE session than the current one.
    PreconditionFailed,
    /// Only viewer sessions choose a simulcast layer.
    NotAViewer,
    /// The media server is shutting down or gone.
    Unavailable,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Negotiate(e) => e.fmt(f),
            ControlError::NotFound => f.write_str("no such session"),
            ControlError::Forbidden => f.write_str("the session belongs to another identity"),
            ControlError::TooManyRooms => f.write_str("the server holds as many rooms as it may"),
            ControlError::RoomFull => f.write_str("the room holds as many sessions as it may"),
            ControlError::TooManySessions => {
                f.write_str("your address holds as many sessions as it may: end one first")
            }
            ControlError::PreconditionRequired => f.write_str(
                "a PATCH needs If-Match with the session's ETag (or \"*\" for an ICE restart)",
            ),
            ControlError::PreconditionFailed => {
                f.write_str("If-Match does not match the session's current ETag")
            }
            ControlError::NotAViewer => {
                f.write_str("only viewer (WHEP) sessions choose a simulcast layer")
            }
            ControlError::Unavailable => f.write_str("the media server is not running"),
        }
    }
}

impl std::error::Error for ControlError {}

/// Why the server ended a session its client did not end, so that client
/// can be told (the conference page says so instead of going quiet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// A new session published under the same participant name in the
    /// room (the same person joined again, from another tab or device).
    Replaced,
    /// An admin removed the participant.
    Removed,
    /// An admin closed the room.
    RoomClosed,
}

impl EndReason {
    /// The reason as the conference WebSocket names it.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Replaced => "replaced",
            EndReason::Removed => "removed",
            EndReason::RoomClosed => "room_closed",
        }
    }
}

/// Where a publisher session that a conference client names as its own
/// stands ([`ControlHandle::publisher_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherStatus {
    /// Live in the room, and the caller's.
    Live,
    /// Recently ended by the server, for this reason.
    Ended(EndReason),
    /// Not a publisher of the room the caller may follow (never was, ended
    /// too long ago, another room's, or another identity's).
    Unknown,
}

/// A publisher session the server ended, and why.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    /// The session's resource id.
    pub resource: Arc<str>,
    /// Why.
    pub reason: EndReason,
}

/// A request to the shard, with its reply channel.
#[derive(Debug)]
pub(crate) enum Command {
    /// Would a session of `request` fit the limits, and what codecs must a
    /// viewer decode?
    Prepare {
        request: SessionRequest,
        reply: oneshot::Sender<Result<Vec<PayloadParams>, ControlError>>,
    },
    /// Take a negotiated session in.
    Create {
        request: SessionRequest,
        accepted: Box<(Session, String)>,
        reply: oneshot::Sender<Result<Created, ControlError>>,
    },
    Participants {
        room: String,
        reply: oneshot::Sender<Vec<ParticipantInfo>>,
    },
    WatchSpeakers {
        room: String,
        reply: oneshot::Sender<watch::Receiver<Vec<SpeakerInfo>>>,
    },
    PublisherStatus {
        room: String,
        resource: String,
        caller: Option<Caller>,
        reply: oneshot::Sender<PublisherStatus>,
    },
    Delete {
        resource: String,
        caller: Option<Caller>,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    Patch {
        resource: String,
        caller: Option<Caller>,
        if_match: Option<String>,
        frag: String,
        reply: oneshot::Sender<Result<Patched, ControlError>>,
    },
    ChooseLayer {
        resource: String,
        caller: Option<Caller>,
        choice: LayerChoice,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    Rooms {
        room: Option<String>,
        reply: oneshot::Sender<Vec<RoomInfo>>,
    },
    CloseRoom {
        room: String,
        reply: oneshot::Sender<Result<usize, ControlError>>,
    },
    RemoveSession {
        room: String,
        resource: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    MuteTrack {
        room: String,
        track: u64,
        muted: bool,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    Shutdown,
}

/// Cheap, cloneable handle to the media server.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    /// One command channel per shard, in shard index order.
    shards: Arc<[mpsc::Sender<Command>]>,
    /// What a new session on each shard is built with.
    session_configs: Arc<[SessionConfig]>,
    room_changes: broadcast::Sender<Arc<str>>,
    session_ends: broadcast::Sender<SessionEnd>,
}

/// The shard a room lives on, among `shards`: a stable hash of its name,
/// so every request about the room finds it.
pub fn shard_of_room(room: &str, shards: usize) -> usize {
    // FNV-1a, the same in every process and build, then a final mix so the
    // low bits (the shard) depend on every bit of the name.
    let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mixed = (hash ^ (hash >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    ((mixed ^ (mixed >> 33)) % shards as u64) as usize
}

/// The shard that handed out `resource` (its first two hex digits), if
/// any of `shards` did.
fn shard_of_resource(resource: &str, shards: usize) -> Option<usize> {
    let index = u8::from_str_radix(resource.get(..2)?, 16).ok()?;
    (usize::from(index) < shards).then_some(usize::from(index))
}

impl ControlHandle {
    pub(crate) fn new(
        shards: Vec<(mpsc::Sender<Command>, SessionConfig)>,
        room_changes: broadcast::Sender<Arc<str>>,
        session_ends: broadcast::Sender<SessionEnd>,
    ) -> Self {
        let (shards, session_configs): (Vec<_>, Vec<_>) = shards.into_iter().unzip();
        ControlHandle {
            shards: shards.into(),
            session_configs: session_configs.into(),
            room_changes,
            session_ends,
        }
    }

    /// How many shards forward media (one per core given to media).
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Names of rooms whose publishing participants changed, as they
    /// change (a lagging receiver should re-read what it follows).
    pub fn room_changes(&self) -> broadcast::Receiver<Arc<str>> {
        self.room_changes.subscribe()
    }

    /// Publisher sessions the server ends for a reason their clients did
    /// not give (see [`EndReason`]), as it ends them. A receiver that lags
    /// or subscribes late asks [`ControlHandle::publisher_status`].
    pub fn session_ends(&self) -> broadcast::Receiver<SessionEnd> {
        self.session_ends.subscribe()
    }

    /// Whether the publisher session `resource` of `room` is live, or why
    /// the server ended it, if `caller` may know.
    pub async fn publisher_status(
        &self,
        room: &str,
        resource: &str,
        caller: Option<Caller>,
    ) -> Result<PublisherStatus, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_room(
            room,
            Command::PublisherStatus {
                room: room.to_owned(),
                resource: resource.to_owned(),
                caller,
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)
    }

    /// The participants publishing in `room`, oldest first.
    pub async fn participants(&self, room: &str) -> Result<Vec<ParticipantInfo>, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_room(
            room,
            Command::Participants {
                room: room.to_owned(),
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)
    }

    /// Who speaks in `room`, loudest first, kept up to date: it changes
    /// when someone starts or stops speaking or another is loudest, at most
    /// every 200 ms. The channel lives while someone watches.
    pub async fn watch_speakers(
        &self,
        room: &str,
    ) -> Result<watch::Receiver<Vec<SpeakerInfo>>, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_room(
            room,
            Command::WatchSpeakers {
                room: room.to_owned(),
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)
    }

    /// Create a publisher or viewer session from an SDP offer.
    ///
    /// The offer is negotiated here, on a blocking thread, not on the
    /// room's shard: building a session (str0m and its DTLS context) takes
    /// about a millisecond, which would hold up every packet the shard
    /// forwards. The shard checks the limits before (so a client over
    /// them costs no negotiation) and again when it takes the session in.
    pub async fn create(&self, request: SessionRequest) -> Result<Created, ControlError> {
        let (room, role) = (request.room.clone(), request.role);
        let result = self.negotiate_and_create(request).await;
        if let Err(e) = &result {
            info!(room = %room, ?role, "offer refused: {e}");
        }
        result
    }

    async fn negotiate_and_create(
        &self,
        mut request: SessionRequest,
    ) -> Result<Created, ControlError> {
        let shard = shard_of_room(&request.room, self.shards.len());
        let offer = std::mem::take(&mut request.offer);
        let (reply, rx) = oneshot::channel();
        let prepare = Command::Prepare {
            request: request.clone(),
            reply,
        };
        self.send_to_shard(shard, prepare).await?;
        let codecs = rx.await.map_err(|_| ControlError::Unavailable)??;
        let config = self.session_configs[shard].clone();
        let role = request.role;
        let accepted = tokio::task::spawn_blocking(move || {
            Session::accept(role, &offer, &config, &codecs, Instant::now())
        })
        .await
        .map_err(|_| ControlError::Unavailable)?
        .map_err(ControlError::Negotiate)?;
        let (reply, rx) = oneshot::channel();
        let create = Command::Create {
            request,
            accepted: Box::new(accepted),
            reply,
        };
        self.send_to_shard(shard, create).await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// End the session with this resource id on behalf of `caller`.
    pub async fn delete(&self, resource: &str, caller: Option<Caller>) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_resource(
            resource,
            Command::Delete {
                resource: resource.to_owned(),
                caller,
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// Apply a trickle ICE / ICE restart fragment to a session, checked
    /// against `if_match` (the request's `If-Match` header).
    pub async fn patch(
        &self,
        resource: &str,
        caller: Option<Caller>,
        if_match: Option<&str>,
        frag: &str,
    ) -> Result<Patched, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_resource(
            resource,
            Command::Patch {
                resource: resource.to_owned(),
                caller,
                if_match: if_match.map(str::to_owned),
                frag: frag.to_owned(),
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// Set which simulcast layer a viewer session receives, on behalf of
    /// `caller`; it moves at that layer's next keyframe.
    pub async fn choose_layer(
        &self,
        resource: &str,
        caller: Option<Caller>,
        choice: LayerChoice,
    ) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_resource(
            resource,
            Command::ChooseLayer {
                resource: resource.to_owned(),
                caller,
                choice,
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// Every room (by name), or just `room`.
    pub async fn rooms(&self, room: Option<&str>) -> Result<Vec<RoomInfo>, ControlError> {
        let shards: Vec<usize> = match room {
            Some(room) => vec![shard_of_room(room, self.shards.len())],
            None => (0..self.shards.len()).collect(),
        };
        let mut rooms = Vec::new();
        for shard in shards {
            let (reply, rx) = oneshot::channel();
            let command = Command::Rooms {
                room: room.map(str::to_owned),
                reply,
            };
            self.shards[shard]
                .send(command)
                .await
                .map_err(|_| ControlError::Unavailable)?;
            rooms.extend(rx.await.map_err(|_| ControlError::Unavailable)?);
        }
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rooms)
    }

    /// End every session of `room`; returns how many there were.
    pub async fn close_room(&self, room: &str) -> Result<usize, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_room(
            room,
            Command::CloseRoom {
                room: room.to_owned(),
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// End one session of `room` (remove a participant).
    pub async fn remove_session(&self, room: &str, resource: &str) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_room(
            room,
            Command::RemoveSession {
                room: room.to_owned(),
                resource: resource.to_owned(),
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// Stop or resume forwarding one track of `room`.
    pub async fn mute_track(
        &self,
        room: &str,
        track: u64,
        muted: bool,
    ) -> Result<(), ControlError> {
        let (reply, rx) = oneshot::channel();
        self.send_to_room(
            room,
            Command::MuteTrack {
                room: room.to_owned(),
                track,
                muted,
                reply,
            },
        )
        .await?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }

    /// Close every session and stop the shards.
    pub async fn shutdown(&self) {
        for shard in self.shards.iter() {
            let _ = shard.send(Command::Shutdown).await;
        }
    }

    /// Send to the shard `room` lives on.
    async fn send_to_room(&self, room: &str, command: Command) -> Result<(), ControlError> {
        self.send_to_shard(shard_of_room(room, self.shards.len()), command)
            .await
    }

    async fn send_to_shard(&self, shard: usize, command: Command) -> Result<(), ControlError> {
        self.shards[shard]
            .send(command)
            .await
            .map_err(|_| ControlError::Unavailable)
    }

    /// Send to the shard that holds `resource`; no shard does when its id
    /// names none.
    async fn send_to_resource(&self, resource: &str, command: Command) -> Result<(), ControlError> {
        let index = shard_of_resource(resource, self.shards.len()).ok_or(ControlError::NotFound)?;
        self.send_to_shard(index, command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_spread_over_shards_and_resources_name_theirs() {
        let placed: std::collections::HashSet<usize> = (0..32)
            .map(|i| shard_of_room(&format!("room-{i}"), 4))
            .collect();
        assert_eq!(placed.len(), 4, "32 rooms reach all 4 shards");
        assert_eq!(shard_of_room("a", 3), shard_of_room("a", 3));
        assert_eq!(shard_of_room("anything", 1), 0);
        assert_eq!(shard_of_resource("01ab", 2), Some(1));
        assert_eq!(shard_of_resource("02ab", 2), None, "no third shard");
        assert_eq!(shard_of_resource("zz", 2), None);
        assert_eq!(shard_of_resource("", 2), None);
        assert_eq!(shard_of_resource("€", 2), None, "not a char boundary");
    }
}
