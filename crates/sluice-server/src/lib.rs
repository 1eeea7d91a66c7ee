//! The I/O side of Sluice: one UDP socket for every peer, a shard task that
//! owns all sessions and the router, and a [`ControlHandle`] through which
//! the HTTP layer creates and ends sessions.
//!
//! The data path of one packet: `recv_from` → find the session by remote
//! address (or by STUN ufrag for a new peer) → `Session::handle_datagram` →
//! drain `Session::poll` → `Router::on_packet` → `Session::write_rtp` on each
//! viewer → after the receive batch, one timeout and drain per viewer that
//! got packets → `sendmmsg`, 64 datagrams per call.

pub mod admin;
mod control;
pub mod events;
pub mod metrics;
mod outbox;
mod shard;

pub use control::{
    Caller, ControlError, ControlHandle, Created, Limits, Patched, ServerConfig, SessionRequest,
};
pub use metrics::Metrics;
pub use sluice_router::LayerChoice;
pub use sluice_session::{NegotiateError, Role};

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Start the media server on an already bound UDP `socket`.
///
/// Returns the handle the control plane talks through and the shard task,
/// which ends when every [`ControlHandle`] clone is dropped or
/// [`ControlHandle::shutdown`] is called.
///
/// Lifecycle events go to `events` when given (for webhooks).
pub fn start(
    config: ServerConfig,
    socket: UdpSocket,
    metrics: Metrics,
    events: Option<mpsc::Sender<events::Event>>,
) -> std::io::Result<(ControlHandle, JoinHandle<()>)> {
    let local: SocketAddr = socket.local_addr()?;
    outbox::set_dont_fragment(&socket)?;
    let candidate = config.candidate_address(local)?;
    let (tx, rx) = mpsc::channel(1024);
    let sink = events::EventSink::new(events);
    let (room_changes, _) = tokio::sync::broadcast::channel(256);
    let shard = shard::Shard::new(
        config,
        socket,
        (local, candidate),
        metrics,
        sink,
        room_changes.clone(),
    );
    let task = tokio::spawn(shard.run(rx));
    Ok((ControlHandle::new(tx, room_changes), task))
}
