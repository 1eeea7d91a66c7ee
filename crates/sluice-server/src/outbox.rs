//! Outgoing datagrams, sent in batches: one `sendmmsg` system call carries
//! up to [`BATCH`] datagrams to any mix of peers (Linux), which is what an
//! SFU fanning one packet out to hundreds of viewers needs. Consecutive
//! datagrams to one peer that share a size go as one UDP GSO send
//! (`UDP_SEGMENT`): the kernel walks its send path once for the run and
//! cuts it into datagrams at the end. Runs appear when the shard is busy
//! and several packets reach a viewer in one round, so the busier the
//! shard, the less each datagram costs. Other systems send datagrams one
//! by one.

use std::net::SocketAddr;

use sluice_session::{Buffers, Transmit};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

/// Datagrams per system call.
pub(crate) const BATCH: usize = 64;

/// Most bytes one GSO send may carry: an IPv4 UDP datagram's limit, with
/// room to spare.
#[cfg(target_os = "linux")]
const GSO_MAX_BYTES: usize = 65_000;

/// Largest datagram sent as part of a GSO run: every segment must fit the
/// path MTU, which WebRTC's datagrams (about 1,200 bytes) always do.
#[cfg(target_os = "linux")]
const GSO_MAX_SEGMENT: usize = 1_400;

/// Most datagrams in one GSO send (the kernel's `UDP_MAX_SEGMENTS` on
/// older kernels; newer ones take more).
#[cfg(target_os = "linux")]
const GSO_MAX_SEGMENTS: usize = 64;

/// Datagrams waiting to be sent.
pub(crate) struct Outbox {
    queue: Vec<Transmit>,
    /// Buffers of sent datagrams, for the egress to seal the next ones in.
    pub(crate) buffers: Buffers,
    /// Whether runs to one peer go as one GSO send; cleared, once and for
    /// good, when the kernel refuses a run but takes its first datagram
    /// alone.
    gso: bool,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            queue: Vec::new(),
            buffers: Buffers::default(),
            gso: cfg!(target_os = "linux"),
        }
    }
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
    /// the rest still go. The sent datagrams' buffers are kept for reuse.
    pub(crate) fn flush(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        while sent < self.queue.len() {
            let batch = &self.queue[sent..self.queue.len().min(sent + BATCH)];
            match send_batch(socket, batch, self.gso) {
                Ok(n) => sent += n.max(1),
                Err(e) if self.gso && gso_run(batch) > 1 => {
                    // The run failed: GSO's fault if its first datagram goes
                    // on its own, the destination's if not.
                    match send_batch(socket, &batch[..1], false) {
                        Ok(_) => {
                            warn!("UDP GSO refused ({e}); sending datagrams one by one");
                            self.gso = false;
                        }
                        Err(e) => debug!("udp send to {} failed: {e}", batch[0].destination),
                    }
                    sent += 1;
                }
                Err(e) => {
                    debug!("udp send to {} failed: {e}", batch[0].destination);
                    sent += 1;
                }
            }
        }
        for sent in self.queue.drain(..) {
            self.buffers.give(sent.contents.into());
        }
    }
}

/// How many leading datagrams of `batch` can go as one GSO send: all to
/// one peer, all of the first one's size but the last, which may be
/// shorter.
#[cfg(target_os = "linux")]
fn gso_run(batch: &[Transmit]) -> usize {
    let first = &batch[0];
    let size = first.contents.len();
    if size == 0 || size > GSO_MAX_SEGMENT {
        return 1;
    }
    let mut bytes = size;
    let mut run = 1;
    for t in batch[1..].iter().take(GSO_MAX_SEGMENTS - 1) {
        let len = t.contents.len();
        let fits = len > 0 && len <= size && bytes + len <= GSO_MAX_BYTES;
        if t.destination != first.destination || !fits {
            break;
        }
        bytes += len;
        run += 1;
        if len < size {
            break; // a shorter datagram ends the run
        }
    }
    run
}

/// Send the leading datagrams of `batch`, runs to one peer as one GSO send
/// when `gso`; returns how many datagrams went.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, batch: &[Transmit], gso: bool) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;

    /// Room for one control message carrying a `u16` (the segment size),
    /// aligned as `cmsghdr` needs.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct SegmentControl([u8; 24]);

    // SAFETY (all zeroed values below): plain C structs for which all-zero
    // bytes is a valid value.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut controls = [SegmentControl([0; 24]); BATCH];
    // The datagrams sent once message `i` has gone.
    let mut ends = [0usize; BATCH];
    let n = batch.len().min(BATCH);
    for (i, t) in batch[..n].iter().enumerate() {
        iovs[i].iov_base = t.contents.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = t.contents.len();
    }
    let mut count = 0;
    let mut start = 0;
    while start < n {
        let run = if gso { gso_run(&batch[start..n]) } else { 1 };
        let len = write_sockaddr(batch[start].destination, &mut addrs[count]);
        let hdr = &mut msgs[count].msg_hdr;
        hdr.msg_name = &mut addrs[count] as *mut libc::sockaddr_storage as *mut libc::c_void;
        hdr.msg_namelen = len;
        // SAFETY: `start < n <= BATCH`, inside `iovs`; the run's iovecs
        // follow it there.
        hdr.msg_iov = unsafe { iovs.as_mut_ptr().add(start) };
        hdr.msg_iovlen = run as _;
        if run > 1 {
            let segment = batch[start].contents.len() as u16;
            // SAFETY: the control buffer is aligned for `cmsghdr` and has
            // room for one header and a u16 (CMSG_SPACE(2) is 24 bytes on
            // 64-bit Linux, 16 on 32-bit); `msg_control` points at it for
            // the CMSG macros.
            unsafe {
                hdr.msg_control = controls[count].0.as_mut_ptr() as *mut libc::c_void;
                hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
            }
        }
        start += run;
        ends[count] = start;
        count += 1;
    }
    // SAFETY: every header points into `addrs`, `iovs` and `controls`, and
    // every iovec into a datagram of `batch`; all of them outlive the call,
    // and `count` is the number of initialised headers.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    match sent {
        ..0 => Err(std::io::Error::last_os_error()),
        0 => Ok(0),
        m => Ok(ends[m as usize - 1]),
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
    if !socket.local_addr()?.is_ipv4() {
        return Ok(());
    }
    set_int_option(
        socket,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
}

/// Set the integer socket option `level`/`name` of `socket` to `value`
/// (the load tester's sockets use it too).
#[cfg(target_os = "linux")]
pub fn set_int_option(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the option value is a c_int that outlives the call, and its
    // size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
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

/// Systems without `sendmmsg` send datagrams one by one.
#[cfg(not(target_os = "linux"))]
fn gso_run(_: &[Transmit]) -> usize {
    1
}

/// Send the first datagram of `batch` (systems without `sendmmsg`).
#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, batch: &[Transmit], _gso: bool) -> std::io::Result<usize> {
    let t = &batch[0];
    socket.try_send_to(&t.contents, t.destination).map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_session::Protocol;

    /// The next datagram `receiver` gets (within 2 s); returns its length.
    async fn recv(receiver: &UdpSocket, buf: &mut [u8]) -> usize {
        tokio::time::timeout(std::time::Duration::from_secs(2), receiver.recv(buf))
            .await
            .expect("datagram arrives")
            .unwrap()
    }

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
                let n = recv(receiver, &mut buf).await;
                assert_eq!(&buf[..n], &(i as u32).to_be_bytes());
                i += 3;
            }
        }
    }

    /// Runs of equal-sized datagrams to one receiver (sent with GSO where
    /// the kernel can) still arrive as the separate datagrams they were,
    /// in order, whether a shorter or a longer one ends the run or another
    /// receiver's datagram interrupts it.
    #[tokio::test]
    async fn runs_to_one_receiver_arrive_as_separate_datagrams() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let source = sender.local_addr().unwrap();
        let plan: Vec<(&UdpSocket, usize)> = [(&a, 300); 5]
            .into_iter()
            .chain([(&a, 120), (&b, 300), (&b, 300)])
            .chain([(&a, 300); 3])
            .chain([(&a, 500), (&a, 500), (&b, 40)])
            .chain([(&a, 1_200); 60])
            .collect();
        let mut outbox = Outbox::default();
        for (i, (to, len)) in plan.iter().enumerate() {
            let mut contents = vec![i as u8; *len];
            contents[0] = (i >> 8) as u8;
            outbox.push(
                &sender,
                Transmit {
                    proto: Protocol::Udp,
                    source,
                    destination: to.local_addr().unwrap(),
                    contents: contents.into(),
                },
            );
        }
        outbox.flush(&sender);
        let mut buf = [0u8; 2048];
        for receiver in [&a, &b] {
            let own = plan
                .iter()
                .enumerate()
                .filter(|(_, (to, _))| to.local_addr().unwrap() == receiver.local_addr().unwrap());
            for (i, (_, len)) in own {
                let n = recv(receiver, &mut buf).await;
                assert_eq!(n, *len, "datagram {i} keeps its size");
                assert_eq!(buf[0], (i >> 8) as u8);
                assert!(buf[1..n].iter().all(|&x| x == i as u8), "datagram {i}");
            }
        }
        #[cfg(target_os = "linux")]
        assert!(outbox.gso, "the kernel took the GSO sends");
    }

    /// Which leading datagrams make one GSO send.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_run_is_one_peer_one_size_and_at_most_one_shorter_tail() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let batch = |plan: &[(SocketAddr, usize)]| -> Vec<Transmit> {
            plan.iter()
                .map(|&(destination, len)| Transmit {
                    proto: Protocol::Udp,
                    source: a,
                    destination,
                    contents: vec![0; len].into(),
                })
                .collect()
        };
        let run = |plan: &[(SocketAddr, usize)]| gso_run(&batch(plan));
        assert_eq!(run(&[(a, 300), (a, 300), (a, 120), (a, 120)]), 3);
        assert_eq!(run(&[(a, 300), (a, 300), (b, 300)]), 2);
        assert_eq!(run(&[(a, 300), (a, 500)]), 1);
        assert_eq!(run(&[(a, 1_500), (a, 1_500)]), 1);
        assert_eq!(run(&[(a, 1_200); 60]), GSO_MAX_BYTES / 1_200);
        assert_eq!(run(&[(a, 100); 80]), GSO_MAX_SEGMENTS);
        assert_eq!(run(&[(a, 100), (a, 0)]), 1, "an empty datagram goes alone");
        assert_eq!(run(&[(a, 0), (a, 0)]), 1);
    }
}
