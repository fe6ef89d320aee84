//! Reconnect backoff (CONTRACT.md section 8): 1 s doubling to 30 s, with full jitter, the bound
//! reset after a connection that stayed up for 30 s.
//!
//! "Full jitter" is the AWS Architecture Blog's name for a delay drawn uniformly from zero to the
//! current bound: a thousand clients cut off by one server restart spread their reconnects over
//! the whole window instead of arriving together at its end.

use std::time::Duration;

use rand::Rng;

/// The backoff state of one client: how many attempts failed since the bound was last reset.
///
/// The random source is an argument of [`Backoff::next_delay`], so tests inject one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    reset_after: Duration,
    failures: u32,
}

impl Default for Backoff {
    /// The contract's policy: 1 s doubling to 30 s, reset after 30 s connected.
    fn default() -> Backoff {
        Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    /// A backoff whose bound starts at `base`, doubles after each failed attempt up to `max`,
    /// and goes back to `base` after a connection that stayed up `reset_after`.
    ///
    /// The default is the contract's; other values are for tests and special deployments
    /// (the loss test scales it down to cut a connection every second).
    pub const fn new(base: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            base,
            max,
            reset_after,
            failures: 0,
        }
    }

    /// The current bound: `base * 2^failures`, at most `max`.
    pub fn bound(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// How many delays were drawn since the bound was last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt, uniform in `[0, bound]`; the bound then doubles.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let bound = self.bound();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// A connection that was established has ended after `up_for`: when it stayed up at least
    /// `reset_after`, the bound goes back to `base`.
    pub fn connection_ended(&mut self, up_for: Duration) {
        if up_for >= self.reset_after {
            self.reset();
        }
    }

    /// Back to the first bound.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// A random source that always yields the same word: 0 gives the smallest draw, all ones
    /// the largest.
    struct Fixed(u64);

    impl rand::RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            for (i, b) in dst.iter_mut().enumerate() {
                *b = self.0.to_le_bytes()[i % 8];
            }
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_bound_starts_at_one_second_and_doubles_to_a_thirty_second_cap() {
        let mut b = Backoff::default();
        let mut bounds = Vec::new();
        for _ in 0..10 {
            bounds.push(b.bound());
            b.next_delay(&mut Fixed(0));
        }
        assert_eq!(
            bounds,
            [1, 2, 4, 8, 16, 30, 30, 30, 30, 30].map(secs).to_vec()
        );
        // No overflow however long the outage.
        for _ in 0..1000 {
            b.next_delay(&mut Fixed(0));
        }
        assert_eq!(b.bound(), secs(30));
    }

    #[test]
    fn delays_are_full_jitter_from_zero_to_the_bound() {
        for failures in 0..8 {
            let mut low = Backoff::default();
            let mut high = Backoff::default();
            for _ in 0..failures {
                low.next_delay(&mut Fixed(0));
                high.next_delay(&mut Fixed(0));
            }
            let bound = high.bound();
            assert_eq!(low.next_delay(&mut Fixed(0)), Duration::ZERO);
            let top = high.next_delay(&mut Fixed(u64::MAX));
            assert!(top <= bound, "{top:?} > {bound:?}");
            assert!(top >= bound.mul_f64(0.999), "{top:?} is not near {bound:?}");
        }
    }

    #[test]
    fn jitter_is_uniform_over_the_bound() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut deciles = [0u32; 10];
        let n = 20_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let mut b = Backoff::default();
            b.next_delay(&mut rng);
            b.next_delay(&mut rng);
            // Third attempt: bound 4 s.
            let d = b.next_delay(&mut rng).as_secs_f64();
            assert!((0.0..=4.0).contains(&d));
            sum += d;
            deciles[((d / 0.4) as usize).min(9)] += 1;
        }
        let mean = sum / f64::from(n);
        assert!((mean - 2.0).abs() < 0.05, "mean {mean}");
        for (i, &c) in deciles.iter().enumerate() {
            let share = f64::from(c) / f64::from(n);
            assert!((0.09..=0.11).contains(&share), "decile {i}: {share}");
        }
    }

    #[test]
    fn the_bound_resets_after_a_connection_that_stayed_up_thirty_seconds() {
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.next_delay(&mut Fixed(0));
        }
        assert_eq!(b.bound(), secs(16));
        b.connection_ended(Duration::from_millis(29_999));
        assert_eq!(b.bound(), secs(16), "29.999 s up is not enough");
        b.connection_ended(secs(30));
        assert_eq!(b.bound(), secs(1));
        assert_eq!(b.failures(), 0);
    }

    #[test]
    fn a_cap_below_the_base_is_the_cap() {
        let mut b = Backoff::new(secs(5), secs(2), secs(30));
        assert_eq!(b.bound(), secs(2));
        b.next_delay(&mut Fixed(0));
        assert_eq!(b.bound(), secs(2));
    }
}
