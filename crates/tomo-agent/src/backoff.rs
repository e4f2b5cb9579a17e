//! Reconnection delays: exponential from 1 s to 60 s, ×2, with ±20 % jitter so that a fleet
//! reconnecting after a control-plane restart spreads out instead of stampeding.

use std::time::Duration;

/// Exponential backoff with jitter. `base` doubles after every failure, up to `max`; each delay
/// is `base × U(0.8, 1.2)`.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            base: initial,
            rng: fastrand::Rng::new(),
        }
    }

    /// The agent's standard policy: 1 s → 60 s.
    pub fn standard() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * self.rng.f64())
    }

    /// After a successful session: start again from the initial delay.
    pub fn reset(&mut self) {
        self.base = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_within_jitter() {
        let mut b = Backoff::standard();
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0];
        for base in bases {
            let d = b.next_delay().as_secs_f64();
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{d} not within 20% of {base}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn jitter_spreads_delays() {
        let delays: std::collections::BTreeSet<u128> = (0..50)
            .map(|_| Backoff::standard().next_delay().as_millis())
            .collect();
        assert!(
            delays.len() > 10,
            "jitter should spread delays, got {delays:?}"
        );
    }
}
