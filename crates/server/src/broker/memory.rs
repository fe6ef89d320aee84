//! The in-memory broker: one node, no backplane. Offsets are assigned here, under the channel's
//! lock, and the event is fanned out under the same lock, which keeps per-channel order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_protocol::Since;
use cortex_protocol::event::write_delivery;
use futures_util::future::BoxFuture;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Broker, BrokerError, PreparedEvent, ReplyFn, Subscribed};
use crate::history::History;
use crate::hub::{ChannelKey, ConnId, Hub, Subscriber};
use crate::metrics;

/// One node's broker: history positions plus the local hub.
pub struct MemoryBroker {
    hub: Arc<Hub>,
    history: History,
    channel_idle: Duration,
}

impl MemoryBroker {
    /// A broker delivering into `hub`; channels idle for `channel_idle` are forgotten.
    pub fn new(hub: Arc<Hub>, channel_idle: Duration) -> MemoryBroker {
        MemoryBroker {
            hub,
            history: History::new(),
            channel_idle,
        }
    }

    fn publish_now(&self, events: &[PreparedEvent]) -> Vec<usize> {
        let now = Instant::now();
        let mut counts = Vec::with_capacity(events.len());
        for ev in events {
            let mut seen = (ev.channels.len() > 1).then(HashSet::new);
            let mut recipients = 0;
            for channel in &ev.channels {
                let key = ChannelKey::new(ev.org.clone(), channel.clone());
                recipients += self.history.with_channel(&key, now, |log| {
                    let offset = log.next_offset();
                    if !self.hub.has_subscribers(&key) {
                        return 0;
                    }
                    let bytes = Utf8Bytes::from(write_delivery(
                        ev.event_type,
                        channel,
                        &ev.id,
                        offset,
                        log.epoch(),
                        &ev.payload_json,
                    ));
                    self.hub.fan_out(&key, &bytes, seen.as_mut())
                });
            }
            metrics::delivered(recipients);
            counts.push(recipients);
        }
        counts
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(&'a self, events: &'a [PreparedEvent]) -> BoxFuture<'a, Result<Vec<usize>, BrokerError>> {
        let counts = self.publish_now(events);
        Box::pin(async move { Ok(counts) })
    }

    fn subscribe<'a>(
        &'a self,
        key: &'a ChannelKey,
        sub: Subscriber,
        since: Option<&'a Since>,
        reply: ReplyFn<'a>,
    ) -> BoxFuture<'a, Result<Subscribed, BrokerError>> {
        let result = self.history.with_channel(key, Instant::now(), |log| {
            let position = log.position();
            // No history is kept yet: continuity can be proven only when nothing was missed.
            let recovered = since.map(|s| s.epoch == *position.epoch && s.offset == position.offset);
            let subscribed = Subscribed { position, recovered };
            // The reply goes first, under the channel lock, so no event can overtake it. A full
            // outbox refuses it; the connection is closing with 4009 anyway.
            let _ = sub.outbox.push(reply(&subscribed));
            self.hub.subscribe(key, sub);
            subscribed
        });
        Box::pin(async move { Ok(result) })
    }

    fn unsubscribe(&self, key: &ChannelKey, conn: ConnId) {
        self.hub.unsubscribe(key, conn);
    }

    fn sweep(&self) {
        self.history
            .sweep(Instant::now(), self.channel_idle, |k| self.hub.has_subscribers(k));
    }
}
