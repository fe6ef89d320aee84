//! The wait between two attempts to connect to Redis: full jitter over a bound that starts at
//! 100 ms and doubles to 5 s, so a Redis that comes back is not met by every node at once.
//! Timing only: it never connects.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// The first and the largest bound.
const BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// The shortest wait (no busy loop when the draw is near zero).
const FLOOR: Duration = Duration::from_millis(20);

/// One connection's backoff.
pub(crate) struct Reconnect {
    bound: Duration,
}

impl Reconnect {
    /// At the first bound.
    pub(crate) fn new() -> Reconnect {
        Reconnect { bound: BOUNDS.0 }
    }

    /// Connected: the next wait starts from the first bound again.
    pub(crate) fn reset(&mut self) {
        self.bound = BOUNDS.0;
    }

    /// Waits a draw in `[0, bound]` (then doubles the bound); `false` when `stop` came first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let jittered = self.bound.mul_f64(rand::rng().random_range(0.0..1.0));
        self.bound = (self.bound * 2).min(BOUNDS.1);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(jittered.max(FLOOR)) => true,
        }
    }
}
