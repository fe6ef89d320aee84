//! `serve`: the production server, configured by the [`Settings`] over the TOML file named by
//! `--config`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use cortex_realtime::{Server, shutdown_signal};

use crate::logging::LogFormat;
use crate::settings::{self, Settings};

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

/// The log format asked for, and the rest of the settings, layered (flag, environment, file):
/// logging starts before the server is built, so that its start is logged as asked.
pub fn layered(args: ServeArgs) -> Result<(LogFormat, ServeArgs)> {
    let settings = args.settings.over_file(args.config.as_deref())?;
    let format = settings.log_format();
    Ok((
        format,
        ServeArgs {
            config: None,
            settings,
        },
    ))
}

/// Serves with `args` as [`layered`] made them.
pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = args.settings.into_config()?;
    settings::check(&config)?;
    let server = Server::bind(config).await?;
    let signal = shutdown_signal();
    println!("listening on {}", server.local_addr());
    tracing::info!(addr = %server.local_addr(), "serving");
    server.run(signal).await?;
    tracing::info!("drained; bye");
    Ok(ExitCode::SUCCESS)
}
