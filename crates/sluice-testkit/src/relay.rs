//! A UDP relay between a test peer and the server that drops media packets
//! on purpose, so loss recovery (NACK and retransmission) can be tested
//! end to end without kernel network emulation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Which packets the relay drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Drop every n-th video-sized RTP packet going to the server.
    pub to_server_every: Option<u64>,
    /// Drop every n-th video-sized RTP packet going to the peer.
    pub to_peer_every: Option<u64>,
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
            loop {
                tokio::select! {
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
