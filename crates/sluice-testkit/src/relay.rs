//! A UDP relay between a test peer and the server that drops media packets
//! on purpose, or squeezes them through a narrow link, so loss recovery
//! (NACK and retransmission) and bandwidth estimation can be tested end to
//! end without kernel network emulation.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Which packets the relay drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Drop every n-th video-sized RTP packet going to the server.
    pub to_server_every: Option<u64>,
    /// Drop every n-th video-sized RTP packet going to the peer.
    pub to_peer_every: Option<u64>,
    /// Carry at most this many kbit/s to the peer: a bottleneck link whose
    /// queue holds [`BOTTLENECK_QUEUE`] of data; what does not fit is
    /// dropped.
    pub to_peer_kbps: Option<u64>,
}

/// How long the bottleneck's queue is (drop-tail beyond it).
pub const BOTTLENECK_QUEUE: Duration = Duration::from_millis(100);

/// A link of limited rate in front of the peer.
struct Bottleneck {
    kbps: u64,
    /// When the link is free again.
    free_at: Instant,
    /// Datagrams waiting, with when they leave.
    queue: VecDeque<(Instant, Vec<u8>)>,
}

impl Bottleneck {
    /// Queue `datagram`; returns `false` when the queue is full.
    fn admit(&mut self, datagram: &[u8], now: Instant) -> bool {
        let start = self.free_at.max(now);
        if start.saturating_duration_since(now) > BOTTLENECK_QUEUE {
            return false;
        }
        let bits = datagram.len() as u64 * 8;
        self.free_at = start + Duration::from_micros(bits * 1000 / self.kbps.max(1));
        self.queue.push_back((self.free_at, datagram.to_vec()));
        true
    }
}

/// SRTP packets at least this large are video (the synthetic audio packets
/// are far smaller), so audio, which is not retransmitted, is never dropped.
const VIDEO_SIZE: usize = 200;

/// A running relay. The peer talks to [`LossyRelay::addr`]; the server sees
/// the relay's other socket as the peer.
pub struct LossyRelay {
    /// Where the peer should send (put into the server's candidate).
    pub addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LossyRelay {
    /// Relay between a peer and `server`, dropping as `loss` says.
    pub async fn start(server: SocketAddr, loss: Loss) -> std::io::Result<LossyRelay> {
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let back = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = front.local_addr()?;
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let task = tokio::spawn(async move {
            let mut peer = None;
            let (mut up, mut down) = (0u64, 0u64);
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            let mut link = loss.to_peer_kbps.map(|kbps| Bottleneck {
                kbps,
                free_at: Instant::now(),
                queue: VecDeque::new(),
            });
            loop {
                let due = link
                    .as_ref()
                    .and_then(|l| l.queue.front().map(|(at, _)| *at));
                tokio::select! {
                    _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                        let (Some(link), Some(peer)) = (link.as_mut(), peer) else { continue };
                        let now = Instant::now();
                        while let Some((at, datagram)) = link.queue.front() {
                            if *at > now {
                                break;
                            }
                            let _ = front.send_to(datagram, peer).await;
                            link.queue.pop_front();
                        }
                    }
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        peer = Some(from);
                        if drops(&a[..n], &mut up, loss.to_server_every) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let _ = back.send_to(&a[..n], server).await;
                        }
                    }
                    Ok((n, _)) = back.recv_from(&mut b) => {
                        let Some(peer) = peer else { continue };
                        if drops(&b[..n], &mut down, loss.to_peer_every) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(link) = link.as_mut() {
                            if !link.admit(&b[..n], Instant::now()) {
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            let _ = front.send_to(&b[..n], peer).await;
                        }
                    }
                }
            }
        });
        Ok(LossyRelay {
            addr,
            dropped,
            task,
        })
    }

    /// How many packets were dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Whether to drop `datagram`: every `every`-th video-sized RTP packet.
fn drops(datagram: &[u8], count: &mut u64, every: Option<u64>) -> bool {
    let Some(every) = every else {
        return false;
    };
    // RTP (not RTCP: payload types 200-207 with the marker bit) per RFC 7983.
    let is_rtp = datagram.len() >= VIDEO_SIZE
        && (128..=191).contains(&datagram[0])
        && !(192..=223).contains(&datagram[1]);
    if !is_rtp {
        return false;
    }
    *count += 1;
    (*count).is_multiple_of(every)
}

/// `answer` with the server candidate at `server` replaced by `relay`.
pub fn redirect_candidate(answer: &str, server: SocketAddr, relay: SocketAddr) -> String {
    answer.replace(
        &format!(" {} {} typ", server.ip(), server.port()),
        &format!(" {} {} typ", relay.ip(), relay.port()),
    )
}

/// The address of the first host candidate in an SDP.
pub fn first_candidate(sdp: &str) -> Option<SocketAddr> {
    let line = sdp.lines().find(|l| l.starts_with("a=candidate:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let ip = fields.get(4)?.parse().ok()?;
    let port = fields.get(5)?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_redirects_the_server_candidate() {
        let sdp = "v=0\r\na=candidate:1 1 udp 2130706175 127.0.0.1 50000 typ host\r\n";
        let server = first_candidate(sdp).unwrap();
        assert_eq!(server, "127.0.0.1:50000".parse().unwrap());
        let relayed = redirect_candidate(sdp, server, "127.0.0.1:6000".parse().unwrap());
        assert!(relayed.contains(" 127.0.0.1 6000 typ host"));
    }

    #[test]
    fn a_bottleneck_spaces_datagrams_and_drops_beyond_its_queue() {
        let t0 = Instant::now();
        // 800 kbit/s: a 1000-byte datagram takes 10 ms on the link.
        let mut link = Bottleneck {
            kbps: 800,
            free_at: t0,
            queue: VecDeque::new(),
        };
        let admitted = (0..20).filter(|_| link.admit(&[0u8; 1000], t0)).count();
        assert_eq!(
            admitted, 11,
            "100 ms of queue: ten waiting plus one leaving"
        );
        let times: Vec<u128> = link
            .queue
            .iter()
            .map(|(at, _)| at.duration_since(t0).as_millis())
            .collect();
        assert_eq!(times[..3], [10, 20, 30]);
    }

    #[test]
    fn drops_only_every_nth_video_rtp_packet() {
        let video = [0x80u8; 300];
        let audio = [0x80u8; 80];
        let mut rtcp = [0x80u8; 300];
        rtcp[1] = 200;
        let mut count = 0;
        let dropped: Vec<bool> = (0..6).map(|_| drops(&video, &mut count, Some(3))).collect();
        assert_eq!(dropped, [false, false, true, false, false, true]);
        assert!(!drops(&audio, &mut count, Some(1)));
        assert!(!drops(&rtcp, &mut count, Some(1)));
        assert!(!drops(&video, &mut count, None));
    }
}
