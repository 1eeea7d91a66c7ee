//! One receive thread for every count-only subscriber (Linux).
//!
//! A load test's cost is in receiving: a subscriber's own task wakes, makes
//! a system call and re-arms its timers for every datagram, which made the
//! tester spend more than half the CPU the server spent forwarding. The hub
//! instead reads for all count-only subscribers of the process, whether
//! each has a socket of its own or all share one (see [`crate::endpoint`]):
//! every round it asks `epoll` which sockets have datagrams, reads them
//! with `recvmmsg`, finds each datagram's subscriber by the address it was
//! sent to, counts RTP packets from their clear headers (see
//! [`crate::counting`]) and hands everything else (STUN, DTLS, RTCP) to the
//! subscriber's task, whose str0m stack answers it. The sockets ask for
//! UDP GRO: a run of datagrams the server sent with one GSO send (see the
//! server's outbox) stays one buffer all the way into the hub, which cuts
//! it into its datagrams, instead of the kernel queueing each one and the
//! hub reading each one (the per-datagram receive path was the hub's
//! largest cost). Between rounds it sleeps [`ROUND`], so datagrams gather
//! in the socket buffers instead of waking a thread each; the cost is that
//! arrival times of counted packets are known to within a round.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::counting::{SeqExtender, rtp_header};
use crate::endpoint::Endpoint;
use crate::peer::PeerState;

/// The pause between two receive rounds.
pub const ROUND: Duration = Duration::from_millis(1);
/// Datagrams read per `recvmmsg` call.
const MSGS: usize = 16;
/// `recvmmsg` calls per socket per round: a shared socket holds the
/// datagrams of every subscriber, and is drained in one round up to
/// `MSGS * MAX_READS` reads.
const MAX_READS: usize = 64;
/// Room for the largest read: a run of datagrams coalesced by GRO.
const ROOM: usize = 65_536;
/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 256;

/// A datagram the hub does not count: it goes to the subscriber's task.
pub type Datagram = (Vec<u8>, SocketAddr);

/// What the hub needs to count one subscriber's media.
pub struct Subscription {
    /// The streams to count: `(ssrc, is_video)`.
    pub streams: Vec<(u32, bool)>,
    /// Where the counts go.
    pub state: Arc<Mutex<PeerState>>,
    /// Where datagrams other than RTP go.
    pub rest: mpsc::UnboundedSender<Datagram>,
}

/// Keeps a subscriber registered with the hub; dropping it takes it out.
pub struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = hub().send(Command::Remove(self.id));
    }
}

/// Have the hub count what arrives at `endpoint` (started on first use).
pub fn register(endpoint: &Endpoint, subscription: Subscription) -> std::io::Result<Registration> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let SocketAddr::V4(local) = endpoint.local() else {
        return Err(std::io::Error::other("endpoints speak IPv4 only"));
    };
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hub()
        .send(Command::Add {
            id,
            socket: endpoint.socket().clone(),
            local,
            sub: subscription,
        })
        .map_err(|_| std::io::Error::other("the receive hub stopped"))?;
    Ok(Registration { id })
}

enum Command {
    Add {
        id: u64,
        socket: Arc<UdpSocket>,
        local: SocketAddrV4,
        sub: Subscription,
    },
    Remove(u64),
}

fn hub() -> &'static std_mpsc::Sender<Command> {
    static HUB: OnceLock<std_mpsc::Sender<Command>> = OnceLock::new();
    HUB.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel();
        std::thread::Builder::new()
            .name("sluice-testkit-hub".into())
            .spawn(move || {
                if let Err(e) = Hub::new().and_then(|mut hub| hub.run(rx)) {
                    eprintln!("receive hub stopped: {e}");
                }
            })
            .expect("spawn the receive hub thread");
        tx
    })
}

/// A registered subscriber.
struct Entry {
    sub: Subscription,
    /// Where the server sends its datagrams.
    local: SocketAddrV4,
    /// The socket they arrive on.
    fd: RawFd,
    /// Sequence number extension per counted stream, in `sub.streams` order.
    seqs: Vec<SeqExtender>,
}

/// A socket the hub reads: one subscriber's own, or the shared one.
struct Watched {
    socket: Arc<UdpSocket>,
    /// Its address: a datagram's destination is this, unless
    /// `IP_PKTINFO` names another.
    bound: SocketAddrV4,
    /// Subscribers reached through it.
    users: usize,
}

struct Hub {
    epoll: OwnedFd,
    entries: HashMap<u64, Entry>,
    /// Subscribers by the address their datagrams are sent to.
    by_local: HashMap<SocketAddrV4, u64>,
    /// Sockets registered with `epoll`, by descriptor.
    sockets: HashMap<RawFd, Watched>,
    /// [`MSGS`] buffers of [`ROOM`] bytes each.
    bufs: Box<[u8]>,
}

impl Hub {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain system call; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Hub {
            // SAFETY: `fd` is a new descriptor nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            entries: HashMap::new(),
            by_local: HashMap::new(),
            sockets: HashMap::new(),
            bufs: vec![0; MSGS * ROOM].into_boxed_slice(),
        })
    }

    fn run(&mut self, commands: std_mpsc::Receiver<Command>) -> std::io::Result<()> {
        // SAFETY: epoll_event is a plain C struct.
        let mut events: [libc::epoll_event; EVENTS] = unsafe { std::mem::zeroed() };
        loop {
            let command = if self.entries.is_empty() {
                // Idle: block until the next subscriber.
                match commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return Ok(()),
                }
            } else {
                commands.try_recv().ok()
            };
            if let Some(command) = command {
                self.apply(command)?;
                while let Ok(command) = commands.try_recv() {
                    self.apply(command)?;
                }
            }
            // SAFETY: `events` has room for EVENTS entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as libc::c_int,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in &events[..n as usize] {
                self.read(event.u64 as RawFd);
            }
            if (n as usize) < EVENTS {
                std::thread::sleep(ROUND);
            }
        }
    }

    fn apply(&mut self, command: Command) -> std::io::Result<()> {
        match command {
            Command::Add {
                id,
                socket,
                local,
                sub,
            } => {
                let fd = socket.as_raw_fd();
                if let Some(watched) = self.sockets.get_mut(&fd) {
                    watched.users += 1;
                } else {
                    let SocketAddr::V4(bound) = socket.local_addr()? else {
                        return Err(std::io::Error::other("endpoints speak IPv4 only"));
                    };
                    let mut event = libc::epoll_event {
                        events: libc::EPOLLIN as u32,
                        u64: fd as u64,
                    };
                    // SAFETY: the socket's descriptor is open; `event` is valid.
                    let rc = unsafe {
                        libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    self.sockets.insert(
                        fd,
                        Watched {
                            socket,
                            bound,
                            users: 1,
                        },
                    );
                }
                let seqs = vec![SeqExtender::default(); sub.streams.len()];
                self.by_local.insert(local, id);
                self.entries.insert(
                    id,
                    Entry {
                        sub,
                        local,
                        fd,
                        seqs,
                    },
                );
            }
            Command::Remove(id) => self.remove(id),
        }
        Ok(())
    }

    fn remove(&mut self, id: u64) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        if self.by_local.get(&entry.local) == Some(&id) {
            self.by_local.remove(&entry.local);
        }
        let Some(watched) = self.sockets.get_mut(&entry.fd) else {
            return;
        };
        watched.users -= 1;
        if watched.users == 0 {
            // SAFETY: the descriptor is still open (`watched` holds the socket).
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    entry.fd,
                    std::ptr::null_mut(),
                );
            }
            self.sockets.remove(&entry.fd);
        }
    }

    /// Read what one socket holds, up to [`MAX_READS`] `recvmmsg` calls;
    /// the rest waits for the next round, as `epoll` still reports the
    /// socket.
    fn read(&mut self, fd: RawFd) {
        let Some(watched) = self.sockets.get(&fd) else {
            return;
        };
        let (socket, bound) = (watched.socket.clone(), watched.bound);
        for _ in 0..MAX_READS {
            let mut received = [Received::default(); MSGS];
            let n = match recv_batch(&socket, &mut self.bufs, &mut received) {
                Ok(n) => n,
                Err(_) => return, // would block, or a socket error: next round
            };
            let now = Instant::now();
            for (i, r) in received[..n].iter().enumerate() {
                let to = SocketAddrV4::new(r.destination.unwrap_or(*bound.ip()), bound.port());
                if let Some(&id) = self.by_local.get(&to) {
                    let buf = &self.bufs[i * ROOM..][..r.len.min(ROOM)];
                    if !count(self.entries.get_mut(&id), r, buf, now) {
                        self.remove(id);
                    }
                }
            }
            if n < MSGS {
                return;
            }
        }
    }
}

/// Count the media of one read (a datagram or a GRO run) for `entry`, and
/// hand everything else to its task. False when the task is gone.
fn count(entry: Option<&mut Entry>, r: &Received, read: &[u8], now: Instant) -> bool {
    let Some(entry) = entry else {
        return true;
    };
    let mut alive = true;
    let mut state = entry.sub.state.lock();
    for datagram in read.chunks(r.segment.unwrap_or(r.len).max(1)) {
        match rtp_header(datagram) {
            Some((ssrc, seq, bytes)) => {
                // RTX and anything else unknown is swallowed, not counted.
                let Some(i) = entry.sub.streams.iter().position(|s| s.0 == ssrc) else {
                    continue;
                };
                let seq = entry.seqs[i].extend(seq);
                state.rx[usize::from(entry.sub.streams[i].1)].record(seq, bytes);
                state.first_packet_at.get_or_insert(now);
            }
            None => {
                let Some(source) = r.source else {
                    continue;
                };
                alive &= entry.sub.rest.send((datagram.to_vec(), source)).is_ok();
            }
        }
    }
    alive
}

/// What one read of [`recv_batch`] got.
#[derive(Clone, Copy, Default)]
struct Received {
    /// Bytes read: one datagram, or a run of them coalesced by GRO.
    len: usize,
    /// Who sent it.
    source: Option<SocketAddr>,
    /// With GRO, the size of each datagram of the run (the last may be
    /// shorter).
    segment: Option<usize>,
    /// The address it was sent to (`IP_PKTINFO`).
    destination: Option<Ipv4Addr>,
}

/// Read up to [`MSGS`] datagrams (or GRO runs) from `socket` in one
/// `recvmmsg` call, each into its [`ROOM`]-byte chunk of `bufs`. Returns
/// how many.
fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [u8],
    out: &mut [Received; MSGS],
) -> std::io::Result<usize> {
    /// Room for two control messages, a c_int (the GRO segment size) and
    /// an `in_pktinfo` (the destination), aligned as `cmsghdr` needs.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct Control([u8; 64]);

    // SAFETY (zeroed values): plain C structs for which all-zero bytes are
    // valid.
    let mut addrs: [libc::sockaddr_storage; MSGS] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; MSGS] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; MSGS] = unsafe { std::mem::zeroed() };
    let mut controls = [Control([0; 64]); MSGS];
    for (i, buf) in bufs.chunks_mut(ROOM).take(MSGS).enumerate() {
        iovs[i].iov_base = buf.as_mut_ptr() as *mut libc::c_void;
        iovs[i].iov_len = buf.len();
        let hdr = &mut msgs[i].msg_hdr;
        hdr.msg_name = &mut addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = controls[i].0.as_mut_ptr() as *mut libc::c_void;
        hdr.msg_controllen = size_of::<Control>() as _;
    }
    // SAFETY: every header points into `addrs`, `iovs`, `controls` and
    // `bufs`, which outlive the call; MSGS headers are initialised.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            MSGS as libc::c_uint,
            // MSG_TRUNC: report each read's full length.
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let (segment, destination) = control(&msgs[i].msg_hdr);
        out[i] = Received {
            len: msgs[i].msg_len as usize,
            source: socket_addr(&addrs[i]),
            segment,
            destination,
        };
    }
    Ok(n)
}

/// What a received message's control data says: the GRO segment size and
/// the destination address, where present.
fn control(hdr: &libc::msghdr) -> (Option<usize>, Option<Ipv4Addr>) {
    let (mut segment, mut destination) = (None, None);
    // SAFETY: `hdr` is a header `recvmmsg` filled in: its control pointer
    // and length describe the control messages the kernel wrote, which the
    // CMSG macros walk without leaving them; each payload is read as the
    // type its level and type name.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            let data = libc::CMSG_DATA(cmsg);
            match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                (libc::SOL_UDP, libc::UDP_GRO) => {
                    let size = std::ptr::read_unaligned(data as *const libc::c_int);
                    segment = usize::try_from(size).ok().filter(|&s| s > 0);
                }
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data as *const libc::in_pktinfo);
                    destination = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                }
                _ => {}
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    (segment, destination)
}

/// A C socket address as a Rust one (IPv4 and IPv6 only).
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a.sin_addr.s_addr).into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_server::set_int_option;

    /// An SRTP-shaped packet: RTP header (version 2, `seq`, `ssrc`), then
    /// `payload` bytes and a 16-byte tag.
    fn rtp(ssrc: u32, seq: u16, payload: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend(seq.to_be_bytes());
        p.extend(0u32.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.resize(12 + payload + 16, 0xab);
        p
    }

    /// Send `run` as one buffer the kernel cuts into datagrams of
    /// `segment` bytes (UDP GSO), so the receiver sees a GRO run.
    fn send_run(socket: &UdpSocket, to: SocketAddr, run: &[u8], segment: u16) {
        set_int_option(
            socket,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            libc::c_int::from(segment),
        )
        .unwrap();
        assert_eq!(socket.send_to(run, to).unwrap(), run.len());
    }

    /// Runs of media and of other datagrams, sent with GSO: the hub counts
    /// every media packet of a run with its sequence number and payload
    /// size, and hands every other datagram to the task whole.
    #[tokio::test]
    async fn runs_of_datagrams_are_cut_apart_counted_and_handed_on() {
        let endpoint = Endpoint::new().unwrap();
        let to = endpoint.local();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = Arc::new(Mutex::new(PeerState::default()));
        let (rest, mut others) = mpsc::unbounded_channel();
        let _registration = register(
            &endpoint,
            Subscription {
                streams: vec![(7, true)],
                state: state.clone(),
                rest,
            },
        )
        .unwrap();

        // Five video packets of 1,000 payload bytes and a shorter sixth.
        let mut media: Vec<u8> = (0..5u16).flat_map(|seq| rtp(7, seq, 1_000)).collect();
        media.extend(rtp(7, 5, 400));
        send_run(&sender, to, &media, 1_028);
        // Two RTCP-like datagrams (payload type 200): not media.
        let mut rtcp = vec![0x80, 200, 0, 6];
        rtcp.resize(28, 1);
        let pair = [rtcp.clone(), rtcp.clone()].concat();
        send_run(&sender, to, &pair, 28);

        for _ in 0..2 {
            let (datagram, from) = tokio::time::timeout(Duration::from_secs(2), others.recv())
                .await
                .expect("the hub hands on non-media datagrams")
                .unwrap();
            assert_eq!(datagram, rtcp);
            assert_eq!(from, sender.local_addr().unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while state.lock().rx[1].packets < 6 && Instant::now() < deadline {
            tokio::time::sleep(ROUND).await;
        }
        let video = state.lock().rx[1];
        assert_eq!(video.packets, 6);
        assert_eq!(video.bytes, 5 * 1_000 + 400);
        assert_eq!(video.seq_range, Some((0, 5)));
        assert_eq!(video.lost(), 0);
    }

    /// With GRO on, a GSO run arrives as one read that names its segment
    /// size and the address it was sent to.
    #[test]
    fn a_run_is_one_read_with_its_segment_size_and_destination() {
        let endpoint = Endpoint::new().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let run: Vec<u8> = (0..3u16).flat_map(|seq| rtp(7, seq, 500)).collect();
        send_run(&sender, endpoint.local(), &run, 528);
        let mut bufs = vec![0; MSGS * ROOM];
        let mut out = [Received::default(); MSGS];
        let n = recv_batch(endpoint.socket(), &mut bufs, &mut out).unwrap();
        assert_eq!(n, 1);
        assert_eq!(out[0].len, 3 * 528);
        assert_eq!(out[0].segment, Some(528));
        assert_eq!(out[0].source, Some(sender.local_addr().unwrap()));
        assert_eq!(out[0].destination, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(&bufs[..out[0].len], &run[..]);
    }
}
