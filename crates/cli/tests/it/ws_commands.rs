//! Commands and their replies (CONTRACT.md section 3): subscribe, unsubscribe, refresh, ping,
//! `ref` echoes, every error code, and the closes that repeated bad or excessive commands earn.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::unix_now;
use cortex_realtime::Config;
use cortex_realtime::mint_hs256;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// Asserts an `error` reply with `code`, a message, and (when given) the channel and ref.
fn assert_error(m: &Value, code: &str, channel: Option<&str>, r#ref: Option<Value>) {
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], code, "{m}");
    assert!(
        m["message"].as_str().is_some_and(|s| !s.is_empty()),
        "message: {m}"
    );
    match channel {
        Some(c) => assert_eq!(m["channelId"], c, "{m}"),
        None => assert!(m.get("channelId").is_none(), "no channelId expected: {m}"),
    }
    match r#ref {
        Some(r) => assert_eq!(m["ref"], r, "{m}"),
        None => assert!(m.get("ref").is_none(), "no ref expected: {m}"),
    }
}

fn unix_of(rfc3339: &Value) -> i64 {
    let s = rfc3339.as_str().expect("a string timestamp");
    OffsetDateTime::parse(s, &Rfc3339)
        .unwrap_or_else(|e| panic!("{s} is not RFC 3339: {e}"))
        .unix_timestamp()
}

/// Sends every frame in one write, without reading in between.
async fn burst(c: &mut Client, frames: impl IntoIterator<Item = String>) {
    for f in frames {
        // The server may close mid-burst; later writes failing is expected then.
        if c.ws.feed(Message::Text(f.into())).await.is_err() {
            return;
        }
    }
    let _ = c.ws.flush().await;
}

fn with_limits(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = config();
    f(&mut c);
    c
}

// ---------------------------------------------------------------------------------------------
// subscribe

#[tokio::test]
async fn subscribe_replies_subscribed_with_offset_0_and_an_epoch_and_no_recovered() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c.subscribe("task:t_9").await;
    assert_eq!(m["type"], "subscribed", "{m}");
    assert_eq!(m["channelId"], "task:t_9");
    assert_eq!(m["offset"], 0);
    let epoch = m["epoch"].as_str().expect("epoch is a string");
    assert!(epoch.starts_with("e_") && epoch.len() > 2, "epoch {epoch}");
    assert_eq!(
        keys(&m),
        set(&["type", "channelId", "offset", "epoch"]),
        "{m}"
    );
}

#[tokio::test]
async fn subscribe_reports_the_latest_offset_of_a_channel_with_events() {
    let s = TestServer::start().await;
    let mut first = s.client("u_1", "o_1").await;
    let epoch = first.subscribe("task:t_9").await["epoch"].clone();
    for n in 1..=3 {
        assert_eq!(s.publish(event("o_1", &["task:t_9"], n)).await.0, 202);
    }
    let mut late = s.client("u_2", "o_1").await;
    let m = late.subscribe("task:t_9").await;
    assert_eq!(m["offset"], 3, "{m}");
    assert_eq!(m["epoch"], epoch);
    assert_eq!(s.publish(event("o_1", &["task:t_9"], 4)).await.0, 202);
    assert_eq!(
        late.recv().await["offset"],
        4,
        "the next event has offset + 1"
    );
}

#[tokio::test]
async fn subscribe_with_since_replies_with_recovered() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let first = c.subscribe("task:t_9").await;
    let epoch = first["epoch"].clone();

    // `since` at the latest offset of the current epoch: nothing missed, recovered.
    let m = c
        .request(
            json!({"type":"subscribe","channelId":"task:t_9","since":{"offset":0,"epoch":epoch}}),
        )
        .await;
    assert_eq!(m["type"], "subscribed", "{m}");
    assert_eq!(m["recovered"], true, "{m}");
    assert_eq!(m["epoch"], epoch);
    assert_eq!(m["offset"], 0);

    // Another epoch: history was lost, not recovered.
    let other = json!({"type":"subscribe","channelId":"project:p_4","since":{"offset":3,"epoch":"e_000000000000"}});
    let m = c.request(other).await;
    assert_eq!(m["type"], "subscribed", "{m}");
    assert_eq!(m["recovered"], false, "{m}");
    assert_eq!(m["offset"], 0);
    assert!(m["epoch"].as_str().unwrap().starts_with("e_"));
    assert_eq!(
        keys(&m),
        set(&["type", "channelId", "offset", "epoch", "recovered"]),
        "{m}"
    );
    c.assert_alive().await;
}

#[tokio::test]
async fn subscribing_twice_replies_twice_and_delivers_each_event_once() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let a = c.subscribe("task:t_9").await;
    let b = c.subscribe("task:t_9").await;
    assert_eq!(a["type"], "subscribed");
    assert_eq!(b["type"], "subscribed");
    assert_eq!(a["epoch"], b["epoch"]);
    assert_eq!(a["offset"], b["offset"]);
    let (status, body) = s.publish(event("o_1", &["task:t_9"], 1)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recipients"], 1, "{body}");
    let got = c.barrier().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["channelId"], "task:t_9");
    assert_eq!(got[0]["offset"], 1);
    // One unsubscribe undoes both subscribes.
    assert_eq!(
        c.request(json!({"type":"unsubscribe","channelId":"task:t_9"}))
            .await["type"],
        "unsubscribed"
    );
    assert_eq!(
        s.publish(event("o_1", &["task:t_9"], 2)).await.1["recipients"],
        0
    );
    assert!(c.barrier().await.is_empty());
}

#[tokio::test]
async fn event_on_two_subscribed_channels_arrives_once_per_channel_with_its_own_offset() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let task_epoch = c.subscribe("task:t_9").await["epoch"].clone();
    let project_epoch = c.subscribe("project:p_4").await["epoch"].clone();
    // Put the two channels at different offsets first.
    assert_eq!(s.publish(event("o_1", &["task:t_9"], 1)).await.0, 202);
    assert_eq!(c.recv().await["offset"], 1);

    let (status, body) = s
        .publish(event("o_1", &["task:t_9", "project:p_4"], 2))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recipients"], 1, "one connection: {body}");
    let got = c.barrier().await;
    assert_eq!(got.len(), 2, "{got:?}");
    let task = got
        .iter()
        .find(|e| e["channelId"] == "task:t_9")
        .expect("on task:t_9");
    let project = got
        .iter()
        .find(|e| e["channelId"] == "project:p_4")
        .expect("on project:p_4");
    assert_eq!(task["offset"], 2);
    assert_eq!(task["epoch"], task_epoch);
    assert_eq!(project["offset"], 1);
    assert_eq!(project["epoch"], project_epoch);
    assert_eq!(task["id"], body["id"], "the same event keeps its id");
    assert_eq!(project["id"], body["id"]);
    for e in [task, project] {
        assert_eq!(e["type"], "task.status_changed");
        assert_eq!(e["payload"]["n"], 2);
    }
}

// ---------------------------------------------------------------------------------------------
// unsubscribe

#[tokio::test]
async fn unsubscribe_replies_unsubscribed_and_stops_delivery() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_9").await;
    c.subscribe("project:p_4").await;
    let m = c
        .request(json!({"type":"unsubscribe","channelId":"task:t_9"}))
        .await;
    assert_eq!(m, json!({"type":"unsubscribed","channelId":"task:t_9"}));

    let (_, body) = s.publish(event("o_1", &["task:t_9"], 1)).await;
    assert_eq!(body["recipients"], 0, "{body}");
    let (_, body) = s.publish(event("o_1", &["project:p_4"], 2)).await;
    assert_eq!(body["recipients"], 1, "{body}");
    let got = c.barrier().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["channelId"], "project:p_4");
}

#[tokio::test]
async fn unsubscribe_when_not_subscribed_replies_unsubscribed() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c
        .request(json!({"type":"unsubscribe","channelId":"agent:never"}))
        .await;
    assert_eq!(m, json!({"type":"unsubscribed","channelId":"agent:never"}));
    // Twice in a row, too.
    c.subscribe("agent:a").await;
    for _ in 0..2 {
        let m = c
            .request(json!({"type":"unsubscribe","channelId":"agent:a"}))
            .await;
        assert_eq!(m, json!({"type":"unsubscribed","channelId":"agent:a"}));
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn resubscribing_after_unsubscribe_delivers_again_with_continuing_offsets() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let mut keeper = s.client("u_2", "o_1").await;
    keeper.subscribe("task:t_9").await;
    c.subscribe("task:t_9").await;
    c.request(json!({"type":"unsubscribe","channelId":"task:t_9"}))
        .await;
    s.publish(event("o_1", &["task:t_9"], 1)).await;
    assert!(c.barrier().await.is_empty());
    let m = c.subscribe("task:t_9").await;
    assert_eq!(m["offset"], 1, "{m}");
    s.publish(event("o_1", &["task:t_9"], 2)).await;
    let got = c.barrier().await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["offset"], 2);
}

// ---------------------------------------------------------------------------------------------
// ref echoes

#[tokio::test]
async fn string_and_number_refs_are_echoed_on_every_reply() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    for r in [json!("r-1"), json!(7), json!(0), json!(2.5), json!("")] {
        let m = c
            .request(json!({"type":"subscribe","channelId":"task:t_9","ref":r}))
            .await;
        assert_eq!(m["type"], "subscribed", "{m}");
        assert_eq!(m["ref"], r, "subscribed: {m}");

        let m = c
            .request(json!({"type":"unsubscribe","channelId":"task:t_9","ref":r}))
            .await;
        assert_eq!(
            m,
            json!({"type":"unsubscribed","channelId":"task:t_9","ref":r})
        );

        let m = c.request(json!({"type":"ping","ref":r})).await;
        assert_eq!(m, json!({"type":"pong","ref":r}));

        let m = c
            .request(json!({"type":"refresh","token":token("u_1", "o_1"),"ref":r}))
            .await;
        assert_eq!(m["type"], "refreshed", "{m}");
        assert_eq!(m["ref"], r, "refreshed: {m}");

        let m = c
            .request(json!({"type":"subscribe","channelId":"nope:x","ref":r}))
            .await;
        assert_error(&m, "invalid_channel", Some("nope:x"), Some(r.clone()));

        let m = c
            .request(json!({"type":"subscribe","channelId":"org:o_2","ref":r}))
            .await;
        assert_error(&m, "forbidden", Some("org:o_2"), Some(r.clone()));

        let m = c
            .request(json!({"type":"refresh","token":"garbage","ref":r}))
            .await;
        assert_error(&m, "invalid_token", None, Some(r.clone()));

        let m = c.request(json!({"type":"whatever","ref":r})).await;
        assert_error(&m, "bad_request", None, Some(r.clone()));
    }
}

#[tokio::test]
async fn replies_without_a_ref_carry_no_ref_key() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    assert_eq!(
        c.request(json!({"type":"ping"})).await,
        json!({"type":"pong"})
    );
    let m = c.subscribe("task:t_9").await;
    assert!(m.get("ref").is_none(), "{m}");
    let m = c
        .request(json!({"type":"refresh","token":token("u_1", "o_1")}))
        .await;
    assert_eq!(keys(&m), set(&["type", "expiresAt"]), "{m}");
}

#[tokio::test]
async fn websocket_ping_frame_is_answered_with_a_pong_frame() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    c.ws.send(Message::Ping(b"hello".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a pong within the wait");
    assert_eq!(&pong[..], b"hello");
    c.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// bad_request

#[tokio::test]
async fn frames_that_are_not_json_objects_get_bad_request_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    for frame in [
        "not json",
        "{\"type\":",
        "[]",
        "[{\"type\":\"ping\"}]",
        "42",
        "\"ping\"",
        "null",
    ] {
        c.send_text(frame).await;
        let m = c.recv().await;
        assert_error(&m, "bad_request", None, None);
        c.assert_alive().await;
    }
}

#[tokio::test]
async fn malformed_commands_get_bad_request_with_their_ref_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let frames = [
        json!({"type":"dance","ref":1}),
        json!({"type":7,"ref":2}),
        json!({"ref":3}),
        json!({"type":"subscribe","ref":4}),
        json!({"type":"subscribe","channelId":42,"ref":5}),
        json!({"type":"subscribe","channelId":"task:t_9","since":{"offset":"x","epoch":"e_1"},"ref":6}),
        json!({"type":"refresh","ref":7}),
        json!({"type":"unsubscribe","channelId":null,"ref":8}),
    ];
    for f in frames {
        let r = f["ref"].clone();
        let m = c.request(f.clone()).await;
        assert_eq!(m["code"], "bad_request", "frame {f}: {m}");
        assert_error(&m, "bad_request", None, Some(r));
        c.assert_alive().await;
    }
    // A bad `subscribe` did not subscribe anything.
    assert_eq!(
        s.publish(event("o_1", &["task:t_9"], 1)).await.1["recipients"],
        0
    );
}

#[tokio::test]
async fn bad_request_message_never_echoes_a_token_sent_in_the_wrong_place() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let secret = token("u_9", "o_9");
    let m = c
        .request(json!({"type":"subscribe","channelId":{"token":secret}}))
        .await;
    assert_eq!(m["code"], "bad_request", "{m}");
    assert!(!m.to_string().contains(&secret), "{m}");
    let m = c.request(json!({"type":"refresh","token":[secret]})).await;
    assert_eq!(m["code"], "bad_request", "{m}");
    assert!(!m.to_string().contains(&secret), "{m}");
}

#[tokio::test]
async fn second_auth_frame_gets_bad_request_and_does_not_change_the_identity() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c
        .request(json!({"type":"auth","token":token("u_2", "o_2"),"ref":"again"}))
        .await;
    assert_error(&m, "bad_request", None, Some(json!("again")));
    // Still o_1: its own org channel works, o_2's is forbidden.
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    assert_eq!(c.subscribe("org:o_2").await["code"], "forbidden");
    c.assert_alive().await;
}

#[tokio::test]
async fn binary_frame_after_auth_gets_bad_request_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    c.ws.send(Message::Binary(br#"{"type":"ping"}"#.to_vec().into()))
        .await
        .expect("send");
    assert_error(&c.recv().await, "bad_request", None, None);
    c.assert_alive().await;
}

#[tokio::test]
async fn more_than_ten_bad_commands_in_a_burst_close_with_1008() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    burst(&mut c, (0..20).map(|i| format!("not json {i}"))).await;
    let mut errors = 0;
    let code = loop {
        match c.next().await {
            Ok(m) => {
                assert_eq!(m["code"], "bad_request", "{m}");
                errors += 1;
            }
            Err(Ended::Closed(code)) => break code,
            Err(Ended::Gone) => break None,
        }
    };
    assert_eq!(code, Some(1008));
    assert!(
        (10..20).contains(&errors),
        "{errors} bad_request replies before the close"
    );
}

#[tokio::test]
async fn a_few_bad_commands_spread_out_do_not_close() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    // Ten in a burst use the allowance; it comes back at one a second.
    burst(&mut c, (0..10).map(|i| format!("bad {i}"))).await;
    for _ in 0..10 {
        assert_eq!(c.recv().await["code"], "bad_request");
    }
    c.assert_alive().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send_text("bad again").await;
    assert_eq!(c.recv().await["code"], "bad_request");
    c.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// invalid_channel

const BAD_CHANNELS: &[&str] = &[
    "",
    "task",
    "task:",
    ":t_9",
    "nope:x",
    "Task:t_9",
    "task:_t",
    "task:-t",
    "task:.t",
    "task:a b",
    "task:t/9",
    "task:t:9",
    "task:é",
    "agent:*",
    " task:t_9",
];

#[tokio::test]
async fn subscribe_to_a_malformed_channel_gets_invalid_channel() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let too_long = format!("task:{}", "a".repeat(129));
    for (i, ch) in BAD_CHANNELS
        .iter()
        .copied()
        .chain([too_long.as_str()])
        .enumerate()
    {
        let m = c
            .request(json!({"type":"subscribe","channelId":ch,"ref":i}))
            .await;
        assert_error(&m, "invalid_channel", Some(ch), Some(json!(i)));
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn unsubscribe_from_a_malformed_channel_gets_invalid_channel() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let too_long = format!("agent:{}", "a".repeat(129));
    for ch in BAD_CHANNELS.iter().copied().chain([too_long.as_str()]) {
        let m = c
            .request(json!({"type":"unsubscribe","channelId":ch}))
            .await;
        assert_error(&m, "invalid_channel", Some(ch), None);
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn channel_ids_at_the_edges_of_the_grammar_are_valid() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let longest = format!("swarm:{}", "a".repeat(128));
    for ch in [
        "agent:my-coder-agent",
        "swarm:s",
        "project:P.4_x-y",
        "task:9",
        "org:o_1",
        longest.as_str(),
    ] {
        let m = c.subscribe(ch).await;
        assert_eq!(m["type"], "subscribed", "{ch}: {m}");
        assert_eq!(m["channelId"], ch);
    }
}

// ---------------------------------------------------------------------------------------------
// forbidden

#[tokio::test]
async fn subscribe_to_another_orgs_channel_gets_forbidden() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c
        .request(json!({"type":"subscribe","channelId":"org:o_2","ref":"x"}))
        .await;
    assert_error(&m, "forbidden", Some("org:o_2"), Some(json!("x")));
    c.assert_alive().await;
}

#[tokio::test]
async fn subscribe_outside_the_channels_allowlist_gets_forbidden() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["project:p_4"]))
        .await;
    let m = c.subscribe("task:t_9").await;
    assert_error(&m, "forbidden", Some("task:t_9"), None);
    c.assert_alive().await;
    assert_eq!(c.subscribe("project:p_4").await["type"], "subscribed");
}

// ---------------------------------------------------------------------------------------------
// too_many_subscriptions

#[tokio::test]
async fn subscription_past_the_limit_gets_too_many_subscriptions() {
    let s = TestServer::with(with_limits(|c| c.limits.max_subscriptions = 3)).await;
    let mut c = s.client("u_1", "o_1").await;
    for ch in ["task:t_1", "task:t_2", "task:t_3"] {
        assert_eq!(c.subscribe(ch).await["type"], "subscribed");
    }
    let m = c
        .request(json!({"type":"subscribe","channelId":"task:t_4","ref":4}))
        .await;
    assert_error(
        &m,
        "too_many_subscriptions",
        Some("task:t_4"),
        Some(json!(4)),
    );
    c.assert_alive().await;
    // An existing subscription may be renewed at the limit.
    assert_eq!(c.subscribe("task:t_2").await["type"], "subscribed");
    // The refused channel delivers nothing.
    assert_eq!(
        s.publish(event("o_1", &["task:t_4"], 1)).await.1["recipients"],
        0
    );
    // Unsubscribing frees a place.
    c.request(json!({"type":"unsubscribe","channelId":"task:t_1"}))
        .await;
    assert_eq!(c.subscribe("task:t_4").await["type"], "subscribed");
    assert_eq!(
        c.subscribe("task:t_5").await["code"],
        "too_many_subscriptions"
    );
}

// ---------------------------------------------------------------------------------------------
// rate_limited and 4008

fn slow_rate() -> Config {
    with_limits(|c| c.limits.commands_per_sec = 5)
}

#[tokio::test]
async fn burst_over_the_command_rate_gets_rate_limited_errors_and_the_connection_stays() {
    let s = TestServer::with(slow_rate()).await;
    let mut c = s.client("u_1", "o_1").await;
    burst(
        &mut c,
        (0..8).map(|i| json!({"type":"ping","ref":i}).to_string()),
    )
    .await;
    let (mut pongs, mut limited) = (0, 0);
    for i in 0..8 {
        let m = c.recv().await;
        assert_eq!(
            m["ref"], i,
            "each reply echoes its command's ref in order: {m}"
        );
        match m["type"].as_str() {
            Some("pong") => pongs += 1,
            _ => {
                assert_error(&m, "rate_limited", None, Some(json!(i)));
                limited += 1;
            }
        }
    }
    assert!(pongs >= 5, "the first five fit the rate: {pongs} pongs");
    assert!(limited >= 1, "no rate_limited error");
    // The allowance comes back at five a second.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.assert_alive().await;
}

#[tokio::test]
async fn flood_over_the_command_rate_is_closed_with_4008() {
    let s = TestServer::with(slow_rate()).await;
    let mut c = s.client("u_1", "o_1").await;
    burst(
        &mut c,
        (0..60).map(|i| json!({"type":"ping","ref":i}).to_string()),
    )
    .await;
    let (mut pongs, mut limited) = (0, 0);
    let code = loop {
        match c.next().await {
            Ok(m) if m["type"] == "pong" => pongs += 1,
            Ok(m) => {
                assert_eq!(m["code"], "rate_limited", "{m}");
                limited += 1;
            }
            Err(Ended::Closed(code)) => break code,
            Err(Ended::Gone) => break None,
        }
    };
    assert_eq!(code, Some(4008));
    assert!(pongs >= 5, "{pongs} pongs");
    assert!(limited >= 1, "rate_limited errors come before the close");
    assert!(pongs + limited < 60, "closed before the end of the flood");
}

// ---------------------------------------------------------------------------------------------
// refresh: invalid_token, token_mismatch, refreshed

#[tokio::test]
async fn refresh_with_an_invalid_token_gets_invalid_token_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let wrong_key = mint_hs256("another-secret", "u_1", "o_1", unix_now() + 3600, None);
    let expired = expired_token("u_1", "o_1");
    for (i, bad) in ["garbage", "", "a.b.c", wrong_key.as_str(), expired.as_str()]
        .into_iter()
        .enumerate()
    {
        let m = c
            .request(json!({"type":"refresh","token":bad,"ref":i}))
            .await;
        assert_error(&m, "invalid_token", None, Some(json!(i)));
        if !bad.is_empty() {
            assert!(
                !m.to_string().contains(bad),
                "the error echoes the token: {m}"
            );
        }
        c.assert_alive().await;
    }
    // The connection keeps its old token and everything it allows.
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
}

#[tokio::test]
async fn refresh_with_another_sub_or_org_gets_token_mismatch_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    for (i, other) in [
        token("u_2", "o_1"),
        token("u_1", "o_2"),
        token("u_2", "o_2"),
    ]
    .iter()
    .enumerate()
    {
        let m = c
            .request(json!({"type":"refresh","token":other,"ref":i}))
            .await;
        assert_error(&m, "token_mismatch", None, Some(json!(i)));
        c.assert_alive().await;
    }
    // Still u_1 in o_1.
    assert_eq!(c.subscribe("org:o_2").await["code"], "forbidden");
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
}

#[tokio::test]
async fn refresh_with_a_valid_token_replies_refreshed_with_the_new_expiry() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let exp = unix_now() + 7200;
    let m = c
        .request(json!({"type":"refresh","token":token_expiring("u_1", "o_1", exp),"ref":"r"}))
        .await;
    assert_eq!(m["type"], "refreshed", "{m}");
    assert_eq!(m["ref"], "r");
    assert_eq!(unix_of(&m["expiresAt"]), exp, "{m}");
    c.assert_alive().await;
}

#[tokio::test]
async fn refreshed_connection_outlives_its_old_tokens_expiry() {
    let s = TestServer::with(with_limits(|c| c.auth.leeway_secs = 0)).await;
    let mut c = s
        .client_with_token(&token_expiring("u_1", "o_1", unix_now() + 1))
        .await;
    c.subscribe("task:t_9").await;
    let exp = unix_now() + 3600;
    let m = c
        .request(json!({"type":"refresh","token":token_expiring("u_1", "o_1", exp)}))
        .await;
    assert_eq!(m["type"], "refreshed", "{m}");
    assert_eq!(unix_of(&m["expiresAt"]), exp);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.assert_alive().await;
    // Subscriptions survive a refresh.
    assert_eq!(
        s.publish(event("o_1", &["task:t_9"], 1)).await.1["recipients"],
        1
    );
    assert_eq!(c.barrier().await.len(), 1);
}

#[tokio::test]
async fn failed_refresh_keeps_the_old_expiry() {
    let s = TestServer::with(with_limits(|c| c.auth.leeway_secs = 0)).await;
    let mut c = s
        .client_with_token(&token_expiring("u_1", "o_1", unix_now() + 1))
        .await;
    let m = c
        .request(json!({"type":"refresh","token":token_expiring("u_2", "o_1", unix_now() + 3600)}))
        .await;
    assert_eq!(m["code"], "token_mismatch", "{m}");
    assert_eq!(c.closed().await, Some(4002));
}
