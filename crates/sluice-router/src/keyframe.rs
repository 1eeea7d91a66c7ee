//! Merging and throttling of keyframe requests towards a publisher.
//!
//! Many viewers losing a picture at once (or many joining at once) must not
//! turn into a storm of PLIs at the publisher: each costs a large frame.
//! While a request is unanswered, later ones are merged into it (and it is
//! repeated only after [`RETRY_AFTER`], in case it was lost); once its
//! keyframe has arrived, the next request may go out after a short minimum
//! interval, so a viewer joining just after a keyframe does not wait for the
//! next periodic one. Deferred requests go out with the publication's own
//! packets, so no timer is needed.

use std::time::{Duration, Instant};

/// An unanswered request is repeated after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Keyframe request throttle of one publication layer.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    min_interval: Duration,
    last_sent: Option<Instant>,
    /// A request went out and no keyframe has arrived since.
    outstanding: bool,
    /// Someone asked, and no request covering it has gone out yet.
    pending: bool,
}

impl KeyframeThrottle {
    /// A throttle that sends at most one request per `min_interval`, and
    /// while one is unanswered at most one per [`RETRY_AFTER`].
    pub fn new(min_interval: Duration) -> Self {
        KeyframeThrottle {
            min_interval,
            last_sent: None,
            outstanding: false,
            pending: false,
        }
    }

    /// Someone wants a keyframe. Returns `true` when a request must be sent
    /// upstream now; otherwise it is merged into a pending one.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.outstanding {
            // The keyframe already asked for will answer this one too,
            // unless that request was lost: `poll` repeats it then.
            self.pending = self
                .last_sent
                .is_some_and(|t| now.saturating_duration_since(t) >= RETRY_AFTER);
            return self.poll(now);
        }
        self.pending = true;
        self.poll(now)
    }

    /// Returns `true` when a deferred request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if !self.pending {
            return false;
        }
        let wait = if self.outstanding {
            RETRY_AFTER
        } else {
            self.min_interval
        };
        let due = self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= wait);
        if due {
            self.pending = false;
            self.outstanding = true;
            self.last_sent = Some(now);
        }
        due
    }

    /// A keyframe arrived: every request made so far is answered.
    pub fn on_keyframe(&mut self) {
        self.pending = false;
        self.outstanding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn requests_merge_while_one_is_unanswered() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(200));
        assert!(k.request(t0));
        // Ten viewers ask before the keyframe comes: nothing more goes out.
        for i in 1..=10 {
            assert!(!k.request(t0 + MS(i * 10)));
        }
        assert!(!k.poll(t0 + MS(500)));
        k.on_keyframe();
        assert!(!k.poll(t0 + MS(600)), "the keyframe answered them all");
    }

    #[test]
    fn an_unanswered_request_is_repeated_after_a_second() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(200));
        assert!(k.request(t0));
        assert!(!k.request(t0 + MS(900)));
        assert!(k.request(t0 + RETRY_AFTER), "lost request repeated");
        assert!(!k.poll(t0 + RETRY_AFTER + MS(10)));
    }

    #[test]
    fn after_a_keyframe_the_next_request_waits_only_the_minimum_interval() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(200));
        assert!(k.request(t0));
        k.on_keyframe();
        // A viewer joins 50 ms later: deferred to 200 ms after the last request.
        assert!(!k.request(t0 + MS(50)));
        assert!(!k.poll(t0 + MS(150)));
        assert!(k.poll(t0 + MS(200)));
        k.on_keyframe();
        assert!(k.request(t0 + MS(500)), "long after: at once");
    }
}
