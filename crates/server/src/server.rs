//! [`Server`], its [`Builder`] and its [`ServerHandle`]: bind the listener, accept connections
//! (each handed to [`crate::http`]), run the node's housekeeping, and drain on shutdown. The
//! entry point for embedding; it never holds protocol or publish logic.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cortex_protocol::PublishEvent;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::node::{Node, StartError};
use crate::publish::{Accepted, PublishError};
use crate::tls::Acceptor;
use crate::{admin, http, metrics};

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
    admin_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the admin listener, when `Config::admin_listen` asked for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The node, for inspection.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Publishes events in-process: the same validation, idempotency and routing as
    /// `POST /api/events`, without an HTTP round trip.
    pub async fn publish(&self, events: Vec<PublishEvent>) -> Result<Vec<Accepted>, PublishError> {
        self.node.publish(events).await
    }

    /// Publishes one event in-process.
    pub async fn publish_one(&self, event: PublishEvent) -> Result<Accepted, PublishError> {
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
    /// The admin listener and its address, when configured.
    admin: Option<(TcpListener, SocketAddr)>,
    /// With `Config::tls`: the certificate served (on both listeners), reloaded while the
    /// server runs.
    tls: Option<Arc<Acceptor>>,
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
        let admin_addr = self.admin_addr();
        let task = tokio::spawn(self.run(std::future::pending()));
        ServerHandle {
            node,
            addr,
            admin_addr,
            task,
        }
    }

    /// Builds the node and binds its listener.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        metrics::install();
        let addr = config.listen;
        // Before the node: a certificate that cannot be served stops the start at once.
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(
                Acceptor::load(files).map_err(|e| StartError::Tls(e.to_string()))?,
            )),
            None => None,
        };
        let node = Node::new(config)?;
        let listener = listen(addr).map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let admin = match node.config.admin_listen {
            None => None,
            Some(at) => {
                let bound = listen(at).map_err(|source| StartError::Bind { addr: at, source })?;
                let real = bound
                    .local_addr()
                    .map_err(|source| StartError::Bind { addr: at, source })?;
                Some((bound, real))
            }
        };
        Ok(Server {
            node,
            listener,
            addr,
            admin,
            tls,
        })
    }

    /// The address of the admin listener, when configured (the real port when port 0 was
    /// asked for).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, a)| *a)
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
                // The backplane's gauges, every second.
                let mut gauges = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = node.shutdown.cancelled() => break,
                        _ = tick.tick() => node.broker.sweep(),
                        _ = gauges.tick() => {
                            metrics::backplane(node.broker.ready(), node.broker.history_bytes())
                        }
                    }
                }
            })
        };
        let watcher = self.tls.clone().map(|tls| {
            let node = node.clone();
            tokio::spawn(async move { tls.watch(node.shutdown.cancelled()).await })
        });
        let admin_served = self.admin.and_then(|(listener, _)| {
            let admin = admin::Admin::new(&node, self.addr)?;
            Some(tokio::spawn(admin::serve(
                admin,
                listener,
                self.tls.clone(),
            )))
        });
        let served = tokio::spawn(accept_loop(self.listener, node.clone(), self.tls));
        tokio::select! {
            _ = signal => node.shutdown.trigger(),
            _ = node.shutdown.cancelled() => {}
        }
        let drain = node.config.drain_timeout;
        let _ = tokio::time::timeout(drain, node.shutdown.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
        if let Some(a) = admin_served {
            let _ = tokio::time::timeout(Duration::from_secs(1), a).await;
        }
        sweeper.abort();
        if let Some(watcher) = watcher {
            watcher.abort();
        }
        // Every connection is gone: the backplane's connections can go too.
        node.broker.close().await;
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
/// header reaches the handlers; with `tls`, after a TLS handshake within the same deadline.
/// Out of file descriptors, the loop pauses briefly instead of spinning; connections wait in
/// the kernel's backlog until descriptors free up.
async fn accept_loop(listener: TcpListener, node: Arc<Node>, tls: Option<Arc<Acceptor>>) {
    let builder = http::connection_builder(&node.config.limits);
    let app = http::router(node.clone());
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let stream = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    metrics::refused(metrics::Refusal::AcceptError);
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
        match &tls {
            None => {
                tokio::spawn(http::serve_connection(
                    node.clone(),
                    builder.clone(),
                    app.clone(),
                    stream,
                ));
            }
            Some(tls) => {
                tokio::spawn(http::serve_tls(
                    node.clone(),
                    builder.clone(),
                    app.clone(),
                    tls.clone(),
                    stream,
                ));
            }
        }
    }
}
