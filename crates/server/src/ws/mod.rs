//! A connection's WebSocket bytes: the frame writer, the bounded send queue, and the TCP socket
//! they share. This module is the one owner of the direct-write protocol, described here once.
//!
//! # Who may write to a connection's socket, and when
//!
//! Most deliveries go to channels of a few subscribers and find the connection idle. Handing
//! each to the connection's task (wake it, poll it, frame, write) costs more user-space CPU than
//! the write itself, so the bytes are written here by hand rather than always through
//! tungstenite. Measured (docs/benchmarks.md, "deliveries to small channels skip the
//! connection's task" and "less work per delivery in a connection's task"): CPU per delivery in
//! groups of 50 went from 13.81 to 12.09 us and in 1:1 from 55.06 to 39.08 us; the task writing
//! a lone message itself took a delivery from about 3,000 to 2,000 server instructions
//! (callgrind). So a socket has three writers:
//!
//! 1. the session's task, through tungstenite and [`Socket`] (replies, pings, close frames,
//!    batches drained from the outbox; [`Transport::write_now`] writes a batch straight to the
//!    socket when tungstenite holds nothing unwritten);
//! 2. a publisher delivering to a channel of at most 64 local subscribers
//!    ([`Outbox::deliver`] with `direct`): one non-blocking `writev` of one whole frame;
//! 3. a flusher task writing a long channel's queues ([`Outbox::flush`]): up to 32 frames of a
//!    connection's queue in one non-blocking `writev`.
//!
//! Writers 2 and 3 write only while the session *grants* it, a flag in the outbox's state under
//! the same lock as the queue:
//!
//! - the session grants when a flush of tungstenite completes (its buffer is empty) and when a
//!   direct batch went out whole; it revokes before it writes anything else (one lock, only when
//!   it had granted), and taking a batch from the queue revokes too, under the queue's lock, so
//!   no publisher overtakes messages the session holds but has not written;
//! - a publisher writes only when the queue is empty (so it cannot overtake queued messages);
//! - a write that stops inside a frame leaves the frame's rest in the outbox; the grant ends,
//!   and the session writes that rest before any byte of its own (frames never interleave);
//! - when the session starts to close, [`Transport::detach`] takes the permission away for
//!   good, so no event can follow a close frame.
//!
//! Nothing here blocks: every write by writers 2 and 3 is `try_write`; what the socket does not
//! take is queued for the session. The outbox is bounded in bytes and messages; past either, it
//! is emptied and marked overflowed, and the session closes with 4009.
//!
//! # Layout
//!
//! - [`frame`]: server frame headers and the non-blocking `writev` of one or many frames.
//! - [`outbox`]: the bounded per-connection queue and the publishers' and flushers' writes.
//! - [`socket`]: the session's side: [`Socket`], the [`Transport`] trait, and [`Sole`], the
//!   transport of a connection nobody but its session writes to (TLS).
//!
//! # TLS
//!
//! A TLS connection has one writer only, its session's task: a record's encryption and sequence
//! number belong to the one TLS state, which publishers cannot share without a lock on every
//! write. Its transport is [`Sole`]: never attached, so every delivery is queued in the outbox
//! and the task writes it (through tungstenite and rustls). Plain TCP keeps the three writers.

pub(crate) mod frame;
pub(crate) mod outbox;
pub(crate) mod socket;

pub(crate) use outbox::{Batch, Outbox, Queue};
pub(crate) use socket::{Socket, Sole, Transport, read_prefix};
