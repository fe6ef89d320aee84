//! `cortex-bench`: the Cortex Realtime load generator. See the crate docs and
//! docs/benchmarks.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cortex_bench::{run, worker};

#[derive(Parser)]
#[command(
    name = "cortex-bench",
    version,
    about = "Load generator for Cortex Realtime and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect subscribers, publish, and report.
    Run(run::RunArgs),
    /// One worker process (started by `run`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            let check = args.check;
            run::main(args).map(|report| {
                print!("{}", report.table());
                !check
                    || report.publish.as_ref().is_none_or(|p| {
                        p.lost == 0 && p.duplicates == 0 && p.out_of_order == 0 && p.misrouted == 0
                    })
            })
        }
        Command::Worker(args) => worker::main(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("cortex-bench: deliveries were lost, duplicated, reordered or misrouted");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cortex-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
