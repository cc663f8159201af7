//! Circuit breaker per target: closed → open after `failure_threshold` consecutive failures →
//! after `open_for`, half-open admits `half_open_probes` concurrent probes → closed after
//! `success_threshold` successes, open again on any failure. Time is passed in, so the state
//! machine is tested with a fake clock.

use crate::config::Breaker as Settings;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probes: u32, successes: u32 },
}

/// What the breaker lets an attempt do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    /// A half-open probe: its outcome decides the breaker.
    Probe,
    /// Not now; try again at the given time.
    Denied {
        retry_at: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    pub settings: Settings,
    pub state: State,
}

impl Breaker {
    pub fn new(settings: Settings) -> Self {
        Breaker {
            settings,
            state: State::Closed { failures: 0 },
        }
    }

    /// 0 closed, 1 half-open, 2 open (the `circuit_state` gauge).
    pub fn code(&self) -> i64 {
        match self.state {
            State::Closed { .. } => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        ["closed", "half_open", "open"][self.code() as usize]
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        if let State::Open { until } = self.state {
            if now < until {
                return Admission::Denied { retry_at: until };
            }
            self.state = State::HalfOpen {
                probes: 0,
                successes: 0,
            };
        }
        match &mut self.state {
            State::Closed { .. } => Admission::Normal,
            State::HalfOpen { probes, .. } => {
                if *probes < self.settings.half_open_probes {
                    *probes += 1;
                    Admission::Probe
                } else {
                    // The running probe decides soon; a second or so is a fair wait.
                    Admission::Denied {
                        retry_at: now + Duration::from_secs(1),
                    }
                }
            }
            State::Open { until } => Admission::Denied { retry_at: *until },
        }
    }

    pub fn on_success(&mut self, probe: bool) {
        match &mut self.state {
            State::Closed { failures } => *failures = 0,
            State::HalfOpen { probes, successes } => {
                if probe {
                    *probes = probes.saturating_sub(1);
                }
                *successes += 1;
                if *successes >= self.settings.success_threshold {
                    self.state = State::Closed { failures: 0 };
                }
            }
            State::Open { .. } => {}
        }
    }

    pub fn on_failure(&mut self, now: Instant) {
        let open = State::Open {
            until: now + self.settings.open_for,
        };
        match &mut self.state {
            State::Closed { failures } => {
                *failures += 1;
                if *failures >= self.settings.failure_threshold {
                    self.state = open;
                }
            }
            State::HalfOpen { .. } => self.state = open,
            State::Open { .. } => {}
        }
    }

    /// A probe that ended without a verdict (client left, client error): free its slot.
    pub fn on_cancel(&mut self, probe: bool) {
        if let State::HalfOpen { probes, .. } = &mut self.state {
            if probe {
                *probes = probes.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            success_threshold: 2,
            half_open_probes: 1,
        }
    }

    #[test]
    fn full_cycle_with_a_fake_clock() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        assert_eq!(b.admit(t0), Admission::Normal);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(false);
        assert_eq!(
            b.state,
            State::Closed { failures: 0 },
            "a success resets the count"
        );
        for _ in 0..3 {
            b.on_failure(t0);
        }
        assert_eq!(b.code(), 2);
        assert_eq!(
            b.admit(t0 + Duration::from_secs(9)),
            Admission::Denied {
                retry_at: t0 + Duration::from_secs(10)
            }
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert_eq!(b.code(), 1);
        assert!(
            matches!(b.admit(t1), Admission::Denied { .. }),
            "one probe at a time"
        );
        b.on_success(true);
        assert_eq!(b.code(), 1, "one success is not enough");
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_success(true);
        assert_eq!(b.code(), 0);
        assert_eq!(b.admit(t1), Admission::Normal);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_cancelled_one_frees_its_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_cancel(true);
        assert_eq!(b.admit(t1), Admission::Probe, "the slot is free again");
        b.on_failure(t1);
        assert_eq!(
            b.state,
            State::Open {
                until: t1 + Duration::from_secs(10)
            }
        );
    }
}
