//! A viewer's bandwidth estimate from the loss its receiver reports show,
//! for viewers on the direct egress (which reads no transport-wide
//! feedback): enough to move a viewer behind a narrow link to a simulcast
//! layer its link carries, and back up when the link allows.
//!
//! This is the loss-based half of Google congestion control
//! (draft-ietf-rmcat-gcc-02, section 6), with two changes for an SFU that
//! can only pick among a publisher's layers. On congestion (over
//! [`CONGESTED`] of the packets lost) the estimate falls to a little below
//! what got through, rather than to a fraction of the old estimate, so one
//! report takes a viewer to a layer that fits. And it grows again (by
//! [`GROWTH_PER_SECOND`] while reports show under [`CLEAN`] loss) only
//! after a hold that doubles with each congestion that follows soon after
//! the last, so a layer the link cannot carry is tried less and less often.
//! Before the first congestion there is no estimate: the viewer gets the
//! best layer, as without estimation.

use std::time::{Duration, Instant};

/// Loss above which the path is congested.
pub const CONGESTED: f64 = 0.10;
/// Loss below which the estimate may grow.
pub const CLEAN: f64 = 0.02;
/// How fast the estimate grows on a clean path.
pub const GROWTH_PER_SECOND: f64 = 1.08;
/// The share of what got through that the estimate falls to on congestion.
const BACKOFF: f64 = 0.9;
/// The first hold after a congestion.
const FIRST_HOLD: Duration = Duration::from_secs(4);
/// The longest hold.
const MAX_HOLD: Duration = Duration::from_secs(64);
/// A congestion within this long of the previous one doubles the hold.
const REPEAT_WITHIN: Duration = Duration::from_secs(60);
/// The estimate never grows beyond this, bits per second.
const MAX_BPS: f64 = 50_000_000.0;
/// Longest gap between reports that growth is counted over.
const MAX_GAP: Duration = Duration::from_secs(2);

/// The loss-based estimate of one viewer's path.
#[derive(Debug, Clone)]
pub struct LossEstimator {
    /// Bits per second; `None` before the first congestion.
    estimate: Option<f64>,
    last_report: Option<Instant>,
    last_congestion: Option<Instant>,
    hold: Duration,
}

impl Default for LossEstimator {
    fn default() -> Self {
        LossEstimator {
            estimate: None,
            last_report: None,
            last_congestion: None,
            hold: FIRST_HOLD,
        }
    }
}

impl LossEstimator {
    /// The estimate, bits per second; `None` before the first congestion.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate.map(|e| e.round() as u64)
    }

    /// A receiver report arrived at `now`: `lost` of the packets sent
    /// since the last one were lost (0.0 to 1.0), sent at `sent_bps`.
    /// Returns the estimate, bits per second, when it changed.
    pub fn on_report(&mut self, lost: f64, sent_bps: u64, now: Instant) -> Option<u64> {
        let before = self.estimate();
        let since = self.last_report.replace(now).map_or(Duration::ZERO, |t| {
            now.saturating_duration_since(t).min(MAX_GAP)
        });
        if lost > CONGESTED {
            let through = sent_bps as f64 * (1.0 - lost) * BACKOFF;
            self.estimate = Some(self.estimate.map_or(through, |e| e.min(through)));
            let repeated = self
                .last_congestion
                .is_some_and(|t| now.saturating_duration_since(t) < REPEAT_WITHIN);
            self.hold = if repeated {
                (self.hold * 2).min(MAX_HOLD)
            } else {
                FIRST_HOLD
            };
            self.last_congestion = Some(now);
        } else if lost < CLEAN {
            let held = self
                .last_congestion
                .is_some_and(|t| now.saturating_duration_since(t) < self.hold);
            if let Some(e) = self.estimate.as_mut()
                && !held
            {
                *e = (*e * GROWTH_PER_SECOND.powf(since.as_secs_f64())).min(MAX_BPS);
            }
        }
        self.estimate().filter(|_| self.estimate() != before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn no_estimate_until_the_path_is_congested() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        assert_eq!(l.on_report(0.0, 2_000_000, t0), None);
        assert_eq!(l.on_report(0.05, 2_000_000, t0 + S(1)), None);
    }

    #[test]
    fn congestion_takes_the_estimate_below_what_got_through() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        // 2 Mbit/s into a 400 kbit/s link: 80 % lost.
        assert_eq!(l.on_report(0.8, 2_000_000, t0), Some(360_000));
        // Still on the old layer for a moment: no lower than that.
        assert_eq!(l.on_report(0.8, 2_000_000, t0 + S(1)), None);
        // Moderate loss holds the estimate.
        assert_eq!(l.on_report(0.05, 300_000, t0 + S(2)), None);
        assert_eq!(l.estimate(), Some(360_000));
    }

    #[test]
    fn a_clean_path_grows_the_estimate_after_a_hold_that_doubles() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        l.on_report(0.5, 1_000_000, t0);
        let start = 450_000;
        // Held for the first 4 s.
        for s in 1..4 {
            assert_eq!(l.on_report(0.0, 150_000, t0 + S(s)), None);
        }
        assert_eq!(l.estimate(), Some(start));
        // Then 8 % a second.
        let grown = l.on_report(0.0, 150_000, t0 + S(4)).unwrap();
        assert!(
            (start * 108 / 100..start * 109 / 100).contains(&grown),
            "{grown}"
        );
        // It reaches the layer that failed, and fails again: held for 8 s.
        let t1 = t0 + S(20);
        l.on_report(0.5, 1_000_000, t1);
        assert_eq!(l.on_report(0.0, 150_000, t1 + S(7)), None);
        let held = l.estimate().unwrap();
        assert_eq!(held, 450_000);
        assert_eq!(l.on_report(0.0, 150_000, t1 + S(7) + S(1) / 2), None);
        assert!(l.on_report(0.0, 150_000, t1 + S(9)).unwrap() > held);
    }

    #[test]
    fn growth_counts_at_most_two_seconds_between_reports() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        l.on_report(0.5, 1_000_000, t0);
        l.on_report(0.0, 150_000, t0 + S(4));
        let before = l.on_report(0.0, 150_000, t0 + S(5)).unwrap() as f64;
        let after = l.on_report(0.0, 150_000, t0 + S(65)).unwrap() as f64;
        let expected = before * GROWTH_PER_SECOND.powi(2);
        assert!((after - expected).abs() < 2.0, "{after} vs {expected}");
    }
}
