//! `cortex-bench`: the Cortex Realtime load generator. See the crate docs and
//! docs/benchmarks.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cortex_bench::report::RunReport;
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
    Run(Box<run::RunArgs>),
    /// One worker process (started by `run`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            let check = args.check;
            run::main(*args).map(|report| {
                print!("{}", report.table());
                let failures = if check {
                    check_failures(&report)
                } else {
                    Vec::new()
                };
                for f in &failures {
                    eprintln!("cortex-bench: check failed: {f}");
                }
                failures.is_empty()
            })
        }
        Command::Worker(args) => worker::main(args).map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cortex-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `--check` fails on: a connection that could not connect or subscribe, a publish the
/// server refused and that was given up on (either would leave deliveries out of what is
/// expected, so a run where nothing connected or nothing was accepted would otherwise pass), and
/// any delivery lost without the server saying so (`recovered: false`), duplicated, reordered or
/// misrouted.
fn check_failures(report: &RunReport) -> Vec<String> {
    let mut failures = Vec::new();
    let c = &report.connect;
    if c.failed > 0 {
        failures.push(format!(
            "{} of {} connections failed to connect or subscribe",
            c.failed, report.conns
        ));
    }
    if let Some(p) = &report.publish {
        if p.abandoned > 0 {
            failures.push(format!(
                "{} publish requests failed and were given up ({} failures in all)",
                p.abandoned, p.publish_errors
            ));
        }
        if p.lost_unexplained > 0 || p.duplicates > 0 || p.out_of_order > 0 || p.misrouted > 0 {
            failures.push(format!(
                "deliveries were lost without a recovered:false ({} of {} lost), duplicated ({}), reordered ({}) or misrouted ({})",
                p.lost_unexplained, p.lost, p.duplicates, p.out_of_order, p.misrouted
            ));
        }
    }
    failures
}
