//! `GET /api/ws`: the refusals that come before any token work (Origin, URL length, drain,
//! upgrade headers), the token of transport 1 (`?token=`) or 2 (`Authorization: Bearer`), the
//! connection limits, and the switch to WebSocket on the connection's own socket
//! ([`crate::ws::Socket`]). The session takes it from there; nothing here speaks the protocol.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::publisher::Prefixed;
use super::{bearer, json_error};
use crate::node::{Node, unix_now};
use crate::tls::Tls;
use crate::ws::{Socket, Sole, Transport};
use crate::{metrics, session};

/// The refusal of an unsupported WebSocket version.
const VERSION_13: &str = "Sec-WebSocket-Version must be 13";

/// A request refused before the upgrade: status, `error` code, message.
pub(crate) struct Refusal(StatusCode, &'static str, &'static str);

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

/// Whether a browser's `Origin` is the page's own (`http://` or `https://` and the `Host`).
fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let named = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((host, named), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

/// Refusals that come before any token work: the browser Origin (the Host is checked for every
/// route by [`guard_host`]). With `own_page_only` (the admin listener's tail) only the
/// listener's own page may connect, whatever the allowed list says.
fn check_request(node: &Node, headers: &HeaderMap, own_page_only: bool) -> Result<(), Refusal> {
    if own_page_only {
        return match headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or(""))
        {
            Some(origin) if !same_origin(headers, origin) => {
                metrics::refused(metrics::Refusal::Origin);
                Err(Refusal(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    "only the console's own page may connect here",
                ))
            }
            _ => Ok(()),
        };
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let listed = node.config.allowed_origins.iter().any(|o| o == origin);
        let open = node.config.allowed_origins.is_empty() && !node.config.refuse_unlisted_origins;
        if !listed && !open {
            metrics::refused(metrics::Refusal::Origin);
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
pub(crate) fn upgrade_token(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        // A header that is not visible ASCII is a bad token, not an absent one.
        let Ok(v) = v.to_str() else {
            return Some(String::new());
        };
        return Some(bearer(v).unwrap_or(v).to_owned());
    }
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// What a WebSocket upgrade request must carry, checked before any token work.
pub(crate) fn check_upgrade(
    node: &Node,
    req: &Request,
    own_page_only: bool,
) -> Result<HeaderValue, Refusal> {
    check_request(node, req.headers(), own_page_only)?;
    if req.uri().to_string().len() > node.config.limits.max_url_bytes {
        metrics::refused(metrics::Refusal::UrlTooLong);
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

/// What runs on a WebSocket once the connection is handed over, whichever its transport (plain
/// TCP with the shared path, or TLS with one writer): a generic method rather than a closure,
/// so that each transport gets its own copy and the plain one stays as small as before.
pub(crate) trait Endpoint: Send + 'static {
    /// Serves `ws` until it closes. (Its output is left unnamed: a wrapper turning it into `()`
    /// would keep a second copy of the session's future, the bulk of an idle connection.)
    fn run<S>(self, ws: WebSocketStream<S>) -> impl Future + Send
    where
        S: Transport + Send + 'static;
}

/// `/api/ws` (of the main listener, or the admin listener's for the console): the session, with
/// the token that came with the upgrade if one did, and the listener it came in on.
pub(crate) struct Session(
    pub(crate) Arc<Node>,
    pub(crate) Option<session::Verified>,
    pub(crate) session::Via,
);

impl Endpoint for Session {
    fn run<S>(self, ws: WebSocketStream<S>) -> impl Future + Send
    where
        S: Transport + Send + 'static,
    {
        session::run(self.0, ws, self.1, self.2)
    }
}

/// `/autobahn/echo` (feature `autobahn`, tests only).
#[cfg(feature = "autobahn")]
struct Echo;

#[cfg(feature = "autobahn")]
impl Endpoint for Echo {
    fn run<S>(self, ws: WebSocketStream<S>) -> impl Future + Send
    where
        S: Transport + Send + 'static,
    {
        session::echo(ws)
    }
}

/// Answers 101 and runs `endpoint` on the WebSocket once the connection is handed over. Every
/// WebSocket endpoint goes through here, so all share one connection layer and one config.
pub(crate) fn switch_protocols(
    node: &Arc<Node>,
    mut req: Request,
    key: &HeaderValue,
    endpoint: impl Endpoint,
) -> Response {
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
        // The socket moves straight into the session; `into_socket` keeps the downcast's parts
        // out of this task, so it does not hold them beside the session (memory per connection).
        let socket = match into_socket(upgraded) {
            Some(Transported::Tcp(socket)) => socket,
            // Boxed: a TLS session's future is bigger, and this task must not make every plain
            // connection's as big.
            Some(Transported::Tls(sole)) => {
                let config = Some(task_node.ws_config());
                Box::pin(async move {
                    endpoint
                        .run(WebSocketStream::from_raw_socket(sole, Role::Server, config).await)
                        .await;
                })
                .await;
                return;
            }
            None => return,
        };
        // One expression, so that no moved-from local is kept beside the session's future.
        endpoint
            .run(
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

/// An upgraded connection, by transport.
enum Transported {
    /// Plain TCP: shared by its session and its outbox (see [`crate::ws`]).
    Tcp(Socket),
    /// TLS: written by its session only.
    Tls(Sole<Box<Tls>>),
}

/// The upgraded connection's stream: plain TCP (see `crate::server`'s accept loop), from
/// hyper or from the publishers' path, or TLS.
fn into_socket(upgraded: hyper::upgrade::Upgraded) -> Option<Transported> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            return Some(Transported::Tcp(Socket::new(
                parts.io.into_inner(),
                parts.read_buf,
            )));
        }
        Err(upgraded) => upgraded,
    };
    // A publisher's connection handed to hyper, then upgraded: what is left of the bytes read
    // before the hand-over comes first.
    let upgraded = match upgraded.downcast::<TokioIo<Prefixed>>() {
        Ok(parts) => {
            let (tcp, prefix) = parts.io.into_inner().into_parts();
            let mut read = BytesMut::from(prefix);
            read.extend_from_slice(&parts.read_buf);
            return Some(Transported::Tcp(Socket::new(tcp, read.freeze())));
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<Box<Tls>>>() {
        Ok(parts) => Some(Transported::Tls(Sole::new(
            parts.io.into_inner(),
            parts.read_buf,
        ))),
        Err(_) => {
            tracing::error!("an upgraded connection is neither TCP nor TLS");
            None
        }
    }
}

/// `GET /api/ws`: checks, optional token verification, then the switch to WebSocket.
pub(crate) async fn upgrade(State(node): State<Arc<Node>>, req: Request) -> Response {
    let key = match check_upgrade(&node, &req, false) {
        Ok(k) => k,
        Err(refusal) => return refusal.into_response(),
    };
    let pre_auth = match upgrade_token(&req) {
        None => None,
        Some(token) => {
            let claims = match node.verifier.verify(&token, unix_now()) {
                Ok(c) => c,
                Err(e) if e.is_expired() => {
                    metrics::refused(metrics::Refusal::TokenExpired);
                    return json_error(
                        StatusCode::UNAUTHORIZED,
                        "token_expired",
                        "the token has expired",
                    );
                }
                Err(_) => {
                    metrics::refused(metrics::Refusal::Unauthorized);
                    return json_error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "the token is missing or invalid",
                    );
                }
            };
            match node.connections.admit(&claims).await {
                Ok(guard) => Some(Box::new((claims, guard))),
                Err(_) => {
                    metrics::refused(metrics::Refusal::TooManyConnections);
                    return json_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_connections",
                        "too many connections",
                    );
                }
            }
        }
    };
    let endpoint = Session(node.clone(), pre_auth, session::Via::Main);
    switch_protocols(&node, req, &key, endpoint)
}

/// `GET /autobahn/echo` (feature `autobahn`, tests only): echoes every message on exactly the
/// connection layer and WebSocket settings of `/api/ws`, for the Autobahn TestSuite.
#[cfg(feature = "autobahn")]
pub(crate) async fn autobahn_echo(State(node): State<Arc<Node>>, req: Request) -> Response {
    let key = match check_upgrade(&node, &req, false) {
        Ok(k) => k,
        Err(refusal) => return refusal.into_response(),
    };
    switch_protocols(&node, req, &key, Echo)
}

fn header_has(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}
