//! Publishers' connections: `POST /api/events` on keep-alive HTTP/1.1, read without hyper.
//!
//! A backend publishes event after event on one connection. Per request, hyper and axum spent
//! more user-space CPU than validation, history and fan-out together: 21% of the server's
//! samples in the 1:1 shape at saturation, and taking them off this path moved 1:1 from 33.6 and
//! 34.8 to 30.6 and 25.8 us of CPU per delivery (docs/benchmarks.md, "publishers' connections
//! without hyper"). So this hand-written reader stays, and a connection whose first bytes are
//! `POST /api/events ` is served here. Each request head is
//! parsed with httparse; one of the usual shape (HTTP/1.1, exactly that path, one
//! `Content-Length` within the body limit, the publish key, no `Transfer-Encoding`, `Expect` or
//! `Upgrade`) has its body read and is answered through `api::publish_body`, the road the
//! router's handler takes too. Any other request, at a request boundary and before a byte of its
//! body is read, hands the connection (the bytes read so far first) to hyper and the router,
//! which answer it exactly as they would have from the start: errors such as 401, 413 or 431,
//! other routes, even a WebSocket upgrade.
//!
//! The limits are hyper's: a request head must arrive within `handshake_timeout` (which also
//! ends idle keep-alives; the connection is dropped without an answer), a body within
//! `body_timeout` (400, then the connection is closed). `local` mode, whose router checks the
//! `Host` header, does not take this path.

use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::http::StatusCode;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::api::{self, ApiError};
use crate::node::Node;
use crate::ws::read_prefix;

/// The first bytes of a connection this module serves.
const MARKER: &[u8] = b"POST /api/events ";

/// Header fields parsed here; a request with more goes to hyper (which takes up to 100).
const MAX_HEADERS: usize = 32;

/// The read buffer's first size: a publish head and a typical event fit.
const READ_BUF: usize = 4096;

/// A read buffer grown past this for a large body is let go once that body is answered.
const KEEP_BUF: usize = 64 * 1024;

/// Whether a connection whose first bytes are `first` (peeked, not read) starts with a publish.
pub(crate) fn starts_publishing(first: &[u8]) -> bool {
    first.starts_with(MARKER)
}

/// How many bytes to peek for [`starts_publishing`].
pub(crate) const PEEK: usize = MARKER.len();

/// A TCP stream whose first reads return bytes already taken off it: a connection handed from
/// here to hyper.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    tcp: TcpStream,
}

impl Prefixed {
    /// The stream, and what of the prefix has not been read yet.
    pub(crate) fn into_parts(self) -> (TcpStream, Bytes) {
        (self.tcp, self.prefix)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        }
        read_prefix(&mut this.prefix, buf);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A request head of the usual publish shape, with the publish key.
#[derive(Debug, PartialEq, Eq)]
struct Publish {
    /// Bytes of the head.
    head: usize,
    /// Bytes of the body (`Content-Length`).
    body: usize,
    /// `Connection: close`: answer, then close.
    close: bool,
}

/// What the bytes at the front of the buffer are.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Not a whole head yet.
    Incomplete,
    /// A publish this module answers.
    Publish(Publish),
    /// Anything else: for hyper.
    Other,
}

/// Reads the request head at the front of `buf`; `key_ok` checks its `Authorization` value.
fn parse_head(buf: &[u8], key_ok: impl FnOnce(Option<&[u8]>) -> bool) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Incomplete,
        Err(_) => return Head::Other,
    };
    if req.method != Some("POST") || req.path != Some("/api/events") || req.version != Some(1) {
        return Head::Other;
    }
    let (mut length, mut authorization, mut close) = (None, None, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Head::Other;
            }
            let Some(n) = parse_length(h.value) else {
                return Head::Other;
            };
            length = Some(n);
        } else if name.eq_ignore_ascii_case("authorization") {
            // The first one, as `HeaderMap::get` takes it.
            authorization.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Other;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Head::Other;
        }
    }
    match length {
        Some(body) if key_ok(authorization) => Head::Publish(Publish { head, body, close }),
        _ => Head::Other,
    }
}

/// How this module reads the request head at the front of `buf` when `authorization` is the one
/// accepted `Authorization` value: `Some((head bytes, body bytes, close))` for a publish it
/// answers itself, `None` when it needs more bytes or hands the request to hyper. For the fuzz
/// target `publish_head`.
#[doc(hidden)]
#[cfg(feature = "internals")]
pub fn read_head(buf: &[u8], authorization: &[u8]) -> Option<(usize, usize, bool)> {
    match parse_head(buf, |a| a == Some(authorization)) {
        Head::Publish(p) => Some((p.head, p.body, p.close)),
        Head::Incomplete | Head::Other => None,
    }
}

/// A `Content-Length` value: decimal digits only, at most 18 of them (no overflow).
fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// Serves publishes on `tcp` until it closes (`None`) or a request is for hyper (the stream
/// with the bytes already read).
pub(crate) async fn serve(node: &Node, mut tcp: TcpStream) -> Option<Prefixed> {
    let limits = &node.config.limits;
    let body_limit = api::body_limit(node);
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = Vec::new();
    let mut date = Date::default();
    let mut wait = Wait::new(node, limits.handshake_timeout).await;
    loop {
        // A request head.
        wait.until(Instant::now() + limits.handshake_timeout);
        let publish = loop {
            if !buf.is_empty() {
                match parse_head(&buf, |a| api::publish_key_ok(node, a)) {
                    Head::Publish(p) if p.body <= body_limit => break p,
                    Head::Incomplete if buf.len() < limits.max_request_head_bytes => {}
                    _ => {
                        return Some(Prefixed {
                            prefix: buf.freeze(),
                            tcp,
                        });
                    }
                }
            }
            if wait.read(&mut tcp, &mut buf, node).await != Read::Bytes {
                return None;
            }
        };
        // Its body.
        let end = publish.head + publish.body;
        let mut failed = None;
        if buf.len() < end {
            buf.reserve(end - buf.len());
            wait.until(Instant::now() + limits.body_timeout);
            while failed.is_none() && buf.len() < end {
                failed = match wait.read(&mut tcp, &mut buf, node).await {
                    Read::Bytes => None,
                    Read::Timeout => Some(ApiError::body_timeout()),
                    Read::Closed => Some(ApiError::body_cut()),
                };
            }
        }
        // A body that did not arrive whole ends the connection.
        let close = publish.close || failed.is_some() || node.shutdown.is_triggered();
        let answer = match failed {
            Some(e) => Err(e),
            None => api::publish_body(node, &buf[publish.head..end]).await,
        };
        // The answer.
        let (status, body) = match answer {
            Ok(body) => (StatusCode::ACCEPTED, body),
            Err(e) => e.status_and_body(),
        };
        write_answer(&mut out, status, &body, date.now(), close);
        if tcp.write_all(&out).await.is_err() || close {
            let _ = tcp.shutdown().await;
            return None;
        }
        buf.advance(end);
        // A large batch's buffer is not kept for the small requests that usually follow.
        if buf.is_empty() && buf.capacity() > KEEP_BUF {
            buf = BytesMut::with_capacity(READ_BUF);
        }
    }
}

/// The response bytes: status line, the headers hyper would send, the JSON body.
fn write_answer(out: &mut Vec<u8>, status: StatusCode, body: &[u8], date: &str, close: bool) {
    crate::metrics::publish_answer(status.as_u16());
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(secs) = ApiError::retry_after(status) {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let _ = write!(out, "date: {date}\r\n\r\n");
    out.extend_from_slice(body);
}

/// The `Date` header's value, formatted once a second.
#[derive(Default)]
struct Date {
    second: u64,
    text: String,
}

impl Date {
    fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

/// How a read ended.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// Bytes arrived.
    Bytes,
    /// The deadline passed.
    Timeout,
    /// End of stream, an error, or (between requests) the node's drain.
    Closed,
}

/// Reads with a deadline and an ear for the drain, without a timer or a lock per request: one
/// timer per connection, moved on only when it fires before the current deadline, and the
/// drain's future polled only once the drain has begun.
struct Wait {
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Wait {
    async fn new(node: &Node, timeout: std::time::Duration) -> Wait {
        let deadline = Instant::now() + timeout;
        let mut drain = Box::pin(node.shutdown.token().cancelled_owned());
        // Polled once so that the drain wakes this task; afterwards only when it has begun.
        let _ = futures_util::poll!(drain.as_mut());
        Wait {
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            drain,
        }
    }

    fn until(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Reads more into `buf`. Between requests (`buf` empty) the drain ends the wait.
    async fn read(&mut self, tcp: &mut TcpStream, buf: &mut BytesMut, node: &Node) -> Read {
        let idle = buf.is_empty();
        loop {
            tokio::select! {
                biased;
                r = tcp.read_buf(buf) => {
                    return match r {
                        Ok(0) | Err(_) => Read::Closed,
                        Ok(_) => Read::Bytes,
                    };
                }
                () = std::future::poll_fn(|cx| {
                    if idle && node.shutdown.is_triggered() {
                        self.drain.as_mut().poll(cx)
                    } else {
                        Poll::Pending
                    }
                }) => return Read::Closed,
                () = self.timer.as_mut() => {
                    if Instant::now() >= self.deadline {
                        return Read::Timeout;
                    }
                    let deadline = self.deadline;
                    self.timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"Bearer k";

    fn head(buf: &str) -> Head {
        parse_head(buf.as_bytes(), |a| a == Some(KEY))
    }

    fn publish(extra: &str) -> String {
        format!(
            "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n{extra}\r\n{{}}"
        )
    }

    #[test]
    fn a_usual_publish_head_is_read_with_its_length() {
        let req = publish("Content-Length: 2\r\n");
        let Head::Publish(p) = head(&req) else {
            panic!("{:?}", head(&req));
        };
        assert_eq!((p.head, p.body, p.close), (req.len() - 2, 2, false));
        let req = publish("content-length: 2\r\nConnection: keep-alive, Close\r\n");
        assert_eq!(
            head(&req),
            Head::Publish(Publish {
                head: req.len() - 2,
                body: 2,
                close: true
            })
        );
    }

    #[test]
    fn an_unfinished_head_waits_for_more() {
        let req = publish("Content-Length: 2\r\n");
        for cut in [1, 10, 40, req.len() - 3] {
            assert_eq!(head(&req[..cut]), Head::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn every_other_shape_goes_to_hyper() {
        for extra in [
            "",                                           // no Content-Length
            "Content-Length: 2\r\nContent-Length: 2\r\n", // two
            "Content-Length: +2\r\n",                     // not digits
            "Content-Length: 99999999999999999999\r\n",   // overflow
            "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 2\r\nExpect: 100-continue\r\n",
            "Content-Length: 2\r\nUpgrade: websocket\r\n",
            "Content-Length: 2\r\nConnection: Upgrade\r\n",
        ] {
            assert_eq!(head(&publish(extra)), Head::Other, "{extra:?}");
        }
        let others = [
            "GET /api/ws HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /api/events?x=1 HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: Bearer k\r\n\r\n",
            "POST /api/events HTTP/1.0\r\nContent-Length: 2\r\nAuthorization: Bearer k\r\n\r\n",
            "POST /api/events HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: Bearer x\r\n\r\n",
            "POST /api/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST /api/events HTTP/1.1\r\nBad Header: 1\r\n\r\n",
        ];
        for req in others {
            assert_eq!(head(req), Head::Other, "{req:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            head(&publish(&format!("Content-Length: 2\r\n{many}"))),
            Head::Other
        );
    }

    #[test]
    fn the_first_authorization_header_is_the_one_checked() {
        let first_good = publish("Content-Length: 2\r\nAuthorization: Bearer x\r\n");
        assert!(matches!(head(&first_good), Head::Publish(_)));
        let first_bad = "POST /api/events HTTP/1.1\r\nAuthorization: Bearer x\r\n\
                         Authorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(head(first_bad), Head::Other);
    }

    #[test]
    fn only_a_publish_marks_a_publishers_connection() {
        assert!(starts_publishing(b"POST /api/events HTTP/1.1\r\n"));
        assert!(!starts_publishing(b"POST /api/eventsX"));
        assert!(!starts_publishing(b"GET /api/ws HTTP/1.1"));
        assert!(!starts_publishing(b"POST /api/ev"));
    }

    #[test]
    fn answers_carry_hypers_headers() {
        let mut out = Vec::new();
        write_answer(
            &mut out,
            StatusCode::SERVICE_UNAVAILABLE,
            b"{}",
            "Thu, 26 Nov 2026 12:00:00 GMT",
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nretry-after: 1\r\nconnection: close\r\n\
             date: Thu, 26 Nov 2026 12:00:00 GMT\r\n\r\n{}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_head(&bytes, |_| true);
            let _ = parse_length(&bytes);
        }
    }
}
