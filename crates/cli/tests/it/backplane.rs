//! The Redis backplane (issue 14, CONTRACT.md sections 1, 6, 7 and 10): several nodes sharing
//! a real `redis-server` that each test starts on a free port (never the machine's Redis), so
//! it can kill it and start it again.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::redis::{Certs, Muffler, Redis, node, ready_at, ready_is};
use crate::util::*;

/// An event for `task:t_1` of `o_1`.
fn task_event(n: u64) -> Value {
    event("o_1", &["task:t_1"], n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_redis_deliver_each_event_with_the_same_offset_and_epoch() {
    let redis = Redis::start();
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    ready_is(&a, 200, WAIT).await;
    ready_is(&b, 200, WAIT).await;
    let mut on_a = a.client("u_1", "o_1").await;
    let mut on_b = b.client("u_2", "o_1").await;
    assert_eq!(on_a.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(on_b.subscribe("task:t_1").await["type"], "subscribed");
    // Published on either node: every subscriber on every node gets it, in the same place.
    for (n, via) in [(1, &b), (2, &a), (3, &b)] {
        let (status, answer) = via.publish(task_event(n)).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(
            answer["recipients"], 1,
            "this node's own subscriber: {answer}"
        );
    }
    let mut seen = Vec::new();
    for c in [&mut on_a, &mut on_b] {
        let got: Vec<(u64, u64, String)> = [c.recv().await, c.recv().await, c.recv().await]
            .iter()
            .map(|e| {
                (
                    e["payload"]["n"].as_u64().unwrap(),
                    e["offset"].as_u64().unwrap(),
                    e["epoch"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same events, offsets and epoch on both nodes"
    );
    assert_eq!(
        seen[0].iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_and_a_key_holds_across_nodes() {
    let redis = Redis::start();
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    ready_is(&a, 200, WAIT).await;
    ready_is(&b, 200, WAIT).await;
    let mut c = a.client("u_1", "o_1").await;
    let sub = c.subscribe("task:t_1").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    a.publish(task_event(1)).await;
    assert_eq!(c.recv().await["offset"], 1);
    drop(c);
    for n in 2..=4 {
        assert_eq!(a.publish(task_event(n)).await.0, 202);
    }
    // On the other node, from offset 1: the missed events, then live ones.
    let mut c = b.client("u_1", "o_1").await;
    c.send(json!({"type": "subscribe", "channelId": "task:t_1",
                  "since": {"offset": 1, "epoch": epoch}}))
        .await;
    let reply = c.recv().await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        reply["epoch"],
        epoch.as_str(),
        "no node restart changes an epoch"
    );
    for n in 2..=4 {
        let e = c.recv().await;
        assert_eq!(
            (e["offset"].as_u64(), e["payload"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }

    // An idempotency key seen by one node is seen by the other.
    let mut keyed = task_event(9);
    keyed["idempotencyKey"] = json!("k-9");
    let (_, first) = a.publish(keyed.clone()).await;
    let (status, again) = b.publish(keyed).await;
    assert_eq!(status, 202);
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["id"], first["id"]);
    let e = c.recv().await;
    assert_eq!(e["payload"]["n"], 9, "delivered once");
    c.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_at_start_or_later_keeps_the_node_and_its_connections() {
    let port = Redis::free_port();
    let s = node(&format!("redis://127.0.0.1:{port}")).await;
    // Down at start: not ready, publishes 503 with Retry-After, subscribes `unavailable`.
    let (status, _) = get(&s.http("/healthz")).await;
    assert_eq!(status, 200, "alive");
    ready_is(&s, 503, WAIT).await;
    let (status, answer) = s.publish(task_event(1)).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "unavailable");
    let mut c = s.client("u_1", "o_1").await;
    let refused = c.subscribe("task:t_1").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "unavailable");

    // Redis comes: ready again without a restart; the same connection subscribes and receives.
    let mut redis = Redis::start_on(port);
    ready_is(&s, 200, Duration::from_secs(10)).await;
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(s.publish(task_event(2)).await.0, 202);
    assert_eq!(c.recv().await["payload"]["n"], 2);

    // Killed: not ready within a few seconds, publishes 503, the connection stays.
    redis.kill();
    ready_is(&s, 503, Duration::from_secs(5)).await;
    assert_eq!(s.publish(task_event(3)).await.0, 503);
    let pong = {
        c.send(json!({"type": "ping"})).await;
        c.recv().await
    };
    assert_eq!(pong["type"], "pong", "the connection stays open");

    // Back (empty): ready again, and delivery resumes, after the notice that the channel's
    // history was lost (a new epoch).
    let _redis = Redis::start_on(port);
    ready_is(&s, 200, Duration::from_secs(10)).await;
    let (status, answer) = s.publish(task_event(4)).await;
    assert_eq!(status, 202, "{answer}");
    let notice = c.recv().await;
    assert_eq!(
        (notice["type"].as_str(), notice["recovered"].as_bool()),
        (Some("subscribed"), Some(false)),
        "{notice}"
    );
    let e = c.recv().await;
    assert_eq!(e["payload"]["n"], 4, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_emptied_under_a_subscriber_is_never_skipped_silently() {
    let redis = Redis::start();
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    ready_is(&a, 200, WAIT).await;
    ready_is(&b, 200, WAIT).await;
    let mut c = a.client("u_1", "o_1").await;
    let first = c.subscribe("task:t_1").await;
    for n in 1..=2 {
        assert_eq!(b.publish(task_event(n)).await.0, 202);
        assert_eq!(c.recv().await["offset"], n);
    }
    // The store loses everything while the client stays connected.
    redis.cli(&["FLUSHALL"]);
    assert_eq!(b.publish(task_event(3)).await.0, 202);
    let notice = c.recv().await;
    assert_eq!(notice["type"], "subscribed", "{notice}");
    assert_eq!(notice["channelId"], "task:t_1");
    assert_eq!(notice["recovered"], false);
    assert_eq!(
        notice["offset"], 0,
        "the new position, before the next event"
    );
    assert!(notice.get("ref").is_none(), "unsolicited: {notice}");
    assert_ne!(notice["epoch"], first["epoch"], "a new epoch");
    let e = c.recv().await;
    assert_eq!(
        (e["offset"].as_u64(), e["payload"]["n"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(e["epoch"], notice["epoch"]);
    let pong = {
        c.send(json!({"type": "ping"})).await;
        c.recv().await
    };
    assert_eq!(pong["type"], "pong", "the connection is kept");
}

/// A node's pub/sub may lag behind what a join reads from Redis (another connection): a client
/// resuming on a node that already holds the channel, while that node has not yet delivered
/// the latest events, must still get each event once (found by the load generator's node-kill
/// run: 2 duplicates in 100 resumes before the join waited for its position).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_node_whose_pubsub_lags_gets_each_event_once() {
    let redis = Redis::start();
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    ready_is(&a, 200, WAIT).await;
    ready_is(&b, 200, WAIT).await;
    // Node B holds the channel through another subscriber.
    let mut holder = b.client("u_2", "o_1").await;
    assert_eq!(holder.subscribe("task:t_1").await["type"], "subscribed");
    let mut c = a.client("u_1", "o_1").await;
    let epoch = c.subscribe("task:t_1").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(a.publish(task_event(1)).await.0, 202);
    assert_eq!(c.recv().await["offset"], 1);
    drop(c);
    let (mut last, mut sent) = (1, 1);
    for round in 0..6 {
        // B's pub/sub goes away while events are published on A: B is behind Redis until its
        // reconnect catches up, and the resume below reads a position B has not delivered.
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        for _ in 0..10 {
            sent += 1;
            let (status, answer) = a.publish(task_event(sent)).await;
            assert_eq!(status, 202, "round {round}: {answer}");
        }
        let mut c = b.client("u_1", "o_1").await;
        c.send(json!({"type": "subscribe", "channelId": "task:t_1",
                      "since": {"offset": last, "epoch": epoch}}))
            .await;
        let reply = c.recv().await;
        assert_eq!(reply["recovered"], true, "round {round}: {reply}");
        for n in last + 1..=sent {
            let e = c.recv().await;
            assert_eq!(
                (e["offset"].as_u64(), e["payload"]["n"].as_u64()),
                (Some(n), Some(n)),
                "round {round}: each event once, in order: {e}"
            );
        }
        c.silent_for(Duration::from_millis(300)).await;
        last = sent;
    }
    for n in 1..=sent {
        let e = holder.recv().await;
        assert_eq!(e["offset"].as_u64(), Some(n), "the holder misses nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connections_leave_no_gap() {
    let redis = Redis::start();
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    ready_is(&a, 200, WAIT).await;
    ready_is(&b, 200, WAIT).await;
    let mut c = a.client("u_1", "o_1").await;
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(b.publish(task_event(1)).await.0, 202);
    assert_eq!(c.recv().await["offset"], 1);
    // Every node's pub/sub connection goes while events are published on the other node:
    // those published before node A has subscribed again reach it through its catch-up.
    let mut sent = 1;
    for round in 0..3 {
        redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        for _ in 0..20 {
            sent += 1;
            let (status, answer) = b.publish(task_event(sent)).await;
            assert_eq!(status, 202, "round {round}: {answer}");
        }
    }
    for n in 2..=sent {
        let e = c.recv().await;
        assert_eq!(e["type"], "task.status_changed", "no notice, no gap: {e}");
        assert_eq!(
            (e["offset"].as_u64(), e["payload"]["n"].as_u64()),
            (Some(n), Some(n))
        );
    }
    c.silent_for(Duration::from_millis(300)).await;
    // Each listener that came back is counted (the recorder is the process's; a kill that
    // finds a listener still reconnecting does not count again).
    let (status, text) = get(&format!("http://{}/metrics", a.addr)).await;
    assert_eq!(status, 200);
    let reconnects: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"cortex_redis_reconnects_total{link="pubsub"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "pub/sub reconnects counted:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_surfaces_the_notice_like_a_resume_that_did_not_recover() {
    use cortex_client::{Client, ClientEvent};
    let redis = Redis::start();
    let s = node(&redis.url()).await;
    ready_is(&s, 200, WAIT).await;
    let (_client, mut events) = Client::builder(s.ws_url())
        .token(token("u_1", "o_1"))
        .subscribe("task:t_1".parse().unwrap())
        .start()
        .unwrap();
    let next = async |events: &mut cortex_client::Events| {
        tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("a client event in time")
            .expect("the client runs")
    };
    loop {
        if matches!(next(&mut events).await, ClientEvent::Subscribed { .. }) {
            break;
        }
    }
    assert_eq!(s.publish(task_event(1)).await.0, 202);
    let ClientEvent::Event(e) = next(&mut events).await else {
        panic!("the event")
    };
    let first_epoch = e.epoch.clone();
    redis.cli(&["FLUSHALL"]);
    assert_eq!(s.publish(task_event(2)).await.0, 202);
    let ClientEvent::Resubscribed {
        recovered,
        offset,
        epoch,
        ..
    } = next(&mut events).await
    else {
        panic!("the notice first")
    };
    assert!(!recovered);
    assert_eq!(offset, 0);
    assert_ne!(epoch, first_epoch);
    let ClientEvent::Event(e) = next(&mut events).await else {
        panic!("then the event")
    };
    assert_eq!(
        (e.offset, e.epoch.as_str(), e.payload["n"].as_u64()),
        (1, epoch.as_str(), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_retries_a_subscribe_refused_unavailable_until_redis_is_back() {
    use cortex_client::{Client, ClientEvent};
    let port = Redis::free_port();
    let s = node(&format!("redis://127.0.0.1:{port}")).await;
    let (_client, mut events) = Client::builder(s.ws_url())
        .token(token("u_1", "o_1"))
        .subscribe("task:t_1".parse().unwrap())
        .start()
        .unwrap();
    // Refused while Redis is away, silently retried: no failure reaches the application.
    let quiet = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            let ev = events.recv().await.expect("the client runs");
            assert!(
                !matches!(
                    ev,
                    ClientEvent::SubscribeFailed { .. } | ClientEvent::Subscribed { .. }
                ),
                "{ev:?}"
            );
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "nothing but connection events while Redis is away"
    );
    let _redis = Redis::start_on(port);
    ready_is(&s, 200, Duration::from_secs(10)).await;
    let subscribed = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            match events.recv().await.expect("the client runs") {
                ClientEvent::Subscribed { .. } => return,
                ClientEvent::SubscribeFailed { code, .. } => panic!("gave up: {code:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert!(subscribed.is_ok(), "subscribed once Redis is back");
    assert_eq!(s.publish(task_event(1)).await.0, 202);
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            if let ClientEvent::Event(e) = events.recv().await.expect("the client runs") {
                return e;
            }
        }
    })
    .await
    .expect("the event");
    assert_eq!(ev.payload["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_hangs_nothing_and_a_retried_key_is_delivered_once() {
    let redis = Redis::start();
    let s = node(&redis.url()).await;
    ready_is(&s, 200, WAIT).await;
    let mut c = s.client("u_1", "o_1").await;
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    let signal = |sig: &str| redis.signal(sig);
    signal("-STOP");
    // A publish neither hangs nor is accepted: 503 within the command timeout.
    let mut keyed = task_event(1);
    keyed["idempotencyKey"] = json!("k-paused");
    let started = Instant::now();
    let (status, _) = s.publish(keyed.clone()).await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    ready_is(&s, 503, Duration::from_secs(5)).await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong", "the connection stays");
    signal("-CONT");
    ready_is(&s, 200, Duration::from_secs(10)).await;
    // The paused publish's outcome was unknown (Redis may have run it once it woke): the
    // retry with the same key is answered, and the event arrives exactly once.
    let (status, answer) = s.publish(keyed).await;
    assert_eq!(status, 202, "{answer}");
    let e = c.recv().await;
    assert_eq!(e["payload"]["n"], 1, "{e}");
    c.silent_for(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_that_is_not_an_id_never_reaches_a_redis_key() {
    let redis = Redis::start();
    let s = node(&redis.url()).await;
    ready_is(&s, 200, WAIT).await;
    // A publish body: refused before Redis.
    for org in ["o{1}", "{o_1", "o_1}", "o 1", ""] {
        let (status, answer) = s.publish(event(org, &["task:t_1"], 1)).await;
        assert_eq!(status, 400, "{org}: {answer}");
        assert_eq!(answer["error"], "invalid_org", "{answer}");
    }
    // A token: refused at auth (4001), before any subscribe.
    for org in ["o{1}", "o_1}"] {
        let mut c = Client::connect(&s.ws_url()).await;
        c.send(json!({"type": "auth", "token": token(&format!("u_{org}"), org)}))
            .await;
        assert_eq!(c.closed().await, Some(4001), "{org}");
    }
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "no key was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_error_replies_become_the_documented_answers() {
    let redis = Redis::start();
    let s = node(&redis.url()).await;
    ready_is(&s, 200, WAIT).await;
    let mut c = s.client("u_1", "o_1").await;
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");

    // NOSCRIPT (the script cache emptied): loaded again, the publish goes through.
    redis.cli(&["SCRIPT", "FLUSH"]);
    let (status, answer) = s.publish(task_event(1)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(c.recv().await["payload"]["n"], 1);

    // OOM under maxmemory (noeviction): 503 with Retry-After, nothing delivered, the node and
    // its connections kept; once memory is allowed again, publishes go through.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let mut keyed = task_event(2);
    keyed["idempotencyKey"] = json!("k-oom");
    let resp = reqwest::Client::new()
        .post(s.http("/api/events"))
        .bearer_auth(PUBLISH_KEY)
        .json(&keyed)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().get("retry-after").is_some(), "Retry-After");
    let (status, _) = get(&s.http("/healthz")).await;
    assert_eq!(status, 200);
    c.silent_for(Duration::from_millis(300)).await;
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    // The script refused as a whole under OOM: the key was never claimed, so the retry is
    // delivered (once).
    let (status, answer) = s.publish(keyed.clone()).await;
    assert_eq!(status, 202, "{answer}");
    assert_ne!(answer["duplicate"], true, "{answer}");
    assert_eq!(c.recv().await["payload"]["n"], 2);
    let (_, again) = s.publish(keyed).await;
    assert_eq!(again["duplicate"], true, "{again}");
    c.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_connection_up_but_silent_is_found_by_the_probe_and_nothing_is_lost() {
    let redis = Redis::start();
    // Node A reaches Redis through a proxy that can silence its open connections.
    let muffler = Muffler::start(redis.port).await;
    let (a, b) = (node(&muffler.url()).await, node(&redis.url()).await);
    ready_is(&a, 200, WAIT).await;
    ready_is(&b, 200, WAIT).await;
    let mut c = a.client("u_1", "o_1").await;
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(b.publish(task_event(1)).await.0, 202);
    assert_eq!(c.recv().await["offset"], 1);
    muffler.muffle();
    for n in 2..=6 {
        assert_eq!(b.publish(task_event(n)).await.0, 202);
    }
    // Within the probe's period and timeout, node A replaces the silent connection and
    // catches up from history: every event, in order, no notice.
    for n in 2..=6 {
        // Found within the probe's period and timeouts (the command connection, silenced too,
        // is found by its ping), then caught up.
        let e = c.recv_within(Duration::from_secs(15)).await;
        assert_eq!(e["type"], "task.status_changed", "no notice: {e}");
        assert_eq!(e["offset"], n, "{e}");
    }
    assert_eq!(b.publish(task_event(7)).await.0, 202);
    assert_eq!(c.recv().await["offset"], 7);
}

/// Connects `sub` of `org` with the token in the `auth` frame: `Ok` when `connected`, else the
/// close code.
async fn try_client(ws_url: &str, sub: &str, org: &str) -> Result<Client, Option<u16>> {
    let mut c = Client::connect(ws_url).await;
    c.send(json!({"type":"auth","token": token(sub, org)}))
        .await;
    match c.next().await {
        Ok(m) if m["type"] == "connected" => Ok(c),
        Ok(m) => panic!("neither connected nor closed: {m}"),
        Err(Ended::Closed(code)) => Err(code),
        Err(Ended::Gone) => Err(None),
    }
}

/// Connects `sub` of `org` until it is let in (a lease given back or expired frees a place).
async fn admitted_within(ws_url: &str, sub: &str, org: &str, within: Duration) -> Client {
    let deadline = Instant::now() + within;
    loop {
        match try_client(ws_url, sub, org).await {
            Ok(c) => return c,
            Err(code) => {
                assert_eq!(code, Some(4029), "refused for the limit only");
                assert!(Instant::now() < deadline, "still refused after {within:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_count_across_nodes_and_a_dead_nodes_expire() {
    let redis = Redis::start();
    let mut c = cortex_realtime::Config::default();
    c.auth.keys = vec![cortex_realtime::KeySource::Secret(SECRET.into())];
    c.publish_keys = vec![PUBLISH_KEY.into()];
    c.limits.connections_per_user = 3;
    let mut r = cortex_realtime::RedisConfig::new(redis.url());
    r.lease_ttl = Duration::from_secs(3);
    c.redis = Some(r);
    let a = TestServer::with(c).await;
    // Node B is a process of its own, so it can die without a word (SIGKILL).
    let url = redis.url();
    let mut b = Proc::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &url,
            "--connections-per-user",
            "3",
            "--redis-lease-ttl",
            "3s",
        ],
        &[
            ("CORTEX_JWT_SECRET", SECRET),
            ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
        ],
    );
    let b_ws = format!("ws://{}/api/ws", b.listening().await);
    ready_is(&a, 200, WAIT).await;

    // Three of u_1's connections, two of them on B: a fourth is refused on either node, by the
    // `auth` frame (4029) and at the upgrade (429).
    let mut on_a = vec![a.client("u_1", "o_1").await];
    let _on_b = [
        try_client(&b_ws, "u_1", "o_1").await.expect("B admits"),
        try_client(&b_ws, "u_1", "o_1").await.expect("B admits"),
    ];
    assert_eq!(
        try_client(&a.ws_url(), "u_1", "o_1").await.err(),
        Some(Some(4029))
    );
    assert_eq!(
        try_client(&b_ws, "u_1", "o_1").await.err(),
        Some(Some(4029))
    );
    let query = format!("{}?token={}", a.ws_url(), token("u_1", "o_1"));
    assert_eq!(Client::connect_with(&query, &[]).await.err(), Some(429));
    // Counted per user of an org: another user, and the same `sub` in another org, are not.
    let _other = a.client("u_2", "o_1").await;
    let _same_sub_other_org = a.client("u_1", "o_2").await;

    // One closed on A frees a place on B at once (its lease is given back, not left to expire).
    drop(on_a.pop());
    let started = Instant::now();
    let freed = admitted_within(&b_ws, "u_1", "o_1", Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "given back, not expired"
    );
    drop(freed);

    // B dies holding two: they count until their leases expire (3 s), then A admits three.
    on_a.push(admitted_within(&a.ws_url(), "u_1", "o_1", Duration::from_secs(2)).await);
    b.kill();
    let died = Instant::now();
    assert_eq!(
        try_client(&a.ws_url(), "u_1", "o_1").await.err(),
        Some(Some(4029)),
        "a dead node's connections still count for a while"
    );
    on_a.push(admitted_within(&a.ws_url(), "u_1", "o_1", Duration::from_secs(8)).await);
    assert!(
        died.elapsed() > Duration::from_secs(1),
        "not before the leases expired"
    );
    on_a.push(a.client("u_1", "o_1").await);
    assert_eq!(
        try_client(&a.ws_url(), "u_1", "o_1").await.err(),
        Some(Some(4029))
    );

    // A's leases outlive their TTL (3 s) while A renews them, several users of an org in one
    // script: u_1's three and u_2's one are still in Redis after 4 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (user, want) in [("u_1", "3"), ("u_2", "1")] {
        let held = redis.cli(&["ZCARD", &format!("cortex:{{o_1}}:conns:{user}")]);
        assert_eq!(held.trim(), want, "{user}'s leases, renewed");
    }

    // Redis away: the node's own count is the limit, and every connection stays.
    drop(redis);
    ready_is(&a, 503, Duration::from_secs(10)).await;
    assert_eq!(
        try_client(&a.ws_url(), "u_1", "o_1").await.err(),
        Some(Some(4029)),
        "three here already"
    );
    drop(on_a.pop());
    let mut back = admitted_within(&a.ws_url(), "u_1", "o_1", Duration::from_secs(2)).await;
    back.assert_alive().await;
    for c in &mut on_a {
        c.assert_alive().await;
    }
}

/// `serve` on the Redis at `url` over TLS with `ca` (from the flag, or from `CORTEX_REDIS_TLS_CA`
/// when `ca_from_env`); its process and address.
async fn tls_node(
    url: &str,
    ca: &std::path::Path,
    ca_from_env: bool,
) -> (Proc, std::net::SocketAddr) {
    let ca = ca.to_str().unwrap();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--redis", url];
    let mut env = vec![
        ("CORTEX_JWT_SECRET", SECRET),
        ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
    ];
    if ca_from_env {
        env.push(("CORTEX_REDIS_TLS_CA", ca));
    } else {
        args.extend(["--redis-tls-ca", ca]);
    }
    let mut p = Proc::spawn(&args, &env);
    let addr = p.listening().await;
    (p, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_a_tls_only_redis_deliver_across_nodes_and_a_wrong_ca_is_not_ready() {
    let certs = Certs::make();
    // TLS only: no plain port, so every connection the nodes make is over TLS.
    let redis = Redis::start_tls(&certs);
    assert!(redis.url().starts_with("rediss://"));
    let (_a, a) = tls_node(&redis.url(), &certs.ca(), false).await;
    let (_b, b) = tls_node(&redis.url(), &certs.ca(), true).await;
    ready_at(a, 200, WAIT).await;
    ready_at(b, 200, WAIT).await;
    let (a_ws, b_ws) = (format!("ws://{a}/api/ws"), format!("ws://{b}/api/ws"));
    let mut on_a = try_client(&a_ws, "u_1", "o_1").await.expect("A admits");
    let mut on_b = try_client(&b_ws, "u_2", "o_1").await.expect("B admits");
    assert_eq!(on_a.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(on_b.subscribe("task:t_1").await["type"], "subscribed");
    for (n, via) in [(1, b), (2, a), (3, b)] {
        let (status, answer) = publish_to(
            &format!("http://{via}/api/events"),
            PUBLISH_KEY,
            task_event(n),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(
            answer["recipients"], 1,
            "this node's own subscriber: {answer}"
        );
    }
    let mut seen = Vec::new();
    for c in [&mut on_a, &mut on_b] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let e = c.recv().await;
            got.push((
                e["payload"]["n"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
                e["epoch"].as_str().unwrap().to_owned(),
            ));
        }
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same events, offsets and epoch on both nodes"
    );
    assert_eq!(
        seen[0].iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 3)]
    );
    // Both kinds of connection of both nodes are there: commands and pub/sub.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let pubsub = clients
        .lines()
        .filter(|l| l.contains("sub=1") || l.contains("flags=P"))
        .count();
    assert!(pubsub >= 2, "a pub/sub connection per node:\n{clients}");

    // A node given a CA that did not sign Redis's certificate: it starts, and is not ready (its
    // handshakes fail), and it keeps running, saying why.
    let other = Certs::make();
    let (mut wrong, w) = tls_node(&redis.url(), &other.ca(), false).await;
    let (status, _) = get(&format!("http://{w}/healthz")).await;
    assert_eq!(status, 200, "alive");
    tokio::time::sleep(Duration::from_secs(2)).await;
    ready_at(w, 503, WAIT).await;
    let (status, answer) = publish_to(
        &format!("http://{w}/api/events"),
        PUBLISH_KEY,
        task_event(4),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    let mut c = try_client(&format!("ws://{w}/api/ws"), "u_3", "o_1")
        .await
        .expect("connections are still let in");
    assert_eq!(c.subscribe("task:t_1").await["code"], "unavailable");
    assert!(
        wrong.stderr().contains("redis connect failed")
            && wrong.stderr().contains("invalid peer certificate"),
        "{}",
        wrong.stderr()
    );
    assert_eq!(
        get(&format!("http://{w}/healthz")).await.0,
        200,
        "still running"
    );
    wrong.kill();
    // The others never noticed.
    on_a.assert_alive().await;
    assert_eq!(
        publish_to(
            &format!("http://{a}/api/events"),
            PUBLISH_KEY,
            task_event(5)
        )
        .await
        .0,
        202
    );
    assert_eq!(on_b.recv().await["payload"]["n"], 5);
}
