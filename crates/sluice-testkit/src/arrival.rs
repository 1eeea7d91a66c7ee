//! When a datagram reached a peer's own socket, by the kernel's clock
//! (`SO_TIMESTAMPNS`, read with the server's [`sluice_server::inbox`]). A
//! probe measures latency up to this moment rather than up to the moment
//! its task got round to reading the datagram, so the figure leaves out the
//! time the datagram waited for the tester's busy core: the tester's own
//! delay, not the server's.

use std::io;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use sluice_server::inbox;
use tokio::io::Interest;
use tokio::net::UdpSocket;

pub(crate) use inbox::stamp_arrivals;

/// The next datagram on `socket`, read into `buf`: its length, its
/// source, and when it arrived (on the monotonic clock the peer's
/// timestamps use).
pub(crate) async fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Instant>)> {
    let received = socket
        .async_io(Interest::READABLE, || inbox::recv_now(socket, buf))
        .await?;
    let ago = SystemTime::now()
        .duration_since(received.arrived)
        .unwrap_or_default();
    Ok((
        received.len,
        received.source,
        Instant::now().checked_sub(ago),
    ))
}
