//! The coordinator: spawns the workers, waits for their connections, publishes, and gathers
//! the figures.
//!
//! Publishing is split over a few tasks, each owning a disjoint set of channels and keeping one
//! request in flight, so the order of events on a channel is the order they were published in
//! and any reordering the subscribers see is the server's. At saturation the publishers hold
//! the deliveries still owed to subscribers under `--max-lag`: the rate found is the one the
//! server sustains, not a queue growing until something gives. At a fixed rate the tasks take
//! turns, so the events are evenly spaced.

use std::cell::{Cell, RefCell};
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin, Command};

use crate::marker::{Marker, now_ns};
use crate::plan::{Plan, PlanArgs, value_name};
use crate::procfs;
use crate::report::{ConnectReport, HoldReport, Latency, MemoryReport, PublishReport, RunReport};
use crate::target::{Kind, Target};
use crate::worker::{Line, Report};

/// `cortex-bench run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The server under test.
    #[arg(long, value_enum, default_value = "cortex")]
    pub target: Kind,
    /// Its `host:port`; several (comma-separated: nodes of one service) share the worker
    /// processes round-robin, each worker's connections on one of them.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Where to publish (`host:port`) [default: the first --addr]: another node of the service
    /// measures delivery across nodes.
    #[arg(long)]
    pub publish_addr: Option<String>,
    /// Events per publish request (Cortex: a batch `{"events":[...]}`, at most 100).
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// The org of every channel and token.
    #[arg(long, default_value = "bench")]
    pub org: String,
    /// The HS256 secret the server verifies tokens with (Cortex).
    #[arg(long, env = "CORTEX_JWT_SECRET", default_value = "")]
    pub secret: String,
    /// The publish key (Cortex).
    #[arg(long, env = "CORTEX_PUBLISH_KEY", default_value = "")]
    pub publish_key: String,
    /// Who subscribes to what.
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Worker processes [default: one per 10,000 connections].
    #[arg(long)]
    pub workers: Option<u32>,
    /// Source addresses 127.0.0.2 .. 127.0.0.(1 + N).
    #[arg(long, default_value_t = 4)]
    pub source_addrs: u8,
    /// Connections each worker opens at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Events per second to publish, evenly spaced; 0 publishes at saturation.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to publish; 0 skips the publish phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// At saturation, the most deliveries owed to subscribers at once [default: 8 per connection,
    /// at least 10,000].
    #[arg(long)]
    pub max_lag: Option<u64>,
    /// Publishing tasks (each keeps one request in flight).
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// Size of an event as delivered, about (bytes).
    #[arg(long, default_value_t = 250)]
    pub event_bytes: usize,
    /// How long to wait for the last deliveries after publishing stops.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// How long connections sit idle before the server's memory is read.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// After publishing, hold the connections this long, reconnecting them when they drop (to
    /// measure how fast clients come back when the server restarts).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// First delay of the workers' reconnect backoff (full jitter, doubling to 30 s).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_base: Duration,
    /// Server PIDs whose memory and CPU to read (nchan: the worker and the master).
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// A label for the report.
    #[arg(long, default_value = "run")]
    pub label: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Fail (exit 1) unless every connection connected, every publish was accepted, and every
    /// expected delivery arrived exactly once and in order.
    #[arg(long)]
    pub check: bool,
}

#[derive(Default)]
struct WorkerState {
    pid: u32,
    connected: u32,
    received: u64,
    ready: Option<(u32, Vec<u32>, Vec<String>, f64)>,
    report: Option<Report>,
    exited: bool,
}

struct Workers {
    states: RefCell<Vec<WorkerState>>,
    changed: tokio::sync::Notify,
}

impl Workers {
    fn connected(&self) -> u32 {
        self.states.borrow().iter().map(|w| w.connected).sum()
    }

    fn received(&self) -> u64 {
        self.states.borrow().iter().map(|w| w.received).sum()
    }

    /// Waits until every worker is `done`. A worker that exited is an error only if it is not
    /// `done`: one may well exit right after its final report while another has yet to send its
    /// own.
    async fn wait_for(&self, what: &str, done: impl Fn(&WorkerState) -> bool) -> Result<()> {
        loop {
            let notified = self.changed.notified();
            {
                let states = self.states.borrow();
                if states.iter().all(&done) {
                    return Ok(());
                }
                if states.iter().any(|w| w.exited && !done(w)) {
                    bail!("a worker exited before {what}");
                }
            }
            notified.await;
        }
    }
}

/// Runs a benchmark and prints its report.
pub fn main(args: RunArgs) -> Result<RunReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args))
}

async fn run(args: RunArgs) -> Result<RunReport> {
    if args.plan.conns == 0 {
        bail!("--conns must be at least 1");
    }
    if args.target == Kind::Cortex && (args.secret.is_empty() || args.publish_key.is_empty()) {
        bail!("Cortex needs --secret (the server's HS256 secret) and --publish-key");
    }
    let workers_n = args
        .workers
        .unwrap_or_else(|| args.plan.conns.div_ceil(10_000))
        .clamp(1, args.plan.conns);
    let mut plan = args.plan.plan();
    if args.batch == 0 || args.batch > 100 || (args.batch > 1 && args.target != Kind::Cortex) {
        bail!("--batch: 1 to 100 events per request, and more than 1 for Cortex only");
    }
    let first_addr = args.addr.split(',').next().unwrap_or_default().to_owned();
    let target = Rc::new(Target {
        kind: args.target,
        addr: args.publish_addr.clone().unwrap_or(first_addr),
        org: args.org.clone(),
        secret: args.secret.clone(),
        publish_key: args.publish_key.clone(),
    });

    let rss_before = procfs::total_rss(&args.server_pids);
    let server_cpu_before = procfs::total_cpu(&args.server_pids);
    let own_cpu_before = procfs::cpu_secs(std::process::id()).unwrap_or(0.0);
    let workers = Rc::new(Workers {
        states: RefCell::new((0..workers_n).map(|_| WorkerState::default()).collect()),
        changed: tokio::sync::Notify::new(),
    });
    let started = Instant::now();
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    for w in 0..workers_n {
        let conns = u64::from(args.plan.conns);
        let from = (conns * u64::from(w) / u64::from(workers_n)) as u32;
        let to = (conns * u64::from(w + 1) / u64::from(workers_n)) as u32;
        let (child, stdin) = spawn_worker(&args, from, to, w as usize, workers.clone())?;
        children.push(child);
        stdins.push(stdin);
    }
    let progress = tokio::task::spawn_local(progress_line(workers.clone(), started));

    workers
        .wait_for("its connections were made", |w| w.ready.is_some())
        .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let connect_server_cpu = procfs::total_cpu(&args.server_pids) - server_cpu_before;
    let worker_pids: Vec<u32> = workers.states.borrow().iter().map(|w| w.pid).collect();
    // The workers started during the phase: all of their CPU time counts.
    let connect_load_cpu = procfs::total_cpu(&worker_pids)
        + procfs::cpu_secs(std::process::id()).unwrap_or(0.0)
        - own_cpu_before;
    let (connected, failed, errors) = {
        let states = workers.states.borrow();
        let mut failed = Vec::new();
        let mut errors = Vec::new();
        let mut connected = 0;
        for (c, f, e, _) in states.iter().filter_map(|w| w.ready.as_ref()) {
            connected += c;
            failed.extend_from_slice(f);
            errors.extend(e.iter().cloned());
        }
        (connected, failed, errors)
    };
    for &i in &failed {
        plan.remove(i);
    }
    eprintln!(
        "bench: {connected} connected, {} failed in {connect_secs:.2} s",
        failed.len()
    );
    tokio::time::sleep(args.idle).await;
    let rss_connected = procfs::total_rss(&args.server_pids);

    let load_pids: Vec<u32> = workers
        .states
        .borrow()
        .iter()
        .map(|w| w.pid)
        .chain([std::process::id()])
        .collect();

    let plan = Rc::new(plan);
    let publish = if args.duration.is_zero() {
        None
    } else {
        Some(publish_phase(&args, &plan, &target, &workers, &load_pids).await?)
    };
    let rss_after_publish = procfs::total_rss(&args.server_pids);

    let hold = if args.hold.is_zero() {
        None
    } else {
        Some(hold_phase(&args, &workers, connected).await)
    };

    // Collect the workers' reports.
    for stdin in &mut stdins {
        let _ = stdin.write_all(b"finish\n").await;
        let _ = stdin.flush().await;
    }
    workers
        .wait_for("it reported", |w| w.report.is_some())
        .await?;
    progress.abort();
    for mut child in children {
        let _ = child.wait().await;
    }
    let reports: Vec<Report> = workers
        .states
        .borrow_mut()
        .iter_mut()
        .filter_map(|w| w.report.take())
        .collect();

    let mut publish = publish;
    if let Some(p) = publish.as_mut() {
        finish_publish_report(p, &reports)?;
    }
    let hold = hold.map(|mut h| {
        h.reconnects = reports.iter().map(|r| r.reconnects).sum();
        h
    });

    let report = RunReport {
        label: args.label.clone(),
        target: args.target,
        shape: args.plan.shape,
        conns: args.plan.conns,
        workers: workers_n,
        source_addrs: args.source_addrs,
        stalled_percent: args.plan.stalled_percent,
        subscriptions: args.plan.subscriptions,
        event_bytes: args.event_bytes,
        connect: ConnectReport {
            connected,
            failed: failed.len() as u32,
            errors,
            secs: connect_secs,
            per_sec: f64::from(connected) / connect_secs,
            server_cores: connect_server_cpu / connect_secs,
            load_cores: connect_load_cpu / connect_secs,
        },
        memory: MemoryReport {
            pids: args.server_pids.clone(),
            rss_before,
            rss_connected,
            per_conn: if connected > 0 {
                rss_connected.saturating_sub(rss_before) as f64 / f64::from(connected)
            } else {
                0.0
            },
            rss_after_publish,
        },
        publish,
        hold,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

fn spawn_worker(
    args: &RunArgs,
    from: u32,
    to: u32,
    index: usize,
    workers: Rc<Workers>,
) -> Result<(Child, ChildStdin)> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let addrs: Vec<&str> = args.addr.split(',').collect();
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .args(["--target", &value_name(&args.target)])
        .args([
            "--addr",
            addrs[index % addrs.len()],
            "--org",
            &args.org,
            "--secret",
            &args.secret,
        ])
        .args(args.plan.to_args())
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--source-addrs", &args.source_addrs.to_string()])
        .args([
            "--connect-concurrency",
            &args.connect_concurrency.to_string(),
        ])
        .args([
            "--reconnect-base",
            &humantime::format_duration(args.reconnect_base).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if !args.hold.is_zero() {
        cmd.arg("--reconnect");
    }
    let mut child = cmd.spawn().context("starting a worker")?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    workers.states.borrow_mut()[index].pid = child.id().unwrap_or(0);
    tokio::task::spawn_local(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(line) = serde_json::from_str::<Line>(&line) else {
                eprintln!("bench: worker {index} said: {line}");
                continue;
            };
            let mut states = workers.states.borrow_mut();
            let w = &mut states[index];
            match line {
                Line::Progress {
                    connected,
                    received,
                } => {
                    w.connected = connected;
                    w.received = received;
                }
                Line::Ready {
                    connected,
                    failed,
                    errors,
                    connect_secs,
                } => {
                    w.connected = connected;
                    w.ready = Some((connected, failed, errors, connect_secs));
                }
                Line::Final(report) => {
                    w.received = report.received;
                    w.report = Some(*report);
                }
            }
            drop(states);
            workers.changed.notify_waiters();
        }
        workers.states.borrow_mut()[index].exited = true;
        workers.changed.notify_waiters();
    });
    Ok((child, stdin))
}

async fn progress_line(workers: Rc<Workers>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let received = workers.received();
        eprintln!(
            "bench: t={:>5.1}s connected={} received={} ({}/s)",
            started.elapsed().as_secs_f64(),
            workers.connected(),
            received,
            received - last.min(received)
        );
        last = received;
    }
}

struct Counters {
    published: Cell<u64>,
    errors: Cell<u64>,
    expected: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

async fn publish_phase(
    args: &RunArgs,
    plan: &Rc<Plan>,
    target: &Rc<Target>,
    workers: &Rc<Workers>,
    load_pids: &[u32],
) -> Result<PublishReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.publishers as usize * 2)
        .tcp_nodelay(true)
        .build()?;
    let counters = Rc::new(Counters {
        published: Cell::new(0),
        errors: Cell::new(0),
        expected: Cell::new(0),
        first_error: RefCell::new(None),
    });
    let max_lag = args
        .max_lag
        .unwrap_or_else(|| (u64::from(args.plan.conns) * 8).max(10_000));
    let channels = plan.publish_channels();
    let tasks = args.publishers.clamp(1, channels);
    let received_before = workers.received();
    let server_cpu0 = procfs::total_cpu(&args.server_pids);
    let load_cpu0 = procfs::total_cpu(load_pids);
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut handles = Vec::new();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(f64::from(tasks) / args.rate));
    for k in 0..tasks {
        let owned: Vec<u32> = (k..channels).step_by(tasks as usize).collect();
        let task = Publisher {
            first_send: start + interval.map_or(Duration::ZERO, |i| phase(i, k, tasks)),
            client: client.clone(),
            plan: plan.clone(),
            target: target.clone(),
            workers: workers.clone(),
            counters: counters.clone(),
            owned,
            interval,
            max_lag,
            received_before,
            deadline,
            event_bytes: args.event_bytes,
            batch: args.batch as usize,
        };
        handles.push(tokio::task::spawn_local(task.run()));
    }
    for h in handles {
        h.await.map_err(|e| anyhow!("a publisher failed: {e}"))?;
    }
    let publish_secs = start.elapsed().as_secs_f64();
    // Wait for the deliveries still owed.
    let expected = counters.expected.get();
    let settle_until = Instant::now() + args.settle;
    while workers.received() - received_before < expected && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    let server_cpu = procfs::total_cpu(&args.server_pids) - server_cpu0;
    let load_cpu = procfs::total_cpu(load_pids) - load_cpu0;
    if let Some(e) = counters.first_error.borrow().as_ref() {
        eprintln!("bench: first publish error: {e}");
    }
    let published = counters.published.get();
    Ok(PublishReport {
        offered_rate: (args.rate > 0.0).then_some(args.rate),
        secs: publish_secs,
        published,
        publish_errors: counters.errors.get(),
        events_per_sec: published as f64 / publish_secs,
        expected,
        received: 0,
        lost: 0,
        duplicates: 0,
        out_of_order: 0,
        misrouted: 0,
        dropped: 0,
        frame_bytes: 0.0,
        deliveries_per_sec: 0.0,
        window_secs: wall,
        latency_us: Latency::default(),
        server_cpu_secs: server_cpu,
        server_us_per_delivery: 0.0,
        server_cores: server_cpu / wall,
        load_cores: load_cpu / wall,
        bottleneck: String::new(),
    })
}

/// Fills in what only the workers' final reports know.
fn finish_publish_report(p: &mut PublishReport, reports: &[Report]) -> Result<()> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let (mut bytes, mut arrivals) = (0, 0);
    for r in reports {
        p.received += r.unique;
        p.duplicates += r.duplicates;
        p.out_of_order += r.out_of_order;
        p.misrouted += r.misrouted;
        p.dropped += r.dropped;
        bytes += r.bytes;
        arrivals += r.received;
        let raw = base64::engine::general_purpose::STANDARD.decode(&r.latency)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut raw.as_slice())
            .map_err(|e| anyhow!("reading a worker's histogram: {e:?}"))?;
        latency
            .add(h)
            .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
    }
    p.lost = p.expected.saturating_sub(p.received);
    // `bytes` counts every arrival with a marker, misrouted ones included.
    p.frame_bytes = bytes as f64 / arrivals.max(1) as f64;
    p.deliveries_per_sec = p.received as f64 / p.window_secs;
    p.server_us_per_delivery = p.server_cpu_secs * 1e6 / p.received.max(1) as f64;
    p.latency_us = Latency {
        p50: latency.value_at_quantile(0.50),
        p90: latency.value_at_quantile(0.90),
        p99: latency.value_at_quantile(0.99),
        p999: latency.value_at_quantile(0.999),
        max: latency.max(),
    };
    p.bottleneck = if p.server_cores >= 0.9 {
        "server (its core is busy)".to_owned()
    } else if p.load_cores >= 0.9 {
        "load generator (its core is busy)".to_owned()
    } else if p.offered_rate.is_some() {
        "neither: the offered rate".to_owned()
    } else {
        "neither: publish round trips and --max-lag".to_owned()
    };
    Ok(())
}

/// When publisher `k` of `tasks`, each sending every `interval`, sends its first event: the
/// tasks take turns, so a fixed rate is events evenly spaced rather than `tasks` at a time.
fn phase(interval: Duration, k: u32, tasks: u32) -> Duration {
    interval * k / tasks.max(1)
}

struct Publisher {
    first_send: Instant,
    client: reqwest::Client,
    plan: Rc<Plan>,
    target: Rc<Target>,
    workers: Rc<Workers>,
    counters: Rc<Counters>,
    owned: Vec<u32>,
    interval: Option<Duration>,
    max_lag: u64,
    received_before: u64,
    deadline: Instant,
    event_bytes: usize,
    batch: usize,
}

impl Publisher {
    async fn run(self) {
        let mut seqs = vec![0u64; self.owned.len()];
        let mut next_send = self.first_send;
        let mut turn = 0usize;
        while Instant::now() < self.deadline {
            if let Some(interval) = self.interval {
                let now = Instant::now();
                if next_send > now {
                    tokio::time::sleep(next_send - now).await;
                }
                next_send += interval;
            } else {
                // Saturation: keep what subscribers are owed under the lag bound.
                while self.counters.expected.get()
                    > (self.workers.received() - self.received_before) + self.max_lag
                {
                    if Instant::now() >= self.deadline {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let mut markers = Vec::with_capacity(self.batch);
            let mut fanout = 0;
            for b in 0..self.batch {
                let slot = (turn + b) % self.owned.len();
                let c = self.owned[slot];
                markers.push(Marker {
                    chan: self.plan.channel(c),
                    seq: seqs[slot] + 1 + (b / self.owned.len()) as u64,
                    sent_ns: now_ns(),
                });
                fanout += self.plan.fanout(c);
            }
            let publish = self.target.publish_batch(&markers, self.event_bytes);
            let mut request = self.client.post(&publish.url).body(publish.body);
            if publish.json {
                request = request.header("content-type", "application/json");
            }
            if self.target.kind == Kind::Cortex {
                request = request.bearer_auth(&self.target.publish_key);
            }
            match request.send().await {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.bytes().await;
                    for b in 0..self.batch {
                        seqs[(turn + b) % self.owned.len()] += 1;
                    }
                    turn += self.batch;
                    self.counters
                        .published
                        .set(self.counters.published.get() + self.batch as u64);
                    self.counters
                        .expected
                        .set(self.counters.expected.get() + fanout);
                }
                other => {
                    self.counters.errors.set(self.counters.errors.get() + 1);
                    let error = match other {
                        Ok(resp) => format!("HTTP {}", resp.status()),
                        Err(e) => e.to_string(),
                    };
                    self.counters.first_error.borrow_mut().get_or_insert(error);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

async fn hold_phase(args: &RunArgs, workers: &Rc<Workers>, full: u32) -> HoldReport {
    let start = Instant::now();
    let mut min_connected = workers.connected();
    let mut dropped_at: Option<Instant> = None;
    let mut all_back: Option<f64> = None;
    let mut lowest = full;
    let mut rising_at: Option<Instant> = None;
    let mut back_after_server: Option<f64> = None;
    while start.elapsed() < args.hold {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = workers.connected();
        min_connected = min_connected.min(now);
        if dropped_at.is_some() && rising_at.is_none() {
            if now < lowest {
                lowest = now;
            } else if now > lowest {
                // The first reconnect after the drop: the server is back.
                rising_at = Some(Instant::now());
            }
        }
        match dropped_at {
            None if now < full => dropped_at = Some(Instant::now()),
            Some(at) if all_back.is_none() && now >= full => {
                all_back = Some(at.elapsed().as_secs_f64());
                back_after_server = rising_at.map(|r| r.elapsed().as_secs_f64());
                eprintln!(
                    "bench: all {full} connections back in {:.2} s",
                    all_back.unwrap_or(0.0)
                );
            }
            _ => {}
        }
    }
    HoldReport {
        secs: start.elapsed().as_secs_f64(),
        dropped: dropped_at.is_some(),
        min_connected,
        all_back_secs: all_back,
        back_after_server_secs: back_after_server,
        reconnects: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_at_a_fixed_rate_take_turns() {
        // 4 tasks at 1,000 events/s: each every 4 ms, the four 1 ms apart.
        let interval = Duration::from_millis(4);
        let phases: Vec<_> = (0..4).map(|k| phase(interval, k, 4)).collect();
        assert_eq!(
            phases,
            [0, 1, 2, 3].map(Duration::from_millis),
            "first sends spread over one interval"
        );
        assert_eq!(phase(interval, 0, 1), Duration::ZERO);
        assert_eq!(phase(interval, 0, 0), Duration::ZERO, "no division by zero");
    }
}
