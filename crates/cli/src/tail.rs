//! `tail`: the events of channels as JSON lines, through the reconnecting client.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use cortex_realtime::shutdown_signal;

#[derive(Args)]
pub struct TailArgs {
    /// WebSocket URL of the server.
    #[arg(
        long,
        env = "CORTEX_WS_URL",
        default_value = "ws://127.0.0.1:8080/api/ws"
    )]
    url: String,
    /// The token (a JWT), sent in the `auth` frame, never in the URL.
    #[arg(long, env = "CORTEX_TOKEN", hide_env_values = true)]
    token: String,
    /// Channels to subscribe to, e.g. task:t_9 project:p_4.
    #[arg(required = true, value_name = "CHANNEL")]
    channels: Vec<String>,
}

/// Prints each event as the server sent it, one JSON line on stdout; says on stderr when it
/// (re)connects and whether each channel recovered. Exits 1 when the token is refused or
/// expires, 0 on Ctrl-C, SIGTERM or a closed stdout.
pub async fn run(args: TailArgs) -> Result<ExitCode> {
    use cortex_client::{Client, ClientEvent, Stop};
    use std::io::Write;

    let mut builder = Client::builder(args.url).token(args.token);
    for c in &args.channels {
        let channel = cortex_realtime::protocol::ChannelId::parse(c)
            .map_err(|e| anyhow::anyhow!("{c}: {e}"))?;
        builder = builder.subscribe(channel);
    }
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let (client, mut events) = builder.start().context("--url")?;
    let mut stdout = std::io::stdout();
    let mut connected_before = false;
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = &mut signal => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let Some(ev) = ev else {
            return Ok(ExitCode::SUCCESS);
        };
        match ev {
            // A closed stdout (`tail | head`) ends the tail quietly.
            ClientEvent::Event(e) if writeln!(stdout, "{}", e.as_json()).is_err() => {
                client.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            ClientEvent::Event(_) => {}
            ClientEvent::Connected(c) => {
                let what = if connected_before {
                    "reconnected"
                } else {
                    "connected"
                };
                eprintln!("{what} (connection {})", c.connection_id);
                connected_before = true;
            }
            ClientEvent::Subscribed {
                channel, offset, ..
            } => {
                eprintln!("subscribed; {channel} at offset {offset}");
            }
            ClientEvent::Resubscribed {
                channel,
                recovered: true,
                ..
            } => {
                eprintln!("reconnected; {channel} recovered");
            }
            ClientEvent::Resubscribed {
                channel,
                recovered: false,
                ..
            } => {
                eprintln!("reconnected; {channel} not recovered (reload state)");
            }
            ClientEvent::SubscribeFailed {
                channel,
                code,
                message,
            } => {
                eprintln!("{channel}: subscribe refused ({code:?}): {message}");
                if client.subscriptions().is_empty() {
                    eprintln!("error: no channel left to tail");
                    client.close().await;
                    return Ok(ExitCode::FAILURE);
                }
            }
            ClientEvent::Unsubscribed { channel } => {
                eprintln!("{channel}: unsubscribed by the server")
            }
            ClientEvent::Refreshed { .. } => {}
            ClientEvent::ServerError { code, message } => {
                eprintln!("server error ({code:?}): {message}")
            }
            ClientEvent::Reconnecting { cause, delay, .. } => {
                eprintln!(
                    "disconnected ({cause}); reconnecting in {:.1}s",
                    delay.as_secs_f64()
                );
            }
            ClientEvent::Stopped(stop) => {
                return Ok(match stop {
                    Stop::Closed | Stop::ServerClosed => {
                        eprintln!("{stop}");
                        ExitCode::SUCCESS
                    }
                    _ => {
                        eprintln!("error: {stop}");
                        ExitCode::FAILURE
                    }
                });
            }
            _ => {}
        }
    }
}
