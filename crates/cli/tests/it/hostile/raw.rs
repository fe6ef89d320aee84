//! Raw TCP: hand-written HTTP requests and WebSocket frames on a bare `TcpStream`, to send what
//! no well-behaved client library would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::util::*;

/// The RFC 6455 sample key: a valid `Sec-WebSocket-Key`.
pub(super) const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// What a raw socket got back for a request.
#[derive(Debug)]
pub(super) enum Answer {
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
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Answer::Http { status, .. } => Some(*status),
            Answer::Closed => None,
        }
    }

    pub(super) fn body(&self) -> &str {
        match self {
            Answer::Http { body, .. } => body,
            Answer::Closed => "",
        }
    }
}

/// Asserts an HTTP refusal with this status and JSON `error`.
pub(super) fn assert_refused(a: &Answer, status: u16, error: &str) {
    assert_eq!(a.status(), Some(status), "{a:?}");
    let body: Value =
        serde_json::from_str(a.body()).unwrap_or_else(|e| panic!("JSON body ({e}): {a:?}"));
    assert_eq!(body["error"], error, "{a:?}");
}

/// What a raw WebSocket read next (ping and pong frames skipped).
#[derive(Debug, PartialEq)]
pub(super) enum Seen {
    Text(Value),
    /// A close frame and its code.
    Close(Option<u16>),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// A raw TCP connection. Writes go through a shared half so a background task can keep writing
/// while the test reads; background writers are stopped when it is dropped.
pub(super) struct Raw {
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
    pub(super) async fn connect(addr: SocketAddr) -> Raw {
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
    pub(super) async fn websocket(s: &TestServer) -> Raw {
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
    pub(super) async fn send(&mut self, bytes: &[u8]) -> bool {
        let mut wr = self.wr.lock().await;
        matches!(
            timeout(Duration::from_secs(2), wr.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    /// Writes `bytes` from a background task: a server that answers early and stops reading
    /// cannot block the test.
    pub(super) fn send_in_background(&mut self, bytes: Vec<u8>) {
        let wr = self.wr.clone();
        self.background.push(tokio::spawn(async move {
            let _ = wr.lock().await.write_all(&bytes).await;
        }));
    }

    /// Writes `bytes` one byte every `gap`, in the background, until done or refused.
    pub(super) fn drip(&mut self, bytes: Vec<u8>, gap: Duration) {
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
    pub(super) async fn shutdown_write(&mut self) {
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
    pub(super) async fn answer(&mut self) -> Answer {
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
    pub(super) async fn until_closed(&mut self, within: Duration) -> Option<Vec<u8>> {
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
    pub(super) async fn next(&mut self) -> Seen {
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
    pub(super) async fn ending(&mut self) -> Seen {
        loop {
            match self.next().await {
                Seen::Text(_) => continue,
                end => return end,
            }
        }
    }

    /// Sends an application ping and waits for its pong: the connection still works.
    pub(super) async fn assert_alive(&mut self) {
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
pub(super) fn upgrade(target: &str, extra: &[(&str, &str)]) -> String {
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
pub(super) fn request(lines: &[&str]) -> String {
    let mut r = lines.join("\r\n");
    r.push_str("\r\n\r\n");
    r
}

/// `request` (a whole head) with one more header line, given as raw bytes.
pub(super) fn with_raw_header(request: String, line: &[u8]) -> Vec<u8> {
    let mut bytes = request.into_bytes();
    bytes.truncate(bytes.len() - 2);
    bytes.extend_from_slice(line);
    bytes.extend_from_slice(b"\r\n\r\n");
    bytes
}

/// Sends `bytes` on a fresh connection (in the background) and reads the answer.
pub(super) async fn exchange(addr: SocketAddr, bytes: impl Into<Vec<u8>>) -> Answer {
    let mut r = Raw::connect(addr).await;
    r.send_in_background(bytes.into());
    r.answer().await
}

pub(super) const FIN: u8 = 0x80;
pub(super) const RSV1: u8 = 0x40;
pub(super) const CONT: u8 = 0x0;
pub(super) const TEXT: u8 = 0x1;
pub(super) const BINARY: u8 = 0x2;
pub(super) const CLOSE: u8 = 0x8;
pub(super) const PING: u8 = 0x9;
pub(super) const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame: `b0` is FIN, RSV and opcode; the payload is masked when `masked`.
pub(super) fn frame(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
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
pub(super) fn text(s: &str) -> Vec<u8> {
    frame(FIN | TEXT, s.as_bytes(), true)
}
