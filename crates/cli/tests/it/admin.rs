//! The admin listener and its API (issue 16, CONTRACT.md section 10, docs/operations.md
//! "Admin"): real servers (the library's public API, or the real binary where a process must
//! die), real sockets, real WebSocket clients, and a real `redis-server` of the test's own for
//! what crosses nodes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cortex_realtime::{Config, RedisConfig, Server};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::redis::{Cluster, Redis};
use crate::util::*;

/// The admin key of every test server here.
const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// A node with the admin listener on 127.0.0.1:0; dropping it stops it.
struct AdminServer {
    main: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl AdminServer {
    async fn start() -> AdminServer {
        AdminServer::with(config()).await
    }

    async fn on_redis(url: &str) -> AdminServer {
        let mut c = config();
        c.redis = Some(RedisConfig::new(url));
        AdminServer::with(c).await
    }

    async fn on_cluster(urls: Vec<String>) -> AdminServer {
        let mut c = config();
        c.redis = Some(RedisConfig::cluster(urls));
        AdminServer::with(c).await
    }

    async fn with(mut c: Config) -> AdminServer {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.admin_key = Some(ADMIN_KEY.into());
        let server = Server::bind(c).await.expect("server starts");
        let (main, admin) = (
            server.local_addr(),
            server.admin_addr().expect("admin addr"),
        );
        let (tx, rx) = oneshot::channel();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        AdminServer {
            main,
            admin,
            stop: Some(tx),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("http://{}/admin/api/{path}", self.admin)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/api/ws", self.main)
    }

    fn tail_url(&self) -> String {
        format!("ws://{}/api/ws", self.admin)
    }

    async fn client(&self, sub: &str, org: &str) -> Client {
        let mut c = Client::connect(&self.ws_url()).await;
        c.send(json!({"type":"auth","token":token(sub, org)})).await;
        let m = c.recv().await;
        assert_eq!(m["type"], "connected", "{m}");
        c
    }

    async fn publish(&self, body: Value) -> (u16, Value) {
        publish_to(
            &format!("http://{}/api/events", self.main),
            PUBLISH_KEY,
            body,
        )
        .await
    }

    /// `GET /admin/api/{path}` with the key: (status, JSON).
    async fn get(&self, path: &str) -> (u16, Value) {
        send(
            reqwest::Client::new()
                .get(self.api(path))
                .bearer_auth(ADMIN_KEY),
        )
        .await
    }

    /// `POST /admin/api/{path}` with the key and a JSON body: (status, JSON).
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(
            reqwest::Client::new()
                .post(self.api(path))
                .bearer_auth(ADMIN_KEY)
                .json(&body),
        )
        .await
    }

    async fn info(&self) -> Value {
        let (status, info) = self.get("info").await;
        assert_eq!(status, 200, "{info}");
        info
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Sends a request: (status, the JSON body, or the text when it is not JSON).
async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An HTTP client whose requests come from `ip` (a loopback address of its own).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Polls `check` every 100 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(info: &Value) -> Vec<String> {
    info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_api_refuses_a_missing_wrong_or_query_key_with_401() {
    let s = AdminServer::start().await;
    let http = client_from("127.0.0.4");
    let url = s.api("info");
    let cases = [
        http.get(&url),
        http.get(&url).bearer_auth("wrong-key"),
        http.get(&url).bearer_auth(format!("{ADMIN_KEY}x")),
        http.get(format!("{url}?key={ADMIN_KEY}")),
        http.get(format!("{url}?token={ADMIN_KEY}")),
        http.get(&url).header("X-Admin-Key", ADMIN_KEY),
        http.get(&url).header("Authorization", ADMIN_KEY),
    ];
    for req in cases {
        let (status, body) = send(req).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
    let (status, info) = send(http.get(&url).bearer_auth(ADMIN_KEY)).await;
    assert_eq!(status, 200, "the key as a bearer header: {info}");
}

#[tokio::test]
async fn the_eleventh_bad_attempt_gets_429_and_then_even_the_right_key_does() {
    let s = AdminServer::start().await;
    let attacker = client_from("127.0.0.2");
    for i in 0..10 {
        let (status, _) = send(attacker.get(s.api("info")).bearer_auth("guess")).await;
        assert_eq!(status, 401, "attempt {}", i + 1);
    }
    let resp = attacker
        .get(s.api("info"))
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    let (status, _) = send(attacker.get(s.api("info")).bearer_auth(ADMIN_KEY)).await;
    assert_eq!(
        status, 429,
        "locked out even with the right key until the minute passes"
    );
    // Another address is not.
    let (status, _) = send(
        client_from("127.0.0.3")
            .get(s.api("info"))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_main_listener_serves_nothing_under_admin() {
    let s = AdminServer::start().await;
    for path in [
        "/admin/api/info",
        "/admin/api/stats",
        "/admin/",
        "/console/console.js",
    ] {
        let (status, _) = send(
            reqwest::Client::new()
                .get(format!("http://{}{path}", s.main))
                .bearer_auth(ADMIN_KEY),
        )
        .await;
        assert_eq!(status, 404, "{path} on the main listener");
    }
    // And a node without the admin listener has none.
    let plain = TestServer::start().await;
    let (status, _) = get(&plain.http("/admin/api/info")).await;
    assert_eq!(status, 404);
    assert_eq!(
        s.get("nope").await.0,
        404,
        "unknown admin routes are 404 too"
    );
}

#[tokio::test]
async fn the_console_health_and_metrics_are_served_without_the_key() {
    let s = AdminServer::start().await;
    for (path, ctype) in [
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let resp = reqwest::get(format!("http://{}{path}", s.admin))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ctype),
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
    }
    let (status, _) = get(&format!("http://{}/console/nope.js", s.admin)).await;
    assert_eq!(status, 404);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = get(&format!("http://{}{path}", s.admin)).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
}

#[tokio::test]
async fn info_counts_move_as_real_clients_connect_and_subscribe() {
    let s = AdminServer::start().await;
    let info = s.info().await;
    assert_eq!(
        (info["connections"].as_u64(), info["subscriptions"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(info["backplane"], "memory");
    let me = &info["node"];
    assert!(me["id"].as_str().unwrap().starts_with("n_"), "{me}");
    assert_eq!(me["address"], s.main.to_string());
    assert_eq!(
        ids(&info),
        [me["id"].as_str().unwrap()],
        "one node without Redis"
    );
    for k in ["version", "startedAt", "lastSeen"] {
        assert!(me[k].is_string(), "{k}: {me}");
    }
    assert_eq!(me["ready"], true);

    let mut a = s.client("u_1", "o_1").await;
    let mut b = s.client("u_2", "o_1").await;
    let _c = s.client("u_3", "o_2").await;
    assert_eq!(a.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(a.subscribe("task:t_2").await["type"], "subscribed");
    assert_eq!(b.subscribe("task:t_1").await["type"], "subscribed");
    let info = s.info().await;
    assert_eq!(info["connections"], 3, "{info}");
    assert_eq!(info["subscriptions"], 3, "{info}");
    assert_eq!(info["node"]["connections"], 3);

    // Events in, deliveries out: the rates of the node move within the sampler's seconds.
    for n in 0..20 {
        assert_eq!(s.publish(event("o_1", &["task:t_1"], n)).await.0, 202);
    }
    eventually(Duration::from_secs(4), "rates move", || async {
        let me = s.info().await["node"].clone();
        me["eventsPerSecond"].as_f64().unwrap() > 0.0
            && me["deliveriesPerSecond"].as_f64().unwrap()
                >= me["eventsPerSecond"].as_f64().unwrap()
    })
    .await;

    // One client goes without a close frame (1006), another closes cleanly (1000).
    drop(a);
    b.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    eventually(WAIT, "closed connections leave the counts", || async {
        let info = s.info().await;
        info["connections"] == 1 && info["subscriptions"] == 0
    })
    .await;
    let (status, stats) = s.get("stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["intervalSeconds"], 1);
    let points = stats["points"].as_array().unwrap();
    assert!(!points.is_empty() && points.len() <= 300, "{stats}");
    assert!(
        points
            .iter()
            .any(|p| p["eventsPerSecond"].as_f64().unwrap() > 0.0),
        "{stats}"
    );
    // Each counted under its own code, nothing else.
    assert_eq!(stats["closes"]["1006"], 1, "{stats}");
    assert_eq!(stats["closes"]["1000"], 1, "{stats}");
    assert_eq!(stats["closes"]["other"], 0, "{stats}");
}

#[tokio::test]
async fn top_ranks_a_hot_channel_first() {
    let s = AdminServer::start().await;
    for n in 0..30 {
        assert_eq!(
            s.publish(event("o_hot", &["project:p_hot"], n)).await.0,
            202
        );
    }
    for n in 0..3 {
        assert_eq!(
            s.publish(event("o_cold", &["task:t_1", "task:t_2"], n))
                .await
                .0,
            202
        );
    }
    let (status, top) = s.get("top?limit=2").await;
    assert_eq!(status, 200, "{top}");
    assert_eq!(top["windowSeconds"], 60);
    assert_eq!(top["orgs"][0]["orgId"], "o_hot", "{top}");
    assert_eq!(top["orgs"][0]["events"], 30);
    assert_eq!(top["orgs"][1]["orgId"], "o_cold");
    assert_eq!(top["channels"][0]["channelId"], "project:p_hot", "{top}");
    assert_eq!(top["channels"][0]["orgId"], "o_hot");
    assert_eq!(top["channels"][0]["events"], 30);
    assert!((top["channels"][0]["eventsPerSecond"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert_eq!(top["channels"].as_array().unwrap().len(), 2, "limited");
    for bad in ["top?limit=0", "top?limit=51", "top?limit=x"] {
        let (status, body) = s.get(bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn history_returns_the_newest_published_events_oldest_first() {
    let s = AdminServer::start().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (status, answer) = s.publish(event("o_1", &["task:t_9"], n)).await;
        assert_eq!(status, 202);
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    let (status, h) = s.get("history?orgId=o_1&channelId=task:t_9&limit=3").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        (
            h["orgId"].as_str(),
            h["channelId"].as_str(),
            h["offset"].as_u64()
        ),
        (Some("o_1"), Some("task:t_9"), Some(5))
    );
    let events = h["events"].as_array().unwrap();
    let got: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids[2..].iter().map(String::as_str).collect::<Vec<_>>());
    // Exactly as a subscriber gets them.
    let e = &events[2];
    assert_eq!(
        (
            e["type"].as_str(),
            e["channelId"].as_str(),
            e["offset"].as_u64()
        ),
        (Some("task.status_changed"), Some("task:t_9"), Some(5))
    );
    assert_eq!(e["epoch"], h["epoch"]);
    assert_eq!(e["payload"]["n"], 4);
    let (_, all) = s.get("history?orgId=o_1&channelId=task:t_9").await;
    assert_eq!(all["events"].as_array().unwrap().len(), 5);
    for bad in [
        "history?orgId=o_1&channelId=nope",
        "history?orgId=o:1&channelId=task:t_9",
        "history?channelId=task:t_9",
        "history?orgId=o_1",
        "history?orgId=o_1&channelId=task:t_9&limit=101",
    ] {
        let (status, body) = s.get(bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}: {body}"
        );
    }
}

#[tokio::test]
async fn a_tail_token_subscribes_to_its_one_channel_on_the_admin_listener_only() {
    let s = AdminServer::start().await;
    let (status, t) = s
        .post(
            "tail-token",
            json!({"orgId":"o_1","channelId":"project:p_4"}),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["url"], "/api/ws");
    assert!(t["expiresAt"].is_string());
    let token = t["token"].as_str().unwrap().to_owned();

    let mut tail = Client::connect(&s.tail_url()).await;
    tail.send(json!({"type":"auth","token":token})).await;
    let connected = tail.recv().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["userId"], "admin-console");
    assert_eq!(tail.subscribe("project:p_4").await["type"], "subscribed");
    let other = tail.subscribe("project:p_5").await;
    assert_eq!(
        (other["type"].as_str(), other["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{other}"
    );
    s.publish(event("o_1", &["project:p_4"], 7)).await;
    let got = tail.recv().await;
    assert_eq!(
        (got["channelId"].as_str(), got["payload"]["n"].as_u64()),
        (Some("project:p_4"), Some(7)),
        "{got}"
    );

    // The main listener does not take it.
    let mut main = Client::connect(&s.ws_url()).await;
    main.send(json!({"type":"auth","token":token})).await;
    assert_eq!(main.closed().await, Some(4001));
    // Nor does the admin listener take it in the URL, or take a user's token.
    match Client::connect_with(&format!("{}?token={token}", s.tail_url()), &[]).await {
        Err(status) => assert_eq!(status, 401),
        Ok(_) => panic!("a token in the URL must be refused"),
    }
    let mut user = Client::connect(&s.tail_url()).await;
    user.send(json!({"type":"auth","token":token_for("u_1", "o_1", &["project:p_4"])}))
        .await;
    assert_eq!(user.closed().await, Some(4001));
    // A tail token needs an id and a channel id.
    for bad in [
        json!({"orgId":"o_1"}),
        json!({"orgId":"o 1","channelId":"project:p_4"}),
        json!({"orgId":"o_1","channelId":"nope"}),
    ] {
        assert_eq!(s.post("tail-token", bad).await.0, 400);
    }
}

#[tokio::test]
async fn disconnect_by_user_closes_exactly_that_users_sockets_with_the_code() {
    let s = AdminServer::start().await;
    let mut u1a = s.client("u_1", "o_1").await;
    let mut u1b = s.client("u_1", "o_1").await;
    let mut u2 = s.client("u_2", "o_1").await;
    let mut other_org = s.client("u_1", "o_2").await;
    let (status, answer) = s
        .post(
            "disconnect",
            json!({"orgId":"o_1","userId":"u_1","code":4001}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"disconnected": 2}));
    assert_eq!(u1a.closed().await, Some(4001));
    assert_eq!(u1b.closed().await, Some(4001));
    assert_eq!(
        u2.subscribe("task:t_1").await["type"],
        "subscribed",
        "another user stays"
    );
    assert_eq!(
        other_org.subscribe("task:t_1").await["type"],
        "subscribed",
        "the same sub in another org stays"
    );

    // By connection id, with the default code.
    let mut c = s.client("u_3", "o_1").await;
    c.send(json!({"type":"ping"})).await;
    c.recv().await;
    let mut fresh = Client::connect(&s.ws_url()).await;
    fresh
        .send(json!({"type":"auth","token":token("u_4","o_1")}))
        .await;
    let id = fresh.recv().await["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, answer) = s.post("disconnect", json!({"connectionId": id})).await;
    assert_eq!(
        (status, answer["disconnected"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    assert_eq!(fresh.closed().await, Some(1008));
    assert_eq!(c.subscribe("task:t_2").await["type"], "subscribed");
    // Bad requests.
    for bad in [
        json!({"orgId":"o_1","userId":"u_2","code":1234}),
        json!({"orgId":"o_1","userId":"u_2","code":1009}),
        json!({"orgId":"o_1"}),
        json!({"connectionId":"c_1","orgId":"o_1","userId":"u_2"}),
        json!("nope"),
    ] {
        let (status, body) = s.post("disconnect", bad.clone()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    // Counted once each session has finished its close (the client's answer, or the wait).
    eventually(
        Duration::from_secs(5),
        "the closes counted by code",
        || async {
            let (_, stats) = s.get("stats").await;
            stats["closes"]["4001"] == 2 && stats["closes"]["1008"] == 1
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_redis_see_each_other_share_top_and_disconnects() {
    let redis = Redis::start();
    let a = AdminServer::on_redis(&redis.url()).await;
    let b = AdminServer::on_redis(&redis.url()).await;
    eventually(Duration::from_secs(6), "each node lists both", || async {
        ids(&a.info().await).len() == 2 && ids(&b.info().await).len() == 2
    })
    .await;
    let (ia, ib) = (a.info().await, b.info().await);
    assert_eq!(ia["backplane"], "redis");
    assert_eq!(
        ids(&ia)[0],
        ia["node"]["id"].as_str().unwrap(),
        "this node first"
    );
    let mut both = ids(&ia);
    both.sort();
    let mut both_b = ids(&ib);
    both_b.sort();
    assert_eq!(both, both_b);
    assert_ne!(ia["node"]["id"], ib["node"]["id"]);

    // A user on node B, disconnected through node A.
    let mut on_b = b.client("u_1", "o_1").await;
    let mut keep = b.client("u_2", "o_1").await;
    eventually(
        Duration::from_secs(4),
        "A hears of B's connections",
        || async {
            a.info().await["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["connections"] == 2)
        },
    )
    .await;
    let (status, answer) = a
        .post(
            "disconnect",
            json!({"orgId":"o_1","userId":"u_1","code":4002}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"disconnected": 0, "broadcast": true}));
    assert_eq!(on_b.closed().await, Some(4002));
    assert_eq!(keep.subscribe("task:t_1").await["type"], "subscribed");

    // The busiest lists are the service's: events published on B rank on A.
    for n in 0..12 {
        assert_eq!(b.publish(event("o_9", &["project:p_busy"], n)).await.0, 202);
    }
    eventually(
        Duration::from_secs(4),
        "B's busiest channel on A",
        || async {
            let (_, top) = a.get("top").await;
            top["channels"][0]["channelId"] == "project:p_busy"
                && top["channels"][0]["events"] == 12
        },
    )
    .await;
    // The rates are each node's own (two nodes in one process count apart).
    eventually(Duration::from_secs(4), "B's rate moves", || async {
        b.info().await["node"]["eventsPerSecond"].as_f64().unwrap() > 0.0
    })
    .await;
    assert_eq!(
        a.info().await["node"]["eventsPerSecond"],
        0.0,
        "A accepted nothing"
    );
    let (_, top_b) = b.get("top").await;
    assert_eq!(
        top_b["channels"][0]["events"], 12,
        "not counted twice: {top_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_see_each_other_and_disconnect_across() {
    let cluster = Cluster::start();
    let a = AdminServer::on_cluster(cluster.urls()).await;
    let b = AdminServer::on_cluster(cluster.urls()).await;
    eventually(Duration::from_secs(10), "each node lists both", || async {
        ids(&a.info().await).len() == 2 && ids(&b.info().await).len() == 2
    })
    .await;
    assert_eq!(a.info().await["backplane"], "redis-cluster");
    let mut on_a = a.client("u_1", "o_1").await;
    let (status, answer) = b
        .post(
            "disconnect",
            json!({"orgId":"o_1","userId":"u_1","code":1000}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["broadcast"], true);
    assert_eq!(on_a.closed().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_disappears_from_the_others_within_six_seconds() {
    let redis = Redis::start();
    let url = redis.url();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--redis",
        &url,
    ];
    let env = [
        ("CORTEX_JWT_SECRET", SECRET),
        ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
        ("CORTEX_ADMIN_KEY", ADMIN_KEY),
    ];
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    for _ in 0..2 {
        let mut p = Proc::spawn(&args, &env);
        p.listening().await;
        let line = p.next_line().await;
        let admin: SocketAddr = line
            .strip_prefix("admin listening on ")
            .unwrap_or_else(|| panic!("{line:?}"))
            .parse()
            .unwrap();
        procs.push(p);
        admins.push(admin);
    }
    let info = |admin: SocketAddr| async move {
        let (status, v) = send(
            reqwest::Client::new()
                .get(format!("http://{admin}/admin/api/info"))
                .bearer_auth(ADMIN_KEY),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        v
    };
    eventually(Duration::from_secs(6), "both nodes listed", || async {
        ids(&info(admins[0]).await).len() == 2
    })
    .await;
    procs[1].kill();
    let killed = Instant::now();
    eventually(Duration::from_secs(7), "the killed node gone", || async {
        ids(&info(admins[0]).await).len() == 1
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_millis(6500), "gone after {took:?}");
    assert!(
        took >= Duration::from_secs(3),
        "not before its heartbeats were due: {took:?}"
    );
}

#[tokio::test]
async fn serve_refuses_admin_listen_without_admin_key_and_prints_the_admin_address() {
    let p = run_bin(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            ("CORTEX_JWT_SECRET", SECRET),
            ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
        ],
    )
    .await;
    assert!(!p.status().success());
    assert!(
        p.stderr().contains("--admin-listen needs --admin-key"),
        "{}",
        p.stderr()
    );

    let mut p = Proc::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[
            ("CORTEX_JWT_SECRET", SECRET),
            ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
            ("CORTEX_ADMIN_KEY", ADMIN_KEY),
        ],
    );
    let main = p.listening().await;
    let line = p.next_line().await;
    let admin: SocketAddr = line
        .strip_prefix("admin listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    assert_ne!(admin.port(), 0);
    assert_ne!(admin, main);
    let (status, _) = send(
        reqwest::Client::new()
            .get(format!("http://{admin}/admin/api/info"))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!p.stderr().contains(ADMIN_KEY), "the key is never logged");
}
