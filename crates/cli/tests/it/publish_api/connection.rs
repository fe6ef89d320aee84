//! A publisher's connection (publisher.rs: keep-alive HTTP/1.1 without hyper), driven by hand.

use std::time::Duration;

use serde_json::{Value, json};

use super::{assert_error_body, subscriber};
use crate::util::*;

/// A publisher's TCP connection driven by hand.
struct RawPublisher {
    tcp: tokio::net::TcpStream,
    read: Vec<u8>,
}

impl RawPublisher {
    async fn connect(s: &TestServer) -> RawPublisher {
        RawPublisher {
            tcp: tokio::net::TcpStream::connect(s.addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(bytes).await.expect("the server reads");
    }

    /// The next response: status, head, body (by `Content-Length`); `None` at end of stream.
    async fn response(&mut self) -> Option<(u16, String, String)> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.read[..end + 4].to_vec()).unwrap();
                let (status, length) = parse_head(&head);
                let total = end + 4 + length.unwrap_or(0);
                if self.read.len() >= total {
                    let body = String::from_utf8(self.read[end + 4..total].to_vec()).unwrap();
                    self.read.drain(..total);
                    return Some((status, head, body));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("an answer within the wait")
                .unwrap_or(0);
            if n == 0 {
                assert!(self.read.is_empty(), "cut short: {:?}", self.read);
                return None;
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Publishes event `n` on `task:t_1` of `o_1`; returns its id.
    async fn publish(&mut self, n: u64) -> String {
        self.send(publish_request(&event("o_1", &["task:t_1"], n), "").as_bytes())
            .await;
        self.accepted().await
    }

    /// The next response, which must be a 202; returns the event's id.
    async fn accepted(&mut self) -> String {
        let (status, head, body) = self.response().await.expect("an answer");
        assert_eq!(status, 202, "{head}{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["id"].as_str().unwrap().to_owned()
    }
}

/// A publish request with the key, `extra` header lines and `body`.
fn publish_request(body: &Value, extra: &str) -> String {
    let body = body.to_string();
    format!(
        "POST /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {PUBLISH_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn pipelined_publishes_on_one_connection_are_answered_and_delivered_in_order() {
    let s = TestServer::start().await;
    let mut sub = subscriber(&s, "o_1", &["task:t_1"]).await;
    let mut p = RawPublisher::connect(&s).await;
    let all: String = (0..20)
        .map(|n| publish_request(&event("o_1", &["task:t_1"], n), ""))
        .collect();
    p.send(all.as_bytes()).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(p.accepted().await);
    }
    for (n, id) in ids.iter().enumerate() {
        let ev = sub.recv().await;
        assert_eq!(
            (&ev["id"], &ev["payload"]["n"]),
            (&json!(id), &json!(n)),
            "{ev}"
        );
    }
}

#[tokio::test]
async fn a_publish_head_and_body_in_pieces_are_put_together() {
    let s = TestServer::start().await;
    let mut sub = subscriber(&s, "o_1", &["task:t_1"]).await;
    let mut p = RawPublisher::connect(&s).await;
    let req = publish_request(&event("o_1", &["task:t_1"], 7), "");
    let head_end = req.find("\r\n\r\n").unwrap();
    for piece in [
        &req[..20],
        &req[20..head_end],
        &req[head_end..head_end + 10],
        &req[head_end + 10..],
    ] {
        p.send(piece.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let id = p.accepted().await;
    assert_eq!(sub.recv().await["id"], json!(id));
}

#[tokio::test]
async fn a_publishers_connection_hands_other_requests_to_the_router_and_errors_keep_their_words() {
    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    // An invalid event is answered on the same road, and the connection stays.
    p.send(publish_request(&json!({"orgId": "o_1", "type": "no.such"}), "").as_bytes())
        .await;
    let (status, _, body) = p.response().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_error_body(&serde_json::from_str(&body).unwrap());
    // Another route, then a publish without the key: hyper's answers, on the same connection.
    p.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (status, _, body) = p.response().await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let no_key = publish_request(&event("o_1", &["task:t_1"], 2), "")
        .replace(&format!("Authorization: Bearer {PUBLISH_KEY}\r\n"), "");
    p.send(no_key.as_bytes()).await;
    let (status, _, body) = p.response().await.unwrap();
    assert_eq!(status, 401, "{body}");
    p.publish(3).await;
}

#[tokio::test]
async fn a_publishers_connection_can_become_a_websocket() {
    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    let (ws, _) = tokio_tungstenite::client_async(
        s.ws_url(),
        tokio_tungstenite::MaybeTlsStream::Plain(p.tcp),
    )
    .await
    .expect("the upgrade on a publisher's connection");
    let mut c = Client { ws };
    c.send(json!({"type": "auth", "token": token("u_1", "o_1")}))
        .await;
    assert_eq!(c.recv().await["type"], "connected");
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    let (status, answer) = s.publish(event("o_1", &["task:t_1"], 2)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(c.recv().await["id"], answer["id"]);
}

#[tokio::test]
async fn connection_close_is_answered_with_it_then_the_connection_ends() {
    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    let req = publish_request(&event("o_1", &["task:t_1"], 1), "Connection: close\r\n");
    p.send(req.as_bytes()).await;
    let (status, head, _) = p.response().await.unwrap();
    assert_eq!(status, 202);
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(p.response().await.is_none(), "closed after the answer");
}

#[tokio::test]
async fn an_idle_publishers_connection_ends_after_the_handshake_timeout_and_at_the_drain() {
    let mut config = config();
    config.limits.handshake_timeout = Duration::from_millis(400);
    let s = TestServer::with(config).await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    let idle = std::time::Instant::now();
    assert!(p.response().await.is_none());
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    let s = TestServer::start().await;
    let mut p = RawPublisher::connect(&s).await;
    p.publish(1).await;
    let ended = tokio::spawn(async move { p.response().await.is_none() });
    s.shutdown().await;
    assert!(ended.await.unwrap(), "closed by the drain");
}
