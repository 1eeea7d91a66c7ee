//! Which RTP header extensions a session's answer keeps.

mod common;

use common::answer;
use sluice_session::Role;

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
