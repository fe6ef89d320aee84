//! History and resume (CONTRACT.md section 6): exact replay or nothing, no gap and no duplicate
//! between replay and live, a new epoch when history was lost.

use serde_json::json;

use crate::util::*;

async fn subscribe_since(
    c: &mut Client,
    channel: &str,
    offset: u64,
    epoch: &str,
) -> serde_json::Value {
    c.send(json!({"type":"subscribe","channelId":channel,"since":{"offset":offset,"epoch":epoch}}))
        .await;
    c.recv().await
}

/// Subscribes `c` to `channel` and returns the channel's epoch.
async fn subscribe_epoch(c: &mut Client, channel: &str) -> String {
    c.subscribe(channel).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A ping is answered by the next frame: nothing was replayed before it.
async fn assert_nothing_replayed(c: &mut Client, what: &str) {
    c.send(json!({"type":"ping"})).await;
    assert_eq!(c.recv().await["type"], "pong", "{what}");
}

#[tokio::test]
async fn a_resume_replays_exactly_the_missed_events_then_goes_live() {
    let s = TestServer::start().await;
    let mut c = s.client("u", "o_1").await;
    let epoch = subscribe_epoch(&mut c, "task:t_1").await;
    for n in 1..=10 {
        s.publish(event("o_1", &["task:t_1"], n)).await;
    }
    for _ in 0..10 {
        c.recv().await;
    }
    drop(c);
    let mut c = s.client("u", "o_1").await;
    let sub = subscribe_since(&mut c, "task:t_1", 4, &epoch).await;
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["offset"], 10);
    for want in 5..=10 {
        let ev = c.recv().await;
        assert_eq!(ev["offset"], want);
        assert_eq!(ev["payload"]["n"], want);
    }
    s.publish(event("o_1", &["task:t_1"], 11)).await;
    assert_eq!(c.recv().await["offset"], 11);
    // Up to date: recovered with nothing to replay.
    let mut d = s.client("u", "o_1").await;
    let sub = subscribe_since(&mut d, "task:t_1", 11, &epoch).await;
    assert_eq!(sub["recovered"], true);
    assert_nothing_replayed(&mut d, "nothing was replayed").await;
}

#[tokio::test]
async fn continuity_that_cannot_be_proven_is_recovered_false_with_no_partial_replay() {
    let mut cfg = config();
    cfg.history.per_channel = 5;
    let s = TestServer::with(cfg).await;
    let mut c = s.client("u", "o_1").await;
    let epoch = subscribe_epoch(&mut c, "task:t_1").await;
    for n in 1..=20 {
        s.publish(event("o_1", &["task:t_1"], n)).await;
    }
    let mut d = s.client("u2", "o_1").await;
    for (offset, ep) in [
        (3, epoch.as_str()),
        (10, "e_000000000000"),
        (25, epoch.as_str()),
    ] {
        let sub = subscribe_since(&mut d, "task:t_1", offset, ep).await;
        assert_eq!(sub["recovered"], false, "since {offset} {ep}");
        assert_eq!(sub["offset"], 20);
        assert_eq!(sub["epoch"], epoch.as_str());
        assert_nothing_replayed(&mut d, "nothing replayed").await;
    }
    // The oldest held event is 16: since 15 is exact.
    let sub = subscribe_since(&mut d, "task:t_1", 15, &epoch).await;
    assert_eq!(sub["recovered"], true);
    for want in 16..=20 {
        assert_eq!(d.recv().await["offset"], want);
    }
}

#[tokio::test]
async fn resuming_while_events_keep_flowing_leaves_no_gap_and_no_duplicate() {
    let s = TestServer::start().await;
    let mut c = s.client("u", "o_1").await;
    let epoch = subscribe_epoch(&mut c, "project:p_1").await;
    let url = s.http("/api/events");
    let publisher = tokio::spawn(async move {
        for n in 1..=300u64 {
            let (st, _) = publish_to(&url, PUBLISH_KEY, event("o_1", &["project:p_1"], n)).await;
            assert_eq!(st, 202);
        }
    });
    let mut seen = Vec::new();
    let mut last = 0;
    // Reconnect three times while the publisher runs, resuming from the last offset seen.
    for round in 0..4 {
        let take = if round < 3 { 40 } else { usize::MAX };
        while seen.len() < 300 && take > 0 {
            let ev = c.recv().await;
            if ev["type"] != "task.status_changed" {
                continue;
            }
            last = ev["offset"].as_u64().unwrap();
            seen.push(last);
            if round < 3 && seen.len() % 40 == 0 {
                break;
            }
        }
        if round < 3 {
            drop(c);
            c = s.client("u", "o_1").await;
            let sub = subscribe_since(&mut c, "project:p_1", last, &epoch).await;
            assert_eq!(sub["recovered"], true, "round {round}");
        }
    }
    publisher.await.unwrap();
    assert_eq!(seen, (1..=300).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_restarted_in_memory_node_has_a_new_epoch_and_recovers_nothing() {
    let s = TestServer::start().await;
    let mut c = s.client("u", "o_1").await;
    let epoch = subscribe_epoch(&mut c, "task:t_1").await;
    s.publish(event("o_1", &["task:t_1"], 1)).await;
    c.recv().await;
    s.shutdown().await;
    let s = TestServer::start().await;
    let mut c = s.client("u", "o_1").await;
    let sub = subscribe_since(&mut c, "task:t_1", 1, &epoch).await;
    assert_eq!(sub["recovered"], false);
    assert_ne!(sub["epoch"], epoch.as_str());
    assert_eq!(sub["offset"], 0);
}
