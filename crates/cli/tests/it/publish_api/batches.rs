//! Batches (up to 100 events, all or none) and idempotency keys.

use serde_json::{Value, json};

use super::{Publisher, assert_error_body, barrier, subscriber};
use crate::util::*;

fn bad_event_for_batch() -> Value {
    json!({"orgId": "o_1", "type": "chief.task.progress",
        "payload": {"taskId": "t_1", "progress": 101, "message": "too far"}})
}

// ---- batches ----

#[tokio::test]
async fn a_batch_of_100_is_accepted_with_results_in_order_and_delivered_in_order() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let events: Vec<Value> = (1..=100).map(|n| event("o_1", &["task:t_9"], n)).collect();
    let answer = p.accepted(&json!({ "events": events })).await;
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 100);
    let mut ids = std::collections::HashSet::new();
    for (n, r) in (1u64..).zip(results) {
        assert_eq!(r["channels"], json!(["task:t_9"]));
        assert_eq!(r["recipients"], 1);
        assert!(
            ids.insert(r["id"].as_str().unwrap().to_owned()),
            "ids are unique"
        );
        let ev = c.recv().await;
        assert_eq!(ev["payload"]["n"], n);
        assert_eq!(ev["offset"], n);
        assert_eq!(ev["id"], r["id"], "result {n} is event {n}");
    }
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_of_101_is_refused_with_400_and_nothing_is_delivered() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let events: Vec<Value> = (1..=101).map(|n| event("o_1", &["task:t_9"], n)).collect();
    assert_eq!(
        p.refused(&json!({ "events": events })).await,
        "batch_too_large"
    );
    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 1);
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_with_one_bad_event_is_refused_naming_it_and_delivers_none() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9", "org:o_1", "task:t_1"]).await;
    let mut events: Vec<Value> = (1..=100).map(|n| event("o_1", &["task:t_9"], n)).collect();
    events[49] = bad_event_for_batch();
    let (status, answer) = p.post(&json!({ "events": events })).await;
    assert_eq!(status, 400, "{answer}");
    assert_error_body(&answer);
    assert_eq!(answer["error"], "invalid_payload");
    assert!(
        answer["message"].as_str().unwrap().contains("49"),
        "names the 50th event (index 49): {answer}"
    );

    // Other kinds of bad member: unknown type, mistyped body, bad channel.
    for bad in [
        json!({"orgId": "o_1", "type": "nope", "payload": {}}),
        json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}, "extra": 1}),
        json!({"orgId": "o_1", "type": "task.deleted", "payload": {"taskId": "t_1"}, "channels": ["bad"]}),
        json!("not an event"),
    ] {
        let mut events: Vec<Value> = (1..=10).map(|n| event("o_1", &["task:t_9"], n)).collect();
        events.push(bad.clone());
        p.refused(&json!({ "events": events })).await;
    }

    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(
        ev["offset"], 1,
        "no event of a refused batch took an offset"
    );
    drop(c);
    s.shutdown().await;
}

// ---- idempotency ----

#[tokio::test]
async fn a_repeated_idempotency_key_is_answered_202_with_the_same_id_and_delivered_once() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut body = event("o_1", &["task:t_9"], 1);
    body["idempotencyKey"] = json!("order-42");
    let first = p.accepted(&body).await;
    assert_eq!(first["recipients"], 1);
    let ev = c.recv().await;
    assert_eq!(ev["id"], first["id"]);

    body["payload"]["n"] = json!(2); // even a different payload is not delivered again
    let second = p.accepted(&body).await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["channels"], first["channels"]);
    assert_eq!(second["recipients"], 0, "not delivered again: {second}");

    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 2, "the repeat took no offset");
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_its_org() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut a = subscriber(&s, "o_a", &["task:t_9"]).await;
    let mut b = subscriber(&s, "o_b", &["task:t_9"]).await;
    let mut body_a = event("o_a", &["task:t_9"], 1);
    body_a["idempotencyKey"] = json!("shared-key");
    let mut body_b = event("o_b", &["task:t_9"], 1);
    body_b["idempotencyKey"] = json!("shared-key");
    let ans_a = p.accepted(&body_a).await;
    let ans_b = p.accepted(&body_b).await;
    assert_ne!(ans_a["id"], ans_b["id"]);
    assert_eq!(ans_b["recipients"], 1);
    assert_eq!(a.recv().await["id"], ans_a["id"]);
    assert_eq!(b.recv().await["id"], ans_b["id"]);
    barrier(&p, &mut a, "o_a", "task:t_9").await;
    barrier(&p, &mut b, "o_b", "task:t_9").await;
    drop((a, b));
    s.shutdown().await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_within_one_batch_is_delivered_once() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut e1 = event("o_1", &["task:t_9"], 1);
    e1["idempotencyKey"] = json!("k");
    let e2 = event("o_1", &["task:t_9"], 2);
    let mut e3 = event("o_1", &["task:t_9"], 3);
    e3["idempotencyKey"] = json!("k");
    let answer = p.accepted(&json!({"events": [e1, e2, e3]})).await;
    let r = answer["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0]["id"], r[2]["id"]);
    assert_ne!(r[0]["id"], r[1]["id"]);
    assert_eq!(c.recv().await["payload"]["n"], 1);
    assert_eq!(c.recv().await["payload"]["n"], 2);
    let ev = barrier(&p, &mut c, "o_1", "task:t_9").await;
    assert_eq!(ev["offset"], 3);
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn the_idempotency_key_of_a_refused_batch_is_not_used_up() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9"]).await;
    let mut good = event("o_1", &["task:t_9"], 1);
    good["idempotencyKey"] = json!("retry-me");
    p.refused(&json!({"events": [good.clone(), bad_event_for_batch()]}))
        .await;
    let answer = p.accepted(&good).await;
    assert_eq!(answer["recipients"], 1, "the retry is delivered: {answer}");
    assert_eq!(c.recv().await["id"], answer["id"]);
    drop(c);
    s.shutdown().await;
}
