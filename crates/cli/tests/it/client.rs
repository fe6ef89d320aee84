//! The Rust client (`cortex-client`) and `cortex-realtime tail` against the real server: typed
//! events over every token transport, unsubscribe, resume after a cut connection, a restarted
//! node, token refresh and 4002, 4001, and the loss test of issue 5.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::unix_now;
use cortex_client::{
    Backoff, ChannelId, Client, ClientEvent, Disconnect, Event, EventType, Events, Stop,
    TokenError, TokenTransport,
};
use cortex_realtime::Config;
use cortex_realtime::mint_hs256;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::util::{PUBLISH_KEY, Proc, SECRET, TestServer, WAIT, config, event, run_bin, token};

fn ch(s: &str) -> ChannelId {
    s.parse().unwrap()
}

/// A free port on loopback, for a server that must come back on the same address.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn config_on(addr: SocketAddr) -> Config {
    let mut c = config();
    c.listen = addr;
    c.drain_timeout = Duration::from_millis(500);
    c
}

/// The next client event matching `f` within `within`, skipping others.
async fn next_where(
    events: &mut Events,
    within: Duration,
    f: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the expected client event in time")
            .expect("the client is running");
        if f(&ev) {
            return ev;
        }
    }
}

async fn next_event(events: &mut Events) -> Event {
    match next_where(events, WAIT, |e| matches!(e, ClientEvent::Event(_))).await {
        ClientEvent::Event(e) => e,
        _ => unreachable!(),
    }
}

/// Waits for the `subscribed` (or `resubscribed`) of `channel`; returns (epoch, recovered).
async fn subscribed(
    events: &mut Events,
    channel: &str,
    within: Duration,
) -> (String, Option<bool>) {
    let ev = next_where(events, within, |e| match e {
        ClientEvent::Subscribed { channel: c, .. }
        | ClientEvent::Resubscribed { channel: c, .. } => c.as_str() == channel,
        _ => false,
    })
    .await;
    match ev {
        ClientEvent::Subscribed { epoch, .. } => (epoch, None),
        ClientEvent::Resubscribed {
            epoch, recovered, ..
        } => (epoch, Some(recovered)),
        _ => unreachable!(),
    }
}

/// A TCP proxy in front of a server that cuts every live connection on command.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<Mutex<CancellationToken>>,
    /// While set, new connections are dropped at once (the client cannot get back).
    refuse: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let current = cut.clone();
        let refuse = Arc::new(AtomicBool::new(false));
        let refusing = refuse.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let cut = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    // A backend that is down: the client sees its connection end at once.
                    let Ok(mut outbound) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            refuse,
            task,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/api/ws", self.addr)
    }

    /// Drops both sides of every connection open now; later connections pass.
    fn cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.lock().unwrap().cancel();
    }
}

#[tokio::test]
async fn the_client_receives_typed_events_over_every_token_transport() {
    let s = TestServer::start().await;
    for transport in [
        TokenTransport::AuthFrame,
        TokenTransport::Query,
        TokenTransport::Header,
    ] {
        let (client, mut events) = Client::builder(s.ws_url())
            .token(token("u_1", "o_1"))
            .transport(transport)
            .subscribe(ch("task:t_9"))
            .start()
            .unwrap();
        let ClientEvent::Connected(c) = next_where(&mut events, WAIT, |_| true).await else {
            panic!("connected first")
        };
        assert_eq!((c.user_id.as_str(), c.org_id.as_str()), ("u_1", "o_1"));
        let (epoch, recovered) = subscribed(&mut events, "task:t_9", WAIT).await;
        assert_eq!(recovered, None);
        let (status, body) = s.publish(event("o_1", &["task:t_9"], 7)).await;
        assert_eq!(status, 202);
        let e = next_event(&mut events).await;
        assert_eq!(
            e.event_type,
            Some(EventType::TaskStatusChanged),
            "{transport:?}"
        );
        assert_eq!(e.type_name, "task.status_changed");
        assert_eq!(e.channel, ch("task:t_9"));
        assert_eq!(e.id, body["id"].as_str().unwrap());
        assert_eq!(e.epoch, epoch);
        assert_eq!(e.payload["n"], 7);
        assert_eq!(e.payload["newStatus"], "in_progress");
        let raw: Value = serde_json::from_str(e.as_json()).unwrap();
        assert_eq!(raw["offset"], e.offset);
        client.close().await;
        assert_eq!(
            next_where(&mut events, WAIT, |e| matches!(e, ClientEvent::Stopped(_))).await,
            ClientEvent::Stopped(Stop::Closed)
        );
    }
}

#[tokio::test]
async fn unsubscribe_stops_the_events_of_that_channel_only() {
    let s = TestServer::start().await;
    let (client, mut events) = Client::builder(s.ws_url())
        .token(token("u_1", "o_1"))
        .subscribe(ch("task:t_1"))
        .subscribe(ch("task:t_2"))
        .start()
        .unwrap();
    subscribed(&mut events, "task:t_1", WAIT).await;
    subscribed(&mut events, "task:t_2", WAIT).await;
    s.publish(event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(next_event(&mut events).await.channel, ch("task:t_1"));
    client.unsubscribe(&ch("task:t_1"));
    // Whatever the server still sends for t_1 is not delivered.
    s.publish(event("o_1", &["task:t_1"], 2)).await;
    s.publish(event("o_1", &["task:t_2"], 3)).await;
    let e = next_event(&mut events).await;
    assert_eq!(
        (e.channel.as_str(), e.payload["n"].as_u64()),
        ("task:t_2", Some(3))
    );
    // And the server stops sending it.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = s.publish(event("o_1", &["task:t_1"], 4)).await;
        if body["recipients"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server still delivers task:t_1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.publish(event("o_1", &["task:t_2"], 5)).await;
    let e = next_event(&mut events).await;
    assert_eq!(
        (e.channel.as_str(), e.payload["n"].as_u64()),
        ("task:t_2", Some(5))
    );
    assert_eq!(client.subscriptions(), vec![ch("task:t_2")]);
}

#[tokio::test]
async fn a_cut_connection_reconnects_and_resumes_with_every_missed_event_once() {
    let s = TestServer::start().await;
    let proxy = Proxy::start(s.addr).await;
    let (_client, mut events) = Client::builder(proxy.ws_url())
        .token(token("u_1", "o_1"))
        .subscribe(ch("task:t_1"))
        .start()
        .unwrap();
    subscribed(&mut events, "task:t_1", WAIT).await;
    for n in 1..=3 {
        s.publish(event("o_1", &["task:t_1"], n)).await;
    }
    for n in 1..=3 {
        assert_eq!(next_event(&mut events).await.offset, n);
    }
    proxy.cut();
    // Published while the client is away (it waits up to 1 s before reconnecting).
    for n in 4..=8 {
        s.publish(event("o_1", &["task:t_1"], n)).await;
    }
    let ClientEvent::Reconnecting { cause, delay, .. } = next_where(&mut events, WAIT, |e| {
        matches!(e, ClientEvent::Reconnecting { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert!(matches!(cause, Disconnect::Lost(_)), "{cause:?}");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    let (_, recovered) = subscribed(&mut events, "task:t_1", WAIT).await;
    assert_eq!(recovered, Some(true));
    s.publish(event("o_1", &["task:t_1"], 9)).await;
    for n in 4..=9 {
        let e = next_event(&mut events).await;
        assert_eq!((e.offset, e.payload["n"].as_u64()), (n, Some(n)));
    }
}

#[tokio::test]
async fn a_resume_longer_than_the_servers_queue_is_answered_not_recovered() {
    // History (5,000 events) longer than the outbound queue (1,000): a replay of 1,500 events
    // cannot be delivered whole, so the server answers `recovered: false` (never a 4009 loop).
    let mut cfg = config();
    cfg.history.per_channel = 5000;
    let s = TestServer::with(cfg).await;
    let proxy = Proxy::start(s.addr).await;
    let (_client, mut events) = Client::builder(proxy.ws_url())
        .token(token("u_1", "o_1"))
        .subscribe(ch("task:big"))
        .start()
        .unwrap();
    subscribed(&mut events, "task:big", WAIT).await;
    s.publish(event("o_1", &["task:big"], 0)).await;
    assert_eq!(next_event(&mut events).await.offset, 1);
    proxy.refuse.store(true, Ordering::SeqCst);
    proxy.cut();
    for b in 0..15 {
        let batch: Vec<Value> = (0..100)
            .map(|i| event("o_1", &["task:big"], 1 + b * 100 + i))
            .collect();
        assert_eq!(s.publish(json!({ "events": batch })).await.0, 202);
    }
    proxy.refuse.store(false, Ordering::SeqCst);
    let (_, recovered) = subscribed(&mut events, "task:big", Duration::from_secs(10)).await;
    assert_eq!(recovered, Some(false));
    s.publish(event("o_1", &["task:big"], 1501)).await;
    let e = next_event(&mut events).await;
    assert_eq!((e.offset, e.payload["n"].as_u64()), (1502, Some(1501)));
}

#[tokio::test]
async fn after_a_server_restart_on_the_same_port_the_client_resubscribes_not_recovered() {
    let addr = free_addr();
    let s = TestServer::with(config_on(addr)).await;
    let (_client, mut events) = Client::builder(s.ws_url())
        .token(token("u_1", "o_1"))
        .subscribe(ch("task:t_1"))
        .start()
        .unwrap();
    let (epoch, _) = subscribed(&mut events, "task:t_1", WAIT).await;
    s.publish(event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(next_event(&mut events).await.offset, 1);
    s.shutdown().await;
    let ClientEvent::Reconnecting { cause, .. } = next_where(&mut events, WAIT, |e| {
        matches!(e, ClientEvent::Reconnecting { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert!(
        matches!(cause, Disconnect::Closed { code: 1001, .. }),
        "a drain closes with 1001: {cause:?}"
    );
    let s = TestServer::with(config_on(addr)).await;
    // Up to 1 + 2 + 4 s of backoff if the first attempts find no server.
    let ev = next_where(&mut events, Duration::from_secs(10), |e| {
        matches!(e, ClientEvent::Resubscribed { .. })
    })
    .await;
    let ClientEvent::Resubscribed {
        recovered,
        epoch: new_epoch,
        offset,
        ..
    } = ev
    else {
        unreachable!()
    };
    assert!(!recovered);
    assert_ne!(new_epoch, epoch);
    assert_eq!(offset, 0);
    s.publish(event("o_1", &["task:t_1"], 2)).await;
    let e = next_event(&mut events).await;
    assert_eq!(
        (e.offset, e.epoch.as_str(), e.payload["n"].as_u64()),
        (1, new_epoch.as_str(), Some(2))
    );
}

#[tokio::test]
async fn a_bad_token_stops_the_client_with_no_reconnect() {
    let s = TestServer::start().await;
    for transport in [TokenTransport::AuthFrame, TokenTransport::Query] {
        let (_client, mut events) = Client::builder(s.ws_url())
            .token("not-a-jwt")
            .transport(transport)
            .start()
            .unwrap();
        let first = next_where(&mut events, WAIT, |_| true).await;
        assert_eq!(
            first,
            ClientEvent::Stopped(Stop::Unauthorized),
            "{transport:?}"
        );
        let end = tokio::time::timeout(WAIT, events.recv()).await.unwrap();
        assert_eq!(end, None, "nothing after Stopped");
    }
}

/// A token for `u_1` in `o_1` expiring `secs` from now.
fn token_for(secs: i64) -> String {
    mint_hs256(SECRET, "u_1", "o_1", unix_now() + secs, None)
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_on_the_live_connection() {
    let mut cfg = config();
    cfg.auth.leeway_secs = 0;
    let s = TestServer::with(cfg).await;
    let (_client, mut events) = Client::builder(s.ws_url())
        .token_provider(|| async { Ok::<_, TokenError>(token_for(5)) })
        .subscribe(ch("task:t_1"))
        .start()
        .unwrap();
    subscribed(&mut events, "task:t_1", WAIT).await;
    // Three token lifetimes later the first connection is still up.
    let until = Instant::now() + Duration::from_secs(12);
    let mut refreshed = 0;
    while let Ok(ev) = tokio::time::timeout_at(until, events.recv()).await {
        match ev.expect("running") {
            ClientEvent::Refreshed { .. } => refreshed += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refreshed >= 3, "{refreshed} refreshes");
    s.publish(event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(next_event(&mut events).await.offset, 1);
}

#[tokio::test]
async fn after_4002_the_client_takes_a_new_token_reconnects_and_resumes() {
    let mut cfg = config();
    cfg.auth.leeway_secs = 0;
    let s = TestServer::with(cfg).await;
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let short = token_for(2);
    let (_client, mut events) = Client::builder(s.ws_url())
        .token_provider(move || {
            // The first connection's token, and no newer one for its refresh: it expires.
            let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let t = if n < 2 {
                short.clone()
            } else {
                token_for(3600)
            };
            async move { Ok::<_, TokenError>(t) }
        })
        .subscribe(ch("task:t_1"))
        .start()
        .unwrap();
    let ClientEvent::Connected(first) = next_where(&mut events, WAIT, |_| true).await else {
        panic!()
    };
    subscribed(&mut events, "task:t_1", WAIT).await;
    s.publish(event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(next_event(&mut events).await.offset, 1);
    let ClientEvent::Reconnecting { cause, delay, .. } = next_where(&mut events, WAIT, |e| {
        matches!(e, ClientEvent::Reconnecting { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert!(
        matches!(cause, Disconnect::Closed { code: 4002, .. }),
        "{cause:?}"
    );
    assert_eq!(delay, Duration::ZERO);
    // Published between the expiry and the new connection: recovered.
    s.publish(event("o_1", &["task:t_1"], 2)).await;
    let ClientEvent::Connected(second) = next_where(&mut events, WAIT, |e| {
        matches!(e, ClientEvent::Connected(_))
    })
    .await
    else {
        unreachable!()
    };
    assert_ne!(first.connection_id, second.connection_id);
    assert_eq!(
        subscribed(&mut events, "task:t_1", WAIT).await.1,
        Some(true)
    );
    assert_eq!(next_event(&mut events).await.payload["n"], 2);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// One event the loss test received.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    offset: u64,
    epoch: String,
    seq: u64,
}

/// One publish of the loss test: its sequence numbers, the ids the server gave them, and which
/// server generation was up when it started (1: the first node; 0: restarting; 2: the second).
struct Sent {
    generation: u8,
    seqs: std::ops::Range<u64>,
    ids: Option<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loss_test_1000_events_a_second_cut_every_second_and_one_restart() {
    use std::sync::atomic::AtomicU8;

    const CHANNEL: &str = "task:loss";
    const SECONDS: u64 = 10;
    const BATCH: u64 = 10;
    const TICK: Duration = Duration::from_millis(10);

    let addr = free_addr();
    let cfg = || {
        let mut c = config_on(addr);
        // Room to replay every gap: a cut costs up to the backoff bound of events (400 ms:
        // 400 events) plus the reconnect itself.
        c.history.per_channel = 20_000;
        c.limits.outbox_events = 20_000;
        c.limits.outbox_bytes = 32 << 20;
        c
    };
    let mut server = Some(TestServer::with(cfg()).await);
    let proxy = Proxy::start(addr).await;
    // The contract's backoff scaled down (50 ms doubling to 400 ms) so the client is back well
    // within the second between two cuts.
    let backoff = Backoff::new(
        Duration::from_millis(50),
        Duration::from_millis(400),
        Duration::from_secs(30),
    );
    let (client, mut events) = Client::builder(proxy.ws_url())
        .token(token("u_1", "o_1"))
        .backoff(backoff)
        .subscribe(ch(CHANNEL))
        .start()
        .unwrap();
    subscribed(&mut events, CHANNEL, WAIT).await;

    // The collector: every event, every reconnect, every resubscribe, and whether the client
    // is subscribed right now.
    let (up_tx, mut up_rx) = tokio::sync::watch::channel(true);
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(0u64);
    let collector = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut reconnects = 0;
        let mut resubscribed = Vec::new();
        while let Some(ev) = events.recv().await {
            match ev {
                ClientEvent::Event(e) => {
                    let seq = e.payload["seq"].as_u64().unwrap();
                    got.push(Got {
                        id: e.id,
                        offset: e.offset,
                        epoch: e.epoch,
                        seq,
                    });
                    let _ = last_tx.send(seq);
                }
                ClientEvent::Reconnecting { .. } => {
                    reconnects += 1;
                    let _ = up_tx.send(false);
                }
                ClientEvent::Resubscribed { recovered, .. } => {
                    resubscribed.push(recovered);
                    let _ = up_tx.send(true);
                }
                ClientEvent::Stopped(_) => break,
                _ => {}
            }
        }
        (got, reconnects, resubscribed)
    });

    // The publisher: 10 events every 10 ms for 10 s, each carrying its sequence number.
    let generation = Arc::new(AtomicU8::new(1));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = format!("http://{addr}/api/events");
    let gen_p = generation.clone();
    let publisher = tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut tick = tokio::time::interval(TICK);
        for b in 0..SECONDS * 1000 / BATCH {
            tick.tick().await;
            let seqs = b * BATCH + 1..(b + 1) * BATCH + 1;
            let batch: Vec<Value> = seqs
                .clone()
                .map(|seq| {
                    json!({"orgId":"o_1","type":"task.status_changed","channels":[CHANNEL],
                        "payload":{"taskId":"loss","oldStatus":"a","newStatus":"b","seq":seq}})
                })
                .collect();
            let generation = gen_p.load(Ordering::SeqCst);
            let resp = http
                .post(&url)
                .bearer_auth(PUBLISH_KEY)
                .json(&json!({ "events": batch }))
                .send()
                .await;
            let ids = match resp {
                Ok(r) if r.status().as_u16() == 202 => {
                    let body: Value = r.json().await.unwrap();
                    let ids = body["results"].as_array().unwrap().iter();
                    Some(ids.map(|r| r["id"].as_str().unwrap().to_owned()).collect())
                }
                _ => None,
            };
            sent.push(Sent {
                generation,
                seqs,
                ids,
            });
        }
        sent
    });

    // Cut the connection every second; at 5 s restart the node instead.
    let start = Instant::now();
    for k in 1..SECONDS {
        tokio::time::sleep_until(start + Duration::from_secs(k)).await;
        if k == 5 {
            // Restart while the client is subscribed, so the first node's events all reach it
            // before the drain closes it.
            let _ = tokio::time::timeout(WAIT, up_rx.wait_for(|up| *up)).await;
            generation.store(0, Ordering::SeqCst);
            server.take().unwrap().shutdown().await;
            server = Some(TestServer::with(cfg()).await);
            generation.store(2, Ordering::SeqCst);
        } else {
            proxy.cut();
        }
    }
    let sent = publisher.await.unwrap();
    let last_accepted = sent
        .iter()
        .filter(|s| s.ids.is_some())
        .map(|s| s.seqs.end - 1)
        .max()
        .unwrap();
    let caught_up = tokio::time::timeout(WAIT, last_rx.wait_for(|s| *s >= last_accepted)).await;
    client.close().await;
    let (got, reconnects, resubscribed) = collector.await.unwrap();
    assert!(
        caught_up.is_ok(),
        "the client never received seq {last_accepted}"
    );

    // Exactly once: no id twice, and the sequence numbers only go up.
    let mut ids = HashSet::new();
    for g in &got {
        assert!(ids.insert(g.id.as_str()), "{} delivered twice", g.id);
    }
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "out of order");
    // Two epochs, one after the other; within each, offsets without a gap.
    let epochs: Vec<&str> = got.iter().fold(Vec::new(), |mut v, g| {
        if v.last() != Some(&g.epoch.as_str()) {
            v.push(g.epoch.as_str());
        }
        v
    });
    assert_eq!(epochs.len(), 2, "one epoch per node, in turn: {epochs:?}");
    let (first, second): (Vec<&Got>, Vec<&Got>) = got.iter().partition(|g| g.epoch == epochs[0]);
    assert_eq!(first[0].offset, 1, "the first node's events from the first");
    for run in [&first, &second] {
        for w in run.windows(2) {
            assert_eq!(w[1].offset, w[0].offset + 1, "a gap after {:?}", w[0]);
        }
    }
    // Every event the first node accepted was received, in its epoch.
    let first_ids: HashSet<&str> = first.iter().map(|g| g.id.as_str()).collect();
    let accepted_by = |generations: &[u8]| -> Vec<(u64, String)> {
        sent.iter()
            .filter(|s| generations.contains(&s.generation))
            .filter_map(|s| Some(s.seqs.clone().zip(s.ids.clone()?)))
            .flatten()
            .collect()
    };
    let by_first = accepted_by(&[1]);
    for (seq, id) in &by_first {
        assert!(
            first_ids.contains(id.as_str()),
            "seq {seq} of the first node was lost"
        );
    }
    // After the resubscribe to the second node, nothing is lost either.
    let from = second[0].seq;
    let second_ids: HashSet<&str> = second.iter().map(|g| g.id.as_str()).collect();
    let by_second = accepted_by(&[0, 2]);
    for (seq, id) in by_second.iter().filter(|(seq, _)| *seq >= from) {
        assert!(
            second_ids.contains(id.as_str()),
            "seq {seq} of the second node was lost"
        );
    }
    // The restart, and only the restart, could not be recovered.
    assert_eq!(
        resubscribed.iter().filter(|r| !**r).count(),
        1,
        "{resubscribed:?}"
    );
    assert!(reconnects >= 8, "only {reconnects} reconnects");

    let failed: u64 = sent
        .iter()
        .filter(|s| s.ids.is_none())
        .map(|s| s.seqs.end - s.seqs.start)
        .sum();
    let lost = by_second.iter().filter(|(seq, _)| *seq < from).count();
    println!(
        "loss test: published {} ({} refused or failed during the restart); first node accepted {}, \
         received {} (epoch {}); second node accepted {}, received {} (epoch {}), {} lost before \
         the resubscribe (recovered: false); {} reconnects, {} resubscribes ({} recovered)",
        SECONDS * 1000,
        failed,
        by_first.len(),
        first.len(),
        epochs[0],
        by_second.len(),
        second.len(),
        epochs[1],
        lost,
        reconnects,
        resubscribed.len(),
        resubscribed.iter().filter(|r| **r).count(),
    );
    drop(server);
}

/// Polls a process's stderr until it contains `text`.
async fn stderr_says(p: &Proc, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "stderr never said {text:?}:\n{}",
            p.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tail_prints_events_as_json_lines_and_survives_a_server_restart() {
    let addr = free_addr();
    let s = TestServer::with(config_on(addr)).await;
    let url = s.ws_url();
    let tok = token("u_1", "o_1");
    let mut p = Proc::spawn(&["tail", "--url", &url, "--token", &tok, "task:t_1"], &[]);
    stderr_says(&p, "subscribed; task:t_1 at offset 0", WAIT).await;
    let (_, body) = s.publish(event("o_1", &["task:t_1"], 1)).await;
    let line = p.next_line().await;
    let id = body["id"].as_str().unwrap();
    assert!(
        line.starts_with(&format!(
            r#"{{"type":"task.status_changed","channelId":"task:t_1","id":"{id}","offset":1,"epoch":"e_"#
        )),
        "{line}"
    );
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["payload"]["n"], 1);

    s.shutdown().await;
    let s = TestServer::with(config_on(addr)).await;
    stderr_says(
        &p,
        "reconnected; task:t_1 not recovered (reload state)",
        Duration::from_secs(10),
    )
    .await;
    s.publish(event("o_1", &["task:t_1"], 2)).await;
    let second: Value = serde_json::from_str(&p.next_line().await).unwrap();
    assert_eq!(second["offset"], 1);
    assert_ne!(second["epoch"], first["epoch"]);
    assert_eq!(second["payload"]["n"], 2);
    assert!(
        p.stderr().contains("disconnected (closed 1001"),
        "{}",
        p.stderr()
    );
    assert!(!p.stderr().contains(&tok), "the token is never printed");

    p.terminate();
    assert!(p.wait_exit(WAIT).await.success(), "{}", p.stderr());
    assert_eq!(p.stdout_lines().len(), 2);
}

#[tokio::test]
async fn tail_exits_non_zero_on_4001() {
    let s = TestServer::start().await;
    let p = run_bin(
        &[
            "tail",
            "--url",
            &s.ws_url(),
            "--token",
            "not-a-jwt",
            "task:t_1",
        ],
        &[],
    )
    .await;
    assert!(!p.status().success());
    assert!(p.stderr().contains("4001"), "{}", p.stderr());
    assert!(p.stdout().is_empty());
}
