//! Per-channel positions: the offset of the latest event and the epoch it belongs to.
//!
//! A channel's log is created on its first publish or subscribe with a fresh random epoch and
//! offset 0; each event takes the next offset. A log with no subscriber and no event for
//! `channel_idle` is forgotten, so this map is bounded by recent activity; a forgotten channel
//! starts again with a new epoch, which tells resuming clients that continuity is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hub::ChannelKey;
use crate::id;

const SHARDS: usize = 64;

/// Where a channel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The latest offset (0 before the first event).
    pub offset: u64,
    /// The current epoch.
    pub epoch: Arc<str>,
}

/// One channel's log.
#[derive(Debug)]
pub struct ChannelLog {
    offset: u64,
    epoch: Arc<str>,
    touched: Instant,
}

impl ChannelLog {
    fn new(now: Instant) -> ChannelLog {
        ChannelLog {
            offset: 0,
            epoch: Arc::from(id::epoch()),
            touched: now,
        }
    }

    /// Takes the next offset for a new event.
    pub fn next_offset(&mut self) -> u64 {
        self.offset += 1;
        self.offset
    }

    /// The current position.
    pub fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }
}

/// Every channel log of this node, sharded by channel.
pub struct History {
    shards: Box<[Mutex<HashMap<ChannelKey, ChannelLog>>]>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// No channels yet.
    pub fn new() -> History {
        History {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Runs `f` on the channel's log (created if absent) under its shard lock. Publishing and
    /// subscribing both go through here, which is what keeps a channel's order.
    pub fn with_channel<R>(&self, key: &ChannelKey, now: Instant, f: impl FnOnce(&mut ChannelLog) -> R) -> R {
        let mut shard = self.shards[key.shard(SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let log = match shard.get_mut(key) {
            Some(log) => log,
            None => shard.entry(key.clone()).or_insert_with(|| ChannelLog::new(now)),
        };
        log.touched = now;
        f(log)
    }

    /// Forgets channels untouched for `idle` for which `in_use` says no.
    pub fn sweep(&self, now: Instant, idle: Duration, in_use: impl Fn(&ChannelKey) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|k, log| {
                let keep = now.saturating_duration_since(log.touched) < idle || in_use(k);
                removed += usize::from(!keep);
                keep
            });
        }
        removed
    }

    /// How many channels are held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no channel is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_protocol::ChannelId;

    fn key(ch: &str) -> ChannelKey {
        ChannelKey::new(Arc::from("o"), ChannelId::parse(ch).unwrap())
    }

    #[test]
    fn offsets_count_from_one_per_channel() {
        let h = History::new();
        let now = Instant::now();
        assert_eq!(h.with_channel(&key("task:a"), now, |l| l.position().offset), 0);
        assert_eq!(h.with_channel(&key("task:a"), now, |l| l.next_offset()), 1);
        assert_eq!(h.with_channel(&key("task:a"), now, |l| l.next_offset()), 2);
        assert_eq!(h.with_channel(&key("task:b"), now, |l| l.next_offset()), 1);
    }

    #[test]
    fn idle_channels_are_forgotten_and_come_back_with_a_new_epoch() {
        let h = History::new();
        let t0 = Instant::now();
        let e1 = h.with_channel(&key("task:a"), t0, |l| {
            l.next_offset();
            l.epoch().clone()
        });
        h.with_channel(&key("task:b"), t0, |_| ());
        let later = t0 + Duration::from_secs(301);
        assert_eq!(h.sweep(later, Duration::from_secs(300), |k| k.channel.id() == "b"), 1);
        assert_eq!(h.len(), 1);
        let (off, e2) = h.with_channel(&key("task:a"), later, |l| (l.position().offset, l.epoch().clone()));
        assert_eq!(off, 0);
        assert_ne!(e1, e2);
    }
}
