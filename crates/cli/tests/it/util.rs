//! Shared helpers: a real server on 127.0.0.1:0, real WebSocket clients, real HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cortex_realtime::{Config, Node, Server};
use cortex_realtime::{KeySource, mint_hs256};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// The HS256 secret of every test server.
pub const SECRET: &str = "test-secret-please-change";
/// The publish key of every test server.
pub const PUBLISH_KEY: &str = "test-publish-key";
/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// A config with the test keys on 127.0.0.1:0.
pub fn config() -> Config {
    let mut c = Config::default();
    c.auth.keys = vec![KeySource::Secret(SECRET.into())];
    c.publish_keys = vec![PUBLISH_KEY.into()];
    c
}

/// A running server; dropping it stops it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(config()).await
    }

    pub async fn with(config: Config) -> TestServer {
        let server = Server::bind(config).await.expect("server starts");
        let addr = server.local_addr();
        let node = server.node();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            node,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the drain and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("drains in time")
                .expect("task")
                .expect("serve");
        }
    }

    /// Connects with the token in the `auth` frame and reads `connected`.
    pub async fn client(&self, sub: &str, org: &str) -> Client {
        self.client_with_token(&token(sub, org)).await
    }

    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut c = Client::connect(&self.ws_url()).await;
        c.send(json!({"type":"auth","token":token})).await;
        let m = c.recv().await;
        assert_eq!(m["type"], "connected", "{m}");
        c
    }

    /// Publishes one event body; returns (status, body).
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        publish_to(&self.http("/api/events"), PUBLISH_KEY, body).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn publish_to(url: &str, key: &str, body: Value) -> (u16, Value) {
    try_publish_with(&reqwest::Client::new(), url, key, &body)
        .await
        .expect("publish request")
}

/// Publishes one event body over `http`; (status, JSON body, or the text when it is not JSON).
pub async fn try_publish_with(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> reqwest::Result<(u16, Value)> {
    let resp = http.post(url).bearer_auth(key).json(body).send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// A token for `sub` in `org`, valid for an hour.
pub fn token(sub: &str, org: &str) -> String {
    mint_hs256(SECRET, sub, org, unix_now() + 3600, None)
}

/// A token limited to `channels` patterns.
pub fn token_for(sub: &str, org: &str, channels: &[&str]) -> String {
    let ch: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
    mint_hs256(SECRET, sub, org, unix_now() + 3600, Some(&ch))
}

/// A valid `task.status_changed` body for `org` on the given channels.
pub fn event(org: &str, channels: &[&str], n: u64) -> Value {
    json!({
        "orgId": org,
        "type": "task.status_changed",
        "payload": {"taskId": "t_9", "oldStatus": "todo", "newStatus": "in_progress", "n": n},
        "channels": channels,
    })
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a read ended when a frame was expected.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Gone,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = connect_async(url).await.expect("websocket connects");
        Client { ws }
    }

    /// Connects over a socket with a tiny receive buffer: a client that does not read fills it
    /// at once, so the server's outbox for it grows.
    pub async fn connect_tiny(url: &str) -> Client {
        let addr: SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connects with extra request headers; returns the HTTP error status on refusal.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(http_name(k), v.parse().expect("header value"));
        }
        match connect_async(req).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next JSON message (skipping pings); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(e) => panic!("expected a message, connection ended: {e:?}"),
        }
    }

    /// The next JSON message, or how the connection ended.
    pub async fn next(&mut self) -> Result<Value, Ended> {
        self.next_within(WAIT).await
    }

    /// The next JSON message within `wait` (skipping pings); panics on close or timeout.
    pub async fn recv_within(&mut self, wait: Duration) -> Value {
        match self.next_within(wait).await {
            Ok(v) => v,
            Err(e) => panic!("expected a message, connection ended: {e:?}"),
        }
    }

    async fn next_within(&mut self, wait: Duration) -> Result<Value, Ended> {
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("a frame within the wait");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(&t).expect("JSON frame"));
                }
                Some(Ok(Message::Close(f))) => {
                    return Err(Ended::Closed(f.map(|f: CloseFrame| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Gone),
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(Ended::Closed(c)) => return c,
                Err(Ended::Gone) => return None,
            }
        }
    }

    /// Nothing arrives for `d`.
    pub async fn silent_for(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {t}");
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"type":"subscribe","channelId":channel}))
            .await;
        self.recv().await
    }
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap()
}

// Helpers for ws_connect.rs, ws_commands.rs and tenancy.rs.

/// A token for `sub` in `org` that expires at `exp` (unix seconds).
pub fn token_expiring(sub: &str, org: &str, exp: i64) -> String {
    mint_hs256(SECRET, sub, org, exp, None)
}

/// A token that expired an hour ago, far past the default 30 s leeway.
pub fn expired_token(sub: &str, org: &str) -> String {
    token_expiring(sub, org, unix_now() - 3600)
}

/// An HTTP response read off a raw socket: status, head (status line and headers) and body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.body))
    }
}

/// The status code and the `Content-Length` (when there is one) of an HTTP response head.
pub fn parse_head(head: &str) -> (u16, Option<usize>) {
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    (status, length)
}

/// Writes a WebSocket upgrade request for `target` (e.g. `/api/ws?token=...`) by hand, with
/// `headers` added, and reads the response head and, when it is not a 101, its body.
pub async fn raw_upgrade(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).await.expect("tcp connects");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("request written");
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let (status, length) = parse_head(&head);
        let mut body = buf[head_end..].to_vec();
        if status != 101 {
            match length {
                Some(len) => {
                    while body.len() < len {
                        let n = stream.read(&mut chunk).await.expect("read body");
                        if n == 0 {
                            break;
                        }
                        body.extend_from_slice(&chunk[..n]);
                    }
                }
                None => {
                    stream.read_to_end(&mut body).await.expect("read body");
                }
            }
        }
        RawResponse {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a response within the wait")
}

impl Client {
    /// Sends a ping with a fresh `ref` and returns every message that arrived before its pong:
    /// everything the server queued for this connection before it read the ping.
    pub async fn barrier(&mut self) -> Vec<Value> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let r = format!("barrier-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.send(json!({"type":"ping","ref":r})).await;
        let mut before = Vec::new();
        loop {
            let m = self.recv().await;
            if m["type"] == "pong" && m["ref"] == r.as_str() {
                return before;
            }
            before.push(m);
        }
    }

    /// Sends one command and returns the next message.
    pub async fn request(&mut self, v: Value) -> Value {
        self.send(v).await;
        self.recv().await
    }

    /// A ping answered by a pong: the connection still works.
    pub async fn assert_alive(&mut self) {
        let before = self.barrier().await;
        assert!(
            before.is_empty(),
            "unexpected messages before the pong: {before:?}"
        );
    }
}

// ---- Helpers for publish_api/, cli.rs and ops.rs ----

/// The `cortex-realtime` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cortex-realtime");

/// POSTs `body` as it is to `url` with an optional `Authorization` header value; returns
/// (status, body as JSON, or as a JSON string when it is not JSON).
pub async fn post_raw(
    url: &str,
    authorization: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("publish request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A fresh path under Cargo's temporary directory for integration tests.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("it-{}-{n}-{name}", std::process::id()))
}

/// A running `cortex-realtime` process with an empty environment but for `env`. Its stdout lines
/// and its stderr are collected by threads; it is killed when dropped.
pub struct Proc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stdout: Arc<std::sync::Mutex<Vec<String>>>,
    stderr: Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<std::process::ExitStatus>,
}

/// Starts `program` with `args` and an environment of only `env`: no stdin, stdout and stderr
/// piped.
pub fn spawn_piped(program: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    use std::process::{Command, Stdio};
    Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts: {e}"))
}

/// Sends SIGTERM to the process `pid`.
pub fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill -TERM failed");
}

impl Proc {
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        use std::io::{BufRead, Read};
        let mut child = spawn_piped(BIN, args, env);
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let out_buf = stdout.clone();
        let r1 = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                out_buf.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let err_buf = stderr.clone();
        let r2 = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => err_buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                }
            }
        });
        Proc {
            child,
            lines,
            stdout,
            stderr,
            readers: vec![r1, r2],
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, within [`WAIT`]; panics (with stderr) when the process exits first.
    pub async fn next_line(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.lines.try_recv() {
                Ok(line) => return line,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    panic!("stdout closed; stderr:\n{}", self.stderr())
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no stdout line within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads the `listening on ADDR` line and returns ADDR.
    pub async fn listening(&mut self) -> SocketAddr {
        let line = self.next_line().await;
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"));
        addr.parse()
            .unwrap_or_else(|_| panic!("not an address: {line:?}"))
    }

    /// Waits until the process catches SIGTERM (Linux: the SigCgt mask of `/proc/PID/status`;
    /// elsewhere a short pause). A SIGTERM sent before that kills it outright.
    pub async fn sigterm_caught(&self) {
        let path = format!("/proc/{}/status", self.pid());
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let Ok(status) = std::fs::read_to_string(&path) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            };
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
                .unwrap_or(0);
            if caught & (1 << (15 - 1)) != 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "SIGTERM is not caught within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads the `listening on ADDR` line, blocking the thread (no polling delay).
    pub fn listening_blocking(&mut self) -> SocketAddr {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no stdout line ({e}); stderr:\n{}", self.stderr()));
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"));
        addr.parse()
            .unwrap_or_else(|_| panic!("not an address: {line:?}"))
    }

    /// Kills the process with SIGKILL (no drain, no goodbye) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        sigterm(self.pid());
    }

    /// Waits for the process to exit within `within` and for its output to be read.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = tokio::time::Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.status = Some(status);
        status
    }

    /// How the process exited (after [`Proc::wait_exit`]).
    pub fn status(&self) -> std::process::ExitStatus {
        self.status.expect("the process has exited")
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Stdout so far, lines joined with `\n`.
    pub fn stdout(&self) -> String {
        self.stdout_lines().join("\n")
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion (within [`WAIT`]).
pub async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut p = Proc::spawn(args, env);
    p.wait_exit(WAIT).await;
    p
}

/// `GET url`: (status, body).
pub async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Seconds since the Unix epoch (token times).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
