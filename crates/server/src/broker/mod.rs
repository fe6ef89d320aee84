//! The backplane seam: positions, history, idempotency, and delivery between nodes.
//!
//! A [`Broker`] owns what must be one truth across nodes: each channel's offsets and epoch, its
//! recent history, and the idempotency keys of publishes. It never knows about sessions, frames
//! or sockets: it hands every event it delivers, on each channel, with that channel's offset and
//! epoch, to the node's [`Sink`] (the dispatch), in offset order per channel.
//!
//! The publish path is one road for one node and for many:
//! `publish -> Broker::publish -> (memory, or a backplane and back to every node) -> Sink::deliver
//! (dispatch) -> Hub::fan_out -> each outbox`.
//!
//! The node tells the broker which channels it holds ([`Broker::hold`] on a channel's first local
//! subscriber, [`Broker::release`] when its last one leaves), so a networked broker listens only
//! for what this node needs. Holds are counted: a release and the next hold of the same channel
//! by two connections may reach the broker in either order.
//!
//! [`MemoryBroker`] is the one-node default.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::sync::Arc;

use cortex_protocol::{ChannelId, EventType, Since};
use futures_util::future::BoxFuture;

use crate::hub::{ChannelKey, ConnId, Tally};

pub(crate) use memory::MemoryBroker;
#[cfg(feature = "redis")]
pub(crate) use redis::RedisBroker;

/// An event as every node delivers it: the same id, type and payload on each of its channels.
#[derive(Debug)]
pub(crate) struct EventBody {
    /// The event id, the same on every channel.
    pub id: String,
    /// The type.
    pub event_type: EventType,
    /// The payload as JSON text, serialized once.
    pub payload_json: String,
    /// This node's deliveries of it (for the publish answer's `recipients`).
    pub tally: Tally,
}

/// An event ready to publish: validated, given its id, its payload serialized once.
#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    /// The tenant.
    pub org: Arc<str>,
    /// Where it goes.
    pub channels: Vec<ChannelId>,
    /// The publisher's `idempotencyKey`, de-duplicated by the broker (across nodes when the
    /// broker spans them).
    pub idempotency_key: Option<String>,
    /// What every subscriber receives.
    pub body: Arc<EventBody>,
}

/// Where a channel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    /// The latest offset (0 before the first event).
    pub offset: u64,
    /// The current epoch.
    pub epoch: Arc<str>,
}

/// What a repeated `idempotencyKey` was first answered with (kept as JSON by a backplane).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FirstAnswer {
    /// The event id given the first time.
    pub id: String,
    /// The channels it went to.
    pub channels: Vec<String>,
}

/// What became of one published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Published: its position on each of its channels, in the event's channel order.
    Published(Vec<Position>),
    /// Its `idempotencyKey` was seen within the window: not delivered again.
    Duplicate(FirstAnswer),
}

/// One event on one channel, as the broker delivers it to the node.
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    /// The channel.
    pub key: &'a ChannelKey,
    /// The event.
    pub event: &'a EventBody,
    /// Its offset on this channel.
    pub offset: u64,
    /// The channel's epoch.
    pub epoch: &'a Arc<str>,
}

/// A channel's position and, for a `since`, what followed it.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// Where the channel stands now.
    pub position: Position,
    /// With `since`: every event after it, in offset order, when the broker still holds them
    /// all (possibly none); `None` when continuity cannot be proven. Without `since`: `None`.
    pub events: Option<Vec<Recovered>>,
}

/// One event of a [`Recovery`].
#[derive(Debug, Clone)]
pub(crate) struct Recovered {
    /// Its offset on the channel.
    pub offset: u64,
    /// The event.
    pub event: Arc<EventBody>,
}

/// Why the broker could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BrokerError {
    /// The backplane cannot be reached, or the broker is closed.
    #[error("the backplane is unavailable")]
    Unavailable,
}

/// A user, as connections are counted: (org, sub).
pub(crate) type UserKey = (Arc<str>, Arc<str>);

/// What a backplane answers for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Lease {
    /// Taken: the user had fewer than the maximum across nodes.
    Taken,
    /// The user has the maximum across nodes.
    Full,
    /// The backplane cannot tell now: the node's own count decides (and the lease is taken
    /// once the backplane is back, so the count across nodes converges).
    Unknown,
}

/// Connections counted across nodes, by leases that expire unless their node renews them.
pub(crate) trait Leases: Send + Sync + 'static {
    /// Takes a lease for connection `conn` of `user` unless `max` are held across nodes.
    fn take<'a>(&'a self, user: &'a UserKey, conn: ConnId, max: usize) -> BoxFuture<'a, Lease>;
    /// Gives the lease back (also when [`Lease::Unknown`]). Never blocks.
    fn give_back(&self, user: &UserKey, conn: ConnId);
}

/// Where a broker delivers: the node's dispatch.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Delivers one event on one channel to this node's subscribers. Called in offset order per
    /// channel; must not block.
    fn deliver(&self, delivery: &Delivery<'_>);

    /// The channel skipped events that cannot be delivered (the backplane lost them, or its
    /// history was lost): every subscriber is told, before the channel's next event, that it
    /// now stands at `position` without having recovered (CONTRACT.md section 6). Must not
    /// block.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn reset(&self, key: &ChannelKey, position: &Position);

    /// A control message another node (or this one) sent with [`Broker::signal`]. Must not
    /// block.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    fn signal(&self, _message: &[u8]) {}
}

/// Positions, history, idempotency and delivery between nodes.
pub(crate) trait Broker: Send + Sync + 'static {
    /// Publishes `events` in order: de-duplicates by idempotency key, assigns each a position on
    /// each of its channels, keeps it as history, and delivers it to every node holding its
    /// channels (this one included, before the future resolves when the broker is in-process).
    /// Per channel, delivery order is position order.
    fn publish<'a>(
        &'a self,
        events: &'a [PreparedEvent],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, BrokerError>>;

    /// The channel's position and, for `since`, the events after it. Resolves once this node
    /// receives the channel's live events (after [`Broker::hold`]), so an event published after
    /// the returned position is delivered to the sink.
    fn recover<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<&'a Since>,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>>;

    /// The same read as [`Broker::recover`] for someone who is not a subscriber (the admin
    /// API's history): it neither needs nor waits for the channel to be held.
    fn history<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<&'a Since>,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        self.recover(key, since)
    }

    /// This node has a first subscriber on `key` (counted; see the module docs). Never blocks.
    fn hold(&self, key: &ChannelKey);

    /// The last subscriber of `key` on this node left. Never blocks.
    fn release(&self, key: &ChannelKey);

    /// Whether the broker can publish and deliver now (`/readyz`, and 503 for publishes).
    fn ready(&self) -> bool;

    /// Periodic housekeeping (forgetting idle channels, expired keys).
    fn sweep(&self) {}

    /// Bytes of history this node holds itself (0 for a backplane that keeps it elsewhere).
    fn history_bytes(&self) -> usize {
        0
    }
    /// Where connections per user are counted across nodes, when the broker spans them.
    fn leases(&self) -> Option<Arc<dyn Leases>> {
        None
    }

    /// Starts listening to the control messages of every node of the backplane (each then goes
    /// to [`Sink::signal`]). A broker of one node has no other nodes: nothing to listen to.
    fn listen_signals(&self) {}

    /// Sends a control message (the admin module's heartbeats and disconnects) to every node
    /// that listens, this one included; false when it could not be sent (or the broker spans
    /// one node only).
    fn signal<'a>(&'a self, _message: &'a [u8]) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }

    /// Stops: later calls fail with [`BrokerError::Unavailable`]; connections to a backplane
    /// are let go.
    fn close(&self) -> BoxFuture<'_, ()>;
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Events and keys for the broker's and the dispatch's tests.

    use super::*;
    use cortex_protocol::ChannelId;

    /// A channel key.
    pub(crate) fn key(org: &str, channel: &str) -> ChannelKey {
        ChannelKey::new(Arc::from(org), ChannelId::parse(channel).unwrap())
    }

    /// A broker that can be taken down: while `down`, publishes and recoveries fail with
    /// [`BrokerError::Unavailable`] and it is not ready; otherwise it is the memory broker.
    pub(crate) struct Flaky {
        /// The broker behind it.
        pub inner: super::MemoryBroker,
        /// Whether it is down.
        pub down: std::sync::atomic::AtomicBool,
    }

    impl Flaky {
        /// A memory broker delivering into `sink`, up.
        pub(crate) fn new(sink: Arc<dyn Sink>) -> Flaky {
            Flaky {
                inner: super::MemoryBroker::with_defaults(sink),
                down: Default::default(),
            }
        }

        fn is_down(&self) -> bool {
            self.down.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Broker for Flaky {
        fn publish<'a>(
            &'a self,
            events: &'a [PreparedEvent],
        ) -> BoxFuture<'a, Result<Vec<Outcome>, BrokerError>> {
            if self.is_down() {
                return Box::pin(async { Err(BrokerError::Unavailable) });
            }
            self.inner.publish(events)
        }

        fn recover<'a>(
            &'a self,
            key: &'a ChannelKey,
            since: Option<&'a Since>,
        ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
            if self.is_down() {
                return Box::pin(async { Err(BrokerError::Unavailable) });
            }
            self.inner.recover(key, since)
        }

        fn hold(&self, key: &ChannelKey) {
            self.inner.hold(key)
        }

        fn release(&self, key: &ChannelKey) {
            self.inner.release(key)
        }

        fn ready(&self) -> bool {
            !self.is_down() && self.inner.ready()
        }

        fn close(&self) -> BoxFuture<'_, ()> {
            self.inner.close()
        }
    }

    /// A small event for `channels` of `org`.
    pub(crate) fn prepared(
        org: &str,
        channels: &[&str],
        idempotency_key: Option<&str>,
    ) -> PreparedEvent {
        PreparedEvent {
            org: Arc::from(org),
            channels: channels
                .iter()
                .map(|c| ChannelId::parse(c).unwrap())
                .collect(),
            idempotency_key: idempotency_key.map(str::to_owned),
            body: Arc::new(EventBody {
                id: crate::id::event_id(),
                event_type: EventType::TaskDeleted,
                payload_json: r#"{"taskId":"t","timestamp":"2026-11-25T20:40:16Z"}"#.into(),
                tally: Tally::new(channels.len()),
            }),
        }
    }
}
