//! Incoming datagrams with the time the kernel received them (Linux:
//! `SO_TIMESTAMPNS`), so the server's added latency counts the time a
//! datagram waited in the socket's queue while the shard was busy, not
//! only the time from reading it to sending what it brought. The load
//! tester's probes read with it too, for the same reason on their side.

use std::io;
use std::net::SocketAddr;
use std::time::SystemTime;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// One datagram read from the socket.
pub struct Received {
    /// Bytes of the datagram at the start of the buffer.
    pub len: usize,
    /// Where it came from.
    pub source: SocketAddr,
    /// When the kernel received it; when it was read where the kernel does
    /// not say.
    pub arrived: SystemTime,
}

/// Ask the kernel to stamp each datagram `socket` receives.
#[cfg(target_os = "linux")]
pub fn stamp_arrivals(socket: &UdpSocket) -> io::Result<()> {
    crate::outbox::set_int_option(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Systems other than Linux are not asked.
#[cfg(not(target_os = "linux"))]
pub fn stamp_arrivals(_: &UdpSocket) -> io::Result<()> {
    Ok(())
}

/// Read the next queued datagram into `buf` without waiting
/// (`WouldBlock` when there is none; tokio then waits for readiness
/// again).
#[cfg(target_os = "linux")]
pub(crate) fn try_recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    socket.try_io(Interest::READABLE, || recv_now(socket, buf))
}

/// One `recvmsg` call on `socket` (made non-blocking): the next queued
/// datagram, read into `buf`, with its arrival time; `WouldBlock` when
/// none is queued. The caller handles readiness (tokio's `try_io` or
/// `async_io`).
#[cfg(target_os = "linux")]
pub fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    use std::os::fd::AsRawFd;

    /// Room for one `timespec` control message, aligned for `cmsghdr`.
    #[repr(C, align(8))]
    struct Control([u8; 64]);

    // SAFETY (zeroed): plain C structs for which all-zero bytes are valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = Control([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
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
    let source = read_sockaddr(&addr)
        .ok_or_else(|| io::Error::other("datagram from an address of unknown family"))?;
    // SAFETY: the kernel filled `control` up to `msg_controllen` with
    // well-formed control messages, which the CMSG macros walk.
    let stamped = unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        let mut stamped = None;
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                stamped = Some(
                    SystemTime::UNIX_EPOCH
                        + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
        stamped
    };
    Ok(Received {
        len: n as usize,
        source,
        arrived: stamped.unwrap_or_else(SystemTime::now),
    })
}

/// Read the next queued datagram into `buf` without waiting (systems
/// without `SO_TIMESTAMPNS`: stamped when read).
#[cfg(not(target_os = "linux"))]
pub(crate) fn try_recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let (len, source) = socket.try_recv_from(buf)?;
    Ok(Received {
        len,
        source,
        arrived: SystemTime::now(),
    })
}

/// The address in `addr`, if it is IPv4 or IPv6.
#[cfg(target_os = "linux")]
fn read_sockaddr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    match addr.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which
            // it is large and aligned enough for.
            let sin = unsafe { &*(addr as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(addr as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A datagram read a while after it arrived carries its arrival time,
    /// not the time it was read, and its source and bytes. The kernel
    /// turns stamping on a moment after the first socket asks (deferred
    /// work), so a datagram or two may come stamped when read; one of the
    /// first few must carry its arrival.
    #[tokio::test]
    async fn a_datagram_carries_the_time_it_arrived() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        stamp_arrivals(&receiver).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut longest = Duration::ZERO;
        for _ in 0..5 {
            let before = SystemTime::now();
            sender
                .send_to(b"hello", receiver.local_addr().unwrap())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut buf = [0u8; 64];
            receiver.readable().await.unwrap();
            let got = try_recv(&receiver, &mut buf).unwrap();
            let read_at = SystemTime::now();
            assert_eq!(&buf[..got.len], b"hello");
            assert_eq!(got.source, sender.local_addr().unwrap());
            assert!(got.arrived >= before - Duration::from_millis(1));
            longest = longest.max(read_at.duration_since(got.arrived).unwrap());
            assert_eq!(
                try_recv(&receiver, &mut buf).err().map(|e| e.kind()),
                Some(io::ErrorKind::WouldBlock)
            );
        }
        if cfg!(target_os = "linux") {
            assert!(longest >= Duration::from_millis(40), "waited {longest:?}");
        }
    }
}
