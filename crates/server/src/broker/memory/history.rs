//! Per-channel positions and bounded history (CONTRACT.md section 6).
//!
//! A channel's log holds its latest offset, its epoch, and the most recent events as delivered
//! (the bytes every subscriber got), bounded three ways: a count per channel, an age, and a total
//! memory cap across channels (split evenly over the shards). A log is created on a channel's
//! first publish or subscribe with a fresh random epoch; a log with no subscriber and no event for
//! `channel_idle` is forgotten, and the channel starts again at offset 1 in a new epoch, which is
//! what tells resuming clients that continuity was lost. So is an in-memory node's restart.
//!
//! Resume is exact or nothing: `since` is recovered only when every event after it is still held.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::broker::{EventBody, Position};
use crate::config::Retention;
use crate::hub::ChannelKey;
use crate::id;

const SHARDS: usize = 64;

/// Channels held before a quiet channel is forgotten as soon as its last subscriber leaves.
pub const EAGER_FORGET_ABOVE: usize = 65_536;

/// What a held event costs beside its id and payload (its entry, the event's own fields), for the
/// memory cap.
const HELD_OVERHEAD: usize = 96;

struct Held {
    offset: u64,
    at: Instant,
    /// Shared by every channel the event went to.
    event: Arc<EventBody>,
}

impl Held {
    /// What the memory cap counts for this event on this channel.
    fn bytes(&self) -> usize {
        self.event.id.len() + self.event.payload_json.len() + HELD_OVERHEAD
    }
}

/// One channel's log.
pub struct ChannelLog {
    offset: u64,
    epoch: Arc<str>,
    touched: Instant,
    /// This node's subscriptions holding the channel (see `Broker::hold`): a held channel is
    /// never forgotten. Signed: a release may arrive before the hold it follows.
    held: i32,
    events: VecDeque<Held>,
}

impl ChannelLog {
    fn new(now: Instant) -> ChannelLog {
        ChannelLog {
            offset: 0,
            epoch: Arc::from(id::epoch()),
            touched: now,
            held: 0,
            events: VecDeque::new(),
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

    #[cfg(test)]
    /// The current epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The events after `offset` in `epoch`, if every one of them is still held: `Some(empty)`
    /// when `offset` is the latest, `None` when continuity cannot be proven.
    pub fn since(
        &self,
        offset: u64,
        epoch: &str,
    ) -> Option<impl Iterator<Item = (u64, &Arc<EventBody>)>> {
        if epoch != &*self.epoch || offset > self.offset {
            return None;
        }
        let first_held = self.events.front().map_or(self.offset + 1, |h| h.offset);
        if offset + 1 < first_held {
            return None;
        }
        Some(
            self.events
                .iter()
                .filter(move |h| h.offset > offset)
                .map(|h| (h.offset, &h.event)),
        )
    }

    fn held_bytes(&self) -> usize {
        self.events.iter().map(Held::bytes).sum()
    }

    /// Drops held events from the front while they are at or below `upto_offset` or older than
    /// `older_than`. Returns how many events and bytes went.
    fn drop_front(
        &mut self,
        upto_offset: Option<u64>,
        older_than: Option<Instant>,
    ) -> (usize, usize) {
        let (mut events, mut bytes) = (0, 0);
        while let Some(h) = self.events.front() {
            let by_offset = upto_offset.is_some_and(|o| h.offset <= o);
            let by_age = older_than.is_some_and(|t| h.at < t);
            if !(by_offset || by_age) {
                break;
            }
            let h = self.events.pop_front().expect("front exists");
            events += 1;
            bytes += h.bytes();
        }
        (events, bytes)
    }
}

struct Shard {
    logs: HashMap<ChannelKey, ChannelLog>,
    bytes: usize,
    /// Held events in publish order across the shard's channels, for the memory cap. Entries
    /// whose event was already dropped (by count or age) are skipped and compacted away.
    order: VecDeque<(ChannelKey, u64)>,
    held: usize,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            logs: HashMap::new(),
            bytes: 0,
            order: VecDeque::new(),
            held: 0,
        }
    }

    fn drop_front(
        &mut self,
        key: &ChannelKey,
        upto_offset: Option<u64>,
        older_than: Option<Instant>,
    ) {
        if let Some(log) = self.logs.get_mut(key) {
            let (events, bytes) = log.drop_front(upto_offset, older_than);
            self.held -= events;
            self.bytes -= bytes;
        }
    }

    /// The channel's log, created if absent, with events older than `max_age` dropped, marked
    /// as touched now.
    fn open(&mut self, key: &ChannelKey, now: Instant, max_age: Duration) -> &mut ChannelLog {
        if !self.logs.contains_key(key) {
            self.logs.insert(key.clone(), ChannelLog::new(now));
        }
        let log = self.logs.get_mut(key).expect("inserted above");
        let (events, bytes) = log.drop_front(None, now.checked_sub(max_age));
        self.held -= events;
        self.bytes -= bytes;
        log.touched = now;
        log
    }

    fn enforce_cap(&mut self, cap: usize) {
        while self.bytes > cap {
            let Some((key, offset)) = self.order.pop_front() else {
                break;
            };
            self.drop_front(&key, Some(offset), None);
        }
        if self.order.len() > 2 * self.held + 64 {
            let logs = &self.logs;
            self.order.retain(|(k, o)| {
                logs.get(k)
                    .and_then(|l| l.events.front())
                    .is_some_and(|f| f.offset <= *o)
            });
        }
    }
}

/// Every channel log of this node, sharded by channel.
pub struct History {
    shards: Box<[Mutex<Shard>]>,
    retention: Retention,
}

impl History {
    /// No channels yet.
    pub fn new(retention: Retention) -> History {
        History {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            retention,
        }
    }

    fn shard(&self, key: &ChannelKey) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[key.shard(SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the channel's log (created if absent, events past their age dropped) under
    /// its shard lock. Subscribing goes through here, which is what keeps a resume gapless.
    pub fn with_channel<R>(
        &self,
        key: &ChannelKey,
        now: Instant,
        f: impl FnOnce(&mut ChannelLog) -> R,
    ) -> R {
        let mut shard = self.shard(key);
        f(shard.open(key, now, self.retention.max_age))
    }

    /// Appends `event` to the channel and calls `deliver(offset, epoch)` under the shard lock,
    /// so deliveries on one channel happen in offset order and a subscribe's position (read
    /// under the same lock) is exact. Returns the event's position.
    pub fn append(
        &self,
        key: &ChannelKey,
        now: Instant,
        event: &Arc<EventBody>,
        deliver: impl FnOnce(u64, &Arc<str>),
    ) -> Position {
        let r = &self.retention;
        let mut shard = self.shard(key);
        let log = shard.open(key, now, r.max_age);
        let offset = log.next_offset();
        deliver(offset, &log.epoch);
        let position = Position {
            offset,
            epoch: log.epoch.clone(),
        };
        if r.per_channel == 0 {
            return position;
        }
        let held = Held {
            offset,
            at: now,
            event: event.clone(),
        };
        let len = held.bytes();
        log.events.push_back(held);
        let over = log.events.len().saturating_sub(r.per_channel);
        shard.bytes += len;
        shard.held += 1;
        shard.order.push_back((key.clone(), offset));
        if over > 0 {
            shard.drop_front(key, Some(offset - r.per_channel as u64), None);
        }
        shard.enforce_cap(r.max_bytes / SHARDS);
        position
    }

    /// Counts a hold of the channel (its log created if absent): it is not forgotten while
    /// held.
    pub fn hold(&self, key: &ChannelKey, now: Instant) {
        self.with_channel(key, now, |log| log.held += 1);
    }

    /// Counts a release. Under subscribe churn (more than [`EAGER_FORGET_ABOVE`] channels
    /// held), a channel no longer held that never had an event is forgotten at once, so churn
    /// leaves nothing behind. Below that, a quiet channel keeps its epoch until the sweep, so
    /// clients resuming it from offset 0 recover. Returns whether it was forgotten.
    pub fn release(&self, key: &ChannelKey) -> bool {
        let mut shard = self.shard(key);
        let many = shard.logs.len() > EAGER_FORGET_ABOVE / SHARDS;
        let Some(log) = shard.logs.get_mut(key) else {
            return false;
        };
        log.held -= 1;
        if many && log.held <= 0 && log.offset == 0 && log.events.is_empty() {
            shard.logs.remove(key);
            return true;
        }
        false
    }

    /// Forgets channels untouched for `idle` that are not held.
    pub fn sweep(&self, now: Instant, idle: Duration) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let mut freed = (0, 0);
            shard.logs.retain(|_, log| {
                let keep = now.saturating_duration_since(log.touched) < idle || log.held > 0;
                if !keep {
                    freed.0 += log.held_bytes();
                    freed.1 += log.events.len();
                    removed += 1;
                }
                keep
            });
            shard.bytes -= freed.0;
            shard.held -= freed.1;
            shard.enforce_cap(usize::MAX);
        }
        removed
    }

    #[cfg(test)]
    /// How many channels are held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).logs.len())
            .sum()
    }

    /// Bytes of history held across channels.
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_protocol::ChannelId;

    fn key(ch: &str) -> ChannelKey {
        ChannelKey::new(Arc::from("o"), ChannelId::parse(ch).unwrap())
    }

    fn retention(per_channel: usize, max_bytes: usize) -> Retention {
        Retention {
            per_channel,
            max_age: Duration::from_secs(300),
            max_bytes,
        }
    }

    fn publish(h: &History, k: &ChannelKey, now: Instant, body: &str) -> u64 {
        let event = Arc::new(EventBody {
            id: String::new(),
            event_type: cortex_protocol::EventType::TaskDeleted,
            payload_json: body.to_owned(),
            tally: Default::default(),
        });
        h.append(k, now, &event, |_, _| {}).offset
    }

    fn replay(h: &History, k: &ChannelKey, now: Instant, since: u64) -> Option<Vec<String>> {
        h.with_channel(k, now, |log| {
            let epoch = log.epoch().clone();
            log.since(since, &epoch).map(|it| {
                it.map(|(offset, e)| format!("{offset}:{}", e.payload_json))
                    .collect()
            })
        })
    }

    #[test]
    fn offsets_count_from_one_per_channel() {
        let h = History::new(retention(100, 1 << 20));
        let now = Instant::now();
        assert_eq!(
            h.with_channel(&key("task:a"), now, |l| l.position().offset),
            0
        );
        assert_eq!(publish(&h, &key("task:a"), now, "x"), 1);
        assert_eq!(publish(&h, &key("task:a"), now, "x"), 2);
        assert_eq!(publish(&h, &key("task:b"), now, "x"), 1);
    }

    #[test]
    fn replay_is_exact_or_nothing() {
        let h = History::new(retention(3, 1 << 20));
        let k = key("task:a");
        let now = Instant::now();
        for _ in 0..5 {
            publish(&h, &k, now, "e");
        }
        // Held: 3, 4, 5.
        assert_eq!(replay(&h, &k, now, 2).unwrap(), vec!["3:e", "4:e", "5:e"]);
        assert_eq!(replay(&h, &k, now, 4).unwrap(), vec!["5:e"]);
        assert_eq!(
            replay(&h, &k, now, 5).unwrap(),
            Vec::<String>::new(),
            "up to date"
        );
        assert_eq!(
            replay(&h, &k, now, 1),
            None,
            "event 2 is gone: no partial replay"
        );
        assert_eq!(replay(&h, &k, now, 6), None, "from the future");
        let wrong_epoch = h.with_channel(&k, now, |l| l.since(5, "e_other").is_some());
        assert!(!wrong_epoch);
    }

    #[test]
    fn events_past_their_age_are_dropped() {
        let h = History::new(retention(100, 1 << 20));
        let k = key("task:a");
        let t0 = Instant::now();
        publish(&h, &k, t0, "old");
        publish(&h, &k, t0 + Duration::from_secs(200), "new");
        let later = t0 + Duration::from_secs(301);
        assert_eq!(replay(&h, &k, later, 1).unwrap(), vec!["2:new"]);
        assert_eq!(replay(&h, &k, later, 0), None);
    }

    #[test]
    fn the_memory_cap_drops_the_oldest_events_first() {
        // 64 shards; a cap of 64 * (100 + 3 overheads) bytes gives each shard room for three
        // events of 20 bytes and a few more.
        let h = History::new(retention(1000, 64 * (100 + 3 * HELD_OVERHEAD)));
        let k = key("task:a");
        let now = Instant::now();
        for _ in 0..50 {
            publish(&h, &k, now, &"x".repeat(20));
        }
        assert!(h.bytes() <= 100 + 3 * HELD_OVERHEAD, "{}", h.bytes());
        let held = h.with_channel(&k, now, |l| l.events.len());
        assert!(held >= 3, "{held}");
        assert!(replay(&h, &k, now, 50 - held as u64).is_some());
        assert!(replay(&h, &k, now, 49 - held as u64).is_none());
    }

    #[test]
    fn bookkeeping_stays_bounded_when_count_trims_a_hot_channel() {
        let h = History::new(retention(2, 1 << 30));
        let k = key("task:a");
        let now = Instant::now();
        for _ in 0..10_000 {
            publish(&h, &k, now, "e");
        }
        let shard = h.shard(&k);
        assert_eq!(shard.held, 2);
        assert!(shard.order.len() <= 2 * 2 + 65, "{}", shard.order.len());
    }

    #[test]
    fn idle_channels_are_forgotten_and_come_back_with_a_new_epoch() {
        let h = History::new(retention(100, 1 << 20));
        let t0 = Instant::now();
        publish(&h, &key("task:a"), t0, "x");
        let e1 = h.with_channel(&key("task:a"), t0, |l| l.epoch().clone());
        h.hold(&key("task:b"), t0);
        let later = t0 + Duration::from_secs(301);
        assert_eq!(h.sweep(later, Duration::from_secs(300)), 1);
        assert_eq!(h.len(), 1);
        assert_eq!(h.bytes(), 0);
        let (off, e2) = h.with_channel(&key("task:a"), later, |l| {
            (l.position().offset, l.epoch().clone())
        });
        assert_eq!(off, 0);
        assert_ne!(e1, e2);
    }
}
