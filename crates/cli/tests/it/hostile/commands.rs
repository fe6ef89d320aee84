//! Hostile JSON commands and channel ids, after authentication (H31..H44).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::{assert_still_serving, expect_error, server};
use crate::util::*;

#[tokio::test]
async fn h31_json_nested_10000_levels_gets_bad_request_without_overflowing_the_stack() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    expect_error(&mut c, &"[".repeat(10_000), "bad_request").await;
    expect_error(
        &mut c,
        &format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        "bad_request",
    )
    .await;
    expect_error(&mut c, &"{\"a\":".repeat(10_000), "bad_request").await;
    let deep_ref = format!(
        r#"{{"type":"ping","ref":{}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let m = expect_error(&mut c, &deep_ref, "bad_request").await;
    assert!(m.get("ref").is_none(), "{m}");
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h32_huge_numbers_get_bad_request_or_a_rounded_ref() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = expect_error(&mut c, r#"{"type":"ping","ref":1e400}"#, "bad_request").await;
    assert!(m.get("ref").is_none(), "{m}");
    let huge = format!(r#"{{"type":"ping","ref":{}}}"#, "9".repeat(400));
    expect_error(&mut c, &huge, "bad_request").await;
    // An integer past u64 is read as the nearest double and echoed as such.
    c.send_text(r#"{"type":"ping","ref":123456789012345678901234567890}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(m["type"], "pong", "{m}");
    assert_eq!(m["ref"].as_f64(), Some(1.234_567_890_123_456_8e29), "{m}");
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h33_duplicate_keys_the_last_one_wins_and_is_the_one_authorized() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    c.send_text(r#"{"type":"ping","type":"subscribe","channelId":"task:t_dup"}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["channelId"].as_str()),
        (Some("subscribed"), Some("task:t_dup")),
        "{m}"
    );
    c.send_text(r#"{"type":"subscribe","channelId":"org:o_2","channelId":"task:t_1"}"#)
        .await;
    let m = c.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["channelId"].as_str()),
        (Some("subscribed"), Some("task:t_1")),
        "{m}"
    );
    let m = expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"task:t_1","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(m["channelId"], "org:o_2", "{m}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h34_type_that_is_not_a_string_gets_bad_request_with_the_ref() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for ty in [r#"{"$ne":null}"#, r#"["ping"]"#, "1", "null", "true"] {
        let m = expect_error(
            &mut c,
            &format!(r#"{{"type":{ty},"ref":7}}"#),
            "bad_request",
        )
        .await;
        assert_eq!(m["ref"], 7, "{m}");
    }
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h35_ref_that_is_not_a_string_or_number_gets_bad_request_without_a_ref() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for r in [r#"{"a":1}"#, "[1]", "true"] {
        let m = expect_error(
            &mut c,
            &format!(r#"{{"type":"ping","ref":{r}}}"#),
            "bad_request",
        )
        .await;
        assert!(m.get("ref").is_none(), "{m}");
    }
    // `null` is an absent ref.
    c.send_text(r#"{"type":"ping","ref":null}"#).await;
    let m = c.recv().await;
    assert_eq!(m, json!({"type": "pong"}));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h36_60_kb_channel_id_gets_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let channel = format!("task:{}", "a".repeat(60_000));
    for ty in ["subscribe", "unsubscribe"] {
        let m = expect_error(
            &mut c,
            &json!({"type": ty, "channelId": channel}).to_string(),
            "invalid_channel",
        )
        .await;
        assert_eq!(m["channelId"], channel.as_str());
    }
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

/// Every channel id in `ids` gets `invalid_channel`, echoing the id, on subscribe.
async fn assert_invalid_channels(c: &mut Client, ids: &[String]) {
    for id in ids {
        let m = expect_error(
            c,
            &json!({"type": "subscribe", "channelId": id}).to_string(),
            "invalid_channel",
        )
        .await;
        assert_eq!(m["channelId"], id.as_str(), "{m}");
    }
}

#[tokio::test]
async fn h37_channel_ids_with_unicode_nul_control_or_space_get_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let ids = [
        "task:t_ü",
        "task:t\u{0}",
        "task:t_1\u{0}",
        "task:t_1\n",
        "task:\u{202e}1t",
        "task: t_1",
        " task:t_1",
        "task:t_1 ",
        "TASK:t_1",
        "tásk:t_1",
        "task:t\u{ff0e}1",
    ];
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.push(format!("task:{}", "a".repeat(129)));
    assert_invalid_channels(&mut c, &ids).await;
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h38_path_like_channel_ids_get_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let ids = [
        "task:..",
        "task:.",
        "task:../org:o_2",
        "task:a/../b",
        "org:o_1/..",
        "task:.hidden",
        "task:%2e%2e",
        "task:a\\b",
        "task:t_1:org:o_2",
        "org:o_1:x",
    ];
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_invalid_channels(&mut c, &ids).await;
    // Dots inside an id are just characters: a channel of this org like any other.
    assert_eq!(c.subscribe("task:a..b").await["type"], "subscribed");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h39_wildcard_and_empty_channel_ids_get_invalid_channel() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let ids = [
        "org:*", "*", "agent:*", "task:t_*", "*:*", ":", "", "task:", ":t_1", "task",
    ];
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_invalid_channels(&mut c, &ids).await;
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h40_since_with_negative_huge_or_mistyped_offsets() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for since in [
        r#"{"offset":-1,"epoch":"e_1"}"#,
        r#"{"offset":"1","epoch":"e_1"}"#,
        r#"{"offset":1e300,"epoch":"e_1"}"#,
        r#"{"offset":18446744073709551616,"epoch":"e_1"}"#,
        r#"{"offset":1}"#,
        r#"{"offset":1,"epoch":7}"#,
        r#""abc""#,
        "[1,2]",
    ] {
        let frame = format!(r#"{{"type":"subscribe","channelId":"task:t_1","since":{since}}}"#);
        expect_error(&mut c, &frame, "bad_request").await;
    }
    let m = c
        .request(json!({"type": "subscribe", "channelId": "task:t_1", "since": {"offset": u64::MAX, "epoch": "e_nope"}}))
        .await;
    assert_eq!(
        (m["type"].as_str(), m["recovered"].as_bool()),
        (Some("subscribed"), Some(false)),
        "{m}"
    );
    let m = c
        .request(json!({"type": "subscribe", "channelId": "task:t_2", "since": null}))
        .await;
    assert_eq!(m["type"], "subscribed", "{m}");
    assert!(m.get("recovered").is_none(), "{m}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h41_subscribe_flood_over_128_gets_too_many_subscriptions() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    // Paced under the command rate (100 a second): 90, a pause, then 40.
    let mut subscribed = 0;
    let mut refused = Vec::new();
    for batch in [0..90, 90..130] {
        if batch.start > 0 {
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        for i in batch.clone() {
            c.send(json!({"type": "subscribe", "channelId": format!("task:t_{i}"), "ref": i}))
                .await;
        }
        for _ in batch {
            let m = c.recv().await;
            match m["type"].as_str() {
                Some("subscribed") => subscribed += 1,
                _ => {
                    assert_eq!(m["code"], "too_many_subscriptions", "{m}");
                    refused.push(m["ref"].as_u64().unwrap());
                }
            }
        }
    }
    assert_eq!(subscribed, 128);
    assert_eq!(refused, [128, 129]);
    // A held channel can still be re-subscribed; a freed slot can be taken.
    assert_eq!(c.subscribe("task:t_0").await["type"], "subscribed");
    assert_eq!(
        c.request(json!({"type": "unsubscribe", "channelId": "task:t_1"}))
            .await["type"],
        "unsubscribed"
    );
    assert_eq!(c.subscribe("task:t_new").await["type"], "subscribed");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h42_ten_thousand_commands_as_fast_as_possible_close_with_4008() {
    let s = server().await;
    let c = s.client("u_1", "o_1").await;
    let (mut tx, mut rx) = c.ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..10_000 {
            let ping = json!({"type": "ping", "ref": i}).to_string();
            if tx.feed(Message::Text(ping.into())).await.is_err() {
                return;
            }
        }
        let _ = tx.flush().await;
    });
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        let m = timeout(WAIT, rx.next())
            .await
            .expect("a frame within the wait");
        match m {
            Some(Ok(Message::Text(t))) => {
                let m: Value = serde_json::from_str(&t).unwrap();
                match (m["type"].as_str(), m["code"].as_str()) {
                    (Some("pong"), _) => pongs += 1,
                    (Some("error"), Some("rate_limited")) => limited += 1,
                    _ => panic!("unexpected {m}"),
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before its close frame: {e}"),
            None => panic!("connection ended before its close frame"),
        }
    };
    assert_eq!(close, Some(4008));
    assert!(pongs >= 100, "the burst of 100 is served: {pongs}");
    assert!(
        (10..20).contains(&limited),
        "ten rate_limited answers, then 4008: {limited}"
    );
    assert!(pongs + limited < 10_000);
    let _ = timeout(WAIT, writer).await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h43_eleven_bad_commands_in_a_burst_close_with_1008() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for _ in 0..10 {
        expect_error(&mut c, "nonsense", "bad_request").await;
    }
    c.send_text("nonsense").await;
    assert_eq!(c.closed().await, Some(1008));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h44_non_objects_empty_frames_bom_unknown_fields_and_auth_again_get_bad_request() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for frame in [
        "",
        "null",
        r#""ping""#,
        "[]",
        "\u{feff}{\"type\":\"ping\"}",
        r#"{"type":"ping","extra":1}"#,
        r#"{"type":"PING"}"#,
        r#"{"type":"subscribe"}"#,
        &json!({"type": "auth", "token": token("u_1", "o_1")}).to_string(),
    ] {
        let m = expect_error(&mut c, frame, "bad_request").await;
        assert!(
            !m["message"].as_str().unwrap().contains("eyJ"),
            "no token echoed: {m}"
        );
    }
    c.assert_alive().await;
    assert_still_serving(&s).await;
}
