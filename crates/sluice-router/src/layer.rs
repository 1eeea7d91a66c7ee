//! Simulcast layers of one video publication: which ones are alive and how
//! they rank by quality.

use std::time::{Duration, Instant};

/// A layer that sent nothing for this long counts as inactive.
const INACTIVE_AFTER: Duration = Duration::from_millis(1500);

/// Bitrates are measured over windows of this length.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// One simulcast layer (or the only stream of a plain publication).
#[derive(Debug, Clone)]
struct Layer {
    rid: Option<String>,
    rank: u8,
    last_packet: Option<Instant>,
    window_start: Option<Instant>,
    window_bytes: u64,
    bitrate_bps: u64,
}

/// What the admin API shows of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The rid, for simulcast layers.
    pub rid: Option<String>,
    /// Whether packets arrived recently.
    pub active: bool,
    /// Payload bitrate over the last full second, bits per second.
    pub bitrate_bps: u64,
}

/// Which layer of a simulcast publication a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerChoice {
    /// The best layer the publisher sends.
    #[default]
    Auto,
    /// The best active layer of at most this quality (0 low, 1 medium,
    /// 2 high); the lowest active layer when none is that low.
    AtMost(u8),
}

impl std::str::FromStr for LayerChoice {
    type Err = String;

    /// `auto`, or a quality by any of the usual rid names: `q`/`l`/`low`,
    /// `h`/`m`/`mid`/`medium`, `f`/`hi`/`high`/`full` (case-insensitive).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name.eq_ignore_ascii_case("auto") {
            return Ok(LayerChoice::Auto);
        }
        named_rank(name).map(LayerChoice::AtMost).ok_or_else(|| {
            format!("unknown layer {name:?}: use auto, q (low), h (medium) or f (high)")
        })
    }
}

/// The layers of one publication, indexed as the publisher declared them.
#[derive(Debug, Clone)]
pub struct Layers {
    layers: Vec<Layer>,
}

impl Layers {
    /// Layers named by their rids (`[None]`, or no rids at all, for a
    /// publication without simulcast).
    pub fn new(rids: &[Option<String>]) -> Self {
        let plain = [None];
        let rids = if rids.is_empty() { &plain[..] } else { rids };
        Layers {
            layers: rids
                .iter()
                .enumerate()
                .map(|(i, rid)| Layer {
                    rid: rid.clone(),
                    rank: rank(rid.as_deref(), i),
                    last_packet: None,
                    window_start: None,
                    window_bytes: 0,
                    bitrate_bps: 0,
                })
                .collect(),
        }
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the publication has no layers (never true: a plain stream is
    /// one layer).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Record a packet of `bytes` on `layer`. Returns `true` when the layer
    /// just became active, which may change the best layer.
    pub fn on_packet(&mut self, layer: u8, bytes: usize, now: Instant) -> bool {
        let Some(l) = self.layers.get_mut(usize::from(layer)) else {
            return false;
        };
        let was_active = is_active(l, now);
        l.last_packet = Some(now);
        let start = *l.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= RATE_WINDOW {
            l.bitrate_bps = l.window_bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            l.window_start = Some(now);
            l.window_bytes = 0;
        }
        l.window_bytes += bytes as u64;
        !was_active
    }

    /// The layer to forward at `now`: among the active layers that
    /// `choice` allows, the best one whose measured bitrate fits in
    /// `budget_bps` (the subscriber's share of its bandwidth estimate;
    /// `None` is no limit). The `current` layer may use up to 1/8 more than
    /// the budget, so an estimate hovering at a layer's rate does not make
    /// the subscriber flap. When nothing fits, the lowest allowed layer;
    /// when `choice` allows none, the lowest active one.
    pub fn choose(
        &self,
        choice: LayerChoice,
        budget_bps: Option<u64>,
        current: Option<u8>,
        now: Instant,
    ) -> Option<u8> {
        let max = match choice {
            LayerChoice::Auto => u8::MAX,
            LayerChoice::AtMost(max) => max,
        };
        let active = || (0..self.layers.len()).filter(|&i| is_active(&self.layers[i], now));
        let allowed = || active().filter(|&i| self.layers[i].rank <= max);
        let fits = |i: usize| {
            budget_bps.is_none_or(|budget| {
                let slack = if current == Some(i as u8) {
                    budget / 8
                } else {
                    0
                };
                self.layers[i].bitrate_bps <= budget + slack
            })
        };
        let rank = |&i: &usize| self.layers[i].rank;
        allowed()
            .filter(|&i| fits(i))
            .max_by_key(rank)
            .or_else(|| allowed().min_by_key(rank))
            .or_else(|| active().min_by_key(rank))
            .map(|i| i as u8)
    }

    /// The measured payload bitrate of `layer`, bits per second.
    pub fn bitrate_bps(&self, layer: u8) -> u64 {
        self.layers
            .get(usize::from(layer))
            .map_or(0, |l| l.bitrate_bps)
    }

    /// Each layer's rid, activity and bitrate at `now`.
    pub fn info(&self, now: Instant) -> Vec<LayerInfo> {
        self.layers
            .iter()
            .map(|l| LayerInfo {
                rid: l.rid.clone(),
                active: is_active(l, now),
                bitrate_bps: if is_active(l, now) { l.bitrate_bps } else { 0 },
            })
            .collect()
    }
}

fn is_active(layer: &Layer, now: Instant) -> bool {
    layer
        .last_packet
        .is_some_and(|t| now.saturating_duration_since(t) < INACTIVE_AFTER)
}

/// Quality rank of a layer from its rid, following the names browsers and
/// SFUs use (q/h/f, l/m/h, low/mid/high, 0/1/2); unknown names rank by the
/// order they were declared in.
fn rank(rid: Option<&str>, declared_index: usize) -> u8 {
    match rid {
        Some(r) => named_rank(r).unwrap_or(10 + declared_index as u8),
        None => 0,
    }
}

/// The quality rank a layer name stands for, if it is a known one.
fn named_rank(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "q" | "l" | "low" | "0" => Some(0),
        "h" | "m" | "mid" | "medium" | "1" => Some(1),
        "f" | "hi" | "high" | "full" | "2" => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_layer_follows_activity_and_names() {
        let t0 = Instant::now();
        let rids = ["f", "q", "h"].map(|r| Some(r.to_string()));
        let mut l = Layers::new(&rids);
        assert_eq!(l.choose(LayerChoice::Auto, None, None, t0), None);
        assert!(l.on_packet(1, 100, t0));
        assert!(!l.on_packet(1, 100, t0));
        assert_eq!(l.choose(LayerChoice::Auto, None, None, t0), Some(1));
        l.on_packet(2, 100, t0);
        assert_eq!(l.choose(LayerChoice::Auto, None, None, t0), Some(2));
        l.on_packet(0, 100, t0);
        assert_eq!(
            l.choose(LayerChoice::Auto, None, None, t0),
            Some(0),
            "f ranks highest"
        );
        // Only q keeps sending: after the inactivity window it is the best.
        let t1 = t0 + Duration::from_secs(2);
        l.on_packet(1, 100, t1);
        assert_eq!(l.choose(LayerChoice::Auto, None, None, t1), Some(1));
        assert!(!l.on_packet(7, 100, t1), "unknown layer index is ignored");
    }

    #[test]
    fn choices_pick_the_best_layer_at_most_that_good() {
        let t0 = Instant::now();
        let rids = ["q", "h", "f"].map(|r| Some(r.to_string()));
        let mut l = Layers::new(&rids);
        let [auto, low, mid, high] = ["auto", "q", "MEDIUM", "f"].map(|n| n.parse().unwrap());
        assert_eq!(l.choose(low, None, None, t0), None, "nothing active yet");
        for layer in 0..3 {
            l.on_packet(layer, 100, t0);
        }
        assert_eq!(l.choose(auto, None, None, t0), Some(2));
        assert_eq!(l.choose(low, None, None, t0), Some(0));
        assert_eq!(l.choose(mid, None, None, t0), Some(1));
        assert_eq!(l.choose(high, None, None, t0), Some(2));
        // Only f keeps sending: everyone gets f, the lowest that is left.
        let t1 = t0 + Duration::from_secs(2);
        l.on_packet(2, 100, t1);
        assert_eq!(l.choose(low, None, None, t1), Some(2));
        assert_eq!(l.choose(mid, None, None, t1), Some(2));
        // A plain publication has one layer for every choice.
        let mut plain = Layers::new(&[None]);
        plain.on_packet(0, 100, t0);
        assert_eq!(plain.choose(high, None, None, t0), Some(0));
        assert_eq!(plain.choose(low, None, None, t0), Some(0));
        assert!(
            "x".parse::<LayerChoice>()
                .unwrap_err()
                .contains("unknown layer")
        );
    }

    #[test]
    fn a_budget_caps_the_layer_by_its_measured_bitrate() {
        let t0 = Instant::now();
        let rids = ["q", "h", "f"].map(|r| Some(r.to_string()));
        let mut l = Layers::new(&rids);
        // One second of q at 150, h at 600 and f at 2000 kbit/s.
        for ms in (0..=1000u64).step_by(20) {
            let at = t0 + Duration::from_millis(ms);
            for (layer, bytes) in [(0u8, 375usize), (1, 1500), (2, 5000)] {
                l.on_packet(layer, bytes, at);
            }
        }
        let now = t0 + Duration::from_millis(1000);
        assert_eq!(l.bitrate_bps(2), 2_000_000);
        let auto = LayerChoice::Auto;
        assert_eq!(l.choose(auto, Some(5_000_000), None, now), Some(2));
        assert_eq!(l.choose(auto, Some(1_000_000), None, now), Some(1));
        assert_eq!(l.choose(auto, Some(300_000), None, now), Some(0));
        assert_eq!(
            l.choose(auto, Some(10_000), None, now),
            Some(0),
            "the floor"
        );
        // Slightly under f's rate: a viewer on f stays, one on h does not
        // move up.
        assert_eq!(l.choose(auto, Some(1_900_000), Some(2), now), Some(2));
        assert_eq!(l.choose(auto, Some(1_900_000), Some(1), now), Some(1));
        // A choice still caps a large budget.
        let low = LayerChoice::AtMost(0);
        assert_eq!(l.choose(low, Some(5_000_000), None, now), Some(0));
    }

    #[test]
    fn bitrate_is_measured_per_second() {
        let t0 = Instant::now();
        let mut l = Layers::new(&[None]);
        // 100 packets of 1000 bytes over one second: 800 kbit/s.
        for i in 0..=100u64 {
            l.on_packet(0, 1000, t0 + Duration::from_millis(i * 10));
        }
        let info = l.info(t0 + Duration::from_millis(1000));
        assert_eq!(info.len(), 1);
        assert!(info[0].active && info[0].rid.is_none());
        assert_eq!(info[0].bitrate_bps, 800_000);
        assert_eq!(
            l.info(t0 + Duration::from_secs(5))[0].bitrate_bps,
            0,
            "idle layers read 0"
        );
    }
}
