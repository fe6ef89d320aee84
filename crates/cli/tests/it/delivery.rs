//! Delivery: ids, offsets and epochs on every event, per-channel order under concurrent
//! publishers, and a bounded outbox that never blocks publishing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::*;

#[tokio::test]
async fn concurrent_publishers_give_every_subscriber_the_same_contiguous_order() {
    let s = TestServer::start().await;
    let mut a = s.client("u_a", "o_1").await;
    let mut b = s.client("u_b", "o_1").await;
    let epoch = a.subscribe("project:p_1").await["epoch"].clone();
    b.subscribe("project:p_1").await;
    let url = s.http("/api/events");
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let (st, _) = publish_to(
                    &url,
                    PUBLISH_KEY,
                    event("o_1", &["project:p_1"], w * 1000 + i),
                )
                .await;
                assert_eq!(st, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = [Vec::new(), Vec::new()];
    for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
        for _ in 0..200 {
            let ev = c.recv().await;
            assert_eq!(ev["epoch"], epoch);
            assert!(ev["id"].as_str().unwrap().starts_with("evt_"));
            seen[i].push((
                ev["offset"].as_u64().unwrap(),
                ev["payload"]["n"].as_u64().unwrap(),
            ));
        }
    }
    let offsets: Vec<u64> = seen[0].iter().map(|x| x.0).collect();
    assert_eq!(offsets, (1..=200).collect::<Vec<_>>());
    assert_eq!(seen[0], seen[1], "both subscribers see one order");
    // Each publisher's own events keep their order.
    for w in 0..4 {
        let mine: Vec<u64> = seen[0]
            .iter()
            .map(|x| x.1)
            .filter(|n| n / 1000 == w)
            .collect();
        assert!(
            mine.windows(2).all(|p| p[0] < p[1]),
            "publisher {w}: {mine:?}"
        );
    }
}

#[tokio::test]
async fn offsets_continue_for_late_subscribers_and_start_at_one() {
    let s = TestServer::start().await;
    for n in 0..3 {
        assert_eq!(s.publish(event("o_1", &["task:t_1"], n)).await.0, 202);
    }
    let mut c = s.client("u", "o_1").await;
    let sub = c.subscribe("task:t_1").await;
    assert_eq!(sub["offset"], 3, "the channel's latest offset");
    s.publish(event("o_1", &["task:t_1"], 3)).await;
    assert_eq!(c.recv().await["offset"], 4);
    let fresh = c.subscribe("task:t_2").await;
    assert_eq!(fresh["offset"], 0);
    s.publish(event("o_1", &["task:t_2"], 0)).await;
    assert_eq!(c.recv().await["offset"], 1);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4009_and_never_slows_publishing() {
    let mut cfg = config();
    cfg.limits.outbox_events = 50;
    cfg.limits.outbox_bytes = 64 * 1024;
    let s = TestServer::with(cfg).await;
    let mut slow = Client::connect_tiny(&s.ws_url()).await;
    slow.send(json!({"type":"auth","token":token("u_slow","o_1")}))
        .await;
    assert_eq!(slow.recv().await["type"], "connected");
    slow.subscribe("org:o_1").await;
    let mut fast = s.client("u_fast", "o_1").await;
    fast.subscribe("org:o_1").await;
    let big = "x".repeat(4000);
    let started = Instant::now();
    for n in 0..2000u64 {
        let body = json!({"orgId":"o_1","type":"chat.message","payload":{"messageId":"m","agentId":"a","content":big,"n":n}});
        let (st, _) = s.publish(body).await;
        assert_eq!(st, 202);
        // The fast client keeps reading; the slow one never does.
        let ev: Value = fast.recv().await;
        assert_eq!(ev["payload"]["n"], n);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // The server closes it on its own while it still reads nothing: only the fast client stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.node.open_connections() > 1 {
        assert!(
            Instant::now() < deadline,
            "the slow client was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reading now, it finds the 4009 close behind megabytes of earlier events, unless the
    // socket was dropped first (the close frame had 1 s to get out).
    assert!(matches!(slow.closed().await, Some(4009) | None));
}

#[tokio::test]
async fn a_long_channel_gets_every_event_once_in_order_published_slowly_or_in_bursts() {
    // More subscribers than a channel whose deliveries are written straight from the publish
    // (hub::DIRECT_FAN_OUT): idle connections are written by flushers, busy ones by their tasks.
    const CLIENTS: usize = 80;
    let s = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = s.client(&format!("u_{i}"), "o_1").await;
        c.subscribe("org:o_1").await;
        clients.push(c);
    }
    // One at a time, each delivered before the next: every one a flushers' round.
    for n in 0..5 {
        assert_eq!(s.publish(event("o_1", &["org:o_1"], n)).await.0, 202);
        for c in &mut clients {
            assert_eq!(c.recv().await["payload"]["n"], n);
        }
    }
    // Bursts from concurrent publishers: rounds overlap, and the tasks take over.
    let url = s.http("/api/events");
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let body = event("o_1", &["org:o_1"], 1000 * (w + 1) + i);
                assert_eq!(publish_to(&url, PUBLISH_KEY, body).await.0, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut first: Option<Vec<u64>> = None;
    for c in &mut clients {
        let mut got = Vec::new();
        for _ in 0..100 {
            let ev = c.recv().await;
            got.push(ev["offset"].as_u64().unwrap());
        }
        assert_eq!(got, (6..=105).collect::<Vec<_>>(), "contiguous, in order");
        match &first {
            None => first = Some(got),
            Some(f) => assert_eq!(f, &got),
        }
    }
    // Nothing more: no event twice.
    futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|c| c.silent_for(Duration::from_millis(300))),
    )
    .await;
}
