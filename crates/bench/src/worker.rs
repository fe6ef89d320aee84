//! One worker process: holds a range of the run's connections on a single-threaded runtime and
//! reports to the coordinator as JSON lines on stdout.
//!
//! The coordinator speaks to it through stdin: a line `finish` (or the end of stdin) makes it
//! print its final [`Report`] (counters and the latency histogram) and exit, dropping every
//! connection at once.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::marker::{Chan, Marker, Seen, SeqTrack, now_ns};
use crate::plan::{Plan, PlanArgs};
use crate::route::{self, Route};
use crate::target::{self, Kind, Position, Subscribed, Target};
use crate::timeline::{Bucket, Timeline};

/// What a worker is told to do.
#[derive(Clone, Debug, clap::Args)]
pub struct WorkerArgs {
    /// The server under test.
    #[arg(long, value_enum)]
    pub target: Kind,
    /// Its nodes' `host:port`, comma-separated: connection i tries the node `--route` gives
    /// first and, each time a connection attempt fails or its connection drops, the next one
    /// by the same rule.
    #[arg(long)]
    pub addr: String,
    /// How connections are spread over the nodes: round robin, or by org.
    #[arg(long, value_enum, default_value = "rr")]
    pub route: Route,
    /// The org of every channel and token.
    #[arg(long, default_value = "bench")]
    pub org: String,
    /// The HS256 secret tokens are signed with.
    #[arg(long, default_value = "")]
    pub secret: String,
    /// Who subscribes to what.
    #[command(flatten)]
    pub plan: PlanArgs,
    /// The first connection index of this worker.
    #[arg(long)]
    pub from: u32,
    /// One past the last.
    #[arg(long)]
    pub to: u32,
    /// Source addresses: connection i binds 127.0.0.(2 + i % N).
    #[arg(long, default_value_t = 4)]
    pub source_addrs: u8,
    /// Connections opening at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Reconnect closed connections (full-jitter backoff from 1 s doubling to 30 s).
    #[arg(long)]
    pub reconnect: bool,
    /// First delay of the reconnect backoff.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub reconnect_base: Duration,
    /// For `wss://` addresses: the PEM file of the CA the server's certificate is checked
    /// against.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
}

/// The TLS client of `wss://` addresses, made once per worker from `--ca`.
fn tls_client(args: &WorkerArgs) -> Result<Arc<rustls::ClientConfig>> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let ca = args
        .ca
        .as_deref()
        .ok_or_else(|| anyhow!("a wss:// address needs --ca FILE"))?;
    let config = crate::tls::client_config(ca)?;
    Ok(CONFIG.get_or_init(|| config).clone())
}

/// A line a worker prints.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Line {
    /// Every 50 ms.
    Progress {
        /// Connections open and subscribed now.
        connected: u32,
        /// Events received so far (every arrival, duplicates included).
        received: u64,
        /// Connections that dropped so far.
        dropped: u64,
    },
    /// Once every connection has been tried.
    Ready {
        /// Connections open and subscribed.
        connected: u32,
        /// Indexes of connections that could not connect or subscribe.
        failed: Vec<u32>,
        /// The first few errors, for the operator.
        errors: Vec<String>,
        /// Seconds from the worker's start until every connection was tried.
        connect_secs: f64,
    },
    /// At the end.
    Final(Box<Report>),
}

/// What one worker saw.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Events received (every arrival).
    pub received: u64,
    /// Arrivals of a sequence number not seen before.
    pub unique: u64,
    /// Arrivals of a sequence number already seen.
    pub duplicates: u64,
    /// Arrivals after a later sequence number of the same channel.
    pub out_of_order: u64,
    /// Events on a channel the connection had not subscribed to (a routing error).
    pub misrouted: u64,
    /// Text frames without a marker (other than protocol frames).
    pub unparsed: u64,
    /// Bytes of the event frames received.
    pub bytes: u64,
    /// Connections the server closed or lost after they were subscribed.
    pub dropped: u64,
    /// Successful reconnects.
    pub reconnects: u64,
    /// Reconnects that resumed every channel (`recovered: true`, Cortex).
    pub resumed: u64,
    /// `recovered: false` (a resume the server could not serve, or its continuity notice):
    /// the server said it skipped events, explicitly.
    pub not_recovered: u64,
    /// Events those `recovered: false` skipped, by offset (within one epoch).
    pub skipped: u64,
    /// `recovered: false` with a new epoch (the history was lost): how many it skipped is not
    /// known.
    pub epoch_changes: u64,
    /// The publish-to-receive latency histogram, microseconds, V2-serialized and base64.
    pub latency: String,
    /// The same latency, second by second of arrival.
    pub timeline: Vec<Bucket>,
}

struct Stats {
    report: Report,
    latency: Histogram<u64>,
    timeline: Timeline,
    connected: u32,
}

/// Runs a worker until `finish` arrives on stdin.
pub fn main(args: WorkerArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(args))
}

fn emit(line: &Line) {
    // stdout is the coordinator's pipe; a write error means it is gone, and so should we be.
    let text = serde_json::to_string(line).expect("lines serialize");
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
        std::process::exit(1);
    }
}

async fn run(args: WorkerArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Rc::new(args.plan.plan());
    let target = Rc::new(Target {
        kind: args.target,
        addr: args.addr.clone(),
        org: args.org.clone(),
        orgs: args.plan.orgs,
        secret: args.secret.clone(),
        publish_key: String::new(),
        idempotent: false,
    });
    let mut servers = Vec::new();
    for addr in args.addr.split(',') {
        let (tls, addr) = crate::tls::split(addr);
        if tls {
            tls_client(&args)?;
        }
        servers.push(
            tokio::net::lookup_host(addr)
                .await?
                .next()
                .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?,
        );
    }
    let down = Rc::new(RefCell::new(vec![None; servers.len()]));
    let servers = Rc::new(servers);
    let stats = Rc::new(RefCell::new(Stats {
        report: Report::default(),
        latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
        timeline: Timeline::default(),
        connected: 0,
    }));
    let gate = Rc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let args = Rc::new(args);

    let mut first_tries = Vec::new();
    for i in args.from..args.to {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        first_tries.push((i, rx));
        let conn = Conn {
            i,
            args: args.clone(),
            plan: plan.clone(),
            target: target.clone(),
            servers: servers.clone(),
            down: down.clone(),
            stats: stats.clone(),
            gate: gate.clone(),
        };
        tokio::task::spawn_local(conn.run(tx));
    }

    let progress = {
        let stats = stats.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let s = stats.borrow();
                let line = Line::Progress {
                    connected: s.connected,
                    received: s.report.received,
                    dropped: s.report.dropped,
                };
                drop(s);
                emit(&line);
            }
        })
    };

    let mut failed = Vec::new();
    let mut errors = Vec::new();
    for (i, rx) in first_tries {
        if let Err(e) = rx.await.unwrap_or_else(|_| Err("task ended".into())) {
            failed.push(i);
            if errors.len() < 5 {
                errors.push(format!("connection {i}: {e}"));
            }
        }
    }
    let connected = stats.borrow().connected;
    emit(&Line::Ready {
        connected,
        failed,
        errors,
        connect_secs: started.elapsed().as_secs_f64(),
    });

    // Wait for `finish` or the end of stdin.
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "finish" {
            break;
        }
    }
    progress.abort();
    let mut s = stats.borrow_mut();
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(&s.latency, &mut buf)
        .map_err(|e| anyhow!("serializing the histogram: {e:?}"))?;
    s.report.latency = base64::engine::general_purpose::STANDARD.encode(buf);
    s.report.timeline = s.timeline.encode()?;
    emit(&Line::Final(Box::new(std::mem::take(&mut s.report))));
    // Every connection goes with the process.
    std::process::exit(0);
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Conn {
    i: u32,
    args: Rc<WorkerArgs>,
    plan: Rc<Plan>,
    target: Rc<Target>,
    servers: Rc<Vec<SocketAddr>>,
    /// Until when each node is avoided (shared by the worker's connections).
    down: Rc<RefCell<Vec<Option<Instant>>>>,
    stats: Rc<RefCell<Stats>>,
    gate: Rc<Semaphore>,
}

/// What a connection keeps across reconnects, as a client does: the node it tries, what it
/// saw on each channel, and where to resume each from.
struct Kept {
    node: usize,
    /// Its org's name (what `--route org` hashes).
    org: String,
    subs: Vec<Chan>,
    names: Vec<String>,
    seqs: Vec<SeqTrack>,
    positions: Vec<Option<Position>>,
    /// socket.io with connection state recovery: the session's `pid` and the offset of the
    /// last event received, sent back on reconnect as the official client does.
    sio_pid: Option<String>,
    sio_offset: Option<String>,
}

impl Kept {
    /// A `subscribed` frame: a fresh subscribe starts the position there; `recovered: false`
    /// (a resume refused, or the continuity notice) is counted, with the events it skipped, and
    /// moves the position; `recovered: true` keeps it (the replay that follows moves it).
    fn subscribed(&mut self, frame: Subscribed, report: &mut Report) {
        let Some(slot) = self.names.iter().position(|n| *n == frame.channel) else {
            return;
        };
        let was = &mut self.positions[slot];
        match (frame.recovered, was.as_ref()) {
            (Some(true), Some(_)) => {}
            (Some(false), Some(old)) => {
                report.not_recovered += 1;
                if old.epoch == frame.position.epoch {
                    report.skipped += frame.position.offset.saturating_sub(old.offset);
                } else {
                    report.epoch_changes += 1;
                }
                *was = Some(frame.position);
            }
            (Some(false), None) => {
                report.not_recovered += 1;
                *was = Some(frame.position);
            }
            _ => *was = Some(frame.position),
        }
    }
}

impl Conn {
    async fn run(self, first: tokio::sync::oneshot::Sender<Result<(), String>>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        let subs = self.plan.subscriptions(self.i);
        let org = self.target.org_name(self.plan.org_of(self.i));
        let mut kept = Kept {
            node: route::first_node(self.args.route, self.i, &org, self.servers.len()),
            org,
            names: subs.iter().map(|c| self.target.chan_name(c)).collect(),
            seqs: vec![SeqTrack::default(); subs.len()],
            positions: vec![None; subs.len()],
            subs,
            sio_pid: None,
            sio_offset: None,
        };
        loop {
            let opened = {
                let _permit = self.gate.acquire().await;
                tokio::time::timeout(Duration::from_secs(30), self.open(&mut kept)).await
            };
            let opened = match opened {
                Ok(r) => r,
                Err(_) => Err(anyhow!("timed out connecting")),
            };
            match opened {
                Ok(ws) => {
                    attempt = 0;
                    {
                        let mut s = self.stats.borrow_mut();
                        s.connected += 1;
                        if first.is_none() {
                            s.report.reconnects += 1;
                        }
                    }
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                    if self.plan.is_stalled(self.i) {
                        // The slow consumer: hold the socket, never read.
                        let _held = ws;
                        std::future::pending::<()>().await;
                        return;
                    }
                    self.read(ws, &mut kept).await;
                    let mut s = self.stats.borrow_mut();
                    s.connected -= 1;
                    s.report.dropped += 1;
                    // The node went away (or dropped us): try another.
                    kept.node = route::next_node(
                        self.args.route,
                        kept.node,
                        &kept.org,
                        &self.down.borrow(),
                    );
                }
                Err(e) => {
                    // Refused, or no answer: avoid that node for a while.
                    self.down.borrow_mut()[kept.node] =
                        Some(Instant::now() + Duration::from_secs(5));
                    kept.node = route::next_node(
                        self.args.route,
                        kept.node,
                        &kept.org,
                        &self.down.borrow(),
                    );
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(format!("{e:#}")));
                        if !self.args.reconnect {
                            return;
                        }
                    }
                }
            }
            if !self.args.reconnect {
                return;
            }
            // Full jitter: uniform in [0, min(30 s, base * 2^attempt)).
            let cap = self
                .args
                .reconnect_base
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(30));
            let delay = cap.mul_f64(rand::rng().random::<f64>());
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Connects from this connection's source address to its node, authenticates and
    /// subscribes (resuming every channel it has a position on).
    async fn open(&self, kept: &mut Kept) -> Result<Ws> {
        let subs = &kept.subs;
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            2 + (self.i % u32::from(self.args.source_addrs.max(1))) as u8,
        );
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(source), 0))
            .with_context(|| format!("binding {source}"))?;
        // When the run ends and this process exits, reset rather than close: a closing client
        // keeps each of its ports in TIME_WAIT for a minute, and with tens of thousands of them
        // on the source addresses the next run's binds slow down by up to 10x (connects per
        // second measured the kernel's port search, not the server).
        socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO))?;
        let stream = socket
            .connect(self.servers[kept.node])
            .await
            .context("connecting")?;
        stream.set_nodelay(true)?;
        let node = self.servers[kept.node].to_string();
        let tls = self
            .args
            .addr
            .split(',')
            .nth(kept.node)
            .is_some_and(|a| crate::tls::split(a).0);
        let mut url = self.target.ws_url(&node, subs);
        if tls {
            url = url.replacen("ws://", "wss://", 1);
        }
        let mut request = url.into_client_request()?;
        let token = self.target.token(self.i);
        if self.target.kind == Kind::Cortex {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let (mut ws, _) = if tls {
            let connector = crate::tls::connector(&tls_client(&self.args)?);
            tokio_tungstenite::client_async_tls_with_config(
                request,
                stream,
                Some(config),
                Some(connector),
            )
            .await
            .context("WebSocket handshake over TLS")?
        } else {
            tokio_tungstenite::client_async_with_config(
                request,
                MaybeTlsStream::Plain(stream),
                Some(config),
            )
            .await
            .context("WebSocket handshake")?
        };
        match self.target.kind {
            Kind::Cortex => {
                expect(&mut ws, |t| t.contains(r#""type":"connected""#)).await?;
                // All subscribes in one write, as a client (re)subscribing to several
                // channels sends them.
                let resuming = kept.positions.iter().any(Option::is_some);
                for frame in target::cortex_subscribes(&kept.names, &kept.positions) {
                    ws.feed(Message::text(frame)).await?;
                }
                ws.flush().await?;
                let mut acked = 0;
                let mut recovered = 0;
                while acked < kept.subs.len() {
                    let text = next_text(&mut ws).await?;
                    if let Some(frame) = Subscribed::parse(&text) {
                        acked += 1;
                        recovered += usize::from(frame.recovered == Some(true));
                        kept.subscribed(frame, &mut self.stats.borrow_mut().report);
                    } else if text.contains(r#""type":"error""#) {
                        bail!("subscribe refused: {text}");
                    } else {
                        // A replayed event may come before the last reply.
                        self.arrival(&text, kept);
                    }
                }
                if resuming && recovered == kept.subs.len() {
                    self.stats.borrow_mut().report.resumed += 1;
                }
            }
            Kind::Nchan => {}
            Kind::Socketio => {
                expect(&mut ws, |t| t.starts_with('0')).await?;
                let session = kept.sio_pid.as_deref().zip(kept.sio_offset.as_deref());
                let resuming = session.is_some();
                ws.send(Message::text(target::socketio_connect(&token, session)))
                    .await?;
                // A recovered session's missed events may come before the CONNECT reply.
                let reply = loop {
                    let text = next_text(&mut ws).await?;
                    if text.starts_with("40") {
                        break text;
                    }
                    if !text.starts_with("42") {
                        bail!("socket.io refused the connection: {text}");
                    }
                    self.arrival(&text, kept);
                };
                let pid = target::socketio_pid(&reply);
                if resuming {
                    let mut s = self.stats.borrow_mut();
                    if pid.is_some() && pid == kept.sio_pid {
                        s.report.resumed += 1;
                    } else {
                        // A new session: what was missed is gone, and how much is not said.
                        s.report.not_recovered += 1;
                        s.report.epoch_changes += 1;
                    }
                }
                if pid != kept.sio_pid {
                    kept.sio_offset = None;
                }
                kept.sio_pid = pid;
                ws.send(Message::text(target::socketio_subscribe(&kept.names)))
                    .await?;
                loop {
                    let text = next_text(&mut ws).await?;
                    if text.starts_with("430") {
                        break;
                    }
                    if !text.starts_with("42") {
                        bail!("unexpected frame: {text}");
                    }
                    self.arrival(&text, kept);
                }
            }
        }
        Ok(ws)
    }

    /// Reads events until the connection ends.
    async fn read(&self, mut ws: Ws, kept: &mut Kept) {
        while let Some(msg) = ws.next().await {
            let text = match msg {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(_)) => {
                    // Answer the close as a real client does (tungstenite queued the reply; it
                    // goes out while the stream is read to its end), so a draining server is
                    // not left waiting for it.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    break;
                }
                Err(_) => break,
                Ok(_) => continue,
            };
            if self.target.kind == Kind::Socketio && text.as_str() == "2" {
                if ws.send(Message::text("3")).await.is_err() {
                    break;
                }
                continue;
            }
            self.arrival(text.as_str(), kept);
        }
    }

    /// One frame read while subscribed: an event (counted, its latency recorded, its position
    /// kept) or the server's continuity notice.
    fn arrival(&self, text: &str, kept: &mut Kept) {
        let now = now_ns();
        let mut s = self.stats.borrow_mut();
        let Some(marker) = Marker::find(text) else {
            match Subscribed::parse(text) {
                Some(notice) if self.target.kind == Kind::Cortex => {
                    kept.subscribed(notice, &mut s.report)
                }
                _ => s.report.unparsed += 1,
            }
            return;
        };
        let r = &mut s.report;
        r.received += 1;
        r.bytes += text.len() as u64;
        let Some(slot) = kept.subs.iter().position(|c| *c == marker.chan) else {
            r.misrouted += 1;
            return;
        };
        if self.target.kind == Kind::Cortex
            && let Some(p) = target::cortex_event_position(text)
        {
            kept.positions[slot] = Some(p);
        }
        if kept.sio_pid.is_some()
            && let Some(offset) = target::socketio_offset(text)
        {
            kept.sio_offset = Some(offset.to_owned());
        }
        match kept.seqs[slot].see(marker.seq) {
            Seen::New => r.unique += 1,
            Seen::Late => {
                r.unique += 1;
                r.out_of_order += 1;
            }
            Seen::Duplicate => r.duplicates += 1,
        }
        let micros = now.saturating_sub(marker.sent_ns) / 1000;
        s.latency.saturating_record(micros.max(1));
        s.timeline.record(now, micros);
    }
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                if t.as_str() == "2" {
                    // socket.io's ping, possibly before the connection is fully set up.
                    ws.send(Message::text("3")).await?;
                    continue;
                }
                return Ok(t.as_str().to_owned());
            }
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

async fn expect(ws: &mut Ws, want: impl Fn(&str) -> bool) -> Result<()> {
    let text = next_text(ws).await?;
    if want(&text) {
        Ok(())
    } else {
        bail!("unexpected frame: {text}")
    }
}
