//! Delivery between the publish API and the hubs of every node.
//!
//! The publish path is one road for one node and for many: `api -> Broker::publish -> (memory or
//! Redis) -> each node's Hub::fan_out -> each Outbox`. A broker also answers subscribes, because
//! a subscribe must see a channel's position and join its live stream atomically: the
//! `subscribed` reply is queued before any event that follows it.

mod memory;

use std::sync::Arc;

use cortex_protocol::{EventType, Since};
use futures_util::future::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::history::Position;
use crate::hub::{ChannelKey, ConnId, Subscriber};

pub use memory::MemoryBroker;

/// An event ready to route: validated, given its id, its payload serialized once.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    /// The event id, the same on every channel.
    pub id: String,
    /// The tenant.
    pub org: Arc<str>,
    /// The type.
    pub event_type: EventType,
    /// The payload as JSON text, serialized once.
    pub payload_json: String,
    /// Where it goes.
    pub channels: Vec<cortex_protocol::ChannelId>,
}

/// What a subscribe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's position when the subscriber joined.
    pub position: Position,
    /// With `since`: whether every missed event was (or needed no) replay.
    pub recovered: Option<bool>,
}

/// Why the broker could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backplane cannot be reached; the publish API answers 503.
    #[error("the backplane is unavailable")]
    Unavailable,
}

/// Builds the `subscribed` reply once the position is known.
pub type ReplyFn<'a> = &'a (dyn Fn(&Subscribed) -> Utf8Bytes + Sync);

/// Delivery between nodes. [`MemoryBroker`] is the one-node default.
pub trait Broker: Send + Sync + 'static {
    /// Publishes events in order; returns, per event, how many connections of this node it
    /// was delivered to.
    fn publish<'a>(
        &'a self,
        events: &'a [PreparedEvent],
    ) -> BoxFuture<'a, Result<Vec<usize>, BrokerError>>;

    /// Subscribes `sub` to `key`, queueing `reply(..)` into its outbox before any event of the
    /// channel that follows.
    fn subscribe<'a>(
        &'a self,
        key: &'a ChannelKey,
        sub: Subscriber,
        since: Option<&'a Since>,
        reply: ReplyFn<'a>,
    ) -> BoxFuture<'a, Result<Subscribed, BrokerError>>;

    /// Removes a subscription (idempotent).
    fn unsubscribe(&self, key: &ChannelKey, conn: ConnId);

    /// Whether the broker can deliver now (for `/readyz`).
    fn ready(&self) -> bool {
        true
    }

    /// Periodic housekeeping (forgetting idle channels).
    fn sweep(&self) {}
}
