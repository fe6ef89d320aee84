//! What a node did, for its operators: events accepted, connections closed by code, and the
//! busiest orgs and channels of the last minute. Counted per [`crate::Node`] (several nodes may
//! share a process, in tests and in embedders), with atomics on the publish path and one short
//! lock per publish for the busiest lists. It counts; it never reads a clock (time is an
//! argument) and never imports anything above it.
//!
//! # Layout
//!
//! - [`sketch`]: the Space-Saving sketch behind the busiest lists (K fixed, error bound N / K).

pub(crate) mod sketch;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cortex_protocol::{ChannelId, CloseCode};

use crate::metrics::CLOSE_CODES;

use sketch::SpaceSaving;

/// Counters per sub-window of the busiest lists.
pub(crate) const TOP_K: usize = 64;
/// Seconds per sub-window.
const SLOT_SECS: i64 = 10;
/// Sub-windows kept: the lists cover the last `SLOTS * SLOT_SECS` seconds (50 to 60 of them,
/// as the current one fills).
const SLOTS: usize = 6;
/// The window the busiest lists cover, seconds.
pub(crate) const TOP_WINDOW_SECS: i64 = SLOTS as i64 * SLOT_SECS;

/// One sub-window of the busiest lists.
#[derive(Debug)]
struct Slot {
    /// Which sub-window (unix seconds / SLOT_SECS) it holds.
    epoch: i64,
    orgs: SpaceSaving<Arc<str>>,
    channels: SpaceSaving<(Arc<str>, ChannelId)>,
}

/// The busiest orgs and channels: a ring of sub-windows, each a Space-Saving sketch.
#[derive(Debug)]
pub(crate) struct Top {
    slots: Vec<Slot>,
}

/// An org and its estimated events in the window.
pub(crate) type OrgCount = (Arc<str>, u64);
/// A channel (org, id) and its estimated events in the window.
pub(crate) type ChannelCount = (Arc<str>, String, u64);

impl Top {
    fn new() -> Top {
        Top {
            slots: (0..SLOTS)
                .map(|_| Slot {
                    epoch: i64::MIN,
                    orgs: SpaceSaving::new(TOP_K),
                    channels: SpaceSaving::new(TOP_K),
                })
                .collect(),
        }
    }

    fn record(&mut self, org: &Arc<str>, channels: &[ChannelId], now: i64) {
        let epoch = now.div_euclid(SLOT_SECS);
        let slot = &mut self.slots[epoch.rem_euclid(SLOTS as i64) as usize];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.orgs.clear();
            slot.channels.clear();
        }
        slot.orgs.add(org, 1);
        for c in channels {
            slot.channels.add(&(org.clone(), c.clone()), 1);
        }
    }

    /// The lists at `now`, each sorted by count (highest first), at most `limit` long.
    fn lists(&self, now: i64, limit: usize) -> (Vec<OrgCount>, Vec<ChannelCount>) {
        let epoch = now.div_euclid(SLOT_SECS);
        let live = |s: &&Slot| s.epoch <= epoch && s.epoch > epoch - SLOTS as i64;
        let mut orgs: std::collections::HashMap<Arc<str>, u64> = Default::default();
        let mut chans: std::collections::HashMap<(Arc<str>, ChannelId), u64> = Default::default();
        for s in self.slots.iter().filter(live) {
            for (k, c, _) in s.orgs.entries() {
                *orgs.entry(k.clone()).or_default() += c;
            }
            for (k, c, _) in s.channels.entries() {
                *chans.entry(k.clone()).or_default() += c;
            }
        }
        let mut orgs: Vec<OrgCount> = orgs.into_iter().collect();
        orgs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        orgs.truncate(limit);
        let mut chans: Vec<ChannelCount> = chans
            .into_iter()
            .map(|((o, c), n)| (o, c.to_string(), n))
            .collect();
        chans.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        chans.truncate(limit);
        (orgs, chans)
    }
}

/// A node's activity counters.
#[derive(Debug)]
pub(crate) struct Activity {
    events: AtomicU64,
    subscriptions: AtomicI64,
    closes: [AtomicU64; CLOSE_CODES.len() + 1],
    /// Only kept when someone can read it (the admin listener is on).
    top: Option<Mutex<Top>>,
}

impl Activity {
    /// Counters; the busiest lists only `with_top`.
    pub(crate) fn new(with_top: bool) -> Activity {
        Activity {
            events: AtomicU64::new(0),
            subscriptions: AtomicI64::new(0),
            closes: Default::default(),
            top: with_top.then(|| Mutex::new(Top::new())),
        }
    }

    /// One event of `org` on `channels` was accepted at unix time `now`.
    pub(crate) fn published(&self, org: &Arc<str>, channels: &[ChannelId], now: i64) {
        self.events.fetch_add(1, Ordering::Relaxed);
        if let Some(top) = &self.top {
            top.lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(org, channels, now);
        }
    }

    /// A subscription was added (1) or removed (-1).
    pub(crate) fn subscribed(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Ordering::Relaxed);
    }

    /// Subscriptions now.
    pub(crate) fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::Relaxed).max(0) as usize
    }

    /// Events accepted since start.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// A connection of this node closed with `code` (1006: without a close frame; 1005: the
    /// client's close frame had no code).
    pub(crate) fn closed(&self, code: u16) {
        let at = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.closes[at].fetch_add(1, Ordering::Relaxed);
    }

    /// Closes since start, per code of [`CLOSE_CODES`] (`Some(code)`), then every other code
    /// together (`None`).
    pub(crate) fn closes(&self) -> Vec<(Option<u16>, u64)> {
        CLOSE_CODES
            .iter()
            .map(|&c| Some(c))
            .chain([None])
            .zip(&self.closes)
            .map(|(c, n)| (c, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// The busiest orgs and channels at unix time `now` (empty without the lists).
    pub(crate) fn top(&self, now: i64, limit: usize) -> (Vec<OrgCount>, Vec<ChannelCount>) {
        match &self.top {
            Some(t) => t
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .lists(now, limit),
            None => Default::default(),
        }
    }
}

/// Whether `code` is one an operator may close a connection with.
pub(crate) fn operator_close_code(code: u16) -> Option<CloseCode> {
    match code {
        1000 | 1001 | 1008 | 4001 | 4002 | 4008 | 4009 | 4029 => CloseCode::from_code(code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(s: &str) -> ChannelId {
        ChannelId::parse(s).unwrap()
    }

    #[test]
    fn the_busiest_lists_rank_by_count_and_forget_after_a_minute() {
        let a = Activity::new(true);
        let (o1, o2): (Arc<str>, Arc<str>) = (Arc::from("o_1"), Arc::from("o_2"));
        for i in 0..30 {
            a.published(&o1, &[ch("project:p_hot")], 1000 + i % 20);
        }
        for _ in 0..5 {
            a.published(&o2, &[ch("task:t_1"), ch("task:t_2")], 1010);
        }
        let (orgs, chans) = a.top(1020, 10);
        assert_eq!(orgs, [(o1.clone(), 30), (o2.clone(), 5)]);
        assert_eq!(chans[0], (o1.clone(), "project:p_hot".to_owned(), 30));
        assert_eq!(chans.len(), 3);
        assert_eq!(a.top(1020, 1).1.len(), 1, "limited");
        assert_eq!(a.events(), 35);
        // A minute later nothing of it is left.
        assert!(a.top(1000 + TOP_WINDOW_SECS + SLOT_SECS, 10).0.is_empty());
        assert!(Activity::new(false).top(1020, 10).0.is_empty());
    }

    #[test]
    fn closes_are_counted_by_code() {
        let a = Activity::new(false);
        a.closed(1000);
        a.closed(4009);
        a.closed(4009);
        a.closed(1234);
        let c = a.closes();
        assert!(c.contains(&(Some(1000), 1)) && c.contains(&(Some(4009), 2)));
        assert!(c.contains(&(None, 1)) && c.contains(&(Some(1006), 0)));
        assert_eq!(operator_close_code(4001), Some(CloseCode::Unauthorized));
        assert_eq!(operator_close_code(1009), None);
        assert_eq!(operator_close_code(1234), None);
    }
}
