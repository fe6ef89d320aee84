//! Connection limits: connections per user (`sub` within an `org`) and per node, and each
//! connection's id on this node. It counts; it never closes or refuses anything itself: the
//! upgrade answers 429 and the `auth` frame closes with 4029.
//!
//! With a backplane the per-user count holds across nodes: each connection also takes a
//! lease from [`Leases`] (the backplane's), which expires when its node dies. While the
//! backplane cannot answer, the node's own count is the limit (CONTRACT.md section 9).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::Claims;
use crate::broker::{Lease, Leases, UserKey};
use crate::hub::ConnId;

/// A connection refused at the door for a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Too many connections for this user.
    User,
    /// Too many connections on this node.
    Node,
}

/// Open connections, per user and per node.
pub struct Connections {
    per_user: Mutex<HashMap<UserKey, usize>>,
    total: AtomicU64,
    next: AtomicU64,
    max_per_user: usize,
    max_total: usize,
    leases: Option<Arc<dyn Leases>>,
}

/// Holds one slot of the connection limits; frees it when dropped.
pub struct ConnectionGuard {
    node: Arc<Connections>,
    user: UserKey,
    conn: ConnId,
    leased: bool,
}

impl ConnectionGuard {
    /// The connection's id on this node.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The connection's org, shared with the node's per-user count.
    pub fn org(&self) -> &Arc<str> {
        &self.user.0
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let (true, Some(leases)) = (self.leased, &self.node.leases) {
            leases.give_back(&self.user, self.conn);
        }
        let mut m = self.node.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
        self.node.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connections {
    /// Limits counted on this node, and per user also across nodes by `leases`.
    pub(crate) fn new(
        max_per_user: usize,
        max_total: usize,
        leases: Option<Arc<dyn Leases>>,
    ) -> Connections {
        Connections {
            per_user: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
            next: AtomicU64::new(1),
            max_per_user,
            max_total,
            leases,
        }
    }

    /// Takes a slot for this token's user (on this node, then across nodes), or says which
    /// limit is full.
    pub async fn admit(
        self: &Arc<Self>,
        claims: &Claims,
    ) -> Result<ConnectionGuard, LimitExceeded> {
        let mut guard = self.register(claims)?;
        let Some(leases) = &self.leases else {
            return Ok(guard);
        };
        match leases
            .take(&guard.user, guard.conn, self.max_per_user)
            .await
        {
            Lease::Taken | Lease::Unknown => {
                guard.leased = true;
                Ok(guard)
            }
            Lease::Full => Err(LimitExceeded::User),
        }
    }

    /// Takes a slot for this token's user on this node, or says which limit is full.
    fn register(self: &Arc<Self>, claims: &Claims) -> Result<ConnectionGuard, LimitExceeded> {
        let user = (
            Arc::from(claims.org.as_str()),
            Arc::from(claims.sub.as_str()),
        );
        let mut m = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) as usize >= self.max_total {
            return Err(LimitExceeded::Node);
        }
        let n = m.entry(user.clone()).or_insert(0);
        if *n >= self.max_per_user {
            return Err(LimitExceeded::User);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionGuard {
            node: self.clone(),
            user,
            conn: self.next.fetch_add(1, Ordering::Relaxed),
            leased: false,
        })
    }

    /// How many connections are open.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed) as usize
    }
}
