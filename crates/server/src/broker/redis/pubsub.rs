//! One pub/sub connection to one Redis server, in RESP2: commands written, replies read one
//! at a time by the caller. Ours rather than redis-rs's because its pub/sub readers put every
//! message on an unbounded channel (a slow node would buffer without limit) and its Cluster
//! pub/sub resubscribes on its own; here nothing is read ahead of the caller, so a node that
//! falls behind leaves messages in the socket (TCP pushes back on Redis, which drops a pub/sub
//! client past its `client-output-buffer-limit`, a loss the node then sees and reconciles).
//! Bytes only: it knows nothing of orgs or events. Over TLS when the server's URL is
//! `rediss://` ([`Tls`]).

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::tls::Tls;

/// The largest message accepted (a publish body is far smaller).
const MAX_BULK: usize = 64 << 20;
/// The most elements in one reply (pub/sub replies have three or four).
const MAX_ITEMS: usize = 16;

/// A Redis server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// Reached over TLS (`rediss://`).
    pub(crate) tls: bool,
}

impl Server {
    /// `host:port`, as Redis names its nodes.
    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What Redis sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A message (`message` or `smessage`) on a channel.
    Message { channel: Vec<u8>, payload: Vec<u8> },
    /// A subscription confirmed (`subscribe`, `ssubscribe`).
    Subscribed(Vec<u8>),
    /// A subscription ended (`unsubscribe`, `sunsubscribe`; in a Cluster also when the
    /// channel's slot moved to another master).
    Unsubscribed(Vec<u8>),
    /// An error answer (e.g. `MOVED` to a sharded subscribe on the wrong master).
    Error(String),
    /// Anything else (a pong).
    Other,
}

enum Item {
    Bulk(Vec<u8>),
    Other,
}

/// The writing half.
pub(crate) struct Writer(Box<dyn AsyncWrite + Send + Unpin>);

/// The reading half.
pub(crate) struct Reader {
    r: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
    line: Vec<u8>,
}

/// Connects (over TLS with `tls` when `server` says so) and authenticates when `server` has
/// a password.
pub(crate) async fn connect(server: &Server, tls: Option<&Tls>) -> io::Result<(Writer, Reader)> {
    let stream = TcpStream::connect((server.host.as_str(), server.port)).await?;
    stream.set_nodelay(true)?;
    let (r, w): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match (server.tls, tls) {
        (false, _) => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        (true, Some(tls)) => {
            let (r, w) = tokio::io::split(tls.connect(&server.host, stream).await?);
            (Box::new(r), Box::new(w))
        }
        (true, None) => {
            return Err(io::Error::other(format!(
                "{}: TLS asked without its roots",
                server.addr()
            )));
        }
    };
    let (mut w, mut r) = (
        Writer(w),
        Reader {
            r: BufReader::with_capacity(64 * 1024, r),
            line: Vec::new(),
        },
    );
    if let Some(password) = &server.password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(user) = &server.username {
            args.push(user.as_bytes());
        }
        args.push(password.as_bytes());
        w.send(&args).await?;
        if let Reply::Error(e) = r.read().await? {
            return Err(io::Error::other(format!("redis AUTH refused: {e}")));
        }
    }
    Ok((w, r))
}

impl Writer {
    /// Sends one command.
    pub(crate) async fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.0.write_all(&buf).await?;
        // TLS holds records back until flushed.
        self.0.flush().await
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("redis pub/sub: {what}"))
}

impl Reader {
    /// Reads the next reply. Not cancel-safe: run it where it is never dropped mid-reply.
    pub(crate) async fn read(&mut self) -> io::Result<Reply> {
        let line = self.line().await?;
        match line.first() {
            Some(b'-') => Ok(Reply::Error(
                String::from_utf8_lossy(&line[1..]).into_owned(),
            )),
            Some(b'*') => {
                let n = number(&line[1..])?;
                if n < 0 {
                    return Ok(Reply::Other);
                }
                let n = usize::try_from(n).map_err(|_| bad("length"))?;
                if n > MAX_ITEMS {
                    return Err(bad("reply too long"));
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.item().await?);
                }
                Ok(classify(items))
            }
            Some(_) => {
                self.finish_scalar(line).await?;
                Ok(Reply::Other)
            }
            None => Err(bad("empty line")),
        }
    }

    async fn item(&mut self) -> io::Result<Item> {
        let line = self.line().await?;
        match line.first() {
            Some(b'$') => match self.bulk(&line).await? {
                Some(b) => Ok(Item::Bulk(b)),
                None => Ok(Item::Other),
            },
            Some(b':' | b'+' | b'-') => Ok(Item::Other),
            _ => Err(bad("unexpected nested reply")),
        }
    }

    async fn finish_scalar(&mut self, line: Vec<u8>) -> io::Result<()> {
        if line.first() == Some(&b'$') {
            self.bulk(&line).await?;
        }
        Ok(())
    }

    async fn bulk(&mut self, header: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let n = number(&header[1..])?;
        if n < 0 {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| bad("length"))?;
        if n > MAX_BULK {
            return Err(bad("message too large"));
        }
        let mut b = vec![0; n + 2];
        self.r.read_exact(&mut b).await?;
        if !b.ends_with(b"\r\n") {
            return Err(bad("bulk string not terminated"));
        }
        b.truncate(n);
        Ok(Some(b))
    }

    async fn line(&mut self) -> io::Result<Vec<u8>> {
        self.line.clear();
        let n = (&mut self.r)
            .take(64 * 1024)
            .read_until(b'\n', &mut self.line)
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(bad("line not terminated"));
        }
        let mut line = std::mem::take(&mut self.line);
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

fn number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad number"))
}

fn classify(items: Vec<Item>) -> Reply {
    let mut it = items.into_iter();
    let (Some(Item::Bulk(kind)), Some(Item::Bulk(channel))) = (it.next(), it.next()) else {
        return Reply::Other;
    };
    match kind.as_slice() {
        b"message" | b"smessage" => match it.next() {
            Some(Item::Bulk(payload)) => Reply::Message { channel, payload },
            _ => Reply::Other,
        },
        b"subscribe" | b"ssubscribe" => Reply::Subscribed(channel),
        b"unsubscribe" | b"sunsubscribe" => Reply::Unsubscribed(channel),
        _ => Reply::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn replies(bytes: &'static [u8]) -> Vec<io::Result<Reply>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(bytes).await.unwrap();
        });
        let server = Server {
            host: "127.0.0.1".into(),
            port: addr.port(),
            username: None,
            password: None,
            tls: false,
        };
        let (_w, mut r) = connect(&server, None).await.unwrap();
        let mut out = Vec::new();
        loop {
            let reply = r.read().await;
            let end = reply.is_err();
            out.push(reply);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn reads_messages_confirmations_and_errors_then_the_end() {
        let got = replies(
            b"*3\r\n$10\r\nssubscribe\r\n$2\r\nch\r\n:1\r\n\
              *3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhe\r\no\r\n\
              -MOVED 3999 127.0.0.1:7001\r\n\
              *3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:0\r\n",
        )
        .await;
        let ok: Vec<&Reply> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            ok,
            [
                &Reply::Subscribed(b"ch".to_vec()),
                &Reply::Message {
                    channel: b"ch".to_vec(),
                    payload: b"he\r\no".to_vec()
                },
                &Reply::Error("MOVED 3999 127.0.0.1:7001".into()),
                &Reply::Unsubscribed(b"ch".to_vec()),
            ]
        );
        assert_eq!(
            got.last().unwrap().as_ref().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn refuses_malformed_and_oversized_replies() {
        for bytes in [
            &b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$999999999999\r\n"[..],
            b"*99\r\n",
            b"*1\r\n*1\r\n:1\r\n",
            b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$2\r\nabcd\r\n",
        ] {
            let got = replies(bytes).await;
            let err = got.last().unwrap().as_ref().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bytes:?}: {err}");
        }
    }
}
