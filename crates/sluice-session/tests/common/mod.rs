//! What the session tests and the set-up benchmark share: a browser-like
//! offer, a session configuration and the server's answer.

// Each test binary and the benchmark use a part of this.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use sluice_session::{Role, Session, SessionConfig};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// What a browser offers: audio and video, sending or receiving, with
/// str0m's standard extensions (those a browser offers too).
pub fn offer(direction: Direction) -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:6000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, direction, None, None, None);
    change.add_media(MediaKind::Video, direction, None, None, None);
    change.apply().unwrap().0.to_sdp_string()
}

/// A server on 127.0.0.1:5000, bandwidth estimation as given.
pub fn config(estimation: Option<u64>) -> SessionConfig {
    SessionConfig {
        candidates: vec!["127.0.0.1:5000".parse().unwrap()],
        consent_timeout: Duration::from_secs(30),
        viewer_bwe_initial_bps: estimation,
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
