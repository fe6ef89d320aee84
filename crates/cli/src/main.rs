//! The `cortex-realtime` command: the clap root and the dispatch to its subcommands (`serve`,
//! `local`, `token`, `publish`, `tail`), one module each. `serve`'s settings are the table in
//! [`settings`], made into flags, file and config by [`layers`]; [`logging`] sets up the logs.
//! Imports go one way: main, then the commands, then `settings`, then `layers`.

mod layers;
mod local;
mod logging;
mod publish;
mod serve;
mod settings;
mod tail;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cortex-realtime",
    version,
    about = "Cortex Realtime: a real-time event gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the production server.
    Serve(Box<serve::ServeArgs>),
    /// Run a zero-configuration node on loopback for the desktop.
    Local(local::LocalArgs),
    /// Mint an HS256 token (for development and tests).
    Token(token::TokenArgs),
    /// Publish one event through the HTTP API and print the answer.
    Publish(publish::PublishArgs),
    /// Print the events of channels as JSON lines, reconnecting and resuming across restarts.
    Tail(tail::TailArgs),
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // `serve` reads its log format among its settings (flag, environment or file); the other
    // commands log as text.
    let format = match cli.command {
        Command::Serve(args) => match serve::layered(*args) {
            Ok((format, args)) => {
                cli.command = Command::Serve(Box::new(args));
                format
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        _ => logging::LogFormat::Text,
    };
    logging::init(format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await,
            Command::Local(args) => local::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Publish(args) => publish::run(args).await,
            Command::Tail(args) => tail::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
