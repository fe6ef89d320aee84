//! The composition root: one node's configuration, token verifier, broker, dispatch (with the
//! hub), connection limits and drain signal, built once from a [`Config`] and shared by every
//! connection and request. It wires the parts together and owns no protocol: sessions, the
//! publish service and the HTTP layer use it; it never imports any of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use cortex_protocol::{ChannelId, Since};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::activity::Activity;
use crate::auth::{ConsoleKey, JwtVerifier, KeyError};
#[cfg(feature = "redis")]
use crate::broker::RedisBroker;
use crate::broker::{Broker, BrokerError, MemoryBroker, Sink};
use crate::config::Config;
use crate::dispatch::{Dispatch, ReplyFn, Subscribed};
use crate::hub::{ChannelKey, ConnId, Subscriber};
use crate::id;
use crate::limits::Connections;
use crate::roster::Roster;
use crate::shutdown::Shutdown;

/// Unix time in seconds, from the system clock.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No key to verify tokens with.
    #[error("no token verification key: set --jwt-secret, --jwt-public-key or --jwks-file")]
    NoVerificationKey,
    /// No publish key.
    #[error("no publish key: set --publish-key")]
    NoPublishKey,
    /// The admin listener was asked for without the key that guards it.
    #[error("--admin-listen needs --admin-key: the admin API is never served without a key")]
    NoAdminKey,
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The Redis backplane is configured but cannot be used.
    #[error("{0}")]
    Redis(String),
    /// TLS is configured (`Config::tls`) but its certificate or key cannot be served: the
    /// message names the file and what is wrong with it.
    #[error("{0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One running node, as an embedder sees it: publish in-process, and count what it holds.
/// Everything else in it is the server's own.
pub struct Node {
    /// The configuration it was started with.
    pub(crate) config: Config,
    /// Verifies tokens.
    pub(crate) verifier: JwtVerifier,
    /// Positions, history, idempotency, delivery between nodes.
    pub(crate) broker: Arc<dyn Broker>,
    /// What the broker delivers -> this node's subscribers.
    pub(crate) dispatch: Arc<Dispatch>,
    /// Open connections and their limits.
    pub(crate) connections: Arc<Connections>,
    /// The drain signal and the tracked session tasks.
    pub(crate) shutdown: Shutdown,
    /// What this node did: events accepted, closes by code, the busiest orgs and channels.
    pub(crate) activity: Activity,
    /// Who is connected, for operators' disconnects (kept with the admin listener only).
    pub(crate) roster: Roster,
    /// The console's tail tokens' key (with an admin key only).
    pub(crate) console: Option<ConsoleKey>,
    /// When the node started, unix seconds.
    pub(crate) started_at: i64,
    ws_config: WebSocketConfig,
    node_prefix: u32,
    publishing: AtomicU64,
    published: tokio::sync::Notify,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("listen", &self.config.listen)
            .field("connections", &self.open_connections())
            .finish_non_exhaustive()
    }
}

/// A publish in flight; the drain waits for it (see [`Node::begin_publish`]).
pub(crate) struct InFlight<'a>(&'a Node);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Only the drain waits (`publishes_settled`, after the trigger): before it, the last
        // publish out skips the notification's lock. SeqCst pairs with the trigger's store
        // and `publishes_settled`'s load: either the drain sees this publish gone, or this
        // publish sees the drain begun.
        if self.0.publishing.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.shutdown.is_triggered() {
            self.0.published.notify_waiters();
        }
    }
}

impl Node {
    /// Builds a node's state from its configuration (no listener: see [`crate::Server`]), with
    /// the Redis broker when `config.redis` names one, else the in-memory broker.
    pub(crate) fn new(config: Config) -> Result<Arc<Node>, StartError> {
        if let Some(redis) = config.redis.clone() {
            #[cfg(feature = "redis")]
            return Node::with_broker(config, |sink, config| {
                let (retention, window) = (config.history, config.limits.idempotency_window);
                RedisBroker::start(sink, &redis, retention, window)
                    .map(|b| Arc::new(b) as Arc<dyn Broker>)
                    .map_err(|e| StartError::Redis(e.to_string()))
            });
            #[cfg(not(feature = "redis"))]
            return Err(StartError::Redis(format!(
                "{}: this build has no Redis backplane (feature `redis`)",
                redis.servers
            )));
        }
        Node::with_broker(config, |sink, config| {
            let l = &config.limits;
            Ok(Arc::new(MemoryBroker::new(
                sink,
                config.history,
                l.channel_idle,
                l.idempotency_window,
                l.idempotency_capacity,
            )))
        })
    }

    /// The same with the broker `make` builds, delivering into the node's dispatch.
    pub(crate) fn with_broker(
        config: Config,
        make: impl FnOnce(Arc<dyn Sink>, &Config) -> Result<Arc<dyn Broker>, StartError>,
    ) -> Result<Arc<Node>, StartError> {
        if config.auth.keys.is_empty() {
            return Err(StartError::NoVerificationKey);
        }
        if config.publish_keys.iter().all(|k| k.is_empty()) {
            return Err(StartError::NoPublishKey);
        }
        let admin_key = config.admin_key.as_deref().filter(|k| !k.is_empty());
        if config.admin_listen.is_some() && admin_key.is_none() {
            return Err(StartError::NoAdminKey);
        }
        let admin = config.admin_listen.is_some();
        let verifier = JwtVerifier::new(&config.auth)?;
        let dispatch = Arc::new(Dispatch::new());
        let broker = make(dispatch.clone(), &config)?;
        let l = &config.limits;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(l.ws_read_buffer)
            .write_buffer_size(l.ws_write_buffer)
            .max_write_buffer_size(l.outbox_bytes + l.max_frame_bytes + l.ws_write_buffer)
            .max_message_size(Some(l.max_frame_bytes))
            .max_frame_size(Some(l.max_frame_bytes));
        Ok(Arc::new(Node {
            connections: Arc::new(Connections::new(
                l.connections_per_user,
                l.connections_per_node,
                broker.leases(),
            )),
            verifier,
            broker,
            dispatch,
            shutdown: Shutdown::new(),
            activity: Activity::new(admin),
            roster: Roster::new(admin),
            console: admin_key.map(ConsoleKey::new),
            started_at: unix_now(),
            ws_config,
            node_prefix: id::node_prefix(),
            publishing: AtomicU64::new(0),
            published: tokio::sync::Notify::new(),
            config,
        }))
    }

    /// A node for tests (HS256 `secret`, publish key `k`) whose broker the test can take down.
    #[cfg(test)]
    pub(crate) fn with_flaky_broker(
        secret: &str,
    ) -> (Arc<Node>, Arc<crate::broker::test_util::Flaky>) {
        let mut c = Config::default();
        c.auth.keys = vec![crate::auth::KeySource::Secret(secret.into())];
        c.publish_keys = vec!["k".into()];
        let mut flaky = None;
        let node = Node::with_broker(c, |sink, _| {
            let f = Arc::new(crate::broker::test_util::Flaky::new(sink));
            flaky = Some(f.clone());
            Ok(f)
        })
        .expect("node");
        (node, flaky.expect("built"))
    }

    /// Registers a publish, or `None` once the drain has begun. Counting before checking means
    /// every publish that passed the check is waited for by [`Node::publishes_settled`], so an
    /// event answered 202 is always in the outboxes before the sessions' last flush.
    pub(crate) fn begin_publish(&self) -> Option<InFlight<'_>> {
        // SeqCst here, in the flag's store and load, and in `publishes_settled`'s load: a
        // publish and a trigger racing must not both miss the other.
        self.publishing.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (!self.shutdown.is_triggered()).then_some(guard)
    }

    /// Resolves once no publish is in flight.
    pub(crate) async fn publishes_settled(&self) {
        loop {
            let notified = self.published.notified();
            if self.publishing.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// This node's id in the operators' views (`n_` and the random prefix of its connection
    /// ids, so a connection id names its node).
    pub fn id(&self) -> String {
        format!("n_{:08x}", self.node_prefix)
    }

    /// The connection of this node that public id `id` names, if it is one of this node's.
    pub(crate) fn connection_of(&self, id: &str) -> Option<ConnId> {
        let hex = id.strip_prefix("c_")?;
        if hex.len() < 16 || !hex.is_char_boundary(8) {
            return None;
        }
        let (prefix, conn) = hex.split_at(8);
        (u32::from_str_radix(prefix, 16).ok()? == self.node_prefix)
            .then(|| u64::from_str_radix(conn, 16).ok())
            .flatten()
    }

    /// Events this node accepted (publish API and in-process) since start.
    pub(crate) fn events_accepted(&self) -> u64 {
        self.activity.events()
    }

    /// Deliveries into this node's connections since start.
    pub(crate) fn deliveries(&self) -> u64 {
        self.dispatch.delivered()
    }

    /// Subscriptions on this node (connection and channel pairs).
    pub fn subscriptions(&self) -> usize {
        self.activity.subscriptions()
    }

    /// The public id of connection `conn`.
    pub(crate) fn connection_id(&self, conn: ConnId) -> String {
        id::connection_id(self.node_prefix, conn)
    }

    /// The WebSocket settings every connection uses.
    pub(crate) fn ws_config(&self) -> WebSocketConfig {
        self.ws_config
    }

    /// Subscribes a connection through the join (see [`crate::dispatch`]).
    pub(crate) async fn subscribe(
        &self,
        key: &ChannelKey,
        sub: Subscriber,
        since: Option<&Since>,
        reply: ReplyFn<'_>,
    ) -> Result<Subscribed, BrokerError> {
        self.dispatch
            .subscribe(&*self.broker, key, sub, since, reply)
            .await
    }

    /// Removes a connection's subscription (idempotent).
    pub(crate) fn unsubscribe(&self, key: &ChannelKey, conn: ConnId) {
        self.dispatch.unsubscribe(&*self.broker, key, conn);
    }

    /// How many connections are open on this node.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// How many connections of this node are subscribed to `channel` of `org` (0 for a
    /// channel id that does not parse).
    pub fn subscribers(&self, org: &str, channel: &str) -> usize {
        match ChannelId::parse(channel) {
            Ok(channel) => self
                .dispatch
                .hub()
                .subscribers(&ChannelKey::new(Arc::from(org), channel)),
            Err(_) => 0,
        }
    }
}
