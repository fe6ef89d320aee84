//! Hardening (issue 3): slow consumers, liveness, running out of file descriptors, and a graceful
//! drain under load.
//!
//! The tests that measure the server itself (its memory, CPU time, descriptors, exit status and
//! its own `/metrics`) run the real binary; those that look inside the node (the hub's subscriber
//! counts) run it in process. Every wait is bounded. The heavy tests take turns ([`HEAVY`]) so one
//! test's load is not another's latency.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_protocol::PublishEvent;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::util::*;

/// Held by the tests that load the machine, so they run one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The real `cortex-realtime serve` on 127.0.0.1:0 with the test keys; killed when dropped.
struct Served {
    child: std::process::Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Served {
    /// Starts the binary with extra `serve` flags.
    async fn start(flags: &[&str]) -> Served {
        Served::start_under(&[], flags).await
    }

    /// Starts the binary as the command of `wrapper` (e.g. `prlimit --nofile=256:256 --`), which
    /// must exec it so the process id is the server's.
    async fn start_under(wrapper: &[&str], flags: &[&str]) -> Served {
        use std::io::{BufRead, Read};
        use std::sync::mpsc::TryRecvError;

        let mut args: Vec<&str> = wrapper.to_vec();
        args.extend([BIN, "serve", "--listen", "127.0.0.1:0"]);
        args.extend(["--jwt-secret", SECRET, "--publish-key", PUBLISH_KEY]);
        args.extend(flags);
        let mut child = spawn_piped(args[0], &args[1..], &[("RUST_LOG", "warn")]);
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err = child.stderr.take().unwrap();
        let buf = stderr.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut chunk) {
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let deadline = Instant::now() + WAIT;
        let line = loop {
            match lines.try_recv() {
                Ok(line) => break line,
                Err(TryRecvError::Disconnected) => panic!(
                    "the server exited; stderr:\n{}",
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                ),
                Err(TryRecvError::Empty) => {}
            }
            assert!(Instant::now() < deadline, "no `listening on` line");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"));
        Served {
            child,
            addr,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/api/ws", self.addr)
    }

    fn events_url(&self) -> String {
        format!("http://{}/api/events", self.addr)
    }

    fn proc_file(&self, name: &str) -> String {
        let path = format!("/proc/{}/{name}", self.pid());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// User plus system CPU time, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = self.proc_file("stat");
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15.
        let rest = &stat[stat.rfind(')').expect("(comm)") + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    /// Open file descriptors.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .count()
    }

    /// One sample of the server's `/metrics` (`name` with its labels, as rendered); 0 when absent.
    async fn metric(&self, name: &str) -> f64 {
        let (status, text) = get(&format!("http://{}/metrics", self.addr)).await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn terminate(&self) {
        sigterm(self.pid());
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {within:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Publishes over one kept-alive HTTP connection.
#[derive(Clone)]
struct Publisher {
    http: reqwest::Client,
    url: String,
}

impl Publisher {
    fn new(url: String) -> Publisher {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .timeout(WAIT)
            .build()
            .unwrap();
        Publisher { http, url }
    }

    async fn post(&self, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        try_publish_with(&self.http, &self.url, PUBLISH_KEY, body).await
    }

    async fn accepted(&self, body: &Value) -> Value {
        let (status, answer) = self.post(body).await.expect("publish request");
        assert_eq!(status, 202, "{answer}");
        answer
    }
}

/// A `chat.message` on `channel` whose content is `content`; `n` numbers it.
fn chat(org: &str, channel: &str, n: u64, content: &str) -> Value {
    json!({
        "orgId": org,
        "type": "chat.message",
        "channels": [channel],
        "payload": {"messageId": format!("m_{n}"), "agentId": "a_1", "content": content, "n": n},
    })
}

/// Connects, authenticates and subscribes over a socket with a tiny receive buffer, then
/// returns the client, which the caller never reads again.
async fn non_reader(url: &str, sub: &str, org: &str, channel: &str) -> Client {
    let mut c = Client::connect_tiny(url).await;
    c.send(json!({"type":"auth","token":token(sub, org)})).await;
    assert_eq!(c.recv().await["type"], "connected");
    assert_eq!(c.subscribe(channel).await["type"], "subscribed");
    c
}

/// Connects with the token in the `auth` frame and subscribes.
async fn subscriber(url: &str, sub: &str, org: &str, channel: &str) -> Client {
    let mut c = Client::connect(url).await;
    c.send(json!({"type":"auth","token":token(sub, org)})).await;
    assert_eq!(c.recv().await["type"], "connected");
    assert_eq!(c.subscribe(channel).await["type"], "subscribed");
    c
}

/// A reading subscriber's record: (payload `n`, offset, when it arrived), in arrival order.
type Arrivals = Vec<(u64, u64, Instant)>;

/// Reads events on a task until it has as many as `published` says (`u64::MAX` while
/// publishing goes on); `received` counts them as they come. The task gives the client back,
/// still connected.
fn read_events(
    mut c: Client,
    published: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<(Client, Arrivals)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut progress = Instant::now();
        while (got.len() as u64) < published.load(Ordering::SeqCst) {
            // Short waits, so the end of publishing is noticed between frames.
            let Ok(frame) = tokio::time::timeout(Duration::from_millis(50), c.ws.next()).await
            else {
                assert!(
                    progress.elapsed() < WAIT,
                    "the reader stalled after {} events",
                    got.len()
                );
                continue;
            };
            match frame {
                Some(Ok(Message::Text(t))) => {
                    progress = Instant::now();
                    let v: Value = serde_json::from_str(&t).unwrap();
                    got.push((
                        v["payload"]["n"].as_u64().expect("an event"),
                        v["offset"].as_u64().expect("an offset"),
                        progress,
                    ));
                    received.store(got.len() as u64, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                other => panic!(
                    "the reader lost its connection after {}: {other:?}",
                    got.len()
                ),
            }
        }
        (c, got)
    })
}

/// How a run publishes: at most `max` events, `batch` to a request, never more than `window`
/// ahead of the reading subscriber (whose own queue so stays far under its bound).
struct Pace {
    max: u64,
    batch: u64,
    window: u64,
}

/// A reading subscriber of `channel` in `org` on a task, and what it needs to measure it.
struct Reader {
    task: tokio::task::JoinHandle<(Client, Arrivals)>,
    published: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
}

impl Reader {
    async fn start(url: &str, org: &str, channel: &str) -> Reader {
        let c = subscriber(url, "u_reader", org, channel).await;
        let published = Arc::new(AtomicU64::new(u64::MAX));
        let received = Arc::new(AtomicU64::new(0));
        let task = read_events(c, published.clone(), received.clone());
        Reader {
            task,
            published,
            received,
        }
    }

    /// Waits for every event `sent` says was published; checks they came once, in order and
    /// without gaps, and returns their latencies (publish to receive), sorted, and the client.
    async fn latencies(self, sent: &[Instant]) -> (Client, Vec<Duration>) {
        self.published.store(sent.len() as u64, Ordering::SeqCst);
        let (c, got) = self.task.await.expect("the reader");
        let ns: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            ns,
            (0..sent.len() as u64).collect::<Vec<_>>(),
            "every event, in order"
        );
        let offsets: Vec<u64> = got.iter().map(|g| g.1).collect();
        assert_eq!(
            offsets,
            (1..=sent.len() as u64).collect::<Vec<_>>(),
            "no gaps"
        );
        let mut l: Vec<Duration> = got.iter().map(|g| g.2 - sent[g.0 as usize]).collect();
        l.sort();
        (c, l)
    }
}

/// Publishes events of `content` bytes to `channel` of `org` as `pace` says, paced by `reader`;
/// returns each one's send time. `each(n)` runs before the request that starts with event `n`;
/// when it answers `false`, publishing stops there.
async fn publish_paced<F, Fut>(
    p: &Publisher,
    (org, channel): (&str, &str),
    content: &str,
    pace: Pace,
    reader: &Reader,
    mut each: F,
) -> Vec<Instant>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut sent = Vec::new();
    let mut n = 0;
    while n < pace.max {
        let deadline = Instant::now() + WAIT;
        while n.saturating_sub(reader.received.load(Ordering::Relaxed)) > pace.window {
            assert!(Instant::now() < deadline, "the reader fell behind at {n}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if !each(n).await {
            break;
        }
        let end = (n + pace.batch).min(pace.max);
        let body = if pace.batch == 1 {
            chat(org, channel, n, content)
        } else {
            let events: Vec<Value> = (n..end).map(|i| chat(org, channel, i, content)).collect();
            json!({ "events": events })
        };
        let at = Instant::now();
        sent.extend((n..end).map(|_| at));
        p.accepted(&body).await;
        n = end;
    }
    sent
}

fn summary(l: &[Duration]) -> String {
    let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
    format!(
        "latency p50 {:?}, p99 {:?}, max {:?} over {} events",
        at(0.5),
        at(0.99),
        l[l.len() - 1],
        l.len()
    )
}

/// Reads what a non-reading client was sent, now that it reads: a contiguous prefix of the
/// channel's events (it resumes from its last offset), then the end of the connection.
/// Returns the last offset and the close code, `None` when the connection ended without a
/// close frame.
async fn read_to_end(c: &mut Client) -> (u64, Option<u16>) {
    let mut last = 0;
    loop {
        match c.next().await {
            Ok(v) => {
                let offset = v["offset"].as_u64().expect("only events");
                assert_eq!(offset, last + 1, "a contiguous prefix");
                last = offset;
            }
            Err(Ended::Closed(code)) => return (last, code),
            Err(Ended::Gone) => return (last, None),
        }
    }
}

/// Polls the server's metrics until `want` 4009 closes and `open` connections, within 3 s.
async fn closed_with_4009(s: &Served, want: f64, open: f64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let closed = s.metric(CLOSED_4009).await;
        let now_open = s.metric("cortex_connections").await;
        if closed == want && now_open == open {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "non-reading subscribers not closed: 4009 closes {closed} (want {want}), \
             connections {now_open} (want {open})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server's count of connections it closed with 4009.
const CLOSED_4009: &str = "cortex_closes_total{code=\"4009\"}";

/// One subscriber that never reads (tiny receive buffer) and one that reads, on one channel of
/// the real binary with the contract's bounds (1,000 events, 1 MiB). Publishes events of
/// `content` bytes as `pace` says, until the server has closed the slow one; the first `fits`
/// of them fit under both bounds.
async fn slow_subscriber_is_closed_with_4009(content: usize, fits: u64, pace: Pace) {
    let _heavy = HEAVY.lock().await;
    let s = Served::start(&[]).await;
    let (org, channel) = ("o_slow", "project:p_busy");
    let mut slow = non_reader(&s.ws_url(), "u_slow", org, channel).await;
    let reader = Reader::start(&s.ws_url(), org, channel).await;
    let p = Publisher::new(s.events_url());
    let content = "x".repeat(content);
    let s_ref = &s;
    let sent = publish_paced(
        &p,
        (org, channel),
        &content,
        pace,
        &reader,
        |n| async move {
            let closed = s_ref.metric(CLOSED_4009).await;
            // At most `fits` events exist: no queue can have passed its bound yet.
            assert!(
                n > fits || closed == 0.0,
                "closed with 4009 after only {n} events"
            );
            closed == 0.0
        },
    )
    .await;
    let (_reader, l) = reader.latencies(&sent).await;
    eprintln!(
        "slow consumer ({} B content): reader {}",
        content.len(),
        summary(&l)
    );
    assert!(l[l.len() - 1] < Duration::from_secs(1), "{}", summary(&l));

    // The server closed the slow one by itself, while it still read nothing.
    closed_with_4009(&s, 1.0, 1.0).await;
    // When it reads again it finds a prefix of the channel, then the close frame 4009.
    let (last, code) = read_to_end(&mut slow).await;
    eprintln!(
        "slow consumer: 4009 seen after {} events published; the non-reader then read offsets \
         1..={last} and {code:?}",
        sent.len()
    );
    assert_eq!(code, Some(4009), "the close frame after offsets 1..={last}");
}

/// A client that stops reading (a 4 KiB receive buffer) while 600 events of 24 KiB each go to
/// its channel learns why it was closed: when it reads again it finds a prefix of the channel,
/// then the close frame 4009, never the end of the connection without it. What was queued for
/// it is dropped; what was in flight (the kernel's buffers, the writer's frame) comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_reads_close_4009_after_what_was_in_flight() {
    let _heavy = HEAVY.lock().await;
    let s = Served::start(&[]).await;
    let (org, channel) = ("o_slow4009", "project:p_slow4009");
    let mut slow = non_reader(&s.ws_url(), "u_slow", org, channel).await;
    let p = Publisher::new(s.events_url());
    let content = "x".repeat(24 * 1024);
    for batch in 0..30u64 {
        let events: Vec<Value> = (0..20)
            .map(|i| chat(org, channel, batch * 20 + i, &content))
            .collect();
        p.accepted(&json!({ "events": events })).await;
    }
    // The server closed it by itself, while it still read nothing.
    closed_with_4009(&s, 1.0, 0.0).await;
    let (last, code) = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut slow))
        .await
        .expect("the connection ends");
    eprintln!("slow consumer: read offsets 1..={last}, then {code:?}");
    assert_eq!(code, Some(4009), "the close frame after offsets 1..={last}");
    assert!(last < 600, "what was queued was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_closed_with_4009_once_past_1000_events() {
    // ~850-byte deliveries: 1,001 of them are under 1 MiB, so the event bound trips first.
    // Before the server's queue grows at all, the kernel's send buffer takes up to 4 MB
    // (net.ipv4.tcp_wmem) and the writer a batch: some 6,000 events; at most 15,000 (13 MB).
    let pace = Pace {
        max: 15_000,
        batch: 100,
        window: 500,
    };
    slow_subscriber_is_closed_with_4009(600, 1000, pace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_closed_with_4009_once_past_1_mib() {
    // 32 KB deliveries: 30 of them are under 1 MiB and the 33rd passes it, long before 1,000.
    // Past the kernel's send buffer (up to 4 MB) and the writer's batch: some 200 events; at
    // most 600 (19 MB).
    let pace = Pace {
        max: 600,
        batch: 5,
        window: 16,
    };
    slow_subscriber_is_closed_with_4009(32_000, 30, pace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_subscribers_that_never_read_cost_bounded_memory_and_the_reader_keeps_its_latency() {
    let _heavy = HEAVY.lock().await;
    let s = Served::start(&[]).await;
    let (org, channel) = ("o_mem", "project:p_mem");
    let mut stalled = Vec::new();
    for i in 0..10 {
        stalled.push(non_reader(&s.ws_url(), &format!("u_stalled_{i}"), org, channel).await);
    }
    let reader = Reader::start(&s.ws_url(), org, channel).await;
    let p = Publisher::new(s.events_url());
    // Warm the paths (HTTP, fan-out, the allocator) before the baseline.
    p.accepted(&chat(org, "project:p_warm", 0, "warm")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = s.rss_kib();
    let peak = AtomicU64::new(before);
    let (s_ref, peak_ref) = (&s, &peak);
    // 1,600 events of 32 KB: 50 MB published, 500 MB if every stalled subscriber kept its copy.
    let content = "x".repeat(32_000);
    let pace = Pace {
        max: 1600,
        batch: 5,
        window: 16,
    };
    let sent = publish_paced(
        &p,
        (org, channel),
        &content,
        pace,
        &reader,
        |n| async move {
            if n.is_multiple_of(50) {
                peak_ref.fetch_max(s_ref.rss_kib(), Ordering::Relaxed);
            }
            true
        },
    )
    .await;
    let (_reader, l) = reader.latencies(&sent).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = s.rss_kib();
    let peak = peak.load(Ordering::Relaxed).max(after);
    eprintln!(
        "memory: RSS {before} KiB before, {after} KiB after, peak {peak} KiB (+{} KiB) \
         for 50 MB past 10 non-readers; reader {}",
        peak - before,
        summary(&l)
    );
    // Per non-reader the server holds at most its outbox (1 MiB) plus the batch it already
    // handed to the WebSocket writer (at most another 1 MiB): 10 x 2 MiB, plus allocator slack.
    // What the sockets buffer is kernel memory, not RSS. Unbounded queues would need 500 MB.
    assert!(peak - before < 40 * 1024, "RSS grew {} KiB", peak - before);
    assert!(l[l.len() - 1] < Duration::from_secs(1), "{}", summary(&l));
    // And each of the ten was closed with 4009; the reader is still connected.
    closed_with_4009(&s, 10.0, 1.0).await;
    drop(stalled);
}

/// A WebSocket client written by hand on a plain TCP socket. It reads only when the test asks,
/// and never answers a ping: a peer whose application froze, or whose network vanished, as far
/// as the server can tell on loopback.
struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A frame as the server sent it.
#[derive(Debug)]
enum Frame {
    Text(String),
    Ping,
    Close(Option<u16>, String),
}

impl RawClient {
    /// Upgrades to WebSocket (receive buffer of 4 KiB when `tiny`), authenticates with an `auth`
    /// frame and subscribes to `channel`.
    async fn subscribed(
        addr: SocketAddr,
        tiny: bool,
        sub: &str,
        org: &str,
        channel: &str,
    ) -> RawClient {
        use tokio::io::AsyncWriteExt;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if tiny {
            sock.set_recv_buffer_size(4096).unwrap();
        }
        let mut tcp = sock.connect(addr).await.expect("tcp connects");
        let req = format!(
            "GET /api/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut c = RawClient {
            tcp,
            buf: Vec::new(),
        };
        let head_end = loop {
            if let Some(i) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(c.fill().await, "connection closed during the handshake");
        };
        let head = String::from_utf8_lossy(&c.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c.buf.drain(..head_end);
        c.send_text(&json!({"type":"auth","token":token(sub, org)}).to_string())
            .await;
        c.expect_text("connected").await;
        c.send_text(&json!({"type":"subscribe","channelId":channel}).to_string())
            .await;
        c.expect_text("subscribed").await;
        c
    }

    /// Reads more bytes; `false` at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("bytes or the end within the wait")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Sends one masked text frame.
    async fn send_text(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let mask = [0x5a, 0x17, 0xc3, 0x8e];
        let len = text.len();
        let mut frame = vec![0x81];
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.unwrap();
    }

    /// The next frame, `None` at the end of the stream.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((header, len)) = frame_len(&self.buf)
                && self.buf.len() >= header + len
            {
                let opcode = self.buf[0] & 0x0f;
                let payload: Vec<u8> = self.buf.drain(..header + len).skip(header).collect();
                return Some(match opcode {
                    0x1 => Frame::Text(String::from_utf8(payload).expect("UTF-8")),
                    0x9 => Frame::Ping,
                    0x8 => Frame::Close(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                        String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned(),
                    ),
                    op => panic!("unexpected opcode {op:#x} from the server"),
                });
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Skips pings (without answering them) up to a text frame of type `ty`.
    async fn expect_text(&mut self, ty: &str) {
        loop {
            match self.frame().await {
                Some(Frame::Ping) => continue,
                Some(Frame::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["type"], ty, "{t}");
                    return;
                }
                other => panic!("expected {ty}, got {other:?}"),
            }
        }
    }
}

/// The header length and payload length of the (unmasked, server) frame at the start of `b`,
/// once enough of it has arrived to tell.
fn frame_len(b: &[u8]) -> Option<(usize, usize)> {
    match *b.get(1)? & 0x7f {
        126 => Some((4, u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize)),
        127 => Some((
            10,
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
        )),
        n => Some((2, n as usize)),
    }
}

/// A node that pings every 200 ms and closes a connection silent for 600 ms.
fn quick_liveness() -> cortex_realtime::Config {
    let mut cfg = config();
    cfg.limits.ping_interval = Duration::from_millis(200);
    cfg.limits.idle_timeout = Duration::from_millis(600);
    cfg
}

/// Polls until `done` holds; returns how long it took, or `None` past `within`.
async fn eventually(within: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Some(start.elapsed())
}

#[tokio::test]
async fn a_client_that_stops_reading_and_answering_pings_is_closed_after_the_idle_timeout_and_its_subscriptions_freed()
 {
    let s = TestServer::with(quick_liveness()).await;
    let (org, channel) = ("o_gone", "project:p_gone");
    // A client that keeps reading (so its library answers the pings) stays.
    let mut alive = s.client("u_alive", org).await;
    alive.subscribe(channel).await;
    let keep_reading = tokio::spawn(async move {
        loop {
            match alive.ws.next().await {
                Some(Ok(Message::Text(t))) => panic!("unexpected message {t}"),
                Some(Ok(_)) => {}
                other => panic!("the reading client was closed: {other:?}"),
            }
        }
    });
    // The other goes silent once subscribed: it reads nothing and answers no ping, and its
    // socket stays open (no FIN).
    let mut gone = RawClient::subscribed(s.addr, false, "u_gone", org, channel).await;
    let silent_since = Instant::now();
    assert_eq!(s.node.subscribers(org, channel), 2);
    assert_eq!(s.node.open_connections(), 2);
    let node = s.node.clone();
    eventually(Duration::from_secs(5), || {
        node.subscribers(org, channel) == 1 && node.open_connections() == 1
    })
    .await
    .expect("the silent client is freed within 5 s");
    let took = silent_since.elapsed();
    eprintln!("vanished client: subscriptions freed {took:?} after it went silent");
    // Not before the idle timeout; then within a ping interval plus the close grace (1 s).
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(
        !keep_reading.is_finished(),
        "the reading client is still connected"
    );

    // What the silent client was sent meanwhile: pings it never answered, then a close frame,
    // then the end of the TCP connection.
    let mut pings = 0;
    let close = loop {
        match gone.frame().await {
            Some(Frame::Ping) => pings += 1,
            Some(Frame::Close(code, reason)) => break (code, reason),
            other => panic!("expected pings then a close, got {other:?}"),
        }
    };
    assert_eq!(close, (Some(1001), "idle timeout".to_owned()));
    assert!(pings >= 2, "{pings} pings");
    assert!(
        gone.frame().await.is_none(),
        "the connection ends after the close frame"
    );
    keep_reading.abort();
}

#[tokio::test]
async fn a_client_that_vanishes_while_its_channel_is_busy_is_closed_and_its_subscriptions_freed() {
    // An idle timeout of 1.5 s: long enough for the events below to fill its socket buffers
    // (some 3 MB: the kernel's send buffer grows to ~4 MB) and its outbox first.
    let mut cfg = quick_liveness();
    cfg.limits.idle_timeout = Duration::from_millis(1500);
    let s = TestServer::with(cfg).await;
    let (org, channel) = ("o_busy", "project:p_busy");
    let gone = RawClient::subscribed(s.addr, true, "u_gone", org, channel).await;
    // 32 KB events every 2 ms or so, on and on.
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (stop, node) = (stop.clone(), s.node.clone());
        let content = "x".repeat(32_000);
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ev: PublishEvent =
                    serde_json::from_value(chat(org, channel, n, &content)).unwrap();
                node.publish(vec![ev]).await.expect("published");
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let node = s.node.clone();
    // Closed with 4009 once its outbox overflowed, or at the latest by the idle timeout, then
    // the close grace (1 s).
    let took = eventually(Duration::from_secs(5), || {
        node.subscribers(org, channel) == 0 && node.open_connections() == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publishing.await.unwrap();
    eprintln!("vanished client on a busy channel: freed after {took:?}");
    assert!(
        took.is_some(),
        "5 s after it went silent, the client is still subscribed and connected"
    );
    drop(gone);
}

#[tokio::test]
async fn a_reading_client_receives_server_pings_and_stays_open_past_the_idle_timeout() {
    let s = TestServer::with(quick_liveness()).await;
    let mut c = s.client("u_ping", "o_ping").await;
    let start = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = Vec::new();
    while let Ok(frame) = tokio::time::timeout_at(until, c.ws.next()).await {
        match frame {
            Some(Ok(Message::Ping(_))) => pings.push(start.elapsed()),
            other => panic!("only pings should arrive: {other:?}"),
        }
    }
    // One every 200 ms: about 7 in 1.5 s.
    assert!((5..=9).contains(&pings.len()), "{pings:?}");
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(100)),
        "{gaps:?}"
    );
    // 2.5 idle timeouts later it is still open: its pongs count as traffic.
    c.assert_alive().await;
}

/// An executable found on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_neither_crashes_nor_spins_and_recovers() {
    const LIMIT: usize = 256;
    let _heavy = HEAVY.lock().await;
    let prlimit = on_path("prlimit").map(|p| p.to_string_lossy().into_owned());
    let bash = on_path("bash").map(|p| p.to_string_lossy().into_owned());
    let nofile = format!("--nofile={LIMIT}:{LIMIT}");
    let ulimit = format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\"");
    let wrapper: Vec<&str> = match (&prlimit, &bash) {
        (Some(p), _) => vec![p, &nofile, "--"],
        (None, Some(b)) => vec![b, "-c", &ulimit],
        (None, None) => panic!("neither prlimit nor bash on PATH"),
    };
    let mut s = Served::start_under(&wrapper, &[]).await;
    let limits = s.proc_file("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(line.contains(&format!("{LIMIT}")), "{line}");

    let (org, channel) = ("o_fd", "project:p_fd");
    let mut clients = Vec::new();
    for i in 0..40 {
        clients.push(subscriber(&s.ws_url(), &format!("u_{i}"), org, channel).await);
    }
    // This publisher's connection is accepted now and kept alive: publishing needs no new
    // descriptor later.
    let p = Publisher::new(s.events_url());
    p.accepted(&chat(org, channel, 0, "before")).await;
    for c in &mut clients {
        assert_eq!(c.recv().await["payload"]["n"], 0);
    }
    let fds_before = s.open_fds();

    // 400 more TCP connections at once: the server accepts until it runs out, the rest wait in
    // the listen backlog or time out.
    let connects: Vec<_> = (0..400)
        .map(|_| {
            let addr = s.addr;
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
                    .await
                    .ok()?
                    .ok()
            })
        })
        .collect();
    let mut extra = Vec::new();
    for c in connects {
        extra.extend(c.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_exhausted = s.open_fds();
    assert!(
        fds_exhausted >= LIMIT - 16,
        "the server did not run out: {fds_exhausted} open"
    );
    assert!(s.stderr().contains("Too many open files"), "{}", s.stderr());

    let ticks = s.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = Duration::from_millis((s.cpu_ticks() - ticks) * 10); // USER_HZ is 100
    assert!(s.alive(), "the server died; stderr:\n{}", s.stderr());
    eprintln!(
        "fd exhaustion: {fds_before} fds with 40 clients, {fds_exhausted} after {} more \
         connections ({} did not connect); CPU over 2 s exhausted: {cpu:?}",
        extra.len(),
        400 - extra.len()
    );
    assert!(
        cpu < Duration::from_millis(500),
        "spinning: {cpu:?} of CPU in 2 s"
    );

    // Existing clients are served: a publish over the open connection reaches all 40, and each
    // answers a ping.
    p.accepted(&chat(org, channel, 1, "exhausted")).await;
    for c in &mut clients {
        assert_eq!(c.recv().await["payload"]["n"], 1);
        c.assert_alive().await;
    }

    // Once descriptors free up, new clients are accepted again within a few seconds.
    drop(extra);
    let freed_at = Instant::now();
    for i in 0..5 {
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            subscriber(&s.ws_url(), &format!("u_new_{i}"), org, channel),
        )
        .await
        .expect("a new client is accepted once descriptors are free");
        clients.push(c);
    }
    eprintln!(
        "fd exhaustion: new clients accepted {:?} after the extra connections closed",
        freed_at.elapsed()
    );
    Publisher::new(s.events_url())
        .accepted(&chat(org, channel, 2, "after"))
        .await;
    for c in &mut clients {
        assert_eq!(c.recv().await["payload"]["n"], 2);
    }
    assert!(s.alive());
}

/// What one drain-test client saw.
struct Seen {
    channel: usize,
    ids: HashSet<String>,
    close: Option<u16>,
    closed_at: Option<Instant>,
}

/// One published event of the drain test.
struct Outcome {
    id: Option<String>,
    channels: Vec<usize>,
    status: Option<u16>,
    before_signal: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_2000_clients_with_1001_delivers_every_accepted_event_and_exits_0()
 {
    const CLIENTS: usize = 2000;
    const CHANNELS: usize = 20;
    let _heavy = HEAVY.lock().await;
    let mut s = Served::start(&[]).await;
    let org = "o_drain";
    let ready = Arc::new(AtomicUsize::new(0));
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let url = format!("{}?token={}", s.ws_url(), token(&format!("u_{i}"), org));
        let (ready, connecting) = (ready.clone(), connecting.clone());
        tasks.push(tokio::spawn(async move {
            let channel = i % CHANNELS;
            let permit = connecting.acquire_owned().await.unwrap();
            let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
                .await
                .expect("connects");
            let mut c = Client { ws };
            assert_eq!(c.recv().await["type"], "connected");
            assert_eq!(
                c.subscribe(&format!("project:p_{channel}")).await["type"],
                "subscribed"
            );
            drop(permit);
            ready.fetch_add(1, Ordering::SeqCst);
            let mut seen = Seen {
                channel,
                ids: HashSet::new(),
                close: None,
                closed_at: None,
            };
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), c.ws.next()).await;
                match frame.expect("the drain ends every connection") {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        seen.ids
                            .insert(v["id"].as_str().expect("an event").to_owned());
                    }
                    Some(Ok(Message::Close(f))) => {
                        seen.closed_at = Some(Instant::now());
                        seen.close = f.map(|f| u16::from(f.code));
                        // Reading on sends our close reply; the server then ends the TCP connection.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = c.ws.next().await {}
                        })
                        .await;
                        return seen;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return seen,
                }
            }
        }));
    }
    let connect_start = Instant::now();
    while ready.load(Ordering::SeqCst) < CLIENTS {
        assert!(
            connect_start.elapsed() < Duration::from_secs(30),
            "clients did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connected_in = connect_start.elapsed();

    // Publishers send continuously; the signal goes out while they do.
    let signalled = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let p = Publisher::new(s.events_url());
        let (signalled, next, accepted) = (signalled.clone(), next.clone(), accepted.clone());
        publishers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let channels = if k.is_multiple_of(4) {
                    vec![k % CHANNELS, (k + 7) % CHANNELS]
                } else {
                    vec![k % CHANNELS]
                };
                let names: Vec<String> =
                    channels.iter().map(|c| format!("project:p_{c}")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let answer = p.post(&event(org, &names, k as u64)).await;
                // Read after the answer arrived: `true` means it arrived before the signal.
                let before_signal = !signalled.load(Ordering::SeqCst);
                let failed = answer.is_err();
                let (status, id) = match answer {
                    Ok((st, body)) => (Some(st), body["id"].as_str().map(str::to_owned)),
                    Err(_) => (None, None),
                };
                if status == Some(202) {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                out.push(Outcome {
                    id,
                    channels,
                    status,
                    before_signal,
                });
                if !before_signal && (failed || status != Some(202)) {
                    // Refused after the signal; one more try shows the door stays shut.
                    if out
                        .iter()
                        .filter(|o| !o.before_signal && o.status != Some(202))
                        .count()
                        > 3
                    {
                        return out;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // Events flow for a while (a busy machine publishes slower: then up to 5 s) before the signal.
    let flowing = Instant::now();
    while accepted.load(Ordering::Relaxed) < 300 && flowing.elapsed() < Duration::from_secs(5)
        || flowing.elapsed() < Duration::from_millis(300)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signalled.store(true, Ordering::SeqCst);
    let signal_at = Instant::now();
    s.terminate();

    let mut seen = Vec::with_capacity(CLIENTS);
    for t in tasks {
        seen.push(t.await.expect("client task"));
    }
    let status = s.wait_exit(Duration::from_secs(12)).await;
    let exited_in = signal_at.elapsed();
    let mut outcomes = Vec::new();
    for p in publishers {
        outcomes.extend(
            tokio::time::timeout(WAIT, p)
                .await
                .expect("publishers stop")
                .unwrap(),
        );
    }

    // Every client got 1001, within the drain timeout.
    let codes: HashSet<Option<u16>> = seen.iter().map(|c| c.close).collect();
    assert_eq!(codes, HashSet::from([Some(1001)]), "close codes");
    let last_close = seen
        .iter()
        .filter_map(|c| c.closed_at)
        .max()
        .unwrap()
        .duration_since(signal_at);
    assert!(
        last_close <= Duration::from_secs(10),
        "last close after {last_close:?}"
    );
    assert!(status.success(), "exit {status:?}; stderr:\n{}", s.stderr());

    // Every event accepted with 202 before the signal reached every subscriber of its channels;
    // after the signal the answer is 503 or no connection, and a 202 is never dropped either.
    let mut by_channel: Vec<Vec<&Seen>> = vec![Vec::new(); CHANNELS];
    for c in &seen {
        by_channel[c.channel].push(c);
    }
    let (mut covered, mut late_202, mut late_503, mut late_failed, mut missing) =
        (0, 0, 0, 0, Vec::new());
    for o in &outcomes {
        match (o.before_signal, o.status) {
            (true, Some(202)) => covered += 1,
            (true, other) => panic!("refused before the signal: {other:?}"),
            (false, Some(202)) => late_202 += 1,
            (false, Some(503)) => late_503 += 1,
            (false, None) => late_failed += 1,
            (false, Some(other)) => panic!("after the signal: {other}"),
        }
        if o.status == Some(202) {
            let id = o.id.as_deref().expect("an id");
            for ch in &o.channels {
                for c in &by_channel[*ch] {
                    if !c.ids.contains(id) {
                        missing.push((id.to_owned(), o.before_signal, *ch));
                    }
                }
            }
        }
    }
    let deliveries: usize = seen.iter().map(|c| c.ids.len()).sum();
    eprintln!(
        "drain: {CLIENTS} clients connected in {connected_in:?}; {covered} events accepted before \
         SIGTERM, {deliveries} deliveries; after it {late_202} x 202, {late_503} x 503, \
         {late_failed} refused connections; last close {last_close:?}, exit 0 after {exited_in:?}"
    );
    assert!(covered >= 20, "too few events flowed: {covered}");
    assert!(
        late_503 + late_failed > 0,
        "publishing after the signal was never refused"
    );
    assert!(
        missing.is_empty(),
        "{} deliveries missing (id, accepted before the signal, channel), e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
