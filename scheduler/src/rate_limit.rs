//! Per-client request rate limits: one token bucket per caller (user, node, or peer
//! address when unproven), so a flooding client is refused with `RESOURCE_EXHAUSTED`
//! while everyone else goes on. The table is bounded: idle full buckets are dropped first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before idle ones are swept.
const CLIENTS_MAX: usize = 65_536;

/// The limiter of one replica.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` requests per second per client, bursts up to `burst`; 0 disables.
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(per_sec).max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client` at `now`.
    ///
    /// # Errors
    /// The message to refuse the request with.
    pub fn check(&self, client: &str, now: Instant) -> Result<(), String> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= CLIENTS_MAX && !b.contains_key(client) {
            let (rate, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = b.entry(client.to_string()).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            return Err(format!(
                "rate limit: more than {} requests/s from {client}; slow down and retry",
                self.per_sec
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flooding_client_is_refused_and_others_are_not() {
        let l = RateLimiter::new(10, 20);
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(l.check("flood", t0).is_ok(), "#{i} within the burst");
        }
        let e = l.check("flood", t0).unwrap_err();
        assert!(e.contains("rate limit") && e.contains("flood"), "{e}");
        assert!(l.check("quiet", t0).is_ok());
        // 100 ms later one token (10/s) is back.
        assert!(l.check("flood", t0 + Duration::from_millis(100)).is_ok());
        assert!(l.check("flood", t0 + Duration::from_millis(100)).is_err());
        assert!(RateLimiter::new(0, 0).check("x", t0).is_ok());
    }
}
