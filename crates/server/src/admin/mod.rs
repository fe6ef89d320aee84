//! The operators' listener (`--admin-listen`): the live web console's files, the admin API
//! under `/admin/api/` (bearer admin key), `/healthz`, `/readyz`, `/metrics`, and `/api/ws`
//! for the console's live tail (tail tokens only). It sits at the HTTP layer beside
//! [`crate::http`], whose connection handling and upgrade it reuses, and reads the node; it
//! never holds publish or delivery logic, and nothing below it imports it.
//!
//! Two background tasks per node with the listener: the sampler (one [`stats::Point`] a
//! second), and with Redis the heartbeat (this node's NODE object and busiest lists, every
//! second, on the backplane's control channel) with the reader of the other nodes' heartbeats
//! and disconnects ([`peers`]).
//!
//! # Layout
//!
//! - [`api`]: the handlers of `/admin/api/*` and their JSON.
//! - [`guard`]: the bearer key check and the failed-attempt limiter.
//! - [`stats`]: the per-second ring and its rates.
//! - [`peers`]: heartbeats and control messages between nodes, and the live nodes' table.
//! - [`console`]: the console's files (a static table).

pub(crate) mod api;
pub(crate) mod console;
pub(crate) mod guard;
pub(crate) mod peers;
pub(crate) mod stats;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio::net::TcpListener;

use crate::http::{self, upgrade};
use crate::metrics;
use crate::node::{Node, unix_now};
use crate::session::Via;
use crate::tls::Acceptor;

/// The admin side of one node.
pub(crate) struct Admin {
    /// The node it reports on.
    pub(crate) node: Arc<Node>,
    key: String,
    limiter: guard::Limiter,
    /// The per-second ring.
    pub(crate) ring: Mutex<stats::Ring>,
    /// The other live nodes (with Redis).
    pub(crate) peers: peers::Peers,
    /// This node's main listener, as the operators' views name it.
    pub(crate) address: SocketAddr,
}

/// The client address of an admin connection (for the failed-attempt limiter).
#[derive(Debug, Clone, Copy)]
struct Peer(IpAddr);

impl Admin {
    /// The admin side of `node`, whose main listener is at `address`; `None` without an admin
    /// listener.
    pub(crate) fn new(node: &Arc<Node>, address: SocketAddr) -> Option<Arc<Admin>> {
        node.config.admin_listen?;
        let key = node.config.admin_key.clone()?;
        Some(Arc::new(Admin {
            node: node.clone(),
            key,
            limiter: guard::Limiter::default(),
            ring: Mutex::new(stats::Ring::default()),
            peers: peers::Peers::default(),
            address,
        }))
    }

    /// Samples the node into the ring once.
    fn sample(&self) {
        let n = &self.node;
        self.ring.lock().unwrap_or_else(|e| e.into_inner()).push(
            unix_now(),
            n.open_connections(),
            n.subscriptions(),
            n.events_accepted(),
            n.deliveries(),
        );
    }
}

/// Serves the admin listener until the node drains, with the sampler and (with Redis) the
/// heartbeats beside it.
pub(crate) async fn serve(admin: Arc<Admin>, listener: TcpListener, tls: Option<Arc<Acceptor>>) {
    let node = admin.node.clone();
    let sampler = {
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                admin.sample();
            }
        })
    };
    let heartbeat = node
        .config
        .redis
        .is_some()
        .then(|| peers::start(admin.clone()));
    let app = router(admin.clone());
    let builder = http::connection_builder(&node.config.limits);
    loop {
        let (stream, peer) = tokio::select! {
            _ = node.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone().layer(Extension(Peer(peer.ip())));
        let (node, builder) = (node.clone(), builder.clone());
        match &tls {
            // The main listener's certificate, and its reloads.
            Some(tls) => {
                tokio::spawn(http::serve_tls(node, builder, app, tls.clone(), stream));
            }
            None => {
                tokio::spawn(async move { http::serve_http(&node, &builder, app, stream).await });
            }
        }
    }
    sampler.abort();
    if let Some(h) = heartbeat {
        h.abort();
    }
}

/// Every route of the admin listener.
fn router(admin: Arc<Admin>) -> Router {
    let node = admin.node.clone();
    let api = Router::new()
        .route("/info", get(api::info))
        .route("/stats", get(api::stats))
        .route("/top", get(api::top))
        .route("/disconnect", post(api::disconnect))
        .route("/history", get(api::history))
        .route("/tail-token", post(api::tail_token))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            authorize,
        ))
        .with_state(admin);
    let open = Router::new()
        .route("/", get(console::index))
        .route("/console/{*file}", get(console::file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(|| async { metrics::render() }))
        .route("/api/ws", get(tail))
        .with_state(node);
    open.nest("/admin/api", api)
}

/// Every admin API request: the limiter, then the key (a failure counts against the address).
async fn authorize(
    State(admin): State<Arc<Admin>>,
    Extension(Peer(ip)): Extension<Peer>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let now = std::time::Instant::now();
    if let Err(secs) = admin.limiter.check(ip, now) {
        let mut resp = api::error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed attempts from this address; wait for the minute to pass",
        );
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            secs.to_string().parse().expect("digits"),
        );
        return resp;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !guard::key_matches(given, &admin.key) {
        admin.limiter.fail(ip, now);
        metrics::admin_refused();
        return api::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin key as Authorization: Bearer <key>",
        );
    }
    next.run(req).await
}

/// `GET /api/ws` of the admin listener: the console's live tail. The tail token comes in the
/// first frame, never in the URL or a header.
async fn tail(State(node): State<Arc<Node>>, req: Request) -> Response {
    if upgrade::upgrade_token(&req).is_some() {
        metrics::refused(metrics::Refusal::Unauthorized);
        return api::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the tail token in the first frame ({\"type\":\"auth\",\"token\":...}), never in the URL",
        );
    }
    let key = match upgrade::check_upgrade(&node, &req, true) {
        Ok(k) => k,
        Err(refusal) => return refusal.into_response(),
    };
    let endpoint = upgrade::Session(node.clone(), None, Via::Console);
    upgrade::switch_protocols(&node, req, &key, endpoint)
}
