//! The command connection: one multiplexed connection (requests in flight are pipelined on
//! it), every command bounded by the configured timeout, and a task that connects again with
//! backoff and jitter whenever the connection is lost. It never retries a command: a command
//! whose outcome is unknown is reported as a failure, and the caller decides.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::reconnect::Reconnect;

/// How often an idle connection is pinged.
const PROBE: Duration = Duration::from_secs(1);

/// The node's command connection to Redis.
pub(crate) struct Link {
    client: Client,
    config: AsyncConnectionConfig,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    lost: Notify,
    /// Someone has reason to doubt the connection (the pub/sub one was lost): ping it now.
    doubt: Notify,
}

impl Link {
    /// A link to `client`, not connected yet ([`Link::maintain`] connects it).
    pub(crate) fn new(client: Client, timeout: Duration) -> Link {
        Link {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout),
            timeout,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            lost: Notify::new(),
            doubt: Notify::new(),
        }
    }

    /// Whether the connection is up.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A handle on the connection, if it is up.
    pub(crate) fn connection(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `command` on the connection within the timeout. A failure that concerns the
    /// connection (not an error answer of a script) marks it lost.
    pub(crate) async fn run<T, F>(
        &self,
        command: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Option<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection()?;
        match tokio::time::timeout(self.timeout, command(conn)).await {
            Ok(Ok(v)) => Some(v),
            // The server answered with an error (a script's): the connection is fine.
            Ok(Err(e)) if answered(&e) => {
                tracing::warn!(error = %e, "redis command refused");
                None
            }
            _ => {
                self.mark_lost();
                None
            }
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

    /// Keeps the connection up until `stop`: connects, then pings it every [`PROBE`] (and when
    /// it is doubted) until it is lost, then connects again after a backoff with full jitter. The
    /// probe is what makes an idle node notice a Redis that died or was paused.
    pub(crate) async fn maintain(&self, stop: CancellationToken) {
        let mut backoff = Reconnect::new();
        loop {
            let attempt = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config);
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.timeout, attempt) => r.ok().and_then(Result::ok),
            };
            let pinged = match connected {
                Some(mut conn) => ping(&mut conn).await.then_some(conn),
                None => None,
            };
            match pinged {
                Some(conn) => {
                    let mut probe = conn.clone();
                    *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                    self.up.store(true, Ordering::Release);
                    tracing::info!("redis connected");
                    backoff.reset();
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
                _ => {
                    if !backoff.wait(&stop).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Whether an error is the server's answer (the connection works), rather than the connection's
/// (closed, reset, timed out, or a library state that means it must be replaced).
fn answered(e: &redis::RedisError) -> bool {
    use redis::ErrorKind::*;
    matches!(
        e.kind(),
        ResponseError | TypeError | ExecAbortError | NoScriptError | ExtensionError | ReadOnly
    )
}

async fn ping(conn: &mut MultiplexedConnection) -> bool {
    conn.req_packed_command(&redis::cmd("PING")).await.is_ok()
}
