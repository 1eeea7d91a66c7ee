//! Which RTP header extensions a session's answer keeps.

use std::time::{Duration, Instant};

use sluice_session::{Role, Session, SessionConfig};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};

/// What a browser offers: audio and video, sending or receiving, with
/// str0m's standard extensions (those a browser offers too).
fn offer(direction: Direction) -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:6000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, direction, None, None, None);
    change.add_media(MediaKind::Video, direction, None, None, None);
    change.apply().unwrap().0.to_sdp_string()
}

fn answer(role: Role, estimation: Option<u64>) -> String {
    let config = SessionConfig {
        candidates: vec!["127.0.0.1:5000".parse().unwrap()],
        consent_timeout: Duration::from_secs(30),
        viewer_bwe_initial_bps: estimation,
    };
    let direction = match role {
        Role::Publisher => Direction::SendOnly,
        Role::Viewer => Direction::RecvOnly,
    };
    Session::accept(role, &offer(direction), &config, &[], Instant::now())
        .unwrap()
        .1
}

const TWCC: &str = "transport-wide-cc";
const ABS_SEND_TIME: &str = "abs-send-time";

#[test]
fn viewers_without_estimation_leave_out_the_estimation_extensions() {
    let viewer = answer(Role::Viewer, None);
    assert!(!viewer.contains(TWCC), "{viewer}");
    assert!(!viewer.contains(ABS_SEND_TIME), "{viewer}");
    assert!(viewer.contains("ssrc-audio-level"), "{viewer}");
    assert!(viewer.contains("sdes:mid"), "{viewer}");

    // With estimation on, a viewer's feedback feeds it.
    let estimating = answer(Role::Viewer, Some(1_000_000));
    assert!(estimating.contains(TWCC), "{estimating}");
    // A publisher's browser estimates its own uplink from our feedback.
    let publisher = answer(Role::Publisher, None);
    assert!(publisher.contains(TWCC), "{publisher}");
}
