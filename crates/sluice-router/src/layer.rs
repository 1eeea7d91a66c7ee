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

    /// The highest-quality layer that is active at `now`.
    pub fn best_active(&self, now: Instant) -> Option<u8> {
        (0..self.layers.len())
            .filter(|&i| is_active(&self.layers[i], now))
            .max_by_key(|&i| self.layers[i].rank)
            .map(|i| i as u8)
    }

    /// The layer `choice` asks for among those active at `now`.
    pub fn choose(&self, choice: LayerChoice, now: Instant) -> Option<u8> {
        let LayerChoice::AtMost(max) = choice else {
            return self.best_active(now);
        };
        let active = || (0..self.layers.len()).filter(|&i| is_active(&self.layers[i], now));
        active()
            .filter(|&i| self.layers[i].rank <= max)
            .max_by_key(|&i| self.layers[i].rank)
            .or_else(|| active().min_by_key(|&i| self.layers[i].rank))
            .map(|i| i as u8)
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
        assert_eq!(l.best_active(t0), None);
        assert!(l.on_packet(1, 100, t0));
        assert!(!l.on_packet(1, 100, t0));
        assert_eq!(l.best_active(t0), Some(1));
        l.on_packet(2, 100, t0);
        assert_eq!(l.best_active(t0), Some(2));
        l.on_packet(0, 100, t0);
        assert_eq!(l.best_active(t0), Some(0), "f ranks highest");
        // Only q keeps sending: after the inactivity window it is the best.
        let t1 = t0 + Duration::from_secs(2);
        l.on_packet(1, 100, t1);
        assert_eq!(l.best_active(t1), Some(1));
        assert!(!l.on_packet(7, 100, t1), "unknown layer index is ignored");
    }

    #[test]
    fn choices_pick_the_best_layer_at_most_that_good() {
        let t0 = Instant::now();
        let rids = ["q", "h", "f"].map(|r| Some(r.to_string()));
        let mut l = Layers::new(&rids);
        let [auto, low, mid, high] = ["auto", "q", "MEDIUM", "f"].map(|n| n.parse().unwrap());
        assert_eq!(l.choose(low, t0), None, "nothing active yet");
        for layer in 0..3 {
            l.on_packet(layer, 100, t0);
        }
        assert_eq!(l.choose(auto, t0), Some(2));
        assert_eq!(l.choose(low, t0), Some(0));
        assert_eq!(l.choose(mid, t0), Some(1));
        assert_eq!(l.choose(high, t0), Some(2));
        // Only f keeps sending: everyone gets f, the lowest that is left.
        let t1 = t0 + Duration::from_secs(2);
        l.on_packet(2, 100, t1);
        assert_eq!(l.choose(low, t1), Some(2));
        assert_eq!(l.choose(mid, t1), Some(2));
        // A plain publication has one layer for every choice.
        let mut plain = Layers::new(&[None]);
        plain.on_packet(0, 100, t0);
        assert_eq!(plain.choose(high, t0), Some(0));
        assert_eq!(plain.choose(low, t0), Some(0));
        assert!(
            "x".parse::<LayerChoice>()
                .unwrap_err()
                .contains("unknown layer")
        );
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
