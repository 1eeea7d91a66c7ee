//! Request-level limits: body size and POSTs per second per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use parking_lot::Mutex;

use crate::problem::Problem;

/// HTTP limits.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// Largest SDP offer or PATCH body, in bytes.
    pub max_body_bytes: usize,
    /// Session POSTs per second one client address may make (bursts of
    /// twice as many are let through).
    pub posts_per_second: f64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 64 * 1024,
            posts_per_second: 20.0,
        }
    }
}

/// Addresses remembered before idle ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// A token bucket per client address.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// `per_second` requests per second and address, bursts of twice that.
    pub fn new(per_second: f64) -> Self {
        RateLimiter {
            per_second,
            burst: (per_second * 2.0).max(1.0),
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Take one request for `client` at `now`: 429 with `Retry-After`
    /// when its bucket is empty.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Problem> {
        let mut buckets = self.buckets.lock();
        if buckets.len() > PRUNE_ABOVE {
            let idle = Duration::from_secs_f64(self.burst / self.per_second.max(0.001));
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < idle);
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / self.per_second.max(0.001)).ceil() as u64;
        Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many session requests from {client}: at most {} per second",
                self.per_second
            ),
        )
        .with_retry_after(wait.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_refills() {
        let limiter = RateLimiter::new(2.0);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(limiter.check(a, t0).is_ok());
        }
        let refused = limiter.check(a, t0).unwrap_err();
        assert_eq!(refused.status, 429);
        assert!(
            limiter.check(b, t0).is_ok(),
            "other addresses are not affected"
        );
        assert!(
            limiter.check(a, t0 + Duration::from_millis(500)).is_ok(),
            "one token per 500 ms"
        );
        assert!(limiter.check(a, t0 + Duration::from_millis(600)).is_err());
    }
}
