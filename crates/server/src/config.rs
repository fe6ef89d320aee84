//! Every setting of a node in one place: its default, its unit and why it exists. Plain data: it
//! never reads the environment or a file (the command line layers those onto
//! [`Config::default`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::VerifierConfig;

/// The configuration of one node. `Config::default()` is a working loopback node with the
/// contract's limits, no keys (see [`crate::Server::builder`] for what must be set).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// How tokens are verified (keys, issuer, audience, leeway).
    pub auth: VerifierConfig,
    /// Bearer keys accepted by the publish API (compared in constant time).
    pub publish_keys: Vec<String>,
    /// Browser `Origin`s allowed to open a WebSocket. Empty: every origin is allowed unless
    /// `refuse_unlisted_origins` is set. Requests without `Origin` are not browsers and pass.
    pub allowed_origins: Vec<String>,
    /// Refuse every browser `Origin` not in `allowed_origins`, even when the list is empty
    /// (the `local` mode sets this).
    pub refuse_unlisted_origins: bool,
    /// Only accept `Host` headers naming a loopback address (DNS-rebinding guard for `local`).
    pub loopback_host_only: bool,
    /// Limits and timeouts.
    pub limits: Limits,
    /// How much per-channel history is kept for resuming clients (default: 100 events per
    /// channel, 300 s, 64 MiB in all).
    pub history: Retention,
    /// How long a drain may take after SIGTERM before the remaining connections are dropped.
    pub drain_timeout: Duration,
    /// The Redis backplane many nodes share; `None` (the default): this node alone, in memory.
    pub redis: Option<RedisConfig>,
    /// Where the operators' listener (the console, the admin API, health and metrics) listens;
    /// `None` (the default): no such listener. Needs `admin_key`.
    pub admin_listen: Option<SocketAddr>,
    /// The bearer key of the admin API (compared in constant time); it also signs the console's
    /// tail tokens (through a key derived from it). Required with `admin_listen`.
    pub admin_key: Option<String>,
    /// TLS on the listener (`wss://` and `https://`); `None` (the default): plain TCP.
    pub tls: Option<TlsConfig>,
}

/// The certificate a node serves TLS with (CONTRACT.md section 10, `--tls-cert`/`--tls-key`).
/// Read at start, where a file that is missing, holds no PEM certificate or key, or whose key
/// does not match the certificate stops the node; read again every `reload_interval`, where a
/// rewritten pair is taken by the connections accepted from then on (open ones keep theirs) and
/// a pair that is not valid is skipped with a warning, the last good one served on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the certificate chain: the server's certificate first, then the
    /// intermediates.
    pub cert: PathBuf,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// How often both files are read again to notice a rewrite (default 2 s: a renewed
    /// certificate is served within that, well inside the contract's 10 s).
    pub reload_interval: Duration,
}

impl TlsConfig {
    /// The default `reload_interval`.
    pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

    /// TLS with the certificate chain at `cert` and its private key at `key`.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            reload_interval: TlsConfig::DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// Where the Redis backplane is (CONTRACT.md sections 1 and 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One Redis server, or the seed nodes of a Redis Cluster.
    pub servers: RedisServers,
    /// Prefix of every key and pub/sub channel, so deployments can share a Redis.
    pub prefix: String,
    /// How long one Redis command may take before the node counts Redis as unreachable (a
    /// paused Redis must not hang a publish).
    pub command_timeout: Duration,
    /// How long a connection's lease (its place in its user's count across nodes) lives
    /// unless its node renews it: how long the connections of a node that died still count.
    pub lease_ttl: Duration,
    /// For `rediss://` URLs (TLS): a PEM file of the CA certificates that Redis's certificate
    /// is checked against, instead of the system's trusted roots (`None`, the default). Read
    /// at start; a file that is missing or holds no certificate stops the node from starting.
    pub tls_ca: Option<PathBuf>,
}

impl RedisConfig {
    /// The default prefix.
    pub const DEFAULT_PREFIX: &'static str = "cortex";

    /// A Redis server at `url` (`redis://HOST:PORT`, or `rediss://HOST:PORT` over TLS), with
    /// the default prefix and timeout.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig::with(RedisServers::One(url.into()))
    }

    /// A Redis Cluster known by its seed nodes' `urls`, with the default prefix and timeout.
    pub fn cluster(urls: Vec<String>) -> RedisConfig {
        RedisConfig::with(RedisServers::Cluster(urls))
    }

    fn with(servers: RedisServers) -> RedisConfig {
        RedisConfig {
            servers,
            prefix: RedisConfig::DEFAULT_PREFIX.into(),
            command_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(30),
            tls_ca: None,
        }
    }
}

/// Which Redis the nodes share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisServers {
    /// `redis://HOST:PORT` of one Redis server (`serve --redis`); `rediss://` over TLS.
    One(String),
    /// `redis://HOST:PORT` of some nodes of a Redis Cluster (`serve --redis-cluster`): the rest
    /// of the Cluster is found from them. `rediss://` over TLS (then every one of them: the
    /// Cluster's nodes answer with their TLS ports when it runs with `tls-cluster yes`).
    Cluster(Vec<String>),
}

impl std::fmt::Display for RedisServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisServers::One(url) => f.write_str(url),
            RedisServers::Cluster(urls) => write!(f, "cluster {}", urls.join(",")),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth: VerifierConfig::default(),
            publish_keys: Vec::new(),
            allowed_origins: Vec::new(),
            refuse_unlisted_origins: false,
            loopback_host_only: false,
            limits: Limits::default(),
            history: Retention {
                per_channel: 100,
                max_age: Duration::from_secs(300),
                max_bytes: 64 * 1024 * 1024,
            },
            drain_timeout: Duration::from_secs(10),
            redis: None,
            admin_listen: None,
            admin_key: None,
            tls: None,
        }
    }
}

/// History bounds (CONTRACT.md section 6).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept per channel.
    pub per_channel: usize,
    /// How long an event is kept.
    pub max_age: Duration,
    /// Bytes of history across all channels (ids and payloads, and a fixed cost per event).
    pub max_bytes: usize,
}

/// Limits and timeouts (CONTRACT.md section 9). Every one is per node unless it says otherwise.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest client frame or message, bytes; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Subscriptions per connection; the next gets `too_many_subscriptions`.
    pub max_subscriptions: usize,
    /// Outbound queue per connection, bytes; past it the connection is closed with 4009.
    pub outbox_bytes: usize,
    /// Outbound queue per connection, messages; past it the connection is closed with 4009.
    pub outbox_events: usize,
    /// Commands per second per connection (a token bucket of this size refilled each second);
    /// past it the connection is closed with 4008.
    pub commands_per_sec: u32,
    /// Connections per user (`sub` within an `org`); the next is refused with 429 or 4029.
    pub connections_per_user: usize,
    /// Connections per node; the next is refused with 429 or 4029.
    pub connections_per_node: usize,
    /// How long a connection may wait before its `auth` frame; then 4003.
    pub auth_timeout: Duration,
    /// Interval of server WebSocket pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// Largest publish body per event, bytes; bigger gets 413. A batch may be up to 100 times this.
    pub max_event_bytes: usize,
    /// How long an `idempotencyKey` is remembered.
    pub idempotency_window: Duration,
    /// Most `idempotencyKey`s remembered at once; the oldest are forgotten first.
    pub idempotency_capacity: usize,
    /// A channel with no subscriber and no event for this long is forgotten (its offset and
    /// epoch start over).
    pub channel_idle: Duration,
    /// How long a client may take to send a request's head (the WebSocket handshake included);
    /// past it the TCP connection is dropped (slowloris). Also ends idle HTTP keep-alives.
    pub handshake_timeout: Duration,
    /// Largest request head (request line and headers), bytes; bigger gets 431.
    pub max_request_head_bytes: usize,
    /// Longest request URL, bytes; longer gets 414 before any token work.
    pub max_url_bytes: usize,
    /// How long a publish request may take to send its body.
    pub body_timeout: Duration,
    /// WebSocket read buffer per connection, bytes (tungstenite's default is 128 KiB). Client
    /// frames are commands of a few hundred bytes: 256 keeps an idle connection small, and a
    /// bigger frame is still read whole (the buffer grows to it; each read takes this much).
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection, bytes: writes are flushed past this.
    pub ws_write_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 64 * 1024,
            max_subscriptions: 128,
            outbox_bytes: 1024 * 1024,
            outbox_events: 1000,
            commands_per_sec: 100,
            connections_per_user: 100,
            connections_per_node: 100_000,
            auth_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            max_event_bytes: 64 * 1024,
            idempotency_window: Duration::from_secs(300),
            idempotency_capacity: 100_000,
            channel_idle: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            max_request_head_bytes: 16 * 1024,
            max_url_bytes: 10 * 1024,
            body_timeout: Duration::from_secs(10),
            ws_read_buffer: 256,
            ws_write_buffer: 4 * 1024,
        }
    }
}
