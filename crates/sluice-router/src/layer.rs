//! Simulcast layers of one video publication: which ones are alive and how
//! they rank by quality.

use std::time::{Duration, Instant};

/// A layer that sent nothing for this long counts as inactive.
const INACTIVE_AFTER: Duration = Duration::from_millis(1500);

/// The layers of one publication, indexed as the publisher declared them.
#[derive(Debug, Clone)]
pub struct Layers {
    ranks: Vec<u8>,
    last_packet: Vec<Option<Instant>>,
}

impl Layers {
    /// Layers named by their rids (`[None]`, or no rids at all, for a
    /// publication without simulcast).
    pub fn new(rids: &[Option<String>]) -> Self {
        let mut ranks: Vec<u8> = rids
            .iter()
            .enumerate()
            .map(|(i, rid)| rank(rid.as_deref(), i))
            .collect();
        if ranks.is_empty() {
            ranks.push(0);
        }
        Layers {
            last_packet: vec![None; ranks.len()],
            ranks,
        }
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    /// Whether the publication has no layers (never true: a plain stream is
    /// one layer).
    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    /// Record a packet on `layer`. Returns `true` when the layer just became
    /// active, which may change the best layer.
    pub fn on_packet(&mut self, layer: u8, now: Instant) -> bool {
        let Some(slot) = self.last_packet.get_mut(usize::from(layer)) else {
            return false;
        };
        let was_active = slot.is_some_and(|t| now.saturating_duration_since(t) < INACTIVE_AFTER);
        *slot = Some(now);
        !was_active
    }

    /// The highest-quality layer that is active at `now`.
    pub fn best_active(&self, now: Instant) -> Option<u8> {
        (0..self.ranks.len())
            .filter(|&i| {
                self.last_packet[i]
                    .is_some_and(|t| now.saturating_duration_since(t) < INACTIVE_AFTER)
            })
            .max_by_key(|&i| self.ranks[i])
            .map(|i| i as u8)
    }
}

/// Quality rank of a layer from its rid, following the names browsers and
/// SFUs use (q/h/f, l/m/h, low/mid/high, 0/1/2); unknown names rank by the
/// order they were declared in.
fn rank(rid: Option<&str>, declared_index: usize) -> u8 {
    let named = match rid.map(|r| r.to_ascii_lowercase()) {
        Some(r) => match r.as_str() {
            "q" | "l" | "low" | "0" => Some(0),
            "h" | "m" | "mid" | "medium" | "1" => Some(1),
            "f" | "hi" | "high" | "full" | "2" => Some(2),
            _ => None,
        },
        None => Some(0),
    };
    named.map_or(10 + declared_index as u8, |r| r)
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
        assert!(l.on_packet(1, t0));
        assert!(!l.on_packet(1, t0));
        assert_eq!(l.best_active(t0), Some(1));
        l.on_packet(2, t0);
        assert_eq!(l.best_active(t0), Some(2));
        l.on_packet(0, t0);
        assert_eq!(l.best_active(t0), Some(0), "f ranks highest");
        // Only q keeps sending: after the inactivity window it is the best.
        let t1 = t0 + Duration::from_secs(2);
        l.on_packet(1, t1);
        assert_eq!(l.best_active(t1), Some(1));
        assert!(!l.on_packet(7, t1), "unknown layer index is ignored");
    }
}
