//! The pub/sub side of one Redis server (in a Cluster, of one master): one connection
//! subscribed to the pub/sub channel of every org this node wants from that server, kept in its
//! own list of wanted subscriptions and subscribed again by this task after every reconnect (it
//! never relies on a client library's automatic resubscribe). An org no longer wanted stays
//! subscribed for [`LINGER`], so a channel that empties and fills again costs no round trips.
//!
//! Every message is handed to the broker as it is read, in the order Redis sent it; nothing is
//! queued in between. A delivery probe publishes a marker on one of the subscribed orgs' channels
//! every [`PROBE_EVERY`]; a connection that does not bring it back within the timeout is up but
//! delivering nothing, and is replaced (then reconciled like any reconnect).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::pubsub::{self, Reply, Server};
use super::reconnect::Reconnect;
use super::tls::Tls;

/// How long an org nobody here holds any more stays subscribed.
pub(crate) const LINGER: Duration = Duration::from_secs(2);
/// How often the delivery probe runs on a connection with subscriptions.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(2);
/// What a probe message starts with (never the start of an event's message).
pub(crate) const PROBE_MARK: &[u8] = b"probe ";

/// Called with a message of an org's channel: its org and payload.
pub(crate) type DeliverFn = dyn Fn(&str, &[u8]) + Send + Sync;

/// What a listener calls back into (the broker).
pub(crate) struct Hooks {
    /// A message of an org's channel: its org and payload.
    pub(crate) deliver: Box<DeliverFn>,
    /// The connection was lost.
    pub(crate) lost: Box<dyn Fn() + Send + Sync>,
    /// Subscribed again after a (re)connect: reconcile every held channel of `orgs`.
    pub(crate) reconcile: Box<dyn Fn(Vec<Arc<str>>) -> BoxFuture<'static, ()> + Send + Sync>,
    /// Publishes `payload` on `channel` through the command connection; whether it was sent.
    pub(crate) probe: Box<dyn Fn(String, Vec<u8>) -> BoxFuture<'static, bool> + Send + Sync>,
    /// Redis said the slots moved (a Cluster resharded or failed over).
    pub(crate) moved: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct State {
    /// Orgs wanted; the instant since which nobody holds one that lingers.
    wanted: HashMap<Arc<str>, Option<Instant>>,
    /// Orgs asked of the current connection.
    requested: HashSet<Arc<str>>,
    /// Orgs the current connection confirmed.
    subscribed: HashSet<Arc<str>>,
}

/// The pub/sub connection to one server.
pub(crate) struct Listener {
    server: Server,
    /// How a `rediss://` server is reached.
    tls: Option<Tls>,
    keys: Keys,
    sharded: bool,
    timeout: Duration,
    state: Mutex<State>,
    /// The wanted list changed.
    changed: Notify,
    /// A subscription was confirmed (for [`Listener::subscribed`]).
    progress: Notify,
    up: AtomicBool,
    /// The last probe sent, and the last one that came back.
    probe_sent: AtomicU64,
    probe_seen: AtomicU64,
    probe_back: Notify,
    /// Tells this node's probes from other nodes'.
    id: String,
}

impl Listener {
    /// A listener of `server` (over TLS with `tls` when it is `rediss://`), not connected yet
    /// ([`Listener::run`] connects it); `sharded` for a Cluster's sharded pub/sub (`SSUBSCRIBE`).
    pub(crate) fn new(
        server: Server,
        tls: Option<Tls>,
        keys: Keys,
        sharded: bool,
        timeout: Duration,
    ) -> Listener {
        Listener {
            server,
            tls,
            keys,
            sharded,
            timeout,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            progress: Notify::new(),
            up: AtomicBool::new(false),
            probe_sent: AtomicU64::new(0),
            probe_seen: AtomicU64::new(0),
            probe_back: Notify::new(),
            id: crate::id::epoch(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the pub/sub connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether `org`'s events come to this node now.
    pub(crate) fn listens_to(&self, org: &str) -> bool {
        self.is_up() && self.state().subscribed.contains(org)
    }

    /// This node wants `org`'s events from this server.
    pub(crate) fn want(&self, org: &Arc<str>) {
        let mut s = self.state();
        if s.wanted.insert(org.clone(), None).is_none() {
            self.changed.notify_one();
        }
    }

    /// This node no longer wants `org`'s events: unsubscribed after [`LINGER`] unless wanted
    /// again meanwhile; at once with `now` (the org moved to another server).
    pub(crate) fn unwant(&self, org: &str, now: bool) {
        let mut s = self.state();
        if now {
            s.wanted.remove(org);
        } else if let Some(since) = s.wanted.get_mut(org) {
            *since = Some(Instant::now());
        }
        self.changed.notify_one();
    }

    /// Waits (within the timeout) until the connection is subscribed to `org`'s events.
    pub(crate) async fn subscribed(&self, org: &str) -> bool {
        let wait = async {
            loop {
                let progressed = self.progress.notified();
                if self.listens_to(org) {
                    return;
                }
                progressed.await;
            }
        };
        tokio::time::timeout(self.timeout, wait).await.is_ok()
    }

    fn channel(&self, org: &str) -> String {
        self.keys.events(org)
    }

    /// Keeps the connection up and subscribed to the wanted orgs until `stop`.
    pub(crate) async fn run(&self, stop: CancellationToken, hooks: &Hooks) {
        let mut backoff = Reconnect::new();
        // The last reason a connect failed, told once (a bad certificate, a refused port).
        let mut failing: Option<String> = None;
        let mut connected_before = false;
        loop {
            let connect = pubsub::connect(&self.server, self.tls.as_ref());
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.timeout, connect) => match r {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        let why = e.to_string();
                        if failing.as_ref() != Some(&why) {
                            tracing::warn!(server = %self.server.addr(), error = %why, "redis pub/sub connect failed");
                            failing = Some(why);
                        }
                        None
                    }
                    Err(_) => None,
                },
            };
            if let Some((writer, reader)) = connected {
                backoff.reset();
                failing = None;
                {
                    let mut s = self.state();
                    s.requested.clear();
                    s.subscribed.clear();
                }
                self.up.store(true, Ordering::Release);
                tracing::info!(server = %self.server.addr(), "redis pub/sub connected");
                if connected_before {
                    crate::metrics::redis_reconnected(crate::metrics::RedisLink::PubSub);
                }
                connected_before = true;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    e = self.read(reader, hooks) => {
                        tracing::warn!(server = %self.server.addr(), error = %e, "redis pub/sub connection lost; reconnecting");
                    }
                    why = self.write(writer, hooks) => {
                        tracing::warn!(server = %self.server.addr(), "redis pub/sub connection {why}; reconnecting");
                    }
                }
                self.up.store(false, Ordering::Release);
                {
                    let mut s = self.state();
                    s.requested.clear();
                    s.subscribed.clear();
                }
                self.progress.notify_waiters();
                (hooks.lost)();
            }
            if !backoff.wait(&stop).await {
                return;
            }
        }
    }

    /// Reads until the connection fails, handing each message on as it comes.
    async fn read(&self, mut reader: pubsub::Reader, hooks: &Hooks) -> std::io::Error {
        loop {
            let reply = match reader.read().await {
                Ok(r) => r,
                Err(e) => return e,
            };
            match reply {
                Reply::Message { channel, payload } => {
                    if let Some(rest) = payload.strip_prefix(PROBE_MARK) {
                        self.probe_arrived(rest);
                    } else if let Some(org) = std::str::from_utf8(&channel)
                        .ok()
                        .and_then(|c| self.keys.org_of(c))
                    {
                        (hooks.deliver)(org, &payload);
                    }
                }
                Reply::Subscribed(channel) => {
                    if let Some(org) = self.org_of(&channel) {
                        let mut s = self.state();
                        if let Some(org) = s.requested.get(org).cloned() {
                            s.subscribed.insert(org);
                        }
                        drop(s);
                        self.progress.notify_waiters();
                    }
                }
                Reply::Unsubscribed(channel) => {
                    if let Some(org) = self.org_of(&channel) {
                        let mut s = self.state();
                        s.subscribed.remove(org);
                        let wanted = s.wanted.contains_key(org);
                        s.requested.remove(org);
                        drop(s);
                        if wanted {
                            // Not asked for: the slot moved to another master.
                            tracing::info!(server = %self.server.addr(), "redis ended a subscription (slot moved)");
                            (hooks.moved)();
                            self.changed.notify_one();
                        }
                    }
                }
                Reply::Error(e) => {
                    tracing::warn!(server = %self.server.addr(), error = %e, "redis refused a subscription");
                    if e.starts_with("MOVED") || e.starts_with("ASK") {
                        (hooks.moved)();
                    }
                }
                Reply::Other => {}
            }
        }
    }

    fn org_of<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        self.keys.org_of(std::str::from_utf8(channel).ok()?)
    }

    fn probe_arrived(&self, rest: &[u8]) {
        let Some((id, seq)) = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split_once(' '))
        else {
            return;
        };
        if id == self.id
            && let Ok(seq) = seq.parse::<u64>()
        {
            self.probe_seen.fetch_max(seq, Ordering::AcqRel);
            self.probe_back.notify_waiters();
        }
    }

    /// Subscribes and unsubscribes as the wanted list changes, reconciles after the first
    /// subscriptions, and runs the delivery probe; returns why the connection must go.
    async fn write(&self, mut w: pubsub::Writer, hooks: &Hooks) -> &'static str {
        let (sub, unsub): (&[u8], &[u8]) = if self.sharded {
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE")
        } else {
            (b"SUBSCRIBE", b"UNSUBSCRIBE")
        };
        let mut reconciled = false;
        let mut next_probe = tokio::time::Instant::now() + PROBE_EVERY;
        let mut round = 0usize;
        loop {
            let (add, remove) = self.diff();
            for org in &add {
                if w.send(&[sub, self.channel(org).as_bytes()]).await.is_err() {
                    return "failed to write";
                }
            }
            for org in &remove {
                if w.send(&[unsub, self.channel(org).as_bytes()])
                    .await
                    .is_err()
                {
                    return "failed to write";
                }
            }
            if !reconciled {
                // Everything wanted is asked for: once confirmed, what was published while this
                // connection was away is caught up (events arriving meanwhile wait in order).
                let orgs: Vec<Arc<str>> = self.state().requested.iter().cloned().collect();
                for org in &orgs {
                    if !self.subscribed(org).await {
                        return "did not confirm its subscriptions";
                    }
                }
                reconciled = true;
                (hooks.reconcile)(orgs).await;
            }
            let wake = tokio::time::Instant::now() + Duration::from_secs(1);
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(wake.min(next_probe)) => {}
            }
            if tokio::time::Instant::now() >= next_probe {
                next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                round += 1;
                if !self.probe(round, hooks).await {
                    return "delivered nothing (its probe did not come back)";
                }
            }
        }
    }

    /// The orgs to subscribe (wanted, not asked for) and to unsubscribe (asked for, and no
    /// longer wanted or done lingering); both marked done.
    fn diff(&self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let mut s = self.state();
        let now = Instant::now();
        s.wanted
            .retain(|_, since| since.is_none_or(|t| now.duration_since(t) < LINGER));
        let add: Vec<Arc<str>> = s
            .wanted
            .keys()
            .filter(|o| !s.requested.contains(*o))
            .cloned()
            .collect();
        let remove: Vec<Arc<str>> = s
            .requested
            .iter()
            .filter(|o| !s.wanted.contains_key(*o))
            .cloned()
            .collect();
        for o in &add {
            s.requested.insert(o.clone());
        }
        for o in &remove {
            s.requested.remove(o);
            s.subscribed.remove(o);
        }
        (add, remove)
    }

    /// One probe on one of the subscribed orgs (in turn): `false` when it was published but
    /// did not come back within the timeout.
    async fn probe(&self, round: usize, hooks: &Hooks) -> bool {
        let org = {
            let s = self.state();
            let mut orgs: Vec<&Arc<str>> = s.subscribed.iter().collect();
            if orgs.is_empty() {
                return true;
            }
            orgs.sort();
            orgs[round % orgs.len()].clone()
        };
        let seq = self.probe_sent.fetch_add(1, Ordering::AcqRel) + 1;
        let mut payload = PROBE_MARK.to_vec();
        payload.extend_from_slice(format!("{} {seq}", self.id).as_bytes());
        let back = async {
            loop {
                let notified = self.probe_back.notified();
                if self.probe_seen.load(Ordering::Acquire) >= seq {
                    return;
                }
                notified.await;
            }
        };
        if !(hooks.probe)(self.channel(&org), payload).await {
            // Redis did not take it (down, paused): the command side reports that.
            return true;
        }
        tokio::time::timeout(self.timeout, back).await.is_ok()
    }
}
