//! One connection attempt: TCP, the WebSocket upgrade with the token in its transport, and the
//! wait for `connected`. Bytes and HTTP stop here; the worker sees a [`Ws`] or a [`Failure`].

use std::io;
use std::sync::Arc;

use cortex_protocol::{ClientMessage, ServerMessage};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::event::Connected;
use crate::token::TokenTransport;

/// How long a close handshake may take before the socket is dropped.
pub(crate) const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A byte stream a WebSocket runs over: a TCP stream, or an in-memory pipe in tests.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket over any [`Io`].
pub(crate) type Ws = WebSocketStream<Box<dyn Io>>;

/// Opens the byte stream to `host:port`: TCP in production, a pipe in tests.
pub(crate) type Dial =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, io::Result<Box<dyn Io>>> + Send + Sync>;

/// The production [`Dial`]: TCP with Nagle off (events are small and latency matters).
pub(crate) fn tcp() -> Dial {
    Arc::new(|host, port| {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    })
}

/// Why a URL cannot be connected to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// Where to connect: the URL as given (never containing a token), and its host and port.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    url: String,
    host: String,
    port: u16,
}

impl Target {
    /// Checks a `ws://host[:port]/path` URL.
    pub(crate) fn parse(url: &str) -> Result<Target, UrlError> {
        let uri: Uri = url.parse().map_err(|_| UrlError("not a URL".to_owned()))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(UrlError(
                    "wss:// is not supported: this client has no TLS; put it behind a local \
                     TLS-terminating proxy or use ws:// on a trusted network"
                        .to_owned(),
                ));
            }
            _ => return Err(UrlError("the URL must start with ws://".to_owned())),
        }
        let host = uri
            .host()
            .ok_or_else(|| UrlError("the URL has no host".to_owned()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv == "token" || kv.starts_with("token="))
        }) {
            return Err(UrlError(
                "put the token in the token provider, not in the URL".to_owned(),
            ));
        }
        Ok(Target {
            url: url.to_owned(),
            port: uri.port_u16().unwrap_or(80),
            host,
        })
    }

    /// The upgrade request, with the token in the URL or a header as `transport` says.
    fn request(&self, transport: TokenTransport, token: &str) -> Result<Request, Failure> {
        let url = match transport {
            TokenTransport::Query => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}token={}", self.url, percent_encode(token))
            }
            TokenTransport::AuthFrame | TokenTransport::Header => self.url.clone(),
        };
        let mut req = url.into_client_request().map_err(|_| Failure::BadToken)?;
        if transport == TokenTransport::Header {
            let value =
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Failure::BadToken)?;
            req.headers_mut().insert(header::AUTHORIZATION, value);
        }
        Ok(req)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (a JWT is all unreserved but
/// for its dots; the provider may hand out anything).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How an attempt failed before `connected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server refused the upgrade: status and the body's `error`.
    Refused { status: u16, error: Option<String> },
    /// The server closed the WebSocket (4001, 4002, 4003, 4029, 1001...).
    Closed { code: u16, reason: String },
    /// TCP or WebSocket failure, or an unexpected first message.
    Lost(String),
    /// The token cannot be put in a URL or header (control characters).
    BadToken,
}

/// Connects, authenticates and reads `connected`. The caller bounds it in time.
pub(crate) async fn open(
    dial: &Dial,
    target: &Target,
    transport: TokenTransport,
    token: &str,
) -> Result<(Ws, Connected), Failure> {
    let request = target.request(transport, token)?;
    let io = dial(target.host.clone(), target.port).await.map_err(|e| {
        Failure::Lost(format!(
            "cannot connect to {}:{}: {e}",
            target.host, target.port
        ))
    })?;
    let mut ws = match tokio_tungstenite::client_async(request, io).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(resp)) => {
            let error = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
            return Err(Failure::Refused {
                status: resp.status().as_u16(),
                error,
            });
        }
        Err(e) => return Err(Failure::Lost(describe(&e))),
    };
    if transport == TokenTransport::AuthFrame {
        let auth = ClientMessage::Auth {
            token: token.to_owned(),
            r#ref: None,
        };
        let text = serde_json::to_string(&auth).expect("commands serialize");
        ws.send(Message::text(text))
            .await
            .map_err(|e| Failure::Lost(describe(&e)))?;
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(ServerMessage::Connected {
                        connection_id,
                        user_id,
                        org_id,
                        expires_at,
                    }) => Ok((
                        ws,
                        Connected {
                            connection_id,
                            user_id,
                            org_id,
                            expires_at,
                        },
                    )),
                    _ => Err(Failure::Lost(
                        "the server's first message was not `connected`".to_owned(),
                    )),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                // Answer the close so the server's side ends cleanly.
                let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(None)).await;
                return Err(Failure::Closed { code, reason });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Failure::Lost(describe(&e))),
            None => {
                return Err(Failure::Lost(
                    "the connection ended before `connected`".to_owned(),
                ));
            }
        }
    }
}

/// A WebSocket error in words that never contain the URL (it may hold a token).
pub(crate) fn describe(e: &WsError) -> String {
    match e {
        WsError::Io(e) => e.to_string(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "connection closed".to_owned(),
        WsError::Url(_) => "bad URL".to_owned(),
        WsError::Http(resp) => format!("HTTP {}", resp.status()),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_ws_with_a_host_and_no_token() {
        let t = Target::parse("ws://127.0.0.1:9000/api/ws").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        let t = Target::parse("ws://[::1]/api/ws").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        for bad in [
            "http://h/api/ws",
            "wss://h/api/ws",
            "ws:///api/ws",
            "nope",
            "ws://h/api/ws?token=abc",
            "ws://h/api/ws?a=1&token=abc",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_query_transport_encodes_the_token() {
        let t = Target::parse("ws://h:1/api/ws?x=1").unwrap();
        let r = t.request(TokenTransport::Query, "a.b_c-d~e f/+").unwrap();
        assert_eq!(r.uri().query(), Some("x=1&token=a.b_c-d~e%20f%2F%2B"));
        let r = t.request(TokenTransport::Header, "a.b").unwrap();
        assert_eq!(r.headers()[header::AUTHORIZATION], "Bearer a.b");
        assert_eq!(r.uri().query(), Some("x=1"));
        assert_eq!(
            t.request(TokenTransport::Header, "a\nb").unwrap_err(),
            Failure::BadToken
        );
    }
}
