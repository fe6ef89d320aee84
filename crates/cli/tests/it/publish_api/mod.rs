//! `POST /api/events` (CONTRACT.md section 7) and in-process publishing, end to end: real HTTP
//! in, real WebSocket subscribers out.
//!
//! The cases live by concern: [`delivery`] (what an accepted event answers and where and in
//! which order it arrives), [`validation`] (the event catalogue, refused values and bodies, the
//! publish key and the size limit), [`batches`] (batches and idempotency keys), [`in_process`]
//! (publishing from inside the process) and [`connection`] (a publisher's keep-alive connection);
//! this module holds the helpers they share.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::util::*;

mod batches;
mod connection;
mod delivery;
mod in_process;
mod validation;

/// One HTTP client for many publishes (keeps the connection alive).
struct Publisher {
    http: reqwest::Client,
    url: String,
}

impl Publisher {
    fn new(s: &TestServer) -> Publisher {
        Publisher {
            http: reqwest::Client::new(),
            url: s.http("/api/events"),
        }
    }

    async fn post(&self, body: &Value) -> (u16, Value) {
        try_publish_with(&self.http, &self.url, PUBLISH_KEY, body)
            .await
            .expect("publish request")
    }

    /// Publishes and asserts 202; returns the answer.
    async fn accepted(&self, body: &Value) -> Value {
        let (status, answer) = self.post(body).await;
        assert_eq!(status, 202, "expected 202 for {body}: {answer}");
        answer
    }

    /// Publishes and asserts 400 with a JSON `{error, message}`; returns `error`.
    async fn refused(&self, body: &Value) -> String {
        let (status, answer) = self.post(body).await;
        assert_eq!(status, 400, "expected 400 for {body}: {answer}");
        assert_error_body(&answer);
        answer["error"].as_str().unwrap().to_owned()
    }
}

/// An error answer is exactly `{"error": "...", "message": "..."}` with both non-empty.
fn assert_error_body(answer: &Value) {
    let obj = answer
        .as_object()
        .unwrap_or_else(|| panic!("error body is not a JSON object: {answer}"));
    assert!(
        obj["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert!(
        obj["message"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert_eq!(obj.len(), 2, "only error and message: {answer}");
}

/// Publishes a marker event on `channel` and asserts it is the next thing `c` receives: proof
/// that nothing published before it reached `c`.
async fn barrier(p: &Publisher, c: &mut Client, org: &str, channel: &str) -> Value {
    let answer = p
        .accepted(&json!({
            "orgId": org,
            "type": "task.deleted",
            "payload": {"taskId": "barrier"},
            "channels": [channel],
        }))
        .await;
    let ev = c.recv().await;
    assert_eq!(
        ev["id"], answer["id"],
        "expected the barrier event, got {ev}"
    );
    ev
}

/// A client of `org` subscribed to `channels`.
async fn subscriber(s: &TestServer, org: &str, channels: &[&str]) -> Client {
    let mut c = s.client("u_sub", org).await;
    for ch in channels {
        let r = c.subscribe(ch).await;
        assert_eq!(r["type"], "subscribed", "{r}");
    }
    c
}

fn is_utc_rfc3339_near_now(s: &str) -> bool {
    let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) else {
        return false;
    };
    let skew = (OffsetDateTime::now_utc() - t).abs();
    s.ends_with('Z') && skew < time::Duration::seconds(30)
}
