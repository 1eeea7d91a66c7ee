//! What the session tests and the set-up benchmark share: a browser-like
//! offer, a session configuration and the server's answer.

// Each test binary and the benchmark use a part of this.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_session::{Role, Session, SessionConfig, SessionEvent, SessionOutput};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};

/// The client's address.
pub const PEER: &str = "127.0.0.1:6000";
/// The server's address.
pub const SERVER: &str = "127.0.0.1:5000";

/// A str0m client with a pending offer of audio and video in `direction`
/// (what a browser offers, with str0m's standard extensions), and the
/// offer's video mid. A receiving client runs in RTP mode, so it reports
/// every RTP packet it gets.
pub fn client(now: Instant, direction: Direction) -> (Rtc, String, SdpPendingOffer, Mid) {
    let mut rtc = Rtc::builder()
        .set_rtp_mode(direction == Direction::RecvOnly)
        .build(now);
    rtc.add_local_candidate(Candidate::host(PEER.parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, direction, None, None, None);
    let video = change.add_media(MediaKind::Video, direction, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    (rtc, offer.to_sdp_string(), pending, video)
}

/// What a browser offers: audio and video, sending or receiving.
pub fn offer(direction: Direction) -> String {
    client(Instant::now(), direction).1
}

/// Hand `datagram` from the server to `client` at `now`.
pub fn to_client(client: &mut Rtc, now: Instant, datagram: &[u8]) {
    let input = Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: SERVER.parse().unwrap(),
            destination: PEER.parse().unwrap(),
            contents: datagram.try_into().unwrap(),
        },
    );
    client.handle_input(input).unwrap();
}

/// A session of `role` and a client that completed ICE and DTLS with it
/// over an in-memory network, in simulated time. Returns them, the
/// client's video mid and the time reached.
pub fn connected(role: Role, config: &SessionConfig) -> (Session, Rtc, Mid, Instant) {
    let mut now = Instant::now();
    let direction = match role {
        Role::Publisher => Direction::SendOnly,
        Role::Viewer => Direction::RecvOnly,
    };
    let (mut rtc, offer, pending, video) = client(now, direction);
    let (mut session, answer) = Session::accept(role, &offer, config, &[], now).unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    let (peer, server): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), SERVER.parse().unwrap());
    let mut connected = false;
    for _ in 0..2_000 {
        // Client to server.
        let client_next = loop {
            match rtc.poll_output().unwrap() {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => session.handle_datagram(now, peer, server, &t.contents),
                Output::Event(_) => {}
            }
        };
        // Server to client.
        let server_next = loop {
            match session.poll() {
                SessionOutput::Timeout(t) => break t,
                SessionOutput::Transmit(t) => to_client(&mut rtc, now, &t.contents),
                SessionOutput::Event(SessionEvent::Connected) => connected = true,
                SessionOutput::Event(_) => {}
            }
        };
        if connected {
            return (session, rtc, video, now);
        }
        now = client_next
            .min(server_next)
            .max(now + Duration::from_millis(1));
        rtc.handle_input(Input::Timeout(now)).unwrap();
        session.handle_timeout(now);
    }
    panic!("no connection in simulated time");
}

/// A server on 127.0.0.1:5000, bandwidth estimation as given.
pub fn config(estimation: Option<u64>) -> SessionConfig {
    SessionConfig {
        candidates: vec!["127.0.0.1:5000".parse().unwrap()],
        consent_timeout: Duration::from_secs(30),
        viewer_bwe_initial_bps: estimation,
        direct_egress: true,
        viewer_loss_estimate: true,
    }
}

/// The server's answer to a browser-like offer that `role` would make.
pub fn answer(role: Role, estimation: Option<u64>) -> String {
    let direction = match role {
        Role::Publisher => Direction::SendOnly,
        Role::Viewer => Direction::RecvOnly,
    };
    let config = config(estimation);
    Session::accept(role, &offer(direction), &config, &[], Instant::now())
        .unwrap()
        .1
}
