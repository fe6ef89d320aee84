//! Hostile input (issue 3): bad bytes at every surface — the HTTP handshake, WebSocket frames,
//! JSON commands, channel ids, tokens and the publish API. Every case asserts the exact answer (a
//! status and `error`, an `error` reply or a close code), never a panic and never a hang (every
//! wait is bounded), and then that the server still serves a fresh client
//! ([`assert_still_serving`]). Cases are numbered H01.. in their test names; docs/security.md
//! lists each with its input and expected answer, and the two must stay in step.
//!
//! Handshakes and frames are written by hand on a raw `TcpStream` ([`Raw`](raw::Raw)), so the
//! tests can send what no well-behaved client library would.
//!
//! The cases live by surface: [`handshake`], [`frames`], [`commands`] (JSON commands and channel
//! ids), [`tokens`] and [`publish`]; [`raw`] holds the hand-written HTTP and WebSocket helpers,
//! and this module the server and the checks they share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cortex_realtime::Config;
use serde_json::Value;
use tokio::time::timeout;

use crate::util::*;

mod raw;

mod commands;
mod frames;
mod handshake;
mod publish;
mod tokens;

/// The one browser origin the hostile server allows.
const ALLOWED_ORIGIN: &str = "https://app.example";
/// The handshake (request head) deadline of the hostile server.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// The publish body deadline of the hostile server.
const BODY_TIMEOUT: Duration = Duration::from_millis(500);

/// The test config with an Origin allowlist and short handshake and body deadlines.
fn hostile_config() -> Config {
    let mut c = config();
    c.allowed_origins = vec![ALLOWED_ORIGIN.into()];
    c.limits.handshake_timeout = HANDSHAKE_TIMEOUT;
    c.limits.body_timeout = BODY_TIMEOUT;
    c
}

async fn server() -> TestServer {
    TestServer::with(hostile_config()).await
}

/// A fresh client connects, subscribes, and receives an event published over HTTP: whatever the
/// case before did, the server still serves others.
async fn assert_still_serving(s: &TestServer) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let channel = format!("task:alive-{n}");
    let check = async {
        let mut c = s.client("u_alive", "o_alive").await;
        let m = c.subscribe(&channel).await;
        assert_eq!(m["type"], "subscribed", "{m}");
        let (status, body) = s.publish(event("o_alive", &[&channel], n)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["recipients"], 1, "{body}");
        let m = c.recv().await;
        assert_eq!(m["channelId"], channel.as_str(), "{m}");
        assert_eq!(m["payload"]["n"], n, "{m}");
    };
    timeout(Duration::from_secs(10), check)
        .await
        .expect("the server still serves a fresh client");
}

/// Sends `frame` and expects an `error` reply with `code`; returns it.
async fn expect_error(c: &mut Client, frame: &str, code: &str) -> Value {
    c.send_text(frame).await;
    let m = c.recv().await;
    assert_eq!(m["type"], "error", "{frame:.80}: {m:.300}");
    assert_eq!(m["code"], code, "{frame:.80}: {m:.300}");
    m
}
