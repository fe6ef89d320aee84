//! `token`: mints an HS256 token, for development and tests.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use cortex_realtime::mint_hs256;

#[derive(Args)]
pub struct TokenArgs {
    /// HS256 secret to sign with.
    #[arg(long, env = "CORTEX_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// The organisation (`org`).
    #[arg(long)]
    org: String,
    /// Lifetime, e.g. 1h, 30m [default: 1h].
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Channel pattern to allow (repeat); none means every channel of the org.
    #[arg(long = "channel")]
    channels: Vec<String>,
}

pub fn run(args: TokenArgs) -> Result<ExitCode> {
    let ttl = humantime::parse_duration(&args.ttl)
        .with_context(|| format!("--ttl: not a duration: {}", args.ttl))?;
    for c in &args.channels {
        if cortex_realtime::protocol::ChannelPattern::parse(c).is_err() {
            bail!("--channel {c}: not a channel id or kind:* pattern");
        }
    }
    let channels = (!args.channels.is_empty()).then_some(args.channels.as_slice());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let exp = now + ttl.as_secs() as i64;
    println!(
        "{}",
        mint_hs256(&args.jwt_secret, &args.sub, &args.org, exp, channels)
    );
    Ok(ExitCode::SUCCESS)
}
