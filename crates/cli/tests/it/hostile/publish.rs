//! Hostile input to the publish API (H57..H75, H78, H79): keys, bodies, limits and HTTP framing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::time::timeout;

use super::raw::{Raw, assert_refused, exchange, request};
use super::{BODY_TIMEOUT, assert_still_serving, server};
use crate::util::*;

/// POSTs `body` as it is with the publish key; (status, JSON body).
async fn publish_body(s: &TestServer, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let auth = format!("Bearer {PUBLISH_KEY}");
    timeout(WAIT, post_raw(&s.http("/api/events"), Some(&auth), body))
        .await
        .expect("a publish answer within the wait")
}

fn assert_publish_refused(answer: &(u16, Value), status: u16, error: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], error, "{}", answer.1);
}

/// A raw `POST /api/events` head with the publish key (unless `key` is `None`) and `extra`.
fn post_head(key: Option<&str>, extra: &[&str]) -> String {
    let mut lines = vec![
        "POST /api/events HTTP/1.1".to_owned(),
        "Host: 127.0.0.1".to_owned(),
    ];
    lines.push("Content-Type: application/json".to_owned());
    if let Some(k) = key {
        lines.push(format!("Authorization: Bearer {k}"));
    }
    lines.extend(extra.iter().map(|s| s.to_string()));
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    request(&lines)
}

#[tokio::test]
async fn h57_publish_without_a_key_gets_401() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let answer = timeout(WAIT, post_raw(&s.http("/api/events"), None, body))
        .await
        .unwrap();
    assert_publish_refused(&answer, 401, "unauthorized");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h58_publish_with_a_wrong_key_gets_401() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let near = &PUBLISH_KEY[..PUBLISH_KEY.len() - 1];
    for auth in [
        "Bearer wrong".to_owned(),
        format!("Bearer {near}"),
        format!("Bearer {PUBLISH_KEY}x"),
        format!("Basic {PUBLISH_KEY}"),
        PUBLISH_KEY.to_owned(),
        format!("Bearer {}", token("u_1", "o_1")),
    ] {
        let answer = timeout(
            WAIT,
            post_raw(&s.http("/api/events"), Some(&auth), body.clone()),
        )
        .await
        .unwrap();
        assert_publish_refused(&answer, 401, "unauthorized");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h59_publish_key_with_bearer_in_another_case_is_accepted() {
    let s = server().await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {PUBLISH_KEY}");
        let body = event("o_1", &["task:t_1"], 1).to_string();
        let (status, body) = timeout(WAIT, post_raw(&s.http("/api/events"), Some(&auth), body))
            .await
            .unwrap();
        assert_eq!(status, 202, "{scheme}: {body}");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h60_publish_body_that_is_not_json_gets_400_bad_json() {
    let s = server().await;
    for body in [
        "",
        "{",
        "not json",
        "{\"orgId\":\"o_1\",}",
        "\u{feff}{}",
        "{} {}",
    ] {
        assert_publish_refused(&publish_body(&s, body).await, 400, "bad_json");
    }
    assert_publish_refused(
        &publish_body(&s, vec![0xff, 0xfe, b'{', b'}']).await,
        400,
        "bad_json",
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h61_publish_body_null_gets_400_bad_request() {
    let s = server().await;
    for body in ["null", "true", "42", "\"event\""] {
        assert_publish_refused(&publish_body(&s, body).await, 400, "bad_request");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h62_publish_body_that_is_an_array_gets_400_bad_request() {
    let s = server().await;
    let body = json!([event("o_1", &["task:t_1"], 1)]).to_string();
    assert_publish_refused(&publish_body(&s, body).await, 400, "bad_request");
    assert_publish_refused(&publish_body(&s, "[]").await, 400, "bad_request");
    assert_still_serving(&s).await;
}

/// `depth` nested arrays around `0`.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn h63_payload_nested_100_levels_passes_through_and_200_levels_get_bad_json() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_deep").await;
    let body = format!(
        r#"{{"orgId":"o_1","type":"task.updated","channels":["task:t_deep"],"payload":{{"taskId":"t_deep","changes":{{}},"deep":{}}}}}"#,
        nested(100)
    );
    let (status, answer) = publish_body(&s, body).await;
    assert_eq!(status, 202, "{answer}");
    let m = c.recv().await;
    let expected: Value = serde_json::from_str(&nested(100)).unwrap();
    assert_eq!(m["payload"]["deep"], expected);
    let body = format!(
        r#"{{"orgId":"o_1","type":"task.updated","payload":{{"taskId":"t_deep","changes":{{}},"deep":{}}}}}"#,
        nested(200)
    );
    assert_publish_refused(&publish_body(&s, body).await, 400, "bad_json");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h64_payload_with_9000_fields_under_64_kib_is_accepted() {
    // 10,000 members cannot fit in 64 KiB (each needs at least `"k":0,`, 6 bytes, and only 93
    // one-character keys exist); 9,000 do.
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_wide").await;
    let alphabet: Vec<char> = (' '..='~').filter(|c| !matches!(c, '"' | '\\')).collect();
    let abc = &alphabet;
    // Every key of one, then two, then three characters.
    let one = abc.iter().map(|a| a.to_string());
    let two = abc
        .iter()
        .flat_map(|a| abc.iter().map(move |b| format!("{a}{b}")));
    let three = abc.iter().flat_map(|a| {
        abc.iter()
            .flat_map(move |b| abc.iter().map(move |c| format!("{a}{b}{c}")))
    });
    let keys: Vec<String> = one.chain(two).chain(three).take(9_000).collect();
    let fields: Vec<String> = keys.iter().map(|k| format!("\"{k}\":0")).collect();
    let body = format!(
        r#"{{"orgId":"o_1","type":"task.status_changed","channels":["task:t_wide"],"payload":{{"taskId":"t_1","oldStatus":"a","newStatus":"b",{}}}}}"#,
        fields.join(",")
    );
    assert!(body.len() < 64 * 1024, "{}", body.len());
    let (status, answer) = publish_body(&s, body).await;
    assert_eq!(status, 202, "{answer}");
    let m = c.recv().await;
    // 9,000 fields, the three required ones and the filled-in timestamp.
    assert_eq!(m["payload"].as_object().unwrap().len(), 9_004);
    assert_still_serving(&s).await;
}

/// A single-event body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let with = |pad: &str| {
        json!({
            "orgId": "o_1", "type": "task.status_changed", "channels": ["task:t_1"],
            "payload": {"taskId": "t_1", "oldStatus": "a", "newStatus": "b", "pad": pad},
        })
        .to_string()
    };
    let base = with("").len();
    let body = with(&"p".repeat(len - base));
    assert_eq!(body.len(), len);
    body
}

#[tokio::test]
async fn h65_publish_body_of_exactly_the_limit_is_accepted_and_one_byte_more_gets_413() {
    let s = server().await;
    let (status, answer) = publish_body(&s, body_of_len(64 * 1024)).await;
    assert_eq!(status, 202, "{answer}");
    assert_publish_refused(
        &publish_body(&s, body_of_len(64 * 1024 + 1)).await,
        413,
        "too_large",
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h66_batch_of_101_gets_400_batch_too_large() {
    let s = server().await;
    let events: Vec<Value> = (0..101).map(|i| event("o_1", &["task:t_1"], i)).collect();
    let body = json!({"events": events}).to_string();
    assert_publish_refused(&publish_body(&s, body).await, 400, "batch_too_large");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h67_batch_with_events_not_a_non_empty_array_gets_400_bad_request() {
    let s = server().await;
    let one = event("o_1", &["task:t_1"], 1);
    for body in [
        json!({"events": {}}),
        json!({"events": []}),
        json!({"events": null}),
        json!({"events": "x"}),
        json!({"events": [one], "orgId": "o_1"}),
        json!({"events": [null]}),
        json!({"events": [[one]]}),
    ] {
        assert_publish_refused(
            &publish_body(&s, body.to_string()).await,
            400,
            "bad_request",
        );
    }
    assert_still_serving(&s).await;
}

fn progress_event(progress: &str) -> String {
    format!(
        r#"{{"orgId":"o_1","type":"chief.task.progress","channels":["task:t_1"],"payload":{{"taskId":"t_1","progress":{progress},"message":"m"}}}}"#
    )
}

#[tokio::test]
async fn h68_progress_1e400_gets_bad_json_and_out_of_range_numbers_invalid_payload() {
    let s = server().await;
    assert_publish_refused(
        &publish_body(&s, progress_event("1e400")).await,
        400,
        "bad_json",
    );
    assert_publish_refused(
        &publish_body(&s, progress_event("-1e400")).await,
        400,
        "bad_json",
    );
    for p in [
        "1e308",
        "-1e-9",
        "100.0000001",
        "\"50\"",
        "true",
        "null",
        "[50]",
    ] {
        assert_publish_refused(
            &publish_body(&s, progress_event(p)).await,
            400,
            "invalid_payload",
        );
    }
    for p in ["0", "100", "1e2", "-0.0", "99.99999999999999999999"] {
        let (status, answer) = publish_body(&s, progress_event(p)).await;
        assert_eq!(status, 202, "{p}: {answer}");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h69_org_id_with_a_path_or_odd_characters_gets_400_invalid_org() {
    let s = server().await;
    let long = "o".repeat(129);
    for org in [
        "../",
        "o_1/../o_2",
        "..",
        "",
        "o 1",
        "ö",
        "o_1\u{0}",
        "*",
        "o_1:task",
        long.as_str(),
    ] {
        let mut body = event("o_1", &["task:t_1"], 1);
        body["orgId"] = json!(org);
        assert_publish_refused(
            &publish_body(&s, body.to_string()).await,
            400,
            "invalid_org",
        );
    }
    let mut body = event("o_1", &["task:t_1"], 1);
    body["orgId"] = json!(null);
    assert_publish_refused(
        &publish_body(&s, body.to_string()).await,
        400,
        "bad_request",
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h70_seventeen_channels_or_another_orgs_channel_get_400_invalid_channel() {
    let s = server().await;
    let names: Vec<String> = (0..17).map(|i| format!("task:t_{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let body = event("o_1", &names, 1).to_string();
    assert_publish_refused(&publish_body(&s, body).await, 400, "invalid_channel");
    let (status, answer) = publish_body(&s, event("o_1", &names[..16], 1).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    for bad in [&["org:o_2"][..], &[], &["task:../x"], &["org:*"]] {
        let body = event("o_1", bad, 1).to_string();
        assert_publish_refused(&publish_body(&s, body).await, 400, "invalid_channel");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h71_body_that_never_finishes_arriving_gets_400_after_the_body_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    assert!(
        r.send(post_head(Some(PUBLISH_KEY), &["Content-Length: 300"]).as_bytes())
            .await
    );
    r.drip(
        event("o_1", &["task:t_1"], 1).to_string().into_bytes(),
        Duration::from_millis(50),
    );
    let a = r.answer().await;
    assert_refused(&a, 400, "bad_request");
    let waited = start.elapsed();
    assert!(
        waited >= BODY_TIMEOUT && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h72_content_length_bigger_than_the_body_gets_400_after_the_body_timeout() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    let head = post_head(
        Some(PUBLISH_KEY),
        &[&format!("Content-Length: {}", body.len() + 1000)],
    );
    assert!(r.send(format!("{head}{body}").as_bytes()).await);
    let a = r.answer().await;
    assert_refused(&a, 400, "bad_request");
    assert!(start.elapsed() >= BODY_TIMEOUT, "{:?}", start.elapsed());
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h72b_content_length_bigger_than_the_body_then_eof_gets_400() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    let mut r = Raw::connect(s.addr).await;
    let head = post_head(
        Some(PUBLISH_KEY),
        &[&format!("Content-Length: {}", body.len() + 1000)],
    );
    assert!(r.send(format!("{head}{body}").as_bytes()).await);
    r.shutdown_write().await;
    let a = r.answer().await;
    assert_refused(&a, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h73_chunked_body_with_a_huge_chunk_size_gets_400_after_the_body_timeout() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let head = post_head(Some(PUBLISH_KEY), &["Transfer-Encoding: chunked"]);
    assert!(
        r.send(format!("{head}FFFFFFFFFFFFFFFF\r\n{{\"orgId\":").as_bytes())
            .await
    );
    assert_refused(&r.answer().await, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h73b_chunk_size_overflowing_64_bits_gets_400() {
    let s = server().await;
    let head = post_head(Some(PUBLISH_KEY), &["Transfer-Encoding: chunked"]);
    let a = exchange(
        s.addr,
        format!("{head}1FFFFFFFFFFFFFFFF\r\n{{}}\r\n0\r\n\r\n"),
    )
    .await;
    assert_refused(&a, 400, "bad_request");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h74_chunked_body_streaming_past_the_body_limit_gets_413_or_a_close() {
    let s = server().await;
    let head = post_head(Some(PUBLISH_KEY), &["Transfer-Encoding: chunked"]);
    let mut bytes = format!("{head}A00000\r\n").into_bytes();
    bytes.extend(std::iter::repeat_n(b' ', 7 * 1024 * 1024));
    let a = exchange(s.addr, bytes).await;
    // `Closed`: the server answered and closed while the test was still writing.
    if a.status().is_some() {
        assert_refused(&a, 413, "too_large");
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h75_publish_without_a_key_gets_401_at_once_without_reading_the_body() {
    let s = server().await;
    let mut r = Raw::connect(s.addr).await;
    let start = Instant::now();
    assert!(
        r.send(post_head(None, &["Content-Length: 100000"]).as_bytes())
            .await
    );
    assert_refused(&r.answer().await, 401, "unauthorized");
    assert!(start.elapsed() < BODY_TIMEOUT, "{:?}", start.elapsed());
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h78_request_smuggling_framing_is_refused() {
    let s = server().await;
    let body = event("o_1", &["task:t_1"], 1).to_string();
    // Two different Content-Lengths.
    let head = post_head(
        Some(PUBLISH_KEY),
        &[
            &format!("Content-Length: {}", body.len()),
            "Content-Length: 5",
        ],
    );
    let mut r = Raw::connect(s.addr).await;
    assert!(r.send(format!("{head}{body}").as_bytes()).await);
    let a = r.answer().await;
    assert_eq!(a.status(), Some(400), "{a:?}");
    assert!(
        r.until_closed(Duration::from_secs(2)).await.is_some(),
        "closed after the 400"
    );
    // Content-Length and chunked together: the chunked framing is used, and a smuggled second
    // request after the chunked body is never answered as a separate publish.
    let head = post_head(
        Some(PUBLISH_KEY),
        &["Content-Length: 4", "Transfer-Encoding: chunked"],
    );
    let smuggled = format!(
        "{head}0\r\n\r\nPOST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let mut r = Raw::connect(s.addr).await;
    assert!(r.send(smuggled.as_bytes()).await);
    let first = r.answer().await;
    assert_eq!(first.status(), Some(400), "{first:?}");
    assert!(
        r.until_closed(Duration::from_secs(2))
            .await
            .is_some_and(|rest| rest.is_empty()),
        "one answer, then the connection is closed"
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h79_idempotency_keys_are_bounded_and_never_cross_orgs() {
    let s = server().await;
    for key in [String::new(), "k".repeat(257)] {
        let mut body = event("o_1", &["task:t_1"], 1);
        body["idempotencyKey"] = json!(key);
        assert_publish_refused(
            &publish_body(&s, body.to_string()).await,
            400,
            "invalid_idempotency_key",
        );
    }
    // The same key in another org is another key: both are delivered.
    let mut c2 = s.client("u_2", "o_2").await;
    c2.subscribe("task:t_1").await;
    for org in ["o_1", "o_2"] {
        let mut body = event(org, &["task:t_1"], 1);
        body["idempotencyKey"] = json!("k".repeat(256));
        let (status, answer) = publish_body(&s, body.to_string()).await;
        assert_eq!(status, 202, "{answer}");
        assert!(answer.get("duplicate").is_none(), "{answer}");
    }
    assert_eq!(c2.recv().await["channelId"], "task:t_1");
    assert_still_serving(&s).await;
}
