//! What an accepted publish answers and how it is delivered: ids, timestamps, size, channels,
//! order, offsets and recipients.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Publisher, assert_error_body, barrier, is_utc_rfc3339_near_now, subscriber};
use crate::util::*;

// ---- accepted events ----

#[tokio::test]
async fn an_accepted_event_answers_202_with_id_channels_and_recipients_and_is_delivered_with_that_id()
 {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let body = json!({
        "orgId": "o_1",
        "type": "task.status_changed",
        "payload": {"taskId": "t_9", "oldStatus": "todo", "newStatus": "in_progress",
            "extra": {"nested": [1, 2, {"deep": null}]}, "note": "ünïcødé ✓", "big": 12345678901234i64},
        "channels": ["task:t_9"],
    });
    let answer = p.accepted(&body).await;
    let id = answer["id"].as_str().expect("id is a string");
    assert!(id.starts_with("evt_") && id.len() > 4, "{answer}");
    assert_eq!(answer["channels"], json!(["task:t_9"]));
    assert_eq!(answer["recipients"], 1);

    let ev = c.recv().await;
    assert_eq!(ev["type"], "task.status_changed");
    assert_eq!(ev["channelId"], "task:t_9");
    assert_eq!(ev["id"], id);
    assert_eq!(ev["offset"], 1);
    let payload = ev["payload"].as_object().unwrap();
    for (k, v) in body["payload"].as_object().unwrap() {
        assert_eq!(&payload[k], v, "payload field {k} passes through intact");
    }
    assert_eq!(
        payload.len(),
        body["payload"].as_object().unwrap().len() + 1,
        "only timestamp is added"
    );
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_missing_timestamp_is_filled_in_as_utc_rfc3339_and_a_given_one_is_delivered_verbatim() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_1"]).await;

    p.accepted(&json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}}))
        .await;
    let ev = c.recv().await;
    let filled = ev["payload"]["timestamp"]
        .as_str()
        .expect("timestamp filled in");
    assert!(
        is_utc_rfc3339_near_now(filled),
        "filled-in timestamp {filled:?}"
    );

    for given in [
        "2026-11-25T20:40:16.123Z",
        "2026-11-25T22:40:16.123456+02:00",
        "1999-01-01T00:00:00-05:30",
        "2026-11-25t20:40:16z",
    ] {
        p.accepted(&json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "timestamp": given}}))
            .await;
        let ev = c.recv().await;
        assert_eq!(
            ev["payload"]["timestamp"], given,
            "delivered exactly as sent"
        );
    }
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn an_event_over_64_kib_is_refused_with_413_and_a_large_one_under_it_is_delivered_intact() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_1"]).await;

    let big = "x".repeat(60 * 1024);
    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "blob": big}}))
        .await;
    let ev = c.recv().await;
    assert_eq!(ev["id"], answer["id"]);
    assert_eq!(ev["payload"]["blob"].as_str().unwrap().len(), big.len());

    let huge = "x".repeat(65 * 1024);
    let (status, answer) = p
        .post(&json!({"orgId": "o_1", "type": "task.deleted",
            "payload": {"taskId": "t_1", "blob": huge}, "channels": ["task:t_1"]}))
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_error_body(&answer);
    assert_eq!(answer["error"], "too_large");
    barrier(&p, &mut c, "o_1", "task:t_1").await;
    drop(c);
    s.shutdown().await;
}

// ---- channels ----

#[tokio::test]
async fn channels_are_derived_from_the_payload_and_each_derived_channel_delivers_the_same_event() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let derived = [
        "agent:coder",
        "task:t_7",
        "swarm:s_3",
        "project:p_4",
        "org:o_1",
    ];
    let mut subs = Vec::new();
    for ch in derived {
        subs.push(subscriber(&s, "o_1", &[ch]).await);
    }
    let answer = p
        .accepted(&json!({
            "orgId": "o_1",
            "type": "agent.spawned",
            "payload": {"agentId": "a_1", "agentName": "coder", "taskId": "t_7",
                "swarmId": "s_3", "projectId": "p_4"},
        }))
        .await;
    assert_eq!(answer["channels"], json!(derived));
    assert_eq!(answer["recipients"], 5);
    for (c, ch) in subs.iter_mut().zip(derived) {
        let ev = c.recv().await;
        assert_eq!(ev["channelId"], ch);
        assert_eq!(ev["id"], answer["id"], "one id on every channel");
        assert_eq!(ev["offset"], 1);
        assert_eq!(ev["payload"]["agentName"], "coder");
    }
    drop(subs);
    s.shutdown().await;
}

#[tokio::test]
async fn derived_channels_are_only_those_the_payload_names_plus_the_org_channel() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut agent = subscriber(&s, "o_1", &["agent:coder"]).await;
    let mut task = subscriber(&s, "o_1", &["task:t_1"]).await;
    let mut org = subscriber(&s, "o_1", &["org:o_1"]).await;

    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}}))
        .await;
    assert_eq!(answer["channels"], json!(["task:t_1", "org:o_1"]));
    assert_eq!(task.recv().await["id"], answer["id"]);
    assert_eq!(org.recv().await["id"], answer["id"]);

    // A value that cannot be a channel id (a space) derives no channel.
    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "chat.message",
            "payload": {"messageId": "m_1", "agentId": "a_1", "content": "hi", "agentName": "My Coder"}}))
        .await;
    assert_eq!(answer["channels"], json!(["org:o_1"]));
    assert_eq!(org.recv().await["id"], answer["id"]);

    barrier(&p, &mut agent, "o_1", "agent:coder").await;
    barrier(&p, &mut task, "o_1", "task:t_1").await;
    drop((agent, task, org));
    s.shutdown().await;
}

#[tokio::test]
async fn explicit_channels_are_used_exactly_and_derived_ones_are_not() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut derived_task = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut derived_org = subscriber(&s, "o_1", &["org:o_1"]).await;
    let mut named = subscriber(&s, "o_1", &["project:p_4", "agent:zed"]).await;

    let answer = p
        .accepted(&json!({
            "orgId": "o_1",
            "type": "task.status_changed",
            "payload": {"taskId": "t_9", "projectId": "p_4", "oldStatus": "todo", "newStatus": "done"},
            "channels": ["project:p_4", "agent:zed", "project:p_4"],
        }))
        .await;
    assert_eq!(
        answer["channels"],
        json!(["project:p_4", "agent:zed"]),
        "deduplicated, in order"
    );
    assert_eq!(answer["recipients"], 1);
    let first = named.recv().await;
    let second = named.recv().await;
    assert_eq!(first["channelId"], "project:p_4");
    assert_eq!(second["channelId"], "agent:zed");
    assert_eq!(first["id"], answer["id"]);
    assert_eq!(second["id"], answer["id"]);

    barrier(&p, &mut derived_task, "o_1", "task:t_9").await;
    barrier(&p, &mut derived_org, "o_1", "org:o_1").await;
    drop((derived_task, derived_org, named));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_explicit_channels_are_refused_with_invalid_channel() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let many: Vec<String> = (0..17).map(|i| format!("task:t_{i}")).collect();
    let cases: Vec<Value> = vec![
        json!(["nope"]),
        json!(["agent:"]),
        json!(["agent:has space"]),
        json!(["user:u_1"]),
        json!(["task:-leading-dash"]),
        json!([format!("task:{}", "a".repeat(129))]),
        json!(["org:o_2"]),
        json!([]),
        json!(many),
    ];
    for channels in cases {
        let body = json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"},
            "channels": channels});
        assert_eq!(p.refused(&body).await, "invalid_channel", "{channels}");
    }
    let sixteen: Vec<String> = (0..16).map(|i| format!("task:t_{i}")).collect();
    p.accepted(
        &json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"},
        "channels": sixteen}),
    )
    .await;
    s.shutdown().await;
}

// ---- order and recipients ----

#[tokio::test]
async fn two_hundred_sequential_events_arrive_in_publish_order_with_contiguous_offsets_for_every_subscriber()
 {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut a = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut b = s.client("u_other", "o_1").await;
    b.subscribe("task:t_9").await;
    let mut ids = Vec::new();
    for n in 1..=200 {
        ids.push(p.accepted(&event("o_1", &["task:t_9"], n)).await["id"].clone());
    }
    for c in [&mut a, &mut b] {
        let mut epoch = None;
        for (n, id) in (1u64..).zip(&ids) {
            let ev = c.recv().await;
            assert_eq!(ev["offset"], n);
            assert_eq!(ev["payload"]["n"], n);
            assert_eq!(&ev["id"], id);
            let e = epoch.get_or_insert_with(|| ev["epoch"].clone());
            assert_eq!(&ev["epoch"], e, "one epoch throughout");
        }
        c.silent_for(Duration::from_millis(50)).await;
    }
    drop((a, b));
    s.shutdown().await;
}

#[tokio::test]
async fn concurrent_publishers_get_contiguous_offsets_without_gaps_or_duplicates() {
    let s = TestServer::start().await;
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let url = s.http("/api/events");
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..25u64 {
                let resp = http
                    .post(&url)
                    .bearer_auth(PUBLISH_KEY)
                    .json(&event("o_1", &["task:t_9"], w * 100 + i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status().as_u16(), 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last_per_worker = [None::<u64>; 4];
    for offset in 1..=100u64 {
        let ev = c.recv().await;
        assert_eq!(ev["offset"], offset);
        let n = ev["payload"]["n"].as_u64().unwrap();
        let (w, i) = ((n / 100) as usize, n % 100);
        assert!(
            last_per_worker[w].is_none_or(|last| last < i),
            "each publisher's order kept"
        );
        last_per_worker[w] = Some(i);
    }
    c.silent_for(Duration::from_millis(50)).await;
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn recipients_counts_each_connection_of_the_node_once() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut both = subscriber(&s, "o_1", &["task:t_9", "project:p_4"]).await;
    let mut task_only = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut project_only = subscriber(&s, "o_1", &["project:p_4"]).await;
    let mut elsewhere = subscriber(&s, "o_1", &["task:t_other"]).await;
    let mut other_org = subscriber(&s, "o_2", &["task:t_9", "project:p_4"]).await;
    let _unsubscribed = s.client("u_idle", "o_1").await;

    let answer = p
        .accepted(&event("o_1", &["task:t_9", "project:p_4"], 1))
        .await;
    assert_eq!(answer["recipients"], 3, "{answer}");
    let first = both.recv().await;
    let second = both.recv().await;
    assert_eq!(first["id"], answer["id"]);
    assert_eq!(second["id"], answer["id"]);
    let mut seen = [first["channelId"].clone(), second["channelId"].clone()];
    seen.sort_by_key(|v| v.to_string());
    assert_eq!(
        seen,
        [json!("project:p_4"), json!("task:t_9")],
        "once per channel"
    );
    assert_eq!(task_only.recv().await["id"], answer["id"]);
    assert_eq!(project_only.recv().await["id"], answer["id"]);

    // Derived channels: task:, project: and org: reach `both` three times, counted once.
    let org_too = subscriber(&s, "o_1", &["org:o_1"]).await;
    let answer = p
        .accepted(&json!({"orgId": "o_1", "type": "task.created",
            "payload": {"taskId": "t_9", "title": "T", "projectId": "p_4"}}))
        .await;
    assert_eq!(
        answer["channels"],
        json!(["task:t_9", "project:p_4", "org:o_1"])
    );
    assert_eq!(answer["recipients"], 4);

    // An unsubscribed connection is no longer counted.
    both.send(json!({"type": "unsubscribe", "channelId": "task:t_9"}))
        .await;
    loop {
        let m = both.recv().await;
        if m["type"] == "unsubscribed" {
            break;
        }
    }
    let answer = p.accepted(&event("o_1", &["task:t_9"], 2)).await;
    assert_eq!(answer["recipients"], 1, "task_only alone: {answer}");
    let answer = p.accepted(&event("o_1", &["task:t_nobody"], 3)).await;
    assert_eq!(answer["recipients"], 0);

    barrier(&p, &mut elsewhere, "o_1", "task:t_other").await;
    barrier(&p, &mut other_org, "o_2", "task:t_9").await;
    drop((
        both,
        task_only,
        project_only,
        elsewhere,
        other_org,
        _unsubscribed,
        org_too,
    ));
    s.shutdown().await;
}
