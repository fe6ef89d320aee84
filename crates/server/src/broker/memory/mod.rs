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

    /// A broker with the default retention and 300 s windows, for tests.
    #[cfg(test)]
    pub(crate) fn with_defaults(sink: Arc<dyn Sink>) -> MemoryBroker {
        let retention = crate::config::Config::default().history;
        let minutes = Duration::from_secs(300);
        MemoryBroker::new(sink, retention, minutes, minutes, 1000)
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

    fn history_bytes(&self) -> usize {
        self.history.bytes()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::Release);
        ready(()).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_util::{key, prepared};
    use std::sync::Mutex;

    /// Records what the broker delivers: (channel, offset, epoch, event id).
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, u64, String, String)>>);

    impl Sink for Recorder {
        fn reset(&self, _: &ChannelKey, _: &crate::broker::Position) {
            panic!("the memory broker never loses events");
        }

        fn deliver(&self, d: &Delivery<'_>) {
            self.0.lock().unwrap().push((
                d.key.channel.to_string(),
                d.offset,
                d.epoch.to_string(),
                d.event.id.clone(),
            ));
        }
    }

    fn broker() -> (Arc<Recorder>, MemoryBroker) {
        let sink = Arc::new(Recorder::default());
        let b = MemoryBroker::with_defaults(sink.clone());
        (sink, b)
    }

    fn now<T>(f: BoxFuture<'_, T>) -> T {
        f.now_or_never().expect("the memory broker answers at once")
    }

    #[test]
    fn offsets_count_per_channel_in_publish_order_and_positions_are_answered() {
        let (sink, b) = broker();
        let events: Vec<PreparedEvent> = (0..5)
            .map(|i| {
                let channels: &[&str] = if i % 2 == 0 {
                    &["task:t", "project:p"]
                } else {
                    &["task:t"]
                };
                prepared("o", channels, None)
            })
            .collect();
        let outcomes = now(b.publish(&events)).unwrap();
        let offsets: Vec<Vec<u64>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Published(p) => p.iter().map(|p| p.offset).collect(),
                Outcome::Duplicate(_) => panic!("no key, no duplicate"),
            })
            .collect();
        assert_eq!(
            offsets,
            [vec![1, 1], vec![2], vec![3, 2], vec![4], vec![5, 3]]
        );
        let got = sink.0.lock().unwrap();
        let t: Vec<(u64, &str)> = got
            .iter()
            .filter(|d| d.0 == "task:t")
            .map(|d| (d.1, d.3.as_str()))
            .collect();
        let ids: Vec<&str> = events.iter().map(|e| e.body.id.as_str()).collect();
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(t.iter().map(|x| x.1).collect::<Vec<_>>(), ids);
        let p: Vec<&str> = got
            .iter()
            .filter(|d| d.0 == "project:p")
            .map(|d| d.3.as_str())
            .collect();
        assert_eq!(p, [ids[0], ids[2], ids[4]], "the same id on every channel");
    }

    #[test]
    fn a_repeated_idempotency_key_is_answered_as_the_first_and_not_delivered() {
        let (sink, b) = broker();
        let first = prepared("o", &["task:t"], Some("k1"));
        now(b.publish(std::slice::from_ref(&first))).unwrap();
        let again = prepared("o", &["task:t"], Some("k1"));
        let other_org = prepared("o2", &["task:t"], Some("k1"));
        let outcomes = now(b.publish(&[again, other_org])).unwrap();
        assert_eq!(
            outcomes[0],
            Outcome::Duplicate(FirstAnswer {
                id: first.body.id.clone(),
                channels: vec!["task:t".into()],
            })
        );
        assert!(
            matches!(outcomes[1], Outcome::Published(_)),
            "keys are per org"
        );
        assert_eq!(sink.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn recovery_gives_the_position_and_the_events_after_since() {
        let (_, b) = broker();
        let k = key("o", "task:t");
        b.hold(&k);
        let start = now(b.recover(&k, None)).unwrap();
        assert_eq!(start.position.offset, 0);
        assert!(start.events.is_none(), "no since, no events");
        let events: Vec<PreparedEvent> = (0..4).map(|_| prepared("o", &["task:t"], None)).collect();
        now(b.publish(&events)).unwrap();
        let since = Since {
            offset: 1,
            epoch: start.position.epoch.to_string(),
        };
        let r = now(b.recover(&k, Some(&since))).unwrap();
        assert_eq!(r.position.offset, 4);
        assert_eq!(r.position.epoch, start.position.epoch);
        let got: Vec<(u64, &str)> = r
            .events
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.offset, e.event.id.as_str()))
            .collect();
        let want: Vec<(u64, &str)> = (2..=4)
            .zip(events[1..].iter().map(|e| e.body.id.as_str()))
            .collect();
        assert_eq!(got, want);
        let stale = Since {
            offset: 1,
            epoch: "another-epoch".into(),
        };
        assert!(now(b.recover(&k, Some(&stale))).unwrap().events.is_none());
    }

    #[test]
    fn quiet_channels_leave_nothing_behind_when_their_last_holder_leaves() {
        let (_, b) = broker();
        let n = history::EAGER_FORGET_ABOVE + 20_000;
        let keys: Vec<ChannelKey> = (0..n).map(|i| key("o", &format!("task:t{i}"))).collect();
        for k in &keys {
            b.hold(k);
            now(b.recover(k, None)).unwrap();
        }
        assert_eq!(b.history.len(), n);
        for k in &keys {
            b.release(k);
        }
        assert!(
            b.history.len() <= history::EAGER_FORGET_ABOVE,
            "{}",
            b.history.len()
        );
        assert!(b.history.len() >= history::EAGER_FORGET_ABOVE / 2);
        // A channel with events keeps its offsets and history.
        let busy = key("o", "task:busy");
        b.hold(&busy);
        now(b.publish(&[prepared("o", &["task:busy"], None)])).unwrap();
        let before = b.history.len();
        b.release(&busy);
        assert_eq!(b.history.len(), before, "kept with its offsets and history");
    }

    #[test]
    fn a_quiet_channel_keeps_its_epoch_between_holders_when_few_channels_are_held() {
        let (_, b) = broker();
        let k = key("o", "task:quiet");
        b.hold(&k);
        let e1 = now(b.recover(&k, None)).unwrap().position.epoch;
        b.release(&k);
        b.hold(&k);
        let e2 = now(b.recover(&k, None)).unwrap().position.epoch;
        assert_eq!(e1, e2, "a client resuming from offset 0 recovers");
    }

    #[test]
    fn a_closed_broker_refuses_everything_as_unavailable() {
        let (sink, b) = broker();
        assert!(b.ready());
        now(b.close());
        assert!(!b.ready());
        let k = key("o", "task:t");
        assert_eq!(
            now(b.publish(&[prepared("o", &["task:t"], None)])).unwrap_err(),
            BrokerError::Unavailable
        );
        assert_eq!(
            now(b.recover(&k, None)).unwrap_err(),
            BrokerError::Unavailable
        );
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
