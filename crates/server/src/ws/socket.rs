//! The session's side of a connection's TCP socket: every byte tungstenite writes goes through
//! [`Socket`], which takes the direct-write permission back before writing and grants it again
//! when a flush completes (the protocol is described once, in [`super`]). It also notes
//! readability, so a session skips its read side when no byte can have arrived. It never
//! queues: the queue is [`super::outbox`]'s.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{MAX_FRAMES, try_write_texts};
#[cfg(test)]
use super::outbox::Batch;
use super::outbox::Outbox;

/// What the session needs of its transport beyond reading and writing.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Lets `outbox` write frames straight to the socket while the session is idle.
    fn attach(&mut self, _outbox: &Outbox) {}
    /// From now on only the session writes (it is closing).
    fn detach(&mut self) {}
    /// Whether a read may make progress: false only while the last read found nothing and no
    /// byte has arrived since. The session skips its read side otherwise, so a wake-up for a
    /// delivery does not also re-poll (and re-register) the reading half.
    fn read_wanted(&self) -> bool {
        true
    }
    /// Writes the first of `msgs` (up to 32) as frames straight to the socket,
    /// beside the WebSocket layer, when that layer holds nothing unwritten; returns how many it
    /// took, 0 when the layer may hold bytes (write through it then). Those taken are out, the
    /// last of them possibly in part with its rest waiting in the transport for the next flush;
    /// the others go through the layer.
    fn write_now(&mut self, _msgs: &[Utf8Bytes]) -> io::Result<usize> {
        Ok(0)
    }
    /// Whether the rest of a frame waits in the transport for the next flush.
    fn unwritten(&self) -> bool {
        false
    }
}

/// A transport without the shared path (in-memory pipes in tests, other streams).
impl Transport for tokio::io::DuplexStream {}

/// The session's side of a connection's TCP socket (see the module docs).
pub struct Socket {
    tcp: Arc<TcpStream>,
    /// Bytes the HTTP layer read past the upgrade request, read before the socket. (Boxed,
    /// like `rest`: both are almost always absent, and every idle connection holds a Socket.)
    prefix: Option<Box<Bytes>>,
    /// The outbox that may write while the permission is granted.
    outbox: Option<Outbox>,
    /// Whether this side granted the permission and has not taken it back since.
    granted: bool,
    /// The rest of a frame a publisher wrote in part: it goes out before any byte of ours.
    rest: Option<Box<Bytes>>,
    /// Whether a read may make progress, and the reader to wake when it may.
    read: Arc<ReadWake>,
}

/// The waker a [`Socket`] registers for readability: it notes that bytes may have arrived, then
/// wakes the reader (tungstenite's waker for the session's read side).
struct ReadWake {
    /// Cleared when a read finds the socket empty; set by the wake-up that follows.
    wanted: AtomicBool,
    reader: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wanted.store(true, Ordering::Release);
        self.reader.wake();
    }
}

impl Socket {
    /// Wraps an accepted socket; `prefix` holds bytes already read from it.
    pub fn new(tcp: TcpStream, prefix: Bytes) -> Socket {
        Socket {
            tcp: Arc::new(tcp),
            // A copy: the slice would keep the HTTP layer's whole read buffer alive (KiBs per
            // connection).
            prefix: (!prefix.is_empty()).then(|| Box::new(Bytes::copy_from_slice(&prefix))),
            outbox: None,
            granted: false,
            rest: None,
            read: Arc::new(ReadWake {
                wanted: AtomicBool::new(true),
                reader: AtomicWaker::new(),
            }),
        }
    }

    /// Takes the permission back before writing (one lock, only when it was granted).
    fn revoke(&mut self) {
        if self.granted {
            self.granted = false;
            if let Some(outbox) = &self.outbox
                && let Some(rest) = outbox.revoke()
            {
                self.rest = Some(Box::new(rest));
            }
        }
    }

    /// Writes what is left of a publisher's frame.
    fn poll_rest(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.rest.as_mut() {
            let n = ready!(poll_write_tcp(&self.tcp, cx, rest))?;
            rest.advance(n);
            if rest.is_empty() {
                self.rest = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn poll_write_tcp(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(0) if !buf.is_empty() => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            r => return Poll::Ready(r),
        }
    }
}

impl Transport for Socket {
    fn read_wanted(&self) -> bool {
        self.read.wanted.load(Ordering::Acquire)
    }

    fn write_now(&mut self, msgs: &[Utf8Bytes]) -> io::Result<usize> {
        // Granted, and not revoked since: tungstenite's last flush completed and it has written
        // nothing since, so its buffer is empty and a whole frame of ours cannot split one of
        // its own.
        if !self.granted {
            return Ok(0);
        }
        // Publishers queue from here on (the batch was taken, which ended their grant); a rest
        // one of them left goes first.
        self.revoke();
        if let Some(rest) = self.rest.as_mut() {
            match self.tcp.try_write(rest) {
                Ok(n) => rest.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !rest.is_empty() {
                return Ok(0);
            }
            self.rest = None;
        }
        let now = &msgs[..msgs.len().min(MAX_FRAMES)];
        match try_write_texts(&self.tcp, now)? {
            (whole, Some(rest)) => {
                self.rest = Some(Box::new(rest));
                Ok(whole + 1)
            }
            (whole, None) => {
                // Only once the whole batch is out: a publisher's frame must not overtake the
                // messages still to go through the WebSocket layer.
                if whole == msgs.len()
                    && let Some(outbox) = &self.outbox
                {
                    outbox.grant();
                    self.granted = true;
                }
                Ok(whole)
            }
        }
    }

    fn unwritten(&self) -> bool {
        self.rest.is_some()
    }

    fn attach(&mut self, outbox: &Outbox) {
        outbox.attach(self.tcp.clone());
        self.outbox = Some(outbox.clone());
    }

    fn detach(&mut self) {
        if let Some(outbox) = self.outbox.take()
            && let Some(rest) = outbox.detach()
        {
            self.rest = Some(Box::new(rest));
        }
        self.granted = false;
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.as_mut() {
            read_prefix(prefix, buf);
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            // Readiness is awaited with the noting waker: cleared before the check, so a
            // wake-up after it always sets the flag again.
            this.read.reader.register(cx.waker());
            this.read.wanted.store(false, Ordering::Release);
            let noting = Waker::from(this.read.clone());
            let ready = this.tcp.poll_read_ready(&mut Context::from_waker(&noting));
            if ready.is_ready() {
                this.read.wanted.store(true, Ordering::Release);
            }
            ready!(ready)?;
            match this.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.revoke();
        ready!(this.poll_rest(cx))?;
        poll_write_tcp(&this.tcp, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A flush comes when tungstenite's buffer is empty: a publisher's rest (if any) goes
        // out, and the permission is granted again.
        this.revoke();
        ready!(this.poll_rest(cx))?;
        if let Some(outbox) = &this.outbox {
            outbox.grant();
            this.granted = true;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.detach();
        ready!(this.poll_rest(cx))?;
        Poll::Ready(socket2::SockRef::from(&*this.tcp).shutdown(std::net::Shutdown::Write))
    }
}

/// A connection whose only writer is the session's task: a TLS stream, whose record layer
/// (sequence numbers, keys) cannot be written by publishers beside the session, so every
/// delivery goes through the outbox and the task ([`Transport`]'s defaults: never attached).
/// Bytes the HTTP layer read past the upgrade request are read first.
pub struct Sole<S> {
    io: S,
    /// As [`Socket`]'s: boxed, almost always absent.
    prefix: Option<Box<Bytes>>,
}

impl<S> Sole<S> {
    /// Wraps an upgraded stream; `prefix` holds bytes already read from it.
    pub fn new(io: S, prefix: Bytes) -> Sole<S> {
        Sole {
            io,
            prefix: (!prefix.is_empty()).then(|| Box::new(Bytes::copy_from_slice(&prefix))),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for Sole<S> {}

impl<S: AsyncRead + Unpin> AsyncRead for Sole<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.as_mut() {
            read_prefix(prefix, buf);
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sole<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Moves what fits of `prefix` (bytes taken off a socket before its reader) into `buf`.
pub(crate) fn read_prefix(prefix: &mut Bytes, buf: &mut ReadBuf<'_>) {
    let n = prefix.len().min(buf.remaining());
    buf.put_slice(&prefix[..n]);
    prefix.advance(n);
}

#[cfg(test)]
mod tests {
    //! Over real loopback sockets: frames written by a publisher, read back by tungstenite as
    //! a client reads them, and the hand-over between the two writers.

    use super::*;
    use crate::ws::frame::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    async fn client(c: TcpStream) -> WebSocketStream<TcpStream> {
        let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
        WebSocketStream::from_raw_socket(c, Role::Client, Some(config)).await
    }

    /// A server WebSocket over a `Socket` attached to a fresh outbox, and its client.
    async fn attached() -> (WebSocketStream<Socket>, WebSocketStream<TcpStream>, Outbox) {
        let (s, c) = pair().await;
        let peer = client(c).await;
        let outbox = Outbox::new(1 << 20, 1000);
        let mut ws =
            WebSocketStream::from_raw_socket(Socket::new(s, Bytes::new()), Role::Server, None)
                .await;
        ws.get_mut().attach(&outbox);
        (ws, peer, outbox)
    }

    async fn text(ws: &mut WebSocketStream<TcpStream>) -> String {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next());
        match next.await.expect("a message within 10 s").unwrap().unwrap() {
            Message::Text(t) => t.to_string(),
            other => panic!("want a text message, got {other:?}"),
        }
    }

    #[test]
    fn text_headers_match_tungstenite_for_every_length_class() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 100_000] {
            let mut head = [0u8; 10];
            let h = frame_header(&mut head, TEXT, len);
            let mut want = Vec::new();
            Frame::message(vec![b'x'; len], OpCode::Data(Data::Text), true)
                .format(&mut want)
                .unwrap();
            assert_eq!(&head[..h], &want[..h], "length {len}");
            let (parsed, _) = FrameHeader::parse(&mut std::io::Cursor::new(&want[..h]))
                .unwrap()
                .unwrap();
            assert!(parsed.is_final);
        }
    }

    #[tokio::test]
    async fn a_publisher_frame_reads_as_a_text_message() {
        let (s, c) = pair().await;
        let mut ws = client(c).await;
        for len in [5, 300, 70_000] {
            let msg = Utf8Bytes::from("y".repeat(len));
            assert_eq!(try_write_text(&s, &msg).unwrap(), Written::All);
            assert_eq!(text(&mut ws).await.len(), len);
        }
    }

    #[tokio::test]
    async fn only_a_granted_idle_session_lets_publishers_write() {
        let (mut ws, mut peer, outbox) = attached().await;
        outbox.deliver("queued".into(), true).unwrap();
        let mut batch = crate::ws::Queue::new();
        assert!(
            outbox.try_batch(&mut batch).is_some(),
            "not granted yet: queued"
        );
        // The session writes its batch; the flush grants.
        for m in batch.drain(..) {
            ws.feed(Message::Text(m)).await.unwrap();
        }
        ws.flush().await.unwrap();
        assert_eq!(text(&mut peer).await, "queued");
        outbox.deliver("direct".into(), true).unwrap();
        assert!(
            outbox.try_batch(&mut batch).is_none(),
            "written, not queued"
        );
        assert_eq!(text(&mut peer).await, "direct");
        outbox.deliver("large channel".into(), false).unwrap();
        assert!(
            outbox.try_batch(&mut batch).is_some(),
            "`direct` false: queued"
        );
        batch.clear();
        // A session write takes the permission back until its flush.
        ws.feed(Message::Ping(Default::default())).await.unwrap();
        ws.get_mut().revoke();
        outbox.deliver("after".into(), true).unwrap();
        // Closing takes it away for good, flush or not.
        ws.get_mut().detach();
        ws.flush().await.unwrap();
        outbox.deliver("late".into(), true).unwrap();
        assert!(outbox.try_batch(&mut batch).is_some());
        assert_eq!(batch.len(), 2, "`after` and `late` were queued");
    }

    #[tokio::test]
    async fn a_batch_taken_by_the_session_is_not_overtaken_by_a_publisher() {
        let (mut ws, mut peer, outbox) = attached().await;
        ws.flush().await.unwrap(); // grants
        // The session takes a queued message (a reply, a replay) and, before it writes it, a
        // publisher on another thread delivers the next event.
        outbox.deliver("first".into(), false).unwrap();
        let mut batch = crate::ws::Queue::new();
        assert!(outbox.try_batch(&mut batch).is_some());
        outbox.deliver("second".into(), true).unwrap();
        for m in batch.drain(..) {
            ws.feed(Message::Text(m)).await.unwrap();
        }
        ws.flush().await.unwrap();
        assert_eq!(
            text(&mut peer).await,
            "first",
            "the taken batch goes out first"
        );
        assert!(
            outbox.try_batch(&mut batch).is_some(),
            "the publisher's event waited in the queue"
        );
        assert_eq!(batch.as_slice(), [Utf8Bytes::from("second")]);
    }

    /// Like [`attached`], granted, with small buffers on both sides and a peer that does not
    /// read yet (its raw socket): a large frame fills the socket.
    async fn choked() -> (WebSocketStream<Socket>, TcpStream, Outbox) {
        let (s, c) = pair().await;
        socket2::SockRef::from(&s)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(4096)
            .unwrap();
        let outbox = Outbox::new(64 << 20, 100_000);
        let mut ws =
            WebSocketStream::from_raw_socket(Socket::new(s, Bytes::new()), Role::Server, None)
                .await;
        ws.get_mut().attach(&outbox);
        ws.flush().await.unwrap(); // grants
        (ws, c, outbox)
    }

    /// The session writes `batch` while the peer of a [`choked`] socket starts reading; returns
    /// the length of the first message the peer reads and the text of the second.
    async fn session_writes_while_the_peer_reads(
        ws: &mut WebSocketStream<Socket>,
        c: TcpStream,
        batch: &mut crate::ws::Queue,
    ) -> (usize, String) {
        let reader = tokio::spawn(async move {
            let mut peer = client(c).await;
            (text(&mut peer).await.len(), text(&mut peer).await)
        });
        let write = async {
            for m in batch.drain(..) {
                ws.feed(Message::Text(m)).await.unwrap();
            }
            ws.flush().await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), write)
            .await
            .expect("the session's write finishes once the peer reads");
        reader.await.unwrap()
    }

    #[tokio::test]
    async fn the_rest_of_a_partial_frame_goes_out_before_the_session_writes() {
        let (mut ws, c, outbox) = choked().await;
        let big = Utf8Bytes::from("z".repeat(200_000));
        outbox.deliver(big.clone(), true).unwrap();
        let mut batch = crate::ws::Queue::new();
        assert_eq!(
            outbox.try_batch(&mut batch),
            Some(Batch::Ready),
            "part of the frame is on the wire: the session must finish it"
        );
        assert!(batch.is_empty());
        outbox.deliver("next".into(), true).unwrap();
        outbox.try_batch(&mut batch);
        assert_eq!(batch.len(), 1, "no longer granted: queued behind the rest");
        let (first, second) = session_writes_while_the_peer_reads(&mut ws, c, &mut batch).await;
        assert_eq!(first, 200_000, "the publisher's frame, whole");
        assert_eq!(second, "next");
    }

    #[tokio::test]
    async fn the_session_writes_a_message_itself_only_while_tungstenite_holds_nothing() {
        let (mut ws, mut peer, outbox) = attached().await;
        let msg = Utf8Bytes::from("now");
        assert!(
            ws.get_mut().write_now(std::slice::from_ref(&msg)).unwrap() == 0,
            "before the first flush tungstenite may hold bytes"
        );
        ws.flush().await.unwrap(); // grants
        assert_eq!(
            ws.get_mut().write_now(std::slice::from_ref(&msg)).unwrap(),
            1
        );
        assert!(!ws.get_ref().unwritten());
        assert_eq!(text(&mut peer).await, "now");
        // Written whole: publishers may write again.
        outbox.deliver("direct".into(), true).unwrap();
        let mut batch = crate::ws::Queue::new();
        assert!(
            outbox.try_batch(&mut batch).is_none(),
            "written, not queued"
        );
        assert_eq!(text(&mut peer).await, "direct");
        // tungstenite has started a frame: not until its flush.
        ws.feed(Message::Ping(Default::default())).await.unwrap();
        ws.get_mut().revoke();
        assert_eq!(
            ws.get_mut().write_now(std::slice::from_ref(&msg)).unwrap(),
            0
        );
        ws.flush().await.unwrap();
        assert_eq!(
            ws.get_mut().write_now(std::slice::from_ref(&msg)).unwrap(),
            1
        );
        assert!(matches!(peer.next().await, Some(Ok(Message::Ping(_)))));
        assert_eq!(text(&mut peer).await, "now");
    }

    #[tokio::test]
    async fn the_session_writes_a_batch_itself_and_grants_only_once_all_of_it_is_out() {
        let (mut ws, mut peer, outbox) = attached().await;
        ws.flush().await.unwrap(); // grants
        let three: Vec<Utf8Bytes> = ["a", "b", "c"].map(Utf8Bytes::from).to_vec();
        assert_eq!(ws.get_mut().write_now(&three).unwrap(), 3);
        for m in ["a", "b", "c"] {
            assert_eq!(text(&mut peer).await, m);
        }
        outbox.deliver("direct".into(), true).unwrap();
        let mut batch = crate::ws::Queue::new();
        assert!(outbox.try_batch(&mut batch).is_none(), "granted again");
        assert_eq!(text(&mut peer).await, "direct");
        // More than one write's worth: the rest goes through tungstenite, and until it is out
        // a publisher's event waits in the queue.
        let many: Vec<Utf8Bytes> = (0..MAX_FRAMES + 3)
            .map(|i| Utf8Bytes::from(i.to_string()))
            .collect();
        assert_eq!(ws.get_mut().write_now(&many).unwrap(), MAX_FRAMES);
        outbox.deliver("later".into(), true).unwrap();
        assert!(
            outbox.try_batch(&mut batch).is_some(),
            "not granted: queued"
        );
        // The session writes the rest of its batch, then the event it found queued.
        for m in many[MAX_FRAMES..].iter().chain(&batch) {
            ws.feed(Message::Text(m.clone())).await.unwrap();
        }
        ws.flush().await.unwrap();
        for m in many.iter().chain(&batch) {
            assert_eq!(&text(&mut peer).await, m.as_str());
        }
    }

    #[tokio::test]
    async fn a_message_the_socket_takes_in_part_is_finished_by_the_next_flush() {
        let (mut ws, c, _outbox) = choked().await;
        let big = Utf8Bytes::from("w".repeat(200_000));
        assert_eq!(
            ws.get_mut().write_now(std::slice::from_ref(&big)).unwrap(),
            1
        );
        assert!(ws.get_ref().unwritten(), "the socket took only part of it");
        assert!(
            ws.get_mut().write_now(&["next".into()]).unwrap() == 0,
            "nothing overtakes the rest"
        );
        let reader = tokio::spawn(async move {
            let mut peer = client(c).await;
            (text(&mut peer).await.len(), text(&mut peer).await)
        });
        let write = async {
            ws.send(Message::text("next")).await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), write)
            .await
            .expect("the flush finishes once the peer reads");
        assert_eq!(reader.await.unwrap(), (200_000, "next".to_owned()));
    }

    #[tokio::test]
    async fn several_frames_in_one_write_read_as_messages_in_order() {
        let (s, c) = pair().await;
        let mut ws = client(c).await;
        let msgs: Vec<Utf8Bytes> = [5, 300, 70_000, 0]
            .iter()
            .map(|&n| Utf8Bytes::from("v".repeat(n)))
            .collect();
        assert_eq!(try_write_texts(&s, &msgs).unwrap(), (4, None));
        for m in &msgs {
            assert_eq!(text(&mut ws).await.len(), m.len());
        }
    }

    #[tokio::test]
    async fn a_write_that_stops_inside_a_frame_returns_its_rest() {
        let (s, c) = pair().await;
        socket2::SockRef::from(&s)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(4096)
            .unwrap();
        let msgs: Vec<Utf8Bytes> = (0..8)
            .map(|i| Utf8Bytes::from(format!("{i}").repeat(20_000)))
            .collect();
        let (whole, rest) = try_write_texts(&s, &msgs).unwrap();
        assert!(
            whole < msgs.len(),
            "the peer reads nothing: the socket fills"
        );
        assert!(whole > 0 || rest.is_some(), "the socket took something");
        let reader = tokio::spawn(async move {
            let mut peer = client(c).await;
            let mut got = Vec::new();
            for _ in 0..8 {
                got.push(text(&mut peer).await);
            }
            got
        });
        // The rest, then the frames not begun, written as a session would.
        let mut s = s;
        if let Some(rest) = &rest {
            s.write_all(rest).await.unwrap();
        }
        let next = whole + usize::from(rest.is_some());
        for m in &msgs[next..] {
            let mut head = [0u8; 10];
            let h = frame_header(&mut head, TEXT, m.len());
            s.write_all(&head[..h]).await.unwrap();
            s.write_all(m.as_bytes()).await.unwrap();
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("every frame arrives")
            .unwrap();
        let want: Vec<String> = msgs.iter().map(|m| m.to_string()).collect();
        assert_eq!(got, want);
    }

    /// Counts wake-ups: whether a delivery woke the connection's task.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        /// Registers as the waiting task of an empty `outbox`.
        fn wait_on(self: &Arc<Self>, outbox: &Outbox) {
            let waker = Waker::from(self.clone());
            let mut q = crate::ws::Queue::new();
            let polled = outbox.poll_batch(&Context::from_waker(&waker), &mut q);
            assert!(polled.is_pending());
        }

        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_long_channels_deliveries_to_an_idle_session_wait_for_one_flush_not_the_task() {
        let (mut ws, mut peer, outbox) = attached().await;
        ws.flush().await.unwrap(); // grants
        let wakes = Arc::new(Wakes::default());
        wakes.wait_on(&outbox);
        assert_eq!(
            outbox.deliver_later("a".into(), true),
            Ok(true),
            "a flush is due"
        );
        assert_eq!(
            outbox.deliver_later("b".into(), true),
            Ok(false),
            "already due"
        );
        assert_eq!(wakes.count(), 0, "the task sleeps on");
        outbox.flush();
        assert_eq!(text(&mut peer).await, "a");
        assert_eq!(text(&mut peer).await, "b");
        let mut batch = crate::ws::Queue::new();
        assert!(
            outbox.try_batch(&mut batch).is_none(),
            "written, not queued"
        );
        assert_eq!(
            outbox.deliver_later("c".into(), true),
            Ok(true),
            "the next round"
        );
        outbox.flush();
        assert_eq!(text(&mut peer).await, "c");
        assert_eq!(wakes.count(), 0);
    }

    #[tokio::test]
    async fn a_session_that_writes_keeps_a_long_channels_deliveries_to_itself() {
        let (mut ws, _peer, outbox) = attached().await;
        // Not granted yet (no flush): the task is woken at once.
        let wakes = Arc::new(Wakes::default());
        wakes.wait_on(&outbox);
        assert_eq!(outbox.deliver_later("a".into(), true), Ok(false));
        assert_eq!(wakes.count(), 1);
        let mut batch = crate::ws::Queue::new();
        outbox.try_batch(&mut batch);
        ws.flush().await.unwrap(); // grants
        // A flush is due, then the session starts a write of its own before it runs.
        wakes.wait_on(&outbox);
        assert_eq!(outbox.deliver_later("b".into(), true), Ok(true));
        ws.feed(Message::Ping(Default::default())).await.unwrap();
        ws.get_mut().revoke();
        outbox.flush();
        assert_eq!(wakes.count(), 2, "the flusher hands the queue to the task");
        batch.clear();
        assert_eq!(outbox.try_batch(&mut batch), Some(Batch::Ready));
        assert_eq!(batch.as_slice(), [Utf8Bytes::from("b")]);
    }

    #[tokio::test]
    async fn a_long_channels_event_during_a_flushers_round_goes_to_the_tasks() {
        use crate::hub::{ChannelKey, DIRECT_FAN_OUT, Hub, Subscriber};
        let hub = Hub::new();
        let key = ChannelKey::new(Arc::from("o_1"), "org:o_1".parse().unwrap());
        let wakes = Arc::new(Wakes::default());
        let mut conns = Vec::new();
        for conn in 0..=DIRECT_FAN_OUT as u64 {
            let (mut ws, peer, outbox) = attached().await;
            ws.flush().await.unwrap(); // grants
            wakes.wait_on(&outbox);
            hub.subscribe(
                &key,
                Subscriber {
                    conn,
                    outbox: outbox.clone(),
                },
            );
            conns.push((ws, peer, outbox));
        }
        let n = conns.len();
        // On this single-threaded runtime the flushers run only once this task yields.
        assert_eq!(
            hub.fan_out(&key, || "1".into(), &crate::hub::Tally::default()),
            n
        );
        assert_eq!(wakes.count(), 0, "flushers write for the idle tasks");
        // One connection's flush is done before the channel's next event, the others' not.
        conns[0].2.flush();
        assert_eq!(
            hub.fan_out(&key, || "2".into(), &crate::hub::Tally::default()),
            n
        );
        assert_eq!(
            wakes.count(),
            1,
            "the round is not over: no new flush, the task of the flushed connection is woken"
        );
        for (_, peer, _) in &mut conns {
            assert_eq!(text(peer).await, "1");
            assert_eq!(text(peer).await, "2");
        }
        // The round is over: flushers again.
        wakes.wait_on(&conns[0].2);
        assert_eq!(
            hub.fan_out(&key, || "3".into(), &crate::hub::Tally::default()),
            n
        );
        for (_, peer, _) in &mut conns {
            assert_eq!(text(peer).await, "3");
        }
        assert_eq!(wakes.count(), 1);
    }

    #[tokio::test]
    async fn a_flush_the_socket_takes_in_part_leaves_the_rest_then_the_queue_to_the_task() {
        let (mut ws, c, outbox) = choked().await;
        let wakes = Arc::new(Wakes::default());
        wakes.wait_on(&outbox);
        let big = Utf8Bytes::from("q".repeat(200_000));
        assert_eq!(outbox.deliver_later(big, true), Ok(true));
        assert_eq!(outbox.deliver_later("next".into(), true), Ok(false));
        outbox.flush();
        assert_eq!(wakes.count(), 1, "the task finishes the write");
        let mut batch = crate::ws::Queue::new();
        assert_eq!(outbox.try_batch(&mut batch), Some(Batch::Ready));
        assert_eq!(
            batch.as_slice(),
            [Utf8Bytes::from("next")],
            "queued behind the rest"
        );
        assert_eq!(
            session_writes_while_the_peer_reads(&mut ws, c, &mut batch).await,
            (200_000, "next".to_owned())
        );
    }

    #[tokio::test]
    async fn the_read_side_is_wanted_again_only_when_bytes_arrive() {
        let (s, mut c) = pair().await;
        let mut sock = Socket::new(s, Bytes::new());
        assert!(sock.read_wanted(), "a new socket is read");
        let mut buf = [0u8; 16];
        let empty = futures_util::poll!(std::pin::pin!(sock.read(&mut buf)));
        assert!(empty.is_pending());
        assert!(!sock.read_wanted(), "found empty: not wanted");
        c.write_all(b"hello").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !sock.read_wanted() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the arrival sets the flag");
        assert_eq!(sock.read(&mut buf).await.unwrap(), 5);
        assert!(sock.read_wanted(), "after bytes, read again");
    }

    #[tokio::test]
    async fn bytes_read_with_the_upgrade_come_first() {
        let (s, mut c) = pair().await;
        let mut sock = Socket::new(s, Bytes::from_static(b"early "));
        c.write_all(b"later").await.unwrap();
        let mut got = vec![0u8; 11];
        sock.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early later");
    }
}
