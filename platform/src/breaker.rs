//! A small circuit breaker: after `threshold` consecutive failures it opens and refuses calls
//! for `cooldown`, then lets one probe through (half-open); the probe's success closes it,
//! its failure opens it again. It keeps a dependency that is down from being hammered and
//! makes "down" visible (readiness, metrics) instead of only a stream of errors in the logs.
//!
//! One breaker serves the relay (PostgreSQL, RabbitMQ) and the read-api's Redis tier. A probe
//! whose outcome is never recorded (its caller was cancelled, e.g. a request whose client went
//! away) is presumed lost after a cooldown, and another probe may go: a dropped probe must
//! not keep the breaker half-open for good.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a breaker currently allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// One probe call may go through.
    HalfOpen,
}

impl BreakerState {
    /// The gauge value in metrics: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe went through at `since`.
    HalfOpen {
        since: Instant,
    },
}

/// A circuit breaker around one dependency.
#[derive(Debug)]
pub struct Breaker {
    gauge: &'static str,
    name: &'static str,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker named after the dependency it guards (`postgres`, `rabbitmq`, `redis`),
    /// whose state is the gauge `gauge` labelled `dependency`.
    pub fn new(gauge: &'static str, name: &'static str, threshold: u32, cooldown: Duration) -> Self {
        let b = Self {
            gauge,
            name,
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        b.publish_gauge(BreakerState::Closed);
        b
    }

    /// The dependency's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// May a call go through now? `Err` carries how long to wait before asking again.
    pub fn allow(&self) -> Result<(), Duration> {
        self.allow_at(Instant::now())
    }

    /// [`Breaker::allow`] at a given instant (for tests).
    pub fn allow_at(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *s = State::HalfOpen { since: now };
                drop(s);
                self.publish_gauge(BreakerState::HalfOpen);
                Ok(())
            }
            State::HalfOpen { since } if now < since + self.cooldown => Err(Duration::from_millis(100)),
            State::HalfOpen { .. } => {
                // The probe's outcome never came: its caller was cancelled.
                *s = State::HalfOpen { since: now };
                Ok(())
            }
        }
    }

    /// Records a successful call: the breaker closes.
    pub fn success(&self) {
        let mut s = self.lock();
        let was_closed = matches!(*s, State::Closed { .. });
        *s = State::Closed { failures: 0 };
        drop(s);
        if !was_closed {
            tracing::info!(dependency = self.name, "circuit breaker closed");
            self.publish_gauge(BreakerState::Closed);
        }
    }

    /// Records a failed call; enough of them in a row open the breaker.
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    /// [`Breaker::failure`] at a given instant (for tests).
    pub fn failure_at(&self, now: Instant) {
        let mut s = self.lock();
        let open = match *s {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                *s = State::Closed { failures: failures + 1 };
                false
            }
            State::HalfOpen { .. } => true,
            // Already open: a late failure of a call started before does not extend it.
            State::Open { .. } => false,
        };
        if open {
            *s = State::Open {
                until: now + self.cooldown,
            };
            drop(s);
            tracing::warn!(dependency = self.name, cooldown = ?self.cooldown, "circuit breaker open");
            self.publish_gauge(BreakerState::Open);
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain enum, valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_gauge(&self, s: BreakerState) {
        metrics::gauge!(self.gauge, "dependency" => self.name).set(s.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_then_closes() {
        let b = Breaker::new("test_breaker_state", "x", 3, Duration::from_secs(5));
        let t0 = Instant::now();
        b.failure_at(t0);
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_at(t0).is_ok());
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow_at(t0 + Duration::from_secs(1)).is_err());
        // Cooldown over: exactly one probe goes through.
        assert!(b.allow_at(t0 + Duration::from_secs(6)).is_ok());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow_at(t0 + Duration::from_secs(6)).is_err());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow_at(t0 + Duration::from_secs(6)).is_ok());
    }

    #[test]
    fn failed_probe_opens_again() {
        let b = Breaker::new("test_breaker_state", "x", 1, Duration::from_secs(2));
        let t0 = Instant::now();
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow_at(t0 + Duration::from_secs(3)).is_ok());
        b.failure_at(t0 + Duration::from_secs(3));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.allow_at(t0 + Duration::from_secs(4)).is_err());
        assert!(b.allow_at(t0 + Duration::from_secs(6)).is_ok());
    }

    #[test]
    fn a_probe_never_answered_lets_another_through_after_a_cooldown() {
        let b = Breaker::new("test_breaker_state", "x", 1, Duration::from_secs(2));
        let t0 = Instant::now();
        b.failure_at(t0);
        assert!(b.allow_at(t0 + Duration::from_secs(2)).is_ok());
        assert!(b.allow_at(t0 + Duration::from_secs(3)).is_err());
        assert!(b.allow_at(t0 + Duration::from_secs(4)).is_ok());
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new("test_breaker_state", "x", 2, Duration::from_secs(2));
        let t0 = Instant::now();
        b.failure_at(t0);
        b.success();
        b.failure_at(t0);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
