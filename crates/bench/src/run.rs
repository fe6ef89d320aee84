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
use crate::report::{
    ConnectReport, FaultReport, HoldReport, Latency, MemoryReport, PublishReport, RunReport,
    Second, Window,
};
use crate::route::Route;
use crate::sample::{Procs, Role, Sample, Samples};
use crate::target::{Kind, Target};
use crate::timeline::Timeline;
use crate::worker::{Line, Report};

/// `cortex-bench run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The server under test.
    #[arg(long, value_enum, default_value = "cortex")]
    pub target: Kind,
    /// Its `host:port`; several (comma-separated: nodes of one service) share the connections
    /// round-robin (connection i starts on node i % N), and a connection whose node goes away
    /// reconnects to another (with --reconnect).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// For `wss://` addresses (`--addr wss://HOST:PORT`): the PEM file of the CA that the
    /// server's certificate is checked against.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// How connections are spread over the --addr nodes: `rr` (round robin: connection i on
    /// node i % N, moving to another at random when its node goes away) or `org` (every
    /// connection of an org on the node its org hashes to, moving to the org's next node by
    /// the same rule on the nodes left: a load balancer that routes by org).
    #[arg(long, value_enum, default_value = "rr")]
    pub route: Route,
    /// Where to publish (`host:port`, comma-separated for several nodes: publishers start on
    /// node k % N and move to the next after a failed request) [default: the first --addr].
    #[arg(long)]
    pub publish_addr: Option<String>,
    /// Give every event an idempotency key (Cortex) and send a failed request again, the same
    /// events with the same keys, until it is accepted or --retry-for after the end: what a
    /// backend that must not lose events does.
    #[arg(long)]
    pub idempotent: bool,
    /// With --idempotent: how long after the publish phase a failed request is still retried.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
    /// Reconnect dropped connections during the run, resuming (Cortex: `since` each channel's
    /// last position) on another node, as the official clients do.
    #[arg(long)]
    pub reconnect: bool,
    /// Redis PIDs whose memory and CPU to read beside the servers'.
    #[arg(long = "redis-pid", value_delimiter = ',')]
    pub redis_pids: Vec<u32>,
    /// A fault to inject during the publish phase, `AT=COMMAND` (AT a duration after the first
    /// publish, COMMAND run with `sh -c`), e.g. `10s=kill -KILL 1234`; repeatable. The report
    /// gives the figures before, during and after each.
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// How long after a fault its "during" window lasts.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub fault_window: Duration,
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
    dropped: u64,
    ready: Option<(u32, Vec<u32>, Vec<String>, f64)>,
    report: Option<Report>,
    exited: bool,
}

struct Workers {
    states: RefCell<Vec<WorkerState>>,
    changed: tokio::sync::Notify,
    /// The servers' and Redis's PIDs, sampled.
    procs: RefCell<Procs>,
    /// The service every quarter second.
    samples: RefCell<Samples>,
    /// Publishing's counters (shared with the sampler).
    counters: Rc<Counters>,
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
    if args.idempotent && args.target != Kind::Cortex {
        bail!("--idempotent: Cortex only (the peers have no idempotency keys)");
    }
    let first_addr = args.addr.split(',').next().unwrap_or_default().to_owned();
    let publish_addrs = args.publish_addr.clone().unwrap_or(first_addr);
    let mut plain_addrs = Vec::new();
    for addr in publish_addrs.split(',') {
        plain_addrs.push(crate::tls::publish_addr(addr, args.ca.as_deref()).await?);
    }
    let targets: Vec<Rc<Target>> = plain_addrs
        .iter()
        .map(|addr| {
            Rc::new(Target {
                kind: args.target,
                addr: addr.clone(),
                org: args.org.clone(),
                orgs: args.plan.orgs,
                secret: args.secret.clone(),
                publish_key: args.publish_key.clone(),
                idempotent: args.idempotent,
            })
        })
        .collect();
    let faults = args
        .faults
        .iter()
        .map(|f| parse_fault(f))
        .collect::<Result<Vec<_>>>()?;

    let own_cpu_before = procfs::cpu_secs(std::process::id()).unwrap_or(0.0);
    let workers = Rc::new(Workers {
        states: RefCell::new((0..workers_n).map(|_| WorkerState::default()).collect()),
        changed: tokio::sync::Notify::new(),
        procs: RefCell::new(Procs::new(&args.server_pids, &args.redis_pids)),
        samples: RefCell::new(Samples::default()),
        counters: Rc::new(Counters::default()),
    });
    let redis_rss_before = workers.procs.borrow().rss(Role::Redis);
    // The servers' PIDs and their children (nginx's workers), as sampled from here on.
    let rss_before: u64 = workers
        .procs
        .borrow()
        .procs
        .iter()
        .filter(|p| p.role == Role::Server)
        .map(|p| p.rss_before)
        .sum();
    let server_cpu_before = workers.procs.borrow().cpu(Role::Server);
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
    let sampler = tokio::task::spawn_local(sampler(workers.clone()));

    workers
        .wait_for("its connections were made", |w| w.ready.is_some())
        .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    workers.procs.borrow_mut().refresh();
    let connect_server_cpu = workers.procs.borrow().cpu(Role::Server) - server_cpu_before;
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
    workers.procs.borrow_mut().refresh();
    let rss_connected = workers.procs.borrow().rss(Role::Server);
    let redis_rss_connected = workers.procs.borrow().rss(Role::Redis);
    workers.procs.borrow_mut().connected();

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
        Some(publish_phase(&args, &plan, &targets, &workers, &load_pids, &faults).await?)
    };
    let rss_after_publish = workers.procs.borrow().rss(Role::Server);
    workers.procs.borrow_mut().publish_ended();

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
    sampler.abort();
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
        let procs = workers.procs.borrow();
        for proc in &procs.procs {
            match proc.role {
                Role::Server => {}
                Role::Redis => p.redis_cpu_secs += proc.publish_cpu_secs,
            }
        }
        // A server that died during the phase: its CPU until then still counts.
        p.server_cpu_secs = procs
            .procs
            .iter()
            .filter(|x| x.role == Role::Server)
            .map(|x| x.publish_cpu_secs)
            .sum::<f64>()
            .max(p.server_cpu_secs);
        drop(procs);
        finish_publish_report(p, &reports, &workers.samples.borrow())?;
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
        orgs: args.plan.orgs,
        route: args.route,
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
            pids: workers.procs.borrow().server_pids(),
            rss_before,
            rss_connected,
            per_conn: if connected > 0 {
                rss_connected.saturating_sub(rss_before) as f64 / f64::from(connected)
            } else {
                0.0
            },
            rss_after_publish,
            procs: workers.procs.borrow().procs.clone(),
            redis_rss_connected,
            service_per_conn: if connected > 0 {
                (rss_connected + redis_rss_connected).saturating_sub(rss_before + redis_rss_before)
                    as f64
                    / f64::from(connected)
            } else {
                0.0
            },
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
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .args(["--target", &value_name(&args.target)])
        .args(["--route", &value_name(&args.route)])
        .args([
            "--addr",
            &args.addr,
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
    if !args.hold.is_zero() || args.reconnect {
        cmd.arg("--reconnect");
    }
    if let Some(ca) = &args.ca {
        cmd.arg("--ca").arg(ca);
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
                    dropped,
                } => {
                    w.connected = connected;
                    w.received = received;
                    w.dropped = dropped;
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
        let c = &workers.counters;
        eprintln!(
            "bench: t={:>5.1}s connected={} received={} ({}/s) published={} errors={}",
            started.elapsed().as_secs_f64(),
            workers.connected(),
            received,
            received - last.min(received),
            c.published.get(),
            c.errors.get()
        );
        last = received;
    }
}

/// Samples the service every quarter second (see [`crate::sample`]).
async fn sampler(workers: Rc<Workers>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut procs = workers.procs.borrow_mut();
        procs.refresh();
        let sample = Sample {
            at: now_ns() as f64 / 1e9,
            connected: workers.connected(),
            dropped: workers.states.borrow().iter().map(|w| w.dropped).sum(),
            received: workers.received(),
            published: workers.counters.published.get(),
            errors: workers.counters.errors.get(),
            server_cpu: procs.cpu(Role::Server),
            redis_cpu: procs.cpu(Role::Redis),
        };
        drop(procs);
        workers.samples.borrow_mut().0.push(sample);
    }
}

/// `AT=COMMAND`.
fn parse_fault(spec: &str) -> Result<(Duration, String)> {
    let (at, command) = spec.split_once('=').ok_or_else(|| {
        anyhow!("--fault {spec:?}: expected AT=COMMAND, e.g. 10s=kill -KILL 1234")
    })?;
    let at = humantime::parse_duration(at.trim())
        .with_context(|| format!("--fault {spec:?}: AT is not a duration"))?;
    if command.trim().is_empty() {
        bail!("--fault {spec:?}: no command");
    }
    Ok((at, command.trim().to_owned()))
}

#[derive(Default)]
struct Counters {
    published: Cell<u64>,
    errors: Cell<u64>,
    retries: Cell<u64>,
    abandoned: Cell<u64>,
    expected: Cell<u64>,
    first_error: RefCell<Option<String>>,
}

/// A fault as it happened: when (Unix seconds), what, and its exit status.
struct Injected {
    at: f64,
    command: String,
    status: Option<i32>,
}

async fn publish_phase(
    args: &RunArgs,
    plan: &Rc<Plan>,
    targets: &[Rc<Target>],
    workers: &Rc<Workers>,
    load_pids: &[u32],
    faults: &[(Duration, String)],
) -> Result<PublishReport> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.publishers as usize * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let counters = workers.counters.clone();
    let max_lag = args
        .max_lag
        .unwrap_or_else(|| (u64::from(args.plan.conns) * 8).max(10_000));
    let channels = plan.publish_channels();
    let tasks = args.publishers.clamp(1, channels);
    let received_before = workers.received();
    workers.procs.borrow_mut().publish_started();
    let server_cpu0 = workers.procs.borrow().cpu(Role::Server);
    let load_cpu0 = procfs::total_cpu(load_pids);
    let start = Instant::now();
    let start_unix = now_ns() as f64 / 1e9;
    let deadline = start + args.duration;
    let injected = Rc::new(RefCell::new(Vec::new()));
    let mut fault_tasks = Vec::new();
    for (at, command) in faults {
        let (at, command, injected) = (*at, command.clone(), injected.clone());
        fault_tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until((start + at).into()).await;
            let when = now_ns() as f64 / 1e9;
            eprintln!("bench: fault at {:.1} s: {command}", at.as_secs_f64());
            let status = Command::new("sh")
                .args(["-c", &command])
                .status()
                .await
                .ok()
                .and_then(|s| s.code());
            injected.borrow_mut().push(Injected {
                at: when,
                command,
                status,
            });
        }));
    }
    let mut handles = Vec::new();
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(f64::from(tasks) / args.rate));
    for k in 0..tasks {
        let owned: Vec<u32> = (k..channels).step_by(tasks as usize).collect();
        let task = Publisher {
            first_send: start + interval.map_or(Duration::ZERO, |i| phase(i, k, tasks)),
            client: client.clone(),
            plan: plan.clone(),
            targets: targets.to_vec(),
            node: k as usize % targets.len(),
            retry_until: args.idempotent.then(|| deadline + args.retry_for),
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
    for f in fault_tasks {
        // A fault scheduled after the phase never ran.
        f.abort();
        let _ = f.await;
    }
    // Wait for the deliveries still owed.
    let expected = counters.expected.get();
    let settle_until = Instant::now() + args.settle;
    while workers.received() - received_before < expected && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    workers.procs.borrow_mut().refresh();
    let server_cpu = workers.procs.borrow().cpu(Role::Server) - server_cpu0;
    let load_cpu = procfs::total_cpu(load_pids) - load_cpu0;
    if let Some(e) = counters.first_error.borrow().as_ref() {
        eprintln!("bench: first publish error: {e}");
    }
    let published = counters.published.get();
    // The windows end with the publishing, not with the settle time after it.
    let end_unix = start_unix + publish_secs;
    let mut injected: Vec<Injected> = injected.borrow_mut().drain(..).collect();
    injected.sort_by(|a, b| a.at.total_cmp(&b.at));
    // A fault's "before" starts where the previous one's "during" ended.
    let befores: Vec<f64> = std::iter::once(start_unix)
        .chain(
            injected
                .iter()
                .map(|f| f.at + args.fault_window.as_secs_f64()),
        )
        .collect();
    // Its "after" ends where the next one starts (or with the publishing).
    let afters: Vec<f64> = injected
        .iter()
        .skip(1)
        .map(|f| f.at)
        .chain(std::iter::once(start_unix + publish_secs))
        .collect();
    let faults = injected
        .into_iter()
        .zip(befores)
        .zip(afters)
        .map(|((f, before), after)| FaultReport {
            at_secs: f.at - start_unix,
            command: f.command,
            status: f.status,
            fell_after_secs: None,
            fewest_connected: 0,
            all_back_secs: None,
            errors_between_secs: None,
            // Filled in with the workers' timelines: (from, to) in Unix seconds for now.
            windows: [
                ("before", before.min(f.at), f.at),
                ("during", f.at, f.at + args.fault_window.as_secs_f64()),
                ("after", f.at + args.fault_window.as_secs_f64(), after),
            ]
            .into_iter()
            .map(|(name, from, to)| Window {
                name: name.to_owned(),
                from_secs: from,
                to_secs: to.min(end_unix).max(from),
                deliveries_per_sec: 0.0,
                latency_us: Latency::default(),
                publish_errors: 0,
                server_cores: 0.0,
                redis_cores: 0.0,
                service_us_per_delivery: 0.0,
            })
            .collect(),
        })
        .collect();
    Ok(PublishReport {
        offered_rate: (args.rate > 0.0).then_some(args.rate),
        secs: publish_secs,
        published,
        publish_errors: counters.errors.get(),
        retries: counters.retries.get(),
        abandoned: counters.abandoned.get(),
        events_per_sec: published as f64 / publish_secs,
        expected,
        received: 0,
        lost: 0,
        lost_unexplained: 0,
        reconnects: 0,
        resumed: 0,
        not_recovered: 0,
        skipped: 0,
        epoch_changes: 0,
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
        redis_cpu_secs: 0.0,
        redis_us_per_event: 0.0,
        service_us_per_delivery: 0.0,
        faults,
        seconds: Vec::new(),
        load_cores: load_cpu / wall,
        bottleneck: String::new(),
        start_unix,
    })
}

/// Fills in what only the workers' final reports know.
fn finish_publish_report(
    p: &mut PublishReport,
    reports: &[Report],
    samples: &Samples,
) -> Result<()> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut timeline = Timeline::default();
    let (mut bytes, mut arrivals) = (0, 0);
    for r in reports {
        timeline.merge(&r.timeline)?;
        p.reconnects += r.reconnects;
        p.resumed += r.resumed;
        p.not_recovered += r.not_recovered;
        p.skipped += r.skipped;
        p.epoch_changes += r.epoch_changes;
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
    p.lost_unexplained = p.lost.saturating_sub(p.skipped);
    p.redis_us_per_event = p.redis_cpu_secs * 1e6 / p.published.max(1) as f64;
    p.service_us_per_delivery =
        (p.server_cpu_secs + p.redis_cpu_secs) * 1e6 / p.received.max(1) as f64;
    let (start, end) = (p.start_unix, p.start_unix + p.window_secs);
    for t in 0..p.window_secs.ceil() as u64 {
        let from = start.floor() as u64 + t;
        let (deliveries, l) = timeline.window(from, from + 1);
        let at = samples.0.iter().rev().find(|s| s.at < (from + 1) as f64);
        let (_, _, errors) = samples.between(from as f64, (from + 1) as f64);
        p.seconds.push(Second {
            t,
            deliveries,
            p50_us: l.p50,
            p99_us: l.p99,
            connected: at.map_or(0, |s| s.connected),
            publish_errors: errors,
        });
    }
    let full = samples
        .0
        .iter()
        .filter(|s| s.at <= start)
        .map(|s| s.connected)
        .next_back()
        .unwrap_or(0);
    for f in &mut p.faults {
        let at = start + f.at_secs;
        let (fell, fewest, back) = samples.recovery(at, full);
        f.fell_after_secs = fell;
        f.fewest_connected = fewest;
        f.all_back_secs = back;
        f.errors_between_secs = samples.error_span(at);
        for w in &mut f.windows {
            // Whole seconds of arrival inside the window.
            let (from, to) = (w.from_secs.ceil() as u64, w.to_secs.floor() as u64);
            let (deliveries, l) = timeline.window(from, to.max(from));
            let secs = (to.saturating_sub(from)) as f64;
            let (server, redis, errors) = samples.between(from as f64, to as f64);
            w.deliveries_per_sec = if secs > 0.0 {
                deliveries as f64 / secs
            } else {
                0.0
            };
            w.latency_us = l;
            w.publish_errors = errors;
            w.server_cores = if secs > 0.0 { server / secs } else { 0.0 };
            w.redis_cores = if secs > 0.0 { redis / secs } else { 0.0 };
            w.service_us_per_delivery = (server + redis) * 1e6 / deliveries.max(1) as f64;
            w.from_secs = from as f64 - start;
            w.to_secs = (to.max(from) as f64 - start).min(end - start);
        }
    }
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
    /// One per publish address; `node` is the one in use.
    targets: Vec<Rc<Target>>,
    node: usize,
    /// Until when a failed request is sent again (`--idempotent`), or `None`: never.
    retry_until: Option<Instant>,
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
    async fn run(mut self) {
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
            let mut sent = self.send(&markers).await;
            while let Err(retry_after) = sent {
                // The same events, the same keys, until accepted (or given up).
                match self.retry_until {
                    Some(until) if Instant::now() < until => {
                        tokio::time::sleep(retry_after).await;
                        self.counters.retries.set(self.counters.retries.get() + 1);
                        sent = self.send(&markers).await;
                    }
                    _ => break,
                }
            }
            match sent {
                Ok(()) => {
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
                Err(wait) => {
                    self.counters
                        .abandoned
                        .set(self.counters.abandoned.get() + 1);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Sends one request to the current node; after a failure, moves to the next node and
    /// says how long to wait before trying again (the server's `Retry-After`, capped at 1 s, or
    /// 50 ms).
    async fn send(&mut self, markers: &[Marker]) -> Result<(), Duration> {
        let target = &self.targets[self.node];
        let publish = target.publish_batch(markers, self.event_bytes);
        let mut request = self.client.post(&publish.url).body(publish.body);
        if publish.json {
            request = request.header("content-type", "application/json");
        }
        if target.kind == Kind::Cortex {
            request = request.bearer_auth(&target.publish_key);
        }
        let (error, wait) = match request.send().await {
            Ok(resp) if resp.status().is_success() => {
                let _ = resp.bytes().await;
                return Ok(());
            }
            Ok(resp) => {
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map_or(Duration::from_millis(50), |s| {
                        Duration::from_secs(s).min(Duration::from_secs(1))
                    });
                (format!("HTTP {} from {}", resp.status(), target.addr), wait)
            }
            Err(e) => (format!("{e} ({})", target.addr), Duration::from_millis(50)),
        };
        self.counters.errors.set(self.counters.errors.get() + 1);
        self.counters.first_error.borrow_mut().get_or_insert(error);
        self.node = (self.node + 1) % self.targets.len();
        Err(wait)
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
