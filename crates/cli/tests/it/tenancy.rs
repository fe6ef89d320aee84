//! Tenancy and channel permissions (CONTRACT.md section 4): channels live inside an org, `org:`
//! channels belong to their org only, and a token's `channels` allowlist narrows (never widens)
//! what a connection may subscribe, also when a refresh narrows it.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::util::*;

const CHANNELS: [&str; 3] = ["agent:builder", "task:t_1", "project:p_1"];

/// The channels of the events in `msgs`, sorted; panics on anything that is not an event.
fn event_channels(msgs: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = msgs
        .iter()
        .map(|m| {
            assert_eq!(
                m["type"], "task.status_changed",
                "only events expected: {m}"
            );
            m["channelId"].as_str().expect("channelId").to_owned()
        })
        .collect();
    out.sort();
    out
}

fn sorted(chs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = chs.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

async fn subscribe_all(c: &mut Client, channels: &[&str]) {
    for ch in channels {
        let m = c.subscribe(ch).await;
        assert_eq!(m["type"], "subscribed", "{ch}: {m}");
    }
}

/// A `task.status_changed` event with no `channels`: routed by its payload to `task:<taskId>`,
/// `project:<projectId>` and `org:<org>`.
fn derived_event(org: &str, n: u64) -> Value {
    json!({
        "orgId": org,
        "type": "task.status_changed",
        "payload": {"taskId": "t_9", "projectId": "p_4", "oldStatus": "todo", "newStatus": "done", "n": n},
    })
}

// ---------------------------------------------------------------------------------------------
// Orgs are separate worlds.

#[tokio::test]
async fn same_channel_names_in_two_orgs_never_share_events() {
    let s = TestServer::start().await;
    let mut a1 = s.client("u_1", "o_a").await;
    let mut a2 = s.client("u_2", "o_a").await;
    let mut b1 = s.client("u_1", "o_b").await; // the same user id, another org
    for c in [&mut a1, &mut a2, &mut b1] {
        subscribe_all(c, &CHANNELS).await;
    }

    for (i, ch) in CHANNELS.iter().enumerate() {
        let (status, body) = s.publish(event("o_a", &[ch], i as u64)).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(
            body["recipients"], 2,
            "o_a has two subscribers of {ch}: {body}"
        );
    }
    let (status, body) = s.publish(event("o_b", &CHANNELS, 9)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recipients"], 1, "o_b has one subscriber: {body}");

    let want_a = sorted(&CHANNELS);
    for c in [&mut a1, &mut a2] {
        let got = c.barrier().await;
        assert_eq!(event_channels(&got), want_a, "{got:?}");
        assert!(
            got.iter().all(|e| e["payload"]["n"] != 9),
            "o_b's event reached o_a: {got:?}"
        );
    }
    let got = b1.barrier().await;
    assert_eq!(event_channels(&got), want_a, "{got:?}");
    assert!(
        got.iter().all(|e| e["payload"]["n"] == 9),
        "o_a's events reached o_b: {got:?}"
    );
    // Each org's channel counts its own offsets.
    assert!(got.iter().all(|e| e["offset"] == 1), "{got:?}");
}

#[tokio::test]
async fn event_of_an_org_without_subscribers_reaches_nobody_elsewhere() {
    let s = TestServer::start().await;
    let mut a = s.client("u_1", "o_a").await;
    subscribe_all(&mut a, &CHANNELS).await;
    let (status, body) = s.publish(event("o_c", &CHANNELS, 1)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recipients"], 0, "{body}");
    assert!(a.barrier().await.is_empty());
}

#[tokio::test]
async fn same_channel_names_in_two_orgs_have_their_own_offsets_and_epochs() {
    let s = TestServer::start().await;
    let mut a = s.client("u_1", "o_a").await;
    let mut b = s.client("u_1", "o_b").await;
    let sa = a.subscribe("task:t_1").await;
    for n in 1..=3 {
        s.publish(event("o_a", &["task:t_1"], n)).await;
    }
    assert_eq!(a.barrier().await.len(), 3);
    let sb = b.subscribe("task:t_1").await;
    assert_eq!(sb["offset"], 0, "o_b's task:t_1 has had no events: {sb}");
    assert_ne!(
        sa["epoch"], sb["epoch"],
        "different channels, different histories"
    );
}

// ---------------------------------------------------------------------------------------------
// org: channels

#[tokio::test]
async fn org_channel_of_another_org_is_forbidden_and_never_delivers() {
    let s = TestServer::start().await;
    let mut a = s.client("u_1", "o_1").await;
    let mut b = s.client("u_2", "o_2").await;
    let m = a.subscribe("org:o_2").await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], "forbidden", "{m}");
    assert_eq!(m["channelId"], "org:o_2");
    assert_eq!(b.subscribe("org:o_2").await["type"], "subscribed");

    // Events of o_2, routed to org:o_2 explicitly and by derivation.
    let (_, body) = s.publish(event("o_2", &["org:o_2"], 1)).await;
    assert_eq!(body["recipients"], 1, "only o_2's subscriber: {body}");
    let (_, body) = s.publish(derived_event("o_2", 2)).await;
    assert_eq!(body["recipients"], 1, "{body}");
    // An o_1 event aimed at org:o_2 is refused by the API or, if accepted, stays inside o_1
    // where nobody may hold that channel: either way it reaches no one.
    let (status, body) = s.publish(event("o_1", &["org:o_2"], 3)).await;
    assert!(status == 400 || body["recipients"] == 0, "{status} {body}");

    assert!(
        a.barrier().await.is_empty(),
        "a forbidden channel delivered"
    );
    let got = b.barrier().await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|e| e["channelId"] == "org:o_2"), "{got:?}");
}

#[tokio::test]
async fn org_channel_of_the_own_org_receives_derived_channel_events() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c.subscribe("org:o_1").await;
    assert_eq!(m["type"], "subscribed", "{m}");
    assert_eq!(m["offset"], 0);

    let (status, body) = s.publish(derived_event("o_1", 1)).await;
    assert_eq!(status, 202, "{body}");
    let routed: BTreeSet<&str> = body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(routed.contains("org:o_1"), "{body}");
    assert!(
        routed.contains("task:t_9") && routed.contains("project:p_4"),
        "{body}"
    );
    assert_eq!(body["recipients"], 1, "{body}");

    let got = c.barrier().await;
    assert_eq!(got.len(), 1, "once, on the org channel: {got:?}");
    assert_eq!(got[0]["channelId"], "org:o_1");
    assert_eq!(got[0]["offset"], 1);
    assert_eq!(got[0]["id"], body["id"]);
    assert_eq!(got[0]["payload"]["n"], 1);

    // Another org's derived event does not reach it.
    assert_eq!(s.publish(derived_event("o_2", 2)).await.1["recipients"], 0);
    assert!(c.barrier().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// The `channels` allowlist.

#[tokio::test]
async fn allowlist_admits_exact_and_kind_patterns_and_forbids_the_rest() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["project:p_4", "agent:*"]))
        .await;
    for ch in ["project:p_4", "agent:builder", "agent:my-coder-agent"] {
        let m = c.subscribe(ch).await;
        assert_eq!(m["type"], "subscribed", "{ch}: {m}");
    }
    for ch in [
        "project:p_5",
        "project:p_44",
        "task:t_1",
        "swarm:s_1",
        "org:o_1",
    ] {
        let m = c.subscribe(ch).await;
        assert_eq!(m["code"], "forbidden", "{ch}: {m}");
        assert_eq!(m["channelId"], ch);
    }
    c.assert_alive().await;
}

#[tokio::test]
async fn channel_forbidden_by_the_allowlist_never_delivers() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["project:p_4"]))
        .await;
    assert_eq!(c.subscribe("task:t_9").await["code"], "forbidden");
    assert_eq!(c.subscribe("project:p_4").await["type"], "subscribed");
    let (_, body) = s.publish(event("o_1", &["task:t_9"], 1)).await;
    assert_eq!(body["recipients"], 0, "{body}");
    // A derived event touching both channels arrives on the allowed one only.
    let (_, body) = s.publish(derived_event("o_1", 2)).await;
    assert_eq!(body["recipients"], 1, "{body}");
    let got = c.barrier().await;
    assert_eq!(event_channels(&got), sorted(&["project:p_4"]), "{got:?}");
}

#[tokio::test]
async fn allowlist_naming_another_orgs_channel_does_not_widen_the_org_rule() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for(
            "u_1",
            "o_1",
            &["org:o_2", "org:*", "project:p_4"],
        ))
        .await;
    let m = c.subscribe("org:o_2").await;
    assert_eq!(m["code"], "forbidden", "{m}");
    // `org:*` admits the own org channel only.
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    assert_eq!(c.subscribe("org:o_3").await["code"], "forbidden");
    // And an allowed channel name is still the own org's channel.
    assert_eq!(c.subscribe("project:p_4").await["type"], "subscribed");
    assert_eq!(
        s.publish(event("o_2", &["project:p_4", "org:o_2"], 1))
            .await
            .1["recipients"],
        0
    );
    assert!(c.barrier().await.is_empty());
}

#[tokio::test]
async fn empty_allowlist_forbids_every_channel() {
    let s = TestServer::start().await;
    let mut c = s.client_with_token(&token_for("u_1", "o_1", &[])).await;
    for ch in ["org:o_1", "task:t_1", "agent:a"] {
        assert_eq!(c.subscribe(ch).await["code"], "forbidden", "{ch}");
    }
    c.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// A refresh can narrow (or widen) the allowlist.

#[tokio::test]
async fn refresh_with_a_narrower_allowlist_drops_subscriptions_it_no_longer_allows() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["project:p_4", "agent:*"]))
        .await;
    subscribe_all(&mut c, &["agent:a", "agent:b", "project:p_4"]).await;

    c.send(
        json!({"type":"refresh","token":token_for("u_1", "o_1", &["project:p_4"]),"ref":"narrow"}),
    )
    .await;
    let mut dropped = BTreeSet::new();
    let refreshed = loop {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("unsubscribed") => {
                assert!(
                    m.get("ref").is_none(),
                    "a server-side unsubscribe has no ref: {m}"
                );
                dropped.insert(m["channelId"].as_str().unwrap().to_owned());
            }
            Some("refreshed") => break m,
            _ => panic!("unexpected {m}"),
        }
    };
    assert_eq!(refreshed["ref"], "narrow");
    assert_eq!(
        dropped,
        ["agent:a", "agent:b"]
            .into_iter()
            .map(String::from)
            .collect()
    );

    // The dropped channels deliver nothing, the kept one still does.
    assert_eq!(
        s.publish(event("o_1", &["agent:a", "agent:b"], 1)).await.1["recipients"],
        0
    );
    assert_eq!(
        s.publish(event("o_1", &["project:p_4"], 2)).await.1["recipients"],
        1
    );
    let got = c.barrier().await;
    assert_eq!(event_channels(&got), sorted(&["project:p_4"]), "{got:?}");
    // And they cannot be subscribed again under the new token.
    assert_eq!(c.subscribe("agent:a").await["code"], "forbidden");
}

#[tokio::test]
async fn refresh_without_an_allowlist_opens_every_channel_of_the_org() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["project:p_4"]))
        .await;
    assert_eq!(c.subscribe("task:t_1").await["code"], "forbidden");
    let m = c
        .request(json!({"type":"refresh","token":token("u_1", "o_1")}))
        .await;
    assert_eq!(m["type"], "refreshed", "{m}");
    assert_eq!(c.subscribe("task:t_1").await["type"], "subscribed");
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    assert_eq!(c.subscribe("org:o_2").await["code"], "forbidden");
}

#[tokio::test]
async fn refresh_that_keeps_every_subscription_drops_none() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["agent:*"]))
        .await;
    subscribe_all(&mut c, &["agent:a", "agent:b"]).await;
    let m = c
        .request(json!({"type":"refresh","token":token_for("u_1", "o_1", &["agent:a", "agent:b"])}))
        .await;
    assert_eq!(m["type"], "refreshed", "nothing dropped first: {m}");
    assert_eq!(
        s.publish(event("o_1", &["agent:a", "agent:b"], 1)).await.1["recipients"],
        1
    );
    assert_eq!(c.barrier().await.len(), 2);
}

#[tokio::test]
async fn refused_refresh_leaves_the_allowlist_and_subscriptions_alone() {
    let s = TestServer::start().await;
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["agent:*"]))
        .await;
    subscribe_all(&mut c, &["agent:a"]).await;
    // A narrower token of another user is a mismatch: nothing is dropped.
    let m = c
        .request(json!({"type":"refresh","token":token_for("u_2", "o_1", &[])}))
        .await;
    assert_eq!(m["code"], "token_mismatch", "{m}");
    assert_eq!(
        s.publish(event("o_1", &["agent:a"], 1)).await.1["recipients"],
        1
    );
    assert_eq!(c.barrier().await.len(), 1);
    assert_eq!(c.subscribe("agent:z").await["type"], "subscribed");
}
