//! Hostile WebSocket frames (H17..H30), hand-encoded on a raw socket after a valid handshake.

use super::raw::{BINARY, CLOSE, CONT, FIN, MASK, PING, RSV1, Raw, Seen, TEXT, frame, text};
use super::{assert_still_serving, server};
use crate::util::*;

#[tokio::test]
async fn h17_binary_frame_after_auth_gets_bad_request_and_the_connection_stays() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    assert!(
        r.send(&frame(FIN | BINARY, br#"{"type":"ping"}"#, true))
            .await
    );
    match r.next().await {
        Seen::Text(m) => {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["code"], "bad_request", "{m}");
            assert!(m.get("ref").is_none(), "{m}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    r.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h18_frame_over_64_kib_is_closed_with_1009() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    let big = format!(r#"{{"type":"ping","ref":"{}"}}"#, "a".repeat(70_000));
    r.send_in_background(text(&big));
    assert_eq!(r.ending().await, Seen::Close(Some(1009)));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h19_fragmented_message_over_64_kib_is_closed_with_1009() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    let part = vec![b'a'; 16 * 1024];
    let mut bytes = frame(TEXT, &part, true);
    for i in 0..4 {
        let fin = if i == 3 { FIN } else { 0 };
        bytes.extend(frame(fin | CONT, &part, true));
    }
    r.send_in_background(bytes);
    assert_eq!(r.ending().await, Seen::Close(Some(1009)));
    assert_still_serving(&s).await;
}

/// Opens a raw WebSocket, writes `bytes` and asserts that the connection ends with `want`.
async fn assert_ends(s: &TestServer, bytes: &[u8], want: Seen, what: &str) {
    let mut r = Raw::websocket(s).await;
    assert!(r.send(bytes).await, "{what}");
    assert_eq!(r.ending().await, want, "{what}");
}

#[tokio::test]
async fn h20_frame_header_claiming_2_pow_63_bytes_is_closed_with_1009_at_once() {
    let s = server().await;
    let mut bytes = vec![FIN | TEXT, 0x80 | 127];
    bytes.extend(0x7fff_ffff_ffff_ffffu64.to_be_bytes());
    bytes.extend(MASK);
    bytes.extend(b"{\"type\":");
    assert_ends(&s, &bytes, Seen::Close(Some(1009)), "2^63").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h21_invalid_utf8_in_a_text_frame_drops_the_connection() {
    let s = server().await;
    let bad = b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\xc3\"}";
    assert_ends(&s, &frame(FIN | TEXT, bad, true), Seen::Dropped, "utf-8").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h22_unmasked_client_frame_drops_the_connection() {
    let s = server().await;
    let unmasked = frame(FIN | TEXT, br#"{"type":"ping"}"#, false);
    assert_ends(&s, &unmasked, Seen::Dropped, "unmasked").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h23_reserved_opcodes_drop_the_connection() {
    let s = server().await;
    for opcode in [0x3, 0x7, 0xb, 0xf] {
        let bytes = frame(FIN | opcode, b"x", true);
        assert_ends(&s, &bytes, Seen::Dropped, &format!("opcode {opcode:#x}")).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h24_rsv_bits_without_an_extension_drop_the_connection() {
    let s = server().await;
    for rsv in [RSV1, 0x20, 0x10] {
        let bytes = frame(FIN | rsv | TEXT, br#"{"type":"ping"}"#, true);
        assert_ends(&s, &bytes, Seen::Dropped, &format!("rsv {rsv:#x}")).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h25_control_frame_over_125_bytes_drops_the_connection() {
    let s = server().await;
    let big_ping = frame(FIN | PING, &[b'p'; 126], true);
    assert_ends(&s, &big_ping, Seen::Dropped, "126-byte ping").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h26_continuation_without_a_start_or_a_fragmented_ping_drops_the_connection() {
    let s = server().await;
    let lone_continuation = frame(FIN | CONT, br#"{"type":"ping"}"#, true);
    assert_ends(&s, &lone_continuation, Seen::Dropped, "continuation").await;
    assert_ends(
        &s,
        &frame(PING, b"half", true),
        Seen::Dropped,
        "fragmented ping",
    )
    .await;
    // A new text message while a fragmented one is unfinished.
    let mut bytes = frame(TEXT, b"{\"type\":", true);
    bytes.extend(text(r#"{"type":"ping"}"#));
    assert_ends(&s, &bytes, Seen::Dropped, "text inside a fragment").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h27_ping_flood_is_answered_and_the_connection_stays() {
    let s = server().await;
    let mut r = Raw::websocket(&s).await;
    let mut bytes = Vec::new();
    for i in 0..500u32 {
        bytes.extend(frame(FIN | PING, &i.to_be_bytes(), true));
    }
    assert!(r.send(&bytes).await);
    // Pings are not commands: no rate_limited, no close; the connection still works.
    r.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h28_close_frame_with_an_invalid_code_is_answered_with_1002() {
    let s = server().await;
    for code in [0u16, 999, 1005, 1006, 1015, 2999, 5000] {
        let close = frame(FIN | CLOSE, &code.to_be_bytes(), true);
        assert_ends(&s, &close, Seen::Close(Some(1002)), &format!("code {code}")).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h29_client_close_1000_is_answered_with_a_close() {
    let s = server().await;
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend(b"bye");
    let close = frame(FIN | CLOSE, &payload, true);
    assert_ends(&s, &close, Seen::Close(Some(1000)), "close 1000").await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h30_malformed_close_frames_drop_the_connection() {
    let s = server().await;
    // A one-byte close payload, and a close reason that is not UTF-8.
    for payload in [vec![0x03], vec![0x03, 0xe8, 0xff, 0xfe]] {
        let close = frame(FIN | CLOSE, &payload, true);
        assert_ends(&s, &close, Seen::Dropped, &format!("{payload:?}")).await;
    }
    assert_still_serving(&s).await;
}
