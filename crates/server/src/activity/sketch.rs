//! The Space-Saving sketch (Metwally, Agrawal and El Abbadi, 2005): the heaviest keys of a
//! stream in fixed memory. It holds at most `K` counters; an unseen key, when all are taken,
//! replaces the smallest one and inherits its count (remembered as that key's error). Every
//! count it reports is at least the key's true count and at most the true count plus the
//! smallest counter, which is at most `N / K` for a stream of `N` events; every key whose true
//! count is above `N / K` is held.

use std::collections::HashMap;
use std::hash::Hash;

/// A Space-Saving sketch of at most `k` keys.
#[derive(Debug, Clone)]
pub(crate) struct SpaceSaving<T: Eq + Hash + Clone> {
    k: usize,
    /// key -> (count, error).
    counters: HashMap<T, (u64, u64)>,
    total: u64,
}

impl<T: Eq + Hash + Clone> SpaceSaving<T> {
    /// An empty sketch of at most `k` (at least 1) counters.
    pub(crate) fn new(k: usize) -> SpaceSaving<T> {
        SpaceSaving {
            k: k.max(1),
            counters: HashMap::with_capacity(k.max(1)),
            total: 0,
        }
    }

    /// Counts `weight` more events of `key`.
    pub(crate) fn add(&mut self, key: &T, weight: u64) {
        self.total += weight;
        if let Some((count, _)) = self.counters.get_mut(key) {
            *count += weight;
            return;
        }
        if self.counters.len() < self.k {
            self.counters.insert(key.clone(), (weight, 0));
            return;
        }
        // Full: the smallest counter goes, and the newcomer inherits its count as its error.
        let (min_key, min) = self
            .counters
            .iter()
            .min_by_key(|(_, (c, _))| *c)
            .map(|(k, (c, _))| (k.clone(), *c))
            .expect("k >= 1 counters");
        self.counters.remove(&min_key);
        self.counters.insert(key.clone(), (min + weight, min));
    }

    /// Events counted in all.
    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Every held key with its count (an overestimate by at most its error), unordered.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&T, u64, u64)> {
        self.counters.iter().map(|(k, (c, e))| (k, *c, *e))
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.counters.clear();
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_while_there_is_room() {
        let mut s = SpaceSaving::new(4);
        for (k, n) in [("a", 5), ("b", 3), ("c", 1)] {
            for _ in 0..n {
                s.add(&k, 1);
            }
        }
        let mut got: Vec<_> = s.entries().map(|(k, c, e)| (*k, c, e)).collect();
        got.sort();
        assert_eq!(got, [("a", 5, 0), ("b", 3, 0), ("c", 1, 0)]);
        assert_eq!(s.total(), 9);
    }

    proptest! {
        /// The error bound, on any stream: every reported count is between the true count and
        /// the true count plus N / K, and every key above N / K is held.
        #[test]
        fn counts_are_within_n_over_k_and_heavy_keys_are_kept(
            stream in proptest::collection::vec((0u8..40, 1u64..4), 0..2000),
            k in 1usize..16,
        ) {
            let mut s = SpaceSaving::new(k);
            let mut truth: HashMap<u8, u64> = HashMap::new();
            for (key, w) in &stream {
                s.add(key, *w);
                *truth.entry(*key).or_default() += w;
            }
            let n: u64 = stream.iter().map(|(_, w)| w).sum();
            prop_assert_eq!(s.total(), n);
            prop_assert!(s.entries().count() <= k);
            let bound = n / k as u64;
            for (key, count, error) in s.entries() {
                let t = truth[key];
                prop_assert!(count >= t, "count {} below the truth {}", count, t);
                prop_assert!(count - t <= error && error <= bound, "count {} truth {} error {} bound {}", count, t, error, bound);
            }
            for (key, t) in &truth {
                if *t > bound {
                    prop_assert!(s.entries().any(|(k, _, _)| k == key), "heavy key {} ({} > {}) lost", key, t, bound);
                }
            }
        }
    }
}
