//! The node: its shared state, the HTTP router, the WebSocket upgrade, and graceful serving.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::BytesMut;
use cortex_protocol::PublishEvent;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::api::{self, Accepted, ApiError};
use crate::auth::{Claims, JwtVerifier, KeyError};
use crate::broker::{Broker, MemoryBroker};
use crate::config::Config;
use crate::hub::{ConnId, Hub};
use crate::idempotency::Idempotency;
use crate::publisher::{self, Prefixed};
use crate::shutdown::Shutdown;
use crate::socket::Socket;
use crate::{id, metrics, session};

/// Unix time in seconds, from the system clock.
pub fn unix_now() -> i64 {
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
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A connection refused at the door for a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Too many connections for this user.
    User,
    /// Too many connections on this node.
    Node,
}

/// A user: (org, sub).
type UserKey = (Arc<str>, Arc<str>);

/// Open connections, per user and per node.
pub struct Connections {
    per_user: Mutex<HashMap<UserKey, usize>>,
    total: AtomicU64,
    next: AtomicU64,
    max_per_user: usize,
    max_total: usize,
}

/// Holds one slot of the connection limits; frees it when dropped.
pub struct ConnectionGuard {
    node: Arc<Connections>,
    user: UserKey,
    conn: ConnId,
}

impl ConnectionGuard {
    /// The connection's id on this node.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The connection's org, shared with the node's per-user count.
    pub fn org(&self) -> &Arc<str> {
        &self.user.0
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut m = self.node.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
        self.node.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    fn new(max_per_user: usize, max_total: usize) -> Connections {
        Connections {
            per_user: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            next: AtomicU64::new(1),
            max_per_user,
            max_total,
        }
    }

    /// Takes a slot for this token's user, or says which limit is full.
    pub fn register(self: &Arc<Self>, claims: &Claims) -> Result<ConnectionGuard, LimitExceeded> {
        let user = (
            Arc::from(claims.org.as_str()),
            Arc::from(claims.sub.as_str()),
        );
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) as usize >= self.max_total {
            return Err(LimitExceeded::Node);
        }
        let n = m.entry(user.clone()).or_insert(0);
        if *n >= self.max_per_user {
            return Err(LimitExceeded::User);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionGuard {
            node: self.clone(),
            user,
            conn: self.next.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed) as usize
    }
}

/// Everything one node shares between its connections and its API.
pub struct Node {
    /// The configuration it was started with.
    pub config: Config,
    /// Verifies tokens.
    pub verifier: JwtVerifier,
    /// Delivers events.
    pub broker: Arc<dyn Broker>,
    /// This node's subscriptions.
    pub hub: Arc<Hub>,
    /// Open connections and their limits.
    pub connections: Arc<Connections>,
    /// Recent idempotency keys.
    pub idempotency: Idempotency,
    /// The drain signal and the tracked session tasks.
    pub shutdown: Shutdown,
    ws_config: WebSocketConfig,
    node_prefix: u32,
    publishing: AtomicU64,
    published: tokio::sync::Notify,
}

/// A publish in flight; the drain waits for it (see [`Node::begin_publish`]).
pub struct InFlight<'a>(&'a Node);

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
    /// Builds a node's state from its configuration (no listener: see [`Server`]).
    pub fn new(config: Config) -> Result<Arc<Node>, StartError> {
        if config.auth.keys.is_empty() {
            return Err(StartError::NoVerificationKey);
        }
        if config.publish_keys.iter().all(|k| k.is_empty()) {
            return Err(StartError::NoPublishKey);
        }
        let verifier = JwtVerifier::new(&config.auth)?;
        let hub = Arc::new(Hub::new());
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(
            hub.clone(),
            config.history,
            config.limits.channel_idle,
        ));
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
            )),
            idempotency: Idempotency::new(l.idempotency_window, l.idempotency_capacity),
            verifier,
            broker,
            hub,
            shutdown: Shutdown::new(),
            ws_config,
            node_prefix: id::node_prefix(),
            publishing: AtomicU64::new(0),
            published: tokio::sync::Notify::new(),
            config,
        }))
    }

    /// Registers a publish, or `None` once the drain has begun. Counting before checking means
    /// every publish that passed the check is waited for by [`Node::publishes_settled`], so an
    /// event answered 202 is always in the outboxes before the sessions' last flush.
    pub fn begin_publish(&self) -> Option<InFlight<'_>> {
        // SeqCst here, in the flag's store and load, and in `publishes_settled`'s load: a
        // publish and a trigger racing must not both miss the other.
        self.publishing.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (!self.shutdown.is_triggered()).then_some(guard)
    }

    /// Resolves once no publish is in flight.
    pub async fn publishes_settled(&self) {
        loop {
            let notified = self.published.notified();
            if self.publishing.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The public id of connection `conn`.
    pub fn connection_id(&self, conn: ConnId) -> String {
        id::connection_id(self.node_prefix, conn)
    }

    /// The WebSocket settings every connection uses.
    pub fn ws_config(&self) -> WebSocketConfig {
        self.ws_config
    }

    /// How many connections are open on this node.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// How many connections of this node are subscribed to `channel` of `org` (0 for a
    /// channel id that does not parse).
    pub fn subscribers(&self, org: &str, channel: &str) -> usize {
        match cortex_protocol::ChannelId::parse(channel) {
            Ok(channel) => self
                .hub
                .subscribers(&crate::hub::ChannelKey::new(Arc::from(org), channel)),
            Err(_) => 0,
        }
    }

    /// Publishes events in-process: the same validation and routing as `POST /api/events`.
    pub async fn publish(&self, events: Vec<PublishEvent>) -> Result<Vec<Accepted>, ApiError> {
        api::publish(self, events).await
    }
}

/// The node's HTTP routes.
pub fn router(node: Arc<Node>) -> Router {
    #[cfg(feature = "autobahn")]
    let echo = Router::new().route("/autobahn/echo", get(autobahn_echo));
    #[cfg(not(feature = "autobahn"))]
    let echo = Router::new();
    let routes = echo
        .route("/api/ws", get(upgrade))
        .route("/api/events", post(api::post_events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { metrics::render() }));
    // Only `local` checks the Host header: elsewhere the layer would be a no-op on every request
    // (a boxed future and a call through it per publish).
    let routes = if node.config.loopback_host_only {
        routes.layer(axum::middleware::from_fn(guard_host))
    } else {
        routes
    };
    routes.with_state(node)
}

/// Every route, in `local` mode only: a `Host` that is not a loopback name is refused, so a
/// DNS-rebinding page cannot reach the node under its own host name.
async fn guard_host(req: Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_host(host) {
        metrics::refused("host");
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "Host must be a loopback name",
        );
    }
    next.run(req).await
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown.is_triggered() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if node.broker.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable").into_response()
    }
}

/// The refusal of an unsupported WebSocket version.
const VERSION_13: &str = "Sec-WebSocket-Version must be 13";

/// A request refused before the upgrade: status, `error` code, message.
struct Refusal(StatusCode, &'static str, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = json_error(self.0, self.1, self.2);
        if self.2 == VERSION_13 {
            // RFC 6455 4.4: name the versions we speak.
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": error, "message": message });
    (status, axum::Json(body)).into_response()
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    matches!(name, "localhost" | "::1")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refusals that come before any token work: the browser Origin (the Host is checked for every
/// route by [`guard_host`]).
fn check_request(node: &Node, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let listed = node.config.allowed_origins.iter().any(|o| o == origin);
        let open = node.config.allowed_origins.is_empty() && !node.config.refuse_unlisted_origins;
        if !listed && !open {
            metrics::refused("origin");
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "this Origin is not allowed",
            ));
        }
    }
    Ok(())
}

/// The token of transport 1 (`?token=`) or 2 (`Authorization: Bearer`), if any.
fn upgrade_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        // A header that is not visible ASCII is a bad token, not an absent one.
        let Ok(v) = v.to_str() else {
            return Some(String::new());
        };
        return Some(bearer(v).unwrap_or(v).to_owned());
    }
    let query = req.uri().query()?;
    form_token(query)
}

/// The credentials of an `Authorization: Bearer ...` value (the scheme is case-insensitive,
/// RFC 9110 section 11.1).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn form_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a WebSocket upgrade request must carry, checked before any token work.
fn check_upgrade(node: &Node, req: &Request) -> Result<HeaderValue, Refusal> {
    check_request(node, req.headers())?;
    if req.uri().to_string().len() > node.config.limits.max_url_bytes {
        metrics::refused("url_too_long");
        return Err(Refusal(
            StatusCode::URI_TOO_LONG,
            "url_too_long",
            "the URL is too long",
        ));
    }
    if node.shutdown.is_triggered() {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is shutting down",
        ));
    }
    let h = req.headers();
    let is_upgrade = req.method() == Method::GET
        && header_has(h, header::CONNECTION, "upgrade")
        && header_has(h, header::UPGRADE, "websocket");
    if !is_upgrade {
        return Err(Refusal(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "this endpoint speaks WebSocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Refusal(StatusCode::BAD_REQUEST, "bad_request", VERSION_13));
    }
    // RFC 6455 4.2.1: the key is base64 of 16 bytes.
    use base64::Engine as _;
    match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(key)
            if base64::engine::general_purpose::STANDARD
                .decode(key.as_bytes())
                .is_ok_and(|k| k.len() == 16) =>
        {
            Ok(key.clone())
        }
        _ => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        )),
    }
}

/// Answers 101 and runs `run` on the WebSocket once the connection is handed over. Every
/// WebSocket endpoint goes through here, so all share one connection layer and one config.
fn switch_protocols<F, Fut>(
    node: &Arc<Node>,
    mut req: Request,
    key: &HeaderValue,
    run: F,
) -> Response
where
    F: FnOnce(WebSocketStream<Socket>) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
{
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "connection cannot be upgraded",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let task_node = node.clone();
    node.shutdown.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let Some(socket) = into_socket(upgraded) else {
            return;
        };
        // The socket moves straight into the session; `into_socket` keeps the downcast's parts
        // out of this task, so it does not hold them beside the session (memory per connection).
        run(
            WebSocketStream::from_raw_socket(socket, Role::Server, Some(task_node.ws_config()))
                .await,
        )
        .await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&accept).expect("base64 is a header value"),
        )
        .body(Body::empty())
        .expect("valid response")
}

/// The upgraded connection's TCP stream, shared by its session and its outbox (see
/// [`crate::socket`]). Every connection is one (see `accept_loop`).
fn into_socket(upgraded: hyper::upgrade::Upgraded) -> Option<Socket> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return Some(Socket::new(parts.io.into_inner(), parts.read_buf)),
        Err(upgraded) => upgraded,
    };
    // A publisher's connection handed to hyper, then upgraded: what is left of the bytes read
    // before the hand-over comes first.
    match upgraded.downcast::<TokioIo<Prefixed>>() {
        Ok(parts) => {
            let (tcp, prefix) = parts.io.into_inner().into_parts();
            let mut read = BytesMut::from(prefix);
            read.extend_from_slice(&parts.read_buf);
            Some(Socket::new(tcp, read.freeze()))
        }
        Err(_) => {
            tracing::error!("an upgraded connection is not a TCP stream");
            None
        }
    }
}

/// `GET /api/ws`: checks, optional token verification, then the switch to WebSocket.
async fn upgrade(State(node): State<Arc<Node>>, req: Request) -> Response {
    let key = match check_upgrade(&node, &req) {
        Ok(k) => k,
        Err(refusal) => return refusal.into_response(),
    };
    let pre_auth = match upgrade_token(&req) {
        None => None,
        Some(token) => {
            let claims = match node.verifier.verify(&token, unix_now()) {
                Ok(c) => c,
                Err(e) if e.is_expired() => {
                    metrics::refused("token_expired");
                    return json_error(
                        StatusCode::UNAUTHORIZED,
                        "token_expired",
                        "the token has expired",
                    );
                }
                Err(_) => {
                    metrics::refused("unauthorized");
                    return json_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the token is missing or invalid",
                    );
                }
            };
            match node.connections.register(&claims) {
                Ok(guard) => Some(Box::new((claims, guard))),
                Err(_) => {
                    metrics::refused("too_many_connections");
                    return json_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_connections",
                        "too many connections",
                    );
                }
            }
        }
    };
    let task_node = node.clone();
    switch_protocols(&node, req, &key, move |ws| {
        session::run(task_node, ws, pre_auth)
    })
}

/// `GET /autobahn/echo` (feature `autobahn`, tests only): echoes every message on exactly the
/// connection layer and WebSocket settings of `/api/ws`, for the Autobahn TestSuite.
#[cfg(feature = "autobahn")]
async fn autobahn_echo(State(node): State<Arc<Node>>, req: Request) -> Response {
    let key = match check_upgrade(&node, &req) {
        Ok(k) => k,
        Err(refusal) => return refusal.into_response(),
    };
    switch_protocols(&node, req, &key, |ws| session::echo(ws))
}

fn header_has(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Builds a server from a [`Config`]: the entry point for embedding.
///
/// ```no_run
/// # async fn demo() -> Result<(), cortex_realtime::StartError> {
/// use cortex_realtime::Server;
/// let server = Server::builder()
///     .jwt_secret("a long random secret")
///     .publish_key("a publish key")
///     .start()
///     .await?;
/// println!("WebSocket at ws://{}/api/ws", server.local_addr());
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Builder {
        self.config = config;
        self
    }

    /// Where to listen (default `127.0.0.1:0`, a free loopback port).
    pub fn listen(mut self, addr: SocketAddr) -> Builder {
        self.config.listen = addr;
        self
    }

    /// Adds an HS256 secret for verifying tokens.
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Builder {
        self.config
            .auth
            .keys
            .push(crate::auth::KeySource::Secret(secret.into()));
        self
    }

    /// Adds a key for the HTTP publish API.
    pub fn publish_key(mut self, key: impl Into<String>) -> Builder {
        self.config.publish_keys.push(key.into());
        self
    }

    /// Builds the node and binds the listener, without serving yet.
    pub async fn bind(self) -> Result<Server, StartError> {
        Server::bind(self.config).await
    }

    /// Binds and serves in the background; the handle publishes and shuts down.
    pub async fn start(self) -> Result<ServerHandle, StartError> {
        Ok(self.bind().await?.start())
    }
}

/// A server running in the background (see [`Builder::start`]).
pub struct ServerHandle {
    node: Arc<Node>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node, for inspection.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Publishes events in-process: the same validation, idempotency and routing as
    /// `POST /api/events`, without an HTTP round trip.
    pub async fn publish(&self, events: Vec<PublishEvent>) -> Result<Vec<Accepted>, ApiError> {
        self.node.publish(events).await
    }

    /// Publishes one event in-process.
    pub async fn publish_one(&self, event: PublishEvent) -> Result<Accepted, ApiError> {
        let mut v = self.node.publish(vec![event]).await?;
        Ok(v.pop().expect("one answer per event"))
    }

    /// Drains (every client gets 1001 after what was accepted) and waits for the end.
    pub async fn shutdown(self) {
        self.node.shutdown.trigger();
        let _ = self.task.await;
    }

    /// Resolves when the server stops on its own (it only does on a fatal error or a
    /// shutdown triggered through the node).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// A bound, not yet running server.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// A builder, starting from the default configuration.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Serves in the background until [`ServerHandle::shutdown`].
    pub fn start(self) -> ServerHandle {
        let node = self.node.clone();
        let addr = self.addr;
        let task = tokio::spawn(self.run(std::future::pending()));
        ServerHandle { node, addr, task }
    }

    /// Builds the node and binds its listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        metrics::install();
        let addr = config.listen;
        let node = Node::new(config)?;
        let listener = listen(addr).map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(Server {
            node,
            listener,
            addr,
        })
    }

    /// The address actually bound (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node, for in-process publishing and inspection.
    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `signal` resolves, then drains: stops accepting, closes every connection
    /// with 1001, and returns once they are closed or the drain timeout passes.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let node = self.node;
        let sweeper = {
            let node = node.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tokio::select! {
                        _ = node.shutdown.cancelled() => break,
                        _ = tick.tick() => node.broker.sweep(),
                    }
                }
            })
        };
        let served = tokio::spawn(accept_loop(self.listener, node.clone()));
        tokio::select! {
            _ = signal => node.shutdown.trigger(),
            _ = node.shutdown.cancelled() => {}
        }
        let drain = node.config.drain_timeout;
        let _ = tokio::time::timeout(drain, node.shutdown.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
        sweeper.abort();
        Ok(())
    }
}

/// Pending connections the kernel may queue: a reconnect storm after a restart brings every
/// client back at once (the default of 128 makes the rest retry their SYN a second later).
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Whether an accept error concerns only the one connection (the peer gave up), as opposed to
/// the listener or the process (out of descriptors or memory).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Accepts until shutdown. Each TCP connection is served by hyper (HTTP/1.1 with upgrades) with
/// a deadline for its request head and a cap on its size, so neither a slowloris nor a huge
/// header reaches the handlers. Out of file descriptors, the loop pauses briefly instead of
/// spinning; connections wait in the kernel's backlog until descriptors free up.
async fn accept_loop(listener: TcpListener, node: Arc<Node>) {
    let limits = &node.config.limits;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_request_head_bytes.max(8192));
    let app = router(node.clone());
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let stream = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    metrics::refused("accept_error");
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "accept failed; pausing new connections");
                        last_warning = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (node, http, app) = (node.clone(), http.clone(), app.clone());
        tokio::spawn(async move {
            // `local` checks every request's Host header in the router: no lean path there.
            if node.config.loopback_host_only {
                return serve_http(&node, &http, app, stream).await;
            }
            match publishing(&node, &stream).await {
                None => {}
                Some(false) => serve_http(&node, &http, app, stream).await,
                Some(true) => {
                    if let Some(rest) = publisher::serve(&node, stream).await {
                        serve_http(&node, &http, app, rest).await;
                    }
                }
            }
        });
    }
}

/// Whether a new connection's first bytes are a publish (`None`: it closed, sent nothing within
/// the handshake timeout, or the node is draining). Peeked, not read, so any other connection
/// reaches hyper untouched.
async fn publishing(node: &Node, stream: &TcpStream) -> Option<bool> {
    let mut first = [0u8; publisher::PEEK];
    // Without a timer when the bytes are already there.
    let now = std::future::poll_fn(|cx| {
        Poll::Ready(stream.poll_peek(cx, &mut tokio::io::ReadBuf::new(&mut first)))
    })
    .await;
    let peeked = match now {
        Poll::Ready(r) => r,
        Poll::Pending => tokio::select! {
            r = tokio::time::timeout(node.config.limits.handshake_timeout, stream.peek(&mut first)) => r.ok()?,
            _ = node.shutdown.cancelled() => return None,
        },
    };
    match peeked {
        Ok(n) if n > 0 => Some(publisher::starts_publishing(&first[..n])),
        _ => None,
    }
}

/// Serves one connection with hyper and the router until it closes, or gracefully once the node
/// drains.
async fn serve_http<I>(node: &Node, http: &hyper::server::conn::http1::Builder, app: Router, io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, req.map(Body::new)).await }
    });
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = node.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    let _ = tokio::time::timeout(node.config.drain_timeout, conn).await;
}
