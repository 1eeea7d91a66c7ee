//! `--find-capacity`: add subscribers in steps until the server stops
//! keeping up, and report the last step that was fine.

use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_testkit::Peer;

use crate::procfs;
use crate::report::{Spread, loss_pct};
use crate::{Args, Role, is_probe, start_peer};

/// A step fails above this loss, in percent.
const MAX_LOSS_PCT: f64 = 0.5;
/// A step fails above this latency p99, in ms.
const MAX_P99_MS: f64 = 50.0;
/// A step fails when the server uses more than this share of each core it
/// may run on.
const MAX_CPU_PCT: f64 = 95.0;

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Subscribers in this step.
    pub subscribers: usize,
    /// Loss during the step's window, percent.
    pub loss_pct: f64,
    /// Latency p99 at the probes during the window, ms.
    pub latency_p99_ms: f64,
    /// Server CPU during the window, percent of one core (when known; a
    /// server on two cores can reach 200).
    pub cpu_pct: Option<f64>,
    /// Whether the step stayed within the limits.
    pub ok: bool,
}

/// The `--json` report of a capacity search.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Subscribers of the last good step (0 if even the first failed).
    pub capacity_subscribers: usize,
    /// The server CPU a step may use: 95 % of each core the server may
    /// run on, in percent of one core.
    pub cpu_limit_pct: f64,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

/// Per-subscriber counters at one moment: received, lost, latency samples.
fn snapshot(subscribers: &[Peer]) -> Vec<(u64, u64, usize)> {
    subscribers
        .iter()
        .map(|p| {
            p.with_state(|s| {
                (
                    s.rx[0].packets + s.rx[1].packets,
                    s.rx[0].lost() + s.rx[1].lost(),
                    s.latencies_us.len(),
                )
            })
        })
        .collect()
}

/// Run the search; returns the report. Bounded by `--max-subscribers`.
pub async fn find(args: &Args) -> Result<Capacity, String> {
    let mut publishers = Vec::new();
    for room in 0..args.rooms {
        for i in 0..args.publishers {
            publishers.extend(start_peer(args, room, Role::Publish(i)).await?);
        }
    }
    let pid = args.server_pid.or_else(procfs::find_sluice);
    // 95 % of each core the server may use. A server with fewer shards
    // than cores saturates before that: the loss and latency limits
    // catch it.
    let cpu_limit_pct = MAX_CPU_PCT * pid.and_then(procfs::cores_allowed).unwrap_or(1) as f64;
    let mut subscribers: Vec<Peer> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let window = Duration::from_secs(args.duration);
    while subscribers.len() < args.max_subscribers {
        let start = subscribers.len();
        let target = (start + args.step).min(args.max_subscribers);
        // Subscriber n joins room n % rooms. Each step brings its own
        // probes, spread over the step's new subscribers of each room and
        // ending with the last of them.
        let same_room = |n: usize, m: &usize| m % args.rooms == n % args.rooms;
        while subscribers.len() < target {
            let n = subscribers.len();
            let index = (start..n).filter(|m| same_room(n, m)).count();
            let count = (start..target).filter(|m| same_room(n, m)).count();
            let role = Role::Subscribe {
                n: n / args.rooms,
                follow: None,
                probe: is_probe(index, count, args.probes),
            };
            subscribers.extend(start_peer(args, n % args.rooms, role).await?);
            if subscribers.len() == n {
                return Err(format!("subscriber {n} could not join"));
            }
        }
        for peer in &subscribers {
            peer.wait_for(Duration::from_secs(10), |s| s.connected)
                .await;
        }
        // Let new subscribers reach their first keyframe before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = snapshot(&subscribers);
        let cpu_before = pid.and_then(procfs::cpu);
        let start = Instant::now();
        tokio::time::sleep(window).await;
        let cpu_pct = match (cpu_before, pid.and_then(procfs::cpu)) {
            (Some(a), Some(b)) => Some(procfs::cpu_pct(a, b)),
            _ => None,
        };
        let after = snapshot(&subscribers);
        let (mut received, mut lost, mut latencies) = (0, 0, Vec::new());
        for ((peer, b), a) in subscribers.iter().zip(&before).zip(&after) {
            received += a.0 - b.0;
            lost += a.1.saturating_sub(b.1);
            peer.with_state(|s| {
                latencies.extend(
                    s.latencies_us[b.2..a.2]
                        .iter()
                        .map(|us| f64::from(*us) / 1000.0),
                );
            });
        }
        let step = Step {
            subscribers: subscribers.len(),
            loss_pct: loss_pct(received, lost),
            latency_p99_ms: Spread::of(&mut latencies).p99,
            cpu_pct,
            ok: false,
        };
        let ok = step.loss_pct <= MAX_LOSS_PCT
            && step.latency_p99_ms <= MAX_P99_MS
            && step.cpu_pct.is_none_or(|c| c <= cpu_limit_pct);
        let step = Step { ok, ..step };
        println!(
            "{:>6} subscribers  loss {:.3} %  p99 {:.1} ms  server CPU {}  {}  ({:.0} s)",
            step.subscribers,
            step.loss_pct,
            step.latency_p99_ms,
            step.cpu_pct.map_or("?".into(), |c| format!("{c:.0} %")),
            if ok { "ok" } else { "over the limit" },
            start.elapsed().as_secs_f64(),
        );
        steps.push(step);
        if !ok {
            break;
        }
    }
    for peer in publishers.into_iter().chain(subscribers) {
        let _ = peer.delete().await;
    }
    let capacity_subscribers = steps
        .iter()
        .take_while(|s| s.ok)
        .last()
        .map_or(0, |s| s.subscribers);
    Ok(Capacity {
        capacity_subscribers,
        cpu_limit_pct,
        steps,
    })
}
