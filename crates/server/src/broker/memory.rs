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
use crate::history::{History, Retention};
use crate::hub::{ChannelKey, ConnId, Hub, Subscriber};
use crate::metrics;

/// One node's broker: history positions plus the local hub.
pub struct MemoryBroker {
    hub: Arc<Hub>,
    history: History,
    channel_idle: Duration,
}

impl MemoryBroker {
    /// A broker delivering into `hub`, keeping `retention` of history; channels idle for
    /// `channel_idle` are forgotten.
    pub fn new(hub: Arc<Hub>, retention: Retention, channel_idle: Duration) -> MemoryBroker {
        MemoryBroker {
            hub,
            history: History::new(retention),
            // A channel is never forgotten while its history could still serve a resume.
            channel_idle: channel_idle.max(retention.max_age),
        }
    }

    /// Bytes of history held.
    pub fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    fn publish_now(&self, events: &[PreparedEvent]) -> Vec<usize> {
        let now = Instant::now();
        let mut counts = Vec::with_capacity(events.len());
        for ev in events {
            let mut seen = (ev.channels.len() > 1).then(HashSet::new);
            let mut recipients = 0;
            for channel in &ev.channels {
                let key = ChannelKey::new(ev.org.clone(), channel.clone());
                recipients += self.history.append(&key, now, |offset, epoch| {
                    let bytes = Utf8Bytes::from(write_delivery(
                        ev.event_type,
                        channel,
                        &ev.id,
                        offset,
                        epoch,
                        &ev.payload_json,
                    ));
                    let n = self.hub.fan_out(&key, &bytes, seen.as_mut());
                    (bytes, n)
                });
            }
            metrics::delivered(recipients);
            counts.push(recipients);
        }
        counts
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        events: &'a [PreparedEvent],
    ) -> BoxFuture<'a, Result<Vec<usize>, BrokerError>> {
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
            // A replay that would not fit the subscriber's outbox cannot be delivered whole:
            // that is `recovered: false`, not a 4009 loop.
            let replay: Option<Vec<&Utf8Bytes>> = since
                .and_then(|s| log.since(s.offset, &s.epoch))
                .map(|it| it.collect())
                .filter(|r: &Vec<&Utf8Bytes>| {
                    let bytes = r.iter().map(|b| b.len()).sum::<usize>();
                    sub.outbox.fits(r.len() + 1, bytes + 256)
                });
            let recovered = since.map(|_| replay.is_some());
            let subscribed = Subscribed {
                position,
                recovered,
            };
            // The reply, then the replay, go first, under the channel lock: no live event can
            // overtake them or fall between them. A full outbox refuses them; the connection is
            // closing with 4009 anyway, and its client resumes again.
            let _ = sub.outbox.push(reply(&subscribed));
            for bytes in replay.into_iter().flatten() {
                let _ = sub.outbox.push(bytes.clone());
            }
            self.hub.subscribe(key, sub);
            subscribed
        });
        Box::pin(async move { Ok(result) })
    }

    fn unsubscribe(&self, key: &ChannelKey, conn: ConnId) {
        if self.hub.unsubscribe(key, conn) && !self.hub.has_subscribers(key) {
            self.history
                .forget_if_empty(key, |k| self.hub.has_subscribers(k));
        }
    }

    fn sweep(&self) {
        self.history.sweep(Instant::now(), self.channel_idle, |k| {
            self.hub.has_subscribers(k)
        });
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
