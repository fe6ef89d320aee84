//! Hostile input (issue 3): bad bytes at every surface — the HTTP handshake, WebSocket frames,
//! JSON commands, channel ids, tokens and the publish API. Every case asserts the exact answer (a
//! status and `error`, an `error` reply or a close code), never a panic and never a hang (every
//! wait is bounded), and then that the server still serves a fresh client
//! ([`assert_still_serving`]). Cases are numbered H01.. in their test names; docs/security.md
//! lists each with its input and expected answer, and the two must stay in step.
//!
//! Handshakes and frames are written by hand on a raw `TcpStream` ([`Raw`]), so the tests can
//! send what no well-behaved client library would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::util::unix_now;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cortex_realtime::Config;
use cortex_realtime::KeySource;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// The one browser origin the hostile server allows.
const ALLOWED_ORIGIN: &str = "https://app.example";
/// The handshake (request head) deadline of the hostile server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// The publish body deadline of the hostile server.
const BODY_TIMEOUT: Duration = Duration::from_millis(500);
/// The RFC 6455 sample key: a valid `Sec-WebSocket-Key`.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The test config with an Origin allowlist and short handshake and body deadlines.
fn hostile_config() -> Config {
    let mut c = config();
    c.allowed_origins = vec![ALLOWED_ORIGIN.into()];
    c.limits.handshake_timeout = HANDSHAKE_TIMEOUT;
    c.limits.body_timeout = BODY_TIMEOUT;
    c
}

async fn server() -> TestServer {
    TestServer::with(hostile_config()).await
}

/// A fresh client connects, subscribes, and receives an event published over HTTP: whatever the
/// case before did, the server still serves others.
async fn assert_still_serving(s: &TestServer) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let channel = format!("task:alive-{n}");
    let check = async {
        let mut c = s.client("u_alive", "o_alive").await;
        let m = c.subscribe(&channel).await;
        assert_eq!(m["type"], "subscribed", "{m}");
        let (status, body) = s.publish(event("o_alive", &[&channel], n)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["recipients"], 1, "{body}");
        let m = c.recv().await;
        assert_eq!(m["channelId"], channel.as_str(), "{m}");
        assert_eq!(m["payload"]["n"], n, "{m}");
    };
    timeout(Duration::from_secs(10), check)
        .await
        .expect("the server still serves a fresh client");
}

// ---- Raw TCP: hand-written HTTP and WebSocket frames ----

/// What a raw socket got back for a request.
#[derive(Debug)]
enum Answer {
    /// An HTTP response.
    Http {
        status: u16,
        head: String,
        body: String,
    },
    /// The connection ended (EOF or reset) before a whole response head.
    Closed,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Closed => None,
        }
    }

    fn body(&self) -> &str {
        match self {
            Answer::Http { body, .. } => body,
            Answer::Closed => "",
        }
    }
}

/// Asserts an HTTP refusal with this status and JSON `error`.
fn assert_refused(a: &Answer, status: u16, error: &str) {
    assert_eq!(a.status(), Some(status), "{a:?}");
    let body: Value =
        serde_json::from_str(a.body()).unwrap_or_else(|e| panic!("JSON body ({e}): {a:?}"));
    assert_eq!(body["error"], error, "{a:?}");
}

/// What a raw WebSocket read next (ping and pong frames skipped).
#[derive(Debug, PartialEq)]
enum Seen {
    Text(Value),
    /// A close frame and its code.
    Close(Option<u16>),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// A raw TCP connection. Writes go through a shared half so a background task can keep writing
/// while the test reads; background writers are stopped when it is dropped.
struct Raw {
    rd: OwnedReadHalf,
    wr: Arc<Mutex<OwnedWriteHalf>>,
    buf: Vec<u8>,
    background: Vec<JoinHandle<()>>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        for t in &self.background {
            t.abort();
        }
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let tcp = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connects in time")
            .expect("tcp connects");
        let (rd, wr) = tcp.into_split();
        Raw {
            rd,
            wr: Arc::new(Mutex::new(wr)),
            buf: Vec::new(),
            background: Vec::new(),
        }
    }

    /// A WebSocket opened by hand with a token in `Authorization`; `connected` is read.
    async fn websocket(s: &TestServer) -> Raw {
        let mut r = Raw::connect(s.addr).await;
        let bearer = format!("Bearer {}", token("u_raw", "o_1"));
        assert!(
            r.send(upgrade("/api/ws", &[("Authorization", &bearer)]).as_bytes())
                .await
        );
        let a = r.answer().await;
        assert_eq!(a.status(), Some(101), "{a:?}");
        match r.next().await {
            Seen::Text(m) => assert_eq!(m["type"], "connected", "{m}"),
            other => panic!("expected connected, got {other:?}"),
        }
        r
    }

    /// Writes `bytes`; false when the write failed or did not finish within 2 s.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        let mut wr = self.wr.lock().await;
        matches!(
            timeout(Duration::from_secs(2), wr.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Writes `bytes` from a background task: a server that answers early and stops reading
    /// cannot block the test.
    fn send_in_background(&mut self, bytes: Vec<u8>) {
        let wr = self.wr.clone();
        self.background.push(tokio::spawn(async move {
            let _ = wr.lock().await.write_all(&bytes).await;
        }));
    }

    /// Writes `bytes` one byte every `gap`, in the background, until done or refused.
    fn drip(&mut self, bytes: Vec<u8>, gap: Duration) {
        let wr = self.wr.clone();
        self.background.push(tokio::spawn(async move {
            for b in bytes {
                if wr.lock().await.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(gap).await;
            }
        }));
    }

    /// Half-closes the connection: the server reads end-of-file.
    async fn shutdown_write(&mut self) {
        let _ = self.wr.lock().await.shutdown().await;
    }

    /// Reads more bytes into the buffer; false on EOF or a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.rd.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn fill_to(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    /// The HTTP answer: head and (unless 101) body; what follows a 101 stays buffered.
    async fn answer(&mut self) -> Answer {
        timeout(WAIT, self.read_answer())
            .await
            .expect("an HTTP answer or a close within the wait")
    }

    async fn read_answer(&mut self) -> Answer {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return Answer::Closed;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let (status, length) = parse_head(&head);
        let body = if status == 101 {
            Vec::new()
        } else if let Some(n) = length {
            self.fill_to(n).await;
            let n = n.min(self.buf.len());
            self.buf.drain(..n).collect()
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        Answer::Http {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Reads until the server ends the connection; `Some(bytes received)` when it did so
    /// within `within`, `None` when it was still open.
    async fn until_closed(&mut self, within: Duration) -> Option<Vec<u8>> {
        timeout(within, async {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        })
        .await
        .ok()
    }

    /// The next server frame: its first byte and payload; `None` when the connection ended.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill_to(2).await {
            return None;
        }
        assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
        let (len, start) = match self.buf[1] & 0x7f {
            126 => {
                if !self.fill_to(4).await {
                    return None;
                }
                (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                )
            }
            127 => {
                if !self.fill_to(10).await {
                    return None;
                }
                let n = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                (usize::try_from(n).unwrap(), 10)
            }
            n => (usize::from(n), 2),
        };
        if !self.fill_to(start + len).await {
            return None;
        }
        let b0 = self.buf[0];
        let payload = self.buf[start..start + len].to_vec();
        self.buf.drain(..start + len);
        Some((b0, payload))
    }

    /// The next text or close frame, or the end of the connection.
    async fn next(&mut self) -> Seen {
        let read = async {
            loop {
                let Some((b0, p)) = self.frame().await else {
                    return Seen::Dropped;
                };
                match b0 & 0x0f {
                    0x1 => {
                        return Seen::Text(serde_json::from_slice(&p).expect("a JSON text frame"));
                    }
                    0x8 => {
                        return Seen::Close(
                            (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])),
                        );
                    }
                    0x9 | 0xa => continue,
                    op => panic!("unexpected opcode {op:#x}"),
                }
            }
        };
        timeout(WAIT, read)
            .await
            .expect("a frame or the end of the connection within the wait")
    }

    /// How the connection ends (text frames before the end are skipped).
    async fn ending(&mut self) -> Seen {
        loop {
            match self.next().await {
                Seen::Text(_) => continue,
                end => return end,
            }
        }
    }

    /// Sends an application ping and waits for its pong: the connection still works.
    async fn assert_alive(&mut self) {
        assert!(self.send(&text(r#"{"type":"ping","ref":"alive"}"#)).await);
        loop {
            match self.next().await {
                Seen::Text(m) if m["type"] == "pong" && m["ref"] == "alive" => return,
                Seen::Text(_) => continue,
                other => panic!("expected a pong, the connection ended: {other:?}"),
            }
        }
    }
}

/// A WebSocket upgrade request for `target` with `extra` headers.
fn upgrade(target: &str, extra: &[(&str, &str)]) -> String {
    let mut r = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// A request made of these head lines, then a blank line.
fn request(lines: &[&str]) -> String {
    let mut r = lines.join("\r\n");
    r.push_str("\r\n\r\n");
    r
}

/// `request` (a whole head) with one more header line, given as raw bytes.
fn with_raw_header(request: String, line: &[u8]) -> Vec<u8> {
    let mut bytes = request.into_bytes();
    bytes.truncate(bytes.len() - 2);
    bytes.extend_from_slice(line);
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes
}

/// Sends `bytes` on a fresh connection (in the background) and reads the answer.
async fn exchange(addr: SocketAddr, bytes: impl Into<Vec<u8>>) -> Answer {
    let mut r = Raw::connect(addr).await;
    r.send_in_background(bytes.into());
    r.answer().await
}

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame: `b0` is FIN, RSV and opcode; the payload is masked when `masked`.
fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend(MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

/// A masked, final text frame.
fn text(s: &str) -> Vec<u8> {
    frame(FIN | TEXT, s.as_bytes(), true)
}

// ---- Tokens ----

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWS with exactly this header and these claims, signed with `key`.
fn jws(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signs");
    format!("{message}.{sig}")
}

/// An HS256 JWS with the test secret and this header: a valid signature over whatever it says.
fn hs256(header: Value, claims: &Value) -> String {
    jws(
        &header,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
}

/// Claims valid for an hour.
fn claims(sub: &str, org: &str) -> Value {
    json!({"sub": sub, "org": org, "exp": unix_now() + 3600})
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../server/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn rsa_private_key() -> EncodingKey {
    let pem = std::fs::read(fixture("rsa-private.pem")).expect("fixture");
    EncodingKey::from_rsa_pem(&pem).expect("an RSA private key")
}

/// `token` is refused at the upgrade (query and header: 401 with `error`, the token not echoed)
/// and in the `auth` frame (close `close`).
async fn assert_token_refused(s: &TestServer, token: &str, error: &str, close: u16) {
    for a in [
        exchange(s.addr, upgrade(&format!("/api/ws?token={token}"), &[])).await,
        exchange(
            s.addr,
            upgrade("/api/ws", &[("Authorization", &format!("Bearer {token}"))]),
        )
        .await,
    ] {
        assert_refused(&a, 401, error);
        assert!(
            token.is_empty() || !a.body().contains(token),
            "the token is echoed: {a:?}"
        );
    }
    let mut c = Client::connect(&s.ws_url()).await;
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.closed().await, Some(close));
}

// ---- Publishing ----

/// POSTs `body` as it is with the publish key; (status, JSON body).
async fn publish_body(s: &TestServer, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let auth = format!("Bearer {PUBLISH_KEY}");
    timeout(WAIT, post_raw(&s.http("/api/events"), Some(&auth), body))
        .await
        .expect("a publish answer within the wait")
}

fn assert_publish_refused(answer: &(u16, Value), status: u16, error: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], error, "{}", answer.1);
}

/// A raw `POST /api/events` head with the publish key (unless `key` is `None`) and `extra`.
fn post_head(key: Option<&str>, extra: &[&str]) -> String {
    let mut lines = vec![
        "POST /api/events HTTP/1.1".to_owned(),
        "Host: 127.0.0.1".to_owned(),
    ];
    lines.push("Content-Type: application/json".to_owned());
    if let Some(k) = key {
        lines.push(format!("Authorization: Bearer {k}"));
    }
    lines.extend(extra.iter().map(|s| s.to_string()));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    request(&lines)
}

// ==== Handshake ====

#[tokio::test]
async fn h01_garbage_bytes_instead_of_http_get_400_and_a_close() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let mut garbage: Vec<u8> = (0..2048u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    garbage[0] = 0xff;
    garbage.extend_from_slice(b"\r\n\r\n");
    r.send_in_background(garbage);
    assert_eq!(r.answer().await.status(), Some(400));
    assert!(r.until_closed(WAIT).await.is_some(), "closed after the 400");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h02_http2_prior_knowledge_preface_is_closed_without_an_answer() {
    let s = server().await;
    let a = exchange(
        s.addr,
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"[..],
    )
    .await;
    assert!(matches!(a, Answer::Closed), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h03_http_1_0_upgrade_gets_400() {
    let s = server().await;
    let req = upgrade("/api/ws", &[]).replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_refused(&exchange(s.addr, req).await, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h04_missing_or_empty_sec_websocket_key_gets_400() {
    let s = server().await;
    let base = [
        "GET /api/ws HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ];
    assert_refused(&exchange(s.addr, request(&base)).await, 400, "bad_request");
    let mut empty = base.to_vec();
    empty.push("Sec-WebSocket-Key: ");
    assert_refused(&exchange(s.addr, request(&empty)).await, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h05_invalid_sec_websocket_key_gets_400() {
    let s = server().await;
    for key in [
        "x",
        "not base64!!",
        "dGhlIHNhbXBsZQ==",
        "dGhlIHNhbXBsZSBub25jZSBub25jZQ==",
    ] {
        let req = upgrade("/api/ws", &[]).replace(WS_KEY, key);
        assert_refused(&exchange(s.addr, req).await, 400, "bad_request");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h06_sec_websocket_version_8_gets_400() {
    let s = server().await;
    for version in ["8", "", "13, 8", "14"] {
        let req = upgrade("/api/ws", &[]).replace(
            "Sec-WebSocket-Version: 13",
            &format!("Sec-WebSocket-Version: {version}"),
        );
        assert_refused(&exchange(s.addr, req).await, 400, "bad_request");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h06b_unsupported_version_refusal_names_version_13() {
    let s = server().await;
    let req =
        upgrade("/api/ws", &[]).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let a = exchange(s.addr, req).await;
    let Answer::Http { head, .. } = &a else {
        panic!("expected an HTTP answer, got {a:?}")
    };
    let named = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("sec-websocket-version") && v.trim() == "13"
        })
    });
    assert!(named, "{head}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h07_post_to_the_websocket_endpoint_gets_405() {
    let s = server().await;
    let req = upgrade("/api/ws", &[]).replacen("GET", "POST", 1);
    assert_eq!(exchange(s.addr, req).await.status(), Some(405));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h08_plain_get_without_upgrade_headers_gets_426() {
    let s = server().await;
    let req = request(&["GET /api/ws HTTP/1.1", "Host: 127.0.0.1"]);
    assert_refused(&exchange(s.addr, req).await, 426, "upgrade_required");
    let req = upgrade("/api/ws", &[]).replace("Upgrade: websocket", "Upgrade: h2c");
    assert_refused(&exchange(s.addr, req).await, 426, "upgrade_required");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h09_request_head_over_16_kib_gets_431_before_any_token_work() {
    let s = server().await;
    // A valid token in the query: were it looked at, the answer would be 101.
    let target = format!("/api/ws?token={}", token("u_1", "o_1"));
    let pad = "a".repeat(20 * 1024);
    let a = exchange(s.addr, upgrade(&target, &[("X-Pad", &pad)])).await;
    assert_eq!(a.status(), Some(431), "{a:?}");
    assert_eq!(s.node.open_connections(), 0);
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h10_url_over_10_kib_gets_414_before_any_token_work() {
    let s = server().await;
    let target = format!(
        "/api/ws?token={}&pad={}",
        token("u_1", "o_1"),
        "a".repeat(11 * 1024)
    );
    assert_refused(
        &exchange(s.addr, upgrade(&target, &[])).await,
        414,
        "url_too_long",
    );
    assert_eq!(s.node.open_connections(), 0);
    assert_still_serving(&s).await;
}

/// `r`, opened at `start`, is dropped without an answer within 2 s, once the handshake timeout
/// has passed.
async fn assert_dropped_at_handshake_timeout(r: &mut Raw, start: Instant, what: &str) {
    let got = r
        .until_closed(Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("{what} is dropped within 2 s"));
    let waited = start.elapsed();
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        waited >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
}

#[tokio::test]
async fn h11_slowloris_head_is_dropped_after_the_handshake_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    r.drip(
        upgrade("/api/ws", &[]).into_bytes(),
        Duration::from_millis(50),
    );
    assert_dropped_at_handshake_timeout(&mut r, start, "the slowloris").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h12_connection_that_sends_nothing_is_dropped_after_the_handshake_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    assert_dropped_at_handshake_timeout(&mut r, start, "a silent connection").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h13_origin_not_on_the_allowlist_gets_403() {
    let s = server().await;
    let target = format!("/api/ws?token={}", token("u_1", "o_1"));
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
        "https://APP.example",
        "http://app.example",
        "https://app.example/",
    ] {
        let a = exchange(s.addr, upgrade(&target, &[("Origin", origin)])).await;
        assert_refused(&a, 403, "forbidden_origin");
    }
    // An Origin that is not visible ASCII is not on the list either.
    let a = exchange(
        s.addr,
        with_raw_header(upgrade(&target, &[]), b"Origin: https://app.example\xff"),
    )
    .await;
    assert_refused(&a, 403, "forbidden_origin");
    let a = exchange(s.addr, upgrade(&target, &[("Origin", ALLOWED_ORIGIN)])).await;
    assert_eq!(a.status(), Some(101), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h14_100_kb_query_token_gets_431() {
    let s = server().await;
    let target = format!("/api/ws?token={}", "A".repeat(100 * 1024));
    let a = exchange(s.addr, upgrade(&target, &[])).await;
    assert_eq!(a.status(), Some(431), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h15_query_token_with_invalid_percent_encoding_gets_401() {
    let s = server().await;
    let good = token("u_1", "o_1");
    for t in [
        "%zz".to_owned(),
        "%".to_owned(),
        "%4".to_owned(),
        "%ff%fe%00".to_owned(),
        "%e2%82".to_owned(),
        String::new(),
        format!("{}%{}", &good[..10], &good[10..]),
        format!("%00{good}"),
    ] {
        let a = exchange(s.addr, upgrade(&format!("/api/ws?token={t}"), &[])).await;
        assert_refused(&a, 401, "unauthorized");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h16_connections_abandoned_mid_handshake_do_not_hurt_others() {
    let s = server().await;
    // 100 heads cut in the middle and left open, 50 full upgrades (with a valid token) whose
    // socket is dropped before the 101 is read, and 50 that hang up after a few bytes.
    let mut open = Vec::new();
    for _ in 0..100 {
        let mut r = Raw::connect(s.addr).await;
        assert!(
            r.send(b"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
                .await
        );
        open.push(r);
    }
    let bearer = format!("Bearer {}", token("u_abandon", "o_1"));
    for _ in 0..50 {
        let mut r = Raw::connect(s.addr).await;
        assert!(
            r.send(upgrade("/api/ws", &[("Authorization", &bearer)]).as_bytes())
                .await
        );
    }
    for _ in 0..50 {
        let mut r = Raw::connect(s.addr).await;
        assert!(r.send(b"GET /api/ws HT").await);
    }
    assert_still_serving(&s).await;
    drop(open);
    // Every slot the abandoned upgrades took is freed.
    let deadline = Instant::now() + WAIT;
    while s.node.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections still held",
            s.node.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_still_serving(&s).await;
}

// ==== Frames ====

#[tokio::test]
async fn h17_binary_frame_after_auth_gets_bad_request_and_the_connection_stays() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    assert!(
        r.send(&frame(FIN | BINARY, br#"{"type":"ping"}"#, true))
            .await
    );
    match r.next().await {
        Seen::Text(m) => {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["code"], "bad_request", "{m}");
            assert!(m.get("ref").is_none(), "{m}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    r.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h18_frame_over_64_kib_is_closed_with_1009() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    let big = format!(r#"{{"type":"ping","ref":"{}"}}"#, "a".repeat(70_000));
    r.send_in_background(text(&big));
    assert_eq!(r.ending().await, Seen::Close(Some(1009)));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h19_fragmented_message_over_64_kib_is_closed_with_1009() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    let part = vec![b'a'; 16 * 1024];
    let mut bytes = frame(TEXT, &part, true);
    for i in 0..4 {
        let fin = if i == 3 { FIN } else { 0 };
        bytes.extend(frame(fin | CONT, &part, true));
    }
    r.send_in_background(bytes);
    assert_eq!(r.ending().await, Seen::Close(Some(1009)));
    assert_still_serving(&s).await;
}

/// Opens a raw WebSocket, writes `bytes` and asserts that the connection ends with `want`.
async fn assert_ends(s: &TestServer, bytes: &[u8], want: Seen, what: &str) {
    let mut r = Raw::websocket(s).await;
    assert!(r.send(bytes).await, "{what}");
    assert_eq!(r.ending().await, want, "{what}");
}

#[tokio::test]
async fn h20_frame_header_claiming_2_pow_63_bytes_is_closed_with_1009_at_once() {
    let s = server().await;
    let mut bytes = vec![FIN | TEXT, 0x80 | 127];
    bytes.extend(0x7fff_ffff_ffff_ffffu64.to_be_bytes());
    bytes.extend(MASK);
    bytes.extend(b"{\"type\":");
    assert_ends(&s, &bytes, Seen::Close(Some(1009)), "2^63").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h21_invalid_utf8_in_a_text_frame_drops_the_connection() {
    let s = server().await;
    let bad = b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\xc3\"}";
    assert_ends(&s, &frame(FIN | TEXT, bad, true), Seen::Dropped, "utf-8").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h22_unmasked_client_frame_drops_the_connection() {
    let s = server().await;
    let unmasked = frame(FIN | TEXT, br#"{"type":"ping"}"#, false);
    assert_ends(&s, &unmasked, Seen::Dropped, "unmasked").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h23_reserved_opcodes_drop_the_connection() {
    let s = server().await;
    for opcode in [0x3, 0x7, 0xb, 0xf] {
        let bytes = frame(FIN | opcode, b"x", true);
        assert_ends(&s, &bytes, Seen::Dropped, &format!("opcode {opcode:#x}")).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h24_rsv_bits_without_an_extension_drop_the_connection() {
    let s = server().await;
    for rsv in [RSV1, 0x20, 0x10] {
        let bytes = frame(FIN | rsv | TEXT, br#"{"type":"ping"}"#, true);
        assert_ends(&s, &bytes, Seen::Dropped, &format!("rsv {rsv:#x}")).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h25_control_frame_over_125_bytes_drops_the_connection() {
    let s = server().await;
    let big_ping = frame(FIN | PING, &[b'p'; 126], true);
    assert_ends(&s, &big_ping, Seen::Dropped, "126-byte ping").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h26_continuation_without_a_start_or_a_fragmented_ping_drops_the_connection() {
    let s = server().await;
    let lone_continuation = frame(FIN | CONT, br#"{"type":"ping"}"#, true);
    assert_ends(&s, &lone_continuation, Seen::Dropped, "continuation").await;
    assert_ends(
        &s,
        &frame(PING, b"half", true),
        Seen::Dropped,
        "fragmented ping",
    )
    .await;
    // A new text message while a fragmented one is unfinished.
    let mut bytes = frame(TEXT, b"{\"type\":", true);
    bytes.extend(text(r#"{"type":"ping"}"#));
    assert_ends(&s, &bytes, Seen::Dropped, "text inside a fragment").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h27_ping_flood_is_answered_and_the_connection_stays() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    let mut bytes = Vec::new();
    for i in 0..500u32 {
        bytes.extend(frame(FIN | PING, &i.to_be_bytes(), true));
    }
    assert!(r.send(&bytes).await);
    // Pings are not commands: no rate_limited, no close; the connection still works.
    r.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h28_close_frame_with_an_invalid_code_is_answered_with_1002() {
    let s = server().await;
    for code in [0u16, 999, 1005, 1006, 1015, 2999, 5000] {
        let close = frame(FIN | CLOSE, &code.to_be_bytes(), true);
        assert_ends(&s, &close, Seen::Close(Some(1002)), &format!("code {code}")).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h29_client_close_1000_is_answered_with_a_close() {
    let s = server().await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(b"bye");
    let close = frame(FIN | CLOSE, &payload, true);
    assert_ends(&s, &close, Seen::Close(Some(1000)), "close 1000").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h30_malformed_close_frames_drop_the_connection() {
    let s = server().await;
    // A one-byte close payload, and a close reason that is not UTF-8.
    for payload in [vec![0x03], vec![0x03, 0xe8, 0xff, 0xfe]] {
        let close = frame(FIN | CLOSE, &payload, true);
        assert_ends(&s, &close, Seen::Dropped, &format!("{payload:?}")).await;
    }
    assert_still_serving(&s).await;
}

// ==== JSON commands ====

/// Sends `frame` and expects an `error` reply with `code`; returns it.
async fn expect_error(c: &mut Client, frame: &str, code: &str) -> Value {
    c.send_text(frame).await;
    let m = c.recv().await;
    assert_eq!(m["type"], "error", "{frame:.80}: {m:.300}");
    assert_eq!(m["code"], code, "{frame:.80}: {m:.300}");
    m
}

#[tokio::test]
async fn h31_json_nested_10000_levels_gets_bad_request_without_overflowing_the_stack() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    expect_error(&mut c, &"[".repeat(10_000), "bad_request").await;
    expect_error(
        &mut c,
        &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        "bad_request",
    )
    .await;
    expect_error(&mut c, &"{\"a\":".repeat(10_000), "bad_request").await;
    let deep_ref = format!(
        r#"{{"type":"ping","ref":{}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let m = expect_error(&mut c, &deep_ref, "bad_request").await;
    assert!(m.get("ref").is_none(), "{m}");
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h32_huge_numbers_get_bad_request_or_a_rounded_ref() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = expect_error(&mut c, r#"{"type":"ping","ref":1e400}"#, "bad_request").await;
    assert!(m.get("ref").is_none(), "{m}");
    let huge = format!(r#"{{"type":"ping","ref":{}}}"#, "9".repeat(400));
    expect_error(&mut c, &huge, "bad_request").await;
    // An integer past u64 is read as the nearest double and echoed as such.
    c.send_text(r#"{"type":"ping","ref":123456789012345678901234567890}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(m["type"], "pong", "{m}");
    assert_eq!(m["ref"].as_f64(), Some(1.234_567_890_123_456_8e29), "{m}");
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h33_duplicate_keys_the_last_one_wins_and_is_the_one_authorized() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    c.send_text(r#"{"type":"ping","type":"subscribe","channelId":"task:t_dup"}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["channelId"].as_str()),
        (Some("subscribed"), Some("task:t_dup")),
        "{m}"
    );
    c.send_text(r#"{"type":"subscribe","channelId":"org:o_2","channelId":"task:t_1"}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["channelId"].as_str()),
        (Some("subscribed"), Some("task:t_1")),
        "{m}"
    );
    let m = expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"task:t_1","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(m["channelId"], "org:o_2", "{m}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h34_type_that_is_not_a_string_gets_bad_request_with_the_ref() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for ty in [r#"{"$ne":null}"#, r#"["ping"]"#, "1", "null", "true"] {
        let m = expect_error(
            &mut c,
            &format!(r#"{{"type":{ty},"ref":7}}"#),
            "bad_request",
        )
        .await;
        assert_eq!(m["ref"], 7, "{m}");
    }
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h35_ref_that_is_not_a_string_or_number_gets_bad_request_without_a_ref() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for r in [r#"{"a":1}"#, "[1]", "true"] {
        let m = expect_error(
            &mut c,
            &format!(r#"{{"type":"ping","ref":{r}}}"#),
            "bad_request",
        )
        .await;
        assert!(m.get("ref").is_none(), "{m}");
    }
    // `null` is an absent ref.
    c.send_text(r#"{"type":"ping","ref":null}"#).await;
    let m = c.recv().await;
    assert_eq!(m, json!({"type": "pong"}));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h36_60_kb_channel_id_gets_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let channel = format!("task:{}", "a".repeat(60_000));
    for ty in ["subscribe", "unsubscribe"] {
        let m = expect_error(
            &mut c,
            &json!({"type": ty, "channelId": channel}).to_string(),
            "invalid_channel",
        )
        .await;
        assert_eq!(m["channelId"], channel.as_str());
    }
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

/// Every channel id in `ids` gets `invalid_channel`, echoing the id, on subscribe.
async fn assert_invalid_channels(c: &mut Client, ids: &[String]) {
    for id in ids {
        let m = expect_error(
            c,
            &json!({"type": "subscribe", "channelId": id}).to_string(),
            "invalid_channel",
        )
        .await;
        assert_eq!(m["channelId"], id.as_str(), "{m}");
    }
}

#[tokio::test]
async fn h37_channel_ids_with_unicode_nul_control_or_space_get_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let ids = [
        "task:t_ü",
        "task:t\u{0}",
        "task:t_1\u{0}",
        "task:t_1\n",
        "task:\u{202e}1t",
        "task: t_1",
        " task:t_1",
        "task:t_1 ",
        "TASK:t_1",
        "tásk:t_1",
        "task:t\u{ff0e}1",
    ];
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.push(format!("task:{}", "a".repeat(129)));
    assert_invalid_channels(&mut c, &ids).await;
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h38_path_like_channel_ids_get_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let ids = [
        "task:..",
        "task:.",
        "task:../org:o_2",
        "task:a/../b",
        "org:o_1/..",
        "task:.hidden",
        "task:%2e%2e",
        "task:a\\b",
        "task:t_1:org:o_2",
        "org:o_1:x",
    ];
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_invalid_channels(&mut c, &ids).await;
    // Dots inside an id are just characters: a channel of this org like any other.
    assert_eq!(c.subscribe("task:a..b").await["type"], "subscribed");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h39_wildcard_and_empty_channel_ids_get_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let ids = [
        "org:*", "*", "agent:*", "task:t_*", "*:*", ":", "", "task:", ":t_1", "task",
    ];
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_invalid_channels(&mut c, &ids).await;
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h40_since_with_negative_huge_or_mistyped_offsets() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for since in [
        r#"{"offset":-1,"epoch":"e_1"}"#,
        r#"{"offset":"1","epoch":"e_1"}"#,
        r#"{"offset":1e300,"epoch":"e_1"}"#,
        r#"{"offset":18446744073709551616,"epoch":"e_1"}"#,
        r#"{"offset":1}"#,
        r#"{"offset":1,"epoch":7}"#,
        r#""abc""#,
        "[1,2]",
    ] {
        let frame = format!(r#"{{"type":"subscribe","channelId":"task:t_1","since":{since}}}"#);
        expect_error(&mut c, &frame, "bad_request").await;
    }
    let m = c
        .request(json!({"type": "subscribe", "channelId": "task:t_1", "since": {"offset": u64::MAX, "epoch": "e_nope"}}))
        .await;
    assert_eq!(
        (m["type"].as_str(), m["recovered"].as_bool()),
        (Some("subscribed"), Some(false)),
        "{m}"
    );
    let m = c
        .request(json!({"type": "subscribe", "channelId": "task:t_2", "since": null}))
        .await;
    assert_eq!(m["type"], "subscribed", "{m}");
    assert!(m.get("recovered").is_none(), "{m}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h41_subscribe_flood_over_128_gets_too_many_subscriptions() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    // Paced under the command rate (100 a second): 90, a pause, then 40.
    let mut subscribed = 0;
    let mut refused = Vec::new();
    for batch in [0..90, 90..130] {
        if batch.start > 0 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        for i in batch.clone() {
            c.send(json!({"type": "subscribe", "channelId": format!("task:t_{i}"), "ref": i}))
                .await;
        }
        for _ in batch {
            let m = c.recv().await;
            match m["type"].as_str() {
                Some("subscribed") => subscribed += 1,
                _ => {
                    assert_eq!(m["code"], "too_many_subscriptions", "{m}");
                    refused.push(m["ref"].as_u64().unwrap());
                }
            }
        }
    }
    assert_eq!(subscribed, 128);
    assert_eq!(refused, [128, 129]);
    // A held channel can still be re-subscribed; a freed slot can be taken.
    assert_eq!(c.subscribe("task:t_0").await["type"], "subscribed");
    assert_eq!(
        c.request(json!({"type": "unsubscribe", "channelId": "task:t_1"}))
            .await["type"],
        "unsubscribed"
    );
    assert_eq!(c.subscribe("task:t_new").await["type"], "subscribed");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h42_ten_thousand_commands_as_fast_as_possible_close_with_4008() {
    let s = server().await;
    let c = s.client("u_1", "o_1").await;
    let (mut tx, mut rx) = c.ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..10_000 {
            let ping = json!({"type": "ping", "ref": i}).to_string();
            if tx.feed(Message::Text(ping.into())).await.is_err() {
                return;
            }
        }
        let _ = tx.flush().await;
    });
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        let m = timeout(WAIT, rx.next())
            .await
            .expect("a frame within the wait");
        match m {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                match (m["type"].as_str(), m["code"].as_str()) {
                    (Some("pong"), _) => pongs += 1,
                    (Some("error"), Some("rate_limited")) => limited += 1,
                    _ => panic!("unexpected {m}"),
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before its close frame: {e}"),
            None => panic!("connection ended before its close frame"),
        }
    };
    assert_eq!(close, Some(4008));
    assert!(pongs >= 100, "the burst of 100 is served: {pongs}");
    assert!(
        (10..20).contains(&limited),
        "ten rate_limited answers, then 4008: {limited}"
    );
    assert!(pongs + limited < 10_000);
    let _ = timeout(WAIT, writer).await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h43_eleven_bad_commands_in_a_burst_close_with_1008() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for _ in 0..10 {
        expect_error(&mut c, "nonsense", "bad_request").await;
    }
    c.send_text("nonsense").await;
    assert_eq!(c.closed().await, Some(1008));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h44_non_objects_empty_frames_bom_unknown_fields_and_auth_again_get_bad_request() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for frame in [
        "",
        "null",
        r#""ping""#,
        "[]",
        "\u{feff}{\"type\":\"ping\"}",
        r#"{"type":"ping","extra":1}"#,
        r#"{"type":"PING"}"#,
        r#"{"type":"subscribe"}"#,
        &json!({"type": "auth", "token": token("u_1", "o_1")}).to_string(),
    ] {
        let m = expect_error(&mut c, frame, "bad_request").await;
        assert!(
            !m["message"].as_str().unwrap().contains("eyJ"),
            "no token echoed: {m}"
        );
    }
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

// ==== Tokens ====

#[tokio::test]
async fn h45_alg_none_in_any_spelling_is_refused() {
    let s = server().await;
    let body = b64(claims("u_1", "o_1").to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let head = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
        for sig in ["", "AAAA"] {
            assert_token_refused(&s, &format!("{head}.{body}.{sig}"), "unauthorized", 4001).await;
        }
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h46_crit_header_is_refused_even_with_a_valid_signature() {
    let s = server().await;
    let t = hs256(
        json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
        &claims("u_1", "o_1"),
    );
    assert_token_refused(&s, &t, "unauthorized", 4001).await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h47_jku_and_x5u_headers_are_refused_and_never_fetched() {
    let s = server().await;
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    let c = claims("u_1", "o_1");
    for member in ["jku", "x5u"] {
        let mut header = json!({"alg": "HS256"});
        header[member] = json!(url);
        let t = hs256(header.clone(), &c);
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
        header["alg"] = json!("RS256");
        let t = jws(&header, &c, &rsa_private_key(), Algorithm::RS256);
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    assert!(
        timeout(Duration::from_millis(300), trap.accept())
            .await
            .is_err(),
        "the server fetched a key URL named in a token"
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h48_embedded_jwk_or_x5c_or_a_foreign_secret_is_refused() {
    let s = server().await;
    let c = claims("u_1", "o_1");
    let attacker = EncodingKey::from_secret(b"attacker");
    let jwk = json!({"kty": "oct", "k": b64("attacker")});
    for header in [
        json!({"alg": "HS256", "jwk": jwk}),
        json!({"alg": "HS256", "x5c": ["MIIB"]}),
        json!({"alg": "HS256", "typ": "JWT"}),
    ] {
        let t = jws(&header, &c, &attacker, Algorithm::HS256);
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h49_algorithm_confusion_hs256_signed_with_the_public_key_is_refused() {
    let mut cfg = hostile_config();
    cfg.auth.keys = vec![KeySource::PublicKeyPem(fixture("rsa-public.pem").into())];
    let s = TestServer::with(cfg).await;
    let c = claims("u_1", "o_1");
    let pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let t = jws(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &c,
        &EncodingKey::from_secret(&pem),
        Algorithm::HS256,
    );
    assert_token_refused(&s, &t, "unauthorized", 4001).await;
    for alg in [
        "HS384", "HS512", "RS512", "PS256", "ES256", "EdDSA", "RSA-OAEP",
    ] {
        let t = jws(
            &json!({"alg": alg}),
            &c,
            &rsa_private_key(),
            Algorithm::RS256,
        );
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    // The same claims, properly signed RS256, connect.
    let good = jws(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &c,
        &rsa_private_key(),
        Algorithm::RS256,
    );
    let mut client = s.client_with_token(&good).await;
    client.assert_alive().await;
}

#[tokio::test]
async fn h50_tampered_truncated_or_non_canonical_tokens_are_refused() {
    let s = server().await;
    let good = token("u_1", "o_1");
    let parts: Vec<&str> = good.split('.').collect();
    let other_org = b64(claims("u_1", "o_2").to_string());
    for t in [
        format!("{}.{other_org}.{}", parts[0], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        good[..good.len() - 1].to_owned(),
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            token("u_2", "o_1").split('.').nth(2).unwrap()
        ),
        "..".to_owned(),
    ] {
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h51_expired_token_gets_token_expired_4002_and_invalid_token_on_refresh() {
    let s = server().await;
    assert_token_refused(&s, &expired_token("u_1", "o_1"), "token_expired", 4002).await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c
        .request(json!({"type": "refresh", "token": expired_token("u_1", "o_1"), "ref": 1}))
        .await;
    assert_eq!(
        (m["code"].as_str(), m["ref"].as_u64()),
        (Some("invalid_token"), Some(1)),
        "{m}"
    );
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h52_another_orgs_channel_is_forbidden_and_a_channels_claim_never_widens_it() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(m["channelId"], "org:o_2");
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["org:*", "task:*"]))
        .await;
    expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    // The same channel name in another org is another channel: o_2's events never arrive.
    assert_eq!(c.subscribe("task:t_9").await["type"], "subscribed");
    let (status, _) = s.publish(event("o_2", &["task:t_9", "org:o_2"], 1)).await;
    assert_eq!(status, 202);
    c.silent_for(Duration::from_millis(200)).await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h53_one_megabyte_authorization_header_gets_431_or_a_close() {
    let s = server().await;
    let huge = format!("Bearer {}", "A".repeat(1024 * 1024));
    let a = exchange(s.addr, upgrade("/api/ws", &[("Authorization", &huge)])).await;
    assert!(matches!(a.status(), Some(431) | None), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h54_token_in_header_and_query_the_header_wins() {
    let s = server().await;
    let header = format!("Bearer {}", token("u_header", "o_1"));
    let target = format!("/api/ws?token={}", token("u_query", "o_1"));
    let mut r = Raw::connect(s.addr).await;
    assert!(
        r.send(upgrade(&target, &[("Authorization", &header)]).as_bytes())
            .await
    );
    assert_eq!(r.answer().await.status(), Some(101));
    match r.next().await {
        Seen::Text(m) => assert_eq!(m["userId"], "u_header", "{m}"),
        other => panic!("expected connected, got {other:?}"),
    }
    // A bad header is not rescued by a good query token.
    let a = exchange(
        s.addr,
        upgrade(&target, &[("Authorization", "Bearer nonsense")]),
    )
    .await;
    assert_refused(&a, 401, "unauthorized");
    // Two `token` parameters: the first is the one verified.
    let target = format!("/api/ws?token=nonsense&token={}", token("u_query", "o_1"));
    assert_refused(
        &exchange(s.addr, upgrade(&target, &[])).await,
        401,
        "unauthorized",
    );
    let target = format!("/api/ws?token={}&token=nonsense", token("u_query", "o_1"));
    assert_eq!(
        exchange(s.addr, upgrade(&target, &[])).await.status(),
        Some(101)
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h55_refresh_with_another_users_or_orgs_token_gets_token_mismatch() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for t in [
        token("u_2", "o_1"),
        token("u_1", "o_2"),
        token("u_2", "o_2"),
    ] {
        let m = c.request(json!({"type": "refresh", "token": t})).await;
        assert_eq!(m["code"], "token_mismatch", "{m}");
    }
    let m = c
        .request(json!({"type": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(m["code"], "invalid_token", "{m}");
    // The connection keeps its own identity: org o_2's channel is still forbidden.
    expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h56_validly_signed_token_over_8_kib_is_refused() {
    let s = server().await;
    let mut c = claims("u_1", "o_1");
    c["pad"] = json!("x".repeat(9 * 1024));
    let t = hs256(json!({"alg": "HS256", "typ": "JWT"}), &c);
    let a = exchange(
        s.addr,
        upgrade("/api/ws", &[("Authorization", &format!("Bearer {t}"))]),
    )
    .await;
    assert_refused(&a, 401, "unauthorized");
    let mut client = Client::connect(&s.ws_url()).await;
    client.send(json!({"type": "auth", "token": t})).await;
    assert_eq!(client.closed().await, Some(4001));
    assert_still_serving(&s).await;
}

// ==== The publish API ====

#[tokio::test]
async fn h57_publish_without_a_key_gets_401() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let answer = timeout(WAIT, post_raw(&s.http("/api/events"), None, body))
        .await
        .unwrap();
    assert_publish_refused(&answer, 401, "unauthorized");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h58_publish_with_a_wrong_key_gets_401() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let near = &PUBLISH_KEY[..PUBLISH_KEY.len() - 1];
    for auth in [
        "Bearer wrong".to_owned(),
        format!("Bearer {near}"),
        format!("Bearer {PUBLISH_KEY}x"),
        format!("Basic {PUBLISH_KEY}"),
        PUBLISH_KEY.to_owned(),
        format!("Bearer {}", token("u_1", "o_1")),
    ] {
        let answer = timeout(
            WAIT,
            post_raw(&s.http("/api/events"), Some(&auth), body.clone()),
        )
        .await
        .unwrap();
        assert_publish_refused(&answer, 401, "unauthorized");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h59_publish_key_with_bearer_in_another_case_is_accepted() {
    let s = server().await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {PUBLISH_KEY}");
        let body = event("o_1", &["task:t_1"], 1).to_string();
        let (status, body) = timeout(WAIT, post_raw(&s.http("/api/events"), Some(&auth), body))
            .await
            .unwrap();
        assert_eq!(status, 202, "{scheme}: {body}");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h60_publish_body_that_is_not_json_gets_400_bad_json() {
    let s = server().await;
    for body in [
        "",
        "{",
        "not json",
        "{\"orgId\":\"o_1\",}",
        "\u{feff}{}",
        "{} {}",
    ] {
        assert_publish_refused(&publish_body(&s, body).await, 400, "bad_json");
    }
    assert_publish_refused(
        &publish_body(&s, vec![0xff, 0xfe, b'{', b'}']).await,
        400,
        "bad_json",
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h61_publish_body_null_gets_400_bad_request() {
    let s = server().await;
    for body in ["null", "true", "42", "\"event\""] {
        assert_publish_refused(&publish_body(&s, body).await, 400, "bad_request");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h62_publish_body_that_is_an_array_gets_400_bad_request() {
    let s = server().await;
    let body = json!([event("o_1", &["task:t_1"], 1)]).to_string();
    assert_publish_refused(&publish_body(&s, body).await, 400, "bad_request");
    assert_publish_refused(&publish_body(&s, "[]").await, 400, "bad_request");
    assert_still_serving(&s).await;
}

/// `depth` nested arrays around `0`.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn h63_payload_nested_100_levels_passes_through_and_200_levels_get_bad_json() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_deep").await;
    let body = format!(
        r#"{{"orgId":"o_1","type":"task.updated","channels":["task:t_deep"],"payload":{{"taskId":"t_deep","changes":{{}},"deep":{}}}}}"#,
        nested(100)
    );
    let (status, answer) = publish_body(&s, body).await;
    assert_eq!(status, 202, "{answer}");
    let m = c.recv().await;
    let expected: Value = serde_json::from_str(&nested(100)).unwrap();
    assert_eq!(m["payload"]["deep"], expected);
    let body = format!(
        r#"{{"orgId":"o_1","type":"task.updated","payload":{{"taskId":"t_deep","changes":{{}},"deep":{}}}}}"#,
        nested(200)
    );
    assert_publish_refused(&publish_body(&s, body).await, 400, "bad_json");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h64_payload_with_9000_fields_under_64_kib_is_accepted() {
    // 10,000 members cannot fit in 64 KiB (each needs at least `"k":0,`, 6 bytes, and only 93
    // one-character keys exist); 9,000 do.
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_wide").await;
    let alphabet: Vec<char> = (' '..='~').filter(|c| !matches!(c, '"' | '\\')).collect();
    let abc = &alphabet;
    // Every key of one, then two, then three characters.
    let one = abc.iter().map(|a| a.to_string());
    let two = abc
        .iter()
        .flat_map(|a| abc.iter().map(move |b| format!("{a}{b}")));
    let three = abc.iter().flat_map(|a| {
        abc.iter()
            .flat_map(move |b| abc.iter().map(move |c| format!("{a}{b}{c}")))
    });
    let keys: Vec<String> = one.chain(two).chain(three).take(9_000).collect();
    let fields: Vec<String> = keys.iter().map(|k| format!("\"{k}\":0")).collect();
    let body = format!(
        r#"{{"orgId":"o_1","type":"task.status_changed","channels":["task:t_wide"],"payload":{{"taskId":"t_1","oldStatus":"a","newStatus":"b",{}}}}}"#,
        fields.join(",")
    );
    assert!(body.len() < 64 * 1024, "{}", body.len());
    let (status, answer) = publish_body(&s, body).await;
    assert_eq!(status, 202, "{answer}");
    let m = c.recv().await;
    // 9,000 fields, the three required ones and the filled-in timestamp.
    assert_eq!(m["payload"].as_object().unwrap().len(), 9_004);
    assert_still_serving(&s).await;
}

/// A single-event body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let with = |pad: &str| {
        json!({
            "orgId": "o_1", "type": "task.status_changed", "channels": ["task:t_1"],
            "payload": {"taskId": "t_1", "oldStatus": "a", "newStatus": "b", "pad": pad},
        })
        .to_string()
    };
    let base = with("").len();
    let body = with(&"p".repeat(len - base));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn h65_publish_body_of_exactly_the_limit_is_accepted_and_one_byte_more_gets_413() {
    let s = server().await;
    let (status, answer) = publish_body(&s, body_of_len(64 * 1024)).await;
    assert_eq!(status, 202, "{answer}");
    assert_publish_refused(
        &publish_body(&s, body_of_len(64 * 1024 + 1)).await,
        413,
        "too_large",
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h66_batch_of_101_gets_400_batch_too_large() {
    let s = server().await;
    let events: Vec<Value> = (0..101).map(|i| event("o_1", &["task:t_1"], i)).collect();
    let body = json!({"events": events}).to_string();
    assert_publish_refused(&publish_body(&s, body).await, 400, "batch_too_large");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h67_batch_with_events_not_a_non_empty_array_gets_400_bad_request() {
    let s = server().await;
    let one = event("o_1", &["task:t_1"], 1);
    for body in [
        json!({"events": {}}),
        json!({"events": []}),
        json!({"events": null}),
        json!({"events": "x"}),
        json!({"events": [one], "orgId": "o_1"}),
        json!({"events": [null]}),
        json!({"events": [[one]]}),
    ] {
        assert_publish_refused(
            &publish_body(&s, body.to_string()).await,
            400,
            "bad_request",
        );
    }
    assert_still_serving(&s).await;
}

fn progress_event(progress: &str) -> String {
    format!(
        r#"{{"orgId":"o_1","type":"chief.task.progress","channels":["task:t_1"],"payload":{{"taskId":"t_1","progress":{progress},"message":"m"}}}}"#
    )
}

#[tokio::test]
async fn h68_progress_1e400_gets_bad_json_and_out_of_range_numbers_invalid_payload() {
    let s = server().await;
    assert_publish_refused(
        &publish_body(&s, progress_event("1e400")).await,
        400,
        "bad_json",
    );
    assert_publish_refused(
        &publish_body(&s, progress_event("-1e400")).await,
        400,
        "bad_json",
    );
    for p in [
        "1e308",
        "-1e-9",
        "100.0000001",
        "\"50\"",
        "true",
        "null",
        "[50]",
    ] {
        assert_publish_refused(
            &publish_body(&s, progress_event(p)).await,
            400,
            "invalid_payload",
        );
    }
    for p in ["0", "100", "1e2", "-0.0", "99.99999999999999999999"] {
        let (status, answer) = publish_body(&s, progress_event(p)).await;
        assert_eq!(status, 202, "{p}: {answer}");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h69_org_id_with_a_path_or_odd_characters_gets_400_invalid_org() {
    let s = server().await;
    let long = "o".repeat(129);
    for org in [
        "../",
        "o_1/../o_2",
        "..",
        "",
        "o 1",
        "ö",
        "o_1\u{0}",
        "*",
        "o_1:task",
        long.as_str(),
    ] {
        let mut body = event("o_1", &["task:t_1"], 1);
        body["orgId"] = json!(org);
        assert_publish_refused(
            &publish_body(&s, body.to_string()).await,
            400,
            "invalid_org",
        );
    }
    let mut body = event("o_1", &["task:t_1"], 1);
    body["orgId"] = json!(null);
    assert_publish_refused(
        &publish_body(&s, body.to_string()).await,
        400,
        "bad_request",
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h70_seventeen_channels_or_another_orgs_channel_get_400_invalid_channel() {
    let s = server().await;
    let names: Vec<String> = (0..17).map(|i| format!("task:t_{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = event("o_1", &names, 1).to_string();
    assert_publish_refused(&publish_body(&s, body).await, 400, "invalid_channel");
    let (status, answer) = publish_body(&s, event("o_1", &names[..16], 1).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    for bad in [&["org:o_2"][..], &[], &["task:../x"], &["org:*"]] {
        let body = event("o_1", bad, 1).to_string();
        assert_publish_refused(&publish_body(&s, body).await, 400, "invalid_channel");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h71_body_that_never_finishes_arriving_gets_400_after_the_body_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    assert!(
        r.send(post_head(Some(PUBLISH_KEY), &["Content-Length: 300"]).as_bytes())
            .await
    );
    r.drip(
        event("o_1", &["task:t_1"], 1).to_string().into_bytes(),
        Duration::from_millis(50),
    );
    let a = r.answer().await;
    assert_refused(&a, 400, "bad_request");
    let waited = start.elapsed();
    assert!(
        waited >= BODY_TIMEOUT && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h72_content_length_bigger_than_the_body_gets_400_after_the_body_timeout() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    let head = post_head(
        Some(PUBLISH_KEY),
        &[&format!("Content-Length: {}", body.len() + 1000)],
    );
    assert!(r.send(format!("{head}{body}").as_bytes()).await);
    let a = r.answer().await;
    assert_refused(&a, 400, "bad_request");
    assert!(start.elapsed() >= BODY_TIMEOUT, "{:?}", start.elapsed());
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h72b_content_length_bigger_than_the_body_then_eof_gets_400() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let mut r = Raw::connect(s.addr).await;
    let head = post_head(
        Some(PUBLISH_KEY),
        &[&format!("Content-Length: {}", body.len() + 1000)],
    );
    assert!(r.send(format!("{head}{body}").as_bytes()).await);
    r.shutdown_write().await;
    let a = r.answer().await;
    assert_refused(&a, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h73_chunked_body_with_a_huge_chunk_size_gets_400_after_the_body_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let head = post_head(Some(PUBLISH_KEY), &["Transfer-Encoding: chunked"]);
    assert!(
        r.send(format!("{head}FFFFFFFFFFFFFFFF\r\n{{\"orgId\":").as_bytes())
            .await
    );
    assert_refused(&r.answer().await, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h73b_chunk_size_overflowing_64_bits_gets_400() {
    let s = server().await;
    let head = post_head(Some(PUBLISH_KEY), &["Transfer-Encoding: chunked"]);
    let a = exchange(
        s.addr,
        format!("{head}1FFFFFFFFFFFFFFFF\r\n{{}}\r\n0\r\n\r\n"),
    )
    .await;
    assert_refused(&a, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h74_chunked_body_streaming_past_the_body_limit_gets_413_or_a_close() {
    let s = server().await;
    let head = post_head(Some(PUBLISH_KEY), &["Transfer-Encoding: chunked"]);
    let mut bytes = format!("{head}A00000\r\n").into_bytes();
    bytes.extend(std::iter::repeat_n(b' ', 7 * 1024 * 1024));
    let a = exchange(s.addr, bytes).await;
    // `Closed`: the server answered and closed while the test was still writing.
    if a.status().is_some() {
        assert_refused(&a, 413, "too_large");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h75_publish_without_a_key_gets_401_at_once_without_reading_the_body() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    assert!(
        r.send(post_head(None, &["Content-Length: 100000"]).as_bytes())
            .await
    );
    assert_refused(&r.answer().await, 401, "unauthorized");
    assert!(start.elapsed() < BODY_TIMEOUT, "{:?}", start.elapsed());
    assert_still_serving(&s).await;
}

// ==== More handshake, token and publish-framing cases ====

#[tokio::test]
async fn h76_authorization_header_that_is_not_ascii_gets_401() {
    let s = server().await;
    let a = exchange(
        s.addr,
        with_raw_header(upgrade("/api/ws", &[]), b"Authorization: Bearer \xff\xfe"),
    )
    .await;
    assert_refused(&a, 401, "unauthorized");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h77_more_than_100_header_fields_get_431() {
    let s = server().await;
    let pads: Vec<(String, String)> = (0..120)
        .map(|i| (format!("X-Pad-{i}"), "a".to_owned()))
        .collect();
    let pads: Vec<(&str, &str)> = pads.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let target = format!("/api/ws?token={}", token("u_1", "o_1"));
    assert_eq!(
        exchange(s.addr, upgrade(&target, &pads)).await.status(),
        Some(431)
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h78_request_smuggling_framing_is_refused() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    // Two different Content-Lengths.
    let head = post_head(
        Some(PUBLISH_KEY),
        &[
            &format!("Content-Length: {}", body.len()),
            "Content-Length: 5",
        ],
    );
    let mut r = Raw::connect(s.addr).await;
    assert!(r.send(format!("{head}{body}").as_bytes()).await);
    let a = r.answer().await;
    assert_eq!(a.status(), Some(400), "{a:?}");
    assert!(
        r.until_closed(Duration::from_secs(2)).await.is_some(),
        "closed after the 400"
    );
    // Content-Length and chunked together: the chunked framing is used, and a smuggled second
    // request after the chunked body is never answered as a separate publish.
    let head = post_head(
        Some(PUBLISH_KEY),
        &["Content-Length: 4", "Transfer-Encoding: chunked"],
    );
    let smuggled = format!(
        "{head}0\r\n\r\nPOST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let mut r = Raw::connect(s.addr).await;
    assert!(r.send(smuggled.as_bytes()).await);
    let first = r.answer().await;
    assert_eq!(first.status(), Some(400), "{first:?}");
    assert!(
        r.until_closed(Duration::from_secs(2))
            .await
            .is_some_and(|rest| rest.is_empty()),
        "one answer, then the connection is closed"
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h79_idempotency_keys_are_bounded_and_never_cross_orgs() {
    let s = server().await;
    for key in [String::new(), "k".repeat(257)] {
        let mut body = event("o_1", &["task:t_1"], 1);
        body["idempotencyKey"] = json!(key);
        assert_publish_refused(
            &publish_body(&s, body.to_string()).await,
            400,
            "invalid_idempotency_key",
        );
    }
    // The same key in another org is another key: both are delivered.
    let mut c2 = s.client("u_2", "o_2").await;
    c2.subscribe("task:t_1").await;
    for org in ["o_1", "o_2"] {
        let mut body = event(org, &["task:t_1"], 1);
        body["idempotencyKey"] = json!("k".repeat(256));
        let (status, answer) = publish_body(&s, body.to_string()).await;
        assert_eq!(status, 202, "{answer}");
        assert!(answer.get("duplicate").is_none(), "{answer}");
    }
    assert_eq!(c2.recv().await["channelId"], "task:t_1");
    assert_still_serving(&s).await;
}
