//! One receive thread for every count-only subscriber (Linux).
//!
//! A load test's cost is in receiving: a subscriber's own task wakes, makes
//! a system call and re-arms its timers for every datagram, which made the
//! tester spend more than half the CPU the server spent forwarding. The hub
//! instead owns the sockets of all count-only subscribers of the process:
//! every round it asks `epoll` which sockets have datagrams, reads each one
//! with `recvmmsg`, counts RTP packets from their clear headers (see
//! [`crate::counting`]) and hands everything else (STUN, DTLS, RTCP) to the
//! subscriber's task, whose str0m stack answers it. Once a subscriber's
//! media flows, only the first [`HEAD`] bytes of each datagram are read
//! (copying whole packets out of the kernel was the hub's largest cost);
//! a longer datagram that is not RTP, which after the DTLS handshake can
//! only be RTCP a counting subscriber has no use for, is dropped. Between
//! rounds it
//! sleeps [`ROUND`], so datagrams gather in the socket buffers instead of
//! waking a thread each; the cost is that arrival times of counted packets
//! are known to within a round.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::counting::{HEAD, SeqExtender, rtp_header};
use crate::peer::PeerState;

/// The pause between two receive rounds.
pub const ROUND: Duration = Duration::from_millis(1);
/// Datagrams read per `recvmmsg` call.
const MSGS: usize = 16;
/// Room for the largest datagram a WebRTC peer sends.
const DATAGRAM: usize = 2048;
/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 256;

/// A datagram the hub does not count: it goes to the subscriber's task.
pub type Datagram = (Vec<u8>, SocketAddr);

/// What the hub needs to count one subscriber's media.
pub struct Subscription {
    /// The subscriber's socket; the hub reads it, the task sends on a clone.
    pub socket: UdpSocket,
    /// The streams to count: `(ssrc, is_video)`.
    pub streams: Vec<(u32, bool)>,
    /// Where the counts go.
    pub state: Arc<Mutex<PeerState>>,
    /// Where datagrams other than RTP go.
    pub rest: mpsc::UnboundedSender<Datagram>,
}

/// Keeps a socket registered with the hub; dropping it takes it out.
pub struct Registration {
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = hub().send(Command::Remove(self.id));
    }
}

/// Hand a subscriber's socket to the hub (started on first use).
pub fn register(subscription: Subscription) -> std::io::Result<Registration> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    subscription.socket.set_nonblocking(true)?;
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    hub()
        .send(Command::Add(id, subscription))
        .map_err(|_| std::io::Error::other("the receive hub stopped"))?;
    Ok(Registration { id })
}

enum Command {
    Add(u64, Subscription),
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
    /// Sequence number extension per counted stream, in `sub.streams` order.
    seqs: Vec<SeqExtender>,
    /// Media has arrived: the DTLS handshake is over, heads are enough.
    media: bool,
}

struct Hub {
    epoll: OwnedFd,
    entries: HashMap<u64, Entry>,
    bufs: Box<[[u8; DATAGRAM]; MSGS]>,
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
            bufs: Box::new([[0; DATAGRAM]; MSGS]),
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
                self.read(event.u64);
            }
            if (n as usize) < EVENTS {
                std::thread::sleep(ROUND);
            }
        }
    }

    fn apply(&mut self, command: Command) -> std::io::Result<()> {
        match command {
            Command::Add(id, sub) => {
                let mut event = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: id,
                };
                // SAFETY: the socket's descriptor is open; `event` is valid.
                let rc = unsafe {
                    libc::epoll_ctl(
                        self.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_ADD,
                        sub.socket.as_raw_fd(),
                        &mut event,
                    )
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let seqs = vec![SeqExtender::default(); sub.streams.len()];
                self.entries.insert(
                    id,
                    Entry {
                        sub,
                        seqs,
                        media: false,
                    },
                );
            }
            Command::Remove(id) => self.remove(id),
        }
        Ok(())
    }

    fn remove(&mut self, id: u64) {
        if let Some(entry) = self.entries.remove(&id) {
            // SAFETY: the descriptor is still open (the entry owned it).
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    entry.sub.socket.as_raw_fd(),
                    std::ptr::null_mut(),
                );
            }
        }
    }

    /// Read what one socket holds (up to [`MSGS`] datagrams; the rest waits
    /// for the next round, as `epoll` still reports the socket).
    fn read(&mut self, id: u64) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let mut received = [(0, None); MSGS];
        let room = if entry.media { HEAD } else { DATAGRAM };
        let n = match recv_batch(&entry.sub.socket, &mut self.bufs, room, &mut received) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.remove(id);
                return;
            }
        };
        let now = Instant::now();
        let mut gone = false;
        let mut state = entry.sub.state.lock();
        for (buf, &(len, source)) in self.bufs.iter().zip(&received[..n]) {
            let datagram = &buf[..len.min(room)];
            match rtp_header(datagram, len) {
                Some((ssrc, seq, bytes)) => {
                    entry.media = true;
                    // RTX and anything else unknown is swallowed, not counted.
                    let Some(i) = entry.sub.streams.iter().position(|s| s.0 == ssrc) else {
                        continue;
                    };
                    let seq = entry.seqs[i].extend(seq);
                    state.rx[usize::from(entry.sub.streams[i].1)].record(seq, bytes);
                    state.first_packet_at.get_or_insert(now);
                }
                None => {
                    let Some(source) = source.filter(|_| len <= room) else {
                        continue;
                    };
                    gone |= entry.sub.rest.send((datagram.to_vec(), source)).is_err();
                }
            }
        }
        drop(state);
        if gone {
            self.remove(id);
        }
    }
}

/// Read up to [`MSGS`] datagrams from `socket` in one `recvmmsg` call into
/// `bufs`, at most `room` bytes of each; `out` gets each one's full length
/// and source. Returns how many.
fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [[u8; DATAGRAM]; MSGS],
    room: usize,
    out: &mut [(usize, Option<SocketAddr>); MSGS],
) -> std::io::Result<usize> {
    // SAFETY (zeroed values): plain C structs for which all-zero bytes are
    // valid.
    let mut addrs: [libc::sockaddr_storage; MSGS] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; MSGS] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; MSGS] = unsafe { std::mem::zeroed() };
    for i in 0..MSGS {
        iovs[i].iov_base = bufs[i].as_mut_ptr() as *mut libc::c_void;
        iovs[i].iov_len = room.min(DATAGRAM);
        let hdr = &mut msgs[i].msg_hdr;
        hdr.msg_name = &mut addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iovs[i];
        hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points into `addrs`, `iovs` and `bufs`, which
    // outlive the call; MSGS headers are initialised.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            MSGS as libc::c_uint,
            // MSG_TRUNC: report each datagram's full length.
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        out[i] = (msgs[i].msg_len as usize, socket_addr(&addrs[i]));
    }
    Ok(n)
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
