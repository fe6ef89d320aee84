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
//! Over TLS when the URLs are `rediss://` ([`tls`]: the roots are read once, at start, and serve
//! both redis-rs's connections and the pub/sub ones).
//!
//! Commands go over one multiplexed connection ([`link`]), each bounded by a timeout; an
//! unreachable Redis makes the node not ready (503 for publishes, `unavailable` for
//! subscribes) and never blocks it. An idempotency key claimed by a script whose answer was
//! lost stays claimed: a retry is answered as a duplicate, never delivered twice.
//!
//! It never builds a frame or touches a connection: delivery is the sink's.

pub(crate) mod keys;
pub(crate) mod leases;
pub(crate) mod link;
pub(crate) mod listener;
pub(crate) mod pubsub;
pub(crate) mod reconnect;
pub(crate) mod scripts;
pub(crate) mod shards;
pub(crate) mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortex_protocol::{ChannelId, EventType, Since};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::cluster::ClusterClient;
use redis::{Client, Script, TlsCertificates, Value};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{
    Broker, BrokerError, Delivery, EventBody, FirstAnswer, Lease, Leases, Outcome, Position,
    PreparedEvent, Recovered, Recovery, Sink, UserKey,
};
use crate::config::{RedisConfig, RedisServers, Retention};
use crate::hub::{ChannelKey, Tally};
use crate::id;
use keys::Keys;
use leases::Book;
use link::{Link, Target};
use listener::Hooks;
use pubsub::Server;
use shards::{Range, Shards};
use tls::{BadTls, Tls};

/// How long a channel's epoch and offset outlive its last event: far longer than its history,
/// so a client that resumes within the history's age finds the same epoch.
const POSITION_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a publish waits for its own events to come back through pub/sub.
const OWN_EVENTS_WAIT: Duration = Duration::from_secs(1);
/// How long a refill asks Redis again while it does not answer, before it gives up on history
/// and sends the continuity notice.
const REFILL_RETRY: Duration = Duration::from_secs(5);
/// How long a join waits at most for the node to deliver up to the position it read (a refill
/// from history starts after a tenth of it): long enough for a node whose pub/sub lags by
/// seconds under load (the 100,000-connection benchmark saw duplicates with 1 s).
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// Events of one channel held back while its gap is refilled from history; past this, the
/// refill reads history once more instead of holding more.
const MAX_PENDING: usize = 1000;
/// Orgs whose positions a reconcile reads at once (pipelined on the one connection).
const RECONCILE_DEPTH: usize = 64;

/// A held channel and the last position delivered on it (offset, epoch).
type Tracked = (ChannelKey, u64, Arc<str>);

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

/// A channel this node holds: how many holds, the last position it delivered, and while a gap
/// is being refilled from history, the events that came meanwhile.
#[derive(Default)]
struct Held {
    holds: usize,
    last: Option<(u64, Arc<str>)>,
    refill: Option<Vec<Pending>>,
    overflowed: bool,
}

/// An event held back behind a refill.
struct Pending {
    offset: u64,
    epoch: Arc<str>,
    event: Arc<EventBody>,
}

/// What to do with an event on a held channel, given the last position delivered.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The next one: deliver.
    Deliver,
    /// Delivered already (or older than the position a join read): drop.
    Seen,
    /// Events are missing before it: refill them from history first.
    Gap,
    /// The epoch changed (Redis lost the channel's data): tell every subscriber, then deliver.
    NewEpoch,
}

impl Held {
    /// Where an event stands against the last position delivered; the position moves on to it
    /// unless there is a gap.
    fn next(&mut self, offset: u64, epoch: &Arc<str>) -> Next {
        let next = match &self.last {
            None => Next::Deliver,
            Some((last, e)) if e == epoch => {
                if offset <= *last {
                    return Next::Seen;
                } else if offset == last + 1 {
                    Next::Deliver
                } else {
                    return Next::Gap;
                }
            }
            Some(_) => Next::NewEpoch,
        };
        self.last = Some((offset, epoch.clone()));
        next
    }
}

struct Inner {
    keys: Keys,
    held: Mutex<HashMap<ChannelKey, Held>>,
    link: Link,
    shards: Shards,
    /// `PUBLISH`, or `SPUBLISH` in a Cluster.
    publish_command: &'static str,
    sink: Arc<dyn Sink>,
    publish: Script,
    recover: Script,
    retention: Retention,
    window: Duration,
    own: Mutex<HashMap<String, Own>>,
    /// This node's connection leases.
    leases: Book,
    closed: AtomicBool,
    /// Woken whenever a held channel's last delivered position moves (see `caught_up`).
    moved: tokio::sync::Notify,
}

/// The broker of a node that shares a Redis with other nodes.
pub(crate) struct RedisBroker {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

/// The Redis settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadRedis {
    /// A URL could not be read, or the URLs do not go together.
    #[error("bad Redis URL (redis://HOST:PORT, or rediss://HOST:PORT over TLS): {0}")]
    Url(String),
    /// TLS was asked for and cannot be set up.
    #[error(transparent)]
    Tls(#[from] BadTls),
}

/// Whether `url` is reached over TLS, from its scheme.
fn over_tls(url: &str) -> Result<bool, BadRedis> {
    if url.starts_with("rediss://") {
        Ok(true)
    } else if url.starts_with("redis://") {
        Ok(false)
    } else {
        Err(BadRedis::Url(format!(
            "{url}: the scheme must be redis or rediss"
        )))
    }
}

/// A Redis URL read: its client (over TLS with `certificates` for a `rediss://` URL), and the
/// server (address, credentials, TLS) it names.
fn open(url: &str, certificates: Option<&TlsCertificates>) -> Result<(Client, Server), BadRedis> {
    let bad = |e: redis::RedisError| BadRedis::Url(format!("{url}: {e}"));
    let client = match certificates {
        Some(c) if url.starts_with("rediss://") => {
            Client::build_with_tls(url, c.clone()).map_err(bad)?
        }
        _ => Client::open(url).map_err(bad)?,
    };
    let info = client.get_connection_info();
    let (host, port, tls) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host, port, false),
        redis::ConnectionAddr::TcpTls { insecure: true, .. } => {
            return Err(BadRedis::Url(format!(
                "{url}: #insecure (TLS that does not check Redis's certificate) is not \
                 supported: give the CA file that signed Redis's certificate instead"
            )));
        }
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host, port, true),
        _ => return Err(BadRedis::Url(format!("{url}: not a TCP address"))),
    };
    let settings = info.redis_settings();
    let server = Server {
        host: host.clone(),
        port: *port,
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
        tls,
    };
    Ok((client, server))
}

/// Whether the URLs of `config` are `rediss://` (all of them, or none: refused when mixed), and
/// then how TLS is set up: for the node's own connections, and for redis-rs's.
fn tls_of(config: &RedisConfig) -> Result<Option<(Tls, TlsCertificates)>, BadRedis> {
    let urls = match &config.servers {
        RedisServers::One(url) => std::slice::from_ref(url),
        RedisServers::Cluster(urls) => urls.as_slice(),
    };
    let mut tls = None;
    for url in urls {
        let this = over_tls(url)?;
        if *tls.get_or_insert(this) != this {
            return Err(BadRedis::Url(format!(
                "{url}: the seed nodes mix redis:// and rediss://: give every one rediss:// \
                 (TLS) or every one redis://"
            )));
        }
    }
    match (tls.unwrap_or(false), &config.tls_ca) {
        (true, ca) => Ok(Some(Tls::load(ca.as_deref())?)),
        (false, Some(ca)) => Err(BadRedis::Tls(BadTls(format!(
            "the CA file {} is given but {} is not rediss://: use rediss:// for TLS to Redis",
            ca.display(),
            config.servers
        )))),
        (false, None) => Ok(None),
    }
}

impl RedisBroker {
    /// Starts the connections' tasks (they connect in the background: a Redis that is down at
    /// start only makes the node not ready). Needs a Tokio runtime.
    pub(crate) fn start(
        sink: Arc<dyn Sink>,
        config: &RedisConfig,
        retention: Retention,
        window: Duration,
    ) -> Result<RedisBroker, BadRedis> {
        let timeout = config.command_timeout;
        let (tls, certificates) = tls_of(config)?.unzip();
        let (target, seed, sharded) = match &config.servers {
            RedisServers::One(url) => {
                let (client, server) = open(url, certificates.as_ref())?;
                (Target::One(Box::new(client)), server, false)
            }
            RedisServers::Cluster(urls) => {
                let Some(first) = urls.first() else {
                    return Err(BadRedis::Url("no Cluster seed node given".into()));
                };
                let mut seed = None;
                for url in urls {
                    let (_, server) = open(url, certificates.as_ref())?;
                    seed.get_or_insert(server);
                }
                let mut builder = ClusterClient::builder(urls.clone())
                    .retries(0)
                    .connection_timeout(timeout)
                    .response_timeout(timeout);
                if let Some(c) = certificates {
                    builder = builder.certs(c);
                }
                let client = builder
                    .build()
                    .map_err(|e| BadRedis::Url(format!("{first}: {e}")))?;
                (
                    Target::Cluster(Box::new(client)),
                    seed.expect("one seed at least"),
                    true,
                )
            }
        };
        let keys = Keys::new(&config.prefix);
        let stop = CancellationToken::new();
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| Inner {
            link: Link::new(target, timeout),
            shards: Shards::new(
                keys.clone(),
                sharded,
                tls.clone(),
                timeout,
                hooks(me),
                stop.clone(),
            ),
            publish_command: if sharded { "SPUBLISH" } else { "PUBLISH" },
            held: Mutex::new(HashMap::new()),
            sink,
            publish: Script::new(scripts::PUBLISH),
            recover: Script::new(scripts::RECOVER),
            retention,
            window,
            own: Mutex::new(HashMap::new()),
            leases: Book::new(keys.clone(), config.lease_ttl),
            keys,
            closed: AtomicBool::new(false),
            moved: tokio::sync::Notify::new(),
        });
        let (i, s) = (inner.clone(), stop.clone());
        tokio::spawn(async move { i.link.maintain(s).await });
        let (i, s) = (Arc::downgrade(&inner), stop.clone());
        tokio::spawn(async move { Inner::renew_leases(i, s).await });
        if sharded {
            let (i, s) = (Arc::downgrade(&inner), stop.clone());
            tokio::spawn(async move { Inner::follow_slots(i, s, seed).await });
        } else {
            inner.shards.set_ranges(vec![Range {
                first: 0,
                last: 16383,
                master: seed,
            }]);
        }
        Ok(RedisBroker { inner, stop })
    }
}

impl Inner {
    /// Renews this node's connection leases, and removes those given back, until `stop`.
    async fn renew_leases(me: Weak<Inner>, stop: CancellationToken) {
        let Some(mut gone) = me.upgrade().and_then(|i| i.leases.given_back()) else {
            return;
        };
        let every = match me.upgrade() {
            Some(i) => i.leases.renew_every(),
            None => return,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let Some(i) = me.upgrade() else { return };
                    i.leases.renew(&i.link).await;
                }
                first = gone.recv() => {
                    let Some(first) = first else { return };
                    let Some(i) = me.upgrade() else { return };
                    let mut batch = vec![first];
                    while batch.len() < leases::REMOVE_BATCH {
                        match gone.try_recv() {
                            Ok(g) => batch.push(g),
                            Err(_) => break,
                        }
                    }
                    i.leases.remove(&i.link, batch).await;
                }
            }
        }
    }
}

/// What the pub/sub listeners call back into: the broker, while it lives.
fn hooks(me: &Weak<Inner>) -> Hooks {
    let (d, l, r, p, m) = (me.clone(), me.clone(), me.clone(), me.clone(), me.clone());
    Hooks {
        deliver: Box::new(move |org, payload| {
            if let Some(i) = d.upgrade() {
                if org == keys::CONTROL {
                    i.sink.signal(payload);
                } else {
                    Inner::deliver(&i, org, payload);
                }
            }
        }),
        // The command connection went the same way, most likely: check it at once.
        lost: Box::new(move || {
            if let Some(i) = l.upgrade() {
                i.link.doubt();
            }
        }),
        reconcile: Box::new(move |orgs| {
            let r = r.clone();
            Box::pin(async move {
                if let Some(i) = r.upgrade() {
                    Inner::reconcile(&i, &orgs).await;
                }
            })
        }),
        probe: Box::new(move |channel, payload| {
            let p = p.clone();
            Box::pin(async move {
                let Some(i) = p.upgrade() else { return false };
                let command = i.publish_command;
                let sent = i
                    .link
                    .run(|mut c| {
                        let (channel, payload) = (channel.clone(), payload.clone());
                        async move {
                            redis::cmd(command)
                                .arg(channel)
                                .arg(payload)
                                .query_async::<i64>(&mut c)
                                .await
                        }
                    })
                    .await;
                sent.is_some()
            })
        }),
        moved: Box::new(move || {
            if let Some(i) = m.upgrade() {
                i.shards.moved.notify_one();
            }
        }),
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
    /// Follows a Cluster's slot map until `stop`: read at once, then every [`shards::REFRESH`]
    /// and whenever a listener hears that slots moved. Orgs that moved to another master are
    /// reconciled once their new listener is subscribed.
    async fn follow_slots(me: Weak<Inner>, stop: CancellationToken, seed: Server) {
        let mut known = false;
        loop {
            let Some(i) = me.upgrade() else { return };
            let answer = i
                .link
                .run(|mut c| async move {
                    redis::cmd("CLUSTER")
                        .arg("SLOTS")
                        .query_async::<Value>(&mut c)
                        .await
                })
                .await;
            if let Some(ranges) = answer.as_ref().and_then(|a| shards::parse_slots(a, &seed)) {
                known = true;
                for (org, listener) in i.shards.set_ranges(ranges) {
                    let i = i.clone();
                    tokio::spawn(async move {
                        if listener.subscribed(&org).await {
                            Inner::reconcile(&i, &[org]).await;
                        }
                    });
                }
            }
            // A master that cannot be reached may have been failed over to its replica: read
            // the slot map again soon, not at the next refresh.
            let wait = if !known {
                Duration::from_millis(200)
            } else if !i.shards.is_up() {
                Duration::from_millis(500)
            } else {
                shards::REFRESH
            };
            // Held while waiting; the broker's drop stops this task.
            let moved = i.shards.moved.notified();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = moved => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// One pub/sub message: an event on its channels, each delivered in offset order. An event
    /// after a gap waits (with those after it) while the gap is refilled from history.
    fn deliver(me: &Arc<Inner>, org: &str, payload: &[u8]) {
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
        let own = me
            .own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fresh.id);
        let event = match &own {
            Some(own) => own.body.clone(),
            None => Arc::new(fresh),
        };
        let org: Arc<str> = Arc::from(org);
        // Delivered under the lock of the held channels, so a refill's deliveries and these
        // never interleave out of order (the broker's lock comes before the dispatch's).
        let mut held = me.held.lock().unwrap_or_else(|e| e.into_inner());
        for (channel, offset, epoch) in header {
            let Ok(channel) = ChannelId::parse(&channel) else {
                continue;
            };
            let key = ChannelKey::new(org.clone(), channel);
            let epoch: Arc<str> = Arc::from(epoch.as_str());
            if let Some(h) = held.get_mut(&key) {
                if let Some(pending) = &mut h.refill {
                    if pending.len() < MAX_PENDING {
                        pending.push(Pending {
                            offset,
                            epoch,
                            event: event.clone(),
                        });
                    } else {
                        h.overflowed = true;
                    }
                    continue;
                }
                match h.next(offset, &epoch) {
                    Next::Seen => continue,
                    Next::Deliver => {}
                    Next::NewEpoch => me.notice(&key, offset - 1, &epoch),
                    Next::Gap => {
                        h.refill = Some(vec![Pending {
                            offset,
                            epoch,
                            event: event.clone(),
                        }]);
                        let (i, k) = (me.clone(), key.clone());
                        tokio::spawn(async move { Inner::refill(&i, &k).await });
                        continue;
                    }
                }
            }
            me.sink.deliver(&Delivery {
                key: &key,
                event: &event,
                offset,
                epoch: &epoch,
            });
        }
        drop(held);
        me.moved.notify_waiters();
        if let Some(done) = own.and_then(|o| o.done) {
            let _ = done.send(());
        }
    }

    /// Tells `key`'s subscribers that its events skipped to `offset` of `epoch`.
    fn notice(&self, key: &ChannelKey, offset: u64, epoch: &Arc<str>) {
        tracing::warn!(channel = %key.channel, "events skipped; subscribers told");
        self.sink.reset(
            key,
            &Position {
                offset,
                epoch: epoch.clone(),
            },
        );
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

    /// Starts a refill of `key` unless one runs (or the channel is not held).
    fn start_refill(me: &Arc<Inner>, key: &ChannelKey) {
        let mut held = me.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(key)
            && h.refill.is_none()
            && h.last.is_some()
        {
            h.refill = Some(Vec::new());
            let (i, k) = (me.clone(), key.clone());
            tokio::spawn(async move { Inner::refill(&i, &k).await });
        }
    }

    /// Delivers from history what `key` published after the last position delivered, then the
    /// events held back meanwhile, in order; where history cannot give it all (or Redis does not
    /// answer), the subscribers get the continuity notice first.
    async fn refill(me: &Arc<Inner>, key: &ChannelKey) {
        loop {
            let last = {
                let held = me.held.lock().unwrap_or_else(|e| e.into_inner());
                match held.get(key).and_then(|h| h.last.clone()) {
                    Some(last) => last,
                    None => return,
                }
            };
            let since = Since {
                offset: last.0,
                epoch: last.1.to_string(),
            };
            // Redis not answering (its command connection may come back after pub/sub) is no
            // proof that history lost the events: ask again for a while before the notice.
            let mut recovery = me.recover_now(key, Some(&since)).await;
            let asked = tokio::time::Instant::now();
            while recovery.is_err()
                && asked.elapsed() < REFILL_RETRY
                && !me.closed.load(Ordering::Acquire)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                recovery = me.recover_now(key, Some(&since)).await;
            }
            let mut held = me.held.lock().unwrap_or_else(|e| e.into_inner());
            let Some(h) = held.get_mut(key) else { return };
            let pending = h.refill.take().unwrap_or_default();
            let overflowed = std::mem::take(&mut h.overflowed);
            match recovery {
                Ok(Recovery {
                    events: Some(events),
                    position,
                }) => {
                    for r in events {
                        if h.next(r.offset, &position.epoch) == Next::Deliver {
                            me.sink.deliver(&Delivery {
                                key,
                                event: &r.event,
                                offset: r.offset,
                                epoch: &position.epoch,
                            });
                        }
                    }
                }
                other => {
                    let at = match (pending.first(), other) {
                        (Some(p), _) => Some((p.offset - 1, p.epoch.clone())),
                        (None, Ok(r)) => Some((r.position.offset, r.position.epoch)),
                        (None, Err(_)) => None,
                    };
                    if let Some((offset, epoch)) = at {
                        tracing::warn!(channel = %key.channel, "missed events not in history");
                        h.last = Some((offset, epoch.clone()));
                        me.notice(key, offset, &epoch);
                    }
                }
            }
            for p in pending {
                match h.next(p.offset, &p.epoch) {
                    Next::Seen => continue,
                    Next::Deliver => {}
                    Next::NewEpoch => me.notice(key, p.offset - 1, &p.epoch),
                    Next::Gap => {
                        h.last = Some((p.offset, p.epoch.clone()));
                        me.notice(key, p.offset - 1, &p.epoch);
                    }
                }
                me.sink.deliver(&Delivery {
                    key,
                    event: &p.event,
                    offset: p.offset,
                    epoch: &p.epoch,
                });
            }
            if !overflowed {
                drop(held);
                me.moved.notify_waiters();
                return;
            }
            // Events were dropped while held back: read history again from here.
            h.refill = Some(Vec::new());
        }
    }

    /// After a pub/sub (re)connect: the positions of every held channel of `orgs`, read at
    /// once (pipelined); a channel that moved on meanwhile is refilled.
    async fn reconcile(me: &Arc<Inner>, orgs: &[Arc<str>]) {
        let tracked: Vec<Tracked> = {
            let held = me.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .filter(|(k, _)| orgs.contains(&k.org))
                .filter_map(|(k, h)| h.last.as_ref().map(|(o, e)| (k.clone(), *o, e.clone())))
                .collect()
        };
        // One pipeline per org (a Cluster refuses a pipeline across slots), all at once on
        // the one multiplexed connection.
        let mut by_org: HashMap<&Arc<str>, Vec<&Tracked>> = HashMap::new();
        for t in &tracked {
            by_org.entry(&t.0.org).or_default().push(t);
        }
        futures_util::stream::iter(by_org.into_values())
            .for_each_concurrent(RECONCILE_DEPTH, |tracked| async move {
                let mut pipe = redis::pipe();
                for (key, _, _) in &tracked {
                    let [epoch, offset, _] = me.keys.channel(key);
                    pipe.get(epoch).get(offset);
                }
                let now = me
                    .link
                    .run(|mut c| {
                        let pipe = &pipe;
                        async move { pipe.query_async::<Vec<Option<String>>>(&mut c).await }
                    })
                    .await;
                for (i, (key, last, epoch)) in tracked.iter().enumerate() {
                    let same = now.as_ref().is_some_and(|now| {
                        now.get(2 * i).cloned().flatten().as_deref() == Some(&**epoch)
                            && now
                                .get(2 * i + 1)
                                .cloned()
                                .flatten()
                                .and_then(|o| o.parse().ok())
                                == Some(*last)
                    });
                    if !same {
                        Inner::start_refill(me, key);
                    }
                }
            })
            .await;
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
            .arg(events.len())
            .arg(self.publish_command);
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
            .run(|mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
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
                if self.shards.listens_to(&ev.org) {
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
        self: &Arc<Self>,
        key: &ChannelKey,
        since: Option<&Since>,
    ) -> Result<Recovery, BrokerError> {
        if self.closed.load(Ordering::Acquire) || !self.shards.subscribed(&key.org).await {
            return Err(BrokerError::Unavailable);
        }
        let recovery = self.recover_now(key, since).await?;
        self.seen_position(key, &recovery.position);
        self.caught_up(key, &recovery.position).await;
        Ok(recovery)
    }

    /// Waits (bounded) until this node has delivered `key` up to `position`, which a join
    /// just read from Redis. Redis runs a publish's script before it answers the read, but the
    /// event comes through pub/sub, another connection the node may read later: without the
    /// wait, the subscriber would be moved into the hub first and get events at or below its
    /// position live (already in its replay, or before it subscribed: duplicates). While it
    /// waits the subscriber is a joiner, so those events are buffered and dropped by the join.
    /// A node that does not catch up within half a second starts a refill from history.
    async fn caught_up(self: &Arc<Self>, key: &ChannelKey, position: &Position) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        let mut refilled = false;
        loop {
            let moved = self.moved.notified();
            {
                let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                match held.get(key).and_then(|h| h.last.as_ref()) {
                    Some((offset, epoch)) if *epoch == position.epoch => {
                        if *offset >= position.offset {
                            return;
                        }
                    }
                    // Not held, or another epoch (the notice path handles that one).
                    _ => return,
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::debug!(channel = %key.channel, "a join did not see its position delivered");
                return;
            }
            if !refilled && deadline - now < CATCH_UP_WAIT * 9 / 10 {
                refilled = true;
                Inner::start_refill(self, key);
            }
            let _ = tokio::time::timeout_at(deadline.min(now + CATCH_UP_WAIT / 10), moved).await;
        }
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
            .run(|mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
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

    fn history<'a>(
        &'a self,
        key: &'a ChannelKey,
        since: Option<&'a Since>,
    ) -> BoxFuture<'a, Result<Recovery, BrokerError>> {
        Box::pin(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable);
            }
            self.inner.recover_now(key, since).await
        })
    }

    fn hold(&self, key: &ChannelKey) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.entry(key.clone()).or_default().holds += 1;
        self.inner.shards.hold(&key.org);
    }

    fn release(&self, key: &ChannelKey) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = held.get_mut(key) {
            h.holds -= 1;
            if h.holds == 0 {
                held.remove(key);
            }
        }
        self.inner.shards.release(&key.org);
    }

    fn ready(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
            && self.inner.link.is_up()
            && self.inner.shards.is_up()
    }

    fn leases(&self) -> Option<Arc<dyn Leases>> {
        Some(self.inner.clone())
    }

    fn listen_signals(&self) {
        // Held for good: the control channel is never released.
        self.inner.shards.hold(&Arc::from(keys::CONTROL));
    }

    fn signal<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, bool> {
        let (command, channel) = (
            self.inner.publish_command,
            self.inner.keys.events(keys::CONTROL),
        );
        Box::pin(async move {
            self.inner
                .link
                .run(|mut c| {
                    let (channel, message) = (channel.clone(), message.to_vec());
                    async move {
                        redis::cmd(command)
                            .arg(channel)
                            .arg(message)
                            .query_async::<i64>(&mut c)
                            .await
                    }
                })
                .await
                .is_some()
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.closed.store(true, Ordering::Release);
        self.stop.cancel();
        Box::pin(async {})
    }
}

impl Leases for Inner {
    fn take<'a>(&'a self, user: &'a UserKey, conn: u64, max: usize) -> BoxFuture<'a, Lease> {
        Box::pin(self.leases.take(&self.link, user, conn, max))
    }

    fn give_back(&self, user: &UserKey, conn: u64) {
        self.leases.give_back(user, conn);
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
