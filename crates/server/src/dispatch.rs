//! What a broker delivers, turned into frames and handed to this node's subscribers; and the
//! subscribe join.
//!
//! [`Dispatch`] is the node's [`Sink`]: for each event on each channel it encodes the frame once
//! (only when someone on this node holds the channel) and hands the shared bytes to
//! [`Hub::fan_out`]. It never assigns positions or keeps history: those are the broker's.
//!
//! # The join
//!
//! A subscribe must see a channel's position and join its live stream without a gap and without a
//! duplicate, whatever broker is behind it (a backplane delivers live events asynchronously). The
//! join ([`Dispatch::subscribe`]):
//!
//! 1. registers the connection as a *joiner* of the channel: from here on, every event delivered
//!    on the channel is also buffered for it (with its offset and epoch);
//! 2. tells the broker the channel is held, if this is the node's first subscriber of it;
//! 3. asks the broker for the channel's position and, with `since`, the events after it;
//! 4. under the join lock: queues the `subscribed` reply, then the replay, then the buffered
//!    events past the position (for a newcomer a buffered event at or below it is in the replay
//!    or was before the subscribe: dropped; a connection that was subscribed already gets those
//!    before the reply, as it has not seen them), and moves the connection into the hub, where
//!    live events reach it directly. Only then does the join stop counting as under way.
//!
//! While any join is under way on the node, a delivery fans out under the join shard's lock
//! (the question "is a join under way?" is asked under the hub shard's lock), so each event is
//! either buffered for a joiner (and queued here) or fanned out to it from the hub after the
//! move: never both, never neither. With no join under way a delivery takes no join lock.
//!
//! A replay that would not fit the subscriber's outbox cannot be delivered whole: that is
//! `recovered: false`, not a 4009 loop.
//!
//! Lock order: broker (the memory broker's history shard) -> join shard -> hub shard. Nothing
//! here awaits while holding a lock; broker calls are made outside the join lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cortex_protocol::event::write_delivery;
use cortex_protocol::{ServerMessage, Since};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::broker::{Broker, BrokerError, Delivery, EventBody, Position, Sink};
use crate::hub::{ChannelKey, ConnId, Hub, Subscriber, Tally};
use crate::metrics;

/// Shards of the join table (joins are brief; contention is rare).
const SHARDS: usize = 16;

/// What a subscribe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribed {
    /// The channel's position when the subscriber joined.
    pub position: Position,
    /// With `since`: whether every missed event was (or needed no) replay.
    pub recovered: Option<bool>,
}

/// Builds the `subscribed` reply once the position is known.
pub(crate) type ReplyFn<'a> = &'a (dyn Fn(&Subscribed) -> Utf8Bytes + Sync);

/// One connection joining a channel: the live events delivered meanwhile.
struct Joiner {
    sub: Subscriber,
    /// It was subscribed already: nothing buffered may be dropped, it has not seen any of it.
    was_member: bool,
    buffered: Vec<(u64, Arc<str>, Utf8Bytes)>,
    bytes: usize,
    /// More arrived than its outbox could take: it closes with 4009 once joined.
    overflowed: bool,
}

impl Joiner {
    fn buffer(&mut self, offset: u64, epoch: &Arc<str>, frame: &Utf8Bytes) {
        if self.overflowed {
            return;
        }
        if !self
            .sub
            .outbox
            .fits(self.buffered.len() + 1, self.bytes + frame.len())
        {
            self.overflowed = true;
            self.buffered = Vec::new();
            return;
        }
        self.bytes += frame.len();
        self.buffered.push((offset, epoch.clone(), frame.clone()));
    }
}

type JoinShard = HashMap<ChannelKey, Vec<Joiner>>;

/// The node's delivery: broker -> frames -> hub, and the subscribe join.
pub(crate) struct Dispatch {
    hub: Hub,
    joins: Box<[Mutex<JoinShard>]>,
    /// Joins in progress on the whole node: deliveries skip the join table when there are none.
    joining: AtomicUsize,
    /// Deliveries into this node's connections since start (the operators' deliveries/s).
    delivered: AtomicU64,
    /// Where the backplane's control messages go (the admin module's reader), once asked for.
    signals: Mutex<Option<tokio::sync::mpsc::Sender<Vec<u8>>>>,
}

impl Default for Dispatch {
    fn default() -> Self {
        Dispatch::new()
    }
}

/// An event's frame on one channel: the bytes every subscriber of the channel shares.
fn encode(key: &ChannelKey, event: &EventBody, offset: u64, epoch: &str) -> Utf8Bytes {
    Utf8Bytes::from(write_delivery(
        event.event_type,
        &key.channel,
        &event.id,
        offset,
        epoch,
        &event.payload_json,
    ))
}

impl Dispatch {
    /// No subscribers yet.
    pub(crate) fn new() -> Dispatch {
        Dispatch {
            hub: Hub::new(),
            joins: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            joining: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            signals: Mutex::new(None),
        }
    }

    /// Deliveries into this node's connections since start.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// From now on the backplane's control messages go to the returned receiver (at most
    /// `bound` wait; more are dropped: they are heartbeats and requests that a next one
    /// repeats or that an operator retries).
    pub(crate) fn signals(&self, bound: usize) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = tokio::sync::mpsc::channel(bound);
        *self.signals.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// This node's subscriptions.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    fn joins(&self, key: &ChannelKey) -> MutexGuard<'_, JoinShard> {
        self.joins[key.shard(SHARDS)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes `sub` to `key` (see the module docs): its outbox gets `reply(..)`, then the
    /// replay for `since`, then every live event after the position, in order. A connection
    /// already subscribed gets the reply and replay again, and stays subscribed once.
    pub(crate) async fn subscribe(
        &self,
        broker: &dyn Broker,
        key: &ChannelKey,
        sub: Subscriber,
        since: Option<&Since>,
        reply: ReplyFn<'_>,
    ) -> Result<Subscribed, BrokerError> {
        let conn = sub.conn;
        let (first, was_member) = self.begin(key, sub);
        if first {
            broker.hold(key);
        }
        let recovery = match broker.recover(key, since).await {
            Ok(r) => r,
            Err(e) => {
                self.abort(broker, key, conn, was_member);
                return Err(e);
            }
        };
        let position = recovery.position;
        // Encoded outside the lock; queued under it.
        let replay: Option<Vec<Utf8Bytes>> = recovery.events.map(|events| {
            events
                .iter()
                .map(|r| encode(key, &r.event, r.offset, &position.epoch))
                .collect()
        });
        let mut joins = self.joins(key);
        let Some(joiner) = take_joiner(&mut joins, key, conn) else {
            unreachable!("a joiner leaves the table only here or in abort");
        };
        let outbox = &joiner.sub.outbox;
        let replay = replay.filter(|r| {
            let bytes = r.iter().map(|b| b.len()).sum::<usize>();
            outbox.fits(r.len() + 1, bytes + 256)
        });
        let subscribed = Subscribed {
            recovered: since.map(|_| replay.is_some()),
            position,
        };
        if let Some(recovered) = subscribed.recovered {
            metrics::recovery(recovered, replay.as_ref().map_or(0, Vec::len));
        }
        // A full outbox refuses these; the connection is closing with 4009 anyway, and its
        // client resumes again.
        let pos = &subscribed.position;
        let after = |offset: u64, epoch: &Arc<str>| offset > pos.offset || *epoch != pos.epoch;
        let (mut before, mut later) = (Vec::new(), Vec::new());
        for (offset, epoch, frame) in joiner.buffered {
            if after(offset, &epoch) {
                later.push(frame);
            } else if joiner.was_member {
                // A member missed these while it re-joined: they come before the reply. For a
                // newcomer they are in the replay, or from before it subscribed.
                before.push(frame);
            }
        }
        for frame in before {
            let _ = outbox.push(frame);
        }
        let _ = outbox.push(reply(&subscribed));
        for frame in replay.into_iter().flatten() {
            let _ = outbox.push(frame);
        }
        if joiner.overflowed {
            outbox.overflow();
        }
        for frame in later {
            let _ = outbox.push(frame);
        }
        self.hub.subscribe(key, joiner.sub);
        // Only now: a delivery that finds no join under way must find the connection in the hub.
        self.joining.fetch_sub(1, Ordering::SeqCst);
        drop(joins);
        Ok(subscribed)
    }

    /// Registers a joiner; says whether the channel is new to this node (no member, no other
    /// joiner) and whether the connection was a member already (it leaves the hub meanwhile: its
    /// live events go through the join like a newcomer's).
    fn begin(&self, key: &ChannelKey, sub: Subscriber) -> (bool, bool) {
        let mut joins = self.joins(key);
        // Counted before a member leaves the hub: a delivery asks (under the hub's lock) whether
        // anyone is joining, so it either reached the member or goes through the join table.
        self.joining.fetch_add(1, Ordering::SeqCst);
        let was_member = self.hub.unsubscribe(key, sub.conn);
        let first = !was_member && !joins.contains_key(key) && !self.hub.has_subscribers(key);
        joins.entry(key.clone()).or_default().push(Joiner {
            sub,
            was_member,
            buffered: Vec::new(),
            bytes: 0,
            overflowed: false,
        });
        (first, was_member)
    }

    /// A join whose recovery failed: a newcomer is dropped (the channel released if it was the
    /// last); a member keeps its subscription, with what was buffered meanwhile.
    fn abort(&self, broker: &dyn Broker, key: &ChannelKey, conn: ConnId, was_member: bool) {
        let mut joins = self.joins(key);
        let Some(joiner) = take_joiner(&mut joins, key, conn) else {
            return;
        };
        if was_member {
            if joiner.overflowed {
                joiner.sub.outbox.overflow();
            }
            for (_, _, frame) in joiner.buffered {
                let _ = joiner.sub.outbox.push(frame);
            }
            self.hub.subscribe(key, joiner.sub);
            self.joining.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        self.joining.fetch_sub(1, Ordering::SeqCst);
        let last = !joins.contains_key(key) && !self.hub.has_subscribers(key);
        drop(joins);
        if last {
            broker.release(key);
        }
    }

    /// Removes a subscription (idempotent); the last one of a channel on this node releases it.
    pub(crate) fn unsubscribe(&self, broker: &dyn Broker, key: &ChannelKey, conn: ConnId) {
        let joins = self.joins(key);
        let last = self.hub.unsubscribe(key, conn)
            && !joins.contains_key(key)
            && !self.hub.has_subscribers(key);
        drop(joins);
        if last {
            broker.release(key);
        }
    }
}

/// Takes `conn`'s joiner of `key` out of the table (the key's entry too when it was the last).
fn take_joiner(joins: &mut JoinShard, key: &ChannelKey, conn: ConnId) -> Option<Joiner> {
    let list = joins.get_mut(key)?;
    let at = list.iter().position(|j| j.sub.conn == conn)?;
    let joiner = list.swap_remove(at);
    if list.is_empty() {
        joins.remove(key);
    }
    Some(joiner)
}

impl Sink for Dispatch {
    fn deliver(&self, d: &Delivery<'_>) {
        // The frame's length, for the bytes metric (made once, when the channel has members).
        let len = AtomicUsize::new(0);
        let make = || {
            let frame = encode(d.key, d.event, d.offset, d.epoch);
            len.store(frame.len(), Ordering::Relaxed);
            frame
        };
        let n = self.send(d.key, d.offset, d.epoch, make, &d.event.tally);
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        metrics::delivered(d.key.channel.kind(), n, len.load(Ordering::Relaxed));
    }

    fn signal(&self, message: &[u8]) {
        let signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = &*signals {
            let _ = tx.try_send(message.to_vec());
        }
    }

    fn reset(&self, key: &ChannelKey, position: &Position) {
        let make = || {
            Utf8Bytes::from(
                ServerMessage::Subscribed {
                    channel_id: key.channel.to_string(),
                    offset: position.offset,
                    epoch: position.epoch.to_string(),
                    recovered: Some(false),
                    r#ref: None,
                }
                .to_json(),
            )
        };
        metrics::continuity_notice();
        self.send(
            key,
            position.offset,
            &position.epoch,
            make,
            &Tally::default(),
        );
    }
}

impl Dispatch {
    /// Hands one frame of `key` at `offset` to the hub, and to the channel's joiners.
    fn send(
        &self,
        key: &ChannelKey,
        offset: u64,
        epoch: &Arc<str>,
        make: impl Fn() -> Utf8Bytes,
        tally: &Tally,
    ) -> usize {
        let no_joins = || self.joining.load(Ordering::SeqCst) == 0;
        let fast = self.hub.fan_out_if(key, no_joins, &make, tally);
        if let Some(n) = fast {
            n
        } else {
            // Someone on the node is joining. The fan-out happens under the join shard's lock,
            // so a member of this channel that starts to re-join either got this event from the
            // hub or finds it buffered; a newcomer that registers after this event was delivered
            // reads a position that includes it (the memory broker delivers under the channel's
            // lock, which its recovery takes; a backplane delivers only what it has stored).
            let mut joins = self.joins(key);
            match joins.get_mut(key) {
                None => self.hub.fan_out(key, make, tally),
                Some(joiners) => {
                    let frame = make();
                    for j in joiners.iter_mut() {
                        j.buffer(offset, epoch, &frame);
                    }
                    self.hub.fan_out(key, || frame, tally)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::broker::test_util::{key, prepared};
    use crate::ws::{Outbox, Queue};
    use futures_util::FutureExt;

    fn node() -> (Arc<Dispatch>, MemoryBroker) {
        let dispatch = Arc::new(Dispatch::new());
        let broker = MemoryBroker::with_defaults(dispatch.clone());
        (dispatch, broker)
    }

    fn reply(s: &Subscribed) -> Utf8Bytes {
        Utf8Bytes::from(format!(
            r#"{{"type":"subscribed","offset":{},"recovered":{:?}}}"#,
            s.position.offset, s.recovered
        ))
    }

    fn join(
        d: &Dispatch,
        b: &MemoryBroker,
        ch: &str,
        conn: ConnId,
        outbox: &Outbox,
        since: Option<&Since>,
    ) -> Subscribed {
        let sub = Subscriber {
            conn,
            outbox: outbox.clone(),
        };
        d.subscribe(b, &key("o", ch), sub, since, &reply)
            .now_or_never()
            .unwrap()
            .unwrap()
    }

    fn drain(o: &Outbox) -> Vec<Utf8Bytes> {
        let mut v = Queue::new();
        o.try_batch(&mut v);
        v.into_vec()
    }

    fn offsets(frames: &[Utf8Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|m| {
                serde_json::from_str::<cortex_protocol::Delivery>(m.as_str())
                    .unwrap()
                    .offset
            })
            .collect()
    }

    fn publish(b: &MemoryBroker, channels: &[&str], n: usize) {
        for _ in 0..n {
            let events = [prepared("o", channels, None)];
            b.publish(&events).now_or_never().unwrap().unwrap();
        }
    }

    #[test]
    fn an_event_is_encoded_once_per_channel_and_its_bytes_shared() {
        let (d, b) = node();
        let outs: Vec<Outbox> = (0..3).map(|_| Outbox::new(1 << 20, 1000)).collect();
        for (i, o) in outs.iter().enumerate() {
            join(&d, &b, "task:t", i as ConnId, o, None);
            drain(o);
        }
        let ev = prepared("o", &["task:t"], None);
        b.publish(std::slice::from_ref(&ev))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(ev.body.tally.delivered(), 3);
        let got: Vec<Utf8Bytes> = outs.iter().flat_map(drain).collect();
        assert_eq!(got.len(), 3);
        let ptr = got[0].as_str().as_ptr();
        assert!(
            got.iter().all(|m| m.as_str().as_ptr() == ptr),
            "every connection shares one buffer"
        );
    }

    #[test]
    fn a_subscriber_gets_its_reply_then_the_replay_then_live_events_in_order() {
        let (d, b) = node();
        let early = Outbox::new(1 << 20, 1000);
        let first = join(&d, &b, "task:t", 1, &early, None);
        publish(&b, &["task:t", "project:p"], 3);
        let since = Since {
            offset: 1,
            epoch: first.position.epoch.to_string(),
        };
        let late = Outbox::new(1 << 20, 1000);
        let s = join(&d, &b, "task:t", 2, &late, Some(&since));
        assert_eq!(s.recovered, Some(true));
        assert_eq!(s.position.offset, 3);
        publish(&b, &["task:t"], 2);
        let got = drain(&late);
        assert!(got[0].as_str().contains(r#""type":"subscribed""#));
        assert_eq!(offsets(&got[1..]), [2, 3, 4, 5], "no gap and no duplicate");
        assert_eq!(offsets(&drain(&early)[1..]), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_first_subscriber_holds_the_channel_and_the_last_releases_it() {
        let (d, b) = node();
        let k = key("o", "task:t");
        let (o1, o2) = (Outbox::new(1 << 20, 100), Outbox::new(1 << 20, 100));
        join(&d, &b, "task:t", 1, &o1, None);
        join(&d, &b, "task:t", 2, &o2, None);
        join(&d, &b, "task:t", 2, &o2, None);
        assert_eq!(d.hub().subscribers(&k), 2, "a repeated subscribe stays one");
        d.unsubscribe(&b, &k, 1);
        d.unsubscribe(&b, &k, 1);
        assert_eq!(d.hub().subscribers(&k), 1);
        d.unsubscribe(&b, &k, 2);
        assert_eq!(d.hub().subscribers(&k), 0);
    }

    #[test]
    fn a_replay_bigger_than_the_outbox_is_refused_as_not_recovered() {
        let (d, b) = node();
        let o = Outbox::new(1 << 20, 1000);
        let first = join(&d, &b, "task:t", 1, &o, None);
        publish(&b, &["task:t"], 50);
        let small = Outbox::new(1 << 20, 10);
        let since = Since {
            offset: 0,
            epoch: first.position.epoch.to_string(),
        };
        let s = join(&d, &b, "task:t", 9, &small, Some(&since));
        assert_eq!(s.recovered, Some(false));
        assert!(!small.overflowed());
        assert_eq!(drain(&small).len(), 1, "only the reply");
    }

    #[test]
    fn a_full_outbox_never_blocks_the_publisher_and_others_still_receive() {
        let (d, b) = node();
        let small = Outbox::new(1 << 20, 2);
        let big = Outbox::new(1 << 20, 1000);
        join(&d, &b, "task:t", 1, &small, None);
        join(&d, &b, "task:t", 2, &big, None);
        drain(&big);
        publish(&b, &["task:t"], 10);
        assert!(small.overflowed());
        assert_eq!(drain(&big).len(), 10);
    }

    #[test]
    fn a_failed_recovery_drops_a_newcomer_and_keeps_a_member() {
        use crate::broker::test_util::Flaky;
        let d = Arc::new(Dispatch::new());
        let b = Flaky::new(d.clone());
        let k = key("o", "task:t");
        let member = Outbox::new(1 << 20, 100);
        let sub = |conn, outbox: &Outbox| Subscriber {
            conn,
            outbox: outbox.clone(),
        };
        d.subscribe(&b, &k, sub(1, &member), None, &reply)
            .now_or_never()
            .unwrap()
            .unwrap();
        drain(&member);
        b.down.store(true, Ordering::SeqCst);
        let newcomer = Outbox::new(1 << 20, 100);
        let err = d
            .subscribe(&b, &k, sub(2, &newcomer), None, &reply)
            .now_or_never()
            .unwrap();
        assert_eq!(err.unwrap_err(), BrokerError::Unavailable);
        let again = d
            .subscribe(&b, &k, sub(1, &member), None, &reply)
            .now_or_never()
            .unwrap();
        assert_eq!(again.unwrap_err(), BrokerError::Unavailable);
        assert_eq!(
            d.hub().subscribers(&k),
            1,
            "the member stays, the newcomer is not added"
        );
        assert_eq!(d.joining.load(Ordering::SeqCst), 0, "no join left behind");
        b.down.store(false, Ordering::SeqCst);
        let ev = prepared("o", &["task:t"], None);
        b.publish(std::slice::from_ref(&ev))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(offsets(&drain(&member)), [1], "the member still receives");
        assert!(drain(&newcomer).is_empty());
    }

    #[test]
    fn a_member_that_subscribes_again_misses_no_event_published_meanwhile() {
        let (d, b) = node();
        let b = Arc::new(b);
        let member = Outbox::new(1 << 30, 1 << 20);
        join(&d, &b, "task:t", 1, &member, None);
        let total = 20_000;
        let publisher = {
            let b = b.clone();
            std::thread::spawn(move || publish(&b, &["task:t"], total))
        };
        let mut frames = Vec::new();
        while !publisher.is_finished() {
            join(&d, &b, "task:t", 1, &member, None);
            frames.extend(drain(&member));
        }
        publisher.join().unwrap();
        frames.extend(drain(&member));
        let events: Vec<Utf8Bytes> = frames
            .into_iter()
            .filter(|f| !f.as_str().contains(r#""type":"subscribed""#))
            .collect();
        let got = offsets(&events);
        let want: Vec<u64> = (1..=total as u64).collect();
        assert_eq!(got.len(), want.len(), "every event once");
        assert_eq!(got, want, "in order, none missed");
    }

    #[test]
    fn newcomers_joining_while_events_flow_get_every_event_after_their_position_once() {
        let (d, b) = node();
        let b = Arc::new(b);
        let total = 5_000;
        let publisher = {
            let b = b.clone();
            std::thread::spawn(move || publish(&b, &["task:t"], total))
        };
        let mut joined = Vec::new();
        let mut conn = 100;
        while !publisher.is_finished() && joined.len() < 50 {
            let o = Outbox::new(1 << 30, 1 << 20);
            let s = join(&d, &b, "task:t", conn, &o, None);
            joined.push((s.position.offset, o));
            conn += 1;
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        publisher.join().unwrap();
        assert!(joined.len() > 10, "joins happened while events flowed");
        for (position, o) in joined {
            let frames = drain(&o);
            assert!(frames[0].as_str().contains(r#""type":"subscribed""#));
            let want: Vec<u64> = (position + 1..=total as u64).collect();
            assert_eq!(offsets(&frames[1..]), want, "joined at {position}");
        }
    }

    #[test]
    fn an_event_on_two_channels_counts_each_connection_once() {
        let (d, b) = node();
        let o = Outbox::new(1 << 20, 100);
        join(&d, &b, "task:t", 1, &o, None);
        join(&d, &b, "project:p", 1, &o, None);
        let other = Outbox::new(1 << 20, 100);
        join(&d, &b, "project:p", 2, &other, None);
        let ev = prepared("o", &["task:t", "project:p"], None);
        b.publish(std::slice::from_ref(&ev))
            .now_or_never()
            .unwrap()
            .unwrap();
        assert_eq!(ev.body.tally.delivered(), 2, "two connections");
        assert_eq!(
            drain(&o).len(),
            4,
            "two replies, and the event once per channel"
        );
    }
}
