//! The report of a run: a table for people and JSON for scripts.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::plan::{Shape, Subscriptions};
use crate::route::Route;
use crate::sample::Proc;

fn one() -> u32 {
    1
}
use crate::target::Kind;

/// Everything a run measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunReport {
    /// A free label (the scenario's name).
    pub label: String,
    /// The server under test.
    pub target: Kind,
    /// The shape.
    pub shape: Shape,
    /// Connections asked for.
    pub conns: u32,
    /// Worker processes.
    pub workers: u32,
    /// Source addresses.
    pub source_addrs: u8,
    /// Percentage of connections that never read.
    pub stalled_percent: u32,
    /// Channels each connection subscribed to.
    pub subscriptions: Subscriptions,
    /// Orgs the connections were spread over (1 in reports from before the option).
    #[serde(default = "one")]
    pub orgs: u32,
    /// How connections were spread over the nodes.
    #[serde(default)]
    pub route: Route,
    /// Size of each published event as delivered, about.
    pub event_bytes: usize,
    /// The connect phase.
    pub connect: ConnectReport,
    /// Server memory.
    pub memory: MemoryReport,
    /// The publish phase, if there was one.
    pub publish: Option<PublishReport>,
    /// The hold phase (reconnects after a server restart), if there was one.
    pub hold: Option<HoldReport>,
}

/// The connect phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectReport {
    /// Connections open and subscribed at the end of it.
    pub connected: u32,
    /// Connections that failed.
    pub failed: u32,
    /// The first errors.
    pub errors: Vec<String>,
    /// Seconds from the first connection attempt until every connection was tried.
    pub secs: f64,
    /// Connections (authenticated and subscribed) per second.
    pub per_sec: f64,
    /// Server CPU use while connecting, in cores.
    pub server_cores: f64,
    /// Load-generator CPU use while connecting, in cores.
    pub load_cores: f64,
}

/// Server memory, from `/proc` (0 when no PID was given).
#[derive(Debug, Serialize, Deserialize)]
pub struct MemoryReport {
    /// The server PIDs read.
    pub pids: Vec<u32>,
    /// RSS before any connection, bytes.
    pub rss_before: u64,
    /// RSS with every connection open and idle, bytes.
    pub rss_connected: u64,
    /// The difference per connection, bytes.
    pub per_conn: f64,
    /// RSS at the end of the publish phase, bytes.
    pub rss_after_publish: u64,
    /// Every server and Redis PID on its own.
    pub procs: Vec<Proc>,
    /// The Redis PIDs' RSS with every connection open, bytes (0 without Redis PIDs).
    pub redis_rss_connected: u64,
    /// Memory per connection of the whole service: servers and Redis, from before the first
    /// connection to all of them open, bytes.
    pub service_per_conn: f64,
}

/// The publish phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishReport {
    /// The offered rate (events per second), or `None` for saturation.
    pub offered_rate: Option<f64>,
    /// Seconds of publishing.
    pub secs: f64,
    /// Events accepted by the server.
    pub published: u64,
    /// Publish requests that failed.
    pub publish_errors: u64,
    /// Of those, requests sent again (the same events, the same idempotency keys).
    pub retries: u64,
    /// Requests given up on: their events were never accepted and are not expected.
    pub abandoned: u64,
    /// Events per second accepted.
    pub events_per_sec: f64,
    /// Deliveries the connections should have received.
    pub expected: u64,
    /// Deliveries received (unique).
    pub received: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Lost and not explained by a `recovered: false` the server sent (what a client would
    /// not know it missed).
    pub lost_unexplained: u64,
    /// Reconnects made during the phase (Cortex: each subscribes again from its positions).
    pub reconnects: u64,
    /// Reconnects that resumed every channel (`recovered: true`).
    pub resumed: u64,
    /// `recovered: false` received (a resume refused, or the continuity notice).
    pub not_recovered: u64,
    /// Deliveries those said they skipped (same epoch).
    pub skipped: u64,
    /// `recovered: false` with a new epoch (history lost; how much was skipped is unknown).
    pub epoch_changes: u64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received after a later event of the same channel.
    pub out_of_order: u64,
    /// Received on a channel the connection was not subscribed to.
    pub misrouted: u64,
    /// Connections that ended during the phase.
    pub dropped: u64,
    /// Mean size of a delivered frame, bytes.
    pub frame_bytes: f64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub deliveries_per_sec: f64,
    /// Seconds from the first publish to the last delivery (or the end of the settle time):
    /// the window the rates and CPU figures are taken over.
    pub window_secs: f64,
    /// Publish-to-receive latency, microseconds.
    pub latency_us: Latency,
    /// Server CPU seconds spent in the phase.
    pub server_cpu_secs: f64,
    /// Server CPU per delivery, microseconds.
    pub server_us_per_delivery: f64,
    /// Server CPU use, in cores (1.0 = one core busy).
    pub server_cores: f64,
    /// Redis CPU seconds spent in the phase (every Redis PID given).
    pub redis_cpu_secs: f64,
    /// Redis CPU per published event, microseconds.
    pub redis_us_per_event: f64,
    /// Servers' and Redis's CPU per delivery, microseconds.
    pub service_us_per_delivery: f64,
    /// Each fault injected, with the figures before, during and after it.
    pub faults: Vec<FaultReport>,
    /// Second by second: deliveries (by arrival), latency, connections, publishes.
    pub seconds: Vec<Second>,
    /// When the first publish was sent, seconds since the Unix epoch.
    pub start_unix: f64,
    /// Load-generator CPU use (workers and coordinator), in cores.
    pub load_cores: f64,
    /// Which side limited the phase.
    pub bottleneck: String,
}

/// A fault injected during the publish phase (`--fault AT=COMMAND`).
#[derive(Debug, Serialize, Deserialize)]
pub struct FaultReport {
    /// Seconds after the first publish.
    pub at_secs: f64,
    /// The command run (`sh -c`).
    pub command: String,
    /// Its exit status.
    pub status: Option<i32>,
    /// Seconds after the fault when connections first fell, if they did.
    pub fell_after_secs: Option<f64>,
    /// The fewest connections at once after it.
    pub fewest_connected: u32,
    /// Seconds after the fault until every connection was back, if they fell and came back.
    pub all_back_secs: Option<f64>,
    /// Seconds after the fault of the first and the last failed publish, if any failed.
    pub errors_between_secs: Option<(f64, f64)>,
    /// Before, during (`--fault-window` from the fault) and after.
    pub windows: Vec<Window>,
}

/// A stretch of the publish phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct Window {
    /// `before`, `during` or `after`.
    pub name: String,
    /// Seconds after the first publish where it starts.
    pub from_secs: f64,
    /// Where it ends.
    pub to_secs: f64,
    /// Deliveries that arrived in it, per second.
    pub deliveries_per_sec: f64,
    /// Their publish-to-receive latency, microseconds.
    pub latency_us: Latency,
    /// Publish requests that failed in it.
    pub publish_errors: u64,
    /// Servers' CPU, in cores.
    pub server_cores: f64,
    /// Redis's CPU, in cores.
    pub redis_cores: f64,
    /// Servers' and Redis's CPU per delivery, microseconds.
    pub service_us_per_delivery: f64,
}

/// One second of the publish phase.
#[derive(Debug, Serialize, Deserialize)]
pub struct Second {
    /// Seconds after the first publish.
    pub t: u64,
    /// Deliveries that arrived in it.
    pub deliveries: u64,
    /// Their p50 and p99, microseconds.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// Connections at its end.
    pub connected: u32,
    /// Publish requests that failed in it.
    pub publish_errors: u64,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The largest.
    pub max: u64,
}

/// The hold phase: connections kept open (reconnecting) while the server may restart.
#[derive(Debug, Serialize, Deserialize)]
pub struct HoldReport {
    /// Seconds held.
    pub secs: f64,
    /// Whether connections dropped.
    pub dropped: bool,
    /// The fewest connected at once.
    pub min_connected: u32,
    /// Seconds from the first drop until every connection was back, if they all came back.
    pub all_back_secs: Option<f64>,
    /// Seconds from the first reconnect after the drop (the server is back) until every
    /// connection was back.
    pub back_after_server_secs: Option<f64>,
    /// Reconnects made.
    pub reconnects: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl RunReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "== {} · {:?} · {:?} · {} connections on {:?} channel(s) each ({} workers, {} source addresses, {}% stalled, {} org(s), route {:?})",
            self.label,
            self.target,
            self.shape,
            self.conns,
            self.subscriptions,
            self.workers,
            self.source_addrs,
            self.stalled_percent,
            self.orgs,
            self.route
        );
        let c = &self.connect;
        let _ = writeln!(
            t,
            "connect      {} connected, {} failed in {:.2} s: {:.0} connects+subscribes/s (server {:.2} cores, load {:.2} cores)",
            c.connected, c.failed, c.secs, c.per_sec, c.server_cores, c.load_cores
        );
        for e in &c.errors {
            let _ = writeln!(t, "             error: {e}");
        }
        let m = &self.memory;
        if !m.pids.is_empty() {
            let _ = writeln!(
                t,
                "memory       server RSS {} idle -> {} connected: {:.0} B per connection; {} after publishing",
                mib(m.rss_before),
                mib(m.rss_connected),
                m.per_conn,
                mib(m.rss_after_publish)
            );
            if m.redis_rss_connected > 0 {
                let _ = writeln!(
                    t,
                    "memory       service (servers + Redis) {:.0} B per connection; Redis RSS {} connected",
                    m.service_per_conn,
                    mib(m.redis_rss_connected)
                );
            }
            if m.procs.len() > 1 {
                for p in &m.procs {
                    let _ = writeln!(
                        t,
                        "  pid {:>7} {:?}: RSS {} -> {} -> {}, {:.2} CPU s publishing{}",
                        p.pid,
                        p.role,
                        mib(p.rss_before),
                        mib(p.rss_connected),
                        mib(p.rss_after),
                        p.publish_cpu_secs,
                        if p.died { " (gone at the end)" } else { "" }
                    );
                }
            }
        }
        if let Some(p) = &self.publish {
            let rate = match p.offered_rate {
                Some(r) => format!("offered {r:.0} ev/s"),
                None => "saturation".to_owned(),
            };
            let _ = writeln!(
                t,
                "publish      {rate}: {} events in {:.1} s ({:.0} ev/s), {} errors, ~{:.0} B a frame",
                p.published, p.secs, p.events_per_sec, p.publish_errors, p.frame_bytes
            );
            if p.retries > 0 || p.abandoned > 0 {
                let _ = writeln!(
                    t,
                    "             {} requests sent again, {} given up",
                    p.retries, p.abandoned
                );
            }
            let _ = writeln!(
                t,
                "delivery     {} expected, {} received, {} lost, {} duplicated, {} out of order, {} misrouted, {} connections dropped",
                p.expected,
                p.received,
                p.lost,
                p.duplicates,
                p.out_of_order,
                p.misrouted,
                p.dropped
            );
            if p.reconnects > 0 || p.not_recovered > 0 {
                let _ = writeln!(
                    t,
                    "continuity   {} reconnects, {} resumed everything; {} recovered:false ({} deliveries skipped, {} epoch changes); {} lost unexplained",
                    p.reconnects,
                    p.resumed,
                    p.not_recovered,
                    p.skipped,
                    p.epoch_changes,
                    p.lost_unexplained
                );
            }
            let l = &p.latency_us;
            let _ = writeln!(
                t,
                "throughput   {:.0} deliveries/s; latency p50 {} p90 {} p99 {} p99.9 {} max {} (us)",
                p.deliveries_per_sec, l.p50, l.p90, l.p99, l.p999, l.max
            );
            let _ = writeln!(
                t,
                "cpu          server {:.2} s = {:.2} us per delivery, {:.2} cores; load {:.2} cores; bottleneck: {}",
                p.server_cpu_secs,
                p.server_us_per_delivery,
                p.server_cores,
                p.load_cores,
                p.bottleneck
            );
            if p.redis_cpu_secs > 0.0 {
                let _ = writeln!(
                    t,
                    "             Redis {:.2} s = {:.1} us per event; servers + Redis {:.2} us per delivery",
                    p.redis_cpu_secs, p.redis_us_per_event, p.service_us_per_delivery
                );
            }
            for f in &p.faults {
                let back = match (f.fell_after_secs, f.all_back_secs) {
                    (Some(_), Some(b)) => format!("all back after {b:.1} s"),
                    (Some(_), None) => "NOT all back".to_owned(),
                    (None, _) => "no connection dropped".to_owned(),
                };
                let errors = match f.errors_between_secs {
                    Some((a, b)) => format!("publishes failed from {a:.1} s to {b:.1} s"),
                    None => "no publish failed".to_owned(),
                };
                let _ = writeln!(
                    t,
                    "fault        at {:.1} s `{}` (exit {:?}): fewest connected {}, {back}; {errors}",
                    f.at_secs, f.command, f.status, f.fewest_connected
                );
                for w in &f.windows {
                    let _ = writeln!(
                        t,
                        "  {:<7} {:>5.1}-{:<5.1} s: {:.0} deliveries/s, p50 {} p99 {} us, {} errors, servers {:.2} + Redis {:.2} cores, {:.2} us per delivery",
                        w.name,
                        w.from_secs,
                        w.to_secs,
                        w.deliveries_per_sec,
                        w.latency_us.p50,
                        w.latency_us.p99,
                        w.publish_errors,
                        w.server_cores,
                        w.redis_cores,
                        w.service_us_per_delivery
                    );
                }
            }
        }
        if let Some(h) = &self.hold {
            let back = match (h.all_back_secs, h.back_after_server_secs) {
                (Some(s), Some(r)) => format!(
                    "all back {s:.2} s after the first drop, {r:.2} s after the first reconnect"
                ),
                (Some(s), None) => format!("all back {s:.2} s after the first drop"),
                (None, _) if h.dropped => "NOT all back".to_owned(),
                (None, _) => "no drop".to_owned(),
            };
            let _ = writeln!(
                t,
                "hold         {:.1} s: fewest connected {}, {back}, {} reconnects",
                h.secs, h.min_connected, h.reconnects
            );
        }
        t
    }
}
