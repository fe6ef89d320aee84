//! The HTTP layer: the router, the WebSocket upgrade, health and metrics, and the publish
//! endpoints (through hyper and axum, or the publishers' lean path). It parses requests,
//! authenticates publishers and maps errors to answers ([`api::ApiError`] is the one HTTP
//! mapping of the publish API); it never holds publish or delivery logic of its own.
//!
//! # Layout
//!
//! - [`api`]: `POST /api/events` and [`api::ApiError`].
//! - [`publisher`]: publishers' keep-alive connections, read without hyper.
//! - [`upgrade`]: `GET /api/ws`: the checks before the upgrade, the token of the URL or header,
//!   the switch to WebSocket.

pub(crate) mod api;
pub(crate) mod publisher;
pub(crate) mod upgrade;

use std::sync::Arc;
use std::task::Poll;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Limits;
use crate::metrics;
use crate::node::Node;
use crate::tls::{Accepted, Acceptor};

/// The node's HTTP routes.
pub(crate) fn router(node: Arc<Node>) -> Router {
    #[cfg(feature = "autobahn")]
    let echo = Router::new().route("/autobahn/echo", get(upgrade::autobahn_echo));
    #[cfg(not(feature = "autobahn"))]
    let echo = Router::new();
    let routes = echo
        .route("/api/ws", get(upgrade::upgrade))
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
        metrics::refused(metrics::Refusal::Host);
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "Host must be a loopback name",
        );
    }
    next.run(req).await
}

pub(crate) async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let (status, text) = if node.shutdown.is_triggered() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if node.broker.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "backplane unavailable")
    };
    with_retry_after((status, text).into_response())
}

/// A JSON error answer outside the publish API (which has [`api::ApiError`]).
pub(crate) fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": error, "message": message });
    with_retry_after((status, axum::Json(body)).into_response())
}

/// Adds the `Retry-After` every 503 carries (the rule is [`api::ApiError::retry_after`]).
fn with_retry_after(mut resp: Response) -> Response {
    if let Some(secs) = api::ApiError::retry_after(resp.status()) {
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(secs),
        );
    }
    resp
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

/// The credentials of an `Authorization: Bearer ...` value (the scheme is case-insensitive,
/// RFC 9110 section 11.1).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Serves one accepted TCP connection: a publisher's (its first bytes are a publish) on the
/// lean path until it asks for something else, any other with hyper and the router.
pub(crate) async fn serve_connection(
    node: Arc<Node>,
    http: hyper::server::conn::http1::Builder,
    app: Router,
    stream: TcpStream,
) {
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
}

/// How every listener's connections are served by hyper (HTTP/1.1 with upgrades): a deadline
/// for the request head and a cap on its size, so neither a slowloris nor a huge header reaches
/// the handlers.
pub(crate) fn connection_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_request_head_bytes.max(8192));
    builder
}

/// Serves one accepted TCP connection of a TLS listener: the handshake (within the handshake
/// timeout, given up when the node drains), then hyper and `app` over TLS. Publishers take
/// hyper's path here (the lean one reads the TCP socket itself), and WebSockets upgraded on it
/// are written by their session only (see [`crate::ws`]).
pub(crate) async fn serve_tls(
    node: Arc<Node>,
    http: hyper::server::conn::http1::Builder,
    app: Router,
    tls: Arc<Acceptor>,
    stream: TcpStream,
) {
    let accepted = tokio::select! {
        r = tokio::time::timeout(node.config.limits.handshake_timeout, tls.accept(stream)) => r,
        _ = node.shutdown.cancelled() => return,
    };
    drop(tls);
    if let Ok(Accepted::Tls(stream)) = accepted {
        serve_http(&node, &http, app, stream).await;
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
pub(crate) async fn serve_http<I>(
    node: &Node,
    http: &hyper::server::conn::http1::Builder,
    app: Router,
    io: I,
) where
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::test_util::Flaky;
    use axum::http::Method;
    use std::sync::atomic::Ordering;

    /// A node with a broker the test can take down, and its router.
    fn node() -> (Arc<Node>, Arc<Flaky>, Router) {
        let (node, flaky) = Node::with_flaky_broker("s");
        let app = router(node.clone());
        (node, flaky, app)
    }

    /// Sends one request through the router; (status, Retry-After, body).
    async fn send(app: &Router, req: Request) -> (u16, Option<String>, String) {
        let resp = tower::Service::call(&mut app.clone(), req).await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    fn get(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    fn publish() -> Request {
        let body = r#"{"orgId":"o_1","type":"task.deleted","channels":["task:t_1"],"payload":{"taskId":"t_1"}}"#;
        Request::builder()
            .method(Method::POST)
            .uri("/api/events")
            .header(header::AUTHORIZATION, "Bearer k")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn every_503_carries_retry_after_and_nothing_else_does() {
        let (node, flaky, app) = node();
        assert_eq!(
            send(&app, get("/readyz")).await,
            (200, None, "ready".into())
        );
        let (status, retry, _) = send(&app, publish()).await;
        assert_eq!((status, retry), (202, None));

        // The backplane is away: not ready, publishes refused, health unchanged.
        flaky.down.store(true, Ordering::SeqCst);
        let (status, retry, body) = send(&app, get("/readyz")).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
        let (status, retry, body) = send(&app, publish()).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")));
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["error"], "unavailable", "{body}");
        assert_eq!(send(&app, get("/healthz")).await.0, 200);
        flaky.down.store(false, Ordering::SeqCst);
        assert_eq!(send(&app, get("/readyz")).await.0, 200, "ready again");

        // Draining: not ready, upgrades refused, with the same header.
        node.shutdown.trigger();
        let (status, retry, body) = send(&app, get("/readyz")).await;
        assert_eq!(
            (status, retry.as_deref(), body.as_str()),
            (503, Some("1"), "draining")
        );
        let upgrade = Request::builder()
            .uri("/api/ws")
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Body::empty())
            .unwrap();
        let (status, retry, body) = send(&app, upgrade).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
        let (status, retry, _) = send(&app, publish()).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")));
    }
}
