//! One WebRTC peer connection of the SFU, on top of a str0m [`str0m::Rtc`] in
//! RTP mode, without any I/O.
//!
//! A [`Session`] is created from a WHIP or WHEP offer, fed datagrams and
//! timeouts with their [`std::time::Instant`], and drained with
//! [`Session::poll`] until it returns [`SessionOutput::Timeout`]. Incoming
//! media comes out as [`SessionEvent::Rtp`]; outgoing media goes in through
//! [`Session::write_rtp`].

mod buffers;
mod cache;
pub mod demux;
mod dtls;
mod egress;
pub mod history;
pub mod loss;
pub mod negotiate;
pub mod session;
mod srtp;
pub mod trickle;

pub use buffers::Buffers;
pub use dtls::DtlsSetup;
pub use egress::Resend;
pub use negotiate::{NegotiateError, Role, SessionConfig, warm_up};
pub use session::{CloseReason, IncomingRtp, Session, SessionEvent, SessionOutput};
pub use str0m::format::PayloadParams;
pub use str0m::media::{MediaKind, Mid};
pub use str0m::net::{Protocol, Transmit};
pub use str0m::rtp::Vp8Descriptor;
pub use trickle::SdpFrag;
