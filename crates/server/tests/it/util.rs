//! Shared helpers: a real server on 127.0.0.1:0, real WebSocket clients, real HTTP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cortex_realtime::auth::{KeySource, mint_hs256};
use cortex_realtime::server::unix_now;
use cortex_realtime::{Config, Node, Server};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// The HS256 secret of every test server.
pub const SECRET: &str = "test-secret-please-change";
/// The publish key of every test server.
pub const PUBLISH_KEY: &str = "test-publish-key";
/// How long a test waits for something that should happen at once.
pub const WAIT: Duration = Duration::from_secs(5);

/// A config with the test keys on 127.0.0.1:0.
pub fn config() -> Config {
    let mut c = Config::default();
    c.auth.keys = vec![KeySource::Secret(SECRET.into())];
    c.publish_keys = vec![PUBLISH_KEY.into()];
    c
}

/// A running server; dropping it stops it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(config()).await
    }

    pub async fn with(config: Config) -> TestServer {
        let server = Server::bind(config).await.expect("server starts");
        let addr = server.local_addr();
        let node = server.node();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            node,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/api/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts the drain and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("drains in time")
                .expect("task")
                .expect("serve");
        }
    }

    /// Connects with the token in the `auth` frame and reads `connected`.
    pub async fn client(&self, sub: &str, org: &str) -> Client {
        self.client_with_token(&token(sub, org)).await
    }

    pub async fn client_with_token(&self, token: &str) -> Client {
        let mut c = Client::connect(&self.ws_url()).await;
        c.send(json!({"type":"auth","token":token})).await;
        let m = c.recv().await;
        assert_eq!(m["type"], "connected", "{m}");
        c
    }

    /// Publishes one event body; returns (status, body).
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        publish_to(&self.http("/api/events"), PUBLISH_KEY, body).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn publish_to(url: &str, key: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("publish request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A token for `sub` in `org`, valid for an hour.
pub fn token(sub: &str, org: &str) -> String {
    mint_hs256(SECRET, sub, org, unix_now() + 3600, None)
}

/// A token limited to `channels` patterns.
pub fn token_for(sub: &str, org: &str, channels: &[&str]) -> String {
    let ch: Vec<String> = channels.iter().map(|s| s.to_string()).collect();
    mint_hs256(SECRET, sub, org, unix_now() + 3600, Some(&ch))
}

/// A valid `task.status_changed` body for `org` on the given channels.
pub fn event(org: &str, channels: &[&str], n: u64) -> Value {
    json!({
        "orgId": org,
        "type": "task.status_changed",
        "payload": {"taskId": "t_9", "oldStatus": "todo", "newStatus": "in_progress", "n": n},
        "channels": channels,
    })
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a read ended when a frame was expected.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Gone,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = connect_async(url).await.expect("websocket connects");
        Client { ws }
    }

    /// Connects over a socket with a tiny receive buffer: a client that does not read fills it
    /// at once, so the server's outbox for it grows.
    pub async fn connect_tiny(url: &str) -> Client {
        let addr: SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connects with extra request headers; returns the HTTP error status on refusal.
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                http_name(k),
                v.parse().expect("header value"),
            );
        }
        match connect_async(req).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_owned().into())).await.expect("send");
    }

    /// The next JSON message (skipping pings); panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(v) => v,
            Err(e) => panic!("expected a message, connection ended: {e:?}"),
        }
    }

    /// The next JSON message, or how the connection ended.
    pub async fn next(&mut self) -> Result<Value, Ended> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("JSON frame")),
                Some(Ok(Message::Close(f))) => return Err(Ended::Closed(f.map(|f: CloseFrame| u16::from(f.code)))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Gone),
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(Ended::Closed(c)) => return c,
                Err(Ended::Gone) => return None,
            }
        }
    }

    /// Nothing arrives for `d`.
    pub async fn silent_for(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("expected silence, got {t}");
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send(json!({"type":"subscribe","channelId":channel})).await;
        self.recv().await
    }
}

fn http_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap()
}
