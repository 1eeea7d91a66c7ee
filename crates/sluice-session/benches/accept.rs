//! What setting up one session costs: `Session::accept` for a browser-like
//! offer, timed over many calls in a row, for publishers and viewers.
//!
//! `cargo bench -p sluice-session --bench accept` prints microseconds per
//! call (median and 99th percentile) and calls per second on one core.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use sluice_session::{Role, Session};
use str0m::media::Direction;

/// Calls timed per role.
const CALLS: usize = 500;

fn main() {
    let config = common::config(None);
    for (role, direction, name) in [
        (Role::Publisher, Direction::SendOnly, "publisher"),
        (Role::Viewer, Direction::RecvOnly, "viewer"),
    ] {
        let offer = common::offer(direction);
        // The first call builds what every later one shares.
        Session::accept(role, &offer, &config, &[], Instant::now()).unwrap();
        let mut micros: Vec<f64> = (0..CALLS)
            .map(|_| {
                let start = Instant::now();
                let accepted = Session::accept(role, &offer, &config, &[], start).unwrap();
                let spent = start.elapsed();
                drop(accepted);
                spent.as_secs_f64() * 1e6
            })
            .collect();
        micros.sort_by(f64::total_cmp);
        let median = micros[CALLS / 2];
        let p99 = micros[CALLS * 99 / 100];
        let mean = micros.iter().sum::<f64>() / CALLS as f64;
        println!(
            "{name:>9}: {median:7.1} us median, {p99:7.1} us p99, {:6.0} sessions/s on one core",
            1e6 / mean
        );
    }
}
