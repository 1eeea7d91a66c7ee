//! When a datagram reached a peer's own socket, by the kernel's clock
//! (`SO_TIMESTAMPNS`, Linux). A probe measures latency up to this moment
//! rather than up to the moment its task got round to reading the
//! datagram, so the figure leaves out the time the datagram waited for the
//! tester's busy core: the tester's own delay, not the server's.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Instant, SystemTime};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::endpoint::set_int;
use crate::hub::socket_addr;

/// Ask the kernel to stamp each datagram `socket` receives.
pub(crate) fn stamp_arrivals(socket: &UdpSocket) -> io::Result<()> {
    set_int(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// The next datagram on `socket`, read into `buf`: its length, its
/// source, and when it arrived (`None` if the kernel did not say).
pub(crate) async fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Instant>)> {
    socket
        .async_io(Interest::READABLE, || recv_now(socket, buf))
        .await
}

/// [`recv`] without waiting: `WouldBlock` when nothing is queued.
fn recv_now(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Instant>)> {
    /// Room for one `timespec` control message, aligned for `cmsghdr`.
    #[repr(C, align(8))]
    struct Control([u8; 64]);

    // SAFETY (zeroed): plain C structs for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    let mut control = Control([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    hdr.msg_name = &mut addr as *mut libc::sockaddr_storage as *mut libc::c_void;
    hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    hdr.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in `hdr` points at a live buffer of the length
    // given with it.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut hdr, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let source = socket_addr(&addr)
        .ok_or_else(|| io::Error::other("datagram from an address of unknown family"))?;
    let mut arrived = None;
    // SAFETY: the kernel filled `control` up to `msg_controllen` with
    // well-formed control messages, which the CMSG macros walk.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                let at = SystemTime::UNIX_EPOCH
                    + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                let ago = SystemTime::now().duration_since(at).unwrap_or_default();
                arrived = Instant::now().checked_sub(ago);
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
    Ok((n as usize, source, arrived))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A datagram read a while after it arrived says when it arrived. The
    /// kernel switches stamping on through deferred work, so one of the
    /// first few datagrams must carry its arrival.
    #[tokio::test]
    async fn a_datagram_says_when_it_arrived() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        stamp_arrivals(&receiver).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut longest = Duration::ZERO;
        for _ in 0..5 {
            sender
                .send_to(b"probe", receiver.local_addr().unwrap())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut buf = [0u8; 64];
            let (n, source, arrived) = recv(&receiver, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"probe");
            assert_eq!(source, sender.local_addr().unwrap());
            if let Some(arrived) = arrived {
                longest = longest.max(arrived.elapsed());
            }
        }
        assert!(longest >= Duration::from_millis(40), "waited {longest:?}");
    }
}
