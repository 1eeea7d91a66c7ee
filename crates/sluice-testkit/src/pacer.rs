//! A publisher's pacer, modelled on the one in libwebrtc (its
//! `PacingController`), so the server sees video arrive the way a browser
//! sends it: packets leave at a pacing rate, 2.5 times the media's bitrate,
//! but the pacer may run ahead of that rate by a burst window's worth of
//! bytes (libwebrtc's default window is 40 ms). An ordinary frame therefore
//! leaves in one burst; only a frame larger than the window allows (a big
//! keyframe) is spread out. A window of zero is the older pacer, which
//! spread every frame over 40 % of the frame interval.
//!
//! Encoders without a pacer (OBS, GStreamer, FFmpeg) send every frame as a
//! burst, which a long window also models.

use std::time::{Duration, Instant};

/// How far libwebrtc's pacer may run ahead of its rate by default (its
/// send burst interval).
pub const DEFAULT_BURST: Duration = Duration::from_millis(40);
/// Pacing rate over the media's bitrate (libwebrtc's pacing factor).
const PACING_FACTOR: f64 = 2.5;
/// Weight of the newest frame in the average frame size (about a second
/// of frames at 30 fps).
const FRAME_WEIGHT: f64 = 1.0 / 30.0;

/// When a publisher's queued packets may leave.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// How far ahead of the pacing rate sending may run.
    burst: Duration,
    /// Average bytes per frame, all layers together.
    frame_bytes: Option<f64>,
    /// Bytes per second packets leave at, on average.
    rate: f64,
    /// Bytes sent ahead of the pacing rate, as of `at`.
    debt: f64,
    at: Instant,
}

impl Pacer {
    /// A pacer that may run `burst` ahead of its rate; nothing sent yet.
    pub fn new(burst: Duration, now: Instant) -> Pacer {
        Pacer {
            burst,
            frame_bytes: None,
            rate: 0.0,
            debt: 0.0,
            at: now,
        }
    }

    /// A frame of `bytes` (all layers) was queued; frames come every
    /// `interval`. The pacing rate follows the average frame size.
    pub fn on_frame(&mut self, bytes: usize, interval: Duration) {
        let bytes = bytes as f64;
        let average = match self.frame_bytes {
            Some(average) => average + (bytes - average) * FRAME_WEIGHT,
            None => bytes,
        };
        self.frame_bytes = Some(average);
        self.rate = PACING_FACTOR * average / interval.as_secs_f64().max(1e-3);
    }

    /// When the next packet may leave: at once (a time not after the last
    /// call's) while the debt is within the burst window, else when it
    /// will have drained to it.
    pub fn next_send(&self) -> Instant {
        let allowed = self.rate * self.burst.as_secs_f64();
        if self.debt <= allowed || self.rate <= 0.0 {
            return self.at;
        }
        self.at + Duration::from_secs_f64((self.debt - allowed) / self.rate)
    }

    /// A packet of `bytes` left at `now`.
    pub fn on_sent(&mut self, bytes: usize, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.debt = (self.debt - elapsed * self.rate).max(0.0) + bytes as f64;
        self.at = now.max(self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(33);

    /// Send a frame of `packets` packets of `size` bytes as the pacer
    /// allows, starting at `start`; returns each packet's send time.
    fn send_frame(pacer: &mut Pacer, start: Instant, packets: usize, size: usize) -> Vec<Instant> {
        pacer.on_frame(packets * size, FRAME);
        (0..packets)
            .map(|_| {
                let at = pacer.next_send().max(start);
                pacer.on_sent(size, at);
                at
            })
            .collect()
    }

    #[test]
    fn an_ordinary_frame_leaves_in_one_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(DEFAULT_BURST, start);
        for frame in 0..30 {
            let at = start + FRAME * frame;
            let sent = send_frame(&mut pacer, at, 8, 1_200);
            assert!(sent.iter().all(|t| *t == at), "frame {frame}: {sent:?}");
        }
    }

    #[test]
    fn a_frame_far_above_the_average_is_spread_out() {
        let start = Instant::now();
        let mut pacer = Pacer::new(DEFAULT_BURST, start);
        for frame in 0..30 {
            send_frame(&mut pacer, start + FRAME * frame, 8, 1_200);
        }
        // A keyframe ten times the average: the window lets about three
        // frames' worth go at once (2.5 times the rate, over 40 of 33 ms),
        // the rest at the pacing rate.
        let at = start + FRAME * 30;
        let sent = send_frame(&mut pacer, at, 80, 1_200);
        let burst = sent.iter().filter(|t| **t == at).count();
        assert!((20..=35).contains(&burst), "{burst} packets in the burst");
        let last = *sent.last().unwrap() - at;
        assert!(
            last > Duration::from_millis(50) && last < Duration::from_millis(150),
            "the last packet left {last:?} after the frame"
        );
        assert!(sent.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn without_a_window_a_frame_is_spread_over_two_fifths_of_the_interval() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Duration::ZERO, start);
        let sent = send_frame(&mut pacer, start, 8, 1_200);
        let gap = sent[1] - sent[0];
        // 33 ms × 0.4 / 8 packets.
        assert!(
            gap > Duration::from_micros(1_500) && gap < Duration::from_micros(1_800),
            "{gap:?}"
        );
        assert!(
            sent.windows(2)
                .all(|w| (w[1] - w[0]).abs_diff(gap) < Duration::from_micros(2))
        );
    }
}
