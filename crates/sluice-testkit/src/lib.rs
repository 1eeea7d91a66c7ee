//! Real WebRTC peers for tests and the load tester: a str0m client that
//! publishes synthetic media over WHIP or watches over WHEP, through real
//! UDP sockets on loopback, recording what it sent and received.

#[cfg(target_os = "linux")]
mod arrival;
pub mod clip;
pub mod conference;
pub mod counting;
#[cfg(target_os = "linux")]
pub mod endpoint;
#[cfg(target_os = "linux")]
pub mod hub;
pub mod media;
pub mod pacer;
pub mod peer;
pub mod relay;

pub use conference::{ConferenceMessage, ConferenceSocket};
pub use media::{SyntheticMedia, VP8_DESCRIPTOR_LEN, VideoCodec};
pub use peer::{Kind, Packet, Peer, PeerError, PeerOptions};
pub use relay::{Loss, LossyRelay};
