//! The load generator against several nodes sharing a Redis: connections spread over the
//! nodes, publishes over all of them, one node killed (SIGKILL) or drained (SIGTERM) while
//! events flow, and the run must show every client back on the other node, resumed, with every
//! event exactly once and in order, and the fault's figures before, during and after.
//!
//! The nodes are real processes (this test binary started again as [`child_node`], running the
//! library's server on `--redis`), so the fault is a real signal; Redis is a `redis-server` of
//! this test's own on a free port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::free_port;
use cortex_bench::report::RunReport;
use cortex_realtime::{Config, RedisConfig, Server};

const SECRET: &str = "it-nodes-secret";
const PUBLISH_KEY: &str = "it-nodes-publish-key";

/// Not a test of its own: the body of a node process. The parent starts this binary with
/// `CORTEX_BENCH_NODE=ADDR,REDIS_URL` and `--exact child_node`; without the variable it does
/// nothing.
#[test]
fn child_node() {
    let Ok(spec) = std::env::var("CORTEX_BENCH_NODE") else {
        return;
    };
    let (listen, redis) = spec.split_once(',').expect("ADDR,REDIS_URL");
    let listen: SocketAddr = listen.parse().expect("an address");
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async move {
        let server = Server::builder()
            .config(Config {
                listen,
                redis: Some(RedisConfig::new(redis)),
                ..Config::default()
            })
            .jwt_secret(SECRET)
            .publish_key(PUBLISH_KEY)
            .start()
            .await
            .expect("the node starts");
        // SIGTERM drains (1001) and exits, as `serve` does.
        cortex_realtime::shutdown_signal().await;
        server.shutdown().await;
    });
    std::process::exit(0);
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts (scripts/peers install puts it on the machine)");
    let redis = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    (redis, format!("redis://127.0.0.1:{port}"))
}

fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = tcp.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = tcp.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200")
}

fn start_node(redis: &str) -> (Proc, SocketAddr) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let child = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "child_node",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CORTEX_BENCH_NODE", format!("{addr},{redis}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the node process starts");
    let node = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready(addr) {
        assert!(
            Instant::now() < deadline,
            "the node on {addr} never got ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (node, addr)
}

/// Two nodes, 200 connections (100 on each), 40 events/s to all of them through both nodes;
/// `signal` is sent to the first node 2 s in; `extra`: more options. Returns the report.
fn run_with_fault(signal: &str, extra: &[&str]) -> RunReport {
    // One run at a time: each keeps both cores busy.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempdir();
    let (redis, url) = start_redis(&dir);
    let (a, a_addr) = start_node(&url);
    let (b, b_addr) = start_node(&url);
    let json = dir.join("report.json");
    let addrs = format!("{a_addr},{b_addr}");
    let pids = format!("{},{}", a.0.id(), b.0.id());
    let fault = format!("2s=kill -{signal} {}", a.0.id());
    let args = [
        "run",
        "--addr",
        &addrs,
        "--publish-addr",
        &addrs,
        "--secret",
        SECRET,
        "--publish-key",
        PUBLISH_KEY,
        "--conns",
        "200",
        "--workers",
        "2",
        "--source-addrs",
        "2",
        "--shape",
        "org",
        "--subscriptions",
        "one",
        "--rate",
        "40",
        "--duration",
        "7s",
        "--idle",
        "200ms",
        "--settle",
        "5s",
        "--reconnect",
        "--reconnect-base",
        "200ms",
        "--idempotent",
        "--fault",
        &fault,
        "--fault-window",
        "2s",
        "--server-pid",
        &pids,
        "--redis-pid",
        &redis.0.id().to_string(),
        "--check",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    let status = common::run_bench(&args, &json, "against two nodes", Duration::from_secs(90));
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    let report: RunReport = serde_json::from_str(&text).expect("the report parses");
    assert!(
        status.success(),
        "cortex-bench --check failed ({status}); its output is above"
    );
    drop((a, b, redis));
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn tempdir() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "nodes-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

/// What both faults must show.
fn assert_everything_arrived_once_in_order(r: &RunReport) {
    assert_eq!(r.connect.connected, 200, "{:?}", r.connect.errors);
    let p = r.publish.as_ref().expect("a publish phase");
    assert!(p.published >= 200, "published {}", p.published);
    assert_eq!(p.abandoned, 0, "no publish given up");
    assert_eq!(
        p.expected,
        p.published * 200,
        "every event to every connection"
    );
    assert_eq!(
        (p.lost, p.duplicates, p.out_of_order, p.misrouted),
        (0, 0, 0, 0),
        "lost, duplicated, out of order, misrouted ({} recovered:false)",
        p.not_recovered
    );
    assert_eq!(p.lost_unexplained, 0);
    // The 100 connections of the first node came back on the second and resumed.
    assert!(p.reconnects >= 100, "{} reconnects", p.reconnects);
    assert!(p.resumed >= 100, "{} resumed", p.resumed);
    assert_eq!(p.not_recovered, 0, "history covered every gap");

    assert_eq!(p.faults.len(), 1);
    let f = &p.faults[0];
    assert!((1.9..3.0).contains(&f.at_secs), "fault at {}", f.at_secs);
    assert_eq!(f.status, Some(0), "the kill ran");
    assert!(f.fell_after_secs.is_some(), "connections fell");
    assert!(f.fewest_connected < 200, "fewest {}", f.fewest_connected);
    let back = f.all_back_secs.expect("every connection came back");
    assert!(back < 6.0, "all back after {back} s");
    let names: Vec<&str> = f.windows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["before", "during", "after"]);
    let before = &f.windows[0];
    assert!(
        before.deliveries_per_sec > 4_000.0,
        "before: {} deliveries/s at 40 events/s to 200",
        before.deliveries_per_sec
    );
    assert!(before.latency_us.p50 > 0 && before.server_cores > 0.0);
    let after = &f.windows[2];
    assert!(after.deliveries_per_sec > 4_000.0, "after: {after:?}");
    assert!(!p.seconds.is_empty());

    // Both nodes and Redis were sampled; the first node is gone, its CPU kept.
    let procs = &r.memory.procs;
    assert_eq!(procs.len(), 3);
    assert!(
        procs[0].died && !procs[1].died && !procs[2].died,
        "{procs:?}"
    );
    assert!(
        procs[0].publish_cpu_secs > 0.0,
        "the dead node's CPU counts"
    );
    assert!(p.redis_cpu_secs > 0.0 && p.redis_us_per_event > 0.0);
    assert!(r.memory.redis_rss_connected > 0 && r.memory.service_per_conn > 0.0);
}

#[test]
fn a_node_killed_mid_broadcast_its_clients_resume_on_the_other_with_nothing_lost() {
    let r = run_with_fault("KILL", &[]);
    assert_everything_arrived_once_in_order(&r);
}

#[test]
fn a_node_drained_mid_broadcast_its_clients_resume_on_the_other_with_nothing_lost() {
    let r = run_with_fault("TERM", &[]);
    assert_everything_arrived_once_in_order(&r);
}

/// Eight orgs routed by org (`--route org`): each org's 25 connections on the node its name
/// hashes to; the first node killed, its orgs' connections all move to the other and resume,
/// the other orgs' stay where they were; every broadcast of every org arrives once, in order.
#[test]
fn many_orgs_routed_by_org_a_killed_nodes_orgs_move_to_the_other_and_resume() {
    use cortex_bench::route::{Route, first_node};
    let orgs = 8;
    // Which connections start on the first node (the rule the workers apply).
    let on_first = (0..200u32)
        .filter(|&i| first_node(Route::Org, i, &format!("bench-{}", i % orgs), 2) == 0)
        .count() as u64;
    assert!(
        (25..200).contains(&on_first),
        "the orgs' names hash to both nodes ({on_first} on the first)"
    );
    let r = run_with_fault("KILL", &["--orgs", "8", "--route", "org"]);
    assert_eq!((r.orgs, r.route), (8, Route::Org));
    assert_eq!(r.connect.connected, 200, "{:?}", r.connect.errors);
    let p = r.publish.as_ref().expect("a publish phase");
    assert_eq!(p.abandoned, 0);
    // One broadcast channel per org, 25 connections each.
    assert!(p.published >= 200, "published {}", p.published);
    assert_eq!(p.expected, p.published * 25);
    assert_eq!(
        (p.lost, p.duplicates, p.out_of_order, p.misrouted),
        (0, 0, 0, 0)
    );
    // Exactly the first node's connections moved (the others never dropped), and resumed.
    assert_eq!(p.reconnects, on_first, "only the killed node's orgs moved");
    assert_eq!(p.resumed, on_first);
    assert_eq!(p.not_recovered, 0);
}
