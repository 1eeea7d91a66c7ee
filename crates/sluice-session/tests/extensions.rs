//! Which RTP header extensions a session's answer keeps.

mod common;

use std::time::Instant;

use sluice_session::{Role, Session};
use str0m::media::Direction;

fn answer(role: Role, estimation: Option<u64>) -> String {
    let config = common::config(estimation);
    let direction = match role {
        Role::Publisher => Direction::SendOnly,
        Role::Viewer => Direction::RecvOnly,
    };
    Session::accept(
        role,
        &common::offer(direction),
        &config,
        &[],
        Instant::now(),
    )
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
