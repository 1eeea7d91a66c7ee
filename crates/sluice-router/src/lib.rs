//! The sans-IO heart of Sluice: rooms, publications, subscriptions and the
//! per-subscription RTP rewriting that lets a viewer follow a changing source.
//!
//! Nothing in this crate touches sockets, threads or the clock: every input
//! carries its [`std::time::Instant`] and every decision is returned as a value.
//! The server crate feeds it packets and applies its verdicts.

pub mod codec;
pub mod forwarder;
pub mod id_map;
pub mod keyframe;
pub mod layer;
pub mod router;
pub mod speech;

pub use codec::Codec;
pub use forwarder::{Forwarder, Rewritten, SourceKey};
pub use id_map::IdMap;
pub use keyframe::KeyframeThrottle;
pub use layer::{LayerChoice, LayerInfo};
pub use router::{
    Follow, Forward, MediaKind, PacketMeta, PublicationId, PublicationInfo, Router, RouterEvent,
    SessionId, Speaker, TrackId,
};
pub use speech::SpeechDetector;
