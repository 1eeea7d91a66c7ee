//! The I/O side of Sluice: shards, each a tokio task with a UDP socket of
//! its own that owns the sessions and the router of the rooms placed on it,
//! and a [`ControlHandle`] through which the HTTP layer creates and ends
//! sessions. One shard per core given to media; a room lives on one shard.
//!
//! The data path of one packet: `recv_from` → find the session by remote
//! address (or by STUN ufrag for a new peer) → `Session::handle_datagram` →
//! drain `Session::poll` → `Router::on_packet` → `Session::write_rtp` on each
//! viewer → after the receive batch, one timeout and drain per viewer that
//! got packets → `sendmmsg`, 64 datagrams (or GSO runs) per call.

pub mod admin;
mod control;
pub mod events;
pub mod inbox;
pub mod metrics;
mod outbox;
mod quota;
mod shard;

pub use control::{
    Caller, ControlError, ControlHandle, Created, EndReason, Limits, Patched, PublisherStatus,
    ServerConfig, SessionEnd, SessionRequest, shard_of_room,
};
pub use metrics::Metrics;
#[cfg(target_os = "linux")]
pub use outbox::set_int_option;
pub use sluice_router::LayerChoice;
pub use sluice_session::{NegotiateError, Role};

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Most shards one server runs: a resource id names its shard in two hex
/// digits.
pub const MAX_SHARDS: usize = 256;

/// Start the media server: one shard on each of the already bound UDP
/// `sockets` (at least one, at most [`MAX_SHARDS`]).
///
/// Returns the handle the control plane talks through and a task that ends
/// when every shard has, which they do when every [`ControlHandle`] clone is
/// dropped or [`ControlHandle::shutdown`] is called.
///
/// Lifecycle events go to `events` when given (for webhooks).
pub fn start(
    config: ServerConfig,
    sockets: Vec<UdpSocket>,
    metrics: Metrics,
    events: Option<mpsc::Sender<events::Event>>,
) -> std::io::Result<(ControlHandle, JoinHandle<()>)> {
    if sockets.is_empty() || sockets.len() > MAX_SHARDS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a server runs 1 to {MAX_SHARDS} shards, not {}",
                sockets.len()
            ),
        ));
    }
    let sink = events::EventSink::new(events);
    let quota = quota::Quota::new(&config.limits);
    let (room_changes, _) = tokio::sync::broadcast::channel(256);
    let (session_ends, _) = tokio::sync::broadcast::channel(256);
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let local: SocketAddr = socket.local_addr()?;
        outbox::set_dont_fragment(&socket)?;
        inbox::stamp_arrivals(&socket)?;
        let session_config = sluice_session::SessionConfig {
            candidates: vec![config.candidate_address(local)?],
            consent_timeout: config.consent_timeout,
            viewer_bwe_initial_bps: config.viewer_bwe_initial_bps,
            direct_egress: config.direct_egress,
            viewer_loss_estimate: config.viewer_loss_estimate,
        };
        if index == 0 {
            sluice_session::warm_up(&session_config)
                .map_err(|e| std::io::Error::other(format!("cannot make a WebRTC session: {e}")))?;
        }
        let (tx, rx) = mpsc::channel(1024);
        let shared = shard::Shared {
            config: config.clone(),
            metrics: metrics.clone(),
            quota: quota.clone(),
            events_out: sink.clone(),
            room_changes: room_changes.clone(),
            session_ends: session_ends.clone(),
        };
        let shard = shard::Shard::new(index as u8, socket, session_config.clone(), shared)?;
        senders.push((tx, session_config));
        // Every log line of a shard names it: session ids are per shard.
        let span = tracing::info_span!("shard", index);
        tasks.push(tokio::spawn(shard.run(rx).instrument(span)));
    }
    let all = tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok((ControlHandle::new(senders, room_changes, session_ends), all))
}
