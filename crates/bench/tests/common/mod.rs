//! What the load generator's test binaries that run `cortex-bench` as a blocking subprocess
//! share (`nodes.rs`, `peers_cluster.rs`).

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Runs `cortex-bench ARGS --json JSON` to its end (its output goes to the test's), killing it
/// and panicking about `what` after `limit`.
pub fn run_bench(args: &[&str], json: &Path, what: &str, limit: Duration) -> ExitStatus {
    eprintln!("it: cortex-bench {}", args.join(" "));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cortex-bench"))
        .args(args)
        .arg("--json")
        .arg(json)
        .env_remove("CORTEX_JWT_SECRET")
        .env_remove("CORTEX_PUBLISH_KEY")
        .stdin(Stdio::null())
        .spawn()
        .expect("cortex-bench starts");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for cortex-bench") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cortex-bench {what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
