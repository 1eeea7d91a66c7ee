//! Outgoing datagrams, sent in batches: one `sendmmsg` system call carries
//! up to [`BATCH`] datagrams to any mix of peers (Linux), which is what an
//! SFU fanning one packet out to hundreds of viewers needs. Other systems
//! send them one by one.

use std::net::SocketAddr;

use sluice_session::Transmit;
use tokio::net::UdpSocket;
use tracing::debug;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 64;

/// Datagrams waiting to be sent.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: Vec<Transmit>,
}

impl Outbox {
    /// Queue a datagram; sends the queue once it holds a full batch.
    pub(crate) fn push(&mut self, socket: &UdpSocket, transmit: Transmit) {
        self.queue.push(transmit);
        if self.queue.len() >= BATCH {
            self.flush(socket);
        }
    }

    /// Send everything queued. A datagram the kernel refuses (a full send
    /// buffer, an unreachable address) is dropped, as a lossy network would;
    /// the rest still go.
    pub(crate) fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        while sent < self.queue.len() {
            let batch = &self.queue[sent..self.queue.len().min(sent + BATCH)];
            match send_batch(socket, batch) {
                Ok(n) => sent += n.max(1),
                Err(e) => {
                    debug!("udp send to {} failed: {e}", batch[0].destination);
                    sent += 1;
                }
            }
        }
        self.queue.clear();
    }
}

/// Send the leading datagrams of `batch`; returns how many went.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, batch: &[Transmit]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;

    // SAFETY (all zeroed values below): plain C structs for which all-zero
    // bytes is a valid value.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let n = batch.len().min(BATCH);
    for (i, t) in batch[..n].iter().enumerate() {
        let len = write_sockaddr(t.destination, &mut addrs[i]);
        iovs[i].iov_base = t.contents.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = t.contents.len();
        let hdr = &mut msgs[i].msg_hdr;
        hdr.msg_name = &mut addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
        hdr.msg_namelen = len;
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points into `addrs` and `iovs`, and every iovec
    // into a datagram of `batch`; all of them outlive the call, and `n` is
    // the number of initialised headers.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Write `addr` as a C socket address; returns its length.
#[cfg(target_os = "linux")]
fn write_sockaddr(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in6.
            unsafe { std::ptr::write(out as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Mark the socket's IPv4 datagrams "don't fragment" without path MTU
/// discovery (`IP_PMTUDISC_PROBE`). WebRTC keeps its datagrams below the
/// MTU anyway, and with DF set the kernel leaves the IP identification
/// field at zero instead of drawing it from a shared hashed counter for
/// every datagram, a few per cent of the send path at hundreds of
/// thousands of datagrams per second.
#[cfg(target_os = "linux")]
pub(crate) fn set_dont_fragment(socket: &UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;

    if !socket.local_addr()?.is_ipv4() {
        return Ok(());
    }
    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: the option value is a c_int that outlives the call, and its
    // size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Systems other than Linux keep their default.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_dont_fragment(_: &UdpSocket) -> std::io::Result<()> {
    Ok(())
}

/// Send the first datagram of `batch` (systems without `sendmmsg`).
#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, batch: &[Transmit]) -> std::io::Result<usize> {
    let t = &batch[0];
    socket.try_send_to(&t.contents, t.destination).map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_session::Protocol;

    /// Datagrams to several receivers, v4, more than one batch: each
    /// receiver gets its own, in order, with the right contents.
    #[tokio::test]
    async fn batches_reach_every_receiver_in_order() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut receivers = Vec::new();
        for _ in 0..3 {
            receivers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        let source = sender.local_addr().unwrap();
        let mut outbox = Outbox::default();
        let total = BATCH * 2 + 5;
        for i in 0..total {
            let destination = receivers[i % 3].local_addr().unwrap();
            let contents = (i as u32).to_be_bytes().to_vec().into();
            outbox.push(
                &sender,
                Transmit {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents,
                },
            );
        }
        outbox.flush(&sender);
        let mut buf = [0u8; 16];
        for (r, receiver) in receivers.iter().enumerate() {
            let mut i = r;
            while i < total {
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    receiver.recv(&mut buf),
                )
                .await
                .expect("datagram arrives")
                .unwrap();
                assert_eq!(&buf[..n], &(i as u32).to_be_bytes());
                i += 3;
            }
        }
    }
}
