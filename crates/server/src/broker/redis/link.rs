//! The command connection: one multiplexed connection (requests in flight are pipelined on
//! it), every command bounded by the configured timeout, and a task that connects again with
//! backoff and jitter whenever the connection is lost. In a Cluster it is redis-rs's Cluster
//! connection (one multiplexed connection per master, the slot map kept by redis-rs), with its
//! own retries turned off. It never retries a command whose outcome is unknown (a timeout, a
//! lost connection): that is reported as a failure, and the caller decides. It retries only
//! what Redis refused before running it (MOVED, ASK, TRYAGAIN, CLUSTERDOWN while a Cluster
//! reshards or fails over), within the same timeout.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, ServerErrorKind, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reconnect::Reconnect;

/// How often an idle connection to one server is pinged.
const PROBE: Duration = Duration::from_secs(1);
/// The least time between two renewals of a Cluster's connection.
const CLUSTER_RENEW: Duration = Duration::from_secs(1);
/// The wait before a command Redis refused unexecuted is sent again.
const REDIRECT_WAIT: Duration = Duration::from_millis(50);

/// Where the commands go.
pub(crate) enum Target {
    /// One Redis server.
    One(Box<Client>),
    /// A Redis Cluster.
    Cluster(Box<ClusterClient>),
}

/// A handle on the command connection (cheap to clone).
#[derive(Clone)]
pub(crate) enum Conn {
    /// To one Redis server.
    One(MultiplexedConnection),
    /// To a Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The node's command connection to Redis.
pub(crate) struct Link {
    target: Target,
    config: AsyncConnectionConfig,
    timeout: Duration,
    conn: Mutex<Option<Conn>>,
    up: AtomicBool,
    lost: Notify,
    /// Someone has reason to doubt the connection (the pub/sub one was lost): ping it now.
    doubt: Notify,
    /// A Cluster command failed on its connection: read the slot map again (a new connection).
    stale: Notify,
}

impl Link {
    /// A link to `target`, not connected yet ([`Link::maintain`] connects it).
    pub(crate) fn new(target: Target, timeout: Duration) -> Link {
        Link {
            target,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            timeout,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            lost: Notify::new(),
            doubt: Notify::new(),
            stale: Notify::new(),
        }
    }

    /// Whether this is a Cluster's link.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Whether the connection is up (in a Cluster: made; each master's health is the pub/sub
    /// side's to tell, as one master down leaves the other shards working).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A handle on the connection, if it is up.
    pub(crate) fn connection(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `command` on the connection within the timeout, sending it again while Redis
    /// refuses it unexecuted (a Cluster resharding or failing over). A failure that concerns a
    /// connection to one server (not an error answer) marks it lost.
    pub(crate) async fn run<T, F>(&self, command: impl Fn(Conn) -> F) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection()?;
        let started = Instant::now();
        let deadline = started + self.timeout;
        let answer = self.run_on(conn, deadline, command).await;
        crate::metrics::redis_command(started.elapsed());
        answer
    }

    /// [`Link::run`] on `conn`, until `deadline`.
    async fn run_on<T, F>(
        &self,
        conn: Conn,
        deadline: Instant,
        command: impl Fn(Conn) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        loop {
            match tokio::time::timeout_at(deadline, command(conn.clone())).await {
                Ok(Ok(v)) => return Some(v),
                Ok(Err(e)) if unexecuted(&e) && Instant::now() + REDIRECT_WAIT < deadline => {
                    tracing::debug!(error = %e, "redis refused a command unexecuted; again");
                    tokio::time::sleep(REDIRECT_WAIT).await;
                }
                // The server answered with an error (a script's, OOM): the connection is fine.
                Ok(Err(e)) if answered(&e) => {
                    tracing::warn!(error = %e, "redis command refused");
                    return None;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis command failed");
                    self.failed();
                    return None;
                }
                Err(_) => {
                    tracing::warn!("redis command timed out");
                    self.failed();
                    return None;
                }
            }
        }
    }

    /// A command's connection failed: one server's is replaced; a Cluster's is renewed (see
    /// [`Link::maintain`]) while the old one goes on serving the other shards.
    fn failed(&self) {
        if self.is_cluster() {
            self.stale.notify_one();
        } else {
            self.mark_lost();
        }
    }

    /// Asks for a ping of the connection now (a dead one is then replaced).
    pub(crate) fn doubt(&self) {
        self.doubt.notify_one();
    }

    fn mark_lost(&self) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!("redis connection lost; reconnecting");
        }
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.lost.notify_one();
    }

    /// Connects within the timeout; why not, when it failed.
    async fn connect(&self) -> Result<Conn, String> {
        let attempt = async {
            match &self.target {
                Target::One(client) => client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await
                    .map(Conn::One),
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Keeps the connection up until `stop`: connects, then pings it every [`PROBE`] (and when
    /// it is doubted) until it is lost, then connects again after a backoff with full jitter. The
    /// probe is what makes an idle node notice a Redis that died or was paused. A Cluster's
    /// connection, once made, stays up: redis-rs reconnects to each master itself, but with its
    /// own retries off it keeps the slot map it read, so a master that died and was failed over
    /// to its replica would stay in it for ever. A command that fails on the connection (not
    /// an answer) asks for a new connection, which reads the slot map again from the seeds;
    /// it replaces the old one at most once a second, and readiness never flaps meanwhile.
    pub(crate) async fn maintain(&self, stop: CancellationToken) {
        let mut backoff = Reconnect::new();
        // The last reason a connect failed, told once (a bad certificate, a refused port).
        let mut failing: Option<String> = None;
        let mut connected_before = false;
        loop {
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                c = self.connect() => c,
            };
            let pinged = match connected {
                Ok(mut conn) => (self.is_cluster() || ping(&mut conn).await).then_some(conn),
                Err(why) => {
                    if failing.as_ref() != Some(&why) {
                        tracing::warn!(error = %why, "redis connect failed");
                        failing = Some(why);
                    }
                    None
                }
            };
            let Some(conn) = pinged else {
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            };
            let mut probe = conn.clone();
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
            self.up.store(true, Ordering::Release);
            tracing::info!("redis connected");
            if connected_before {
                crate::metrics::redis_reconnected(crate::metrics::RedisLink::Command);
            }
            connected_before = true;
            backoff.reset();
            failing = None;
            if self.is_cluster() {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.stale.notified() => {}
                    }
                    match self.connect().await {
                        Ok(conn) => {
                            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                            tracing::info!("redis cluster connection renewed: slot map read again");
                        }
                        Err(why) => {
                            tracing::warn!(error = %why, "renewing the redis cluster connection failed")
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(CLUSTER_RENEW) => {}
                    }
                }
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.lost.notified() => break,
                    _ = self.doubt.notified() => {}
                    _ = tokio::time::sleep(PROBE) => {}
                }
                let alive = tokio::time::timeout(self.timeout, ping(&mut probe)).await;
                if !matches!(alive, Ok(true)) {
                    self.mark_lost();
                    break;
                }
            }
        }
    }
}

/// Whether Redis refused a command without running it, so that sending it again is safe.
fn unexecuted(e: &redis::RedisError) -> bool {
    use ServerErrorKind::*;
    matches!(
        e.kind(),
        redis::ErrorKind::Server(Moved | Ask | TryAgain | ClusterDown | MasterDown | BusyLoading)
    )
}

/// Whether an error is the server's answer (the connection works), rather than the connection's
/// (closed, reset, timed out, or a library state that means it must be replaced).
pub(crate) fn answered(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(_)
            | redis::ErrorKind::Extension
            | redis::ErrorKind::UnexpectedReturnType
    )
}

async fn ping(conn: &mut Conn) -> bool {
    conn.req_packed_command(&redis::cmd("PING")).await.is_ok()
}
