//! `local`: a zero-configuration node on loopback for the desktop, its state in a directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use cortex_realtime::{local, shutdown_signal};

#[derive(Args)]
pub struct LocalArgs {
    /// Port to listen on; 0 takes a free one [default: the saved port, else a free one].
    #[arg(long)]
    port: Option<u16>,
    /// State directory [default: $XDG_CONFIG_HOME/cortex-realtime, else ~/.config/cortex-realtime].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Loopback address to bind; any other address is refused.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Browser Origin allowed to connect (repeat for several); every other origin gets 403.
    #[arg(long)]
    allowed_origin: Vec<String>,
}

pub async fn run(args: LocalArgs) -> Result<ExitCode> {
    let state_dir = match args.state_dir {
        Some(d) => d,
        None => local::default_state_dir()
            .context("no state directory: set --state-dir, XDG_CONFIG_HOME or HOME")?,
    };
    let opts = local::LocalOptions {
        port: args.port,
        bind: args.bind,
        allowed_origins: args.allowed_origin,
        ..local::LocalOptions::new(state_dir)
    };
    let signal = shutdown_signal();
    let node = local::start(opts).await?;
    println!("listening on {}", node.server.local_addr());
    println!("url {}", node.state.url);
    println!("state {}", node.state_file.display());
    tracing::info!(url = %node.state.url, state = %node.state_file.display(), "local node ready");
    signal.await;
    node.server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
