//! One connection's state machine: authentication, commands, delivery, liveness, close.
//!
//! Generic over the byte stream, so tests drive it over an in-memory pipe with tokio's paused
//! clock as well as over real sockets. Everything for one connection runs in one task: reading
//! commands, draining the outbox into the socket, pings, the token's expiry and shutdown. A
//! session never touches another connection, and never writes to its socket while a publisher
//! holds the grant (see [`crate::ws`]).

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use cortex_protocol::event::rfc3339_secs;
use cortex_protocol::{
    ChannelId, ChannelKind, ClientMessage, CloseCode, ErrorCode, Ref, ServerMessage, Since,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::auth::{AuthError, Claims};
use crate::broker::BrokerError;
use crate::dispatch::Subscribed;
use crate::hub::{ChannelKey, Subscriber};
use crate::limits::ConnectionGuard;
use crate::metrics;
use crate::node::{Node, unix_now};
use crate::ws::frame::{CLOSE, frame_header};
use crate::ws::{Batch, Outbox, Queue, Transport};

/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The same for a slow consumer's 4009, which goes out after the bytes already in flight (the
/// kernel's buffers, a frame the writer started): the client reads them first, once it reads
/// again. Its queue and its connection's slot are freed before this wait, which holds only the
/// socket and the writer's last frames. Past it the socket is dropped; the client then sees the
/// end of the stream without the close frame, which it could not have read anyway.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(30);
/// How many queued messages (replies, events) a session lets wait while it reads on.
const READ_AHEAD: usize = 32;
/// How long, once our close frame is out, the client's remaining bytes and close are awaited.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// The same after a frame over the limit: the rest of that frame (up to the client's whole
/// message, megabytes from a slow client) must be read and discarded before the socket is
/// dropped, or the reset that unread bytes cause can destroy our close frame.
const OVERSIZE_DRAIN: Duration = Duration::from_secs(10);
/// `bad_request`s a connection may make in a burst before it is closed with 1008.
const BAD_COMMAND_BURST: f32 = 10.0;
/// How fast that allowance comes back, per second.
const BAD_COMMAND_REFILL: f32 = 1.0;
/// Commands over the rate a connection may send (each answered `rate_limited`) before it is
/// closed with 4008; the allowance comes back at one per second.
const RATE_STRIKES: f32 = 10.0;

/// Why the session closes a connection. [`Closing::close_code`] is the one mapping to close
/// codes (CONTRACT.md section 5), and [`Closing::reason`] the one to reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// The client's stream ended or failed before it authenticated.
    ClientLeft,
    /// The node is draining.
    Draining,
    /// Nothing was heard from the client (or no byte taken) for the idle timeout.
    IdleTimeout,
    /// A client frame over the size limit.
    TooBig,
    /// The first frame was not an `auth` with a valid token.
    Unauthorized,
    /// The token expired (at `auth`, or later without a refresh).
    TokenExpired,
    /// No `auth` frame within the auth timeout.
    AuthTimeout,
    /// Commands over the rate, after the strikes.
    RateLimited,
    /// Too many bad commands in a burst.
    BadCommands,
    /// The outbox overflowed: the client does not read fast enough.
    SlowConsumer,
    /// The user, org or node has its maximum of connections.
    TooManyConnections,
    /// An operator closed it (the admin API's disconnect), with this code.
    Kicked(CloseCode),
}

impl Closing {
    /// The close code sent.
    pub(crate) fn close_code(self) -> CloseCode {
        match self {
            Closing::ClientLeft => CloseCode::Normal,
            Closing::Draining => CloseCode::GoingAway,
            Closing::IdleTimeout => CloseCode::GoingAway,
            Closing::TooBig => CloseCode::TooBig,
            Closing::Unauthorized => CloseCode::Unauthorized,
            Closing::TokenExpired => CloseCode::TokenExpired,
            Closing::AuthTimeout => CloseCode::AuthTimeout,
            Closing::RateLimited => CloseCode::RateLimited,
            Closing::BadCommands => CloseCode::Policy,
            Closing::SlowConsumer => CloseCode::SlowConsumer,
            Closing::TooManyConnections => CloseCode::TooManyConnections,
            Closing::Kicked(code) => code,
        }
    }

    /// The close frame's reason.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Closing::IdleTimeout => "idle timeout",
            Closing::Kicked(_) => "disconnected by an operator",
            other => other.close_code().reason(),
        }
    }
}

/// Why a session ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// We closed it with this code.
    Closed(CloseCode),
    /// The client closed it with this code (1005 when its close frame carried none).
    ClientClosed(u16),
    /// The socket failed or ended without a close frame.
    Gone,
}

/// A connection's three token buckets (commands, rate strikes, bad commands), refilled
/// together from one clock reading: capacities and rates are the node's, not stored per
/// connection (memory per connection).
#[derive(Debug)]
struct Allowance {
    at: Instant,
    commands: f32,
    strikes: f32,
    bad_commands: f32,
}

/// Which of a connection's buckets to take from.
#[derive(Debug, Clone, Copy)]
enum Take {
    Command,
    Strike,
    BadCommand,
}

impl Allowance {
    /// Full buckets; `rate` is commands per second, which is also the command burst.
    fn new(rate: f32) -> Allowance {
        Allowance {
            at: Instant::now(),
            commands: rate,
            strikes: RATE_STRIKES,
            bad_commands: BAD_COMMAND_BURST,
        }
    }

    /// Takes a token from one bucket, if it has one, after refilling all three.
    fn take(&mut self, which: Take, rate: f32) -> bool {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f32();
        self.at = now;
        self.commands = (self.commands + dt * rate).min(rate);
        self.strikes = (self.strikes + dt).min(RATE_STRIKES);
        self.bad_commands = (self.bad_commands + dt * BAD_COMMAND_REFILL).min(BAD_COMMAND_BURST);
        let bucket = match which {
            Take::Command => &mut self.commands,
            Take::Strike => &mut self.strikes,
            Take::BadCommand => &mut self.bad_commands,
        };
        if *bucket >= 1.0 {
            *bucket -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A connection whose token came with the upgrade and was verified: its claims and its slot.
/// Boxed, so that the task waiting for the upgrade holds a pointer rather than the claims.
pub type Verified = Box<(Claims, ConnectionGuard)>;

/// Runs a connection whose token, if it came with the upgrade, was verified already
/// (`verified`). Returns how it ended.
///
/// Not an `async fn`: an `async fn` keeps a second copy of its arguments (the WebSocket among
/// them) for the whole connection, and this future is most of an idle connection's memory.
/// For the same reason the session lives in a variable the future captures, used in place.
pub fn run<S>(
    node: Arc<Node>,
    mut ws: WebSocketStream<S>,
    verified: Option<Verified>,
    via: Via,
) -> impl Future<Output = End>
where
    S: Transport,
{
    let mut session = verified.map(|v| {
        let (claims, guard) = *v;
        Session::new(node.clone(), claims, guard, via)
    });
    async move {
        if session.is_none() {
            match authenticate(&node, &mut ws, via).await {
                Ok((claims, guard)) => session = Some(Session::new(node, claims, guard, via)),
                Err(code) => {
                    metrics::refused(metrics::Refusal::AuthFrame);
                    return Box::pin(close(&mut ws, code)).await;
                }
            }
        }
        let Some(live) = session.as_mut() else {
            unreachable!("authenticated above");
        };
        metrics::connection_opened();
        let end = live.serve(&mut ws).await;
        let deferred = live.deferred_close.take();
        live.leave_all();
        let code = match end {
            End::Closed(c) => c.code(),
            End::ClientClosed(code) => code,
            End::Gone => 1006,
        };
        live.node.activity.closed(code);
        // Dropping the session frees the connection's slot (its guard) and its queue.
        drop(session);
        metrics::connection_closed(code);
        if let Some(why) = deferred {
            Box::pin(close(&mut ws, why)).await;
        }
        end
    }
}

/// Which listener a connection came in on, which says what its tokens are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The main listener: connection tokens, checked by the node's verifier.
    Main,
    /// The admin listener's `/api/ws`: the console's tail tokens only
    /// ([`crate::auth::ConsoleKey`]).
    Console,
}

impl Via {
    /// Verifies a token as this listener takes them.
    fn verify(self, node: &Node, token: &str) -> Result<Claims, AuthError> {
        match (self, &node.console) {
            (Via::Main, _) => node.verifier.verify(token, unix_now()),
            (Via::Console, Some(key)) => key.verify(token, unix_now()),
            (Via::Console, None) => Err(AuthError::Invalid("no admin key")),
        }
    }
}

/// Waits for the `auth` frame (CONTRACT.md section 2, transport 3).
async fn authenticate<S>(
    node: &Arc<Node>,
    ws: &mut WebSocketStream<S>,
    via: Via,
) -> Result<(Claims, ConnectionGuard), Closing>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + node.config.limits.auth_timeout;
    loop {
        let frame = tokio::select! {
            _ = node.shutdown.cancelled() => return Err(Closing::Draining),
            _ = sleep_until(deadline) => return Err(Closing::AuthTimeout),
            f = ws.next() => f,
        };
        let text = match frame {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => return Err(Closing::Unauthorized),
            Some(Err(WsError::Capacity(_))) => return Err(Closing::TooBig),
            Some(Err(_)) | None => return Err(Closing::ClientLeft),
        };
        let Ok(ClientMessage::Auth { token, .. }) = ClientMessage::decode(&text) else {
            return Err(Closing::Unauthorized);
        };
        let claims = via.verify(node, &token).map_err(|e| {
            if e.is_expired() {
                Closing::TokenExpired
            } else {
                Closing::Unauthorized
            }
        })?;
        let guard = node
            .connections
            .admit(&claims)
            .await
            .map_err(|_| Closing::TooManyConnections)?;
        return Ok((claims, guard));
    }
}

/// Sends a close frame (bounded in time) and reports the end.
async fn close<S>(ws: &mut WebSocketStream<S>, why: Closing) -> End
where
    S: Transport,
{
    let (code, reason) = (why.close_code(), why.reason());
    // Nothing may follow the close frame: publishers stop writing to the socket.
    ws.get_mut().detach();
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: reason.into(),
    };
    let grace = if why == Closing::SlowConsumer {
        SLOW_CLOSE_GRACE
    } else {
        CLOSE_GRACE
    };
    let started = Instant::now();
    let sent = tokio::time::timeout(grace, ws.close(Some(frame))).await;
    let drain = async {
        if sent.is_err() {
            // The client is not reading: nothing more can reach it.
            return;
        }
        if matches!(sent, Ok(Ok(()))) {
            // Wait for the client's close so the TCP connection ends cleanly.
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue,
                    // The stream ended without the client's close. After a read error (a frame
                    // over the limit) tokio-tungstenite reads nothing more, though the client
                    // may still be sending the rest of that frame: drain it below.
                    Some(Err(_)) | None => break,
                }
            }
        } else {
            // tungstenite refused the close (its state ended with a read error): no frame of
            // ours is half-written then, so write the close frame ourselves.
            let mut head = [0u8; 10];
            let h = frame_header(&mut head, CLOSE, 2 + reason.len());
            let mut raw = Vec::with_capacity(h + 2 + reason.len());
            raw.extend_from_slice(&head[..h]);
            raw.extend_from_slice(&code.code().to_be_bytes());
            raw.extend_from_slice(reason.as_bytes());
            let io = ws.get_mut();
            if io.write_all(&raw).await.is_err() || io.flush().await.is_err() {
                return;
            }
        }
        // Half-close: the client sees our close frame and then the end of the stream even if it
        // only reads once it has finished sending. Whatever it still sends is read and
        // discarded: closing a socket with unread bytes makes the kernel send a reset, and a
        // reset can destroy our close frame before the client reads it.
        let io = ws.get_mut();
        let _ = io.shutdown().await;
        let _ = tokio::io::copy(io, &mut tokio::io::sink()).await;
    };
    let limit = match why {
        Closing::TooBig => OVERSIZE_DRAIN,
        // The client reads what was in flight, then the close frame, then answers it: the
        // rest of the same bound.
        Closing::SlowConsumer => SLOW_CLOSE_GRACE
            .saturating_sub(started.elapsed())
            .max(CLOSE_DRAIN),
        _ => CLOSE_DRAIN,
    };
    let _ = tokio::time::timeout(limit, drain).await;
    End::Closed(code)
}

/// Hands `batch[*fed..]` to tungstenite frame by frame, then flushes. `fed` keeps the place
/// across polls; each frame is taken out of `batch` as it goes.
fn poll_write_batch<S>(
    ws: &mut WebSocketStream<S>,
    batch: &mut [Utf8Bytes],
    fed: &mut usize,
    cx: &mut std::task::Context<'_>,
) -> Poll<Result<(), WsError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(msg) = batch.get_mut(*fed) {
        std::task::ready!(ws.poll_ready_unpin(cx))?;
        ws.start_send_unpin(Message::Text(std::mem::take(msg)))?;
        *fed += 1;
    }
    ws.poll_flush_unpin(cx)
}

/// How a blocked write ends the session.
enum Stop {
    /// Send this close frame (bounded by the close grace).
    Close(Closing),
    /// Drop the socket as it is.
    Abandon(End),
}

impl Stop {
    async fn run<S>(self, ws: &mut WebSocketStream<S>) -> End
    where
        S: Transport,
    {
        match self {
            Stop::Close(why) => close(ws, why).await,
            Stop::Abandon(end) => end,
        }
    }
}

struct Session {
    node: Arc<Node>,
    claims: Claims,
    /// The connection's slot in the node's limits (and its id), freed when the session is
    /// dropped.
    guard: ConnectionGuard,
    outbox: Outbox,
    /// A short list (at most `max_subscriptions`): smaller than a map for the usual handful.
    subscriptions: Vec<ChannelKey>,
    expires: Instant,
    allowance: Allowance,
    /// A close to send once the session is over (see [`Session::defer_close`]).
    deferred_close: Option<Closing>,
    /// Which listener it came in on (what its refresh tokens must be).
    via: Via,
}

impl Session {
    fn new(node: Arc<Node>, claims: Claims, guard: ConnectionGuard, via: Via) -> Session {
        let limits = &node.config.limits;
        let outbox = Outbox::new(limits.outbox_bytes, limits.outbox_events);
        let expires = expiry_instant(&claims, node.verifier.leeway_secs());
        node.roster
            .join(guard.conn(), guard.org(), &claims.sub, &outbox);
        Session {
            via,
            claims,
            guard,
            outbox,
            subscriptions: Vec::new(),
            expires,
            allowance: Allowance::new(limits.commands_per_sec as f32),
            deferred_close: None,
            node,
        }
    }

    /// Takes a token from one of the connection's rate buckets.
    fn take(&mut self, which: Take) -> bool {
        let rate = self.node.config.limits.commands_per_sec as f32;
        self.allowance.take(which, rate)
    }

    fn reply(&self, msg: &ServerMessage) {
        // A full outbox means the connection is closing with 4009; the reply is moot.
        let _ = self.outbox.push(Utf8Bytes::from(msg.to_json()));
    }

    fn error(
        &self,
        code: ErrorCode,
        message: impl Into<String>,
        channel: Option<&str>,
        r#ref: Option<Ref>,
    ) {
        metrics::command_error(code);
        self.reply(&ServerMessage::Error {
            code,
            message: message.into(),
            channel_id: channel.map(str::to_owned),
            r#ref,
        });
    }

    async fn serve<S>(&mut self, ws: &mut WebSocketStream<S>) -> End
    where
        S: Transport,
    {
        let node = self.node.clone();
        let limits = &node.config.limits;
        // Deliveries to small channels may now skip this task while it is idle.
        ws.get_mut().attach(&self.outbox);
        self.reply(&ServerMessage::Connected {
            connection_id: self.node.connection_id(self.guard.conn()),
            user_id: self.claims.sub.clone(),
            org_id: self.claims.org.clone(),
            expires_at: rfc3339_secs(self.claims.exp),
        });
        let mut batch = Queue::new();
        let mut last_seen = Instant::now();
        // One timer serves both the next ping and the token's expiry. It, and the cancellation
        // waiter, live across turns of the loop: a fresh timer or waiter per delivered batch
        // would cost a registration each time.
        let mut next_ping = Instant::now() + limits.ping_interval;
        let mut timer = std::pin::pin!(sleep_until(next_ping.min(self.expires)));
        let mut cancelled = std::pin::pin!(node.shutdown.cancelled());
        // Polled once here, so that it is registered to wake the task, and after that only once
        // the drain has begun: polling it takes the token's locks, on every wake-up.
        let _ = futures_util::poll!(cancelled.as_mut());
        // The rare, large paths (closing, commands) are boxed so that every idle connection's
        // task does not carry their state.
        loop {
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| {
                    // A precondition would not do: it is read once per turn of the loop, not
                    // on the wake-up the cancellation causes.
                    if node.shutdown.is_triggered() {
                        cancelled.as_mut().poll(cx)
                    } else {
                        Poll::Pending
                    }
                }) => {
                    // Deliver what was accepted before the drain began, then say goodbye.
                    self.node.publishes_settled().await;
                    if self.outbox.try_batch(&mut batch) == Some(Batch::Ready)
                        && let Err(stop) = self.write(ws, &mut batch).await
                    {
                        return Box::pin(self.stop(ws, stop)).await;
                    }
                    return Box::pin(close(ws, Closing::Draining)).await;
                }
                _ = timer.as_mut() => {
                    let now = Instant::now();
                    if now >= self.expires {
                        return Box::pin(close(ws, Closing::TokenExpired)).await;
                    }
                    if now >= next_ping {
                        if last_seen.elapsed() >= limits.idle_timeout {
                            return Box::pin(close(ws, Closing::IdleTimeout)).await;
                        }
                        if ws.send(Message::Ping(Default::default())).await.is_err() {
                            return End::Gone;
                        }
                        next_ping = now + limits.ping_interval;
                    }
                    timer.as_mut().reset(next_ping.min(self.expires));
                }
                // Reading comes before writing: commands that arrived together (a client's
                // subscribes after it connects) are all handled before their replies go out, in
                // one write. Up to READ_AHEAD queued messages: a client that keeps sending cannot
                // hold its replies and deliveries back, nor fill its own queue.
                // Only when bytes may have arrived (see `Transport::read_wanted`).
                frame = std::future::poll_fn(|cx| {
                    if ws.get_ref().read_wanted() && self.outbox.queued() < READ_AHEAD {
                        ws.poll_next_unpin(cx)
                    } else {
                        Poll::Pending
                    }
                }) => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            if let Err(why) = Box::pin(self.command(&text)).await {
                                return Box::pin(self.close_after_replies(ws, &mut batch, why)).await;
                            }
                            if timer.deadline() != next_ping.min(self.expires) {
                                // A refresh moved the token's expiry.
                                timer.as_mut().reset(next_ping.min(self.expires));
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            if !self.take(Take::BadCommand) {
                                return Box::pin(self.close_after_replies(ws, &mut batch, Closing::BadCommands)).await;
                            }
                            self.error(ErrorCode::BadRequest, "binary frames are not supported; send JSON text", None, None);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(frame))) => {
                            // tungstenite queued the answer to the client's close: send it,
                            // and nothing after it.
                            ws.get_mut().detach();
                            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                                let _ = ws.flush().await;
                                while let Some(Ok(_)) = ws.next().await {}
                            })
                            .await;
                            return End::ClientClosed(frame.map_or(1005, |f| u16::from(f.code)));
                        }
                        None => return End::Gone,
                        Some(Err(WsError::Capacity(_))) => return Box::pin(close(ws, Closing::TooBig)).await,
                        Some(Err(_)) => return End::Gone,
                    }
                }
                b = std::future::poll_fn(|cx| self.outbox.poll_batch(cx, &mut batch)) => {
                    if b == Batch::Overflowed {
                        return self.defer_close(Closing::SlowConsumer);
                    }
                    if let Batch::Kicked(code) = b {
                        let code = CloseCode::from_code(code).unwrap_or(CloseCode::Policy);
                        return Box::pin(close(ws, Closing::Kicked(code))).await;
                    }
                    if let Err(stop) = self.write(ws, &mut batch).await {
                        return Box::pin(self.stop(ws, stop)).await;
                    }
                    // Written: give a spilled buffer back rather than hold it while idle.
                    batch = Queue::new();
                }
            }
        }
    }

    /// Ends the session now and sends the close frame once its slot and queue are freed (see
    /// [`run`]): a slow consumer's 4009 may wait for the bytes in flight.
    fn defer_close(&mut self, why: Closing) -> End {
        self.deferred_close = Some(why);
        End::Closed(why.close_code())
    }

    /// Ends the session as a blocked write says.
    async fn stop<S>(&mut self, ws: &mut WebSocketStream<S>, stop: Stop) -> End
    where
        S: Transport,
    {
        match stop {
            Stop::Close(why @ Closing::SlowConsumer) => self.defer_close(why),
            other => other.run(ws).await,
        }
    }

    /// Closes for a client's command after writing what is queued (its earlier replies, and
    /// events accepted before them), for at most the close grace.
    async fn close_after_replies<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        batch: &mut Queue,
        why: Closing,
    ) -> End
    where
        S: Transport,
    {
        if self.outbox.try_batch(batch) == Some(Batch::Ready) {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.write(ws, batch)).await;
        }
        close(ws, why).await
    }

    /// Writes a drained batch, and empties it. A write that cannot finish (the client stopped
    /// reading) is abandoned when the outbox overflows (4009), when no byte was taken for the
    /// idle timeout (the client is gone), when the token expires (4002), or at the drain
    /// deadline (1001); `Err` says how to close. Frames are whole in tungstenite's buffer, so a
    /// close frame can still follow.
    async fn write<S>(&mut self, ws: &mut WebSocketStream<S>, batch: &mut Queue) -> Result<(), Stop>
    where
        S: Transport,
    {
        // Polled by hand rather than as a future, so the task holds no write state while idle.
        let mut fed = 0;
        // Straight to the socket when the WebSocket layer is idle (no framing into its buffer,
        // which would then stay allocated, and no waker registrations): the usual batch, one
        // event at a low rate, the replies to a client's first commands, a burst. What the
        // socket does not take goes through the layer; a rest of a frame it took in part is
        // written by the flush below.
        if !batch.is_empty() {
            match ws.get_mut().write_now(batch) {
                Ok(n) => fed = n,
                Err(_) => {
                    batch.clear();
                    return Err(Stop::Abandon(End::Gone));
                }
            }
            if fed == batch.len() && !ws.get_ref().unwritten() {
                batch.clear();
                return Ok(());
            }
        }
        let first =
            std::future::poll_fn(|cx| Poll::Ready(poll_write_batch(ws, batch, &mut fed, cx))).await;
        let res = match first {
            // The common case: the socket took the whole batch at once, and no timer is needed.
            Poll::Ready(r) => r.map_err(|_| Stop::Abandon(End::Gone)),
            // The client is slow: wait with timers, on the heap so idle tasks stay small.
            Poll::Pending => Box::pin(self.write_blocked(ws, batch, fed)).await,
        };
        batch.clear();
        res
    }

    /// The rest of a write the socket did not take at once (see [`Session::write`]): `fed`
    /// frames of `batch` are in tungstenite's hands already.
    async fn write_blocked<S>(
        &self,
        ws: &mut WebSocketStream<S>,
        batch: &mut [Utf8Bytes],
        mut fed: usize,
    ) -> Result<(), Stop>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shutdown = self.node.shutdown.clone();
        let drain = self.node.config.drain_timeout;
        let drained = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        };
        let outbox = &self.outbox;
        let write = std::future::poll_fn(|cx| poll_write_batch(ws, batch, &mut fed, cx));
        let stalled = tokio::time::sleep(self.node.config.limits.idle_timeout);
        let res = tokio::select! {
            r = write => r,
            ended = std::future::poll_fn(|cx| outbox.poll_overflowed(cx)) => return Err(Stop::Close(match ended {
                None => Closing::SlowConsumer,
                // An operator's disconnect of a client that does not read: close now.
                Some(code) => Closing::Kicked(CloseCode::from_code(code).unwrap_or(CloseCode::Policy)),
            })),
            _ = stalled => return Err(Stop::Close(Closing::IdleTimeout)),
            _ = sleep_until(self.expires) => return Err(Stop::Close(Closing::TokenExpired)),
            _ = drained => return Err(Stop::Abandon(End::Closed(Closing::Draining.close_code()))),
        };
        res.map_err(|_| Stop::Abandon(End::Gone))
    }

    /// Handles one text frame. `Err` closes the connection with that code.
    async fn command(&mut self, text: &str) -> Result<(), Closing> {
        if !self.take(Take::Command) {
            if !self.take(Take::Strike) {
                return Err(Closing::RateLimited);
            }
            let r#ref = ClientMessage::decode(text)
                .ok()
                .and_then(|m| m.r#ref().cloned());
            self.error(
                ErrorCode::RateLimited,
                "too many commands; slow down",
                None,
                r#ref,
            );
            return Ok(());
        }
        let msg = match ClientMessage::decode(text) {
            Ok(m) => m,
            Err(e) => {
                metrics::command(metrics::Command::Invalid);
                if !self.take(Take::BadCommand) {
                    return Err(Closing::BadCommands);
                }
                self.error(ErrorCode::BadRequest, e.message, None, e.r#ref);
                return Ok(());
            }
        };
        metrics::command(match &msg {
            ClientMessage::Auth { .. } => metrics::Command::Auth,
            ClientMessage::Ping { .. } => metrics::Command::Ping,
            ClientMessage::Subscribe { .. } => metrics::Command::Subscribe,
            ClientMessage::Unsubscribe { .. } => metrics::Command::Unsubscribe,
            ClientMessage::Refresh { .. } => metrics::Command::Refresh,
        });
        match msg {
            ClientMessage::Auth { r#ref, .. } => {
                self.error(
                    ErrorCode::BadRequest,
                    "already authenticated; use refresh",
                    None,
                    r#ref,
                );
            }
            ClientMessage::Ping { r#ref } => self.reply(&ServerMessage::Pong { r#ref }),
            ClientMessage::Subscribe {
                channel_id,
                since,
                r#ref,
            } => {
                self.subscribe(&channel_id, since, r#ref).await;
            }
            ClientMessage::Unsubscribe { channel_id, r#ref } => {
                self.unsubscribe(&channel_id, r#ref)
            }
            ClientMessage::Refresh { token, r#ref } => self.refresh(&token, r#ref),
        }
        Ok(())
    }

    /// Whether this connection's token may see `channel` (CONTRACT.md section 4).
    fn allowed(&self, claims: &Claims, channel: &ChannelId) -> bool {
        if channel.kind() == ChannelKind::Org && channel.id() != claims.org {
            return false;
        }
        match &claims.channels {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(channel)),
        }
    }

    async fn subscribe(&mut self, raw: &str, since: Option<Since>, r#ref: Option<Ref>) {
        let channel = match ChannelId::parse(raw) {
            Ok(c) => c,
            Err(e) => {
                return self.error(ErrorCode::InvalidChannel, e.to_string(), Some(raw), r#ref);
            }
        };
        if !self.allowed(&self.claims, &channel) {
            return self.error(
                ErrorCode::Forbidden,
                "this token may not subscribe to that channel",
                Some(raw),
                r#ref,
            );
        }
        let fresh = !self.subscriptions.iter().any(|k| k.channel == channel);
        if fresh && self.subscriptions.len() >= self.node.config.limits.max_subscriptions {
            return self.error(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {} subscriptions per connection",
                    self.node.config.limits.max_subscriptions
                ),
                Some(raw),
                r#ref,
            );
        }
        let key = ChannelKey::new(self.guard.org().clone(), channel.clone());
        let sub = Subscriber {
            conn: self.guard.conn(),
            outbox: self.outbox.clone(),
        };
        let reply = |s: &Subscribed| {
            Utf8Bytes::from(
                ServerMessage::Subscribed {
                    channel_id: channel.to_string(),
                    offset: s.position.offset,
                    epoch: s.position.epoch.to_string(),
                    recovered: s.recovered,
                    r#ref: r#ref.clone(),
                }
                .to_json(),
            )
        };
        match self.node.subscribe(&key, sub, since.as_ref(), &reply).await {
            Ok(_) => {
                if fresh {
                    metrics::subscriptions(1.0);
                    self.node.activity.subscribed(1);
                    // Exactly as long as it needs to be: a connection keeps its handful of
                    // subscriptions for hours (growth would round three up to four).
                    self.subscriptions.reserve_exact(1);
                    self.subscriptions.push(key);
                }
            }
            Err(e @ BrokerError::Unavailable) => self.error(
                ErrorCode::Unavailable,
                e.to_string(),
                Some(raw),
                r#ref.clone(),
            ),
        }
    }

    fn unsubscribe(&mut self, raw: &str, r#ref: Option<Ref>) {
        let channel = match ChannelId::parse(raw) {
            Ok(c) => c,
            Err(e) => {
                return self.error(ErrorCode::InvalidChannel, e.to_string(), Some(raw), r#ref);
            }
        };
        let at = self.subscriptions.iter().position(|k| k.channel == channel);
        if let Some(key) = at.map(|i| self.subscriptions.swap_remove(i)) {
            self.node.unsubscribe(&key, self.guard.conn());
            metrics::subscriptions(-1.0);
            self.node.activity.subscribed(-1);
        }
        self.reply(&ServerMessage::Unsubscribed {
            channel_id: channel.to_string(),
            r#ref,
        });
    }

    fn refresh(&mut self, token: &str, r#ref: Option<Ref>) {
        let claims = match self.via.verify(&self.node, token) {
            Ok(c) => c,
            Err(e) => {
                let why = match e {
                    AuthError::Expired => "the new token has expired",
                    _ => "the new token is not valid",
                };
                return self.error(ErrorCode::InvalidToken, why, None, r#ref);
            }
        };
        if claims.sub != self.claims.sub || claims.org != self.claims.org {
            return self.error(
                ErrorCode::TokenMismatch,
                "a refresh token must have the same sub and org",
                None,
                r#ref,
            );
        }
        // A narrower allowlist ends the subscriptions it no longer allows.
        let dropped: Vec<ChannelId> = self
            .subscriptions
            .iter()
            .map(|k| &k.channel)
            .filter(|c| !self.allowed(&claims, c))
            .cloned()
            .collect();
        for channel in dropped {
            self.unsubscribe(channel.as_str(), None);
        }
        self.expires = expiry_instant(&claims, self.node.verifier.leeway_secs());
        self.reply(&ServerMessage::Refreshed {
            expires_at: rfc3339_secs(claims.exp),
            r#ref,
        });
        self.claims = claims;
    }

    fn leave_all(&mut self) {
        // Publishers stop writing to the socket, and the outbox lets go of it.
        self.outbox.detach();
        self.node.roster.leave(self.guard.conn());
        for key in std::mem::take(&mut self.subscriptions) {
            self.node.unsubscribe(&key, self.guard.conn());
            metrics::subscriptions(-1.0);
            self.node.activity.subscribed(-1);
        }
    }
}

/// Echoes every message (feature `autobahn`, tests only): the WebSocket layer of `/api/ws`
/// without the protocol on top, so the Autobahn TestSuite exercises exactly our settings. A
/// message over the size limit closes with 1009, as on `/api/ws`.
#[cfg(feature = "autobahn")]
pub async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: Transport,
{
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return;
                }
            }
            Ok(Message::Close(_)) => {
                // tungstenite answers the close itself; drain until the socket ends.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            Ok(_) => {}
            Err(WsError::Capacity(_)) => {
                close(&mut ws, Closing::TooBig).await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// When a token's connection must close: `exp` plus the leeway, on tokio's clock.
fn expiry_instant(claims: &Claims, leeway: u64) -> Instant {
    let left = claims
        .exp
        .saturating_add(leeway as i64)
        .saturating_sub(unix_now());
    // Far-future tokens: cap at a year so the Instant arithmetic cannot overflow.
    let left = left.clamp(0, 365 * 24 * 3600) as u64;
    Instant::now() + Duration::from_secs(left)
}

#[cfg(test)]
mod tests {
    //! The session over an in-memory pipe, on tokio's paused clock: expiry, auth timeout and
    //! idle timeout are tested without waiting for real time to pass.

    use super::*;
    use crate::auth::{KeySource, mint_hs256};
    use crate::config::Config;
    use std::io;
    use std::pin::Pin;
    use std::task::Context;
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};

    const SECRET: &str = "session-test-secret";

    fn node() -> Arc<Node> {
        let mut c = Config::default();
        c.auth.keys = vec![KeySource::Secret(SECRET.into())];
        c.publish_keys = vec!["k".into()];
        Node::new(c).expect("node")
    }

    async fn pair(
        node: &Arc<Node>,
    ) -> (WebSocketStream<DuplexStream>, tokio::task::JoinHandle<End>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(
            a,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(node.ws_config()),
        )
        .await;
        let client = WebSocketStream::from_raw_socket(
            b,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let task = tokio::spawn(run(node.clone(), server, None, Via::Main));
        (client, task)
    }

    async fn auth(client: &mut WebSocketStream<DuplexStream>, exp: i64) {
        let token = mint_hs256(SECRET, "u_1", "o_1", exp, None);
        let frame = serde_json::json!({"type": "auth", "token": token}).to_string();
        client.send(Message::Text(frame.into())).await.unwrap();
        let Some(Ok(Message::Text(t))) = client.next().await else {
            panic!("no connected")
        };
        assert!(t.contains("\"connected\""), "{t}");
    }

    /// Sends a command and reads the next text frame as JSON.
    async fn ask(
        client: &mut WebSocketStream<DuplexStream>,
        cmd: serde_json::Value,
    ) -> serde_json::Value {
        client
            .send(Message::Text(cmd.to_string().into()))
            .await
            .unwrap();
        loop {
            match client.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("the connection ended: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_subscribe_the_broker_cannot_serve_is_answered_unavailable_and_the_connection_stays()
    {
        let (node, flaky) = Node::with_flaky_broker(SECRET);
        let (mut client, _task) = pair(&node).await;
        auth(&mut client, unix_now() + 3600).await;
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let sub = serde_json::json!({"type": "subscribe", "channelId": "task:t_1", "ref": 7});
        let answer = ask(&mut client, sub.clone()).await;
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["code"], "unavailable", "{answer}");
        assert_eq!(answer["channelId"], "task:t_1");
        assert_eq!(answer["ref"], 7);
        assert_eq!(node.subscribers("o_1", "task:t_1"), 0, "nothing changed");
        let pong = ask(&mut client, serde_json::json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "the connection stays open");
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        let answer = ask(&mut client, sub).await;
        assert_eq!(answer["type"], "subscribed", "a retry works: {answer}");
        assert_eq!(node.subscribers("o_1", "task:t_1"), 1);
    }

    #[tokio::test]
    async fn a_connection_task_stays_small() {
        // Every idle connection carries this future: its size is memory per connection.
        let node = node();
        let (a, _b) = tokio::io::duplex(1024);
        let server = WebSocketStream::from_raw_socket(
            a,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(node.ws_config()),
        )
        .await;
        let ws = std::mem::size_of_val(&server);
        let fut = run(node.clone(), server, None, Via::Main);
        let size = std::mem::size_of_val(&fut);
        eprintln!("session future: {size} bytes, of which the WebSocket {ws}");
        // The bound and its history: docs/benchmarks.md, memory per connection.
        assert!(size <= 1376, "the session future grew to {size} bytes");
    }

    /// Reads until the close frame; returns its code and the virtual time it took.
    async fn close_code(client: &mut WebSocketStream<DuplexStream>) -> Option<u16> {
        while let Some(m) = client.next().await {
            match m {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// An in-memory transport that counts the server's writes.
    struct Counting {
        inner: DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl Transport for Counting {}

    #[tokio::test]
    async fn commands_that_arrive_together_are_answered_in_one_write() {
        let node = node();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = WebSocketStream::from_raw_socket(
            Counting {
                inner: a,
                writes: writes.clone(),
            },
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(node.ws_config()),
        )
        .await;
        let mut client = WebSocketStream::from_raw_socket(
            b,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let _task = tokio::spawn(run(node.clone(), server, None, Via::Main));
        auth(&mut client, unix_now() + 600).await;
        let before = writes.load(std::sync::atomic::Ordering::SeqCst);
        // Three subscribes in one write, as a client sends them after it connects.
        for ch in ["agent:a_1", "project:p_1", "org:o_1"] {
            let frame = serde_json::json!({"type": "subscribe", "channelId": ch}).to_string();
            client.feed(Message::Text(frame.into())).await.unwrap();
        }
        client.flush().await.unwrap();
        for ch in ["agent:a_1", "project:p_1", "org:o_1"] {
            let Some(Ok(Message::Text(t))) = client.next().await else {
                panic!("no reply")
            };
            assert!(t.contains("\"subscribed\"") && t.contains(ch), "{t}");
        }
        let after = writes.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(after - before, 1, "the three replies in one write");
    }

    #[tokio::test]
    async fn a_client_sending_faster_than_it_reads_never_overflows_its_own_queue() {
        // A queue of 40: without the read-ahead bound, 60 replies would wait at once (4009).
        let mut c = Config::default();
        c.auth.keys = vec![KeySource::Secret(SECRET.into())];
        c.publish_keys = vec!["k".into()];
        c.limits.outbox_events = READ_AHEAD + 8;
        let node = Node::new(c).expect("node");
        let (mut client, task) = pair(&node).await;
        auth(&mut client, unix_now() + 600).await;
        for i in 0..60 {
            let frame = serde_json::json!({"type": "ping", "ref": i}).to_string();
            client.feed(Message::Text(frame.into())).await.unwrap();
        }
        client.flush().await.unwrap();
        for i in 0..60 {
            let Some(Ok(Message::Text(t))) = client.next().await else {
                panic!("no pong {i}")
            };
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                (v["type"].as_str(), v["ref"].as_i64()),
                (Some("pong"), Some(i))
            );
        }
        assert!(!task.is_finished(), "still open");
    }

    #[tokio::test(start_paused = true)]
    async fn token_expiry_without_refresh_closes_with_4002_after_the_leeway() {
        let node = node();
        let (mut client, task) = pair(&node).await;
        let start = Instant::now();
        auth(&mut client, unix_now() + 60).await;
        assert_eq!(close_code(&mut client).await, Some(4002));
        let waited = start.elapsed();
        // exp (60 s) plus the 30 s leeway, give or take the second the clock ticks in.
        assert!(
            waited >= Duration::from_secs(89) && waited <= Duration::from_secs(91),
            "{waited:?}"
        );
        assert_eq!(task.await.unwrap(), End::Closed(CloseCode::TokenExpired));
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_moves_the_expiry() {
        let node = node();
        let (mut client, _task) = pair(&node).await;
        let start = Instant::now();
        auth(&mut client, unix_now() + 60).await;
        let token = mint_hs256(SECRET, "u_1", "o_1", unix_now() + 600, None);
        let frame = serde_json::json!({"type": "refresh", "token": token}).to_string();
        client.send(Message::Text(frame.into())).await.unwrap();
        assert_eq!(close_code(&mut client).await, Some(4002));
        assert!(
            start.elapsed() >= Duration::from_secs(629),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_auth_frame_closes_with_4003_after_the_auth_timeout() {
        let node = node();
        let (mut client, task) = pair(&node).await;
        let start = Instant::now();
        assert_eq!(close_code(&mut client).await, Some(4003));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(task.await.unwrap(), End::Closed(CloseCode::AuthTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_stays_and_a_silent_one_is_closed() {
        let node = node();
        // This client reads (so its library answers pings) for three minutes: still open.
        let (mut client, _task) = pair(&node).await;
        auth(&mut client, unix_now() + 3600).await;
        let until = Instant::now() + Duration::from_secs(180);
        let mut pings = 0;
        while let Ok(m) = tokio::time::timeout_at(until, client.next()).await {
            match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("only pings should arrive: {other:?}"),
            }
        }
        assert_eq!(pings, 7, "one ping every 25 s");

        // This one never reads again after `connected`: no pongs, so it is closed after the
        // idle timeout, at the first ping tick past 60 s.
        let (mut silent, task) = pair(&node).await;
        auth(&mut silent, unix_now() + 3600).await;
        let start = Instant::now();
        let end = task.await.unwrap();
        assert_eq!(end, End::Closed(CloseCode::GoingAway));
        assert!(
            start.elapsed() >= Duration::from_secs(60)
                && start.elapsed() <= Duration::from_secs(77),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut b = Allowance::new(3.0);
            let mut take = |which| b.take(which, 3.0);
            assert!(take(Take::Command) && take(Take::Command) && take(Take::Command));
            assert!(!take(Take::Command));
            // The other buckets are separate.
            assert!(take(Take::Strike) && take(Take::BadCommand));
            tokio::time::advance(Duration::from_secs(1)).await;
            let mut take = |which| b.take(which, 3.0);
            assert!(take(Take::Command) && take(Take::Command) && take(Take::Command));
            assert!(!take(Take::Command), "refilled to the burst, not beyond");
            for _ in 0..9 {
                assert!(take(Take::Strike));
            }
            assert!(
                take(Take::Strike),
                "one second refilled the strike taken above"
            );
            assert!(!take(Take::Strike));
        });
    }
}
