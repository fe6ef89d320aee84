//! Which server each org's events are heard from: the one Redis server, or in a Cluster the
//! master that owns the org's slot ([`keys::slot`]), with one [`Listener`] per master (sharded
//! pub/sub, `SSUBSCRIBE`, so each message crosses only its own shard). It counts the node's holds
//! per org, tells the org's listener what is wanted, and when the Cluster's slot map changes
//! (read with `CLUSTER SLOTS` every [`REFRESH`], and at once when a listener hears of a move) it
//! starts listeners for new masters, stops those of departed ones and moves their orgs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::keys::{self, Keys};
use super::listener::{Hooks, Listener};
use super::pubsub::Server;
use super::tls::Tls;

/// How often a Cluster's slot map is read again.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);

/// A slot range and its master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Range {
    pub(crate) first: u16,
    pub(crate) last: u16,
    pub(crate) master: Server,
}

struct Running {
    listener: Arc<Listener>,
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    ranges: Vec<Range>,
    listeners: HashMap<String, Running>,
    holds: HashMap<Arc<str>, usize>,
    /// The server each held org is wanted from.
    home: HashMap<Arc<str>, String>,
}

/// The node's pub/sub listeners, one per server it hears from.
pub(crate) struct Shards {
    keys: Keys,
    sharded: bool,
    /// How `rediss://` servers are reached.
    tls: Option<Tls>,
    timeout: Duration,
    hooks: Arc<Hooks>,
    stop: CancellationToken,
    state: Mutex<State>,
    /// A listener heard that slots moved.
    pub(crate) moved: Notify,
}

impl Shards {
    /// Listeners for the servers of `ranges` (one range over every slot for one server;
    /// none yet for a Cluster whose slot map is still to be read), for orgs named by `keys`;
    /// `tls` for servers reached over TLS.
    pub(crate) fn new(
        keys: Keys,
        sharded: bool,
        tls: Option<Tls>,
        timeout: Duration,
        hooks: Hooks,
        stop: CancellationToken,
    ) -> Shards {
        Shards {
            keys,
            sharded,
            tls,
            timeout,
            hooks: Arc::new(hooks),
            stop,
            state: Mutex::new(State::default()),
            moved: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn master_of(ranges: &[Range], org: &str) -> Option<String> {
        let slot = keys::slot(org);
        ranges
            .iter()
            .find(|r| r.first <= slot && slot <= r.last)
            .map(|r| r.master.addr())
    }

    /// The listener `org`'s events come from now.
    fn listener_of(&self, org: &str) -> Option<Arc<Listener>> {
        let s = self.state();
        let addr = Shards::master_of(&s.ranges, org)?;
        s.listeners.get(&addr).map(|r| r.listener.clone())
    }

    /// Whether every listener is up (and, in a Cluster, the slot map known).
    pub(crate) fn is_up(&self) -> bool {
        let s = self.state();
        !s.listeners.is_empty() && s.listeners.values().all(|r| r.listener.is_up())
    }

    /// Whether `org`'s events come to this node now.
    pub(crate) fn listens_to(&self, org: &str) -> bool {
        self.listener_of(org).is_some_and(|l| l.listens_to(org))
    }

    /// Waits (within the timeout) until `org`'s events come to this node.
    pub(crate) async fn subscribed(&self, org: &str) -> bool {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(l) = self.listener_of(org) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                return tokio::time::timeout(left, l.subscribed(org))
                    .await
                    .unwrap_or(false);
            }
            // A Cluster whose slot map is not read yet.
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This node holds one more channel of `org`.
    pub(crate) fn hold(&self, org: &Arc<str>) {
        let mut s = self.state();
        let n = s.holds.entry(org.clone()).or_insert(0);
        *n += 1;
        if *n == 1
            && let Some(addr) = Shards::master_of(&s.ranges, org)
        {
            if let Some(r) = s.listeners.get(&addr) {
                r.listener.want(org);
            }
            s.home.insert(org.clone(), addr);
        }
    }

    /// This node holds one channel of `org` fewer.
    pub(crate) fn release(&self, org: &str) {
        let mut s = self.state();
        let Some(n) = s.holds.get_mut(org) else {
            return;
        };
        *n -= 1;
        if *n > 0 {
            return;
        }
        s.holds.remove(org);
        if let Some(addr) = s.home.remove(org)
            && let Some(r) = s.listeners.get(&addr)
        {
            r.listener.unwant(org, false);
        }
    }

    /// The servers and their slots are `ranges` now: listeners start and stop to match, and
    /// each held org is wanted from its master. Returns the orgs that moved to another server
    /// (what was published for them meanwhile is for the broker to catch up).
    pub(crate) fn set_ranges(&self, ranges: Vec<Range>) -> Vec<(Arc<str>, Arc<Listener>)> {
        let mut s = self.state();
        if s.ranges == ranges {
            return Vec::new();
        }
        tracing::info!(masters = ranges.len(), "redis slot map changed");
        let mut wanted: HashMap<String, Server> = HashMap::new();
        for r in &ranges {
            wanted.insert(r.master.addr(), r.master.clone());
        }
        s.listeners.retain(|addr, r| {
            let keep = wanted.contains_key(addr);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (addr, server) in wanted {
            if s.listeners.contains_key(&addr) {
                continue;
            }
            let listener = Arc::new(Listener::new(
                server,
                self.tls.clone(),
                self.keys.clone(),
                self.sharded,
                self.timeout,
            ));
            let stop = self.stop.child_token();
            let (l, hooks, st) = (listener.clone(), self.hooks.clone(), stop.clone());
            tokio::spawn(async move { l.run(st, &hooks).await });
            s.listeners.insert(addr, Running { listener, stop });
        }
        s.ranges = ranges;
        let mut moved = Vec::new();
        let orgs: Vec<Arc<str>> = s.holds.keys().cloned().collect();
        for org in orgs {
            let now = Shards::master_of(&s.ranges, &org);
            let before = s.home.get(&org).cloned();
            if now == before {
                continue;
            }
            if let Some(old) = before.as_ref().and_then(|a| s.listeners.get(a)) {
                old.listener.unwant(&org, true);
            }
            s.home.remove(&org);
            if let Some(addr) = now
                && let Some(r) = s.listeners.get(&addr)
            {
                r.listener.want(&org);
                if before.is_some() {
                    moved.push((org.clone(), r.listener.clone()));
                }
                s.home.insert(org, addr);
            }
        }
        moved
    }
}

/// The ranges of a `CLUSTER SLOTS` answer; `template` gives the credentials and whether TLS is
/// used (a Cluster with `tls-cluster yes` answers with its TLS ports), and the host for a master
/// that names none.
pub(crate) fn parse_slots(answer: &redis::Value, template: &Server) -> Option<Vec<Range>> {
    use redis::Value;
    let Value::Array(entries) = answer else {
        return None;
    };
    let mut ranges = Vec::new();
    for e in entries {
        let Value::Array(parts) = e else { return None };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return None;
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) if !h.is_empty() => String::from_utf8(h.clone()).ok()?,
            _ => template.host.clone(),
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        ranges.push(Range {
            first: u16::try_from(*first).ok()?,
            last: u16::try_from(*last).ok()?,
            master: Server {
                host,
                port: u16::try_from(*port).ok()?,
                ..template.clone()
            },
        });
    }
    ranges.sort_by_key(|r| r.first);
    Some(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn server(port: u16) -> Server {
        Server {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: Some("pw".into()),
            tls: true,
        }
    }

    #[test]
    fn a_slot_map_names_each_range_master_with_the_seed_credentials() {
        let entry = |a: i64, b: i64, host: &str, port: i64| {
            Value::Array(vec![
                Value::Int(a),
                Value::Int(b),
                Value::Array(vec![
                    Value::BulkString(host.as_bytes().to_vec()),
                    Value::Int(port),
                    Value::BulkString(b"id".to_vec()),
                ]),
                Value::Array(vec![Value::BulkString(b"10.0.0.9".to_vec()), Value::Int(1)]),
            ])
        };
        let answer = Value::Array(vec![
            entry(5461, 10922, "127.0.0.1", 7001),
            entry(0, 5460, "", 7000),
        ]);
        let ranges = parse_slots(&answer, &server(6999)).unwrap();
        assert_eq!(
            ranges,
            [
                Range {
                    first: 0,
                    last: 5460,
                    master: server(7000)
                },
                Range {
                    first: 5461,
                    last: 10922,
                    master: server(7001)
                },
            ]
        );
        assert_eq!(parse_slots(&Value::Int(1), &server(1)), None);
        assert_eq!(
            parse_slots(&Value::Array(vec![Value::Int(1)]), &server(1)),
            None
        );
    }

    #[test]
    fn an_org_is_heard_from_the_master_of_its_slot() {
        let ranges = [
            Range {
                first: 0,
                last: 8191,
                master: server(7000),
            },
            Range {
                first: 8192,
                last: 16383,
                master: server(7001),
            },
        ];
        // slot("foo") is 12182.
        assert_eq!(
            Shards::master_of(&ranges, "foo"),
            Some("127.0.0.1:7001".into())
        );
        assert_eq!(Shards::master_of(&ranges[..1], "foo"), None);
    }
}
