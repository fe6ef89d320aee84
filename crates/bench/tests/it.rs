//! Integration tests of the load generator: the real `cortex-bench run` binary, as a
//! subprocess with its worker processes, against a Cortex Realtime server started in this
//! process on 127.0.0.1 (and, with `CORTEX_BENCH_PEERS=1`, against nchan and socket.io started
//! by `scripts/peers`). Every test reads the `--json` report and checks its figures.
//!
//! The tests take turns (see [`TURN`]): each keeps both cores of a small machine busy, and the
//! fixed rate, the reconnect time and the server's CPU would mean little while another runs. The
//! in-process server is this process, so `--server-pid` is this process's own PID.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cortex_bench::report::{PublishReport, RunReport};
use cortex_realtime::{Config, Limits, Server, ServerHandle};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::process::Command;
use tokio::sync::watch;

const SECRET: &str = "it-bench-secret";
const PUBLISH_KEY: &str = "it-bench-publish-key";

/// Held for the whole of each test: one benchmark at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a run may take before the test gives up on it (and kills it).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

// --- the server -------------------------------------------------------------------------------

fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Starts a server on `listen` with `limits`, retrying for a few seconds while the address is
/// still taken (a restart on the same port).
async fn start_server(listen: SocketAddr, limits: Limits) -> ServerHandle {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let started = Server::builder()
            .config(Config {
                listen,
                limits: limits.clone(),
                ..Config::default()
            })
            .jwt_secret(SECRET)
            .publish_key(PUBLISH_KEY)
            .start()
            .await;
        match started {
            Ok(server) => return server,
            Err(e) if Instant::now() < deadline => {
                eprintln!("it: starting the server on {listen}: {e}; again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the server did not start on {listen}: {e}"),
        }
    }
}

/// How many connections this process's servers have closed with `code` so far, from the
/// server's `/metrics` (a blocking HTTP/1.0 GET: the callers poll it from a plain closure).
fn closes_with(addr: std::net::SocketAddr, code: u16) -> u64 {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).expect("the server answers /metrics");
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("the request goes out");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("the metrics arrive");
    let prefix = format!("cortex_closes_total{{code=\"{code}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| {
            n.trim().parse::<f64>().expect("a counter value") as u64
        })
}

/// Waits up to `limit` for `cond`; says whether it came true.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- the load generator -----------------------------------------------------------------------

/// The arguments of a small run against the Cortex server at `addr`.
fn cortex_args(addr: SocketAddr, conns: u32) -> Vec<String> {
    let mut args = strings(&["--addr", &addr.to_string()]);
    args.extend(strings(&["--secret", SECRET, "--publish-key", PUBLISH_KEY]));
    args.extend(small(conns));
    args
}

/// What every run here shares: few connections over 2 workers and 2 source addresses, short
/// waits.
fn small(conns: u32) -> Vec<String> {
    strings(&[
        "--conns",
        &conns.to_string(),
        "--workers",
        "2",
        "--source-addrs",
        "2",
        "--idle",
        "200ms",
        "--settle",
        "3s",
    ])
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn own_pid() -> String {
    std::process::id().to_string()
}

/// A running `cortex-bench run`.
struct Bench {
    child: tokio::process::Child,
    json: PathBuf,
    args: Vec<String>,
    stdout: tokio::task::JoinHandle<String>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_done: tokio::task::JoinHandle<()>,
    connected: watch::Receiver<bool>,
    started: Instant,
}

/// How a run ended.
struct Outcome {
    status: ExitStatus,
    report: Option<RunReport>,
    secs: f64,
}

impl Bench {
    fn start(args: &[String]) -> Bench {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let json = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "bench-it-{}-{}.json",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&json);
        eprintln!("it: cortex-bench run {}", args.join(" "));
        let mut child = Command::new(env!("CARGO_BIN_EXE_cortex-bench"))
            .arg("run")
            .args(args)
            .arg("--json")
            .arg(&json)
            .env_remove("CORTEX_JWT_SECRET")
            .env_remove("CORTEX_PUBLISH_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cortex-bench starts");
        let mut out = child.stdout.take().expect("piped");
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text).await;
            text
        });
        let err = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, connected) = watch::channel(false);
        let stderr_done = {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // `bench: N connected, M failed in S s`, once every connection was tried.
                    if line.starts_with("bench: ") && line.contains(" connected, ") {
                        tx.send_replace(true);
                    }
                    stderr.lock().expect("not poisoned").push(line);
                }
            })
        };
        Bench {
            child,
            json,
            args: args.to_vec(),
            stdout,
            stderr,
            stderr_done,
            connected,
            started: Instant::now(),
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().expect("not poisoned").join("\n")
    }

    /// Waits for the line saying every connection was tried.
    async fn connected(&mut self) {
        let waited = tokio::time::timeout(RUN_TIMEOUT, self.connected.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok());
        if !waited {
            panic!(
                "cortex-bench never said it connected; stderr:\n{}",
                self.stderr_text()
            );
        }
    }

    /// Waits for the run to end (killing it if it takes too long) and reads its report.
    async fn finish(mut self) -> Outcome {
        let status = match tokio::time::timeout(RUN_TIMEOUT, self.child.wait()).await {
            Ok(status) => status.expect("waiting for cortex-bench"),
            Err(_) => panic!(
                "cortex-bench run {} did not exit within {RUN_TIMEOUT:?}; stderr:\n{}",
                self.args.join(" "),
                self.stderr_text()
            ),
        };
        let secs = self.started.elapsed().as_secs_f64();
        // The workers write to the same stderr; they exit with the coordinator.
        let limit = Duration::from_secs(10);
        let stdout = tokio::time::timeout(limit, &mut self.stdout)
            .await
            .map(|r| r.expect("the stdout reader"))
            .unwrap_or_default();
        let _ = tokio::time::timeout(limit, &mut self.stderr_done).await;
        eprintln!(
            "it: exited with {status} after {secs:.1} s\n{stdout}{}",
            self.stderr_text()
        );
        let report = std::fs::read_to_string(&self.json).ok().map(|text| {
            serde_json::from_str::<RunReport>(&text)
                .unwrap_or_else(|e| panic!("the report does not parse: {e}\n{text}"))
        });
        let _ = std::fs::remove_file(&self.json);
        Outcome {
            status,
            report,
            secs,
        }
    }
}

/// Runs `cortex-bench run ARGS` to its end.
async fn bench(args: &[String]) -> Outcome {
    Bench::start(args).finish().await
}

impl Outcome {
    /// The report, which every run that got as far as reporting writes.
    fn report(&self) -> &RunReport {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report (exit status {})", self.status))
    }

    fn assert_success(&self) {
        assert!(
            self.status.success(),
            "cortex-bench failed: {} (its output is above)",
            self.status
        );
    }
}

/// The checks every clean run passes: every connection made, every publish accepted and fanned
/// out to `fanout` readers, every expected delivery received once and in order, sane latency and
/// frame size, and, when `--server-pid` was given, the server's memory and CPU read.
fn assert_clean(r: &RunReport, conns: u32, fanout: u64, event_bytes: usize) -> &PublishReport {
    let c = &r.connect;
    assert_eq!(c.connected, conns, "connected");
    assert_eq!(c.failed, 0, "failed connections: {:?}", c.errors);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert!(c.per_sec > 0.0, "connects per second: {}", c.per_sec);

    let p = r.publish.as_ref().expect("a publish phase");
    assert_eq!(p.publish_errors, 0, "publish errors");
    assert!(p.published > 0, "nothing was published");
    assert!(p.expected > 0, "no delivery was expected");
    assert_eq!(
        p.expected,
        p.published * fanout,
        "every event goes to {fanout} reading subscribers"
    );
    assert_eq!(p.received, p.expected, "received");
    assert_eq!(
        (p.lost, p.duplicates, p.out_of_order, p.misrouted, p.dropped),
        (0, 0, 0, 0, 0),
        "lost, duplicates, out of order, misrouted, dropped connections"
    );

    let l = &p.latency_us;
    assert!(l.p50 > 0, "latency p50 {}", l.p50);
    assert!(
        l.p50 <= l.p99 && l.p99 <= l.max,
        "latency p50 {} p99 {} max {}",
        l.p50,
        l.p99,
        l.max
    );
    let want = event_bytes as f64;
    assert!(
        (want * 0.75..=want * 1.25).contains(&p.frame_bytes),
        "frame bytes {} for --event-bytes {event_bytes}",
        p.frame_bytes
    );
    assert!(p.deliveries_per_sec > 0.0 && p.events_per_sec > 0.0);

    if !r.memory.pids.is_empty() {
        assert!(r.memory.rss_before > 0, "RSS before connecting");
        assert!(r.memory.rss_connected > 0, "RSS connected");
        assert!(r.memory.rss_after_publish > 0, "RSS after publishing");
        assert!(
            p.server_cpu_secs > 0.0,
            "server CPU: {} s",
            p.server_cpu_secs
        );
        assert!(p.server_us_per_delivery > 0.0 && p.server_cores > 0.0);
    }
    p
}

// --- 1. the shapes at saturation --------------------------------------------------------------

const CONNS: u32 = 300;
const EVENT_BYTES: usize = 400;

/// One shape at saturation with `--check`, against a fresh server.
async fn saturation(shape: &str, extra: &[&str], fanout: u64) {
    let _turn = TURN.lock().await;
    let server = start_server(any_port(), Limits::default()).await;
    let mut args = cortex_args(server.local_addr(), CONNS);
    args.extend(strings(&[
        "--shape",
        shape,
        "--duration",
        "1s",
        "--event-bytes",
        &EVENT_BYTES.to_string(),
        "--server-pid",
        &own_pid(),
        "--label",
        shape,
        "--check",
    ]));
    args.extend(strings(extra));
    let o = bench(&args).await;
    o.assert_success();
    let r = o.report();
    assert_eq!(r.label, shape);
    assert_eq!(
        serde_json::to_value(r.shape).expect("serializes"),
        serde_json::json!(shape)
    );
    assert_eq!((r.conns, r.workers, r.source_addrs), (CONNS, 2, 2));
    assert_eq!(r.memory.pids, vec![std::process::id()]);
    let p = assert_clean(r, CONNS, fanout, EVENT_BYTES);
    assert_eq!(p.offered_rate, None, "saturation has no offered rate");
    assert!(r.hold.is_none());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_shape_at_saturation() {
    saturation("org", &[], u64::from(CONNS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_shape_at_saturation() {
    saturation("project", &["--group", "10"], 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_per_connection() {
    // Only the shape's channel: events still reach exactly the group, nothing else arrives.
    saturation("project", &["--group", "10", "--subscriptions", "one"], 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_shape_at_saturation() {
    saturation("agent", &[], 1).await;
}

// --- 2. a fixed rate --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate() {
    let _turn = TURN.lock().await;
    let server = start_server(any_port(), Limits::default()).await;
    // The agent shape: publishing is spread over the publisher tasks (one request in flight
    // each), so the rate does not depend on one round trip to this unoptimized server fanning
    // out to every connection, as it would on the one org channel.
    let conns = 200;
    let mut args = cortex_args(server.local_addr(), conns);
    args.extend(strings(&[
        "--shape",
        "agent",
        "--rate",
        "200",
        "--duration",
        "2s",
        "--event-bytes",
        "250",
        "--check",
    ]));
    let o = bench(&args).await;
    o.assert_success();
    let r = o.report();
    assert!(r.memory.pids.is_empty() && r.memory.rss_connected == 0);
    let p = assert_clean(r, conns, 1, 250);
    assert_eq!(p.offered_rate, Some(200.0));
    assert!(
        (300..=500).contains(&p.published),
        "published {} in 2 s at 200/s",
        p.published
    );
    assert!(
        (150.0..=250.0).contains(&p.events_per_sec),
        "events per second {}",
        p.events_per_sec
    );
    assert!((1.9..3.0).contains(&p.secs), "publish phase {} s", p.secs);
    server.shutdown().await;
}

// --- 3. slow consumers ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_and_the_readers_get_everything() {
    let _turn = TURN.lock().await;
    let server = start_server(
        any_port(),
        Limits {
            outbox_bytes: 2 << 20,
            ..Limits::default()
        },
    )
    .await;
    let addr = server.local_addr();
    let slow_closes = closes_with(addr, 4009);
    // 10% of 100 never read (connections 0 to 9). The kernel takes some 4 to 5 MB on a stalled
    // socket before the server's outbox fills at all (the sender's buffer grows to
    // net.ipv4.tcp_wmem's maximum, 4 MiB by default), so the events are as large as the server
    // accepts and the phase long: 9 to 17 MB each here, with the machine busy or not.
    let (conns, stalled) = (100, 10);
    let event_bytes = 60_000;
    let mut args = cortex_args(server.local_addr(), conns);
    args.extend(strings(&[
        "--shape",
        "org",
        "--stalled-percent",
        "10",
        "--duration",
        "4s",
        "--event-bytes",
        &event_bytes.to_string(),
        // Readers may fall behind by about 5 events on average, far inside their outbox (2 MiB,
        // some 34 events): a reader starved of CPU for a moment is not a slow consumer.
        "--max-lag",
        "500",
        "--server-pid",
        &own_pid(),
        "--check",
    ]));
    let o = bench(&args).await;
    o.assert_success();
    let r = o.report();
    assert_eq!(r.stalled_percent, 10);
    // Stalled connections connect like the rest but are not expected to receive.
    let p = assert_clean(r, conns, u64::from(conns - stalled), event_bytes);
    let stalled_bytes = p.published as f64 * p.frame_bytes;
    eprintln!("it: each stalled connection was sent {stalled_bytes:.0} bytes");

    // The server closed exactly the stalled ones, as slow consumers (4009). The close happens
    // once the close frame cannot be written for a second, or when the socket goes with the
    // worker: either way it is counted as 4009.
    let closed = || closes_with(addr, 4009) - slow_closes;
    let all = eventually(Duration::from_secs(5), || closed() >= u64::from(stalled)).await;
    assert!(
        all,
        "the server closed {} slow consumers, not {stalled} (each was sent {stalled_bytes:.0} bytes)",
        closed()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(closed(), u64::from(stalled), "only the stalled are closed");
    server.shutdown().await;
}

// --- 4. reconnects after a restart ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_come_back_after_a_server_restart() {
    let _turn = TURN.lock().await;
    let server = start_server(any_port(), Limits::default()).await;
    let addr = server.local_addr();
    let conns = 200;
    let mut args = cortex_args(addr, conns);
    args.extend(strings(&[
        "--duration",
        "0s",
        "--hold",
        "6s",
        "--reconnect-base",
        "100ms",
        "--check",
    ]));
    let mut run = Bench::start(&args);
    run.connected().await;
    // The hold phase starts after --idle (200 ms): restart inside it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart = Instant::now();
    server.shutdown().await;
    let server = start_server(addr, Limits::default()).await;
    eprintln!(
        "it: the server restarted on {addr} in {:.2} s",
        restart.elapsed().as_secs_f64()
    );
    // Every connection is back, on the new server, well before the hold ends.
    let back = eventually(Duration::from_secs(5), || {
        server.node().open_connections() == conns as usize
    })
    .await;
    let open = server.node().open_connections();
    let o = run.finish().await;
    assert!(back, "the new server holds {open} connections, not {conns}");
    o.assert_success();
    let r = o.report();
    assert_eq!((r.connect.connected, r.connect.failed), (conns, 0));
    assert!(r.publish.is_none(), "--duration 0s publishes nothing");
    let h = r.hold.as_ref().expect("a hold phase");
    assert!(h.dropped, "the restart went unnoticed");
    assert!(
        h.min_connected < conns,
        "fewest connected {}",
        h.min_connected
    );
    let all_back = h.all_back_secs.expect("every connection came back");
    assert!(all_back < 5.0, "all back after {all_back} s");
    assert!(
        h.reconnects >= u64::from(conns),
        "{} reconnects",
        h.reconnects
    );
    assert!(h.secs >= 6.0, "held {} s", h.secs);
    server.shutdown().await;
}

// --- 5. wrong credentials ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_check_without_hanging() {
    let _turn = TURN.lock().await;
    let server = start_server(any_port(), Limits::default()).await;
    let addr = server.local_addr();
    let conns = 200;
    let with_secret = |secret: &str, key: &str, extra: &[&str]| {
        let mut args = strings(&["--addr", &addr.to_string()]);
        args.extend(strings(&["--secret", secret, "--publish-key", key]));
        args.extend(small(conns));
        args.extend(strings(extra));
        args
    };

    // A wrong secret: every connection is refused (401). The run still reports, publishes to
    // nobody, and exits; --check fails it, since nothing could be checked.
    let o = bench(&with_secret(
        "not-the-secret",
        PUBLISH_KEY,
        &["--duration", "1s", "--check"],
    ))
    .await;
    assert_eq!(o.status.code(), Some(1), "exit status {}", o.status);
    assert!(o.secs < 20.0, "took {} s", o.secs);
    let r = o.report();
    assert_eq!((r.connect.connected, r.connect.failed), (0, conns));
    assert!(!r.connect.errors.is_empty(), "no error was reported");
    assert!(
        r.connect.errors.iter().all(|e| e.contains("401")),
        "{:?}",
        r.connect.errors
    );
    let p = r.publish.as_ref().expect("a publish phase");
    assert_eq!((p.expected, p.received, p.lost), (0, 0, 0));
    assert_eq!(server.node().open_connections(), 0);

    // Without --check the same run is not an error: the report says what happened.
    let o = bench(&with_secret(
        "not-the-secret",
        PUBLISH_KEY,
        &["--duration", "0s"],
    ))
    .await;
    o.assert_success();
    assert_eq!(o.report().connect.failed, conns);

    // A wrong publish key: everyone connects, every publish is refused, nothing is expected;
    // --check fails that too.
    let o = bench(&with_secret(
        SECRET,
        "not-the-publish-key",
        &["--duration", "1s", "--check"],
    ))
    .await;
    assert_eq!(o.status.code(), Some(1), "exit status {}", o.status);
    let r = o.report();
    assert_eq!((r.connect.connected, r.connect.failed), (conns, 0));
    let p = r.publish.as_ref().expect("a publish phase");
    assert_eq!((p.published, p.expected), (0, 0));
    assert!(p.publish_errors > 0, "no publish error");
    server.shutdown().await;
}

// --- 6. the peers -----------------------------------------------------------------------------

fn peers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peers")
}

/// A peer started by `scripts/peers start`; stopped (`scripts/peers stop`) when dropped, the
/// test failed or not.
struct Peer {
    dir: PathBuf,
    addr: SocketAddr,
    pids: String,
}

impl Peer {
    fn start(kind: &str) -> Peer {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bench-it-peer-{kind}-{}", std::process::id()));
        // A free port, as far as anyone can tell without holding it.
        let port = TcpListener::bind(any_port())
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let out = std::process::Command::new(peers_script())
            .args(["start", kind, &port.to_string()])
            .arg(&dir)
            .output()
            .expect("scripts/peers runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/peers start {kind} failed: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pids = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pids="))
            .unwrap_or_else(|| panic!("no pids= line from scripts/peers: {stdout}"))
            .to_owned();
        eprintln!("it: {kind} on 127.0.0.1:{port}, pids {pids}");
        Peer {
            dir,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            pids,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        match std::process::Command::new(peers_script())
            .arg("stop")
            .arg(&self.dir)
            .status()
        {
            // Its logs stay when the test failed.
            Ok(s) if s.success() && !std::thread::panicking() => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            Ok(s) if s.success() => {}
            other => eprintln!("it: scripts/peers stop {}: {other:?}", self.dir.display()),
        }
    }
}

/// The three shapes with `--check` against a peer, when `CORTEX_BENCH_PEERS=1`.
async fn peer(kind: &str) {
    if std::env::var("CORTEX_BENCH_PEERS").as_deref() != Ok("1") {
        eprintln!("it: skipped: set CORTEX_BENCH_PEERS=1 to run cortex-bench against {kind}");
        return;
    }
    let _turn = TURN.lock().await;
    let install = std::process::Command::new(peers_script())
        .arg("install")
        .status()
        .expect("scripts/peers runs");
    assert!(install.success(), "scripts/peers install: {install}");
    let peer = Peer::start(kind);
    for (shape, extra, fanout) in [
        ("org", &[][..], u64::from(CONNS)),
        ("project", &["--group", "10"][..], 10),
        ("agent", &[][..], 1),
    ] {
        let mut args = strings(&["--target", kind, "--addr", &peer.addr.to_string()]);
        args.extend(small(CONNS));
        args.extend(strings(&[
            "--shape",
            shape,
            "--duration",
            "1s",
            "--event-bytes",
            &EVENT_BYTES.to_string(),
            "--server-pid",
            &peer.pids,
            "--check",
        ]));
        args.extend(strings(extra));
        let o = bench(&args).await;
        o.assert_success();
        let r = o.report();
        assert_eq!(
            serde_json::to_value(r.target).expect("serializes"),
            serde_json::json!(kind)
        );
        assert_eq!(r.memory.pids.len(), peer.pids.split(',').count());
        assert_clean(r, CONNS, fanout, EVENT_BYTES);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nchan_peer() {
    peer("nchan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_peer() {
    peer("socketio").await;
}

// --- TLS --------------------------------------------------------------------------------------

/// A CA and a certificate it signed for 127.0.0.1, made by `openssl` in `dir`: (ca, cert, key).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=bench CA",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_address_is_reached_over_tls_with_the_given_ca() {
    let _turn = TURN.lock().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-tls-{}", std::process::id()));
    let (ca, cert, key) = tls_files(&dir);
    let server = Server::builder()
        .config(Config {
            tls: Some(cortex_realtime::TlsConfig::new(&cert, &key)),
            ..Config::default()
        })
        .jwt_secret(SECRET)
        .publish_key(PUBLISH_KEY)
        .start()
        .await
        .expect("a TLS server");
    let wss = format!("wss://{}", server.local_addr());
    let mut args = strings(&["--addr", &wss, "--ca", ca.to_str().unwrap()]);
    args.extend(strings(&["--secret", SECRET, "--publish-key", PUBLISH_KEY]));
    args.extend(small(CONNS));
    args.extend(strings(&[
        "--shape",
        "project",
        "--group",
        "10",
        "--duration",
        "1s",
        "--event-bytes",
        "400",
        "--check",
    ]));
    let o = bench(&args).await;
    o.assert_success();
    let r = o.report();
    // Every event reaches its group of 10, over TLS, once and in order.
    assert_clean(r, CONNS, 10, EVENT_BYTES);

    // Without the CA, the workers refuse to start rather than connect in the clear.
    let mut no_ca = strings(&["--addr", &wss]);
    no_ca.extend(strings(&["--secret", SECRET, "--publish-key", PUBLISH_KEY]));
    no_ca.extend(small(10));
    no_ca.extend(strings(&["--duration", "1s"]));
    let o = bench(&no_ca).await;
    assert!(!o.status.success(), "a wss:// run without --ca succeeded");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
