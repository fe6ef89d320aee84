//! The Redis backplane: many nodes, one service (CONTRACT.md sections 1, 6 and 7).
//!
//! State lives in Redis, sharded by org ([`keys`]): each channel's epoch, offset and history
//! (a stream of the last events, trimmed to an exact length, with a TTL), and the idempotency
//! keys. A publish is one round trip per request and org: one Lua script ([`scripts::PUBLISH`])
//! claims the keys, assigns offsets, appends to history and publishes the event once on the
//! org's pub/sub channel. Every node, this one included, delivers from pub/sub ([`listener`]),
//! so per-channel order is the order in which the scripts ran, on every node. A node waits for
//! its own events to come back before it answers a publish, so `recipients` still counts this
//! node's deliveries.
//!
//! Commands go over one multiplexed connection ([`link`]), each bounded by a timeout; an
//! unreachable Redis makes the node not ready (503 for publishes, `unavailable` for
//! subscribes) and never blocks it. An idempotency key claimed by a script whose answer was
//! lost stays claimed: a retry is answered as a duplicate, never delivered twice.
//!
//! It never builds a frame or touches a connection: delivery is the sink's.

pub(crate) mod keys;
pub(crate) mod link;
pub(crate) mod listener;
pub(crate) mod reconnect;
pub(crate) mod scripts;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortex_protocol::{ChannelId, EventType, Since};
use futures_util::future::BoxFuture;
use redis::{Client, Script, Value};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, Delivery, EventBody, FirstAnswer, Outcome, Position, PreparedEvent,
    Recovered, Recovery, Sink,
};
use crate::config::{RedisConfig, Retention};
use crate::hub::{ChannelKey, Tally};
use crate::id;
use keys::Keys;
use link::Link;
use listener::Listener;

/// How long a channel's epoch and offset outlive its last event: far longer than its history,
/// so a client that resumes within the history's age finds the same epoch.
const POSITION_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a publish waits for its own events to come back through pub/sub.
const OWN_EVENTS_WAIT: Duration = Duration::from_secs(1);

/// An event as stored in history and sent over pub/sub.
#[derive(Deserialize)]
struct Wire<'a> {
    id: String,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// This node's events in flight: what the listener delivers instead of a copy (so the
/// publisher's tally counts), and whom it tells.
struct Own {
    body: Arc<EventBody>,
    done: Option<oneshot::Sender<()>>,
}

/// A channel this node holds: how many holds, and the last position it delivered.
#[derive(Default)]
struct Held {
    holds: usize,
    last: Option<(u64, Arc<str>)>,
}

/// What to do with an event on a held channel, given the last position delivered.
enum Next {
    /// The next one: deliver.
    Deliver,
    /// Delivered already (or older than the position a join read): drop.
    Seen,
    /// Events are missing, or the epoch changed (Redis lost the channel's data): tell every
    /// subscriber, then deliver.
    Skipped,
}

struct Inner {
    keys: Keys,
    held: Mutex<HashMap<ChannelKey, Held>>,
    link: Link,
    listener: Listener,
    sink: Arc<dyn Sink>,
    publish: Script,
    recover: Script,
    retention: Retention,
    window: Duration,
    own: Mutex<HashMap<String, Own>>,
    closed: AtomicBool,
}

/// The broker of a node that shares a Redis with other nodes.
pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

/// The Redis URL could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad Redis URL (redis://HOST:PORT or rediss://HOST:PORT): {0}")]
pub(crate) struct BadRedisUrl(String);

impl RedisBroker {
    /// Starts the connections' tasks (they connect in the background: a Redis that is down at
    /// start only makes the node not ready). Needs a Tokio runtime.
    pub(crate) fn start(
        sink: Arc<dyn Sink>,
        config: &RedisConfig,
        retention: Retention,
        window: Duration,
    ) -> Result<RedisBroker, BadRedisUrl> {
        let url = config.url.as_str();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(BadRedisUrl(format!(
                "{url}: the scheme must be redis or rediss"
            )));
        }
        let client = Client::open(url).map_err(|e| BadRedisUrl(format!("{url}: {e}")))?;
        let keys = Keys::new(&config.prefix);
        let inner = Arc::new(Inner {
            link: Link::new(client.clone(), config.command_timeout),
            listener: Listener::new(client, keys.clone(), config.command_timeout),
            keys,
            held: Mutex::new(HashMap::new()),
            sink,
            publish: Script::new(scripts::PUBLISH),
            recover: Script::new(scripts::RECOVER),
            retention,
            window,
            own: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let (i, s) = (inner.clone(), stop.clone());
        tokio::spawn(async move { i.link.maintain(s).await });
        let (i, s) = (inner.clone(), stop.clone());
        tokio::spawn(async move {
            let deliver = |org: &str, payload: &[u8]| i.deliver(org, payload);
            // The command connection went the same way, most likely: check it at once.
            let lost = || i.link.doubt();
            let reconcile = || {
                let i = i.clone();
                Box::pin(async move { i.reconcile().await }) as BoxFuture<'static, ()>
            };
            i.listener.run(s, deliver, lost, reconcile).await
        });
        Ok(RedisBroker { inner, stop })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn wire_body(body: &EventBody) -> String {
    format!(
        r#"{{"id":"{}","type":"{}","payload":{}}}"#,
        body.id,
        body.event_type.as_str(),
        body.payload_json
    )
}

fn parse_body(bytes: &[u8], channels: usize) -> Option<EventBody> {
    let w: Wire<'_> = serde_json::from_slice(bytes).ok()?;
    Some(EventBody {
        id: w.id,
        event_type: EventType::parse(w.event_type)?,
        payload_json: w.payload.get().to_owned(),
        tally: Tally::new(channels),
    })
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

impl Inner {
    /// One pub/sub message: an event on its channels, in their offset order.
    fn deliver(&self, org: &str, payload: &[u8]) {
        let Some(at) = payload.iter().position(|&b| b == b'\n') else {
            return;
        };
        let Ok(header) = serde_json::from_slice::<Vec<(String, u64, String)>>(&payload[..at])
        else {
            return;
        };
        let body = &payload[at + 1..];
        let Some(fresh) = parse_body(body, header.len()) else {
            return;
        };
        let own = self
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fresh.id);
        let event = match &own {
            Some(own) => own.body.clone(),
            None => Arc::new(fresh),
        };
        let org: Arc<str> = Arc::from(org);
        for (channel, offset, epoch) in header {
            let Ok(channel) = ChannelId::parse(&channel) else {
                continue;
            };
            let key = ChannelKey::new(org.clone(), channel);
            let epoch: Arc<str> = Arc::from(epoch.as_str());
            match self.next(&key, offset, &epoch) {
                Next::Seen => continue,
                Next::Skipped => {
                    let position = Position {
                        offset: offset - 1,
                        epoch: epoch.clone(),
                    };
                    tracing::warn!(channel = %key.channel, "events skipped; subscribers told");
                    self.sink.reset(&key, &position);
                }
                Next::Deliver => {}
            }
            self.sink.deliver(&Delivery {
                key: &key,
                event: &event,
                offset,
                epoch: &epoch,
            });
        }
        if let Some(done) = own.and_then(|o| o.done) {
            let _ = done.send(());
        }
    }

    /// Where an event stands against the last position delivered on its channel (tracked for
    /// held channels only), and that position moved on.
    fn next(&self, key: &ChannelKey, offset: u64, epoch: &Arc<str>) -> Next {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(h) = held.get_mut(key) else {
            return Next::Deliver;
        };
        let next = match &h.last {
            None => Next::Deliver,
            Some((last, e)) if e == epoch => {
                if offset <= *last {
                    return Next::Seen;
                } else if offset == last + 1 {
                    Next::Deliver
                } else {
                    Next::Skipped
                }
            }
            Some(_) => Next::Skipped,
        };
        h.last = Some((offset, epoch.clone()));
        next
    }

    /// A join read `position`: the first one of a held channel is where its tracking starts.
    fn seen_position(&self, key: &ChannelKey, position: &Position) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(key)
            && h.last.is_none()
        {
            h.last = Some((position.offset, position.epoch.clone()));
        }
    }

    /// After a pub/sub reconnect: every held channel's position, read at once (pipelined);
    /// a channel that moved on meanwhile has its missed events delivered from history, in
    /// order, or, when history no longer covers them or the epoch changed, its subscribers told.
    async fn reconcile(&self) {
        let tracked: Vec<(ChannelKey, u64, Arc<str>)> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .filter_map(|(k, h)| h.last.as_ref().map(|(o, e)| (k.clone(), *o, e.clone())))
                .collect()
        };
        if tracked.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, _, _) in &tracked {
            let [epoch, offset, _] = self.keys.channel(key);
            pipe.get(epoch).get(offset);
        }
        let Some(now) = self
            .link
            .run(|mut c| async move { pipe.query_async::<Vec<Option<String>>>(&mut c).await })
            .await
        else {
            return;
        };
        for ((key, last, epoch), pair) in tracked.iter().zip(now.chunks(2)) {
            let same_epoch = pair[0].as_deref() == Some(&**epoch);
            let offset = pair
                .get(1)
                .cloned()
                .flatten()
                .and_then(|o| o.parse::<u64>().ok());
            if same_epoch && offset == Some(*last) {
                continue;
            }
            self.catch_up(key, *last, epoch).await;
        }
    }

    /// Delivers what `key` published after `last` (of `epoch`) from history, or tells its
    /// subscribers the channel's new position when history cannot give it all.
    async fn catch_up(&self, key: &ChannelKey, last: u64, epoch: &Arc<str>) {
        let since = Since {
            offset: last,
            epoch: epoch.to_string(),
        };
        let Ok(recovery) = self.recover_now(key, Some(&since)).await else {
            return;
        };
        let Some(events) = recovery.events else {
            tracing::warn!(channel = %key.channel, "missed events not in history; subscribers told");
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = held.get_mut(key) {
                h.last = Some((recovery.position.offset, recovery.position.epoch.clone()));
            }
            drop(held);
            self.sink.reset(key, &recovery.position);
            return;
        };
        for r in events {
            if matches!(
                self.next(key, r.offset, &recovery.position.epoch),
                Next::Deliver
            ) {
                self.sink.deliver(&Delivery {
                    key,
                    event: &r.event,
                    offset: r.offset,
                    epoch: &recovery.position.epoch,
                });
            }
        }
    }

    /// Publishes the events of one org in one script; their outcomes in order.
    async fn publish_org(
        &self,
        org: &str,
        events: &[&PreparedEvent],
    ) -> Result<Vec<Outcome>, BrokerError> {
        let mut invocation = self.publish.prepare_invoke();
        invocation
            .arg(self.keys.events(org))
            .arg(now_ms())
            .arg(self.retention.per_channel)
            .arg(self.retention.max_age.as_secs().max(1))
            .arg(self.window.as_secs().max(1))
            .arg(POSITION_TTL.as_secs())
            .arg(events.len());
        for ev in events {
            if let Some(k) = &ev.idempotency_key {
                invocation.key(self.keys.idempotency(org, k));
            }
            let first = FirstAnswer {
                id: ev.body.id.clone(),
                channels: ev.channels.iter().map(|c| c.to_string()).collect(),
            };
            let first = serde_json::to_string(&first).expect("an answer serializes");
            invocation
                .arg(u8::from(ev.idempotency_key.is_some()))
                .arg(ev.channels.len())
                .arg(wire_body(&ev.body))
                .arg(first);
            for channel in &ev.channels {
                let key = ChannelKey::new(ev.org.clone(), channel.clone());
                for name in self.keys.channel(&key) {
                    invocation.key(name);
                }
                invocation.arg(channel.as_str()).arg(id::epoch());
            }
        }
        let reply: Value = self
            .link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
            .ok_or(BrokerError::Unavailable)?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::Unavailable);
        };
        items
            .iter()
            .map(|item| match item {
                Value::Array(pair) if pair.len() == 2 => match int(&pair[0]) {
                    Some(0) => serde_json::from_str(text(&pair[1])?)
                        .ok()
                        .map(Outcome::Duplicate),
                    Some(1) => {
                        let Value::Array(p) = &pair[1] else {
                            return None;
                        };
                        let positions = p
                            .chunks(2)
                            .map(|c| {
                                Some(Position {
                                    offset: int(&c[0])?,
                                    epoch: Arc::from(text(c.get(1)?)?),
                                })
                            })
                            .collect::<Option<Vec<_>>>()?;
                        Some(Outcome::Published(positions))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(BrokerError::Unavailable)
    }

    async fn publish(&self, events: &[PreparedEvent]) -> Result<Vec<Outcome>, BrokerError> {
        if self.closed.load(Ordering::Acquire) || !self.link.is_up() {
            return Err(BrokerError::Unavailable);
        }
        // This node's events come back through pub/sub: it waits for those of orgs it listens
        // to, and delivers the publisher's own bodies (their tallies count `recipients`).
        let mut waits = Vec::new();
        {
            let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
            for ev in events {
                if self.listener.listens_to(&ev.org) {
                    let (tx, rx) = oneshot::channel();
                    own.insert(
                        ev.body.id.clone(),
                        Own {
                            body: ev.body.clone(),
                            done: Some(tx),
                        },
                    );
                    waits.push(rx);
                }
            }
        }
        let mut orgs: Vec<&str> = Vec::new();
        for ev in events {
            if !orgs.contains(&&*ev.org) {
                orgs.push(&ev.org);
            }
        }
        let mut outcomes: HashMap<&str, std::vec::IntoIter<Outcome>> = HashMap::new();
        let mut result = Ok(());
        for org in orgs {
            let of_org: Vec<&PreparedEvent> = events.iter().filter(|e| &*e.org == org).collect();
            match self.publish_org(org, &of_org).await {
                Ok(o) => {
                    outcomes.insert(org, o.into_iter());
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let answers = result.and_then(|()| {
            events
                .iter()
                .map(|ev| outcomes.get_mut(&*ev.org).and_then(Iterator::next))
                .collect::<Option<Vec<Outcome>>>()
                .ok_or(BrokerError::Unavailable)
        });
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                self.forget(events.iter());
                return Err(e);
            }
        };
        // Duplicates are not published: nothing comes back for them.
        let duplicates = events.iter().zip(&answers);
        self.forget(
            duplicates
                .filter(|(_, o)| matches!(o, Outcome::Duplicate(_)))
                .map(|(ev, _)| ev),
        );
        let _ = tokio::time::timeout(OWN_EVENTS_WAIT, futures_util::future::join_all(waits)).await;
        self.forget(events.iter());
        Ok(answers)
    }

    /// Stops waiting for these events to come back (dropping their waiters).
    fn forget<'e>(&self, events: impl Iterator<Item = &'e PreparedEvent>) {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            own.remove(&ev.body.id);
        }
    }

    async fn recover(
        &self,
        key: &ChannelKey,
        since: Option<&Since>,
    ) -> Result<Recovery, BrokerError> {
        if self.closed.load(Ordering::Acquire) || !self.listener.subscribed(&key.org).await {
            return Err(BrokerError::Unavailable);
        }
        let recovery = self.recover_now(key, since).await?;
        self.seen_position(key, &recovery.position);
        Ok(recovery)
    }

    /// The channel's position and, for `since`, the events after it, read from Redis.
    async fn recover_now(
        &self,
        key: &ChannelKey,
        since: Option<&Since>,
    ) -> Result<Recovery, BrokerError> {
        let [epoch_key, offset_key, history_key] = self.keys.channel(key);
        let mut invocation = self.recover.prepare_invoke();
        invocation
            .key(epoch_key)
            .key(offset_key)
            .key(history_key)
            .arg(since.map_or(String::new(), |s| s.offset.to_string()))
            .arg(id::epoch())
            .arg(POSITION_TTL.as_secs());
        let reply: Value = self
            .link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await
            .ok_or(BrokerError::Unavailable)?;
        let Value::Array(parts) = reply else {
            return Err(BrokerError::Unavailable);
        };
        let (Some(epoch), Some(offset)) =
            (parts.first().and_then(text), parts.get(1).and_then(int))
        else {
            return Err(BrokerError::Unavailable);
        };
        let position = Position {
            offset,
            epoch: Arc::from(epoch),
        };
        let events = match (since, parts.get(2)) {
            (Some(since), Some(Value::Array(entries))) if since.epoch == epoch => {
                self.continuous(since.offset, offset, entries)
            }
            _ => None,
        };
        Ok(Recovery { position, events })
    }

    /// The entries after `since`, when they are every event up to `latest` and none is older
    /// than the history's age.
    fn continuous(&self, since: u64, latest: u64, entries: &[Value]) -> Option<Vec<Recovered>> {
        if since > latest {
            return None;
        }
        let oldest = now_ms().saturating_sub(self.retention.max_age.as_millis() as u64);
        let mut out = Vec::with_capacity(entries.len());
        for (expected, entry) in (since + 1..).zip(entries) {
            let Value::Array(e) = entry else { return None };
            let offset = text(e.first()?)?.split('-').next()?.parse::<u64>().ok()?;
            if offset != expected {
                return None;
            }
            let Value::Array(fields) = e.get(1)? else {
                return None;
            };
            let mut body = None;
            let mut at = None;
            for f in fields.chunks(2) {
                match (text(&f[0]), f.get(1)) {
                    (Some("e"), Some(Value::BulkString(b))) => body = Some(b.as_slice()),
                    (Some("t"), Some(v)) => at = int(v),
                    _ => {}
                }
            }
            if at? < oldest {
                return None;
            }
            out.push(Recovered {
                offset,
                event: Arc::new(parse_body(body?, 1)?),
            });
        }
        (since + out.len() as u64 == latest).then_some(out)
    }
}

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        events: &'a [PreparedEvent],
    ) -> BoxFuture<'a, Result<Vec<Outcome>, BrokerError>> {
        Box::pin(self.inner.publish(events))
    }

    fn recover<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<&'a Since>,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        Box::pin(self.inner.recover(key, since))
    }

    fn hold(&self, key: &ChannelKey) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.entry(key.clone()).or_default().holds += 1;
        self.inner.listener.hold(&key.org);
    }

    fn release(&self, key: &ChannelKey) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(key) {
            h.holds -= 1;
            if h.holds == 0 {
                held.remove(key);
            }
        }
        self.inner.listener.release(&key.org);
    }

    fn ready(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
            && self.inner.link.is_up()
            && self.inner.listener.is_up()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.closed.store(true, Ordering::Release);
        self.stop.cancel();
        Box::pin(async {})
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
