//! What the coordinator samples while a run goes on: the CPU and memory of every server and
//! Redis PID it was given, and of every process the servers start later running the same
//! program (nginx's master replaces a worker that crashed: the new worker holds the connections
//! from then on; a child of another program, such as the load generator a test starts, is not
//! the server's), a PID
//! that died keeping the CPU it had used, so a killed node's work still counts; and, every quarter second, the service's counters (connections, deliveries,
//! publishes, errors). From those samples a fault's windows (before, during, after) and the time
//! until every connection was back are read.

use serde::{Deserialize, Serialize};

use crate::procfs;

/// A sampled process's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A server (a node of the service under test).
    Server,
    /// A Redis process.
    Redis,
}

/// One PID's figures over the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proc {
    /// The PID.
    pub pid: u32,
    /// What it is.
    pub role: Role,
    /// RSS before any connection, bytes (0 if unreadable).
    pub rss_before: u64,
    /// RSS with every connection open and idle.
    pub rss_connected: u64,
    /// RSS at the end of the publish phase (0 if it is gone).
    pub rss_after: u64,
    /// CPU seconds used during the publish phase (until it died, if it did).
    pub publish_cpu_secs: f64,
    /// Whether it was gone at the end.
    pub died: bool,
    /// The server PID that started it during the run (a child found by the sampler), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    #[serde(skip)]
    last_cpu: f64,
    #[serde(skip)]
    publish_cpu0: f64,
}

/// The PIDs a run samples.
#[derive(Debug, Default)]
pub struct Procs {
    /// Every PID, servers first (and the servers' children found later at the end).
    pub procs: Vec<Proc>,
    /// Whether the publish phase has started (a child found after that spent all of its CPU
    /// in it).
    publishing: bool,
}

impl Procs {
    /// The servers' and Redis's PIDs.
    pub fn new(servers: &[u32], redis: &[u32]) -> Procs {
        let make = |pid, role| Proc {
            pid,
            role,
            rss_before: procfs::rss_bytes(pid).unwrap_or(0),
            rss_connected: 0,
            rss_after: 0,
            publish_cpu_secs: 0.0,
            died: false,
            parent: None,
            last_cpu: procfs::cpu_secs(pid).unwrap_or(0.0),
            publish_cpu0: 0.0,
        };
        let procs = servers
            .iter()
            .map(|&p| make(p, Role::Server))
            .chain(redis.iter().map(|&p| make(p, Role::Redis)))
            .collect();
        let mut procs = Procs {
            procs,
            publishing: false,
        };
        // Children already there (the caller may give only the master) count from the start.
        procs.adopt_children(false);
        procs
    }

    /// Adds the children of the server PIDs that are not sampled yet and run the same program
    /// (nginx's workers), as servers: with `during_run`, started during the run (memory before
    /// them: none).
    fn adopt_children(&mut self, during_run: bool) {
        let mut k = 0;
        // Children of children too: the list grows while it is walked.
        while k < self.procs.len() {
            let p = &self.procs[k];
            k += 1;
            if p.role != Role::Server || p.died {
                continue;
            }
            let parent = p.pid;
            let program = procfs::comm(parent);
            for child in procfs::children(parent) {
                if self.procs.iter().any(|q| q.pid == child)
                    || program.is_none()
                    || procfs::comm(child) != program
                {
                    continue;
                }
                let cpu = procfs::cpu_secs(child).unwrap_or(0.0);
                self.procs.push(Proc {
                    pid: child,
                    role: Role::Server,
                    rss_before: if during_run {
                        0
                    } else {
                        procfs::rss_bytes(child).unwrap_or(0)
                    },
                    rss_connected: 0,
                    rss_after: 0,
                    publish_cpu_secs: 0.0,
                    died: false,
                    parent: during_run.then_some(parent),
                    last_cpu: cpu,
                    // Born during the phase: all of its CPU is the phase's.
                    publish_cpu0: if self.publishing { 0.0 } else { cpu },
                });
            }
        }
    }

    /// The server PIDs sampled (given and found).
    pub fn server_pids(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|p| p.role == Role::Server)
            .map(|p| p.pid)
            .collect()
    }

    /// Reads every PID's CPU again (and finds the servers' new children); one that is gone
    /// keeps its last figure.
    pub fn refresh(&mut self) {
        self.adopt_children(true);
        for p in &mut self.procs {
            match procfs::cpu_secs(p.pid) {
                Some(cpu) => p.last_cpu = cpu,
                None => p.died = true,
            }
            // A zombie (dead, not yet reaped by its parent) still has its figures.
            p.died |= procfs::zombie(p.pid);
        }
    }

    /// CPU seconds used so far by the PIDs of `role` (as last read).
    pub fn cpu(&self, role: Role) -> f64 {
        self.procs
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.last_cpu)
            .sum()
    }

    /// RSS now of the PIDs of `role`.
    pub fn rss(&self, role: Role) -> u64 {
        self.procs
            .iter()
            .filter(|p| p.role == role)
            .filter_map(|p| procfs::rss_bytes(p.pid))
            .sum()
    }

    /// Records every PID's memory with the connections open.
    pub fn connected(&mut self) {
        for p in &mut self.procs {
            p.rss_connected = procfs::rss_bytes(p.pid).unwrap_or(0);
        }
    }

    /// Marks the start of the publish phase.
    pub fn publish_started(&mut self) {
        self.refresh();
        self.publishing = true;
        for p in &mut self.procs {
            p.publish_cpu0 = p.last_cpu;
        }
    }

    /// Marks its end.
    pub fn publish_ended(&mut self) {
        self.refresh();
        for p in &mut self.procs {
            p.publish_cpu_secs = p.last_cpu - p.publish_cpu0;
            p.rss_after = procfs::rss_bytes(p.pid).unwrap_or(0);
        }
    }
}

/// The service at one instant.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// Connections open and subscribed.
    pub connected: u32,
    /// Connections that dropped so far.
    pub dropped: u64,
    /// Events received so far, every arrival.
    pub received: u64,
    /// Events accepted so far.
    pub published: u64,
    /// Publish requests that failed so far.
    pub errors: u64,
    /// Servers' CPU seconds so far.
    pub server_cpu: f64,
    /// Redis's CPU seconds so far.
    pub redis_cpu: f64,
}

/// The samples of a run, in time order.
#[derive(Debug, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The last sample at or before `at`, or else the first.
    fn at(&self, at: f64) -> Option<&Sample> {
        let i = self.0.partition_point(|s| s.at <= at);
        self.0.get(i.saturating_sub(1))
    }

    /// Server and Redis CPU seconds, and publish errors, between `from` and `to`.
    pub fn between(&self, from: f64, to: f64) -> (f64, f64, u64) {
        match (self.at(from), self.at(to)) {
            (Some(a), Some(b)) => (
                (b.server_cpu - a.server_cpu).max(0.0),
                (b.redis_cpu - a.redis_cpu).max(0.0),
                b.errors.saturating_sub(a.errors),
            ),
            _ => (0.0, 0.0, 0),
        }
    }

    /// After `from`: when connections first fell below `full` (or a drop was counted, for one
    /// shorter than a sample), the fewest at once, and how long after `from` they were all
    /// back (`None`: never fell, or never all back).
    pub fn recovery(&self, from: f64, full: u32) -> (Option<f64>, u32, Option<f64>) {
        let mut fell = None;
        let mut fewest = full;
        let dropped0 = self.at(from).map_or(0, |s| s.dropped);
        for s in self.0.iter().filter(|s| s.at >= from) {
            fewest = fewest.min(s.connected);
            if (s.connected < full || s.dropped > dropped0) && fell.is_none() {
                fell = Some(s.at - from);
            }
            if fell.is_some() && s.connected >= full {
                return (fell, fewest, Some(s.at - from));
            }
        }
        (fell, fewest, None)
    }

    /// The first second (since `from`) in which publishes failed, and the last.
    pub fn error_span(&self, from: f64) -> Option<(f64, f64)> {
        let mut span: Option<(f64, f64)> = None;
        for w in self.0.windows(2).filter(|w| w[1].at >= from) {
            if w[1].errors > w[0].errors {
                let t = w[1].at - from;
                span = Some(span.map_or((t, t), |(a, _)| (a, t)));
            }
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(at: f64, connected: u32, errors: u64, cpu: f64) -> Sample {
        Sample {
            at,
            connected,
            errors,
            server_cpu: cpu,
            redis_cpu: cpu / 10.0,
            ..Sample::default()
        }
    }

    #[test]
    fn windows_recovery_and_error_spans_read_the_samples() {
        let samples = Samples(vec![
            s(10.0, 100, 0, 1.0),
            s(11.0, 100, 0, 2.0),
            s(12.0, 60, 3, 3.0),
            s(13.0, 90, 7, 4.5),
            s(14.0, 100, 7, 5.0),
            s(15.0, 100, 7, 6.0),
        ]);
        let (server, redis, errors) = samples.between(11.0, 14.0);
        assert!((server - 3.0).abs() < 1e-9 && (redis - 0.3).abs() < 1e-9);
        assert_eq!(errors, 7);
        assert_eq!(samples.between(11.5, 11.9), (0.0, 0.0, 0));
        assert_eq!(
            samples.recovery(11.0, 100),
            (Some(1.0), 60, Some(3.0)),
            "fell 1 s after, fewest 60, all back 3 s after"
        );
        assert_eq!(samples.recovery(14.0, 100), (None, 100, None));
        assert_eq!(samples.recovery(11.0, 101).2, None, "never all back");
        assert_eq!(samples.error_span(10.0), Some((2.0, 3.0)));
        // A drop shorter than a sample: seen in the counter, not in the connections.
        let mut quick = Samples(vec![s(10.0, 100, 0, 1.0), s(11.0, 100, 0, 1.0)]);
        quick.0[1].dropped = 5;
        assert_eq!(quick.recovery(10.0, 100), (Some(1.0), 100, Some(1.0)));
        assert_eq!(samples.error_span(14.0), None);
    }

    #[test]
    fn a_pid_that_died_keeps_its_cpu() {
        let mut procs = Procs::new(&[std::process::id()], &[u32::MAX]);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 100 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        procs.refresh();
        assert!(procs.cpu(Role::Server) > 0.0);
        assert_eq!(procs.cpu(Role::Redis), 0.0);
        assert!(procs.procs[1].died && !procs.procs[0].died);
    }

    #[test]
    fn a_child_a_server_starts_later_is_sampled_and_its_cpu_counts() {
        // A stand-in "master" (this process's child, a shell) that starts a busy "worker" (a
        // subshell: the same program) only after the sampling began, as nginx does when it
        // replaces a crashed worker; its `sleep`, another program, is not sampled.
        let mut master = std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 0.3; (i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done) & wait",
            ])
            .spawn()
            .expect("sh runs");
        let mut procs = Procs::new(&[master.id()], &[]);
        assert_eq!(procs.server_pids(), [master.id()]);
        procs.publish_started();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut found = None;
        while std::time::Instant::now() < deadline {
            procs.refresh();
            // The busiest child (the first one, `sleep`, spends nothing).
            if let Some(c) = procs
                .procs
                .iter()
                .filter(|p| p.parent == Some(master.id()))
                .max_by(|a, b| a.last_cpu.total_cmp(&b.last_cpu))
            {
                found = Some(c.pid);
                if c.last_cpu > 0.05 {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let child = found.expect("the child was found");
        assert_ne!(child, master.id());
        assert!(
            procs
                .procs
                .iter()
                .all(|p| procfs::comm(p.pid).is_none_or(|c| c == "sh")),
            "only the shell's own kind"
        );
        let _ = master.wait();
        procs.publish_ended();
        let c = procs.procs.iter().find(|p| p.pid == child).unwrap();
        assert_eq!(c.role, Role::Server);
        assert_eq!(c.rss_before, 0, "born during the run");
        assert!(c.publish_cpu_secs > 0.05, "{}", c.publish_cpu_secs);
        assert!(procs.cpu(Role::Server) >= c.publish_cpu_secs);
    }
}
