use serde_json::json;

use crate::util::*;

#[tokio::test]
async fn a_published_event_reaches_a_subscriber_with_offset_and_epoch() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let sub = c.subscribe("task:t_9").await;
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["offset"], 0);
    let (status, body) = s.publish(event("o_1", &["task:t_9"], 1)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recipients"], 1);
    let ev = c.recv().await;
    assert_eq!(ev["type"], "task.status_changed");
    assert_eq!(ev["channelId"], "task:t_9");
    assert_eq!(ev["offset"], 1);
    assert_eq!(ev["epoch"], sub["epoch"]);
    assert_eq!(ev["id"], body["id"]);
    assert_eq!(ev["payload"]["n"], 1);
    c.send(json!({"type":"ping","ref":3})).await;
    assert_eq!(c.recv().await, json!({"type":"pong","ref":3}));
    s.shutdown().await;
}
