//! The frame writer: RFC 6455 server frames (unmasked, final) written straight to a TCP socket
//! with one non-blocking `writev`, beside tungstenite. Used by the three writers of a
//! connection's socket (see [`super`]): the session's own direct writes, a publisher's write to
//! an idle connection, and a flusher's write of a long channel's queue. It owns the byte layout
//! only and never decides who may write when: that is the business of [`super::outbox`] and
//! [`super::socket`].

use std::io::{self, IoSlice};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What [`try_write_text`] managed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// The whole frame.
    All,
    /// Part of it: the rest must follow before any other byte.
    Part(Bytes),
    /// Nothing: the socket's buffer is full.
    Nothing,
}

/// Writes `msg` as one unmasked, final text frame with a single non-blocking `writev`.
pub(crate) fn try_write_text(tcp: &TcpStream, msg: &Utf8Bytes) -> io::Result<Written> {
    let mut head = [0u8; 10];
    let h = frame_header(&mut head, TEXT, msg.len());
    let total = h + msg.len();
    let n = match tcp.try_write_vectored(&[IoSlice::new(&head[..h]), IoSlice::new(msg.as_bytes())])
    {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    Ok(if n == total {
        Written::All
    } else if n == 0 {
        Written::Nothing
    } else if n >= h {
        Written::Part(Bytes::from(msg.clone()).slice(n - h..))
    } else {
        let mut rest = Vec::with_capacity(total - n);
        rest.extend_from_slice(&head[n..h]);
        rest.extend_from_slice(msg.as_bytes());
        Written::Part(Bytes::from(rest))
    })
}

/// How many frames [`try_write_texts`] takes at once (two `iovec`s each, far below the
/// system's `IOV_MAX` of 1,024).
pub(crate) const MAX_FRAMES: usize = 32;

/// Writes `msgs` (at most [`MAX_FRAMES`]) as consecutive unmasked, final text frames with a
/// single non-blocking `writev`. Returns how many went out whole and, when the write stopped
/// inside the next one, the rest of that frame, which must follow before any other byte.
pub(crate) fn try_write_texts(
    tcp: &TcpStream,
    msgs: &[Utf8Bytes],
) -> io::Result<(usize, Option<Bytes>)> {
    if let [msg] = msgs {
        return Ok(match try_write_text(tcp, msg)? {
            Written::All => (1, None),
            Written::Part(rest) => (0, Some(rest)),
            Written::Nothing => (0, None),
        });
    }
    assert!(
        msgs.len() <= MAX_FRAMES,
        "at most {MAX_FRAMES} frames a write"
    );
    let mut heads = [[0u8; 10]; MAX_FRAMES];
    let mut head_lens = [0; MAX_FRAMES];
    let mut total = 0;
    for (i, msg) in msgs.iter().enumerate() {
        head_lens[i] = frame_header(&mut heads[i], TEXT, msg.len());
        total += head_lens[i] + msg.len();
    }
    let mut iov = [IoSlice::new(&[]); 2 * MAX_FRAMES];
    for (i, msg) in msgs.iter().enumerate() {
        iov[2 * i] = IoSlice::new(&heads[i][..head_lens[i]]);
        iov[2 * i + 1] = IoSlice::new(msg.as_bytes());
    }
    let mut n = match tcp.try_write_vectored(&iov[..2 * msgs.len()]) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if n == total {
        return Ok((msgs.len(), None));
    }
    let mut whole = 0;
    for (i, msg) in msgs.iter().enumerate() {
        let h = iov[2 * i].len();
        if n < h + msg.len() {
            whole = i;
            break;
        }
        n -= h + msg.len();
    }
    if n == 0 {
        return Ok((whole, None));
    }
    let (head, msg) = (&*iov[2 * whole], &msgs[whole]);
    let rest = if n >= head.len() {
        Bytes::from(msg.clone()).slice(n - head.len()..)
    } else {
        let mut rest = Vec::with_capacity(head.len() - n + msg.len());
        rest.extend_from_slice(&head[n..]);
        rest.extend_from_slice(msg.as_bytes());
        Bytes::from(rest)
    };
    Ok((whole, Some(rest)))
}

/// The first header byte of a final text frame (FIN + opcode 1).
pub(crate) const TEXT: u8 = 0x81;
/// The first header byte of a close frame (FIN + opcode 8).
pub(crate) const CLOSE: u8 = 0x88;

/// Writes the header of an unmasked (server) frame of `len` bytes whose first byte is `first`
/// ([`TEXT`], [`CLOSE`]) into `out`; returns its length (2, 4 or 10 bytes, RFC 6455 section
/// 5.2).
pub(crate) fn frame_header(out: &mut [u8; 10], first: u8, len: usize) -> usize {
    out[0] = first;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}
