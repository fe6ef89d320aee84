//! Connections per user across nodes (CONTRACT.md section 9): one sorted set per user, named
//! with the org's hash tag ([`Keys::leases`]), holding a member per open connection
//! (`<node>:<conn>`) scored by the instant its lease expires, on Redis's clock (`TIME`, so the
//! nodes' clocks never matter). A node renews all its leases every third of their TTL; those of
//! a node that died expire with the TTL, and every take first drops the expired ones.
//!
//! While Redis cannot answer, a take is [`Lease::Unknown`] and the node's own count decides;
//! the node keeps the connection in its book all the same, and the next renewal adds it, so
//! the count across nodes converges once Redis is back.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use redis::Script;
use tokio::sync::mpsc;

use super::keys::Keys;
use super::link::Link;
use crate::broker::{Lease, UserKey};
use crate::hub::ConnId;

/// Renewals in flight at once (they share the one multiplexed connection, so this is the
/// pipeline's depth).
const RENEW_DEPTH: usize = 64;
/// Leases given back and not yet removed from Redis; past this, a lease given back is left to
/// expire with its TTL.
const GIVEN_BACK: usize = 10_000;
/// Leases removed in one round trip at most.
pub(crate) const REMOVE_BATCH: usize = 256;

/// A lease given back: its key and member.
pub(crate) type Gone = (String, String);

/// Takes a lease unless the user has the maximum.
///
/// KEYS: the user's leases. ARGV: member, maximum, TTL (ms). Returns 1 (taken) or 0 (full).
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// Renews (or adds) leases of one user, and drops the expired ones.
///
/// KEYS: the user's leases. ARGV: TTL (ms), then the members. Returns how many are held.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
"#;

/// This node's leases.
pub(crate) struct Book {
    keys: Keys,
    /// This node's part of every member: random, per process.
    node: String,
    ttl: Duration,
    held: Mutex<HashMap<UserKey, HashSet<ConnId>>>,
    take: Script,
    renew: Script,
    gone: mpsc::Sender<Gone>,
    given_back: Mutex<Option<mpsc::Receiver<Gone>>>,
}

impl Book {
    /// A book of leases that live `ttl` unless renewed.
    pub(crate) fn new(keys: Keys, ttl: Duration) -> Book {
        let (gone, given_back) = mpsc::channel(GIVEN_BACK);
        Book {
            gone,
            given_back: Mutex::new(Some(given_back)),
            keys,
            node: format!("{:016x}", rand::random::<u64>()),
            ttl,
            held: Mutex::new(HashMap::new()),
            take: Script::new(TAKE),
            renew: Script::new(RENEW),
        }
    }

    /// How often [`Book::renew`] must run.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn member(&self, conn: ConnId) -> String {
        format!("{}:{conn}", self.node)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis().max(1) as u64
    }

    /// Takes a lease for `conn` of `user`, unless `max` are held across nodes.
    pub(crate) async fn take(
        &self,
        link: &Link,
        user: &UserKey,
        conn: ConnId,
        max: usize,
    ) -> Lease {
        let answer = if link.is_up() {
            let mut invocation = self.take.prepare_invoke();
            invocation
                .key(self.keys.leases(&user.0, &user.1))
                .arg(self.member(conn))
                .arg(max)
                .arg(self.ttl_ms());
            link.run(|mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await
        } else {
            None
        };
        let lease = match answer {
            Some(1) => Lease::Taken,
            Some(_) => return Lease::Full,
            None => Lease::Unknown,
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.entry(user.clone()).or_default().insert(conn);
        lease
    }

    /// Gives `conn`'s lease back: forgotten now, removed from Redis by the task that reads
    /// [`Book::given_back`]. Never blocks.
    pub(crate) fn give_back(&self, user: &UserKey, conn: ConnId) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conns) = held.get_mut(user) {
            conns.remove(&conn);
            if conns.is_empty() {
                held.remove(user);
            }
        }
        drop(held);
        // Full: the lease expires with its TTL instead.
        let _ = self
            .gone
            .try_send((self.keys.leases(&user.0, &user.1), self.member(conn)));
    }

    /// The leases given back, for the one task that removes them (`None` after the first call).
    pub(crate) fn given_back(&self) -> Option<mpsc::Receiver<Gone>> {
        self.given_back
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Removes leases given back from Redis, pipelined on the one connection (a Cluster
    /// refuses a pipeline across slots, so one command each); one that fails expires with its
    /// TTL.
    pub(crate) async fn remove(&self, link: &Link, gone: Vec<Gone>) {
        futures_util::stream::iter(gone)
            .for_each_concurrent(RENEW_DEPTH, |(key, member)| async move {
                link.run(|mut c| {
                    let (key, member) = (&key, &member);
                    async move {
                        redis::cmd("ZREM")
                            .arg(key)
                            .arg(member)
                            .query_async::<i64>(&mut c)
                            .await
                    }
                })
                .await;
            })
            .await;
    }

    /// Renews every lease of this node (one script per user, pipelined).
    pub(crate) async fn renew(&self, link: &Link) {
        if !link.is_up() {
            return;
        }
        let users: Vec<(String, Vec<String>)> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.iter()
                .map(|(user, conns)| {
                    let key = self.keys.leases(&user.0, &user.1);
                    (key, conns.iter().map(|c| self.member(*c)).collect())
                })
                .collect()
        };
        let ttl = self.ttl_ms();
        futures_util::stream::iter(users)
            .for_each_concurrent(RENEW_DEPTH, |(key, members)| async move {
                let mut invocation = self.renew.prepare_invoke();
                invocation.key(key).arg(ttl).arg(members);
                link.run(|mut c| {
                    let invocation = &invocation;
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                })
                .await;
            })
            .await;
    }
}
