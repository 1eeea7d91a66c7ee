//! The server's own forwarding delay: how long a received packet stays in
//! the server (its socket's queue included) before it is sent on, read
//! from the
//! `sluice_forward_delay_seconds` histogram at `/metrics`. Unlike the
//! latency the probes measure, it leaves out the tester's own delays.

use crate::report::Percentiles;

const METRIC: &str = "sluice_forward_delay_seconds_bucket{le=\"";

/// Cumulative histogram buckets: upper bound (seconds) and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(Vec<(f64, u64)>);

/// Read the histogram from the server at `url` (`None` if unreachable or
/// absent).
pub async fn scrape(url: &str) -> Option<Buckets> {
    let text = reqwest::get(format!("{}/metrics", url.trim_end_matches('/')))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let buckets = parse(&text);
    (!buckets.0.is_empty()).then_some(buckets)
}

/// The forward-delay buckets of a Prometheus text exposition.
pub fn parse(text: &str) -> Buckets {
    Buckets(
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(METRIC)?;
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// p50 and p99 in milliseconds of what was observed between `start` and
/// `end`, interpolated within buckets (the last finite bound stands for
/// anything above it). `None` when nothing was observed.
pub fn percentiles(start: &Buckets, end: &Buckets) -> Option<Percentiles> {
    let counts: Vec<(f64, u64)> = end
        .0
        .iter()
        .map(|&(le, n)| {
            let before = start.0.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(before))
        })
        .collect();
    let total = counts.last()?.1;
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(le, n) in &counts {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return lower;
                }
                let share = (rank - below as f64) / (n - below).max(1) as f64;
                return lower + (le - lower) * share;
            }
            (lower, below) = (le, n);
        }
        lower
    };
    Some(Percentiles {
        p50: at(0.50) * 1000.0,
        p99: at(0.99) * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_window() {
        let start = parse(
            "sluice_forward_delay_seconds_bucket{le=\"0.001\"} 10\n\
             sluice_forward_delay_seconds_bucket{le=\"0.002\"} 10\n\
             sluice_forward_delay_seconds_bucket{le=\"+Inf\"} 10\n",
        );
        // In the window: 50 at most 1 ms, 49 in (1, 2] ms, 1 above 2 ms.
        let end = parse(
            "# HELP sluice_forward_delay_seconds ...\n\
             sluice_forward_delay_seconds_bucket{le=\"0.001\"} 60\n\
             sluice_forward_delay_seconds_bucket{le=\"0.002\"} 109\n\
             sluice_forward_delay_seconds_bucket{le=\"+Inf\"} 110\n\
             sluice_forward_delay_seconds_count 110\n",
        );
        let p = percentiles(&start, &end).unwrap();
        assert!((p.p50 - 1.0).abs() < 1e-9, "{p:?}");
        assert!((p.p99 - 2.0).abs() < 1e-9, "{p:?}");
        assert_eq!(percentiles(&end, &end), None);
        assert_eq!(parse("sluice_other 1\n"), Buckets::default());
    }
}
