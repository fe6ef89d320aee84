//! This node's subscriptions: channel -> the outboxes of the connections subscribed to it.
//!
//! Sharded by channel so unrelated channels never contend. Only synchronous work happens under a
//! shard lock (no `.await`): fan-out pushes pre-serialized bytes into bounded outboxes, which
//! never block. On a channel of at most [`DIRECT_FAN_OUT`] subscribers a push to an idle
//! connection is a non-blocking write to its socket (see [`crate::ws`]): at most that many
//! `writev` calls under the lock, each a few microseconds. On a longer channel, the idle
//! connections' queues are written, after the lock is let go, by flusher tasks of a
//! few connections each rather than by each connection's own task.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use cortex_protocol::ChannelId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::ws::Outbox;

/// A connection's id on this node.
pub type ConnId = u64;

const SHARDS: usize = 64;

/// A channel within one org: the same channel id in two orgs is two different channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The tenant.
    pub org: Arc<str>,
    /// The channel within it.
    pub channel: ChannelId,
}

impl ChannelKey {
    /// The key of `channel` in `org`.
    pub fn new(org: Arc<str>, channel: ChannelId) -> ChannelKey {
        ChannelKey { org, channel }
    }

    /// Which of `n` shards this key lives in.
    pub fn shard(&self, n: usize) -> usize {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        (h.finish() as usize) % n
    }
}

/// How many connections of this node one event reached, each counted once however many of the
/// event's channels it holds (the publish API's `recipients`). Carried with the event from the
/// publish service through the broker to the fan-out; an event from another node brings a fresh
/// one nobody reads.
#[derive(Debug, Default)]
pub struct Tally {
    delivered: AtomicUsize,
    /// For an event on several channels: the connections reached so far.
    seen: Option<Mutex<HashSet<ConnId>>>,
}

impl Tally {
    /// A tally for an event on `channels` channels.
    pub fn new(channels: usize) -> Tally {
        Tally {
            delivered: AtomicUsize::new(0),
            seen: (channels > 1).then(|| Mutex::new(HashSet::new())),
        }
    }

    /// Connections reached so far.
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// One subscription as the hub holds it.
#[derive(Clone)]
pub struct Subscriber {
    /// The connection.
    pub conn: ConnId,
    /// Where its messages go.
    pub outbox: Outbox,
}

type Shard = HashMap<ChannelKey, Members>;

/// Past this many subscribers a channel keeps an index from connection to position, so that
/// subscribing and leaving stay O(1) on a channel of tens of thousands (an `org:` channel).
const INDEX_ABOVE: usize = 32;
/// Channels with at most this many subscribers on the node let a delivery write to an idle
/// connection's socket directly (see [`crate::ws`]).
pub const DIRECT_FAN_OUT: usize = 64;
// A channel past `DIRECT_FAN_OUT` is long: it keeps the `Long` part its fan-out relies on.
const _: () = assert!(DIRECT_FAN_OUT > INDEX_ABOVE);

/// One channel's subscribers: a list to fan out over, and for a long list an index into it.
#[derive(Default)]
struct Members {
    list: Vec<Subscriber>,
    /// Boxed: most channels never have one, and every channel's entry carries the field (8
    /// bytes rather than a map's 32 and more in each of tens of thousands of entries).
    long: Option<Box<Long>>,
}

/// What only a long channel keeps.
struct Long {
    /// Connection -> position in the list.
    index: HashMap<ConnId, usize>,
    /// Alive while the flushers of the channel's last fan-out are at work (see
    /// [`Hub::fan_out`]).
    round: Weak<()>,
}

impl Members {
    fn position(&self, conn: ConnId) -> Option<usize> {
        match &self.long {
            Some(long) => long.index.get(&conn).copied(),
            None => self.list.iter().position(|s| s.conn == conn),
        }
    }

    fn insert(&mut self, sub: Subscriber) -> bool {
        if self.position(sub.conn).is_some() {
            return false;
        }
        if let Some(long) = &mut self.long {
            long.index.insert(sub.conn, self.list.len());
        }
        self.list.push(sub);
        if self.long.is_none() && self.list.len() > INDEX_ABOVE {
            self.long = Some(Box::new(Long {
                index: self
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.conn, i))
                    .collect(),
                round: Weak::new(),
            }));
        }
        true
    }

    fn remove(&mut self, conn: ConnId) -> bool {
        let Some(i) = self.position(conn) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(long) = &mut self.long {
            long.index.remove(&conn);
            if let Some(moved) = self.list.get(i) {
                long.index.insert(moved.conn, i);
            }
            if self.list.len() < INDEX_ABOVE / 2 {
                self.long = None;
            }
        }
        if self.list.capacity() > 8 && self.list.len() < self.list.capacity() / 4 {
            self.list.shrink_to(self.list.len() * 2);
        }
        true
    }
}

/// How many idle connections one flusher writes to: many enough that scheduling the flushers
/// costs little beside the writes, few enough that they spread over a runtime's workers and that
/// the runtime still polls its I/O driver (and reads the next publish) often during a burst.
const FLUSH_CHUNK: usize = 16;

/// The outboxes a long channel's fan-out left for flushers ([`Outbox::deliver_later`]), in
/// chunks of [`FLUSH_CHUNK`].
struct Flushes {
    chunks: Vec<Vec<Outbox>>,
    /// Held by the flushers until they are done: the channel sees its round in progress.
    round: Arc<()>,
}

impl Flushes {
    fn add(&mut self, due: bool, outbox: &Outbox) {
        if !due {
            return;
        }
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < FLUSH_CHUNK => chunk.push(outbox.clone()),
            _ => {
                let mut chunk = Vec::with_capacity(FLUSH_CHUNK);
                chunk.push(outbox.clone());
                self.chunks.push(chunk);
            }
        }
    }

    /// Runs a flusher task for each chunk; outside a runtime (an embedder publishing from its
    /// own thread), flushes them in place.
    fn start(self) {
        let runtime = tokio::runtime::Handle::try_current();
        for chunk in self.chunks {
            let round = self.round.clone();
            let flush = move || {
                chunk.iter().for_each(Outbox::flush);
                drop(round);
            };
            match &runtime {
                Ok(runtime) => drop(runtime.spawn(async move { flush() })),
                Err(_) => flush(),
            }
        }
    }
}

/// Channel -> subscribers, for this node only.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &ChannelKey) -> MutexGuard<'_, Shard> {
        self.shards[key.shard(SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber; a connection already subscribed stays subscribed once.
    /// Returns whether it was added.
    pub fn subscribe(&self, key: &ChannelKey, sub: Subscriber) -> bool {
        let mut shard = self.shard(key);
        shard.entry(key.clone()).or_default().insert(sub)
    }

    /// Removes a connection from a channel. Returns whether it was subscribed.
    pub fn unsubscribe(&self, key: &ChannelKey, conn: ConnId) -> bool {
        let mut shard = self.shard(key);
        let Entry::Occupied(mut e) = shard.entry(key.clone()) else {
            return false;
        };
        let removed = e.get_mut().remove(conn);
        if e.get().list.is_empty() {
            e.remove();
        }
        removed
    }

    /// Pushes the message `make` builds (only when `key` has subscribers here) to every
    /// subscriber of `key`. Returns how many outboxes took it, and adds to `tally` the
    /// connections it had not counted yet (an event on several channels). A full outbox is
    /// marked overflowed and its connection closes itself with 4009.
    pub fn fan_out(
        &self,
        key: &ChannelKey,
        make: impl FnOnce() -> Utf8Bytes,
        tally: &Tally,
    ) -> usize {
        self.fan_out_if(key, || true, make, tally)
            .expect("the condition holds")
    }

    /// [`Hub::fan_out`] if `proceed()`, asked under the channel's shard lock (so a change of
    /// membership is either before the question or after the fan-out); `None` when it said no.
    pub fn fan_out_if(
        &self,
        key: &ChannelKey,
        proceed: impl FnOnce() -> bool,
        make: impl FnOnce() -> Utf8Bytes,
        tally: &Tally,
    ) -> Option<usize> {
        let mut shard = self.shard(key);
        if !proceed() {
            return None;
        }
        let Some(members) = shard.get_mut(key) else {
            return Some(0);
        };
        let msg = &make();
        let mut seen = tally
            .seen
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()));
        let mut delivered = 0;
        // A small channel's deliveries may skip the connections' tasks (see `socket`). A long
        // one's are queued, and each connection's queue goes out in one system call however many
        // events wait in it. An idle connection's queue is written by a flusher: one task writing
        // many connections' queues costs a third of the instructions of waking, scheduling and
        // polling each connection's task, and the burst ends sooner. But while the flushers of
        // the channel's previous event are still at work, the channel is published to faster
        // than they write, and the connections' own tasks take over: their longer round lets
        // the runtime read the next publishes in between, so events pile up in the queues and go
        // out several to a write (a broadcast at saturation).
        let direct = members.list.len() <= DIRECT_FAN_OUT;
        let long = members.long.as_deref_mut().filter(|_| !direct);
        // Flushers when the channel's previous round is over; `None` otherwise.
        let mut flushes = match long {
            Some(long) if long.round.strong_count() == 0 => {
                let round = Arc::new(());
                long.round = Arc::downgrade(&round);
                Some(Flushes {
                    chunks: Vec::new(),
                    round,
                })
            }
            _ => None,
        };
        for s in &members.list {
            let taken = if direct {
                s.outbox.deliver(msg.clone(), true)
            } else {
                s.outbox
                    .deliver_later(msg.clone(), flushes.is_some())
                    .map(|due| {
                        if let Some(flushes) = &mut flushes {
                            flushes.add(due, &s.outbox);
                        }
                    })
            };
            if taken.is_ok() && seen.as_mut().is_none_or(|seen| seen.insert(s.conn)) {
                delivered += 1;
            }
        }
        drop(seen);
        drop(shard);
        tally.delivered.fetch_add(delivered, Ordering::Relaxed);
        if let Some(flushes) = flushes {
            flushes.start();
        }
        Some(delivered)
    }

    /// How many connections are subscribed to `key`.
    pub fn subscribers(&self, key: &ChannelKey) -> usize {
        self.shard(key).get(key).map_or(0, |m| m.list.len())
    }

    /// Whether anyone on this node is subscribed to `key`.
    pub fn has_subscribers(&self, key: &ChannelKey) -> bool {
        self.subscribers(key) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(org: &str, ch: &str) -> ChannelKey {
        ChannelKey::new(Arc::from(org), ChannelId::parse(ch).unwrap())
    }

    fn sub(conn: ConnId) -> (Subscriber, Outbox) {
        let outbox = Outbox::new(1 << 20, 100);
        (
            Subscriber {
                conn,
                outbox: outbox.clone(),
            },
            outbox,
        )
    }

    fn drained(o: &Outbox) -> Vec<Utf8Bytes> {
        let mut v = crate::ws::Queue::new();
        o.try_batch(&mut v);
        v.into_vec()
    }

    #[test]
    fn fan_out_reaches_every_subscriber_of_the_channel_in_its_org_only() {
        let hub = Hub::new();
        let (a, ao) = sub(1);
        let (b, bo) = sub(2);
        let (c, co) = sub(3);
        hub.subscribe(&key("o1", "agent:x"), a);
        hub.subscribe(&key("o1", "agent:x"), b);
        hub.subscribe(&key("o2", "agent:x"), c);
        assert_eq!(
            hub.fan_out(&key("o1", "agent:x"), || "m".into(), &Tally::default()),
            2
        );
        assert_eq!(drained(&ao).len(), 1);
        assert_eq!(drained(&bo).len(), 1);
        assert!(
            drained(&co).is_empty(),
            "another org's channel of the same name"
        );
    }

    #[test]
    fn a_long_channel_keeps_its_index_through_joins_and_leaves() {
        let hub = Hub::new();
        let k = key("o_1", "org:o_1");
        let mut boxes = Vec::new();
        for conn in 0..200 {
            let (s, o) = sub(conn);
            assert!(hub.subscribe(&k, s));
            boxes.push(o);
        }
        assert!(!hub.subscribe(&k, sub(150).0), "already subscribed");
        // Leave every third, from the middle out, so swap_remove moves entries around.
        for conn in (0..200).rev().filter(|c| c % 3 == 0) {
            assert!(hub.unsubscribe(&k, conn));
            assert!(!hub.unsubscribe(&k, conn));
        }
        assert_eq!(hub.subscribers(&k), 200 - 67);
        assert_eq!(
            hub.fan_out(&k, || Utf8Bytes::from("e"), &Tally::default()),
            133
        );
        for (conn, o) in boxes.iter().enumerate() {
            let want = usize::from(conn % 3 != 0);
            assert_eq!(drained(o).len(), want, "connection {conn}");
        }
        // Down below the index threshold and back up: still exact.
        for conn in (0..200).filter(|c| c % 3 != 0).take(120) {
            assert!(hub.unsubscribe(&k, conn));
        }
        assert_eq!(hub.subscribers(&k), 13);
        for conn in 200..260 {
            assert!(hub.subscribe(&k, sub(conn).0));
        }
        assert!(!hub.subscribe(&k, sub(259).0));
        assert_eq!(hub.subscribers(&k), 73);
    }

    #[test]
    fn subscribing_twice_delivers_once_and_unsubscribe_removes() {
        let hub = Hub::new();
        let (a, ao) = sub(1);
        let k = key("o", "task:t");
        assert!(hub.subscribe(&k, a.clone()));
        assert!(!hub.subscribe(&k, a));
        assert_eq!(hub.fan_out(&k, || "m".into(), &Tally::default()), 1);
        assert_eq!(drained(&ao).len(), 1);
        assert!(hub.unsubscribe(&k, 1));
        assert!(!hub.unsubscribe(&k, 1));
        assert_eq!(hub.fan_out(&k, || "m".into(), &Tally::default()), 0);
        assert!(!hub.has_subscribers(&k));
    }

    #[test]
    fn seen_counts_a_connection_once_across_channels() {
        let hub = Hub::new();
        let (a, _ao) = sub(1);
        hub.subscribe(&key("o", "task:t"), a.clone());
        hub.subscribe(&key("o", "project:p"), a);
        let tally = Tally::new(2);
        hub.fan_out(&key("o", "task:t"), || "m".into(), &tally);
        hub.fan_out(&key("o", "project:p"), || "m".into(), &tally);
        assert_eq!(tally.delivered(), 1);
    }
}
