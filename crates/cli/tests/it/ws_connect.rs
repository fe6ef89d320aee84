//! Connecting (CONTRACT.md section 2), connection limits and Origin (section 9), the close codes
//! of the connection's life (section 8): token transports, refusals before and after the upgrade,
//! auth timeout, frame size, token expiry and graceful shutdown.

use std::time::{Duration, Instant};

use crate::util::unix_now;
use cortex_realtime::Config;
use cortex_realtime::mint_hs256;
use futures_util::SinkExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// Checks a `connected` message for `sub` in `org` whose token expires at `exp`.
fn assert_connected(m: &Value, sub: &str, org: &str, exp: i64) {
    assert_eq!(m["type"], "connected", "{m}");
    let id = m["connectionId"]
        .as_str()
        .expect("connectionId is a string");
    assert!(id.starts_with("c_") && id.len() > 2, "connectionId {id}");
    assert_eq!(m["userId"], sub, "{m}");
    assert_eq!(m["orgId"], org, "{m}");
    let at = m["expiresAt"].as_str().expect("expiresAt is a string");
    let parsed = OffsetDateTime::parse(at, &Rfc3339)
        .unwrap_or_else(|e| panic!("expiresAt {at} is not RFC 3339: {e}"));
    assert_eq!(parsed.unix_timestamp(), exp, "expiresAt {at}");
}

fn query_url(s: &TestServer, token: &str) -> String {
    format!("{}?token={token}", s.ws_url())
}

/// A config whose connections are limited per user and per node.
fn limited(per_user: usize, per_node: usize) -> Config {
    let mut c = config();
    c.limits.connections_per_user = per_user;
    c.limits.connections_per_node = per_node;
    c
}

/// Connects with the token in the query string and reads `connected`.
async fn query_client(s: &TestServer, token: &str) -> Client {
    let mut c = Client::connect_with(&query_url(s, token), &[])
        .await
        .expect("the upgrade is accepted");
    assert_eq!(c.recv().await["type"], "connected");
    c
}

/// Keeps trying a query-token connection until one is accepted (a closed connection frees its
/// slot a moment after its close frame).
async fn query_client_eventually(s: &TestServer, token: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::connect_with(&query_url(s, token), &[]).await {
            Ok(mut c) => {
                assert_eq!(c.recv().await["type"], "connected");
                return c;
            }
            Err(status) => {
                assert_eq!(status, 429, "only the limit should refuse");
                assert!(Instant::now() < deadline, "the slot was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Closes a client and waits until the server has seen it go.
async fn hang_up(mut c: Client) {
    let _ = c.ws.close(None).await;
    let _ = c.closed().await;
}

/// Connects without a token, sends `frame` first and returns the close code.
async fn first_frame_closes_with(s: &TestServer, frame: Message) -> Option<u16> {
    let mut c = Client::connect(&s.ws_url()).await;
    c.ws.send(frame).await.expect("send");
    c.closed().await
}

/// A refusal before the upgrade: the status, a JSON `error`, and no trace of the token.
fn assert_refused(r: &RawResponse, status: u16, error: &str, token: &str) {
    assert!(
        r.head.starts_with(&format!("HTTP/1.1 {status} ")),
        "status line: {}",
        r.head
    );
    assert!(
        !r.head.to_ascii_lowercase().contains("sec-websocket-accept"),
        "no upgrade: {}",
        r.head
    );
    let body = r.json();
    assert_eq!(body["error"], error, "{body}");
    assert!(body["message"].is_string(), "{body}");
    if !token.is_empty() {
        assert!(
            !r.body.contains(token),
            "the body echoes the token: {}",
            r.body
        );
        assert!(
            !r.head.contains(token),
            "the head echoes the token: {}",
            r.head
        );
        // Not even a recognisable part of it: the signature is the secret-bearing third.
        let signature = token.rsplit('.').next().unwrap_or(token);
        assert!(
            !r.body.contains(signature),
            "the body echoes the signature: {}",
            r.body
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The three token transports.

#[tokio::test]
async fn query_token_connects_and_gets_connected_with_ids_and_expiry() {
    let s = TestServer::start().await;
    let exp = unix_now() + 3600;
    let token = token_expiring("u_1", "o_1", exp);
    let mut c = Client::connect_with(&query_url(&s, &token), &[])
        .await
        .expect("upgrade");
    let m = c.recv().await;
    assert_connected(&m, "u_1", "o_1", exp);
    c.assert_alive().await;
}

#[tokio::test]
async fn bearer_header_token_connects_and_gets_connected_with_ids_and_expiry() {
    let s = TestServer::start().await;
    let exp = unix_now() + 1800;
    let token = token_expiring("u_2", "o_7", exp);
    let auth = format!("Bearer {token}");
    let mut c = Client::connect_with(&s.ws_url(), &[("Authorization", &auth)])
        .await
        .expect("upgrade");
    let m = c.recv().await;
    assert_connected(&m, "u_2", "o_7", exp);
    c.assert_alive().await;
}

#[tokio::test]
async fn auth_frame_token_connects_and_gets_connected_with_ids_and_expiry() {
    let s = TestServer::start().await;
    let exp = unix_now() + 600;
    let mut c = Client::connect(&s.ws_url()).await;
    c.send(json!({"type":"auth","token":token_expiring("u_3", "o_1", exp)}))
        .await;
    let m = c.recv().await;
    assert_connected(&m, "u_3", "o_1", exp);
    c.assert_alive().await;
}

#[tokio::test]
async fn query_token_is_found_among_other_query_parameters() {
    let s = TestServer::start().await;
    let url = format!("{}?v=2&token={}&x=y", s.ws_url(), token("u_1", "o_1"));
    let mut c = Client::connect_with(&url, &[]).await.expect("upgrade");
    let m = c.recv().await;
    assert_eq!(m["type"], "connected", "{m}");
    assert_eq!(m["userId"], "u_1");
}

#[tokio::test]
async fn bearer_scheme_is_matched_case_insensitively() {
    // RFC 9110 section 11.1: the authentication scheme is case-insensitive.
    let s = TestServer::start().await;
    for scheme in ["bearer", "BEARER"] {
        let auth = format!("{scheme} {}", token("u_1", "o_1"));
        let mut c = Client::connect_with(&s.ws_url(), &[("Authorization", &auth)])
            .await
            .unwrap_or_else(|status| panic!("scheme {scheme}: refused with {status}"));
        assert_eq!(c.recv().await["type"], "connected");
    }
}

#[tokio::test]
async fn every_connection_gets_its_own_connection_id() {
    let s = TestServer::start().await;
    let mut ids = std::collections::HashSet::new();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&s.ws_url()).await;
        c.send(json!({"type":"auth","token":token("u_1", "o_1")}))
            .await;
        let m = c.recv().await;
        assert!(
            ids.insert(m["connectionId"].as_str().unwrap().to_owned()),
            "duplicate id {m}"
        );
        open.push(c);
    }
    assert_eq!(ids.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Refusals before the upgrade (transports 1 and 2): HTTP 401 with a JSON body.

#[tokio::test]
async fn bad_query_token_is_refused_with_401_unauthorized_without_echoing_it() {
    let s = TestServer::start().await;
    let wrong_key = mint_hs256("another-secret", "u_1", "o_1", unix_now() + 3600, None);
    for bad in ["garbage", "a.b.c", wrong_key.as_str()] {
        let r = raw_upgrade(s.addr, &format!("/api/ws?token={bad}"), &[]).await;
        assert_refused(&r, 401, "unauthorized", bad);
    }
}

#[tokio::test]
async fn empty_query_token_is_refused_with_401_unauthorized() {
    let s = TestServer::start().await;
    let r = raw_upgrade(s.addr, "/api/ws?token=", &[]).await;
    assert_refused(&r, 401, "unauthorized", "");
}

#[tokio::test]
async fn bad_bearer_token_is_refused_with_401_unauthorized_without_echoing_it() {
    let s = TestServer::start().await;
    let wrong_key = mint_hs256("another-secret", "u_1", "o_1", unix_now() + 3600, None);
    for bad in ["garbage", wrong_key.as_str()] {
        let r = raw_upgrade(
            s.addr,
            "/api/ws",
            &[("Authorization", &format!("Bearer {bad}"))],
        )
        .await;
        assert_refused(&r, 401, "unauthorized", bad);
    }
}

#[tokio::test]
async fn expired_query_token_is_refused_with_401_token_expired() {
    let s = TestServer::start().await;
    let expired = expired_token("u_1", "o_1");
    let r = raw_upgrade(s.addr, &format!("/api/ws?token={expired}"), &[]).await;
    assert_refused(&r, 401, "token_expired", &expired);
}

#[tokio::test]
async fn expired_bearer_token_is_refused_with_401_token_expired() {
    let s = TestServer::start().await;
    let expired = expired_token("u_1", "o_1");
    let r = raw_upgrade(
        s.addr,
        "/api/ws",
        &[("Authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_refused(&r, 401, "token_expired", &expired);
}

#[tokio::test]
async fn token_expired_within_the_leeway_is_still_accepted() {
    let s = TestServer::start().await;
    let exp = unix_now() - 5;
    let mut c = query_client(&s, &token_expiring("u_1", "o_1", exp)).await;
    c.assert_alive().await;
}

#[tokio::test]
async fn raw_upgrade_with_a_valid_query_token_switches_protocols() {
    let s = TestServer::start().await;
    let r = raw_upgrade(
        s.addr,
        &format!("/api/ws?token={}", token("u_1", "o_1")),
        &[],
    )
    .await;
    assert_eq!(r.status, 101, "{}", r.head);
    // RFC 6455's sample key gives this accept value.
    assert!(
        r.head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{}",
        r.head
    );
}

// ---------------------------------------------------------------------------------------------
// The auth frame (transport 3): close codes instead of HTTP statuses.

#[tokio::test]
async fn auth_frame_with_an_invalid_token_is_closed_with_4001() {
    let s = TestServer::start().await;
    let wrong_key = mint_hs256("another-secret", "u_1", "o_1", unix_now() + 3600, None);
    for bad in ["garbage", "", wrong_key.as_str()] {
        let frame = Message::Text(json!({"type":"auth","token":bad}).to_string().into());
        assert_eq!(
            first_frame_closes_with(&s, frame).await,
            Some(4001),
            "token {bad:?}"
        );
    }
}

#[tokio::test]
async fn auth_frame_with_an_expired_token_is_closed_with_4002() {
    let s = TestServer::start().await;
    let frame = Message::Text(
        json!({"type":"auth","token":expired_token("u_1", "o_1")})
            .to_string()
            .into(),
    );
    assert_eq!(first_frame_closes_with(&s, frame).await, Some(4002));
}

#[tokio::test]
async fn first_frame_other_than_auth_is_closed_with_4001() {
    let s = TestServer::start().await;
    let frames = [
        Message::Text(
            json!({"type":"subscribe","channelId":"task:t_9"})
                .to_string()
                .into(),
        ),
        Message::Text(json!({"type":"ping"}).to_string().into()),
        Message::Text(json!({"type":"auth"}).to_string().into()),
        Message::Text(json!({"type":"auth","token":42}).to_string().into()),
        Message::Text("not json".into()),
        Message::Text("[]".into()),
        Message::Binary(
            json!({"type":"auth","token":token("u_1", "o_1")})
                .to_string()
                .into_bytes()
                .into(),
        ),
    ];
    for frame in frames {
        let shown = format!("{frame:?}");
        assert_eq!(
            first_frame_closes_with(&s, frame).await,
            Some(4001),
            "first frame {shown}"
        );
    }
}

#[tokio::test]
async fn no_auth_frame_within_the_auth_timeout_is_closed_with_4003() {
    let mut cfg = config();
    cfg.limits.auth_timeout = Duration::from_millis(300);
    let s = TestServer::with(cfg).await;
    let started = Instant::now();
    let mut c = Client::connect(&s.ws_url()).await;
    assert_eq!(c.closed().await, Some(4003));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "closed too late: {waited:?}"
    );
}

#[tokio::test]
async fn websocket_pings_before_the_auth_frame_do_not_extend_the_auth_timeout() {
    let mut cfg = config();
    cfg.limits.auth_timeout = Duration::from_millis(300);
    let s = TestServer::with(cfg).await;
    let mut c = Client::connect(&s.ws_url()).await;
    for _ in 0..4 {
        c.ws.send(Message::Ping(Vec::new().into()))
            .await
            .expect("ping");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.closed().await, Some(4003));
}

#[tokio::test]
async fn auth_frame_within_the_auth_timeout_is_not_closed_by_it() {
    let mut cfg = config();
    cfg.limits.auth_timeout = Duration::from_millis(300);
    let s = TestServer::with(cfg).await;
    let mut c = s.client("u_1", "o_1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// Connection limits (section 9): 429 before the upgrade, 4029 after an auth frame.

#[tokio::test]
async fn third_connection_of_a_user_over_query_token_is_refused_with_429() {
    let s = TestServer::with(limited(2, 100)).await;
    let t = token("u_1", "o_1");
    let _a = query_client(&s, &t).await;
    let _b = query_client(&s, &t).await;
    assert_eq!(
        Client::connect_with(&query_url(&s, &t), &[]).await.err(),
        Some(429)
    );
    let r = raw_upgrade(s.addr, &format!("/api/ws?token={t}"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.head);
    assert!(
        !r.body.contains(&t),
        "the body echoes the token: {}",
        r.body
    );
}

#[tokio::test]
async fn third_connection_of_a_user_over_auth_frame_is_closed_with_4029() {
    let s = TestServer::with(limited(2, 100)).await;
    let _a = s.client("u_1", "o_1").await;
    let _b = s.client("u_1", "o_1").await;
    let mut c = Client::connect(&s.ws_url()).await;
    c.send(json!({"type":"auth","token":token("u_1", "o_1")}))
        .await;
    assert_eq!(c.closed().await, Some(4029));
}

#[tokio::test]
async fn user_limit_counts_each_user_within_its_org_separately() {
    let s = TestServer::with(limited(2, 100)).await;
    let _a = s.client("u_1", "o_1").await;
    let _b = query_client(&s, &token("u_1", "o_1")).await;
    // Another user, and the same user id in another org, are other users.
    let mut other = s.client("u_2", "o_1").await;
    other.assert_alive().await;
    let mut other_org = query_client(&s, &token("u_1", "o_2")).await;
    other_org.assert_alive().await;
}

#[tokio::test]
async fn user_slot_is_freed_when_one_of_its_connections_closes() {
    let s = TestServer::with(limited(2, 100)).await;
    let t = token("u_1", "o_1");
    let a = query_client(&s, &t).await;
    let _b = s.client("u_1", "o_1").await;
    assert_eq!(
        Client::connect_with(&query_url(&s, &t), &[]).await.err(),
        Some(429)
    );
    hang_up(a).await;
    let mut c = query_client_eventually(&s, &t).await;
    c.assert_alive().await;
    // And the limit holds again.
    assert_eq!(
        Client::connect_with(&query_url(&s, &t), &[]).await.err(),
        Some(429)
    );
}

#[tokio::test]
async fn node_limit_refuses_a_third_user_with_429_and_4029() {
    let s = TestServer::with(limited(100, 2)).await;
    let _a = query_client(&s, &token("u_1", "o_1")).await;
    let _b = s.client("u_2", "o_2").await;
    assert_eq!(
        Client::connect_with(&query_url(&s, &token("u_3", "o_1")), &[])
            .await
            .err(),
        Some(429)
    );
    let mut c = Client::connect(&s.ws_url()).await;
    c.send(json!({"type":"auth","token":token("u_4", "o_3")}))
        .await;
    assert_eq!(c.closed().await, Some(4029));
}

#[tokio::test]
async fn node_slot_is_freed_when_a_connection_closes() {
    let s = TestServer::with(limited(100, 2)).await;
    let a = s.client("u_1", "o_1").await;
    let _b = s.client("u_2", "o_1").await;
    let t3 = token("u_3", "o_1");
    assert_eq!(
        Client::connect_with(&query_url(&s, &t3), &[]).await.err(),
        Some(429)
    );
    hang_up(a).await;
    let mut c = query_client_eventually(&s, &t3).await;
    c.assert_alive().await;
    assert_eq!(
        Client::connect_with(&query_url(&s, &token("u_4", "o_1")), &[])
            .await
            .err(),
        Some(429)
    );
}

#[tokio::test]
async fn refused_auth_frames_do_not_hold_a_connection_slot() {
    let s = TestServer::with(limited(100, 1)).await;
    // Upgrades without a token take no slot until they authenticate, and a failed one none.
    for _ in 0..3 {
        let frame = Message::Text(json!({"type":"auth","token":"garbage"}).to_string().into());
        assert_eq!(first_frame_closes_with(&s, frame).await, Some(4001));
    }
    let mut c = s.client("u_1", "o_1").await;
    c.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// Origin (section 9).

fn with_origin() -> Config {
    let mut c = config();
    c.allowed_origins = vec!["https://app.example".into()];
    c
}

#[tokio::test]
async fn unlisted_origin_is_refused_with_403_before_the_upgrade() {
    let s = TestServer::with(with_origin()).await;
    let t = token("u_1", "o_1");
    let refused =
        Client::connect_with(&query_url(&s, &t), &[("Origin", "https://evil.example")]).await;
    assert_eq!(refused.err(), Some(403));
    // Also without a token (an auth-frame client), and with a look-alike origin.
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",
        "http://app.example",
    ] {
        let r = raw_upgrade(s.addr, "/api/ws", &[("Origin", origin)]).await;
        assert_eq!(r.status, 403, "origin {origin}: {}", r.head);
        assert!(
            !r.head.to_ascii_lowercase().contains("sec-websocket-accept"),
            "{}",
            r.head
        );
    }
}

#[tokio::test]
async fn listed_origin_is_upgraded() {
    let s = TestServer::with(with_origin()).await;
    let mut c = Client::connect_with(&s.ws_url(), &[("Origin", "https://app.example")])
        .await
        .expect("a listed Origin is upgraded");
    c.send(json!({"type":"auth","token":token("u_1", "o_1")}))
        .await;
    assert_eq!(c.recv().await["type"], "connected");
    c.assert_alive().await;
}

#[tokio::test]
async fn request_without_origin_is_upgraded_when_origins_are_listed() {
    let s = TestServer::with(with_origin()).await;
    let mut c = query_client(&s, &token("u_1", "o_1")).await;
    c.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// Not a WebSocket, too big a frame.

#[tokio::test]
async fn plain_get_without_upgrade_headers_gets_426() {
    let s = TestServer::start().await;
    let resp = reqwest::get(s.http("/api/ws")).await.expect("GET");
    assert_eq!(resp.status().as_u16(), 426);
    let resp = reqwest::get(s.http(&format!("/api/ws?token={}", token("u_1", "o_1"))))
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 426);
}

fn small_frames() -> Config {
    let mut c = config();
    c.limits.max_frame_bytes = 1024;
    c
}

#[tokio::test]
async fn frame_over_the_size_limit_after_auth_is_closed_with_1009() {
    let s = TestServer::with(small_frames()).await;
    let mut c = s.client("u_1", "o_1").await;
    // A frame just under the limit is fine (a bad_request, the connection stays).
    let under = json!({"type":"ping","pad":"x".repeat(900)}).to_string();
    assert!(under.len() < 1024);
    c.send_text(&under).await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.assert_alive().await;
    let over = json!({"type":"ping","pad":"x".repeat(2000)}).to_string();
    c.send_text(&over).await;
    assert_eq!(c.closed().await, Some(1009));
}

#[tokio::test]
async fn frame_over_the_size_limit_before_auth_is_closed_with_1009() {
    let s = TestServer::with(small_frames()).await;
    let frame = Message::Text(
        json!({"type":"auth","token":"x".repeat(2000)})
            .to_string()
            .into(),
    );
    assert_eq!(first_frame_closes_with(&s, frame).await, Some(1009));
}

// ---------------------------------------------------------------------------------------------
// Token expiry and shutdown.

#[tokio::test]
async fn connection_is_closed_with_4002_when_its_token_expires() {
    let mut cfg = config();
    cfg.auth.leeway_secs = 0;
    let s = TestServer::with(cfg).await;
    let exp = unix_now() + 1;
    let mut c = s
        .client_with_token(&token_expiring("u_1", "o_1", exp))
        .await;
    c.assert_alive().await;
    let started = Instant::now();
    assert_eq!(c.closed().await, Some(4002));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed late: {:?}",
        started.elapsed()
    );
    assert!(unix_now() >= exp, "closed before exp");
}

#[tokio::test]
async fn query_token_connection_is_also_closed_with_4002_when_it_expires() {
    let mut cfg = config();
    cfg.auth.leeway_secs = 0;
    let s = TestServer::with(cfg).await;
    let mut c = query_client(&s, &token_expiring("u_1", "o_1", unix_now() + 1)).await;
    assert_eq!(c.closed().await, Some(4002));
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001_and_completes() {
    let s = TestServer::start().await;
    let addr = s.addr;
    let mut clients = vec![
        s.client("u_1", "o_1").await,
        s.client("u_2", "o_2").await,
        query_client(&s, &token("u_3", "o_1")).await,
    ];
    let mut bearer = Client::connect_with(
        &s.ws_url(),
        &[("Authorization", &format!("Bearer {}", token("u_4", "o_1")))],
    )
    .await
    .expect("upgrade");
    assert_eq!(bearer.recv().await["type"], "connected");
    clients.push(bearer);
    for c in &mut clients {
        assert_eq!(c.subscribe("task:t_9").await["type"], "subscribed");
    }
    // A connection still waiting for its auth frame is closed as well.
    let mut waiting = Client::connect(&s.ws_url()).await;

    let started = Instant::now();
    let drain = tokio::spawn(s.shutdown());
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(1001));
    }
    assert_eq!(waiting.closed().await, Some(1001));
    tokio::time::timeout(WAIT, drain)
        .await
        .expect("shutdown completes")
        .expect("shutdown task");
    assert!(
        started.elapsed() < WAIT,
        "drain took {:?}",
        started.elapsed()
    );
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}
