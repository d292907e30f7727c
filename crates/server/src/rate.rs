//! Per-app rate limits with JMessage's semantics: a quota of requests per fixed window, reported
//! in `X-Rate-Limit-Limit` (the quota), `X-Rate-Limit-Remaining` and `X-Rate-Limit-Reset`
//! (seconds until the window restarts). A fixed window is what those headers describe, which a
//! token bucket (GCRA) does not.

use imreport_domain::{Clock, Millis};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window_ms: Millis,
    clock: Clock,
    /// app id → (window start, requests in it). One entry per app: bounded by the number of apps.
    windows: Mutex<HashMap<u32, (Millis, u32)>>,
}

impl RateLimiter {
    pub fn new(limit: u32, window_secs: u32, clock: Clock) -> Self {
        RateLimiter {
            limit,
            window_ms: i64::from(window_secs.max(1)) * 1000,
            clock,
            windows: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, app: u32) -> Decision {
        let now = self.clock.now_ms();
        let start = now - now.rem_euclid(self.window_ms);
        let mut windows = self.windows.lock().expect("lock");
        let entry = windows.entry(app).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        let allowed = entry.1 < self.limit;
        if allowed {
            entry.1 += 1;
        }
        let reset_ms = start + self.window_ms - now;
        Decision {
            allowed,
            limit: self.limit,
            remaining: self.limit - entry.1,
            reset_secs: (reset_ms as u64).div_ceil(1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_per_window_per_app() {
        let clock = Clock::manual(60_000);
        let r = RateLimiter::new(2, 60, clock.clone());
        assert_eq!(
            r.check(1),
            Decision {
                allowed: true,
                limit: 2,
                remaining: 1,
                reset_secs: 60
            }
        );
        assert!(r.check(1).allowed);
        clock.set(100_500);
        let d = r.check(1);
        assert_eq!((d.allowed, d.remaining, d.reset_secs), (false, 0, 20));
        assert!(r.check(2).allowed, "apps have their own quota");
        clock.set(120_000);
        assert!(r.check(1).allowed, "a new window");
    }
}
