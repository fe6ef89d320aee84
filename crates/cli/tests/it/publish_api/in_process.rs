//! In-process publishing (`PublishEvent`): delivered like HTTP, refused like HTTP.

use cortex_protocol::{EventError, PublishEvent};
use cortex_realtime::PublishError;
use serde_json::{Value, json};

use super::{Publisher, barrier, is_utc_rfc3339_near_now, subscriber};
use crate::util::*;

fn in_process(org: &str, ty: &str, payload: Value, channels: Option<&[&str]>) -> PublishEvent {
    PublishEvent {
        org_id: org.into(),
        event_type: ty.into(),
        payload,
        channels: channels.map(|c| c.iter().map(|s| s.to_string()).collect()),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn in_process_publishing_delivers_like_http_and_shares_offsets_with_it() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_9", "org:o_1"]).await;

    let accepted = s
        .node
        .publish(vec![in_process(
            "o_1",
            "task.status_changed",
            json!({"taskId": "t_9", "oldStatus": "todo", "newStatus": "done", "extra": [1]}),
            Some(&["task:t_9"]),
        )])
        .await
        .expect("accepted");
    assert_eq!(accepted.len(), 1);
    assert!(accepted[0].id.starts_with("evt_"));
    assert_eq!(accepted[0].channels, vec!["task:t_9".to_owned()]);
    assert_eq!(accepted[0].recipients, 1);
    let ev = c.recv().await;
    assert_eq!(ev["id"], accepted[0].id.as_str());
    assert_eq!(ev["type"], "task.status_changed");
    assert_eq!(ev["offset"], 1);
    assert_eq!(ev["payload"]["extra"], json!([1]));
    assert!(is_utc_rfc3339_near_now(
        ev["payload"]["timestamp"].as_str().unwrap()
    ));

    // HTTP and in-process publishes are one stream of offsets.
    let http = p.accepted(&event("o_1", &["task:t_9"], 2)).await;
    assert_eq!(c.recv().await["id"], http["id"]);
    let batch = s
        .node
        .publish(vec![
            in_process("o_1", "task.deleted", json!({"taskId": "t_9"}), None),
            in_process(
                "o_1",
                "gate.passed",
                json!({"taskId": "t_9", "gate": "ci"}),
                Some(&["task:t_9"]),
            ),
        ])
        .await
        .expect("accepted");
    assert_eq!(
        batch[0].channels,
        vec!["task:t_9".to_owned(), "org:o_1".to_owned()]
    );
    assert_eq!(
        batch[0].recipients, 1,
        "one connection on two channels counts once"
    );
    let e3 = c.recv().await;
    assert_eq!(
        (e3["channelId"].as_str(), e3["offset"].as_u64()),
        (Some("task:t_9"), Some(3))
    );
    let e3_org = c.recv().await;
    assert_eq!(
        (e3_org["channelId"].as_str(), e3_org["offset"].as_u64()),
        (Some("org:o_1"), Some(1))
    );
    assert_eq!(e3_org["id"], batch[0].id.as_str());
    let e4 = c.recv().await;
    assert_eq!(e4["offset"], 4);
    assert_eq!(e4["id"], batch[1].id.as_str());
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn in_process_publishing_refuses_what_http_refuses_with_the_same_errors() {
    let s = TestServer::start().await;
    let p = Publisher::new(&s);
    let mut c = subscriber(&s, "o_1", &["task:t_1", "org:o_1"]).await;
    let progress_101 = json!({"taskId": "t_1", "progress": 101, "message": "m"});
    let cases: Vec<(PublishEvent, &str)> = vec![
        (
            in_process("o_1", "chief.task.progress", progress_101, None),
            "invalid_payload",
        ),
        (
            in_process("o_1", "task.exploded", json!({"taskId": "t_1"}), None),
            "unknown_type",
        ),
        (
            in_process("o_1", "task.deleted", json!({}), None),
            "invalid_payload",
        ),
        (
            in_process("o_1", "task.deleted", json!({"taskId": null}), None),
            "invalid_payload",
        ),
        (
            in_process("o_1", "task.deleted", json!({"taskId": 7}), None),
            "invalid_payload",
        ),
        (
            in_process(
                "o_1",
                "agent.status",
                json!({"agentId": "a", "agentName": "n", "status": "running", "message": "m"}),
                None,
            ),
            "invalid_payload",
        ),
        (
            in_process(
                "o_1",
                "task.deleted",
                json!({"taskId": "t_1", "timestamp": "2026-11-25 20:40:16Z"}),
                None,
            ),
            "invalid_payload",
        ),
        (
            in_process(
                "o_1",
                "task.deleted",
                json!({"taskId": "t_1"}),
                Some(&["bad"]),
            ),
            "invalid_channel",
        ),
        (
            in_process("o 1", "task.deleted", json!({"taskId": "t_1"}), None),
            "invalid_org",
        ),
    ];
    for (ev, code) in cases {
        let http_body = serde_json::to_value(&ev).unwrap();
        let err = s
            .node
            .publish(vec![ev.clone()])
            .await
            .expect_err("refused in-process");
        let (status, http_answer) = p.post(&http_body).await;
        assert_eq!(status, 400);
        assert_eq!(http_answer["error"], code, "{http_body}");
        let PublishError::Invalid { source, .. } = &err else {
            panic!("{ev:?}: {err:?}");
        };
        assert_eq!(source.code(), code, "{ev:?}");
        assert_eq!(
            http_answer["message"],
            err.to_string(),
            "the same error as over HTTP"
        );
    }

    let err = s
        .node
        .publish(vec![in_process(
            "o_1",
            "chief.task.progress",
            json!({"taskId": "t", "progress": 101, "message": "m"}),
            None,
        )])
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            PublishError::Invalid {
                source: EventError::BadField {
                    field: "progress",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );

    // A batch: all or nothing, and at most 100.
    let mut batch: Vec<PublishEvent> = (0..5)
        .map(|_| in_process("o_1", "task.deleted", json!({"taskId": "t_1"}), None))
        .collect();
    batch.push(in_process(
        "o_1",
        "task.deleted",
        json!({"taskId": 1}),
        None,
    ));
    let err = s.node.publish(batch).await.expect_err("refused");
    assert!(
        matches!(err, PublishError::Invalid { index: Some(5), .. }),
        "{err:?}"
    );
    let too_many: Vec<PublishEvent> = (0..101)
        .map(|_| in_process("o_1", "task.deleted", json!({"taskId": "t_1"}), None))
        .collect();
    let err = s.node.publish(too_many).await.expect_err("refused");
    assert!(matches!(err, PublishError::BatchTooLarge), "{err:?}");

    let ev = barrier(&p, &mut c, "o_1", "task:t_1").await;
    assert_eq!(ev["offset"], 1, "nothing refused was delivered");
    drop(c);
    s.shutdown().await;
}
