//! Who is speaking: a per-publication judgement from the audio level each
//! audio packet carries (RFC 6464 client-to-mixer extension), read without
//! decoding anything.
//!
//! A packet louder than [`VOICE_DBOV`] counts as voice. A publication is
//! speaking while at least [`MIN_VOICED`] voiced packets (about 100 ms of
//! voice at 20 ms a packet) fall in the last [`WINDOW`]: a click is not
//! speech, and the pauses between words and sentences shorter than the
//! window do not end it. The window is kept as a ring of short buckets,
//! so a packet costs a few additions and no allocation.

use std::time::{Duration, Instant};

/// Packets at least this loud (dBov) count as voice: speech into a
/// browser's microphone reads about -20 to -40 dBov, a quiet room after
/// noise suppression under -60.
pub const VOICE_DBOV: i8 = -50;

/// Voiced packets the window must hold for a publication to be speaking.
pub const MIN_VOICED: u32 = 5;

/// Length of one bucket of the window.
const BUCKET: Duration = Duration::from_millis(200);

/// Buckets in the window.
const BUCKETS: usize = 8;

/// The span speech is judged over: a speaker stays speaking until this
/// long after the voice that made it so.
pub const WINDOW: Duration = Duration::from_millis(200 * BUCKETS as u64);

/// The voiced packets that arrived in one [`BUCKET`].
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which bucket since the detector's start this is.
    index: u64,
    /// Voiced packets.
    voiced: u32,
    /// Sum of their levels (dBov, negative).
    level_sum: i32,
}

/// The speech judgement of one audio publication.
#[derive(Debug, Clone, Default)]
pub struct SpeechDetector {
    /// The first voiced packet's arrival, which anchors the buckets.
    start: Option<Instant>,
    buckets: [Bucket; BUCKETS],
}

impl SpeechDetector {
    fn bucket_index(start: Instant, at: Instant) -> u64 {
        // Bucket 0 is never used, so a default bucket is always stale.
        (at.saturating_duration_since(start).as_millis() / BUCKET.as_millis()) as u64 + 1
    }

    /// A packet with audio level `dbov` (0 loudest, -127 silence) arrived
    /// at `at`.
    pub fn on_level(&mut self, dbov: i8, at: Instant) {
        if dbov < VOICE_DBOV {
            return;
        }
        let start = *self.start.get_or_insert(at);
        let index = Self::bucket_index(start, at);
        let bucket = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.voiced += 1;
        bucket.level_sum += i32::from(dbov);
    }

    /// The mean level (dBov) of the voiced packets in the window ending at
    /// `now`, when there are enough of them to count as speaking.
    pub fn speaking(&self, now: Instant) -> Option<i8> {
        let current = Self::bucket_index(self.start?, now);
        let oldest = current.saturating_sub(BUCKETS as u64 - 1);
        let (voiced, sum) = self
            .buckets
            .iter()
            .filter(|b| (oldest..=current).contains(&b.index))
            .fold((0u32, 0i32), |(v, s), b| (v + b.voiced, s + b.level_sum));
        (voiced >= MIN_VOICED).then(|| (sum / voiced as i32) as i8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Packets every 20 ms from `from` for `count` packets at `dbov`.
    fn talk(d: &mut SpeechDetector, from: Instant, count: u64, dbov: i8) {
        for i in 0..count {
            d.on_level(dbov, from + MS(20 * i));
        }
    }

    #[test]
    fn a_voice_makes_a_speaker_and_its_level_is_the_mean() {
        let t0 = Instant::now();
        let mut d = SpeechDetector::default();
        assert_eq!(d.speaking(t0), None);
        talk(&mut d, t0, 10, -20);
        talk(&mut d, t0 + MS(200), 10, -30);
        assert_eq!(d.speaking(t0 + MS(400)), Some(-25));
    }

    #[test]
    fn silence_and_quiet_noise_are_not_speech() {
        let t0 = Instant::now();
        let mut d = SpeechDetector::default();
        talk(&mut d, t0, 50, -127);
        talk(&mut d, t0 + MS(1000), 50, VOICE_DBOV - 1);
        assert_eq!(d.speaking(t0 + MS(2000)), None);
    }

    #[test]
    fn a_click_is_not_speech() {
        let t0 = Instant::now();
        let mut d = SpeechDetector::default();
        talk(&mut d, t0, u64::from(MIN_VOICED) - 1, -10);
        assert_eq!(d.speaking(t0 + MS(100)), None);
        d.on_level(-10, t0 + MS(100));
        assert_eq!(d.speaking(t0 + MS(100)), Some(-10));
    }

    #[test]
    fn speech_holds_through_short_pauses_and_ends_after_the_window() {
        let t0 = Instant::now();
        let mut d = SpeechDetector::default();
        talk(&mut d, t0, 10, -25);
        // A pause between sentences: still speaking.
        assert!(d.speaking(t0 + MS(900)).is_some());
        // Nothing voiced for longer than the window: done.
        assert_eq!(d.speaking(t0 + MS(200) + WINDOW), None);
        // Talking again much later counts afresh, not with stale buckets.
        let later = t0 + MS(60_000);
        talk(&mut d, later, 4, -25);
        assert_eq!(d.speaking(later + MS(80)), None);
    }

    #[test]
    fn a_level_older_than_the_first_is_taken_as_at_the_first() {
        let t0 = Instant::now() + MS(1000);
        let mut d = SpeechDetector::default();
        talk(&mut d, t0, 3, -20);
        talk(&mut d, t0 - MS(500), 2, -20);
        assert_eq!(d.speaking(t0), Some(-20));
    }
}
