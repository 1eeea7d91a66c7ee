//! What a session's answer says: which RTP header extensions it keeps, and
//! which media stream its media belong to.

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

#[test]
fn a_viewers_audio_and_video_are_one_media_stream() {
    let viewer = answer(Role::Viewer, None);
    let streams: Vec<&str> = viewer
        .lines()
        .filter_map(|l| l.strip_prefix("a=msid:"))
        .map(|v| v.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(streams.len(), 2, "{viewer}");
    assert_eq!(streams[0], streams[1], "{viewer}");
    let semantic = viewer
        .lines()
        .find(|l| l.starts_with("a=msid-semantic:"))
        .unwrap_or("");
    assert_eq!(semantic, format!("a=msid-semantic: WMS {}", streams[0]));
}
