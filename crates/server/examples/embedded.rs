//! A host application (a desktop app, say) embedding Cortex Realtime: it starts the server,
//! publishes an agent's lifecycle in-process, and a WebSocket client (standing in for the app's
//! UI) receives it.
//!
//! Run it with `cargo run --example embedded`; `cargo test` runs the same flow as a test.

use cortex_realtime::Server;
use cortex_realtime::mint_hs256;
use cortex_realtime::protocol::PublishEvent;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// Starts the server, publishes an agent's lifecycle, and returns what the client received.
async fn run_demo() -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    // 1. The host starts the server: a free loopback port, its own secret.
    let secret = "host-app-secret-generate-me-randomly";
    let server = Server::builder()
        .jwt_secret(secret)
        .publish_key("host-app-publish-key")
        .start()
        .await?;
    let url = format!("ws://{}/api/ws", server.local_addr());

    // 2. The UI connects with a token the host minted, authenticates with the first frame,
    //    and subscribes to its agent's channel.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let token = mint_hs256(secret, "u_1", "o_1", now.as_secs() as i64 + 3600, None);
    let (mut ws, _) = connect_async(&url).await?;
    let mut send = async |v: Value| ws.send(Message::Text(v.to_string().into())).await;
    send(json!({"type": "auth", "token": token})).await?;
    send(json!({"type": "subscribe", "channelId": "agent:coder"})).await?;
    let mut next = async || -> Result<Value, Box<dyn std::error::Error>> {
        loop {
            match ws.next().await.ok_or("closed")?? {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                _ => continue,
            }
        }
    };
    assert_eq!(next().await?["type"], "connected");
    assert_eq!(next().await?["type"], "subscribed");

    // 3. The host publishes the agent's lifecycle in-process: no HTTP, same validation.
    let lifecycle = [
        (
            "agent.spawned",
            json!({"agentId": "a_1", "agentName": "coder", "taskId": "t_1"}),
        ),
        (
            "agent.status",
            json!({"agentId": "a_1", "agentName": "coder", "status": "blocked", "message": "waiting for review"}),
        ),
        (
            "agent.completed",
            json!({"agentId": "a_1", "agentName": "coder", "taskId": "t_1", "result": {"ok": true}, "duration": 1234}),
        ),
    ];
    for (event_type, payload) in lifecycle {
        server
            .publish_one(PublishEvent {
                org_id: "o_1".into(),
                event_type: event_type.into(),
                payload,
                channels: None,
                idempotency_key: None,
            })
            .await?;
    }

    // 4. The UI receives them, in order.
    let mut received = Vec::new();
    for _ in 0..3 {
        received.push(next().await?);
    }
    server.shutdown().await;
    Ok(received)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    for event in run_demo().await? {
        println!("{event}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_embedded_flow_delivers_the_agent_lifecycle_in_order() {
        let events = super::run_demo().await.expect("the demo runs");
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["agent.spawned", "agent.status", "agent.completed"]);
        let offsets: Vec<u64> = events
            .iter()
            .map(|e| e["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [1, 2, 3]);
        assert!(events.iter().all(|e| e["channelId"] == "agent:coder"));
        assert!(
            events[0]["payload"]["timestamp"].is_string(),
            "timestamp filled in"
        );
    }
}
