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
//! after a hold, which doubles each time growing ends in congestion again
//! within a minute, so a layer the link cannot carry is tried less and
//! less often; a failed try falls back no lower than the estimate it grew
//! from, which the path carried cleanly through the hold (if the path
//! narrowed meanwhile, the next report lowers it further). Reports of one
//! congestion keep coming while the viewer
//! waits for its new layer's keyframe and the link's queue drains: for
//! [`SETTLE`] after a decrease they lower nothing (they tell of the old
//! layer), and they never count as a failed try.
//! Before the first congestion there is no estimate: the viewer gets the
//! best layer, as without estimation.

use std::time::{Duration, Instant};

/// Loss above which the path is congested.
pub const CONGESTED: f64 = 0.10;
/// Loss below which the estimate may grow.
pub const CLEAN: f64 = 0.02;
/// How fast the estimate grows on a clean path.
pub const GROWTH_PER_SECOND: f64 = 1.05;
/// After a decrease, how long reports of loss are taken for the old
/// layer's and lower nothing more.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The share of what got through that the estimate falls to on congestion.
const BACKOFF: f64 = 0.9;
/// The first hold after a congestion.
const FIRST_HOLD: Duration = Duration::from_secs(8);
/// The longest hold.
const MAX_HOLD: Duration = Duration::from_secs(128);
/// A congestion after growth, within this long of the previous one,
/// doubles the hold.
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
    last_decrease: Option<Instant>,
    /// The estimate the last decrease set: where growth started from.
    base: Option<f64>,
    hold: Duration,
    /// The estimate grew since the last congestion (a try of more).
    grown: bool,
}

impl Default for LossEstimator {
    fn default() -> Self {
        LossEstimator {
            estimate: None,
            last_report: None,
            last_congestion: None,
            last_decrease: None,
            base: None,
            hold: FIRST_HOLD,
            grown: false,
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
            let settling = !self.grown
                && self
                    .last_decrease
                    .is_some_and(|t| now.saturating_duration_since(t) < SETTLE);
            if !settling {
                let mut through = sent_bps as f64 * (1.0 - lost) * BACKOFF;
                if self.grown {
                    // A failed try: back to what carried cleanly before it.
                    through = through.max(self.base.unwrap_or(0.0));
                }
                let next = self.estimate.map_or(through, |e| e.min(through));
                self.estimate = Some(next);
                self.base = Some(next);
                self.last_decrease = Some(now);
            }
            let recent = self
                .last_congestion
                .is_some_and(|t| now.saturating_duration_since(t) < REPEAT_WITHIN);
            if !recent {
                self.hold = FIRST_HOLD;
            } else if self.grown {
                self.hold = (self.hold * 2).min(MAX_HOLD);
            }
            self.grown = false;
            self.last_congestion = Some(now);
        } else if lost < CLEAN {
            let held = self
                .last_congestion
                .is_some_and(|t| now.saturating_duration_since(t) < self.hold);
            if let Some(e) = self.estimate.as_mut()
                && !held
            {
                *e = (*e * GROWTH_PER_SECOND.powf(since.as_secs_f64())).min(MAX_BPS);
                self.grown = true;
            }
        }
        self.estimate().filter(|_| self.estimate() != before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const HOLD: u64 = FIRST_HOLD.as_secs();

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
        assert_eq!(l.on_report(0.05, 300_000, t0 + S(3)), None);
        assert_eq!(l.estimate(), Some(360_000));
    }

    #[test]
    fn a_clean_path_grows_the_estimate_after_a_hold_that_doubles() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        let start = l.on_report(0.5, 1_000_000, t0).unwrap();
        assert_eq!(start, 450_000);
        for s in 1..HOLD {
            assert_eq!(l.on_report(0.0, 150_000, t0 + S(s)), None, "held");
        }
        let grown = l.on_report(0.0, 150_000, t0 + S(HOLD)).unwrap() as f64;
        let expected = start as f64 * GROWTH_PER_SECOND;
        assert!((grown - expected).abs() < 2.0, "{grown} vs {expected}");
        // It reaches the layer that failed, and fails again: back to where
        // it grew from (not to what got through the burst), held twice as
        // long.
        let t1 = t0 + S(HOLD + 10);
        assert_eq!(l.on_report(0.8, 1_000_000, t1), Some(start));
        assert_eq!(l.on_report(0.0, 150_000, t1 + S(2 * HOLD - 1)), None);
        assert!(l.on_report(0.0, 150_000, t1 + S(2 * HOLD)).unwrap() > start);
    }

    #[test]
    fn the_reports_of_one_congestion_settle_and_do_not_lengthen_the_hold() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        // Three reports of loss while the viewer waits for its new layer:
        // the second tells of the old layer and lowers nothing; the third,
        // after the settling time, does.
        assert_eq!(l.on_report(0.3, 700_000, t0), Some(441_000));
        assert_eq!(l.on_report(0.6, 800_000, t0 + S(1)), None);
        assert_eq!(l.on_report(0.15, 270_000, t0 + S(2)), Some(206_550));
        // Clean from then on: held the first hold from the last report of
        // loss, then growing.
        assert_eq!(l.on_report(0.0, 150_000, t0 + S(1 + HOLD)), None);
        assert!(l.on_report(0.0, 150_000, t0 + S(2 + HOLD)).is_some());
    }

    #[test]
    fn a_path_that_narrows_after_a_failed_try_lowers_the_estimate_further() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        l.on_report(0.5, 1_000_000, t0);
        assert!(l.on_report(0.0, 500_000, t0 + S(HOLD + 1)).is_some());
        // The try fails: back to 450,000...
        let failed = t0 + S(HOLD + 2);
        assert_eq!(l.on_report(0.9, 1_000_000, failed), Some(450_000));
        // ...but the path carries less than that now.
        assert_eq!(l.on_report(0.5, 450_000, failed + S(1)), None, "settling");
        assert_eq!(l.on_report(0.5, 450_000, failed + S(3)), Some(202_500));
    }

    #[test]
    fn growth_counts_at_most_two_seconds_between_reports() {
        let t0 = Instant::now();
        let mut l = LossEstimator::default();
        l.on_report(0.5, 1_000_000, t0);
        l.on_report(0.0, 150_000, t0 + S(HOLD));
        let before = l.on_report(0.0, 150_000, t0 + S(HOLD + 1)).unwrap() as f64;
        let after = l.on_report(0.0, 150_000, t0 + S(HOLD + 61)).unwrap() as f64;
        let expected = before * GROWTH_PER_SECOND.powi(2);
        assert!((after - expected).abs() < 2.0, "{after} vs {expected}");
    }
}
