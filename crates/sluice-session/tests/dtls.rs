//! Every session presents the process's one DTLS certificate.

mod common;

use common::answer;
use sluice_session::Role;

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
    let first = fingerprint(&answer(Role::Publisher, None));
    let second = fingerprint(&answer(Role::Viewer, None));
    let third = fingerprint(&answer(Role::Viewer, Some(1_000_000)));
    assert_eq!(first, second);
    assert_eq!(first, third);
}
