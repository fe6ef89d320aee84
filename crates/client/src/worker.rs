//! The connection task: the client's state machine.
//!
//! One task per client runs every connection in turn: ask the token provider, connect, read
//! `connected`, subscribe every wanted channel (with `since` where a position is known), deliver
//! events, refresh the token ahead of its expiry; when the connection ends, obey the close code
//! (CONTRACT.md section 8) and wait out the backoff. Everything it learns goes to the
//! application, in order, through one bounded channel.
//!
//! Overflow policy of that channel: when it is full the task waits for the application and
//! stops reading the socket. The server's outbound queue for the connection then fills and the
//! server closes it with 4009; the client reconnects and resumes from the last event it handed
//! over. A slow application therefore costs bounded memory on both sides and loses nothing the
//! channel history still holds (else it gets `recovered: false`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cortex_protocol::{
    ChannelId, ClientMessage, CloseCode, ErrorCode, Reconnect, Ref, ServerMessage, Since,
};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use serde::Deserialize;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::connection::{self, CLOSE_GRACE, Dial, Failure, Target, Ws, describe};
use crate::event::{ClientEvent, Disconnect, Event, Stop};
use crate::token::{TokenError, TokenFuture, TokenProvider, TokenTransport};

/// Commands the client sends in a burst; the server allows 100 a second (CONTRACT.md
/// section 9) and closes with 4008 past a few more, so a client resubscribing 128 channels
/// paces itself.
const COMMAND_BURST: f64 = 50.0;
/// Commands per second after the burst.
const COMMAND_RATE: f64 = 50.0;
/// When a subscribe was answered `rate_limited`, how long before it is sent again.
const RESYNC_AFTER: Duration = Duration::from_secs(1);

/// What the [`Client`](crate::Client) handles and the task share.
pub(crate) struct Shared {
    /// The channels the application wants, whether or not a connection is up.
    desired: Mutex<BTreeSet<ChannelId>>,
    /// Woken when `desired` changes.
    pub(crate) changed: Notify,
    /// Cancelled to stop the client (close, or every handle dropped).
    pub(crate) stop: CancellationToken,
}

impl Shared {
    pub(crate) fn new(channels: impl IntoIterator<Item = ChannelId>) -> Shared {
        Shared {
            desired: Mutex::new(channels.into_iter().collect()),
            changed: Notify::new(),
            stop: CancellationToken::new(),
        }
    }

    /// The wanted channels; never held across an await.
    pub(crate) fn desired(&self) -> MutexGuard<'_, BTreeSet<ChannelId>> {
        self.desired.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the task needs to connect.
pub(crate) struct Settings {
    pub(crate) target: Target,
    pub(crate) transport: TokenTransport,
    pub(crate) provider: Arc<dyn TokenProvider>,
    pub(crate) dial: Dial,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// The last event seen on a channel: where a resume starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    offset: u64,
    epoch: String,
}

/// What to do after an attempt failed or a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Stop(Stop),
    Retry { cause: Disconnect, at_once: bool },
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    Disconnect(Disconnect),
    Stopped(Stop),
}

/// Where a channel stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// `subscribe` sent with this ref, no reply yet: its events are not expected yet.
    Joining(u64),
    /// Subscribed: its events are delivered.
    Joined,
    /// No longer wanted; `unsubscribe` sent with this ref, or to be sent again (`None`). Its
    /// events are dropped.
    Leaving(Option<u64>),
}

/// What a command `ref` was for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    /// A subscribe; `resume` when it carried `since`.
    Subscribe {
        channel: ChannelId,
        resume: bool,
    },
    Unsubscribe(ChannelId),
    Refresh,
}

/// A command budget, so the client never trips the server's rate limit.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            tokens: COMMAND_BURST,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * COMMAND_RATE).min(COMMAND_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next command may go.
    fn ready_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / COMMAND_RATE)
    }
}

/// One live connection's state.
struct Conn {
    ws: Ws,
    wire: HashMap<ChannelId, Wire>,
    pending: HashMap<u64, Pending>,
    bucket: Bucket,
    /// The token last handed to the server.
    token: String,
    /// The current token's expiry.
    expires: Option<Expiry>,
    refresh_at: Option<Instant>,
    resync_at: Option<Instant>,
    /// Subscribes refused `unavailable` (the server's backplane is away) are sent again after
    /// this backoff (CONTRACT.md sections 3 and 8); a subscribe that succeeds resets it.
    unavailable: Backoff,
    last_frame: Instant,
}

/// The application stopped listening, or asked to stop.
struct Gone;

/// The client's task.
pub(crate) struct Worker {
    settings: Settings,
    shared: Arc<Shared>,
    tx: mpsc::Sender<ClientEvent>,
    rng: Box<dyn RngCore + Send + Sync>,
    backoff: Backoff,
    positions: HashMap<ChannelId, Position>,
    /// Channels whose resume is given up: the next subscribe goes without `since` and is
    /// reported as not recovered (see [`Worker::give_up_resumes`]).
    abandoned: HashSet<ChannelId>,
    next_ref: u64,
    /// Attempts that failed since the last connection was established.
    failed_attempts: u32,
    /// Attempts in a row refused as expired before `connected`.
    expired_on_arrival: u32,
}

impl Worker {
    pub(crate) fn new(
        settings: Settings,
        shared: Arc<Shared>,
        tx: mpsc::Sender<ClientEvent>,
        rng: Box<dyn RngCore + Send + Sync>,
        backoff: Backoff,
    ) -> Worker {
        Worker {
            settings,
            shared,
            tx,
            rng,
            backoff,
            positions: HashMap::new(),
            abandoned: HashSet::new(),
            next_ref: 0,
            failed_attempts: 0,
            expired_on_arrival: 0,
        }
    }

    /// Runs connections until the client stops; the last event is [`ClientEvent::Stopped`].
    pub(crate) async fn run(mut self) {
        let stop = loop {
            match self.attempt().await {
                Next::Stop(stop) => break stop,
                Next::Retry { cause, at_once } => {
                    self.failed_attempts = self.failed_attempts.saturating_add(1);
                    let delay = if at_once {
                        Duration::ZERO
                    } else {
                        self.backoff.next_delay(&mut *self.rng)
                    };
                    tracing::debug!(%cause, ?delay, attempt = self.failed_attempts, "reconnecting");
                    let ev = ClientEvent::Reconnecting {
                        cause,
                        attempt: self.failed_attempts,
                        delay,
                    };
                    if self.emit(ev).await.is_err() {
                        break Stop::Closed;
                    }
                    tokio::select! {
                        biased;
                        _ = self.shared.stop.cancelled() => break Stop::Closed,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        tracing::debug!(%stop, "client stopped");
        if stop == Stop::Closed {
            // The application asked; it may not be reading any more.
            let _ = self.tx.try_send(ClientEvent::Stopped(stop));
        } else {
            let _ = self.emit(ClientEvent::Stopped(stop)).await;
        }
    }

    /// One connection attempt and, when it succeeds, the connection's whole life.
    async fn attempt(&mut self) -> Next {
        let token = tokio::select! {
            biased;
            _ = self.shared.stop.cancelled() => return Next::Stop(Stop::Closed),
            t = self.settings.provider.token() => t,
        };
        let token = match token {
            Ok(t) => t,
            Err(TokenError::Denied(why)) => return Next::Stop(Stop::NoToken(why)),
            Err(TokenError::Failed(why)) => {
                return Next::Retry {
                    cause: Disconnect::Token(why),
                    at_once: false,
                };
            }
        };
        let s = &self.settings;
        let open = connection::open(&s.dial, &s.target, s.transport, &token);
        let opened = tokio::select! {
            biased;
            _ = self.shared.stop.cancelled() => return Next::Stop(Stop::Closed),
            r = tokio::time::timeout(s.handshake_timeout, open) => r,
        };
        let (mut ws, connected) = match opened {
            Err(_) => {
                return Next::Retry {
                    cause: Disconnect::Timeout,
                    at_once: false,
                };
            }
            Ok(Err(failure)) => return self.failed(failure),
            Ok(Ok(c)) => c,
        };
        self.failed_attempts = 0;
        self.expired_on_arrival = 0;
        let up = Instant::now();
        tracing::debug!(connection = %connected.connection_id, "connected");
        let expires = unix_seconds(&connected.expires_at).map(Expiry::new);
        if self.emit(ClientEvent::Connected(connected)).await.is_err() {
            close_normally(&mut ws).await;
            return Next::Stop(Stop::Closed);
        }
        let mut conn = Conn {
            ws,
            wire: HashMap::new(),
            pending: HashMap::new(),
            bucket: Bucket::new(),
            token,
            expires,
            refresh_at: expires.as_ref().map(Expiry::refresh_at),
            resync_at: None,
            unavailable: {
                let mut b = self.backoff.clone();
                b.reset();
                b
            },
            last_frame: Instant::now(),
        };
        let end = self.serve(&mut conn).await;
        self.backoff.connection_ended(up.elapsed());
        if let End::Disconnect(Disconnect::Closed { code, .. }) = &end
            && *code == CloseCode::SlowConsumer.code()
        {
            self.give_up_resumes(&conn);
        }
        match end {
            End::Stopped(stop) => {
                close_normally(&mut conn.ws).await;
                Next::Stop(stop)
            }
            End::Disconnect(cause) => self.after(cause, true),
        }
    }

    /// A 4009 before a resume's `subscribed` reply means the replay alone overflowed the
    /// server's outbound queue (the server drops the reply with the queue): resuming again
    /// would end the same way, forever. Those channels subscribe afresh next time and are
    /// reported as not recovered.
    fn give_up_resumes(&mut self, conn: &Conn) {
        for (r, pending) in &conn.pending {
            if let Pending::Subscribe {
                channel,
                resume: true,
            } = pending
                && conn.wire.get(channel) == Some(&Wire::Joining(*r))
            {
                tracing::debug!(%channel, "the resume overflowed the server's queue; giving it up");
                self.positions.remove(channel);
                self.abandoned.insert(channel.clone());
            }
        }
    }

    /// What a failed attempt means.
    fn failed(&mut self, failure: Failure) -> Next {
        match failure {
            Failure::Refused { status: 401, error } => {
                let expired = error.as_deref() == Some("token_expired");
                let cause = Disconnect::Refused { status: 401, error };
                if expired {
                    self.expired(cause, false)
                } else {
                    Next::Stop(Stop::Unauthorized)
                }
            }
            Failure::Refused { status, error } => Next::Retry {
                cause: Disconnect::Refused { status, error },
                at_once: false,
            },
            Failure::Closed { code, reason } => {
                self.after(Disconnect::Closed { code, reason }, false)
            }
            Failure::Lost(why) => Next::Retry {
                cause: Disconnect::Lost(why),
                at_once: false,
            },
            Failure::BadToken => Next::Stop(Stop::Unauthorized),
        }
    }

    /// The close code's policy (CONTRACT.md section 8); anything but a close frame backs off.
    fn after(&mut self, cause: Disconnect, established: bool) -> Next {
        let policy = match &cause {
            Disconnect::Closed { code, .. } => {
                CloseCode::from_code(*code).map(CloseCode::reconnect)
            }
            _ => None,
        };
        match policy {
            Some(Reconnect::Never) => Next::Stop(Stop::ServerClosed),
            Some(Reconnect::StopAndAskForToken) => Next::Stop(Stop::Unauthorized),
            Some(Reconnect::AfterNewToken) => self.expired(cause, established),
            Some(Reconnect::WithBackoff) | None => Next::Retry {
                cause,
                at_once: false,
            },
        }
    }

    /// The token expired: ask the provider for a new one at once (the next attempt does). A
    /// provider whose tokens are expired on arrival twice in a row has none to give: stop.
    fn expired(&mut self, cause: Disconnect, established: bool) -> Next {
        if !established {
            self.expired_on_arrival += 1;
            if self.expired_on_arrival >= 2 {
                return Next::Stop(Stop::TokenExpired);
            }
        }
        Next::Retry {
            cause,
            at_once: true,
        }
    }

    /// Hands an event to the application, waiting while its channel is full.
    async fn emit(&self, ev: ClientEvent) -> Result<(), Gone> {
        tokio::select! {
            biased;
            _ = self.shared.stop.cancelled() => Err(Gone),
            sent = self.tx.send(ev) => sent.map_err(|_| Gone),
        }
    }

    /// A live connection, until it ends.
    async fn serve(&mut self, conn: &mut Conn) -> End {
        enum Step {
            Stop,
            Sync,
            StartRefresh,
            Token(Result<String, TokenError>),
            Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
            Idle,
        }
        if let Err(end) = self.sync(conn).await {
            return end;
        }
        let mut refreshing: Option<TokenFuture> = None;
        loop {
            let idle_at = conn.last_frame + self.settings.idle_timeout;
            let step = tokio::select! {
                biased;
                _ = self.shared.stop.cancelled() => Step::Stop,
                _ = self.shared.changed.notified() => Step::Sync,
                _ = at(conn.resync_at) => Step::Sync,
                _ = at(conn.refresh_at), if refreshing.is_none() => Step::StartRefresh,
                t = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => Step::Token(t),
                frame = conn.ws.next() => Step::Frame(frame),
                _ = sleep_until(idle_at) => Step::Idle,
            };
            let done = match step {
                Step::Stop => Err(End::Stopped(Stop::Closed)),
                Step::Sync => self.sync(conn).await,
                Step::StartRefresh => {
                    conn.refresh_at = None;
                    refreshing = Some(self.settings.provider.token());
                    Ok(())
                }
                Step::Token(t) => {
                    refreshing = None;
                    self.refresh(conn, t).await
                }
                Step::Frame(frame) => {
                    conn.last_frame = Instant::now();
                    self.frame(conn, frame).await
                }
                Step::Idle => Err(End::Disconnect(Disconnect::Timeout)),
            };
            if let Err(end) = done {
                return end;
            }
        }
    }

    /// One frame from the server.
    async fn frame(
        &mut self,
        conn: &mut Conn,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), End> {
        match frame {
            Some(Ok(Message::Text(text))) => self.text(conn, &text).await,
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame.map_or((1005, String::new()), |f| {
                    (u16::from(f.code), f.reason.as_str().to_owned())
                });
                // Answer the close so the server's side ends cleanly.
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.ws.close(None)).await;
                Err(End::Disconnect(Disconnect::Closed { code, reason }))
            }
            // Pings are answered by tungstenite; binary frames are not part of the protocol.
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(End::Disconnect(Disconnect::Lost(describe(&e)))),
            None => Err(End::Disconnect(Disconnect::Lost(
                "the connection ended without a close frame".to_owned(),
            ))),
        }
    }

    /// One text frame: a reply or an event.
    async fn text(&mut self, conn: &mut Conn, text: &str) -> Result<(), End> {
        #[derive(Deserialize)]
        struct Tag<'a> {
            #[serde(rename = "type", borrow)]
            ty: std::borrow::Cow<'a, str>,
        }
        let Ok(tag) = serde_json::from_str::<Tag<'_>>(text) else {
            tracing::debug!("ignoring a frame that is not a JSON object with a type");
            return Ok(());
        };
        let reply = matches!(
            tag.ty.as_ref(),
            "connected" | "subscribed" | "unsubscribed" | "refreshed" | "pong" | "error"
        );
        if !reply {
            return self.event(conn, text).await;
        }
        match serde_json::from_str::<ServerMessage>(text) {
            Ok(msg) => self.reply(conn, msg).await,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring an unreadable reply");
                Ok(())
            }
        }
    }

    /// An event: delivered once, only on a joined channel, never at or below the last offset
    /// seen in the same epoch.
    async fn event(&mut self, conn: &mut Conn, text: &str) -> Result<(), End> {
        let Some(event) = Event::parse(text) else {
            tracing::debug!("ignoring an unreadable event");
            return Ok(());
        };
        if conn.wire.get(&event.channel) != Some(&Wire::Joined) {
            return Ok(());
        }
        if let Some(p) = self.positions.get(&event.channel)
            && p.epoch == event.epoch
            && event.offset <= p.offset
        {
            tracing::debug!(channel = %event.channel, offset = event.offset, "dropping a duplicate");
            return Ok(());
        }
        self.positions.insert(
            event.channel.clone(),
            Position {
                offset: event.offset,
                epoch: event.epoch.clone(),
            },
        );
        self.emit(ClientEvent::Event(event)).await.map_err(stopped)
    }

    /// The server's continuity notice (CONTRACT.md section 6): an unsolicited `subscribed` with
    /// `recovered: false` on a joined channel. Its missed events are gone; the position moves
    /// to the notice's, and the application hears it like a resume that did not recover.
    async fn notice(
        &mut self,
        conn: &mut Conn,
        channel_id: &str,
        recovered: Option<bool>,
        offset: u64,
        epoch: String,
    ) -> Result<(), End> {
        let Ok(channel) = ChannelId::parse(channel_id) else {
            return Ok(());
        };
        if recovered != Some(false) || conn.wire.get(&channel) != Some(&Wire::Joined) {
            return Ok(());
        }
        let position = Position {
            offset,
            epoch: epoch.clone(),
        };
        self.positions.insert(channel.clone(), position);
        let ev = ClientEvent::Resubscribed {
            channel,
            recovered: false,
            offset,
            epoch,
        };
        self.emit(ev).await.map_err(stopped)
    }

    /// A reply to one of our commands, or a server-initiated `unsubscribed`.
    async fn reply(&mut self, conn: &mut Conn, msg: ServerMessage) -> Result<(), End> {
        match msg {
            ServerMessage::Subscribed {
                channel_id,
                offset,
                epoch,
                recovered,
                r#ref,
            } => {
                let Some(r) = ref_num(r#ref.as_ref()) else {
                    return self
                        .notice(conn, &channel_id, recovered, offset, epoch)
                        .await;
                };
                let Some(Pending::Subscribe { channel, .. }) = conn.pending.remove(&r) else {
                    return Ok(());
                };
                if channel.as_str() != channel_id
                    || conn.wire.get(&channel) != Some(&Wire::Joining(r))
                {
                    return Ok(());
                }
                conn.wire.insert(channel.clone(), Wire::Joined);
                conn.unavailable.reset();
                if recovered != Some(true) {
                    // Fresh, or the gap is lost: events after the reply's offset follow.
                    let position = Position {
                        offset,
                        epoch: epoch.clone(),
                    };
                    self.positions.insert(channel.clone(), position);
                }
                // A resume given up: the application had a position, and the gap is lost.
                let recovered = match recovered {
                    None if self.abandoned.remove(&channel) => Some(false),
                    r => r,
                };
                let ev = match recovered {
                    None => ClientEvent::Subscribed {
                        channel,
                        offset,
                        epoch,
                    },
                    Some(recovered) => ClientEvent::Resubscribed {
                        channel,
                        recovered,
                        offset,
                        epoch,
                    },
                };
                self.emit(ev).await.map_err(stopped)
            }
            ServerMessage::Unsubscribed { channel_id, r#ref } => {
                if let Some(r) = ref_num(r#ref.as_ref()) {
                    if let Some(Pending::Unsubscribe(channel)) = conn.pending.remove(&r)
                        && conn.wire.get(&channel) == Some(&Wire::Leaving(Some(r)))
                    {
                        conn.wire.remove(&channel);
                    }
                    return Ok(());
                }
                // The server ended it (a refreshed token no longer allows it).
                let Ok(channel) = ChannelId::parse(&channel_id) else {
                    return Ok(());
                };
                conn.wire.remove(&channel);
                self.positions.remove(&channel);
                self.shared.desired().remove(&channel);
                self.emit(ClientEvent::Unsubscribed { channel })
                    .await
                    .map_err(stopped)
            }
            ServerMessage::Refreshed { expires_at, r#ref } => {
                if let Some(r) = ref_num(r#ref.as_ref()) {
                    conn.pending.remove(&r);
                }
                let new = unix_seconds(&expires_at);
                // A token that does not reach further than the last one cannot be refreshed
                // ahead of its expiry: wait for 4002, then reconnect with whatever comes.
                conn.refresh_at = match (new, &conn.expires) {
                    (Some(n), Some(old)) if n <= old.exp => None,
                    (Some(n), _) => Some(Expiry::new(n).refresh_at()),
                    (None, _) => None,
                };
                if let Some(n) = new {
                    conn.expires = Some(Expiry::new(n));
                }
                self.emit(ClientEvent::Refreshed { expires_at })
                    .await
                    .map_err(stopped)
            }
            ServerMessage::Error {
                code,
                message,
                channel_id: _,
                r#ref,
            } => {
                let pending = ref_num(r#ref.as_ref()).and_then(|r| conn.pending.remove(&r));
                match pending {
                    Some(Pending::Subscribe { channel, .. }) if code == ErrorCode::RateLimited => {
                        conn.wire.remove(&channel);
                        conn.resync_at = Some(Instant::now() + RESYNC_AFTER);
                        Ok(())
                    }
                    // Nothing changed on the server: still wanted, sent again after a backoff
                    // (with its position, so a resume stays a resume).
                    Some(Pending::Subscribe { channel, .. }) if code == ErrorCode::Unavailable => {
                        conn.wire.remove(&channel);
                        let delay = conn.unavailable.next_delay(&mut *self.rng);
                        let at = Instant::now() + delay;
                        conn.resync_at = Some(conn.resync_at.map_or(at, |t| t.min(at)));
                        tracing::debug!(%channel, ?delay, "subscribe refused: unavailable; again later");
                        Ok(())
                    }
                    Some(Pending::Unsubscribe(channel)) if code == ErrorCode::RateLimited => {
                        conn.wire.insert(channel, Wire::Leaving(None));
                        conn.resync_at = Some(Instant::now() + RESYNC_AFTER);
                        Ok(())
                    }
                    Some(Pending::Subscribe { channel, .. }) => {
                        conn.wire.remove(&channel);
                        self.positions.remove(&channel);
                        self.abandoned.remove(&channel);
                        self.shared.desired().remove(&channel);
                        let ev = ClientEvent::SubscribeFailed {
                            channel,
                            code,
                            message,
                        };
                        self.emit(ev).await.map_err(stopped)
                    }
                    other => {
                        if other == Some(Pending::Refresh) {
                            conn.refresh_at = conn.expires.as_ref().and_then(Expiry::retry_at);
                        }
                        self.emit(ClientEvent::ServerError { code, message })
                            .await
                            .map_err(stopped)
                    }
                }
            }
            ServerMessage::Connected { .. } | ServerMessage::Pong { .. } => Ok(()),
        }
    }

    /// The provider answered a refresh: send the new token on the live connection.
    async fn refresh(
        &mut self,
        conn: &mut Conn,
        token: Result<String, TokenError>,
    ) -> Result<(), End> {
        match token {
            Ok(token) if token == conn.token => {
                tracing::debug!("the token provider has no newer token; waiting for expiry");
                Ok(())
            }
            Ok(token) => {
                let r = self.next_ref();
                conn.pending.insert(r, Pending::Refresh);
                conn.token.clone_from(&token);
                let msg = ClientMessage::Refresh {
                    token,
                    r#ref: Some(Ref::Num(r.into())),
                };
                send(&mut conn.ws, &[msg]).await
            }
            Err(TokenError::Denied(why)) => Err(End::Stopped(Stop::NoToken(why))),
            Err(TokenError::Failed(why)) => {
                tracing::warn!(%why, "token refresh failed; retrying");
                conn.refresh_at = conn.expires.as_ref().and_then(Expiry::retry_at);
                Ok(())
            }
        }
    }

    /// Brings the server's subscriptions in line with the wanted ones, as fast as the command
    /// budget allows.
    async fn sync(&mut self, conn: &mut Conn) -> Result<(), End> {
        conn.resync_at = None;
        let desired = self.shared.desired().clone();
        self.positions.retain(|c, _| desired.contains(c));
        self.abandoned.retain(|c| desired.contains(c));
        let mut out = Vec::new();
        let leaving: Vec<ChannelId> = conn
            .wire
            .iter()
            .filter(|(c, w)| !desired.contains(*c) && !matches!(w, Wire::Leaving(Some(_))))
            .map(|(c, _)| c.clone())
            .collect();
        let joining = desired
            .iter()
            .filter(|c| !matches!(conn.wire.get(*c), Some(Wire::Joining(_) | Wire::Joined)));
        let joining: Vec<ChannelId> = joining.cloned().collect();
        for (channel, join) in leaving
            .into_iter()
            .map(|c| (c, false))
            .chain(joining.into_iter().map(|c| (c, true)))
        {
            if !conn.bucket.take() {
                conn.resync_at = Some(conn.bucket.ready_at());
                break;
            }
            let r = self.next_ref();
            let r#ref = Some(Ref::Num(r.into()));
            let channel_id = channel.to_string();
            if join {
                let since = self.positions.get(&channel).map(|p| Since {
                    offset: p.offset,
                    epoch: p.epoch.clone(),
                });
                conn.wire.insert(channel.clone(), Wire::Joining(r));
                let resume = since.is_some();
                conn.pending
                    .insert(r, Pending::Subscribe { channel, resume });
                out.push(ClientMessage::Subscribe {
                    channel_id,
                    since,
                    r#ref,
                });
            } else {
                conn.wire.insert(channel.clone(), Wire::Leaving(Some(r)));
                conn.pending.insert(r, Pending::Unsubscribe(channel));
                out.push(ClientMessage::Unsubscribe { channel_id, r#ref });
            }
        }
        send(&mut conn.ws, &out).await
    }

    fn next_ref(&mut self) -> u64 {
        self.next_ref += 1;
        self.next_ref
    }
}

/// The application is gone or asked to stop.
fn stopped(_: Gone) -> End {
    End::Stopped(Stop::Closed)
}

/// Writes commands and flushes once.
async fn send(ws: &mut Ws, msgs: &[ClientMessage]) -> Result<(), End> {
    if msgs.is_empty() {
        return Ok(());
    }
    let lost =
        |e: tokio_tungstenite::tungstenite::Error| End::Disconnect(Disconnect::Lost(describe(&e)));
    for m in msgs {
        let text = serde_json::to_string(m).expect("commands serialize");
        ws.feed(Message::text(text)).await.map_err(lost)?;
    }
    ws.flush().await.map_err(lost)
}

/// Closes with 1000 and waits, briefly, for the server's answer.
async fn close_normally(ws: &mut Ws) {
    let frame = CloseFrame {
        code: WsCloseCode::Normal,
        reason: "client closed".into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// Sleeps until `t`, or forever.
async fn at(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn ref_num(r: Option<&Ref>) -> Option<u64> {
    match r? {
        Ref::Num(n) => n.as_u64(),
        Ref::Str(_) => None,
    }
}

/// An RFC 3339 time as unix seconds.
fn unix_seconds(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// A token's expiry: `exp` as sent, and the same moment on tokio's clock (read off the wall
/// clock once, so timers follow tokio's clock from then on, paused in tests).
#[derive(Debug, Clone, Copy)]
struct Expiry {
    exp: i64,
    at: Instant,
}

impl Expiry {
    fn new(exp: i64) -> Expiry {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(u64::try_from(exp).unwrap_or(0)).saturating_sub(now);
        Expiry {
            exp,
            at: Instant::now() + left,
        }
    }

    fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// When to refresh ([`refresh_delay`]).
    fn refresh_at(&self) -> Instant {
        Instant::now() + refresh_delay(self.left())
    }

    /// After a failed refresh: try again halfway to the expiry, while that is worth it.
    fn retry_at(&self) -> Option<Instant> {
        let left = self.left();
        (left > Duration::from_secs(2)).then(|| Instant::now() + left / 2)
    }
}

/// When to refresh a token with `remaining` lifetime: 60 s before expiry or at 80 % of the
/// lifetime, whichever is earlier, but not before a quarter of it (so a short-lived token is
/// not refreshed in a tight loop).
pub(crate) fn refresh_delay(remaining: Duration) -> Duration {
    let early = remaining.saturating_sub(Duration::from_secs(60));
    let eighty = remaining.mul_f64(0.8);
    early.min(eighty).max(remaining / 4)
}

#[cfg(test)]
mod tests;
