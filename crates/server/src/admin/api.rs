//! The handlers of `/admin/api/*` (docs/operations.md, "Admin"), behind [`super::authorize`].
//! Every answer is JSON; every error is `{"error": CODE, "message": TEXT}`. They read the node
//! and its broker; the only things they change are connections (a disconnect) and nothing
//! else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cortex_protocol::channel::is_valid_id;
use cortex_protocol::event::{rfc3339_secs, write_delivery};
use cortex_protocol::{ChannelId, Since};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Admin;
use super::peers::{self, Control};
use crate::activity::{TOP_WINDOW_SECS, operator_close_code};
use crate::broker::Recovery;
use crate::config::RedisServers;
use crate::hub::ChannelKey;
use crate::node::{Node, unix_now};

/// A node as the operators' views show it (the NODE object of the contract).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeInfo {
    /// `n_` and hex digits.
    pub id: String,
    /// Its main listener.
    pub address: String,
    /// The server's version.
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Open connections.
    pub connections: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Events accepted per second over the last 10 s.
    pub events_per_second: f64,
    /// Deliveries per second over the last 10 s.
    pub deliveries_per_second: f64,
    /// Ready to deliver (`/readyz`).
    pub ready: bool,
    /// RFC 3339: when this was true.
    pub last_seen: String,
}

/// An org of the busiest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopOrg {
    /// The org.
    pub org_id: String,
    /// Events in the window (an estimate: never below the truth).
    pub events: u64,
    /// `events` over the window's seconds.
    pub events_per_second: f64,
}

/// A channel of the busiest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TopChannel {
    /// The org.
    pub org_id: String,
    /// The channel.
    pub channel_id: String,
    /// Events in the window (an estimate: never below the truth).
    pub events: u64,
    /// `events` over the window's seconds.
    pub events_per_second: f64,
}

/// An error answer.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Anything else under `/admin/api/`.
pub(crate) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such admin API route",
    )
}

/// This node, now.
pub(crate) fn this_node(admin: &Admin) -> NodeInfo {
    let n = &admin.node;
    let now = unix_now();
    let last = admin.ring.lock().unwrap_or_else(|e| e.into_inner()).last();
    NodeInfo {
        id: n.id(),
        address: admin.address.to_string(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: rfc3339_secs(n.started_at),
        uptime_seconds: (now - n.started_at).max(0) as u64,
        connections: n.open_connections(),
        subscriptions: n.subscriptions(),
        events_per_second: last.map_or(0.0, |p| p.events_per_second),
        deliveries_per_second: last.map_or(0.0, |p| p.deliveries_per_second),
        ready: !n.shutdown.is_triggered() && n.broker.ready(),
        last_seen: rfc3339_secs(now),
    }
}

fn backplane(node: &Node) -> &'static str {
    match node.config.redis.as_ref().map(|r| &r.servers) {
        None => "memory",
        Some(RedisServers::One(_)) => "redis",
        Some(RedisServers::Cluster(_)) => "redis-cluster",
    }
}

/// `GET /admin/api/info`.
pub(crate) async fn info(State(admin): State<Arc<Admin>>) -> Response {
    let me = this_node(&admin);
    let mut nodes = vec![me.clone()];
    nodes.extend(
        admin
            .peers
            .alive(Instant::now())
            .into_iter()
            .map(|h| h.node),
    );
    axum::Json(json!({
        "connections": me.connections,
        "subscriptions": me.subscriptions,
        "backplane": backplane(&admin.node),
        "node": me,
        "nodes": nodes,
    }))
    .into_response()
}

/// `GET /admin/api/stats`.
pub(crate) async fn stats(State(admin): State<Arc<Admin>>) -> Response {
    let points: Vec<Value> = admin
        .ring
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .points()
        .map(|p| {
            json!({
                "t": rfc3339_secs(p.t),
                "connections": p.connections,
                "subscriptions": p.subscriptions,
                "eventsPerSecond": p.events_per_second,
                "deliveriesPerSecond": p.deliveries_per_second,
            })
        })
        .collect();
    let closes: serde_json::Map<String, Value> = admin
        .node
        .activity
        .closes()
        .into_iter()
        .map(|(code, n)| {
            (
                code.map_or_else(|| "other".to_owned(), |c| c.to_string()),
                Value::from(n),
            )
        })
        .collect();
    axum::Json(json!({"intervalSeconds": 1, "points": points, "closes": closes})).into_response()
}

/// The query string's parameters (the last of a repeated one wins).
fn query(uri: &Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A `limit` parameter within `1..=max`, `default` when absent.
fn limit(q: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, Box<Response>> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Box::new(bad_request(&format!(
                "limit must be an integer from 1 to {max}"
            )))),
        },
    }
}

/// The busiest lists at `now`: this node's, and with `peers` merged with every live node's.
pub(crate) fn top_lists(
    admin: &Admin,
    now: i64,
    limit: usize,
    with_peers: bool,
) -> (Vec<TopOrg>, Vec<TopChannel>) {
    let secs = TOP_WINDOW_SECS as f64;
    let (orgs, chans) = admin.node.activity.top(now, usize::MAX);
    let mut o: HashMap<String, u64> = orgs.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
    let mut c: HashMap<(String, String), u64> = chans
        .into_iter()
        .map(|(org, ch, n)| ((org.to_string(), ch), n))
        .collect();
    if with_peers {
        for h in admin.peers.alive(Instant::now()) {
            for t in h.orgs {
                *o.entry(t.org_id).or_default() += t.events;
            }
            for t in h.channels {
                *c.entry((t.org_id, t.channel_id)).or_default() += t.events;
            }
        }
    }
    let mut orgs: Vec<TopOrg> = o
        .into_iter()
        .map(|(org_id, events)| TopOrg {
            org_id,
            events,
            events_per_second: events as f64 / secs,
        })
        .collect();
    orgs.sort_by(|a, b| {
        b.events
            .cmp(&a.events)
            .then_with(|| a.org_id.cmp(&b.org_id))
    });
    orgs.truncate(limit);
    let mut channels: Vec<TopChannel> = c
        .into_iter()
        .map(|((org_id, channel_id), events)| TopChannel {
            org_id,
            channel_id,
            events,
            events_per_second: events as f64 / secs,
        })
        .collect();
    channels.sort_by(|a, b| {
        b.events
            .cmp(&a.events)
            .then_with(|| (&a.org_id, &a.channel_id).cmp(&(&b.org_id, &b.channel_id)))
    });
    channels.truncate(limit);
    (orgs, channels)
}

/// `GET /admin/api/top?limit=10`.
pub(crate) async fn top(State(admin): State<Arc<Admin>>, uri: Uri) -> Response {
    let q = query(&uri);
    let limit = match limit(&q, 10, 50) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let (orgs, channels) = top_lists(&admin, unix_now(), limit, true);
    axum::Json(json!({"windowSeconds": TOP_WINDOW_SECS, "orgs": orgs, "channels": channels}))
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DisconnectBody {
    org_id: Option<String>,
    user_id: Option<String>,
    connection_id: Option<String>,
    code: Option<u16>,
}

/// Closes this node's connections that match, with `code`; how many.
pub(crate) fn disconnect_here(
    node: &Node,
    org: Option<&str>,
    user: Option<&str>,
    connection: Option<&str>,
    code: u16,
) -> usize {
    let Some(code) = operator_close_code(code) else {
        return 0;
    };
    match (org, user, connection) {
        (Some(org), Some(user), None) => node.roster.kick_user(org, user, code.code()),
        (None, None, Some(id)) => node
            .connection_of(id)
            .map_or(0, |conn| usize::from(node.roster.kick(conn, code.code()))),
        _ => 0,
    }
}

/// `POST /admin/api/disconnect`.
pub(crate) async fn disconnect(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<DisconnectBody>(&body) else {
        return bad_request(
            r#"the body must be {"orgId":..,"userId":..,"code":..} or {"connectionId":..,"code":..}"#,
        );
    };
    let code = b.code.unwrap_or(1008);
    if operator_close_code(code).is_none() {
        return bad_request("code must be one of 1000, 1001, 1008, 4001, 4002, 4008, 4009, 4029");
    }
    let nonempty = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let by_user = nonempty(&b.org_id) && nonempty(&b.user_id) && b.connection_id.is_none();
    let by_conn = nonempty(&b.connection_id) && b.org_id.is_none() && b.user_id.is_none();
    if !by_user && !by_conn {
        return bad_request("give orgId and userId, or connectionId (not both)");
    }
    let node = &admin.node;
    let n = disconnect_here(
        node,
        b.org_id.as_deref(),
        b.user_id.as_deref(),
        b.connection_id.as_deref(),
        code,
    );
    let mut answer = json!({"disconnected": n});
    if node.config.redis.is_some() {
        let sent = peers::send(
            &admin,
            &Control::Disconnect {
                from: node.id(),
                org_id: b.org_id,
                user_id: b.user_id,
                connection_id: b.connection_id,
                code,
            },
        )
        .await;
        answer["broadcast"] = Value::from(sent);
    }
    axum::Json(answer).into_response()
}

/// `GET /admin/api/history?orgId=..&channelId=..&limit=50`.
pub(crate) async fn history(State(admin): State<Arc<Admin>>, uri: Uri) -> Response {
    let q = query(&uri);
    let limit = match limit(&q, 50, 100) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let Some(org) = q.get("orgId").filter(|o| is_valid_id(o)) else {
        return bad_request(
            "orgId must be an id ([A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters)",
        );
    };
    let channel = match q.get("channelId").map(|c| ChannelId::parse(c)) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return bad_request(&format!("channelId: {e}")),
        None => return bad_request("channelId is required"),
    };
    let key = ChannelKey::new(Arc::from(org.as_str()), channel);
    let broker = &admin.node.broker;
    let unavailable = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the backplane is unavailable",
        )
    };
    let Ok(now) = broker.history(&key, None).await else {
        return unavailable();
    };
    let position = now.position;
    // The newest `limit` events held: ask from `limit` back, and nearer while history does not
    // reach that far.
    let mut back = (limit as u64).min(position.offset);
    let events = loop {
        let since = Since {
            offset: position.offset - back,
            epoch: position.epoch.to_string(),
        };
        match broker.history(&key, Some(&since)).await {
            Ok(Recovery {
                events: Some(events),
                ..
            }) => break events,
            Ok(_) if back > 0 => back /= 2,
            Ok(_) => break Vec::new(),
            Err(_) => return unavailable(),
        }
    };
    let events: Vec<Value> = events
        .iter()
        .rev()
        .take(limit)
        .rev()
        .filter_map(|r| {
            let frame = write_delivery(
                r.event.event_type,
                &key.channel,
                &r.event.id,
                r.offset,
                &position.epoch,
                &r.event.payload_json,
            );
            serde_json::from_str(&frame).ok()
        })
        .collect();
    axum::Json(json!({
        "orgId": org,
        "channelId": key.channel.to_string(),
        "offset": position.offset,
        "epoch": position.epoch.to_string(),
        "events": events,
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TailTokenBody {
    org_id: String,
    channel_id: String,
}

/// `POST /admin/api/tail-token`.
pub(crate) async fn tail_token(State(admin): State<Arc<Admin>>, body: Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<TailTokenBody>(&body) else {
        return bad_request(r#"the body must be {"orgId":..,"channelId":..}"#);
    };
    if !is_valid_id(&b.org_id) {
        return bad_request(
            "orgId must be an id ([A-Za-z0-9][A-Za-z0-9._-]*, at most 128 characters)",
        );
    }
    let channel = match ChannelId::parse(&b.channel_id) {
        Ok(c) => c,
        Err(e) => return bad_request(&format!("channelId: {e}")),
    };
    let Some(key) = &admin.node.console else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no admin key",
        );
    };
    let (token, exp) = key.mint(&b.org_id, channel.as_str(), unix_now());
    axum::Json(json!({"token": token, "expiresAt": rfc3339_secs(exp), "url": "/api/ws"}))
        .into_response()
}
