//! Sans-IO robustness: whatever arrives on the media port, a session must
//! not panic, and garbage must not end it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::{PEER, SERVER, client, connected};
use rand::Rng;
use sluice_session::{CloseReason, Role, Session, SessionConfig, SessionEvent, SessionOutput};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaTime};
use str0m::{Input, Output};

fn config() -> SessionConfig {
    common::config(Some(1_000_000))
}

fn offer() -> String {
    common::offer(Direction::SendOnly)
}

#[test]
fn only_authentic_stun_is_accepted_from_new_addresses() {
    let now = Instant::now();
    let (mut rtc, offer, pending, _) = client(now, Direction::SendOnly);
    let (session, answer) = Session::accept(Role::Publisher, &offer, &config(), &[], now).unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let stun = loop {
        match rtc.poll_output().unwrap() {
            Output::Transmit(t) => break t.contents.to_vec(),
            Output::Timeout(t) => rtc.handle_input(Input::Timeout(t.max(now))).unwrap(),
            Output::Event(_) => {}
        }
    };
    let (peer, server): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), SERVER.parse().unwrap());
    assert!(
        session.accepts(now, peer, server, &stun),
        "the client's own check"
    );
    // The same request with one byte of its MESSAGE-INTEGRITY changed.
    let mut forged = stun.clone();
    let n = forged.len();
    forged[n - 10] ^= 0xff;
    assert!(!session.accepts(now, peer, server, &forged));
    assert!(!session.accepts(now, peer, server, &[0x80; 40]), "not STUN");
}

fn drain(session: &mut Session) {
    for _ in 0..10_000 {
        if let SessionOutput::Timeout(_) = session.poll() {
            return;
        }
    }
    panic!("the session never settled");
}

/// Datagrams shaped like each protocol on the port (RFC 7983 first-byte
/// ranges), with random contents and lengths.
fn hostile(rng: &mut impl Rng) -> Vec<u8> {
    let len = rng.random_range(0..1500);
    let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    if let Some(first) = d.first_mut() {
        *first = match rng.random_range(0..4) {
            0 => rng.random_range(0..4),     // STUN
            1 => rng.random_range(20..64),   // DTLS
            2 => rng.random_range(128..192), // RTP / RTCP
            _ => rng.random(),
        };
    }
    if d.len() >= 8 && d[0] < 4 {
        d[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]); // STUN magic cookie
    }
    d
}

fn fuzz(session: &mut Session, now: Instant, datagrams: u64) {
    let mut rng = rand::rng();
    let (peer, local): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), SERVER.parse().unwrap());
    for i in 0..datagrams {
        let datagram = hostile(&mut rng);
        let at = now + Duration::from_millis(i / 10);
        session.handle_datagram(at, peer, local, &datagram);
        drain(session);
        if i % 100 == 0 {
            session.handle_timeout(at);
            drain(session);
        }
        assert!(
            session.is_alive(),
            "datagram {i} ({} bytes) ended the session",
            datagram.len()
        );
    }
}

#[test]
fn garbage_never_panics_or_ends_a_new_session() {
    let now = Instant::now();
    let (mut session, _answer) =
        Session::accept(Role::Publisher, &offer(), &config(), &[], now).unwrap();
    drain(&mut session);
    fuzz(&mut session, now, 3_000);
}

#[test]
fn garbage_never_panics_or_ends_a_connected_session() {
    // From the peer's own address, as a spoofing attacker would send it,
    // once DTLS and SRTP are up.
    let (mut session, mut client, mid, now) = connected(Role::Publisher, &config());
    fuzz(&mut session, now, 3_000);

    // Real media still gets through afterwards.
    let now = now + Duration::from_secs(1);
    let writer = client.writer(mid).unwrap();
    let pt = writer.payload_params().next().unwrap().pt();
    writer
        .write(
            pt,
            now,
            MediaTime::from_90khz(90_000),
            vec![0x10, 0x00, 1, 2, 3],
        )
        .unwrap();
    let (peer, server): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), SERVER.parse().unwrap());
    let mut media = 0;
    let mut t = now;
    for _ in 0..50 {
        loop {
            match client.poll_output().unwrap() {
                Output::Timeout(_) => break,
                Output::Transmit(d) => {
                    session.handle_datagram(t, peer, server, &d.contents);
                    loop {
                        match session.poll() {
                            SessionOutput::Timeout(_) => break,
                            SessionOutput::Event(SessionEvent::Rtp(_)) => media += 1,
                            _ => {}
                        }
                    }
                }
                Output::Event(_) => {}
            }
        }
        t += Duration::from_millis(10);
        client.handle_input(Input::Timeout(t)).unwrap();
    }
    assert!(media >= 1, "no media after the garbage");
}

#[test]
fn malformed_offers_are_refused_without_panicking() {
    let mut rng = rand::rng();
    let good = offer();
    let now = Instant::now();
    for _ in 0..300 {
        // Cut the offer anywhere, or flip bytes in it.
        let mut bytes = good.clone().into_bytes();
        if rng.random_bool(0.5) {
            bytes.truncate(rng.random_range(0..bytes.len()));
        } else {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random_range(32..127);
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        for role in [Role::Publisher, Role::Viewer] {
            let _ = Session::accept(role, &text, &config(), &[], now);
        }
    }
}

/// A client whose DTLS certificate does not match the fingerprint in its
/// offer is refused, and the session says why (for the server's log).
#[test]
fn a_dtls_certificate_that_is_not_the_offered_one_fails_the_session_with_a_reason() {
    let tamper = |offer: String| {
        offer
            .lines()
            .map(|line| match line.strip_prefix("a=fingerprint:sha-256 ") {
                Some(hex) => format!(
                    "a=fingerprint:sha-256 {}",
                    hex.replace(|c: char| c.is_ascii_hexdigit(), "0")
                ),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\r\n")
            + "\r\n"
    };
    let (mut session, mut client, _, now) = common::accepted(Role::Publisher, &config(), tamper);
    let (event, _) = common::handshake(&mut session, &mut client, now);
    assert!(
        matches!(event, SessionEvent::Closed(CloseReason::Disconnected)),
        "{event:?}"
    );
    let failure = session.failure().expect("a reason");
    assert!(failure.contains("fingerprint"), "{failure}");
}
