//! Hostile input at the HTTP handshake (H01..H16, H77): raw TCP, hand-written HTTP.

use std::time::{Duration, Instant};

use super::raw::{
    Answer, Raw, WS_KEY, assert_refused, exchange, request, upgrade, with_raw_header,
};
use super::{ALLOWED_ORIGIN, HANDSHAKE_TIMEOUT, assert_still_serving, server};
use crate::util::*;

#[tokio::test]
async fn h01_garbage_bytes_instead_of_http_get_400_and_a_close() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let mut garbage: Vec<u8> = (0..2048u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    garbage[0] = 0xff;
    garbage.extend_from_slice(b"\r\n\r\n");
    r.send_in_background(garbage);
    assert_eq!(r.answer().await.status(), Some(400));
    assert!(r.until_closed(WAIT).await.is_some(), "closed after the 400");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h02_http2_prior_knowledge_preface_is_closed_without_an_answer() {
    let s = server().await;
    let a = exchange(
        s.addr,
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"[..],
    )
    .await;
    assert!(matches!(a, Answer::Closed), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h03_http_1_0_upgrade_gets_400() {
    let s = server().await;
    let req = upgrade("/api/ws", &[]).replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_refused(&exchange(s.addr, req).await, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h04_missing_or_empty_sec_websocket_key_gets_400() {
    let s = server().await;
    let base = [
        "GET /api/ws HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ];
    assert_refused(&exchange(s.addr, request(&base)).await, 400, "bad_request");
    let mut empty = base.to_vec();
    empty.push("Sec-WebSocket-Key: ");
    assert_refused(&exchange(s.addr, request(&empty)).await, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h05_invalid_sec_websocket_key_gets_400() {
    let s = server().await;
    for key in [
        "x",
        "not base64!!",
        "dGhlIHNhbXBsZQ==",
        "dGhlIHNhbXBsZSBub25jZSBub25jZQ==",
    ] {
        let req = upgrade("/api/ws", &[]).replace(WS_KEY, key);
        assert_refused(&exchange(s.addr, req).await, 400, "bad_request");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h06_sec_websocket_version_8_gets_400() {
    let s = server().await;
    for version in ["8", "", "13, 8", "14"] {
        let req = upgrade("/api/ws", &[]).replace(
            "Sec-WebSocket-Version: 13",
            &format!("Sec-WebSocket-Version: {version}"),
        );
        assert_refused(&exchange(s.addr, req).await, 400, "bad_request");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h06b_unsupported_version_refusal_names_version_13() {
    let s = server().await;
    let req =
        upgrade("/api/ws", &[]).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let a = exchange(s.addr, req).await;
    let Answer::Http { head, .. } = &a else {
        panic!("expected an HTTP answer, got {a:?}")
    };
    let named = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.eq_ignore_ascii_case("sec-websocket-version") && v.trim() == "13"
        })
    });
    assert!(named, "{head}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h07_post_to_the_websocket_endpoint_gets_405() {
    let s = server().await;
    let req = upgrade("/api/ws", &[]).replacen("GET", "POST", 1);
    assert_eq!(exchange(s.addr, req).await.status(), Some(405));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h08_plain_get_without_upgrade_headers_gets_426() {
    let s = server().await;
    let req = request(&["GET /api/ws HTTP/1.1", "Host: 127.0.0.1"]);
    assert_refused(&exchange(s.addr, req).await, 426, "upgrade_required");
    let req = upgrade("/api/ws", &[]).replace("Upgrade: websocket", "Upgrade: h2c");
    assert_refused(&exchange(s.addr, req).await, 426, "upgrade_required");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h09_request_head_over_16_kib_gets_431_before_any_token_work() {
    let s = server().await;
    // A valid token in the query: were it looked at, the answer would be 101.
    let target = format!("/api/ws?token={}", token("u_1", "o_1"));
    let pad = "a".repeat(20 * 1024);
    let a = exchange(s.addr, upgrade(&target, &[("X-Pad", &pad)])).await;
    assert_eq!(a.status(), Some(431), "{a:?}");
    assert_eq!(s.node.open_connections(), 0);
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h10_url_over_10_kib_gets_414_before_any_token_work() {
    let s = server().await;
    let target = format!(
        "/api/ws?token={}&pad={}",
        token("u_1", "o_1"),
        "a".repeat(11 * 1024)
    );
    assert_refused(
        &exchange(s.addr, upgrade(&target, &[])).await,
        414,
        "url_too_long",
    );
    assert_eq!(s.node.open_connections(), 0);
    assert_still_serving(&s).await;
}

/// `r`, opened at `start`, is dropped without an answer within 2 s, once the handshake timeout
/// has passed.
async fn assert_dropped_at_handshake_timeout(r: &mut Raw, start: Instant, what: &str) {
    let got = r
        .until_closed(Duration::from_secs(2))
        .await
        .unwrap_or_else(|| panic!("{what} is dropped within 2 s"));
    let waited = start.elapsed();
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        waited >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "{waited:?}"
    );
}

#[tokio::test]
async fn h11_slowloris_head_is_dropped_after_the_handshake_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    r.drip(
        upgrade("/api/ws", &[]).into_bytes(),
        Duration::from_millis(50),
    );
    assert_dropped_at_handshake_timeout(&mut r, start, "the slowloris").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h12_connection_that_sends_nothing_is_dropped_after_the_handshake_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    assert_dropped_at_handshake_timeout(&mut r, start, "a silent connection").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h13_origin_not_on_the_allowlist_gets_403() {
    let s = server().await;
    let target = format!("/api/ws?token={}", token("u_1", "o_1"));
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
        "https://APP.example",
        "http://app.example",
        "https://app.example/",
    ] {
        let a = exchange(s.addr, upgrade(&target, &[("Origin", origin)])).await;
        assert_refused(&a, 403, "forbidden_origin");
    }
    // An Origin that is not visible ASCII is not on the list either.
    let a = exchange(
        s.addr,
        with_raw_header(upgrade(&target, &[]), b"Origin: https://app.example\xff"),
    )
    .await;
    assert_refused(&a, 403, "forbidden_origin");
    let a = exchange(s.addr, upgrade(&target, &[("Origin", ALLOWED_ORIGIN)])).await;
    assert_eq!(a.status(), Some(101), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h14_100_kb_query_token_gets_431() {
    let s = server().await;
    let target = format!("/api/ws?token={}", "A".repeat(100 * 1024));
    let a = exchange(s.addr, upgrade(&target, &[])).await;
    assert_eq!(a.status(), Some(431), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h15_query_token_with_invalid_percent_encoding_gets_401() {
    let s = server().await;
    let good = token("u_1", "o_1");
    for t in [
        "%zz".to_owned(),
        "%".to_owned(),
        "%4".to_owned(),
        "%ff%fe%00".to_owned(),
        "%e2%82".to_owned(),
        String::new(),
        format!("{}%{}", &good[..10], &good[10..]),
        format!("%00{good}"),
    ] {
        let a = exchange(s.addr, upgrade(&format!("/api/ws?token={t}"), &[])).await;
        assert_refused(&a, 401, "unauthorized");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h16_connections_abandoned_mid_handshake_do_not_hurt_others() {
    let s = server().await;
    // 100 heads cut in the middle and left open, 50 full upgrades (with a valid token) whose
    // socket is dropped before the 101 is read, and 50 that hang up after a few bytes.
    let mut open = Vec::new();
    for _ in 0..100 {
        let mut r = Raw::connect(s.addr).await;
        assert!(
            r.send(b"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgr")
                .await
        );
        open.push(r);
    }
    let bearer = format!("Bearer {}", token("u_abandon", "o_1"));
    for _ in 0..50 {
        let mut r = Raw::connect(s.addr).await;
        assert!(
            r.send(upgrade("/api/ws", &[("Authorization", &bearer)]).as_bytes())
                .await
        );
    }
    for _ in 0..50 {
        let mut r = Raw::connect(s.addr).await;
        assert!(r.send(b"GET /api/ws HT").await);
    }
    assert_still_serving(&s).await;
    drop(open);
    // Every slot the abandoned upgrades took is freed.
    let deadline = Instant::now() + WAIT;
    while s.node.open_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} connections still held",
            s.node.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h77_more_than_100_header_fields_get_431() {
    let s = server().await;
    let pads: Vec<(String, String)> = (0..120)
        .map(|i| (format!("X-Pad-{i}"), "a".to_owned()))
        .collect();
    let pads: Vec<(&str, &str)> = pads.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let target = format!("/api/ws?token={}", token("u_1", "o_1"));
    assert_eq!(
        exchange(s.addr, upgrade(&target, &pads)).await.status(),
        Some(431)
    );
    assert_still_serving(&s).await;
}
