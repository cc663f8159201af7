//! The global retry budget: extra attempts (retries and fallbacks) may be at most 20 % of the
//! requests seen over the last 10 s, with a floor of 3, so an outage never multiplies load.

use parking_lot::Mutex;
use std::time::Instant;

const WINDOW_SECS: u64 = 10;
const RATIO: f64 = 0.2;
const FLOOR: u64 = 3;

#[derive(Clone, Copy, Default)]
struct Bucket {
    second: u64,
    requests: u64,
    retries: u64,
}

pub struct RetryBudget {
    base: Instant,
    buckets: Mutex<[Bucket; WINDOW_SECS as usize]>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            base: Instant::now(),
            buckets: Mutex::new([Bucket::default(); WINDOW_SECS as usize]),
        }
    }
}

impl RetryBudget {
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.base).as_secs()
    }

    fn bucket(buckets: &mut [Bucket; WINDOW_SECS as usize], second: u64) -> &mut Bucket {
        let b = &mut buckets[(second % WINDOW_SECS) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                requests: 0,
                retries: 0,
            };
        }
        b
    }

    pub fn record_request(&self, now: Instant) {
        let s = self.second(now);
        Self::bucket(&mut self.buckets.lock(), s).requests += 1;
    }

    /// Takes one extra attempt from the budget if there is one.
    pub fn try_retry(&self, now: Instant) -> bool {
        let s = self.second(now);
        let mut buckets = self.buckets.lock();
        let (requests, retries) = buckets
            .iter()
            .filter(|b| b.second + WINDOW_SECS > s && b.second <= s)
            .fold((0, 0), |(r, x), b| (r + b.requests, x + b.retries));
        let allowed = ((requests as f64 * RATIO) as u64).max(FLOOR);
        if retries >= allowed {
            return false;
        }
        Self::bucket(&mut buckets, s).retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn floor_ratio_and_window() {
        let b = RetryBudget::default();
        let t = b.base;
        assert!(
            (0..3).all(|_| b.try_retry(t)),
            "the floor allows 3 with no traffic"
        );
        assert!(!b.try_retry(t));
        for _ in 0..50 {
            b.record_request(t);
        }
        // 50 requests → 10 extra attempts in the window, 3 already used.
        assert_eq!((0..20).filter(|_| b.try_retry(t)).count(), 7);
        // Ten seconds later the window is empty again.
        let later = t + Duration::from_secs(11);
        assert_eq!((0..20).filter(|_| b.try_retry(later)).count(), 3);
    }
}
