//! Behind a real load balancer (issue 15, CONTRACT.md sections 6-9, docs/operations.md "Behind a
//! load balancer"): two `cortex-realtime serve` processes on one `redis-server` of the test's
//! own, behind Debian's HAProxy (health check `GET /readyz`), with a few hundred Rust clients
//! (`cortex-client`: reconnect with backoff, resubscribe, resume) connected through it while
//! events are published through it continuously.
//!
//! Skipped (saying so) when `haproxy` is not installed, unless `CORTEX_REQUIRE_HAPROXY` is set
//! (`scripts/test` sets it, and `scripts/peers install` installs it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_client::{ClientEvent, Disconnect};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::redis::{Redis, ready_at};
use crate::util::*;

const ORG: &str = "o_1";
const ORG_CHANNEL: &str = "org:o_1";
/// Clients connected before anything happens.
const FIRST: usize = 200;
/// Clients connected after each step (Redis cut, Redis back, drain).
const LATER: usize = 20;
/// Every client there will be: each has a channel of its own, `task:c<i>`.
const ALL: usize = FIRST + 3 * LATER;
/// Per-client channels published to on each tick (every 100 ms), in turn: each channel gets an
/// event every `ALL / PER_TICK` ticks.
const PER_TICK: usize = 26;

/// Whether `haproxy` can be run; panics when it cannot and `CORTEX_REQUIRE_HAPROXY` is set.
fn haproxy_available() -> bool {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CORTEX_REQUIRE_HAPROXY").is_none(),
            "CORTEX_REQUIRE_HAPROXY is set and haproxy is not installed \
             (scripts/peers install installs it: apt-get install haproxy)"
        );
        eprintln!(
            "SKIPPED: haproxy is not installed (apt-get install haproxy, or scripts/peers install); \
             set CORTEX_REQUIRE_HAPROXY=1 to fail instead"
        );
    }
    found
}

/// An HAProxy of the test's own in front of `servers` (name, address), with a stats page on a
/// port of its own; killed when dropped.
struct HaProxy {
    child: Child,
    addr: SocketAddr,
    stats: SocketAddr,
    dir: PathBuf,
}

impl HaProxy {
    /// The configuration docs/operations.md shows, on `port`, with the stats page on `stats`.
    fn config(port: u16, stats: u16, servers: &[(&str, SocketAddr)]) -> String {
        let mut cfg = format!(
            "global
    maxconn 4096
    nbthread 1

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    retries 3
    option redispatch 1

frontend realtime
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
"
        );
        for (name, addr) in servers {
            cfg.push_str(&format!("    server {name} {addr} check\n"));
        }
        cfg.push_str(&format!(
            "
frontend stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"
        ));
        cfg
    }

    fn start(servers: &[(&str, SocketAddr)]) -> HaProxy {
        let (port, stats) = (Redis::free_port(), Redis::free_port());
        let dir = temp_path("haproxy");
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, HaProxy::config(port, stats, servers)).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy starts");
        let mut h = HaProxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stats: SocketAddr::from(([127, 0, 0, 1], stats)),
            dir,
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(h.addr).is_err()
            || std::net::TcpStream::connect(h.stats).is_err()
        {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", h.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy did not listen within {WAIT:?}:\n{}",
                h.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/api/ws", self.addr)
    }

    /// What HAProxy's stats page says of server `name` of the backend (`UP`, `DOWN`, ...).
    async fn status_of(&self, name: &str) -> String {
        let (code, csv) = get(&format!("http://{}/stats;csv", self.stats)).await;
        assert_eq!(code, 200, "{csv}");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
        let (px, sv, st) = (col("pxname"), col("svname"), col("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f[px] == "nodes" && f[sv] == name)
            .map(|f| f[st].to_owned())
            .unwrap_or_else(|| panic!("no server {name} in:\n{csv}"))
    }

    /// Waits until HAProxy says server `name` is `want` (`UP` or `DOWN`); how long it took.
    async fn wait_status(&self, name: &str, want: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.status_of(name).await;
            // `UP 1/2` and `DOWN 1/2` are transitions: not there yet.
            if status == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "HAProxy still says server {name} is {status:?}, not {want}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP forwarder to a Redis that the test can cut: every forwarded connection dropped and
/// the port closed (connections refused), as if the network between one node and Redis went
/// away; and restore (the same port listens again).
struct Cutter {
    port: u16,
    backend: u16,
    /// Cancelled by [`Cutter::cut`]: stops the listener and every forwarded connection.
    cut: Mutex<CancellationToken>,
}

impl Cutter {
    async fn start(backend: u16) -> Cutter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let c = Cutter {
            port,
            backend,
            cut: Mutex::new(CancellationToken::new()),
        };
        c.serve(listener);
        c
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (cut, backend) = (self.cut.lock().unwrap().clone(), self.backend);
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    _ = cut.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.lock().unwrap().cancel();
    }

    async fn restore(&self) {
        *self.cut.lock().unwrap() = CancellationToken::new();
        let deadline = Instant::now() + WAIT;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "port {} again: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.cut.lock().unwrap().cancel();
    }
}

/// `cortex-realtime serve` on the Redis at `url`: the process and its address.
async fn serve(url: &str) -> (Proc, SocketAddr) {
    let mut p = Proc::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            url,
            // Node A's clients catch up on what they missed while it could not reach Redis,
            // and the drained node's clients on what they missed while reconnecting: keep more
            // than the default 100 events per channel, so no wait on this busy machine can
            // outrun it (the org channel gets 10 events a second).
            "--history-events",
            "1000",
        ],
        &[
            ("CORTEX_JWT_SECRET", SECRET),
            ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
        ],
    );
    let addr = p.listening().await;
    p.sigterm_caught().await;
    (p, addr)
}

/// The node's `cortex_connections` gauge: its authenticated WebSocket connections.
async fn connections(node: SocketAddr) -> u64 {
    let (status, text) = get(&format!("http://{node}/metrics")).await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix("cortex_connections "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Waits until `node` holds `want` connections.
async fn connections_are(node: SocketAddr, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let have = connections(node).await;
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: node {node} holds {have} connections, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One channel as one client saw it.
#[derive(Default, Debug)]
struct Seen {
    /// The offset of the first `subscribed`: events after it are this client's.
    start: Option<u64>,
    epoch: Option<String>,
    /// (offset, payload `n`) of every event, in arrival order.
    events: Vec<(u64, u64)>,
    /// `recovered` of each resubscribe (after a reconnect, or a notice).
    resumes: Vec<bool>,
    problems: Vec<String>,
}

/// What one client saw.
#[derive(Default, Debug)]
struct Log {
    connects: u32,
    /// Reconnects caused by a 1001 close (a drain).
    drained: u32,
    /// Every other reason a connection ended or an attempt failed.
    other_ends: Vec<String>,
    channels: HashMap<String, Seen>,
    stopped: Option<String>,
}

impl Log {
    fn subscribed(&self) -> bool {
        self.channels.len() == 2 && self.channels.values().all(|s| s.start.is_some())
    }

    /// Resubscribed to both channels since the last reconnect (`resumes` counts each).
    fn resumed(&self, times: usize) -> bool {
        self.channels.len() == 2 && self.channels.values().all(|s| s.resumes.len() >= times)
    }

    fn last_offset(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |s| {
            s.events
                .last()
                .map_or(s.start.unwrap_or(0), |&(offset, _)| offset)
        })
    }
}

struct TestClient {
    _client: cortex_client::Client,
    log: Arc<Mutex<Log>>,
    channel: String,
}

/// Client `i` through `url`: `u_<i>` of the org, on the org's channel and `task:c<i>`.
fn start_client(url: &str, i: usize) -> TestClient {
    let channel = format!("task:c{i}");
    let (client, mut events) = cortex_client::Client::builder(url)
        .token(token(&format!("u_{i}"), ORG))
        .subscribe(ORG_CHANNEL.parse().unwrap())
        .subscribe(channel.parse().unwrap())
        .start()
        .unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let record = log.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let mut log = record.lock().unwrap();
            match ev {
                ClientEvent::Connected(_) => log.connects += 1,
                ClientEvent::Subscribed {
                    channel,
                    offset,
                    epoch,
                } => {
                    let seen = log.channels.entry(channel.to_string()).or_default();
                    if seen.start.is_some() {
                        seen.problems.push(format!("subscribed twice at {offset}"));
                    }
                    seen.start = Some(offset);
                    seen.epoch = Some(epoch);
                }
                ClientEvent::Resubscribed {
                    channel,
                    recovered,
                    epoch,
                    ..
                } => {
                    let seen = log.channels.entry(channel.to_string()).or_default();
                    seen.resumes.push(recovered);
                    if seen.epoch.as_deref() != Some(epoch.as_str()) {
                        seen.problems.push(format!("a new epoch {epoch}"));
                    }
                }
                ClientEvent::Event(e) => {
                    let seen = log.channels.entry(e.channel.to_string()).or_default();
                    if seen.epoch.as_deref() != Some(e.epoch.as_str()) {
                        seen.problems.push(format!("event in epoch {}", e.epoch));
                    }
                    seen.events
                        .push((e.offset, e.payload["n"].as_u64().unwrap_or(0)));
                }
                ClientEvent::Reconnecting { cause, .. } => match cause {
                    Disconnect::Closed { code: 1001, .. } => log.drained += 1,
                    other => log.other_ends.push(other.to_string()),
                },
                ClientEvent::Stopped(why) => log.stopped = Some(why.to_string()),
                other => log.other_ends.push(format!("{other:?}")),
            }
        }
    });
    TestClient {
        _client: client,
        log,
        channel,
    }
}

/// Waits until `check` holds for every client of `clients`.
async fn every_client(
    clients: &[TestClient],
    within: Duration,
    what: &str,
    check: impl Fn(&Log) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let behind: Vec<usize> = clients
            .iter()
            .enumerate()
            .filter(|(_, c)| !check(&c.log.lock().unwrap()))
            .map(|(i, _)| i)
            .collect();
        if behind.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let first = &clients[behind[0]];
            panic!(
                "{what}: {} clients not there after {within:?}; the first ({}): {:?}",
                behind.len(),
                first.channel,
                first.log.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects clients `range` through HAProxy and waits until each has subscribed both channels.
async fn connect(url: &str, range: std::ops::Range<usize>, what: &str) -> Vec<TestClient> {
    let clients: Vec<TestClient> = range.map(|i| start_client(url, i)).collect();
    every_client(&clients, Duration::from_secs(10), what, Log::subscribed).await;
    clients
}

/// What the publisher has had accepted: per channel, how many events (their offsets are
/// 1..=count, their payloads' `n` the same).
type Published = Arc<Mutex<HashMap<String, u64>>>;

/// Publishes through `url` every 100 ms until `stop`: a batch of one event on the org's channel
/// and one on each of the next [`PER_TICK`] clients' channels, each with an idempotency key.
/// A batch that is not answered 202 (a node going away, a node without Redis, no answer) is
/// sent again as it was until it is; the keys make that safe.
fn publisher(url: String, stop: CancellationToken) -> (Published, tokio::task::JoinHandle<u32>) {
    let published: Published = Arc::default();
    let counts = published.clone();
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut retries = 0;
        let mut next_client = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut batch_no = 0u64;
        while !stop.is_cancelled() {
            tick.tick().await;
            batch_no += 1;
            let mut channels = vec![ORG_CHANNEL.to_owned()];
            for _ in 0..PER_TICK {
                channels.push(format!("task:c{next_client}"));
                next_client = (next_client + 1) % ALL;
            }
            let mut n_of = Vec::new();
            let events: Vec<Value> = {
                let counts = counts.lock().unwrap();
                channels
                    .iter()
                    .map(|ch| {
                        let n = counts.get(ch).copied().unwrap_or(0) + 1;
                        n_of.push(n);
                        let mut e = event(ORG, &[ch.as_str()], n);
                        e["idempotencyKey"] = json!(format!("b{batch_no}-{ch}"));
                        e
                    })
                    .collect()
            };
            let body = json!({ "events": events });
            let started = Instant::now();
            loop {
                match try_publish_with(&http, &url, PUBLISH_KEY, &body).await {
                    Ok((202, _)) => break,
                    Ok((status, answer)) => {
                        assert!(
                            status == 503 || status == 502,
                            "publish answered {status}: {answer}"
                        );
                    }
                    Err(_) => {}
                }
                retries += 1;
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "batch {batch_no} not accepted within 15 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut counts = counts.lock().unwrap();
            for (ch, n) in channels.into_iter().zip(n_of) {
                counts.insert(ch, n);
            }
        }
        retries
    });
    (published, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_clients_lose_nothing_when_a_node_loses_redis_or_drains() {
    if !haproxy_available() {
        return;
    }
    let started = Instant::now();
    let redis = Redis::start();
    // Node A reaches Redis through a forwarder the test can cut; node B directly.
    let cutter = Cutter::start(redis.port).await;
    let (mut proc_a, a) = serve(&cutter.url()).await;
    let (_proc_b, b) = serve(&redis.url()).await;
    ready_at(a, 200, WAIT).await;
    ready_at(b, 200, WAIT).await;
    let lb = HaProxy::start(&[("a", a), ("b", b)]);
    lb.wait_status("a", "UP", WAIT).await;
    lb.wait_status("b", "UP", WAIT).await;
    let url = lb.ws_url();

    // A few hundred clients through HAProxy: round robin puts about half on each node.
    let mut clients = connect(&url, 0..FIRST, "first clients subscribed").await;
    let (on_a, on_b) = (connections(a).await, connections(b).await);
    assert_eq!(on_a + on_b, FIRST as u64, "every client is on a node");
    assert!(
        on_a >= FIRST as u64 / 4 && on_b >= FIRST as u64 / 4,
        "spread over both nodes: {on_a} on A, {on_b} on B"
    );
    let stop = CancellationToken::new();
    let (published, publishing) = publisher(format!("http://{}/api/events", lb.addr), stop.clone());

    // (b) Node A loses Redis: not ready, out of HAProxy's rotation within about a second; new
    // clients all land on B; A keeps every connection it has.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cutter.cut();
    let cut = Instant::now();
    ready_at(a, 503, WAIT).await;
    let not_ready = cut.elapsed();
    let marked_down = lb.wait_status("a", "DOWN", Duration::from_secs(3)).await;
    eprintln!("Redis cut: /readyz 503 after {not_ready:?}, HAProxy DOWN {marked_down:?} later");
    clients.extend(connect(&url, FIRST..FIRST + LATER, "clients while A has no Redis").await);
    connections_are(b, on_b + LATER as u64, "new clients while A has no Redis").await;
    assert_eq!(connections(a).await, on_a, "A keeps its connections");
    // Events keep coming (through B) while A is cut off: A's clients get them once A is back.
    let org_count = || {
        published
            .lock()
            .unwrap()
            .get(ORG_CHANNEL)
            .copied()
            .unwrap_or(0)
    };
    let before = org_count();
    let deadline = Instant::now() + WAIT;
    while org_count() < before + 3 {
        assert!(
            Instant::now() < deadline,
            "publishes stalled while A had no Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Redis back for A while events keep flowing: ready again, in rotation again, new clients
    // on both nodes again; A's clients get the events published while it was cut off from
    // Redis from history, with no notice (its refill asks Redis again until its command
    // connection is back, even when pub/sub comes back first).
    cutter.restore().await;
    ready_at(a, 200, Duration::from_secs(10)).await;
    lb.wait_status("a", "UP", Duration::from_secs(3)).await;
    let restored = cut.elapsed();
    clients.extend(
        connect(
            &url,
            FIRST + LATER..FIRST + 2 * LATER,
            "clients after A's Redis is back",
        )
        .await,
    );
    let (a_now, b_now) = (connections(a).await, connections(b).await);
    assert_eq!(a_now + b_now, (FIRST + 2 * LATER) as u64);
    assert!(
        a_now >= on_a + LATER as u64 / 4,
        "HAProxy sends A clients again: {} of {LATER} new ones",
        a_now - on_a
    );
    for c in &clients {
        let log = c.log.lock().unwrap();
        assert!(
            log.connects == 1 && log.drained == 0 && log.other_ends.is_empty(),
            "{}: no connection ended yet: {log:?}",
            c.channel
        );
    }

    // (a) Node A drains (SIGTERM): its clients get 1001, reconnect through HAProxy to B and
    // resume; A exits.
    let drain = Instant::now();
    proc_a.terminate();
    let exit = proc_a.wait_exit(Duration::from_secs(12)).await;
    assert!(exit.success(), "A drained and exited: {exit}");
    let drained = clients
        .iter()
        .filter(|c| c.log.lock().unwrap().drained == 1)
        .count();
    assert_eq!(drained as u64, a_now, "every client of A got 1001");
    every_client(
        &clients,
        Duration::from_secs(15),
        "A's clients resumed on B",
        |log| log.drained == 0 || (log.connects == 2 && log.resumed(1)),
    )
    .await;
    let resumed = drain.elapsed();
    connections_are(b, (FIRST + 2 * LATER) as u64, "every client on B").await;
    // New connections after the drain: all on B.
    clients.extend(connect(&url, FIRST + 2 * LATER..ALL, "clients after the drain").await);
    connections_are(b, ALL as u64, "new clients after the drain").await;

    // Publishing stops; every client gets every event of its channels published after it
    // subscribed, exactly once, in order, in one epoch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let retries = publishing.await.expect("the publisher");
    let published = published.lock().unwrap().clone();
    let org_events = published[ORG_CHANNEL];
    every_client(
        &clients,
        Duration::from_secs(10),
        "every event delivered",
        |log| {
            log.last_offset(ORG_CHANNEL) == org_events
                && log.channels.iter().all(|(ch, _)| {
                    log.last_offset(ch) == published.get(ch.as_str()).copied().unwrap_or(0)
                })
        },
    )
    .await;
    let mut deliveries = 0;
    for c in &clients {
        let log = c.log.lock().unwrap();
        assert!(log.stopped.is_none(), "{}: {log:?}", c.channel);
        for (ch, seen) in &log.channels {
            assert!(seen.problems.is_empty(), "{} on {ch}: {seen:?}", c.channel);
            assert!(
                seen.resumes.iter().all(|&r| r),
                "{} on {ch}: every resume recovered: {seen:?}",
                c.channel
            );
            let start = seen.start.unwrap();
            let want: Vec<(u64, u64)> = (start + 1..=published.get(ch).copied().unwrap_or(0))
                .map(|o| (o, o))
                .collect();
            assert_eq!(
                seen.events, want,
                "{} on {ch}: every event after offset {start}, once, in order",
                c.channel
            );
            deliveries += seen.events.len();
        }
    }
    assert!(
        org_events > 20,
        "events were published throughout: {org_events}"
    );
    eprintln!(
        "{} clients ({} drained from A), {org_events} org events, {deliveries} deliveries checked, \
         {retries} publish retries; A back in rotation {restored:?} after the cut, A's clients \
         resumed {resumed:?} after SIGTERM; {:?} in all",
        clients.len(),
        drained,
        started.elapsed()
    );
}
