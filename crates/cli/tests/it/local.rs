//! `cortex-realtime local`: zero configuration, loopback only, a reusable state file, and still
//! secure against other sites in the user's browser.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::unix_now;
use cortex_realtime::local::LocalState;
use cortex_realtime::mint_hs256;
use serde_json::json;

use crate::util::*;

struct LocalNode {
    child: Child,
    addr: String,
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_local(state_dir: &Path, extra: &[&str]) -> Result<LocalNode, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cortex-realtime"))
        .arg("local")
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    match lines.next() {
        Some(Ok(line)) if line.starts_with("listening on ") => {
            let addr = line.trim_start_matches("listening on ").to_owned();
            let url = lines.next().unwrap().unwrap();
            assert_eq!(url, format!("url ws://{addr}/api/ws"));
            let state = lines.next().unwrap().unwrap();
            assert_eq!(
                state,
                format!("state {}", state_dir.join("local.json").display())
            );
            Ok(LocalNode { child, addr })
        }
        _ => {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            let status = child.wait().unwrap();
            Err(format!("{status}: {err}"))
        }
    }
}

fn read_state(dir: &Path) -> LocalState {
    serde_json::from_slice(&std::fs::read(dir.join("local.json")).unwrap()).unwrap()
}

/// Sends a raw HTTP request and returns the status code.
fn raw_status(addr: &str, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn upgrade_request(host: &str, origin: Option<&str>, token: &str) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /api/ws?token={token} HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn first_start_writes_a_private_state_file_whose_token_and_key_work() {
    let dir = tempdir();
    let node = start_local(&dir, &["--port", "0"]).unwrap();
    let path = dir.join("local.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "local.json is private to the user");
    let state = read_state(&dir);
    assert_eq!(state.url, format!("ws://{}/api/ws", node.addr));
    assert_eq!(
        state.publish_url,
        format!("http://{}/api/events", node.addr)
    );
    assert!(node.addr.starts_with("127.0.0.1:"));
    assert!(state.jwt_secret.len() >= 32 && state.publish_key.len() >= 32);

    let mut c = Client::connect(&state.url).await;
    c.send(json!({"type":"auth","token":state.token})).await;
    assert_eq!(c.recv().await["type"], "connected");
    c.subscribe("agent:coder").await;
    let (status, body) = publish_to(
        &state.publish_url,
        &state.publish_key,
        json!({"orgId":"local","type":"agent.spawned","payload":{"agentId":"a","agentName":"coder","taskId":"t"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(c.recv().await["type"], "agent.spawned");
}

#[tokio::test]
async fn later_starts_reuse_the_secret_key_and_port_and_a_taken_port_is_replaced() {
    let dir = tempdir();
    let first = start_local(&dir, &[]).unwrap();
    let s1 = read_state(&dir);
    drop(first);

    let second = start_local(&dir, &[]).unwrap();
    let s2 = read_state(&dir);
    assert_eq!(s1, s2, "same port, secret, key and token");
    // A token minted for the first run still works: the secret was kept.
    let mut c = Client::connect(&s2.url).await;
    c.send(json!({"type":"auth","token":s1.token})).await;
    assert_eq!(c.recv().await["type"], "connected");
    drop(c);

    // With the saved port taken by someone else, a free one is picked and saved.
    let third = start_local(&dir, &[]);
    let third = third.unwrap();
    assert_ne!(third.addr, second.addr);
    let s3 = read_state(&dir);
    assert_eq!(s3.url, format!("ws://{}/api/ws", third.addr));
    assert_eq!(s3.jwt_secret, s1.jwt_secret);
}

#[tokio::test]
async fn a_token_near_expiry_is_renewed_at_start() {
    let dir = tempdir();
    drop(start_local(&dir, &[]).unwrap());
    let mut state = read_state(&dir);
    state.token = mint_hs256(
        &state.jwt_secret,
        "local-user",
        "local",
        unix_now() + 60,
        None,
    );
    let old = state.token.clone();
    cortex_realtime::local::write_state(&dir.join("local.json"), &state).unwrap();
    let _node = start_local(&dir, &[]).unwrap();
    let renewed = read_state(&dir);
    assert_ne!(renewed.token, old);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &renewed.token,
        &jsonwebtoken::DecodingKey::from_secret(renewed.jwt_secret.as_bytes()),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    )
    .expect("the renewed token verifies with the state's secret")
    .claims;
    let exp = claims["exp"].as_i64().unwrap();
    assert!(exp > unix_now() + 7 * 24 * 3600);
}

#[test]
fn a_non_loopback_address_is_refused() {
    let dir = tempdir();
    for addr in ["0.0.0.0", "192.0.2.1", "::"] {
        let err = start_local(&dir, &["--bind", addr]).err().expect("refused");
        assert!(err.contains("loopback"), "{err}");
    }
    assert!(
        !dir.join("local.json").exists(),
        "nothing written for a refused start"
    );
}

#[tokio::test]
async fn browser_origins_foreign_hosts_and_missing_tokens_are_refused() {
    let dir = tempdir();
    let node = start_local(&dir, &["--allowed-origin", "http://localhost:5173"]).unwrap();
    let state = read_state(&dir);
    let a = node.addr.as_str();
    let host = a;
    // Another site in the user's browser: 403 before the upgrade.
    assert_eq!(
        raw_status(
            a,
            &upgrade_request(host, Some("https://evil.example"), &state.token)
        ),
        403
    );
    // The allowed dev server origin, and a non-browser client, are let in.
    assert_eq!(
        raw_status(
            a,
            &upgrade_request(host, Some("http://localhost:5173"), &state.token)
        ),
        101
    );
    assert_eq!(
        raw_status(a, &upgrade_request(host, None, &state.token)),
        101
    );
    // DNS rebinding: the page's own host name pointed at 127.0.0.1.
    assert_eq!(
        raw_status(a, &upgrade_request("evil.example:80", None, &state.token)),
        403
    );
    let publish = format!(
        "POST /api/events HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {}\r\nContent-Length: 2\r\n\r\n{{}}",
        state.publish_key
    );
    assert_eq!(raw_status(a, &publish), 403);
    assert_eq!(
        raw_status(a, "GET /metrics HTTP/1.1\r\nHost: rebind.example\r\n\r\n"),
        403
    );
    assert_eq!(
        raw_status(a, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        200
    );
    // A token is required, as in serve.
    assert_eq!(
        raw_status(a, &upgrade_request(host, None, "not-a-token")),
        401
    );
    let forged = mint_hs256(
        "another-secret",
        "local-user",
        "local",
        unix_now() + 60,
        None,
    );
    assert_eq!(raw_status(a, &upgrade_request(host, None, &forged)), 401);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "cortex-local-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d.join("state")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) * 1_000_000 + (unix_now() as u64 % 1_000_000)
}
