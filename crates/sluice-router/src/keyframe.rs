//! Merging and throttling of keyframe requests towards a publisher.
//!
//! Many viewers losing a picture at once (or many joining at once) must not
//! turn into a storm of PLIs at the publisher: each costs a large frame.
//! While a request for a layer is unanswered, later ones for that layer are
//! merged into it (and it is repeated only after [`RETRY_AFTER`], in case
//! it was lost); once its keyframe has arrived, the next request may go out
//! after a short minimum interval, so a viewer joining just after a
//! keyframe does not wait for the next periodic one. Deferred requests go
//! out with the publication's own packets, so no timer is needed.
//!
//! The minimum interval holds across the layers of a publication: a
//! browser publisher ignores any keyframe request that comes within 300 ms
//! of the last one it honoured, whatever its layer (libwebrtc's
//! `EncoderRtcpFeedback`), so a request sent sooner would be lost and only
//! repeated after [`RETRY_AFTER`].

use std::time::{Duration, Instant};

/// An unanswered request is repeated after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Keyframe request throttle of one publication, all its layers.
#[derive(Debug, Clone)]
pub struct KeyframeThrottle {
    min_interval: Duration,
    /// When the last request for any layer went out.
    last_sent: Option<Instant>,
    layers: Vec<LayerRequests>,
}

/// The requests of one layer.
#[derive(Debug, Clone, Copy, Default)]
struct LayerRequests {
    /// When the last request for this layer went out.
    last_sent: Option<Instant>,
    /// A request went out and no keyframe has arrived since.
    outstanding: bool,
    /// Someone asked, and no request covering it has gone out yet.
    pending: bool,
}

impl KeyframeThrottle {
    /// A throttle for `layers` layers that sends at most one request per
    /// `min_interval` (for all layers together), and while one is
    /// unanswered at most one per [`RETRY_AFTER`] for its layer.
    pub fn new(min_interval: Duration, layers: usize) -> Self {
        KeyframeThrottle {
            min_interval,
            last_sent: None,
            layers: vec![LayerRequests::default(); layers],
        }
    }

    /// Someone wants a keyframe of `layer`. Returns `true` when a request
    /// must be sent upstream now; otherwise it is merged into a pending
    /// one.
    pub fn request(&mut self, layer: usize, now: Instant) -> bool {
        let Some(l) = self.layers.get_mut(layer) else {
            return false;
        };
        l.pending = !l.outstanding
            // The keyframe already asked for will answer this one too,
            // unless that request was lost: `poll` repeats it then.
            || l
                .last_sent
                .is_some_and(|t| now.saturating_duration_since(t) >= RETRY_AFTER);
        self.poll(layer, now)
    }

    /// Returns `true` when a deferred request for `layer` is due now.
    pub fn poll(&mut self, layer: usize, now: Instant) -> bool {
        let Some(l) = self.layers.get_mut(layer) else {
            return false;
        };
        if !l.pending {
            return false;
        }
        let since = |t: Option<Instant>, wait: Duration| {
            t.is_none_or(|t| now.saturating_duration_since(t) >= wait)
        };
        let due = since(self.last_sent, self.min_interval)
            && (!l.outstanding || since(l.last_sent, RETRY_AFTER));
        if due {
            l.pending = false;
            l.outstanding = true;
            l.last_sent = Some(now);
            self.last_sent = Some(now);
        }
        due
    }

    /// Nobody waits for a keyframe of `layer` any more (the viewers that
    /// asked started on a kept one): a request not sent yet is dropped,
    /// one already sent stays unanswered until its keyframe comes.
    pub fn cancel(&mut self, layer: usize) {
        if let Some(l) = self.layers.get_mut(layer) {
            l.pending = false;
        }
    }

    /// A keyframe of `layer` arrived: every request for it made so far is
    /// answered.
    pub fn on_keyframe(&mut self, layer: usize) {
        if let Some(l) = self.layers.get_mut(layer) {
            l.pending = false;
            l.outstanding = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn requests_merge_while_one_is_unanswered() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(300), 1);
        assert!(k.request(0, t0));
        // Ten viewers ask before the keyframe comes: nothing more goes out.
        for i in 1..=10 {
            assert!(!k.request(0, t0 + MS(i * 10)));
        }
        assert!(!k.poll(0, t0 + MS(500)));
        k.on_keyframe(0);
        assert!(!k.poll(0, t0 + MS(600)), "the keyframe answered them all");
    }

    #[test]
    fn a_cancelled_request_does_not_go_out() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(300), 1);
        assert!(k.request(0, t0));
        k.on_keyframe(0);
        assert!(!k.request(0, t0 + MS(50)), "deferred");
        k.cancel(0);
        assert!(!k.poll(0, t0 + MS(400)), "nobody waits for it");
        assert!(k.request(0, t0 + MS(500)), "a new one goes out");
    }

    #[test]
    fn an_unanswered_request_is_repeated_after_a_second() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(300), 1);
        assert!(k.request(0, t0));
        assert!(!k.request(0, t0 + MS(900)));
        assert!(k.request(0, t0 + RETRY_AFTER), "lost request repeated");
        assert!(!k.poll(0, t0 + RETRY_AFTER + MS(10)));
    }

    #[test]
    fn after_a_keyframe_the_next_request_waits_only_the_minimum_interval() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(300), 1);
        assert!(k.request(0, t0));
        k.on_keyframe(0);
        // A viewer joins 50 ms later: deferred to 300 ms after the last request.
        assert!(!k.request(0, t0 + MS(50)));
        assert!(!k.poll(0, t0 + MS(250)));
        assert!(k.poll(0, t0 + MS(300)));
        k.on_keyframe(0);
        assert!(k.request(0, t0 + MS(700)), "long after: at once");
    }

    #[test]
    fn the_interval_holds_across_layers_and_each_layer_is_answered_alone() {
        let t0 = Instant::now();
        let mut k = KeyframeThrottle::new(MS(300), 3);
        assert!(k.request(2, t0));
        // Another layer's request within the interval waits for it (a
        // browser would ignore it), then goes.
        assert!(!k.request(0, t0 + MS(100)));
        assert!(!k.poll(0, t0 + MS(200)));
        assert!(k.poll(0, t0 + MS(300)));
        // Layer 0's keyframe does not answer layer 2's request.
        k.on_keyframe(0);
        assert!(!k.request(2, t0 + MS(400)), "still outstanding");
        assert!(k.request(2, t0 + RETRY_AFTER), "repeated");
        assert!(!k.request(7, t0), "no such layer");
    }
}
