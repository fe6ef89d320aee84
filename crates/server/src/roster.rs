//! Who is connected to this node, for operators' disconnects: each authenticated connection's
//! org, user and outbox, by connection id. Kept only when the admin listener is on (a node
//! without it pays nothing per connection). It finds connections and asks their outboxes to
//! close ([`crate::ws::Outbox::kick`]); the sessions do the closing. Never awaits; each shard
//! lock is held alone and briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::hub::ConnId;
use crate::ws::Outbox;

const SHARDS: usize = 16;

struct Entry {
    org: Arc<str>,
    sub: Arc<str>,
    outbox: Outbox,
}

/// The connections of this node, when kept.
pub(crate) struct Roster {
    shards: Option<Vec<Mutex<HashMap<ConnId, Entry>>>>,
}

impl Roster {
    /// A roster; `kept` false makes every call a no-op.
    pub(crate) fn new(kept: bool) -> Roster {
        Roster {
            shards: kept.then(|| (0..SHARDS).map(|_| Mutex::default()).collect()),
        }
    }

    fn shard(&self, conn: ConnId) -> Option<std::sync::MutexGuard<'_, HashMap<ConnId, Entry>>> {
        let shards = self.shards.as_ref()?;
        Some(
            shards[conn as usize % SHARDS]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// A connection was authenticated.
    pub(crate) fn join(&self, conn: ConnId, org: &Arc<str>, sub: &str, outbox: &Outbox) {
        if let Some(mut s) = self.shard(conn) {
            s.insert(
                conn,
                Entry {
                    org: org.clone(),
                    sub: Arc::from(sub),
                    outbox: outbox.clone(),
                },
            );
        }
    }

    /// A connection ended.
    pub(crate) fn leave(&self, conn: ConnId) {
        if let Some(mut s) = self.shard(conn) {
            s.remove(&conn);
        }
    }

    /// Asks every connection of user `sub` of `org` to close with `code`; how many.
    pub(crate) fn kick_user(&self, org: &str, sub: &str, code: u16) -> usize {
        let Some(shards) = &self.shards else { return 0 };
        let mut n = 0;
        for shard in shards {
            let s = shard.lock().unwrap_or_else(|e| e.into_inner());
            for e in s.values().filter(|e| &*e.org == org && &*e.sub == sub) {
                e.outbox.kick(code);
                n += 1;
            }
        }
        n
    }

    /// Asks connection `conn` to close with `code`; whether it is here.
    pub(crate) fn kick(&self, conn: ConnId, code: u16) -> bool {
        match self.shard(conn).as_ref().and_then(|s| s.get(&conn)) {
            Some(e) => {
                e.outbox.kick(code);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Batch, Queue};

    #[test]
    fn kicks_reach_exactly_the_users_connections() {
        let r = Roster::new(true);
        let org: Arc<str> = Arc::from("o_1");
        let boxes: Vec<Outbox> = (0..3).map(|_| Outbox::new(100, 10)).collect();
        r.join(1, &org, "u_1", &boxes[0]);
        r.join(2, &org, "u_1", &boxes[1]);
        r.join(3, &org, "u_2", &boxes[2]);
        assert_eq!(r.kick_user("o_1", "u_1", 4001), 2);
        assert_eq!(r.kick_user("o_2", "u_1", 4001), 0, "another org's user");
        let mut q = Queue::new();
        assert_eq!(boxes[0].try_batch(&mut q), Some(Batch::Kicked(4001)));
        assert_eq!(boxes[2].try_batch(&mut q), None);
        r.leave(2);
        assert_eq!(r.kick_user("o_1", "u_1", 1000), 1);
        assert!(r.kick(3, 1008) && !r.kick(2, 1008));
        assert_eq!(Roster::new(false).kick_user("o_1", "u_1", 1000), 0);
    }
}
