//! The in-memory broker: one node, no backplane. Offsets are assigned under the channel's
//! history lock, and the event is handed to the node's sink under the same lock, which keeps
//! per-channel order and makes a subscribe's position exact.
//!
//! It owns the node's history ([`history`]) and its idempotency keys ([`idempotency`]); it never
//! builds a frame or touches a connection: delivery is the sink's.

pub(crate) mod history;
pub(crate) mod idempotency;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cortex_protocol::Since;
use futures_util::future::{BoxFuture, FutureExt, ready};

use super::{
    Broker, BrokerError, Delivery, FirstAnswer, Outcome, PreparedEvent, Recovered, Recovery, Sink,
};
use crate::config::Retention;
use crate::hub::ChannelKey;
use history::History;
use idempotency::Idempotency;

/// One node's broker: history positions, idempotency keys, and delivery into the node's sink.
pub(crate) struct MemoryBroker {
    history: History,
    idempotency: Idempotency,
    sink: Arc<dyn Sink>,
    channel_idle: Duration,
    closed: AtomicBool,
}

impl MemoryBroker {
    /// A broker delivering into `sink`, keeping `retention` of history and idempotency keys for
    /// `window` (at most `keys` at once); channels idle for `channel_idle` are forgotten.
    pub(crate) fn new(
        sink: Arc<dyn Sink>,
        retention: Retention,
        channel_idle: Duration,
        window: Duration,
        keys: usize,
    ) -> MemoryBroker {
        MemoryBroker {
            history: History::new(retention),
            idempotency: Idempotency::new(window, keys),
            sink,
            // A channel is never forgotten while its history could still serve a resume.
            channel_idle: channel_idle.max(retention.max_age),
            closed: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    /// Bytes of history held.
    pub(crate) fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    fn publish_now(&self, events: &[PreparedEvent]) -> Vec<Outcome> {
        let now = Instant::now();
        events
            .iter()
            .map(|ev| {
                if let Some(key) = &ev.idempotency_key {
                    let first = FirstAnswer {
                        id: ev.body.id.clone(),
                        channels: ev.channels.iter().map(|c| c.to_string()).collect(),
                    };
                    if let Some(seen) = self.idempotency.claim(&ev.org, key, first, now) {
                        return Outcome::Duplicate(seen);
                    }
                }
                let positions = ev
                    .channels
                    .iter()
                    .map(|channel| {
                        let key = ChannelKey::new(ev.org.clone(), channel.clone());
                        self.history.append(&key, now, &ev.body, |offset, epoch| {
                            self.sink.deliver(&Delivery {
                                key: &key,
                                event: &ev.body,
                                offset,
                                epoch,
                            })
                        })
                    })
                    .collect();
                Outcome::Published(positions)
            })
            .collect()
    }

    fn recover_now(&self, key: &ChannelKey, since: Option<&Since>) -> Recovery {
        self.history
            .with_channel(key, Instant::now(), |log| Recovery {
                position: log.position(),
                events: since.and_then(|s| log.since(s.offset, &s.epoch)).map(|it| {
                    it.map(|(offset, event)| Recovered {
                        offset,
                        event: event.clone(),
                    })
                    .collect()
                }),
            })
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        events: &'a [PreparedEvent],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, BrokerError>> {
        let out = if self.closed() {
            Err(BrokerError::Unavailable)
        } else {
            Ok(self.publish_now(events))
        };
        ready(out).boxed()
    }

    fn recover<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<&'a Since>,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        let out = if self.closed() {
            Err(BrokerError::Unavailable)
        } else {
            Ok(self.recover_now(key, since))
        };
        ready(out).boxed()
    }

    fn hold(&self, key: &ChannelKey) {
        self.history.hold(key, Instant::now());
    }

    fn release(&self, key: &ChannelKey) {
        self.history.release(key);
    }

    fn ready(&self) -> bool {
        !self.closed()
    }

    fn sweep(&self) {
        self.history.sweep(Instant::now(), self.channel_idle);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::Release);
        ready(()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use cortex_protocol::{ChannelId, EventType};

    fn broker() -> MemoryBroker {
        let retention = crate::config::Config::default().history;
        MemoryBroker::new(Arc::new(Hub::new()), retention, Duration::from_secs(300))
    }

    fn prepared(org: &str, channels: &[&str]) -> PreparedEvent {
        PreparedEvent {
            id: crate::id::event_id(),
            org: Arc::from(org),
            event_type: EventType::TaskDeleted,
            payload_json: r#"{"taskId":"t","timestamp":"2026-11-25T20:40:16Z"}"#.into(),
            channels: channels
                .iter()
                .map(|c| ChannelId::parse(c).unwrap())
                .collect(),
        }
    }

    fn join(b: &MemoryBroker, org: &str, ch: &str, conn: ConnId) -> Outbox {
        let outbox = Outbox::new(1 << 20, 1000);
        let key = ChannelKey::new(Arc::from(org), ChannelId::parse(ch).unwrap());
        let sub = Subscriber {
            conn,
            outbox: outbox.clone(),
        };
        let reply = |_: &Subscribed| Utf8Bytes::from_static("{}");
        futures_util::FutureExt::now_or_never(b.subscribe(&key, sub, None, &reply))
            .unwrap()
            .unwrap();
        outbox.try_batch(&mut crate::outbox::Queue::new());
        outbox
    }

    fn drain(o: &Outbox) -> Vec<Utf8Bytes> {
        let mut v = crate::outbox::Queue::new();
        o.try_batch(&mut v);
        v.into_vec()
    }

    #[tokio::test]
    async fn an_event_is_serialized_once_per_channel_and_its_bytes_shared() {
        let b = broker();
        let outs: Vec<Outbox> = (0..3).map(|i| join(&b, "o", "task:t", i)).collect();
        let counts = b.publish(&[prepared("o", &["task:t"])]).await.unwrap();
        assert_eq!(counts, vec![3]);
        let got: Vec<Utf8Bytes> = outs.iter().flat_map(drain).collect();
        assert_eq!(got.len(), 3);
        let ptr = got[0].as_str().as_ptr();
        assert!(
            got.iter().all(|m| m.as_str().as_ptr() == ptr),
            "every connection shares one buffer"
        );
    }

    #[tokio::test]
    async fn offsets_count_per_channel_in_publish_order() {
        let b = broker();
        let t = join(&b, "o", "task:t", 1);
        let p = join(&b, "o", "project:p", 2);
        let events: Vec<PreparedEvent> = (0..5)
            .map(|i| {
                prepared(
                    "o",
                    if i % 2 == 0 {
                        &["task:t", "project:p"]
                    } else {
                        &["task:t"]
                    },
                )
            })
            .collect();
        b.publish(&events).await.unwrap();
        let offsets = |o: &Outbox| -> Vec<(u64, String)> {
            drain(o)
                .iter()
                .map(|m| {
                    let d: cortex_protocol::Delivery = serde_json::from_str(m.as_str()).unwrap();
                    (d.offset, d.id)
                })
                .collect()
        };
        let t = offsets(&t);
        let p = offsets(&p);
        assert_eq!(
            t.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(p.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        let ids: Vec<&String> = events.iter().map(|e| &e.id).collect();
        assert_eq!(t.iter().map(|x| &x.1).collect::<Vec<_>>(), ids);
        assert_eq!(p[1].1, events[2].id, "the same id on every channel");
    }

    #[tokio::test]
    async fn quiet_channels_leave_nothing_behind_when_their_last_subscriber_leaves() {
        let b = broker();
        let n = crate::history::EAGER_FORGET_ABOVE + 20_000;
        for i in 0..n {
            join(&b, "o", &format!("task:t{i}"), 1);
        }
        assert_eq!(b.history.len(), n);
        for i in 0..n {
            let key = ChannelKey::new(
                Arc::from("o"),
                ChannelId::parse(&format!("task:t{i}")).unwrap(),
            );
            b.unsubscribe(&key, 1);
        }
        assert!(
            b.history.len() <= crate::history::EAGER_FORGET_ABOVE,
            "{}",
            b.history.len()
        );
        assert!(b.history.len() >= crate::history::EAGER_FORGET_ABOVE / 2);
        // A channel with events keeps its offsets and history.
        join(&b, "o", "task:busy", 1);
        b.publish(&[prepared("o", &["task:busy"])]).await.unwrap();
        let key = ChannelKey::new(Arc::from("o"), ChannelId::parse("task:busy").unwrap());
        let before = b.history.len();
        b.unsubscribe(&key, 1);
        assert_eq!(b.history.len(), before, "kept with its offsets and history");
    }

    #[tokio::test]
    async fn a_quiet_channel_keeps_its_epoch_between_subscribers_when_few_channels_are_held() {
        let b = broker();
        let key = ChannelKey::new(Arc::from("o"), ChannelId::parse("task:quiet").unwrap());
        join(&b, "o", "task:quiet", 1);
        let e1 = b
            .history
            .with_channel(&key, Instant::now(), |l| l.epoch().clone());
        b.unsubscribe(&key, 1);
        join(&b, "o", "task:quiet", 2);
        let e2 = b
            .history
            .with_channel(&key, Instant::now(), |l| l.epoch().clone());
        assert_eq!(e1, e2, "a client resuming from offset 0 recovers");
    }

    #[tokio::test]
    async fn a_replay_bigger_than_the_outbox_is_refused_as_not_recovered() {
        let b = broker();
        let key = ChannelKey::new(Arc::from("o"), ChannelId::parse("task:t").unwrap());
        let epoch = b
            .history
            .with_channel(&key, Instant::now(), |l| l.epoch().to_string());
        for _ in 0..50 {
            b.publish(&[prepared("o", &["task:t"])]).await.unwrap();
        }
        let small = Outbox::new(1 << 20, 10);
        let reply = |_: &Subscribed| Utf8Bytes::from_static("{}");
        let since = Since { offset: 0, epoch };
        let sub = Subscriber {
            conn: 9,
            outbox: small.clone(),
        };
        let r = futures_util::FutureExt::now_or_never(b.subscribe(&key, sub, Some(&since), &reply))
            .unwrap()
            .unwrap();
        assert_eq!(r.recovered, Some(false));
        assert!(!small.overflowed());
        assert_eq!(drain(&small).len(), 1, "only the reply");
    }

    #[tokio::test]
    async fn a_full_outbox_never_blocks_the_publisher_and_others_still_receive() {
        let b = broker();
        let key = ChannelKey::new(Arc::from("o"), ChannelId::parse("task:t").unwrap());
        let small = Outbox::new(1 << 20, 2);
        let reply = |_: &Subscribed| Utf8Bytes::from_static("{}");
        let sub = Subscriber {
            conn: 1,
            outbox: small.clone(),
        };
        futures_util::FutureExt::now_or_never(b.subscribe(&key, sub, None, &reply))
            .unwrap()
            .unwrap();
        let big = join(&b, "o", "task:t", 2);
        for _ in 0..10 {
            b.publish(&[prepared("o", &["task:t"])]).await.unwrap();
        }
        assert!(small.overflowed());
        assert_eq!(drain(&big).len(), 10);
    }
}
