//! Circuit breaker per upstream: closed → (N consecutive failures) → open → (cool-down) →
//! half-open: one probe request → closed on success, open again (with a longer cool-down) on
//! failure. Time is an input, so every transition is tested without sleeping.

use std::time::{Duration, Instant};

/// Breaker state, as metrics and status show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Requests flow.
    Closed,
    /// Requests are held back until the cool-down ends.
    Open,
    /// One probe request is allowed.
    HalfOpen,
}

impl State {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// The breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    base_open: Duration,
    max_open: Duration,
    failures: u32,
    state: State,
    open_until: Option<Instant>,
    /// Consecutive trips without a success: each doubles the cool-down (up to `max_open`).
    trips: u32,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `open_for` (doubling on each failed
    /// probe, at most `max_open`).
    pub fn new(threshold: u32, open_for: Duration, max_open: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            base_open: open_for,
            max_open: max_open.max(open_for),
            failures: 0,
            state: State::Closed,
            open_until: None,
            trips: 0,
        }
    }

    /// The state at `now` (an open breaker whose cool-down ended is half-open).
    pub fn state(&mut self, now: Instant) -> State {
        if self.state == State::Open && self.open_until.is_some_and(|t| now >= t) {
            self.state = State::HalfOpen;
        }
        self.state
    }

    /// How long to wait before a request may go (zero when closed or half-open).
    pub fn wait(&mut self, now: Instant) -> Duration {
        match self.state(now) {
            State::Open => self
                .open_until
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
            _ => Duration::ZERO,
        }
    }

    /// A request succeeded: close.
    pub fn success(&mut self) {
        self.failures = 0;
        self.trips = 0;
        self.state = State::Closed;
        self.open_until = None;
    }

    /// A request failed (retryable). Returns true when this failure opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let trip = match self.state(now) {
            State::HalfOpen => true,
            State::Closed => self.failures >= self.threshold,
            State::Open => false,
        };
        if trip {
            let factor = 1u32 << self.trips.min(16);
            let open_for = self.base_open.saturating_mul(factor).min(self.max_open);
            self.trips = self.trips.saturating_add(1);
            self.state = State::Open;
            self.open_until = Some(now + open_for);
        }
        trip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, Instant) {
        (
            Breaker::new(3, Duration::from_secs(10), Duration::from_secs(60)),
            Instant::now(),
        )
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let (mut b, t0) = breaker();
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.state(t0), State::Closed);
        assert!(b.failure(t0));
        assert_eq!(b.state(t0), State::Open);
        assert_eq!(b.wait(t0), Duration::from_secs(10));
    }

    #[test]
    fn a_success_resets_the_count() {
        let (mut b, t0) = breaker();
        b.failure(t0);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(t0), State::Closed);
    }

    #[test]
    fn cool_down_ends_in_half_open_and_a_probe_success_closes() {
        let (mut b, t0) = breaker();
        for _ in 0..3 {
            b.failure(t0);
        }
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.state(later), State::HalfOpen);
        assert_eq!(b.wait(later), Duration::ZERO);
        b.success();
        assert_eq!(b.state(later), State::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_cool_down_up_to_the_cap() {
        let (mut b, t0) = breaker();
        for _ in 0..3 {
            b.failure(t0);
        }
        let mut now = t0 + Duration::from_secs(10);
        let mut seen = Vec::new();
        for _ in 0..5 {
            assert_eq!(b.state(now), State::HalfOpen);
            assert!(b.failure(now));
            let w = b.wait(now);
            seen.push(w.as_secs());
            now += w;
        }
        assert_eq!(seen, vec![20, 40, 60, 60, 60]);
    }

    #[test]
    fn failures_while_open_do_not_extend_the_cool_down() {
        let (mut b, t0) = breaker();
        for _ in 0..3 {
            b.failure(t0);
        }
        assert!(!b.failure(t0 + Duration::from_secs(1)));
        assert_eq!(b.wait(t0 + Duration::from_secs(1)), Duration::from_secs(9));
    }
}
