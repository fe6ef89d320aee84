//! `serve`: the production server, configured by the [`Settings`] over the TOML file named by
//! `--config`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use cortex_realtime::{Server, shutdown_signal};

use crate::settings::Settings;

/// Every setting also reads from `CORTEX_<FLAG>` and from the TOML file given by `--config`
/// (keys are the flag names in snake case). Precedence: flag, environment, file, default.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "CORTEX_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = args.settings.into_config(args.config.as_deref())?;
    let server = Server::bind(config).await?;
    let signal = shutdown_signal();
    println!("listening on {}", server.local_addr());
    if let Some(admin) = server.admin_addr() {
        println!("admin listening on {admin}");
    }
    tracing::info!(addr = %server.local_addr(), "serving");
    server.run(signal).await?;
    tracing::info!("drained; bye");
    Ok(ExitCode::SUCCESS)
}
