//! Heartbeats and control messages between the nodes of one Redis (through
//! [`crate::broker::Broker::signal`], the backplane's control channel under the configured
//! prefix): every second each node with the admin listener sends its NODE object and its
//! busiest lists, and keeps the others' for [`GONE`]; a disconnect asked of one node is sent to
//! every node, which closes its own matching connections. The table is bounded
//! ([`MAX_PEERS`]); a message that does not parse is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Admin;
use super::api::{NodeInfo, TopChannel, TopOrg, this_node, top_lists};
use crate::node::unix_now;

/// How often a heartbeat goes out.
pub(crate) const EVERY: Duration = Duration::from_secs(1);
/// A node unheard of for this long is gone.
pub(crate) const GONE: Duration = Duration::from_secs(5);
/// Nodes remembered at most.
pub(crate) const MAX_PEERS: usize = 1024;
/// Busiest entries a heartbeat carries.
const HEARTBEAT_TOP: usize = 50;

/// What the nodes tell each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub(crate) enum Control {
    /// A node is alive: its NODE object and busiest lists.
    Heartbeat {
        /// The node.
        node: NodeInfo,
        /// Its busiest orgs of the last minute.
        orgs: Vec<TopOrg>,
        /// Its busiest channels of the last minute.
        channels: Vec<TopChannel>,
    },
    /// Close matching connections on every node.
    #[serde(rename_all = "camelCase")]
    Disconnect {
        /// The node that was asked (it closed its own already).
        from: String,
        /// With `user_id`: every connection of this user.
        org_id: Option<String>,
        /// The user.
        user_id: Option<String>,
        /// Or: this one connection.
        connection_id: Option<String>,
        /// The close code.
        code: u16,
    },
}

/// One other node, as last heard.
#[derive(Debug, Clone)]
pub(crate) struct Heard {
    /// Its NODE object.
    pub node: NodeInfo,
    /// Its busiest orgs.
    pub orgs: Vec<TopOrg>,
    /// Its busiest channels.
    pub channels: Vec<TopChannel>,
    at: Instant,
}

/// The other live nodes.
#[derive(Debug, Default)]
pub(crate) struct Peers {
    table: Mutex<HashMap<String, Heard>>,
}

impl Peers {
    /// A heartbeat arrived at `now`.
    pub(crate) fn heard(
        &self,
        node: NodeInfo,
        orgs: Vec<TopOrg>,
        channels: Vec<TopChannel>,
        now: Instant,
    ) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, h| now.duration_since(h.at) < GONE);
        if t.len() >= MAX_PEERS && !t.contains_key(&node.id) {
            return;
        }
        t.insert(
            node.id.clone(),
            Heard {
                node,
                orgs,
                channels,
                at: now,
            },
        );
    }

    /// The nodes heard from within [`GONE`] of `now`, by id.
    pub(crate) fn alive(&self, now: Instant) -> Vec<Heard> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Heard> = t
            .values()
            .filter(|h| now.duration_since(h.at) < GONE)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        v
    }
}

/// Sends `message` to every node; whether it went out.
pub(crate) async fn send(admin: &Admin, message: &Control) -> bool {
    let bytes = serde_json::to_vec(message).expect("plain data serializes");
    admin.node.broker.signal(&bytes).await
}

/// Starts listening to the other nodes and sending this one's heartbeats.
pub(crate) fn start(admin: Arc<Admin>) -> tokio::task::JoinHandle<()> {
    let node = admin.node.clone();
    let mut rx = node.dispatch.signals(256);
    node.broker.listen_signals();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let me = node.id();
        loop {
            tokio::select! {
                _ = node.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let (orgs, channels) = top_lists(&admin, unix_now(), HEARTBEAT_TOP, false);
                    let beat = Control::Heartbeat { node: this_node(&admin), orgs, channels };
                    send(&admin, &beat).await;
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    match serde_json::from_slice::<Control>(&msg) {
                        Ok(Control::Heartbeat { node: n, orgs, channels }) if n.id != me => {
                            admin.peers.heard(n, orgs, channels, Instant::now());
                        }
                        Ok(Control::Disconnect { from, org_id, user_id, connection_id, code }) if from != me => {
                            super::api::disconnect_here(&node, org_id.as_deref(), user_id.as_deref(), connection_id.as_deref(), code);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "a control message that does not parse"),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            version: "0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            uptime_seconds: 1,
            connections: 0,
            subscriptions: 0,
            events_per_second: 0.0,
            deliveries_per_second: 0.0,
            ready: true,
            last_seen: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_node_unheard_of_for_five_seconds_is_gone_and_the_table_is_bounded() {
        let p = Peers::default();
        let t0 = Instant::now();
        p.heard(info("n_a"), vec![], vec![], t0);
        p.heard(info("n_b"), vec![], vec![], t0 + Duration::from_secs(3));
        let ids = |v: Vec<Heard>| v.into_iter().map(|h| h.node.id).collect::<Vec<_>>();
        assert_eq!(ids(p.alive(t0 + Duration::from_secs(4))), ["n_a", "n_b"]);
        assert_eq!(ids(p.alive(t0 + Duration::from_secs(6))), ["n_b"]);
        for i in 0..(MAX_PEERS + 10) {
            p.heard(
                info(&format!("n_{i}")),
                vec![],
                vec![],
                t0 + Duration::from_secs(7),
            );
        }
        assert_eq!(p.alive(t0 + Duration::from_secs(7)).len(), MAX_PEERS);
    }

    #[test]
    fn control_messages_round_trip() {
        let d = Control::Disconnect {
            from: "n_a".into(),
            org_id: Some("o_1".into()),
            user_id: Some("u_1".into()),
            connection_id: None,
            code: 4001,
        };
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#""kind":"disconnect""#), "{text}");
        assert!(matches!(
            serde_json::from_str::<Control>(&text).unwrap(),
            Control::Disconnect { code: 4001, .. }
        ));
    }
}
