//! Hash maps keyed by the server's own numbers ([`SessionId`],
//! [`PublicationId`]).
//!
//! The standard library's SipHash guards against keys an attacker picks;
//! these keys are counters the server hands out, and they are looked up
//! once per forwarded packet, so a multiply is enough.
//!
//! [`SessionId`]: crate::SessionId
//! [`PublicationId`]: crate::PublicationId

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by a server-assigned number.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hashes one `u64` by Fibonacci multiplication, which spreads counters
/// over the high bits the table uses. Other input falls back to folding
/// each byte in the same way.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

/// 2^64 divided by the golden ratio, odd.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(GOLDEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;

    #[test]
    fn counters_spread_over_the_high_bits() {
        let top = |n: u64| {
            let mut h = IdHasher::default();
            h.write_u64(n);
            h.finish() >> 57
        };
        let buckets: std::collections::HashSet<u64> = (0..128).map(top).collect();
        assert!(
            buckets.len() > 64,
            "only {} of 128 top-bit buckets",
            buckets.len()
        );
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map: IdMap<SessionId, u64> = IdMap::default();
        for n in 0..1000 {
            map.insert(SessionId(n), n * 2);
        }
        assert!((0..1000).all(|n| map[&SessionId(n)] == n * 2));
        assert!(!map.contains_key(&SessionId(1000)));
    }
}
