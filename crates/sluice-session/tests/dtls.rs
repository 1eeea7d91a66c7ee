//! Every session presents the process's one DTLS certificate.

mod common;

use std::time::Instant;

use sluice_session::{Role, Session};
use str0m::media::Direction;

/// The `a=fingerprint` line of an SDP answer.
fn fingerprint(answer: &str) -> String {
    answer
        .lines()
        .find(|l| l.starts_with("a=fingerprint:"))
        .expect("an answer names its certificate")
        .to_owned()
}

#[test]
fn sessions_share_one_certificate() {
    let config = common::config(None);
    let accept = |role, direction| {
        Session::accept(
            role,
            &common::offer(direction),
            &config,
            &[],
            Instant::now(),
        )
        .unwrap()
        .1
    };
    let first = fingerprint(&accept(Role::Publisher, Direction::SendOnly));
    let second = fingerprint(&accept(Role::Viewer, Direction::RecvOnly));
    let third = fingerprint(&accept(Role::Viewer, Direction::RecvOnly));
    assert_eq!(first, second);
    assert_eq!(first, third);
}
