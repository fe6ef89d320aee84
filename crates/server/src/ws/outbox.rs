//! The per-connection send queue, bounded in bytes and in messages.
//!
//! Publishers push without ever blocking; the connection's task drains it. When a push would pass
//! either bound the queue is emptied (its memory freed at once) and marked overflowed: the
//! connection is closed with 4009 and its client resumes from its last offset (CONTRACT.md
//! sections 8 and 9). A slow client therefore costs at most its bound, never the publisher's time.
//!
//! While the connection's task has nothing of its own unwritten and has granted it (see
//! [`super`]), a delivery to a small channel skips the queue: the publisher writes the
//! frame to the socket itself, without blocking, and the task is not even woken. What the socket
//! does not take at once is queued as usual. A delivery to a long channel is queued without
//! waking an idle task either: a flusher writes the queues of many such connections
//! ([`Outbox::deliver_later`], [`Outbox::flush`]).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frame::{MAX_FRAMES, Written, try_write_text, try_write_texts};

/// Queued messages, and a drained batch: one message is held inline, so a connection that
/// gets an event at a time (most of them, most of the time) allocates nothing for it, and an
/// idle one holds no buffer. The same size as a `Vec`.
pub type Queue = SmallVec<[Utf8Bytes; 1]>;

/// A push was refused: the queue passed its bound, or the connection is already closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// The sending half, cheap to clone: the hub holds one per subscription.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    max_bytes: usize,
    max_messages: usize,
}

#[derive(Default)]
struct State {
    queue: Queue,
    bytes: usize,
    overflowed: bool,
    /// The connection's socket, for writes that skip the queue (see [`super`]).
    socket: Option<Arc<TcpStream>>,
    /// Whether the connection's task granted those writes (it has nothing unwritten).
    granted: bool,
    /// The rest of a frame a publisher wrote in part: the task writes it before anything else.
    rest: Option<Box<Bytes>>,
    /// Whether a flusher has been asked to write the queue ([`Outbox::deliver_later`]).
    flush_due: bool,
    /// An operator asked for the connection to be closed with this code ([`Outbox::kick`]):
    /// the task writes what is queued, then closes.
    kicked: Option<u16>,
    /// The connection's task, while it waits for a push or an overflow. Set and taken under
    /// the same lock as the queue, so no wake-up falls between a check and a wait.
    waker: Option<Waker>,
}

impl State {
    /// Publishers queue again; the rest of a frame one of them wrote in part, if any.
    fn revoke(&mut self) -> Option<Bytes> {
        self.granted = false;
        self.rest.take().map(|rest| *rest)
    }

    /// Registers the task to be woken by the next push or overflow.
    fn wait(&mut self, cx: &Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }
}

/// What the connection's task gets from [`Outbox::next_batch`].
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    /// Messages were moved into the caller's buffer.
    Ready,
    /// The queue overflowed: close with 4009.
    Overflowed,
    /// Everything queued was written and an operator asked for a close with this code.
    Kicked(u16),
}

impl Outbox {
    /// A queue that holds at most `max_bytes` of messages and `max_messages` messages.
    pub fn new(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                max_bytes,
                max_messages,
            }),
        }
    }

    /// Queues a message without blocking. On overflow the queue is dropped and the connection
    /// is told to close; every later push is refused.
    pub fn push(&self, msg: Utf8Bytes) -> Result<(), Overflow> {
        self.deliver(msg, false)
    }

    /// Like [`Outbox::push`]; with `direct`, and while the connection's task has granted it,
    /// the message is written to the socket at once when the socket takes it (the task is not
    /// woken), and only what it does not take is left to the task.
    pub fn deliver(&self, msg: Utf8Bytes, direct: bool) -> Result<(), Overflow> {
        {
            let mut s = self.lock();
            if s.overflowed {
                return Err(Overflow);
            }
            if direct
                && s.granted
                && s.queue.is_empty()
                && let Some(socket) = &s.socket
            {
                match try_write_text(socket, &msg) {
                    Ok(Written::All) => return Ok(()),
                    Ok(Written::Part(rest)) => {
                        // Part of the frame is on the wire: the task must finish it first.
                        // (Not counted against the queue's bound: it is at most one frame.)
                        s.granted = false;
                        s.rest = Some(Box::new(rest));
                        wake(s);
                        return Ok(());
                    }
                    // Nothing went out (the socket is full) or the socket failed: the task
                    // takes over, and meets the same condition on its own write.
                    Ok(Written::Nothing) | Err(_) => s.granted = false,
                }
            }
            if !self.enqueue(&mut s, msg) {
                wake(s);
                return Err(Overflow);
            }
            wake(s);
        }
        Ok(())
    }

    /// Queues `msg` for a long channel's fan-out, waking the connection's task only when it
    /// sleeps and nobody else will write the queue. With `flush`, a task that sleeps while it
    /// grants direct writes is not woken either: `Ok(true)` asks the caller to have
    /// [`Outbox::flush`] called (once, for the first message since the last flush). `Ok(false)`
    /// means the message will be written anyway: a flush is due already, or the task is awake
    /// (it takes the queue before it sleeps again), or it was woken.
    ///
    /// One flusher writing the queues of many idle connections, each in one system call, does
    /// the work of waking, scheduling and polling each connection's task; whoever writes the
    /// queue writes it in order.
    pub fn deliver_later(&self, msg: Utf8Bytes, flush: bool) -> Result<bool, Overflow> {
        let mut s = self.lock();
        if s.overflowed {
            return Err(Overflow);
        }
        if !self.enqueue(&mut s, msg) {
            wake(s);
            return Err(Overflow);
        }
        if s.flush_due {
            return Ok(false);
        }
        if flush && s.granted && s.waker.is_some() {
            s.flush_due = true;
            return Ok(true);
        }
        // Wakes a sleeping task; an awake one has no waker here and finds the queue itself.
        wake(s);
        Ok(false)
    }

    /// Writes everything queued straight to the socket, up to 32 frames in one
    /// non-blocking system call, while the connection's task still grants it. What the socket
    /// does not take, and a queue the task no longer grants writes for, is left to the task,
    /// which is woken.
    pub fn flush(&self) {
        let mut s = self.lock();
        s.flush_due = false;
        if s.overflowed || s.queue.is_empty() {
            return;
        }
        let state = &mut *s;
        let (true, Some(socket)) = (state.granted, &state.socket) else {
            wake(s);
            return;
        };
        let queue = std::mem::take(&mut state.queue);
        let mut sent = 0;
        while sent < queue.len() {
            let chunk = &queue[sent..queue.len().min(sent + MAX_FRAMES)];
            match try_write_texts(socket, chunk) {
                Ok((whole, rest)) => {
                    sent += whole;
                    if let Some(rest) = rest {
                        // Part of a frame is on the wire: the task finishes it first. (Not
                        // counted against the queue's bound: it is at most one frame.)
                        sent += 1;
                        state.rest = Some(Box::new(rest));
                        break;
                    }
                    if whole < chunk.len() {
                        break; // the socket is full
                    }
                }
                Err(_) => break, // the task meets the same error on its own write
            }
        }
        if sent == queue.len() && state.rest.is_none() {
            state.bytes = 0;
            return;
        }
        // The task writes what the socket did not take, after any partial frame.
        state.granted = false;
        state.queue = queue.into_iter().skip(sent).collect();
        state.bytes = state.queue.iter().map(|m| m.len()).sum();
        wake(s);
    }

    /// Asks the connection's task to close with `code` once it has written what is queued (an
    /// operator's disconnect). Later pushes are still queued until the task closes.
    pub fn kick(&self, code: u16) {
        let mut s = self.lock();
        s.kicked = Some(code);
        wake(s);
    }

    /// Marks the queue overflowed (its memory freed at once): the connection closes with 4009.
    pub fn overflow(&self) {
        let mut s = self.lock();
        s.overflowed = true;
        s.queue = Queue::new();
        s.bytes = 0;
        wake(s);
    }

    /// Queues `msg` within the bounds; on overflow drops the queue (its memory freed at once),
    /// marks the outbox overflowed and returns false.
    fn enqueue(&self, s: &mut State, msg: Utf8Bytes) -> bool {
        let len = msg.len();
        if s.queue.len() >= self.shared.max_messages || s.bytes + len > self.shared.max_bytes {
            s.overflowed = true;
            s.queue = Queue::new();
            s.bytes = 0;
            return false;
        }
        s.bytes += len;
        s.queue.push(msg);
        true
    }

    #[cfg(any(test, feature = "internals"))]
    /// Waits until there is something to send, then moves everything queued into `out`.
    pub async fn next_batch(&self, out: &mut Queue) -> Batch {
        std::future::poll_fn(|cx| self.poll_batch(cx, out)).await
    }

    /// [`Outbox::next_batch`] as a poll: the waiting task holds no future of its own, only its
    /// waker in the outbox (memory per idle connection).
    pub fn poll_batch(&self, cx: &Context<'_>, out: &mut Queue) -> Poll<Batch> {
        let mut s = self.lock();
        match Self::take_batch(&mut s, out) {
            Some(batch) => Poll::Ready(batch),
            None => {
                s.wait(cx);
                Poll::Pending
            }
        }
    }

    /// Moves everything queued into `out` without waiting; `None` when the queue is empty.
    pub fn try_batch(&self, out: &mut Queue) -> Option<Batch> {
        Self::take_batch(&mut self.lock(), out)
    }

    fn take_batch(s: &mut State, out: &mut Queue) -> Option<Batch> {
        if s.overflowed {
            return Some(Batch::Overflowed);
        }
        if s.queue.is_empty() {
            // The rest of a publisher's frame is written by the task's next flush.
            if s.rest.is_some() {
                return Some(Batch::Ready);
            }
            return s.kicked.map(Batch::Kicked);
        }
        // The queue's buffer itself goes to the caller (no copy), and the queue starts again
        // without one: an idle connection holds no queue memory.
        let queue = std::mem::take(&mut s.queue);
        s.bytes = 0;
        // The task now holds messages it has not written: from here until its flush, a
        // publisher writing to the socket would overtake them (with the task on another
        // thread). The grant ends under the same lock as the queue it emptied.
        s.granted = false;
        if out.is_empty() {
            *out = queue;
        } else {
            out.extend(queue);
        }
        Some(Batch::Ready)
    }

    /// Lets publishers write to `socket` while the task grants it ([`Outbox::grant`]).
    pub(crate) fn attach(&self, socket: Arc<TcpStream>) {
        self.lock().socket = Some(socket);
    }

    /// The task has nothing unwritten: publishers may write to the socket.
    pub(crate) fn grant(&self) {
        let mut s = self.lock();
        s.granted = s.socket.is_some();
    }

    /// The task is about to write: publishers queue again. Returns the rest of a frame a
    /// publisher wrote in part, which the task must write before anything else.
    pub(crate) fn revoke(&self) -> Option<Bytes> {
        self.lock().revoke()
    }

    /// The task is closing: no publisher writes to the socket again, and the outbox lets go
    /// of it. Returns what [`Outbox::revoke`] does.
    pub(crate) fn detach(&self) -> Option<Bytes> {
        let mut s = self.lock();
        s.socket = None;
        s.revoke()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `messages` more messages of `bytes` in all would fit now.
    pub fn fits(&self, messages: usize, bytes: usize) -> bool {
        let s = self.lock();
        !s.overflowed
            && s.queue.len() + messages <= self.shared.max_messages
            && s.bytes + bytes <= self.shared.max_bytes
    }

    /// Ready once the queue has overflowed; otherwise the task is woken by the next push or
    /// overflow.
    pub fn poll_overflowed(&self, cx: &Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        if s.overflowed {
            return Poll::Ready(());
        }
        s.wait(cx);
        Poll::Pending
    }

    /// How many messages are queued.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    #[cfg(any(test, feature = "internals"))]
    /// Whether the queue has overflowed.
    pub fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    #[cfg(feature = "internals")]
    /// Whether two handles share one queue.
    pub fn same(&self, other: &Outbox) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// Wakes the waiting task, if any, after letting go of the lock.
fn wake(mut s: std::sync::MutexGuard<'_, State>) {
    let waker = s.waker.take();
    drop(s);
    if let Some(w) = waker {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Utf8Bytes {
        Utf8Bytes::from("x".repeat(n))
    }

    #[tokio::test]
    async fn drains_in_order() {
        let o = Outbox::new(1000, 10);
        o.push("a".into()).unwrap();
        o.push("b".into()).unwrap();
        let mut out = Queue::new();
        assert_eq!(o.next_batch(&mut out).await, Batch::Ready);
        assert_eq!(out.as_slice(), [Utf8Bytes::from("a"), Utf8Bytes::from("b")]);
        assert!(o.try_batch(&mut out).is_none());
    }

    #[test]
    fn message_bound_overflows_and_frees_the_queue() {
        let o = Outbox::new(1 << 20, 3);
        for _ in 0..3 {
            o.push(msg(1)).unwrap();
        }
        assert_eq!(o.push(msg(1)), Err(Overflow));
        assert!(o.overflowed());
        assert_eq!(o.push(msg(1)), Err(Overflow), "stays closed");
        let mut out = Queue::new();
        assert_eq!(o.try_batch(&mut out), Some(Batch::Overflowed));
        assert!(out.is_empty());
    }

    #[test]
    fn byte_bound_overflows() {
        let o = Outbox::new(100, 1000);
        o.push(msg(60)).unwrap();
        assert_eq!(o.push(msg(41)), Err(Overflow));
    }

    #[test]
    fn draining_makes_room_again() {
        let o = Outbox::new(100, 2);
        o.push(msg(50)).unwrap();
        o.push(msg(50)).unwrap();
        let mut out = Queue::new();
        o.try_batch(&mut out);
        o.push(msg(50)).unwrap();
        o.push(msg(50)).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_drain_wakes_on_push_and_on_overflow() {
        let o = Outbox::new(10, 10);
        let o2 = o.clone();
        let t = tokio::spawn(async move {
            let mut out = Queue::new();
            o2.next_batch(&mut out).await
        });
        tokio::task::yield_now().await;
        o.push(msg(20)).unwrap_err();
        assert_eq!(t.await.unwrap(), Batch::Overflowed);
    }

    #[tokio::test]
    async fn a_kick_wakes_the_task_after_what_was_queued() {
        let o = Outbox::new(100, 10);
        o.push(msg(1)).unwrap();
        o.kick(4001);
        let mut out = Queue::new();
        assert_eq!(
            o.next_batch(&mut out).await,
            Batch::Ready,
            "the queue first"
        );
        assert_eq!(out.len(), 1);
        assert_eq!(o.next_batch(&mut out).await, Batch::Kicked(4001));
        let o2 = o.clone();
        let waiting = Outbox::new(100, 10);
        let w2 = waiting.clone();
        let t = tokio::spawn(async move {
            let mut out = Queue::new();
            w2.next_batch(&mut out).await
        });
        tokio::task::yield_now().await;
        waiting.kick(1000);
        assert_eq!(t.await.unwrap(), Batch::Kicked(1000));
        drop(o2);
    }
}
