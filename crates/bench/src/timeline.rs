//! Publish-to-receive latency second by second (by arrival time), so a run with a fault can say
//! what clients saw before, during and after it.
//!
//! Each worker keeps one small histogram per wall-clock second of arrival (two significant
//! digits: a p99 to within 1%) and sends them with its final report; the coordinator merges
//! them by second. Every process of a run shares the wall clock, so the seconds line up.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::report::Latency;

/// Latency histograms by second of arrival.
#[derive(Default)]
pub struct Timeline {
    secs: BTreeMap<u64, Histogram<u64>>,
}

/// One second of a [`Timeline`] as a worker sends it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bucket {
    /// The second of arrival, since the Unix epoch.
    pub at: u64,
    /// Its histogram (microseconds), V2-serialized and base64.
    pub latency: String,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid bounds")
}

impl Timeline {
    /// Records an arrival at `arrival_ns` (since the Unix epoch) that took `micros`.
    pub fn record(&mut self, arrival_ns: u64, micros: u64) {
        self.secs
            .entry(arrival_ns / 1_000_000_000)
            .or_insert_with(histogram)
            .saturating_record(micros.max(1));
    }

    /// The seconds, serialized.
    pub fn encode(&self) -> Result<Vec<Bucket>> {
        let mut out = Vec::with_capacity(self.secs.len());
        for (&at, h) in &self.secs {
            let mut buf = Vec::new();
            V2Serializer::new()
                .serialize(h, &mut buf)
                .map_err(|e| anyhow!("serializing a histogram: {e:?}"))?;
            out.push(Bucket {
                at,
                latency: base64::engine::general_purpose::STANDARD.encode(buf),
            });
        }
        Ok(out)
    }

    /// Adds a worker's seconds.
    pub fn merge(&mut self, buckets: &[Bucket]) -> Result<()> {
        for b in buckets {
            let raw = base64::engine::general_purpose::STANDARD.decode(&b.latency)?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut raw.as_slice())
                .map_err(|e| anyhow!("reading a histogram: {e:?}"))?;
            self.secs
                .entry(b.at)
                .or_insert_with(histogram)
                .add(h)
                .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        }
        Ok(())
    }

    /// Arrivals and their latency over the seconds `from..to` (since the Unix epoch).
    pub fn window(&self, from: u64, to: u64) -> (u64, Latency) {
        let mut all = histogram();
        for h in self.secs.range(from..to).map(|(_, h)| h) {
            // Same bounds and precision: cannot fail.
            let _ = all.add(h);
        }
        (all.len(), latency(&all))
    }
}

/// The percentiles of `h`.
pub fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_survive_the_trip_and_windows_take_only_their_seconds() {
        let s = 1_764_000_000u64;
        let mut a = Timeline::default();
        for k in 0..100 {
            a.record(s * 1_000_000_000 + k, 1_000); // second s: 1 ms
        }
        a.record((s + 1) * 1_000_000_000, 500_000); // second s + 1: 500 ms
        let mut b = Timeline::default();
        b.record((s + 1) * 1_000_000_000 + 5, 600_000);
        let mut merged = Timeline::default();
        merged.merge(&a.encode().unwrap()).unwrap();
        merged.merge(&b.encode().unwrap()).unwrap();
        let (n, l) = merged.window(s, s + 1);
        assert_eq!(n, 100);
        assert!((990..=1010).contains(&l.p99), "{}", l.p99);
        let (n, l) = merged.window(s + 1, s + 2);
        assert_eq!(n, 2);
        assert!(l.p50 >= 495_000, "{}", l.p50);
        assert_eq!(merged.window(s, s + 2).0, 102);
        assert_eq!(merged.window(s + 2, s + 9).0, 0);
    }
}
