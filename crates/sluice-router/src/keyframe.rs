//! Merging and throttling of keyframe requests towards a publisher.
//!
//! Many viewers losing a picture at once (or many joining at once) must not
//! turn into a storm of PLIs at the publisher: each costs a large frame. The
//! throttle lets one request through per interval and remembers that more
//! were asked for, so a deferred request goes out once the interval has
//! passed (driven by the publication's own packets, so no timer is needed).

use std::time::{Duration, Instant};

/// Keyframe request throttle of one publication layer.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    min_interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeThrottle {
    /// A throttle that sends at most one request per `min_interval`.
    pub fn new(min_interval: Duration) -> Self {
        KeyframeThrottle {
            min_interval,
            last_sent: None,
            pending: false,
        }
    }

    /// Someone wants a keyframe. Returns `true` when a request must be sent
    /// upstream now; otherwise it is merged into a pending one.
    pub fn request(&mut self, now: Instant) -> bool {
        self.pending = true;
        self.poll(now)
    }

    /// Returns `true` when a deferred request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if !self.pending {
            return false;
        }
        let due = self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval);
        if due {
            self.pending = false;
            self.last_sent = Some(now);
        }
        due
    }

    /// A keyframe arrived: every request made so far is answered.
    pub fn on_keyframe(&mut self) {
        self.pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_requests_within_the_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeyframeThrottle::new(ms(500));
        assert!(k.request(t0));
        // Ten viewers ask within the interval: nothing goes out yet.
        for i in 1..=10 {
            assert!(!k.request(t0 + ms(i * 10)));
        }
        assert!(!k.poll(t0 + ms(499)));
        // One merged request goes out when the interval has passed.
        assert!(k.poll(t0 + ms(500)));
        assert!(!k.poll(t0 + ms(1500)), "nothing left pending");
    }

    #[test]
    fn a_keyframe_answers_pending_requests() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeyframeThrottle::new(ms(500));
        assert!(k.request(t0));
        assert!(!k.request(t0 + ms(100)));
        k.on_keyframe();
        assert!(!k.poll(t0 + ms(600)));
        assert!(k.request(t0 + ms(700)));
    }
}
