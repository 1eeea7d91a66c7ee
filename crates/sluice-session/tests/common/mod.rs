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
    // A client the server gave up on may refuse what is still in flight.
    let _ = client.handle_input(input);
}

/// A session of `role` and a client that completed ICE and DTLS with it
/// over an in-memory network, in simulated time. Returns them, the
/// client's video mid and the time reached.
pub fn connected(role: Role, config: &SessionConfig) -> (Session, Rtc, Mid, Instant) {
    let (mut session, mut rtc, video, now) = accepted(role, config, |offer| offer);
    match handshake(&mut session, &mut rtc, now) {
        (SessionEvent::Connected, now) => (session, rtc, video, now),
        (other, _) => panic!("no connection: {other:?}"),
    }
}

/// A session of `role` made from a client's offer, edited by `edit`, and
/// the client with the answer applied; its video mid and the time.
pub fn accepted(
    role: Role,
    config: &SessionConfig,
    edit: impl FnOnce(String) -> String,
) -> (Session, Rtc, Mid, Instant) {
    let now = Instant::now();
    let direction = match role {
        Role::Publisher => Direction::SendOnly,
        Role::Viewer => Direction::RecvOnly,
    };
    let (mut rtc, offer, pending, video) = client(now, direction);
    let (session, answer) = Session::accept(role, &edit(offer), config, &[], now).unwrap();
    rtc.sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .unwrap();
    (session, rtc, video, now)
}

/// Run ICE and DTLS between `session` and `rtc` over an in-memory network
/// in simulated time from `now`, until the session connects or closes:
/// that event, and the time reached.
pub fn handshake(
    session: &mut Session,
    rtc: &mut Rtc,
    mut now: Instant,
) -> (SessionEvent, Instant) {
    let (peer, server): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), SERVER.parse().unwrap());
    let mut outcome = None;
    for _ in 0..2_000 {
        // Client to server.
        let client_next = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => session.handle_datagram(now, peer, server, &t.contents),
                Ok(Output::Event(_)) => {}
                Err(_) => break now + Duration::from_secs(1),
            }
        };
        // Server to client.
        let server_next = loop {
            match session.poll() {
                SessionOutput::Timeout(t) => break t,
                SessionOutput::Transmit(t) => to_client(rtc, now, &t.contents),
                SessionOutput::Event(e @ (SessionEvent::Connected | SessionEvent::Closed(_))) => {
                    outcome.get_or_insert(e);
                }
                SessionOutput::Event(_) => {}
            }
        };
        if let Some(e) = outcome {
            return (e, now);
        }
        now = client_next
            .min(server_next)
            .max(now + Duration::from_millis(1));
        let _ = rtc.handle_input(Input::Timeout(now));
        session.handle_timeout(now);
    }
    panic!("neither connected nor closed in simulated time");
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
