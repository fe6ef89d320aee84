//! `publish`: one event through the HTTP publish API, the server's answer printed.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct PublishArgs {
    /// Base URL of the server.
    #[arg(long, env = "CORTEX_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Publish API key.
    #[arg(long, env = "CORTEX_PUBLISH_KEY", hide_env_values = true)]
    publish_key: String,
    /// The event's org.
    #[arg(long)]
    org: String,
    /// The event type, e.g. agent.spawned.
    #[arg(long = "type")]
    event_type: String,
    /// The payload, a JSON object.
    #[arg(long)]
    payload: String,
    /// Channels (repeat); derived from the payload when absent.
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Idempotency key.
    #[arg(long)]
    idempotency_key: Option<String>,
}

pub async fn run(args: PublishArgs) -> Result<ExitCode> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not JSON")?;
    let mut body =
        serde_json::json!({ "orgId": args.org, "type": args.event_type, "payload": payload });
    if !args.channels.is_empty() {
        body["channels"] = serde_json::json!(args.channels);
    }
    if let Some(k) = args.idempotency_key {
        body["idempotencyKey"] = serde_json::json!(k);
    }
    let url = format!("{}/api/events", args.url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&args.publish_key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("{text}");
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("refused: HTTP {status}");
        Ok(ExitCode::FAILURE)
    }
}
