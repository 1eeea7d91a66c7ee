//! Where a count-only subscriber is reached (Linux): a UDP socket of its
//! own on 127.0.0.1, or an address of its own on one socket that all of
//! them share.
//!
//! The server tells sessions apart by the peer's address and port, so a
//! thousand synthetic subscribers need a thousand distinct source
//! addresses. On 127.0.0.1 that means a socket (a port) each, and the
//! receive hub then has to ask every one of them for its datagrams.
//! Inside a network namespace of its own, where loopback is the only
//! interface, the tester may use the whole `127.0.0.0/8` range instead: one
//! socket bound to the wildcard address receives for every address of
//! `127.1.0.0/16`, learns which one a datagram was sent to from its
//! `IP_PKTINFO` control message, and sends from any of them by naming it
//! in the same control message. The server still sees one address per
//! subscriber, and the hub reads one socket.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use sluice_server::set_int_option;

/// The block that subscribers on the shared socket take their addresses
/// from (`127.1.0.0/16`, all loopback).
const SHARED_BLOCK: [u8; 2] = [127, 1];
/// Receive buffer asked for on the shared socket: it holds what every
/// subscriber receives between two of the hub's rounds.
const SHARED_RCVBUF: libc::c_int = 64 << 20;

/// A count-only subscriber's address, and the socket it is reached on.
pub struct Endpoint {
    socket: Arc<UdpSocket>,
    local: SocketAddrV4,
    /// Whether `local` came from the shared socket's pool (and goes back
    /// to it when the endpoint is dropped).
    pooled: bool,
}

impl Endpoint {
    /// A new endpoint: an address on the shared socket once
    /// [`share_one_socket`] was called, else a socket of its own on
    /// 127.0.0.1.
    pub fn new() -> std::io::Result<Endpoint> {
        if let Some(shared) = SHARED.get() {
            let ip = shared.addresses.lock().take().ok_or_else(|| {
                std::io::Error::other("the shared socket's 65,024 addresses are all in use")
            })?;
            return Ok(Endpoint {
                socket: shared.socket.clone(),
                local: SocketAddrV4::new(ip, shared.port),
                pooled: true,
            });
        }
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        prepare(&socket)?;
        let SocketAddr::V4(local) = socket.local_addr()? else {
            return Err(std::io::Error::other("bound to 127.0.0.1 but got IPv6"));
        };
        Ok(Endpoint {
            socket: Arc::new(socket),
            local,
            pooled: false,
        })
    }

    /// The address the server sends this subscriber's datagrams to (its
    /// ICE host candidate).
    pub fn local(&self) -> SocketAddr {
        SocketAddr::V4(self.local)
    }

    /// The socket, for the hub to read.
    pub(crate) fn socket(&self) -> &Arc<UdpSocket> {
        &self.socket
    }

    /// Send `contents` to `to` from this endpoint's address.
    pub fn send_to(&self, contents: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        let SocketAddr::V4(to) = to else {
            return Err(std::io::Error::other("endpoints speak IPv4 only"));
        };
        send_from(&self.socket, *self.local.ip(), contents, to)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if self.pooled
            && let Some(shared) = SHARED.get()
        {
            shared.addresses.lock().give_back(*self.local.ip());
        }
    }
}

/// The one socket every endpoint shares, once [`share_one_socket`] ran.
struct Shared {
    socket: Arc<UdpSocket>,
    port: u16,
    addresses: Mutex<Pool>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// From now on, put every new [`Endpoint`] of this process on one shared
/// socket, each with an address of its own in `127.1.0.0/16`.
///
/// Refused unless this process runs in a network namespace whose only
/// interface is loopback (e.g. under `unshare --net`): the shared socket is
/// bound to the wildcard address, which anywhere else would listen on the
/// machine's real networks too.
pub fn share_one_socket() -> std::io::Result<()> {
    only_loopback(&std::fs::read_to_string("/proc/self/net/dev")?, is_up)?;
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    prepare(&socket)?;
    // Past net.core.rmem_max only with CAP_NET_ADMIN; without it the
    // kernel caps the size, and a busy run may lose datagrams to that.
    set_int_option(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        SHARED_RCVBUF,
    )
    .or_else(|_| set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, SHARED_RCVBUF))?;
    let granted = receive_buffer(&socket)?;
    if granted < SHARED_RCVBUF {
        eprintln!(
            "warning: the shared socket's receive buffer is {} KiB of the {} KiB asked for \
             (raise net.core.rmem_max, or run as root)",
            granted / 1024,
            SHARED_RCVBUF / 1024
        );
    }
    let port = socket.local_addr()?.port();
    SHARED
        .set(Shared {
            socket: Arc::new(socket),
            port,
            addresses: Mutex::new(Pool::default()),
        })
        .map_err(|_| std::io::Error::other("the socket is already shared"))
}

/// Whether a namespace whose `/proc/net/dev` table is `table` has no
/// interface up but `lo` (a kernel may put tunnel devices that are down
/// into every namespace); the error names the others.
fn only_loopback(
    table: &str,
    is_up: impl Fn(&str) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    // Two heading lines, then `name: counters` per interface.
    let mut others = Vec::new();
    for name in table
        .lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim()))
    {
        if name != "lo" && is_up(name)? {
            others.push(name);
        }
    }
    if others.is_empty() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "a shared socket needs a network namespace of its own with only loopback \
         (run under `unshare --net`, see docs/loadtest.md); this one also has {}",
        others.join(", ")
    )))
}

/// Whether this namespace's interface `name` is up.
fn is_up(name: &str) -> std::io::Result<bool> {
    // SAFETY: plain system call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(std::io::Error::other(format!(
            "interface name {name:?} too long"
        )));
    }
    for (to, from) in request.ifr_name.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name of `request` and
    // writes its flags, within the struct.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    Ok(flags & libc::IFF_UP as libc::c_short != 0)
}

/// Options every endpoint socket needs: non-blocking reads for the hub,
/// destination addresses on receive, and runs of datagrams coalesced into
/// one read (UDP GRO, Linux 5.0 and later; without it every datagram is
/// read on its own, which still works).
fn prepare(socket: &UdpSocket) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    set_int_option(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    let _ = set_int_option(socket, libc::SOL_UDP, libc::UDP_GRO, 1);
    Ok(())
}

/// The size of `socket`'s receive buffer (the kernel reports twice what
/// was asked for, its bookkeeping included).
fn receive_buffer(socket: &UdpSocket) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call and describe a c_int.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value / 2)
}

/// Send one datagram from source address `from` (an address of this
/// machine's, or namespace's, loopback) with an `IP_PKTINFO` control
/// message.
fn send_from(
    socket: &UdpSocket,
    from: Ipv4Addr,
    contents: &[u8],
    to: SocketAddrV4,
) -> std::io::Result<usize> {
    /// Room for one control message carrying an `in_pktinfo`, aligned as
    /// `cmsghdr` needs.
    #[repr(C, align(8))]
    struct Control([u8; 32]);

    let mut dest = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec {
        iov_base: contents.as_ptr() as *mut libc::c_void,
        iov_len: contents.len(),
    };
    let mut control = Control([0; 32]);
    // SAFETY: msghdr is a plain C struct for which all-zero bytes are valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = &mut dest as *mut libc::sockaddr_in as *mut libc::c_void;
    hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.0.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE only computes a size.
    hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as _;
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(from).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    // SAFETY: the control buffer has room for one cmsghdr with an
    // in_pktinfo (CMSG_SPACE of it is 32 bytes on 64-bit Linux); the
    // header, iovec and address outlive the call.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo, info);
        libc::sendmsg(socket.as_raw_fd(), &hdr, 0)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// The addresses of `127.1.0.0/16` not in use. Addresses never used go
/// first, lowest first; then those given back, oldest first, so an address
/// stays unused as long as possible after its subscriber left (its server
/// session may live on until its consent expires, and datagrams for it may
/// still wait in the socket). Host parts ending in .0 or .255 are left
/// out, so no address looks like a network or broadcast one.
#[derive(Default)]
struct Pool {
    /// The next address never handed out, as its 16-bit host part.
    next: u32,
    /// Addresses given back, oldest first.
    free: std::collections::VecDeque<Ipv4Addr>,
}

impl Pool {
    fn take(&mut self) -> Option<Ipv4Addr> {
        while self.next <= 0xffff {
            let host = self.next;
            self.next += 1;
            let [_, _, a, b] = host.to_be_bytes();
            if b != 0 && b != 255 {
                return Some(Ipv4Addr::new(SHARED_BLOCK[0], SHARED_BLOCK[1], a, b));
            }
        }
        self.free.pop_front()
    }

    fn give_back(&mut self, ip: Ipv4Addr) {
        self.free.push_back(ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_hands_out_fresh_addresses_before_reusing_any() {
        let mut pool = Pool::default();
        let first = pool.take().unwrap();
        assert_eq!(first, Ipv4Addr::new(127, 1, 0, 1));
        pool.give_back(first);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 256 * 254 - 1 {
            let ip = pool.take().unwrap();
            assert!(ip != first && seen.insert(ip), "{ip} handed out twice");
            let last = ip.octets()[3];
            assert!(last != 0 && last != 255, "{ip}");
        }
        // Every address is out: now the given-back ones, oldest first.
        pool.give_back(Ipv4Addr::new(127, 1, 7, 9));
        assert_eq!(pool.take(), Some(first));
        assert_eq!(pool.take(), Some(Ipv4Addr::new(127, 1, 7, 9)));
        assert_eq!(pool.take(), None);
    }

    /// Sharing is allowed only where loopback is the only interface up.
    #[test]
    fn only_a_namespace_with_loopback_alone_up_may_share() {
        let heading = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n";
        let table = format!("{heading}    lo:  10 1 10 1\n  eth0: 20 2 20 2\n  tunl0: 0 0\n");
        let up = |names: &'static [&'static str]| move |n: &str| Ok(names.contains(&n));
        assert!(only_loopback(&format!("{heading}    lo: 10 1\n"), up(&["lo"])).is_ok());
        assert!(only_loopback(&table, up(&["lo"])).is_ok());
        let refused = only_loopback(&table, up(&["lo", "eth0", "tunl0"]))
            .unwrap_err()
            .to_string();
        assert!(
            refused.ends_with("this one also has eth0, tunl0"),
            "{refused}"
        );
    }

    /// This machine's loopback is up (the tests use it), and a name no
    /// interface has is an error.
    #[test]
    fn interface_flags_are_read() {
        assert!(is_up("lo").unwrap());
        assert!(is_up("no-such-if0").is_err());
    }

    /// An endpoint of its own sends from 127.0.0.1 with the source port
    /// it advertises.
    #[test]
    fn an_own_endpoint_sends_from_its_address() {
        let endpoint = Endpoint::new().unwrap();
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        endpoint
            .send_to(b"hello", receiver.local_addr().unwrap())
            .unwrap();
        let mut buf = [0; 16];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, endpoint.local());
    }
}
