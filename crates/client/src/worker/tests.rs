//! The state machine under tokio's paused clock, against a scripted server over an in-memory
//! pipe: every connection attempt reaches the test as an [`Attempt`], which it accepts (and
//! then plays the server's part), refuses with an HTTP status, or drops.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;

use super::*;
use crate::connection::Io;
use crate::{Client, ClientBuilder, Events};

/// Longest a test waits, in paused time, for something it expects.
const PATIENCE: Duration = Duration::from_secs(3600);

/// A connection attempt: the server's end of the pipe and when it was dialled.
struct Attempt {
    at: Instant,
    io: DuplexStream,
}

/// The test's view of the network: one [`Attempt`] per dial.
struct Net {
    rx: mpsc::UnboundedReceiver<Attempt>,
}

fn net() -> (Dial, Net) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dial: Dial = Arc::new(move |_host, _port| {
        let tx = tx.clone();
        Box::pin(async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            tx.send(Attempt {
                at: Instant::now(),
                io: server,
            })
            .map_err(|_| io::Error::other("the test is over"))?;
            Ok(Box::new(client) as Box<dyn Io>)
        })
    });
    (dial, Net { rx })
}

impl Net {
    async fn next(&mut self) -> Attempt {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("a connection attempt")
            .expect("the dialer is alive")
    }

    /// No attempt for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(Some(a)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected attempt at {:?}", a.at);
        }
    }
}

/// The server's end of an accepted WebSocket, and the upgrade request it saw.
struct Peer {
    ws: WebSocketStream<DuplexStream>,
    uri: String,
    headers: http::HeaderMap,
}

// tungstenite's handshake callback returns its own large error type.
#[allow(clippy::result_large_err)]
impl Attempt {
    async fn accept(self) -> Peer {
        let seen = Arc::new(Mutex::new(None));
        let slot = seen.clone();
        let ws =
            tokio_tungstenite::accept_hdr_async(self.io, move |req: &Request, resp: Response| {
                *slot.lock().unwrap() = Some((req.uri().to_string(), req.headers().clone()));
                Ok(resp)
            })
            .await
            .expect("upgrade");
        let (uri, headers) = seen.lock().unwrap().take().unwrap();
        Peer { ws, uri, headers }
    }

    async fn refuse(self, status: u16, error: &str) {
        let body = json!({"error": error, "message": "no"}).to_string();
        let _ = tokio_tungstenite::accept_hdr_async(self.io, move |_: &Request, _: Response| {
            let resp: ErrorResponse = http::Response::builder()
                .status(status)
                .body(Some(body))
                .unwrap();
            Err(resp)
        })
        .await;
    }

    /// Accepts, reads the auth frame and says `connected` (token valid for an hour).
    async fn connect(self) -> Peer {
        let mut peer = self.accept().await;
        assert_eq!(peer.recv().await["type"], "auth");
        peer.connected(3600).await;
        peer
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Peer {
    async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame as JSON.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame")
                .expect("the connection is open")
                .expect("a frame");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(f) => panic!("closed by the client: {f:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame, or how the connection ended: `Err(Some(code))` for a close frame.
    async fn recv_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => return Err(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                _ => return Err(None),
            }
        }
    }

    async fn connected(&mut self, expires_in: i64) {
        let expires_at = cortex_protocol::event::rfc3339_secs(unix_now() + expires_in);
        self.send(json!({"type":"connected","connectionId":"c_1","userId":"u_1","orgId":"o_1","expiresAt":expires_at}))
            .await;
    }

    /// Expects a subscribe to `channel` and answers it.
    async fn subscribed(
        &mut self,
        channel: &str,
        offset: u64,
        epoch: &str,
        recovered: Option<bool>,
    ) -> Value {
        let sub = self.recv().await;
        assert_eq!(sub["type"], "subscribe", "{sub}");
        assert_eq!(sub["channelId"], channel, "{sub}");
        let mut reply = json!({"type":"subscribed","channelId":channel,"offset":offset,"epoch":epoch,"ref":sub["ref"]});
        if let Some(r) = recovered {
            reply["recovered"] = json!(r);
        }
        self.send(reply).await;
        sub
    }

    async fn event(&mut self, channel: &str, offset: u64, epoch: &str) {
        self.send(json!({"type":"task.status_changed","channelId":channel,"id":format!("evt_{epoch}_{offset}"),
            "offset":offset,"epoch":epoch,"payload":{"taskId":"t_1","n":offset}}))
            .await;
    }

    async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code),
            reason: "test".into(),
        };
        self.ws.close(Some(frame)).await.unwrap();
        while let Some(Ok(_)) = self.ws.next().await {}
    }
}

/// Hands out `tok-1`, `tok-2`, ... and counts the calls.
fn counting_provider() -> (Arc<AtomicU32>, impl TokenProvider) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let provider = move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, TokenError>(format!("tok-{n}")) }
    };
    (calls, provider)
}

const SEED: u64 = 7;

/// A client on a fresh [`net`] with a [`counting_provider`] and an rng seeded with [`SEED`], set
/// up by `configure` and started; with the count of the provider's calls.
fn start_counting(
    configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (Arc<AtomicU32>, Client, Events, Net) {
    let (dial, net) = net();
    let (calls, provider) = counting_provider();
    let b = Client::builder("ws://realtime.test:8080/api/ws")
        .token_provider(provider)
        .dial(dial)
        .rng(Box::new(StdRng::seed_from_u64(SEED)));
    let (client, events) = configure(b).start().unwrap();
    (calls, client, events, net)
}

/// [`start_counting`] without the count.
fn start(configure: impl FnOnce(ClientBuilder) -> ClientBuilder) -> (Client, Events, Net) {
    let (_, client, events, net) = start_counting(configure);
    (client, events, net)
}

fn ch(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

async fn next(events: &mut Events) -> ClientEvent {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("an event")
        .expect("the client is running")
}

/// The next event matching `f`, skipping others.
async fn next_where(events: &mut Events, f: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the event within the patience")
            .expect("the client is running");
        if f(&ev) {
            return ev;
        }
    }
}

async fn next_event(events: &mut Events) -> Event {
    match next_where(events, |e| matches!(e, ClientEvent::Event(_))).await {
        ClientEvent::Event(e) => e,
        _ => unreachable!(),
    }
}

async fn reconnecting(events: &mut Events) -> (Disconnect, Duration) {
    match next_where(events, |e| matches!(e, ClientEvent::Reconnecting { .. })).await {
        ClientEvent::Reconnecting { cause, delay, .. } => (cause, delay),
        _ => unreachable!(),
    }
}

/// The next `Resubscribed`, skipping other events.
async fn resubscribed(events: &mut Events) -> ClientEvent {
    next_where(events, |e| matches!(e, ClientEvent::Resubscribed { .. })).await
}

async fn stopped(events: &mut Events) -> Stop {
    match next_where(events, |e| matches!(e, ClientEvent::Stopped(_))).await {
        ClientEvent::Stopped(s) => s,
        _ => unreachable!(),
    }
}

/// Events and then the end of the stream: nothing after `Stopped`.
async fn ends(events: &mut Events) {
    assert_eq!(
        tokio::time::timeout(PATIENCE, events.recv()).await.unwrap(),
        None
    );
}

/// The delays a client seeded with [`SEED`] draws, in order.
struct Expected {
    backoff: Backoff,
    rng: StdRng,
}

impl Expected {
    fn new() -> Expected {
        Expected {
            backoff: Backoff::default(),
            rng: StdRng::seed_from_u64(SEED),
        }
    }

    fn next(&mut self) -> Duration {
        self.backoff.next_delay(&mut self.rng)
    }
}

fn closed(code: u16) -> impl Fn(&Disconnect) -> bool {
    move |d| matches!(d, Disconnect::Closed { code: c, .. } if *c == code)
}

#[tokio::test(start_paused = true)]
async fn the_token_goes_in_the_auth_frame_and_channels_wanted_before_connecting_are_subscribed() {
    let (client, mut events, mut net) = start(|b| b.subscribe(ch("task:t_1")));
    client.subscribe(ch("project:p_1"));
    let mut peer = net.next().await.accept().await;
    assert_eq!(peer.uri, "/api/ws");
    assert!(!peer.headers.contains_key("authorization"));
    assert_eq!(peer.recv().await, json!({"type":"auth","token":"tok-1"}));
    peer.connected(3600).await;
    peer.subscribed("project:p_1", 0, "e_p", None).await;
    let sub = peer.subscribed("task:t_1", 4, "e_t", None).await;
    assert!(
        sub.get("since").is_none(),
        "a first subscribe has no since: {sub}"
    );
    let ClientEvent::Connected(c) = next(&mut events).await else {
        panic!()
    };
    assert_eq!(
        (
            c.connection_id.as_str(),
            c.user_id.as_str(),
            c.org_id.as_str()
        ),
        ("c_1", "u_1", "o_1")
    );
    assert_eq!(
        next(&mut events).await,
        ClientEvent::Subscribed {
            channel: ch("project:p_1"),
            offset: 0,
            epoch: "e_p".into()
        }
    );
    assert_eq!(
        next(&mut events).await,
        ClientEvent::Subscribed {
            channel: ch("task:t_1"),
            offset: 4,
            epoch: "e_t".into()
        }
    );
    peer.event("task:t_1", 5, "e_t").await;
    let unknown = r#"{"type":"agent.teleported","channelId":"task:t_1","id":"evt_x","offset":6,"epoch":"e_t","payload":{"to":"mars","a":1}}"#;
    peer.send_text(unknown).await;
    let e = next_event(&mut events).await;
    assert_eq!(
        e.event_type,
        Some(cortex_protocol::EventType::TaskStatusChanged)
    );
    assert_eq!(
        (
            e.channel.as_str(),
            e.id.as_str(),
            e.offset,
            e.epoch.as_str()
        ),
        ("task:t_1", "evt_e_t_5", 5, "e_t")
    );
    assert_eq!(e.payload, json!({"taskId":"t_1","n":5}));
    let e = next_event(&mut events).await;
    assert_eq!(e.event_type, None, "an unknown type is still delivered");
    assert_eq!(e.type_name, "agent.teleported");
    assert_eq!(e.as_json(), unknown, "exactly as sent");
}

#[tokio::test(start_paused = true)]
async fn the_query_and_header_transports_carry_the_token_in_the_upgrade() {
    for (transport, query, header) in [
        (TokenTransport::Query, "/api/ws?token=tok-1", None),
        (TokenTransport::Header, "/api/ws", Some("Bearer tok-1")),
    ] {
        let (_client, mut events, mut net) =
            start(|b| b.transport(transport).subscribe(ch("task:t_1")));
        let mut peer = net.next().await.accept().await;
        assert_eq!(peer.uri, query);
        assert_eq!(
            peer.headers
                .get("authorization")
                .map(|v| v.to_str().unwrap()),
            header
        );
        // No auth frame: the first thing the client sends is its subscribe.
        peer.connected(3600).await;
        peer.subscribed("task:t_1", 0, "e", None).await;
        assert!(matches!(next(&mut events).await, ClientEvent::Connected(_)));
    }
}

#[tokio::test(start_paused = true)]
async fn reconnect_attempts_are_spaced_by_the_jittered_backoff_which_resets_after_30_s_up() {
    let (_client, mut events, mut net) = start(|b| b);
    let mut want = Expected::new();
    let mut last = net.next().await.at; // dropped: the upgrade fails
    for i in 0..8 {
        let (cause, delay) = reconnecting(&mut events).await;
        assert!(matches!(cause, Disconnect::Lost(_)), "{cause:?}");
        let expected = want.next();
        assert_eq!(delay, expected, "attempt {i}");
        let bound = Duration::from_secs([1, 2, 4, 8, 16, 30, 30, 30][i]);
        assert!(delay <= bound, "attempt {i}: {delay:?} > {bound:?}");
        let a = net.next().await;
        let gap = a.at - last;
        assert!(
            gap >= delay && gap <= delay + Duration::from_millis(1),
            "attempt {i}: slept {gap:?}, wanted {delay:?}"
        );
        last = a.at;
        if i < 7 {
            drop(a);
            continue;
        }
        // Up 29 s: the bound keeps growing.
        let peer = a.connect().await;
        tokio::time::sleep(Duration::from_secs(29)).await;
        drop(peer);
    }
    let (_, delay) = reconnecting(&mut events).await;
    assert_eq!(delay, want.next(), "no reset after 29 s");
    let peer = net.next().await.connect().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(peer);
    let (_, delay) = reconnecting(&mut events).await;
    want.backoff.reset();
    assert_eq!(delay, want.next(), "reset after 30 s up");
    assert!(delay <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn close_4001_stops_the_client_with_no_reconnect() {
    // After connected, and in answer to the auth frame.
    for after_connected in [true, false] {
        let (calls, _client, mut events, mut net) = start_counting(|b| b);
        let mut peer = net.next().await.accept().await;
        peer.recv().await;
        if after_connected {
            peer.connected(3600).await;
        }
        peer.close(4001).await;
        assert_eq!(stopped(&mut events).await, Stop::Unauthorized);
        ends(&mut events).await;
        net.quiet_for(Duration::from_secs(3600)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no new token was asked for"
        );
    }
    // HTTP 401 before the upgrade.
    let (_client, mut events, mut net) = start(|b| b.transport(TokenTransport::Query));
    net.next().await.refuse(401, "unauthorized").await;
    assert_eq!(stopped(&mut events).await, Stop::Unauthorized);
    net.quiet_for(Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn close_1000_stops_the_client() {
    let (_client, mut events, mut net) = start(|b| b);
    net.next().await.connect().await.close(1000).await;
    assert_eq!(stopped(&mut events).await, Stop::ServerClosed);
    ends(&mut events).await;
    net.quiet_for(Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn close_4002_asks_the_provider_for_a_new_token_and_reconnects_at_once_resuming() {
    let (calls, _client, mut events, mut net) = start_counting(|b| b.subscribe(ch("task:t_1")));
    let mut peer = net.next().await.connect().await;
    peer.subscribed("task:t_1", 0, "e_1", None).await;
    peer.event("task:t_1", 1, "e_1").await;
    next_event(&mut events).await;
    let closed_at = Instant::now();
    peer.close(4002).await;
    let (cause, delay) = reconnecting(&mut events).await;
    assert!(closed(4002)(&cause), "{cause:?}");
    assert_eq!(delay, Duration::ZERO);
    let a = net.next().await;
    assert_eq!(a.at, closed_at, "reconnects at once");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked for a new token");
    let mut peer = a.accept().await;
    assert_eq!(peer.recv().await, json!({"type":"auth","token":"tok-2"}));
    peer.connected(3600).await;
    let sub = peer.subscribed("task:t_1", 1, "e_1", Some(true)).await;
    assert_eq!(sub["since"], json!({"offset":1,"epoch":"e_1"}));

    // Expired on arrival twice in a row: the provider has nothing fresher; stop.
    peer.close(4002).await;
    let mut peer = net.next().await.accept().await;
    peer.recv().await;
    peer.close(4002).await;
    let a = net.next().await;
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    a.refuse(401, "token_expired").await;
    assert_eq!(stopped(&mut events).await, Stop::TokenExpired);
    net.quiet_for(Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn close_4009_reconnects_with_backoff_and_resumes_from_the_last_offset_without_duplicates() {
    let (_client, mut events, mut net) = start(|b| b.subscribe(ch("task:t_1")));
    let mut want = Expected::new();
    let mut peer = net.next().await.connect().await;
    peer.subscribed("task:t_1", 0, "e_1", None).await;
    for o in 1..=3 {
        peer.event("task:t_1", o, "e_1").await;
    }
    for o in 1..=3 {
        assert_eq!(next_event(&mut events).await.offset, o);
    }
    peer.close(4009).await;
    let (cause, delay) = reconnecting(&mut events).await;
    assert!(closed(4009)(&cause));
    assert_eq!(delay, want.next());
    let mut peer = net.next().await.connect().await;
    let sub = peer.subscribed("task:t_1", 5, "e_1", Some(true)).await;
    assert_eq!(sub["since"], json!({"offset":3,"epoch":"e_1"}));
    assert_eq!(
        resubscribed(&mut events).await,
        ClientEvent::Resubscribed {
            channel: ch("task:t_1"),
            recovered: true,
            offset: 5,
            epoch: "e_1".into()
        }
    );
    // A server that repeats itself: 3 and 4 again are dropped.
    for o in [3, 4, 4, 5, 2, 6] {
        peer.event("task:t_1", o, "e_1").await;
    }
    for o in [4, 5, 6] {
        assert_eq!(next_event(&mut events).await.offset, o);
    }

    // History lost: a new epoch, recovered false, and the position moves to the new epoch.
    peer.close(1001).await;
    let mut peer = net.next().await.connect().await;
    let sub = peer.subscribed("task:t_1", 2, "e_2", Some(false)).await;
    assert_eq!(sub["since"], json!({"offset":6,"epoch":"e_1"}));
    assert_eq!(
        resubscribed(&mut events).await,
        ClientEvent::Resubscribed {
            channel: ch("task:t_1"),
            recovered: false,
            offset: 2,
            epoch: "e_2".into()
        }
    );
    peer.event("task:t_1", 3, "e_2").await;
    let e = next_event(&mut events).await;
    assert_eq!((e.offset, e.epoch.as_str()), (3, "e_2"));
    peer.close(4009).await;
    let mut peer = net.next().await.connect().await;
    let sub = peer.subscribed("task:t_1", 3, "e_2", Some(true)).await;
    assert_eq!(sub["since"], json!({"offset":3,"epoch":"e_2"}));
}

#[tokio::test(start_paused = true)]
async fn a_resume_that_overflows_the_server_queue_is_given_up_once_not_retried_forever() {
    let (_client, mut events, mut net) =
        start(|b| b.subscribe(ch("task:t_1")).subscribe(ch("task:t_2")));
    let mut peer = net.next().await.connect().await;
    peer.subscribed("task:t_1", 0, "e_1", None).await;
    peer.subscribed("task:t_2", 0, "e_1", None).await;
    peer.event("task:t_1", 1, "e_1").await;
    next_event(&mut events).await;
    peer.close(1001).await;
    // The replay of t_1 overflows: 4009 with no reply. t_2's resume was answered first.
    let mut peer = net.next().await.connect().await;
    let sub = peer.recv().await;
    assert_eq!(sub["since"], json!({"offset":1,"epoch":"e_1"}));
    peer.subscribed("task:t_2", 0, "e_1", Some(true)).await;
    peer.close(4009).await;
    let mut peer = net.next().await.connect().await;
    let sub = peer.subscribed("task:t_1", 900, "e_1", None).await;
    assert!(sub.get("since").is_none(), "given up: {sub}");
    let sub = peer.subscribed("task:t_2", 0, "e_1", Some(true)).await;
    assert_eq!(sub["since"]["offset"], 0, "the other channel still resumes");
    assert_eq!(
        next_where(&mut events, |e| matches!(e, ClientEvent::Resubscribed { channel, .. } if channel.as_str() == "task:t_1")).await,
        ClientEvent::Resubscribed { channel: ch("task:t_1"), recovered: false, offset: 900, epoch: "e_1".into() }
    );
    // And resumes normally from there.
    peer.event("task:t_1", 901, "e_1").await;
    assert_eq!(next_event(&mut events).await.offset, 901);
    peer.close(4009).await;
    let mut peer = net.next().await.connect().await;
    let sub = peer.subscribed("task:t_1", 901, "e_1", Some(true)).await;
    assert_eq!(sub["since"]["offset"], 901);
}

#[tokio::test(start_paused = true)]
async fn every_other_close_code_and_a_lost_connection_back_off_and_resume() {
    let (_client, mut events, mut net) = start(|b| b.subscribe(ch("task:t_1")));
    let mut want = Expected::new();
    let mut peer = net.next().await.connect().await;
    peer.subscribed("task:t_1", 0, "e_1", None).await;
    for (i, code) in [1001u16, 1008, 1009, 4003, 4008, 4029, 4009, 1011, 4999, 0]
        .into_iter()
        .enumerate()
    {
        peer.event("task:t_1", i as u64 + 1, "e_1").await;
        assert_eq!(next_event(&mut events).await.offset, i as u64 + 1);
        if code == 0 {
            drop(peer);
        } else {
            peer.close(code).await;
        }
        let (cause, delay) = reconnecting(&mut events).await;
        if code == 0 {
            assert!(matches!(cause, Disconnect::Lost(_)), "{cause:?}");
        } else {
            assert!(closed(code)(&cause), "{code}: {cause:?}");
        }
        assert_eq!(delay, want.next(), "{code}");
        peer = net.next().await.connect().await;
        let sub = peer
            .subscribed("task:t_1", i as u64 + 1, "e_1", Some(true))
            .await;
        assert_eq!(sub["since"]["offset"], i as u64 + 1, "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_token_is_refreshed_on_the_live_connection_before_it_expires() {
    let (calls, _client, mut events, mut net) =
        start_counting(|b| b.idle_timeout(Duration::from_secs(100_000)));
    let mut peer = net.next().await.accept().await;
    peer.recv().await;
    let start = Instant::now();
    // 120 s left: refresh 60 s before expiry (80 % would be 96 s).
    peer.connected(120).await;
    let m = peer.recv().await;
    let waited = start.elapsed();
    assert_eq!(m["type"], "refresh");
    assert_eq!(m["token"], "tok-2");
    assert!(
        waited > Duration::from_secs(58) && waited <= Duration::from_secs(60),
        "{waited:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let expires_at = cortex_protocol::event::rfc3339_secs(unix_now() + 3600);
    peer.send(json!({"type":"refreshed","expiresAt":expires_at,"ref":m["ref"]}))
        .await;
    assert_eq!(
        next_where(&mut events, |e| matches!(e, ClientEvent::Refreshed { .. })).await,
        ClientEvent::Refreshed { expires_at }
    );
    // An hour left: the next refresh comes at 80 % of it, 2880 s.
    let start = Instant::now();
    let m = peer.recv().await;
    assert_eq!(m["type"], "refresh");
    assert_eq!(m["token"], "tok-3");
    let waited = start.elapsed().as_secs();
    assert!((2878..=2880).contains(&waited), "{waited}");
    // A refused refresh is reported and tried again halfway to the expiry.
    peer.send(json!({"type":"error","code":"invalid_token","message":"no","ref":m["ref"]}))
        .await;
    assert!(matches!(
        next_where(&mut events, |e| matches!(
            e,
            ClientEvent::ServerError { .. }
        ))
        .await,
        ClientEvent::ServerError {
            code: ErrorCode::InvalidToken,
            ..
        }
    ));
    let start = Instant::now();
    let m = peer.recv().await;
    assert_eq!(m["token"], "tok-4");
    let waited = start.elapsed().as_secs();
    assert!((358..=360).contains(&waited), "{waited}");
}

#[tokio::test(start_paused = true)]
async fn a_provider_with_no_newer_token_is_not_asked_in_a_loop() {
    let (_client, mut events, mut net) =
        start(|b| b.token("fixed").idle_timeout(Duration::from_secs(100_000)));
    let mut peer = net.next().await.accept().await;
    assert_eq!(peer.recv().await["token"], "fixed");
    peer.connected(100).await;
    // The refresh would send the same token: nothing is sent; the server's 4002 comes.
    tokio::time::sleep(Duration::from_secs(130)).await;
    peer.close(4002).await;
    // The same token again, refused as expired on arrival twice: stop.
    for _ in 0..2 {
        let mut peer = net.next().await.accept().await;
        assert_eq!(peer.recv().await["token"], "fixed");
        peer.close(4002).await;
    }
    assert_eq!(stopped(&mut events).await, Stop::TokenExpired);
    net.quiet_for(Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn close_sends_1000_and_ends_the_events() {
    let (client, mut events, mut net) = start(|b| b);
    let mut peer = net.next().await.connect().await;
    assert!(matches!(next(&mut events).await, ClientEvent::Connected(_)));
    let server = tokio::spawn(async move { peer.recv_or_close().await });
    client.close().await;
    assert_eq!(server.await.unwrap(), Err(Some(1000)));
    assert_eq!(next(&mut events).await, ClientEvent::Stopped(Stop::Closed));
    ends(&mut events).await;
    net.quiet_for(Duration::from_secs(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_the_connection() {
    let (client, mut events, mut net) = start(|b| b);
    let mut peer = net.next().await.connect().await;
    assert!(matches!(next(&mut events).await, ClientEvent::Connected(_)));
    let other = client.clone();
    drop(client);
    tokio::task::yield_now().await;
    drop(other);
    assert_eq!(peer.recv_or_close().await, Err(Some(1000)));
    assert_eq!(next(&mut events).await, ClientEvent::Stopped(Stop::Closed));
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_stops_delivery_at_once_and_a_new_subscribe_starts_fresh() {
    let (client, mut events, mut net) = start(|b| b.subscribe(ch("task:t_1")));
    let mut peer = net.next().await.connect().await;
    peer.subscribed("task:t_1", 0, "e_1", None).await;
    peer.event("task:t_1", 1, "e_1").await;
    assert_eq!(next_event(&mut events).await.offset, 1);
    client.unsubscribe(&ch("task:t_1"));
    assert!(client.subscriptions().is_empty());
    let m = peer.recv().await;
    assert_eq!(m["type"], "unsubscribe");
    assert_eq!(m["channelId"], "task:t_1");
    // Sent before the server read the unsubscribe: not delivered.
    peer.event("task:t_1", 2, "e_1").await;
    peer.send(json!({"type":"unsubscribed","channelId":"task:t_1","ref":m["ref"]}))
        .await;
    client.subscribe(ch("task:t_1"));
    let sub = peer.subscribed("task:t_1", 5, "e_1", None).await;
    assert!(
        sub.get("since").is_none(),
        "the position was forgotten: {sub}"
    );
    peer.event("task:t_1", 6, "e_1").await;
    assert_eq!(
        next_where(&mut events, |e| !matches!(e, ClientEvent::Connected(_))).await,
        ClientEvent::Subscribed {
            channel: ch("task:t_1"),
            offset: 5,
            epoch: "e_1".into()
        }
    );
    assert_eq!(next_event(&mut events).await.offset, 6);
}

#[tokio::test(start_paused = true)]
async fn refused_subscribes_and_server_ended_subscriptions_are_reported_and_forgotten() {
    let (client, mut events, mut net) =
        start(|b| b.subscribe(ch("org:o_2")).subscribe(ch("task:t_1")));
    let mut peer = net.next().await.connect().await;
    let sub = peer.recv().await;
    assert_eq!(sub["channelId"], "org:o_2");
    peer.send(json!({"type":"error","code":"forbidden","message":"no","channelId":"org:o_2","ref":sub["ref"]})).await;
    peer.subscribed("task:t_1", 0, "e", None).await;
    assert_eq!(
        next_where(&mut events, |e| matches!(
            e,
            ClientEvent::SubscribeFailed { .. }
        ))
        .await,
        ClientEvent::SubscribeFailed {
            channel: ch("org:o_2"),
            code: ErrorCode::Forbidden,
            message: "no".into()
        }
    );
    peer.send(json!({"type":"unsubscribed","channelId":"task:t_1"}))
        .await;
    assert_eq!(
        next_where(&mut events, |e| matches!(
            e,
            ClientEvent::Unsubscribed { .. }
        ))
        .await,
        ClientEvent::Unsubscribed {
            channel: ch("task:t_1")
        }
    );
    assert!(client.subscriptions().is_empty());
    // Neither is subscribed again after a reconnect.
    peer.close(1001).await;
    let mut peer = net.next().await.connect().await;
    client.subscribe(ch("agent:a"));
    peer.subscribed("agent:a", 0, "e", None).await;
}

#[tokio::test(start_paused = true)]
async fn resubscribing_many_channels_stays_under_the_servers_command_rate() {
    let (client, _events, mut net) = start(|b| b);
    for i in 0..128 {
        client.subscribe(ch(&format!("task:t_{i}")));
    }
    let mut peer = net.next().await.connect().await;
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..128 {
        let m = peer.recv().await;
        assert_eq!(m["type"], "subscribe");
        times.push(start.elapsed());
    }
    // At most 100 in any one second (the server's limit): a 50 burst, then 50 a second.
    for (i, t) in times.iter().enumerate().skip(100) {
        assert!(
            *t - times[i - 100] >= Duration::from_secs(1),
            "{i}: {times:?}"
        );
    }
    assert!(
        times[127] <= Duration::from_millis(1600),
        "{:?}",
        times[127]
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_replaced_after_the_idle_timeout() {
    let (_client, mut events, mut net) = start(|b| b);
    let _peer = net.next().await.connect().await;
    let start = Instant::now();
    let (cause, _) = reconnecting(&mut events).await;
    assert_eq!(cause, Disconnect::Timeout);
    assert_eq!(start.elapsed(), Duration::from_secs(90));
}

#[tokio::test(start_paused = true)]
async fn a_failing_provider_backs_off_and_a_denying_one_stops_the_client() {
    let (dial, mut net) = net();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let (_client, mut events) = Client::builder("ws://realtime.test/api/ws")
        .token_provider(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(TokenError::Failed("auth service down".into())),
                    1 => Ok("tok".to_owned()),
                    _ => Err(TokenError::Denied("signed out".into())),
                }
            }
        })
        .dial(dial)
        .rng(Box::new(StdRng::seed_from_u64(SEED)))
        .start()
        .unwrap();
    let (cause, delay) = reconnecting(&mut events).await;
    assert_eq!(cause, Disconnect::Token("auth service down".into()));
    assert_eq!(delay, Expected::new().next());
    net.next().await.connect().await.close(1001).await;
    assert_eq!(
        stopped(&mut events).await,
        Stop::NoToken("signed out".into())
    );
}

#[test]
fn refresh_comes_60_s_before_expiry_or_at_80_percent_whichever_is_earlier() {
    let s = Duration::from_secs;
    assert_eq!(refresh_delay(s(3600)), s(2880));
    assert_eq!(refresh_delay(s(600)), s(480));
    assert_eq!(refresh_delay(s(300)), s(240));
    assert_eq!(refresh_delay(s(120)), s(60));
    // Short tokens: not before a quarter of the lifetime, never in a tight loop.
    assert_eq!(refresh_delay(s(60)), s(15));
    assert_eq!(refresh_delay(s(0)), s(0));
}
