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
use std::sync::{Arc, Mutex};
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

/// Renews (or adds) the leases of several users of one org (their keys share its hash tag, so
/// one slot), and drops the expired ones.
///
/// KEYS: each user's leases. ARGV: TTL (ms), then per key its count of members and the
/// members. Returns how many keys it renewed.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  at = at + 1
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  for i = 1, n do
    redis.call('ZADD', KEYS[k], now + ttl, ARGV[at])
    at = at + 1
  end
  redis.call('PEXPIRE', KEYS[k], ttl)
end
return #KEYS
"#;

/// Users renewed in one script call at most (one org's, so one slot in a Cluster): 100,000
/// connections of distinct users cost 1,000 calls a renewal, not 100,000.
const RENEW_BATCH: usize = 100;

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

    /// Renews every lease of this node (one script per org and [`RENEW_BATCH`] users,
    /// pipelined).
    pub(crate) async fn renew(&self, link: &Link) {
        if !link.is_up() {
            return;
        }
        // Per org: its users' keys and members.
        let mut orgs: HashMap<Arc<str>, Vec<(String, Vec<String>)>> = HashMap::new();
        {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            for (user, conns) in held.iter() {
                let key = self.keys.leases(&user.0, &user.1);
                orgs.entry(user.0.clone())
                    .or_default()
                    .push((key, conns.iter().map(|c| self.member(*c)).collect()));
            }
        }
        let batches: Vec<Vec<(String, Vec<String>)>> = orgs
            .into_values()
            .flat_map(|mut users| {
                let mut out = Vec::new();
                while !users.is_empty() {
                    let rest = users.split_off(users.len().min(RENEW_BATCH));
                    out.push(std::mem::replace(&mut users, rest));
                }
                out
            })
            .collect();
        let ttl = self.ttl_ms();
        futures_util::stream::iter(batches)
            .for_each_concurrent(RENEW_DEPTH, |users| async move {
                let mut invocation = self.renew.prepare_invoke();
                invocation.arg(ttl);
                for (key, members) in users {
                    invocation.key(key).arg(members.len()).arg(members);
                }
                link.run(|mut c| {
                    let invocation = &invocation;
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                })
                .await;
            })
            .await;
    }
}
