//! The per-second ring the console charts on load: this node's connections, subscriptions and
//! rates, one point a second for the last [`POINTS`] seconds. The rates are over the last
//! [`RATE_WINDOW`] points, from the node's cumulative counters. Pure: the sampler gives it the
//! time and the counters.

use std::collections::VecDeque;

/// Points kept (five minutes).
pub(crate) const POINTS: usize = 300;
/// Seconds the rates are averaged over.
pub(crate) const RATE_WINDOW: usize = 10;

/// One second of one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    /// Unix seconds.
    pub t: i64,
    /// Open connections.
    pub connections: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Events accepted since start.
    pub events: u64,
    /// Deliveries since start.
    pub deliveries: u64,
    /// Events per second over the last [`RATE_WINDOW`] seconds.
    pub events_per_second: f64,
    /// Deliveries per second, the same.
    pub deliveries_per_second: f64,
}

/// The ring.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    points: VecDeque<Point>,
}

impl Ring {
    /// Adds a sample (its rates are computed here); the oldest goes past [`POINTS`].
    pub(crate) fn push(
        &mut self,
        t: i64,
        connections: usize,
        subscriptions: usize,
        events: u64,
        deliveries: u64,
    ) -> Point {
        let base = self
            .points
            .get(self.points.len().saturating_sub(RATE_WINDOW))
            .copied();
        let (eps, dps) = match base {
            Some(b) if t > b.t => {
                let dt = (t - b.t) as f64;
                (
                    events.saturating_sub(b.events) as f64 / dt,
                    deliveries.saturating_sub(b.deliveries) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        };
        let p = Point {
            t,
            connections,
            subscriptions,
            events,
            deliveries,
            events_per_second: eps,
            deliveries_per_second: dps,
        };
        if self.points.len() == POINTS {
            self.points.pop_front();
        }
        self.points.push_back(p);
        p
    }

    /// Every point, oldest first.
    pub(crate) fn points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter()
    }

    /// The newest point.
    pub(crate) fn last(&self) -> Option<Point> {
        self.points.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_over_the_last_ten_seconds_and_the_ring_keeps_300_points() {
        let mut r = Ring::default();
        assert_eq!(r.push(0, 1, 2, 0, 0).events_per_second, 0.0);
        for t in 1..=20 {
            r.push(t, 1, 2, (t * 5) as u64, (t * 15) as u64);
        }
        let last = r.last().unwrap();
        assert_eq!(last.events_per_second, 5.0);
        assert_eq!(last.deliveries_per_second, 15.0);
        for t in 21..400 {
            r.push(t, 1, 2, 100, 300);
        }
        assert_eq!(r.points().count(), POINTS);
        assert_eq!(r.points().next().unwrap().t, 400 - POINTS as i64);
        assert_eq!(
            r.last().unwrap().events_per_second,
            0.0,
            "nothing new for ten seconds"
        );
    }
}
