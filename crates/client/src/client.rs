//! The application's side: [`ClientBuilder`], the [`Client`] handle and the [`Events`] stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cortex_protocol::ChannelId;
use futures_util::Stream;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::connection::{self, Dial, Target, UrlError};
use crate::event::ClientEvent;
use crate::token::{TokenError, TokenProvider, TokenTransport};
use crate::worker::{Settings, Shared, Worker};

/// Events the application may fall behind by before the client stops reading the socket.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;
/// Time allowed for TCP, the upgrade, authentication and `connected` together.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection silent this long (the server pings every 25 s) is taken as dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a client could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The URL is not `ws://host[:port]/path`, or carries a token.
    #[error("invalid URL: {0}")]
    InvalidUrl(#[from] UrlError),
    /// Neither [`ClientBuilder::token`] nor [`ClientBuilder::token_provider`] was called.
    #[error("no token and no token provider")]
    NoToken,
}

/// Settings of a [`Client`]; [`ClientBuilder::start`] starts it.
pub struct ClientBuilder {
    url: String,
    transport: TokenTransport,
    provider: Option<Arc<dyn TokenProvider>>,
    backoff: Backoff,
    capacity: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    channels: Vec<ChannelId>,
    dial: Option<Dial>,
    rng: Option<Box<dyn RngCore + Send + Sync>>,
}

impl ClientBuilder {
    fn new(url: String) -> ClientBuilder {
        ClientBuilder {
            url,
            transport: TokenTransport::default(),
            provider: None,
            backoff: Backoff::default(),
            capacity: DEFAULT_EVENT_CAPACITY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            channels: Vec::new(),
            dial: None,
            rng: None,
        }
    }

    /// One fixed token for every connection. It cannot be refreshed: once it expires the
    /// client stops with [`Stop::TokenExpired`](crate::Stop::TokenExpired). Long-running
    /// clients want [`ClientBuilder::token_provider`].
    pub fn token(self, token: impl Into<String>) -> ClientBuilder {
        let token: String = token.into();
        self.token_provider(move || {
            let t = token.clone();
            async move { Ok::<_, TokenError>(t) }
        })
    }

    /// Where tokens come from: asked before each connection, ahead of expiry (the client sends
    /// `refresh` on the live connection) and after a 4002 close.
    pub fn token_provider(mut self, provider: impl TokenProvider) -> ClientBuilder {
        self.provider = Some(Arc::new(provider));
        self
    }

    /// How the token reaches the server; the default is the `auth` frame.
    pub fn transport(mut self, transport: TokenTransport) -> ClientBuilder {
        self.transport = transport;
        self
    }

    /// The reconnect backoff; the default is the contract's (1 s doubling to 30 s, full
    /// jitter, reset after 30 s up).
    pub fn backoff(mut self, backoff: Backoff) -> ClientBuilder {
        self.backoff = backoff;
        self
    }

    /// How many events may wait for the application (at least 1). When they are all waiting
    /// the client stops reading the socket; see [`Events`] for what follows.
    pub fn event_capacity(mut self, capacity: usize) -> ClientBuilder {
        self.capacity = capacity.max(1);
        self
    }

    /// Time allowed for one connection attempt up to `connected`.
    pub fn handshake_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a connection may stay silent before it is taken as dead and replaced.
    pub fn idle_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.idle_timeout = timeout;
        self
    }

    /// A channel to subscribe from the first connection on (same as [`Client::subscribe`]).
    pub fn subscribe(mut self, channel: ChannelId) -> ClientBuilder {
        self.channels.push(channel);
        self
    }

    /// The byte stream to connect over, instead of TCP (tests: an in-memory pipe).
    #[cfg(test)]
    pub(crate) fn dial(mut self, dial: Dial) -> ClientBuilder {
        self.dial = Some(dial);
        self
    }

    /// A seeded random source for the backoff jitter, so tests know every delay.
    #[cfg(test)]
    pub(crate) fn rng(mut self, rng: Box<dyn RngCore + Send + Sync>) -> ClientBuilder {
        self.rng = Some(rng);
        self
    }

    /// Starts the client's task (on the current Tokio runtime) and returns at once: the first
    /// connection is made in the background, and everything that happens arrives on
    /// [`Events`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start(self) -> Result<(Client, Events), Error> {
        let target = Target::parse(&self.url)?;
        let provider = self.provider.ok_or(Error::NoToken)?;
        let settings = Settings {
            target,
            transport: self.transport,
            provider,
            dial: self.dial.unwrap_or_else(connection::tcp),
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
        };
        let rng = self.rng.unwrap_or_else(|| Box::new(StdRng::from_os_rng()));
        let shared = Arc::new(Shared::new(self.channels));
        let (tx, rx) = mpsc::channel(self.capacity);
        let worker = Worker::new(settings, shared.clone(), tx, rng, self.backoff);
        let task = tokio::spawn(worker.run());
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                task: Mutex::new(Some(task)),
            }),
        };
        Ok((client, Events { rx }))
    }
}

/// A Cortex Realtime connection that keeps itself up: it reconnects with backoff, resubscribes
/// and resumes every channel, and refreshes its token.
///
/// Cheap to clone; every clone drives the same connection. When the last clone is dropped the
/// client closes (1000), as [`Client::close`] does.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("subscriptions", &self.subscriptions())
            .finish()
    }
}

impl Client {
    /// Settings for a client of the server at `url` (`ws://host:port/api/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url.into())
    }

    /// Subscribes to `channel`, now if connected, else on the next connection; from then on
    /// every reconnect resumes it. Subscribing to a channel already subscribed does nothing.
    /// The outcome arrives as [`ClientEvent::Subscribed`] or [`ClientEvent::SubscribeFailed`].
    pub fn subscribe(&self, channel: ChannelId) {
        if self.inner.shared.desired().insert(channel) {
            self.inner.shared.changed.notify_one();
        }
    }

    /// Unsubscribes from `channel` and forgets its position. No event of it is delivered after
    /// this call returns, except those already waiting in [`Events`].
    pub fn unsubscribe(&self, channel: &ChannelId) {
        if self.inner.shared.desired().remove(channel) {
            self.inner.shared.changed.notify_one();
        }
    }

    /// The channels the client is subscribed to, or will subscribe to on the next connection.
    pub fn subscriptions(&self) -> Vec<ChannelId> {
        self.inner.shared.desired().iter().cloned().collect()
    }

    /// Closes the connection with 1000 and stops reconnecting; returns once the client's task
    /// has ended (after at most about a second of close handshake), whichever clone calls it.
    /// [`Events`] then yields [`Stop::Closed`](crate::Stop::Closed), if it has room, and ends.
    pub async fn close(&self) {
        self.inner.shared.stop.cancel();
        // Held across the wait: a second caller returns only once the task has ended too.
        let mut task = self.inner.task.lock().await;
        if let Some(t) = task.take() {
            let _ = t.await;
        }
    }
}

/// Everything the client tells the application, in order: a bounded queue (see
/// [`ClientBuilder::event_capacity`]).
///
/// Overflow policy: nothing is dropped and nothing is buffered without bound. When the queue
/// is full the client stops reading its socket until the application catches up; the server's
/// own bounded queue for the connection then fills and it closes the connection with 4009;
/// the client reconnects and resumes from the last event it queued, so the application misses
/// nothing the server's history still holds (and is told `recovered: false` otherwise).
///
/// Also a [`Stream`]. It ends after [`ClientEvent::Stopped`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` once the client has stopped and everything was read.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_recv(cx)
    }
}
