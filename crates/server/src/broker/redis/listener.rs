//! The pub/sub side: one connection subscribed to the pub/sub channel of every org this node
//! holds channels of (reference-counted by the node's holds), kept in the node's own list of
//! wanted subscriptions and subscribed again by this task after every reconnect (it never relies
//! on a client library's automatic resubscribe). It hands every message to the broker; it never
//! parses one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::reconnect::Reconnect;

#[derive(Default)]
struct State {
    /// Orgs this node holds channels of, with how many channels.
    wanted: HashMap<Arc<str>, usize>,
    /// Orgs the current connection is subscribed to.
    subscribed: HashSet<Arc<str>>,
}

/// The node's pub/sub connection.
pub(crate) struct Listener {
    client: Client,
    keys: Keys,
    timeout: Duration,
    state: Mutex<State>,
    /// The wanted list changed.
    changed: Notify,
    /// The subscribed list changed (for [`Listener::subscribed`]).
    progress: Notify,
    up: AtomicBool,
}

impl Listener {
    /// A listener on `client`, not connected yet ([`Listener::run`] connects it).
    pub(crate) fn new(client: Client, keys: Keys, timeout: Duration) -> Listener {
        Listener {
            client,
            keys,
            timeout,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            progress: Notify::new(),
            up: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the pub/sub connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether this node holds channels of `org` (so its events come back to it).
    pub(crate) fn listens_to(&self, org: &str) -> bool {
        self.state().subscribed.contains(org)
    }

    /// This node holds one more channel of `org`.
    pub(crate) fn hold(&self, org: &Arc<str>) {
        let mut s = self.state();
        let n = s.wanted.entry(org.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.changed.notify_one();
        }
    }

    /// This node holds one channel of `org` fewer.
    pub(crate) fn release(&self, org: &str) {
        let mut s = self.state();
        if let Some(n) = s.wanted.get_mut(org) {
            *n -= 1;
            if *n == 0 {
                s.wanted.remove(org);
                self.changed.notify_one();
            }
        }
    }

    /// Waits (within the timeout) until the connection is subscribed to `org`'s events.
    pub(crate) async fn subscribed(&self, org: &str) -> bool {
        let wait = async {
            loop {
                let progressed = self.progress.notified();
                if self.is_up() && self.state().subscribed.contains(org) {
                    return;
                }
                progressed.await;
            }
        };
        tokio::time::timeout(self.timeout, wait).await.is_ok()
    }

    /// Keeps the connection up and subscribed to the wanted orgs until `stop`, handing every
    /// message (its org and payload) to `deliver`, in the order Redis sent them, and calling
    /// `lost` whenever the connection goes.
    pub(crate) async fn run(
        &self,
        stop: CancellationToken,
        deliver: impl Fn(&str, &[u8]),
        lost: impl Fn(),
        reconcile: impl Fn() -> futures_util::future::BoxFuture<'static, ()>,
    ) {
        let mut backoff = Reconnect::new();
        loop {
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.timeout, self.client.get_async_pubsub()) => {
                    r.ok().and_then(Result::ok)
                }
            };
            if let Some(pubsub) = connected {
                backoff.reset();
                let (mut sink, mut stream) = pubsub.split();
                self.up.store(true, Ordering::Release);
                tracing::info!("redis pub/sub connected");
                // Once subscribed again after a reconnect, what was published meanwhile is
                // caught up before the first message read (messages wait in the stream).
                let mut caught_up = false;
                'connected: loop {
                    let (add, remove) = {
                        let s = self.state();
                        let add: Vec<Arc<str>> = s
                            .wanted
                            .keys()
                            .filter(|o| !s.subscribed.contains(*o))
                            .cloned()
                            .collect();
                        let remove: Vec<Arc<str>> = s
                            .subscribed
                            .iter()
                            .filter(|o| !s.wanted.contains_key(*o))
                            .cloned()
                            .collect();
                        (add, remove)
                    };
                    for org in add {
                        let ok = tokio::time::timeout(
                            self.timeout,
                            sink.subscribe(self.keys.events(&org)),
                        )
                        .await;
                        if !matches!(ok, Ok(Ok(()))) {
                            break 'connected;
                        }
                        self.state().subscribed.insert(org);
                        self.progress.notify_waiters();
                    }
                    for org in remove {
                        let ok = tokio::time::timeout(
                            self.timeout,
                            sink.unsubscribe(self.keys.events(&org)),
                        )
                        .await;
                        if !matches!(ok, Ok(Ok(()))) {
                            break 'connected;
                        }
                        self.state().subscribed.remove(&org);
                    }
                    if !caught_up {
                        caught_up = true;
                        reconcile().await;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.changed.notified() => {}
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(org) = self.keys.org_of(msg.get_channel_name()) {
                                    deliver(org, msg.get_payload_bytes());
                                }
                            }
                            None => break 'connected,
                        },
                    }
                }
                self.up.store(false, Ordering::Release);
                self.state().subscribed.clear();
                self.progress.notify_waiters();
                lost();
                tracing::warn!("redis pub/sub connection lost; reconnecting");
            }
            if !backoff.wait(&stop).await {
                return;
            }
        }
    }
}
