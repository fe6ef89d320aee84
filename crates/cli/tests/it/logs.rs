//! The logs of `serve` (CONTRACT.md sections 2 and 10): `--log-format json` writes one JSON
//! object a line with timestamp, level, target, message and fields, and no token, JWT secret or
//! publish key ever appears in a log, whole or its first 16 characters, in either format, with
//! every library logging at trace (`RUST_LOG=trace`), after a session with every transport of section 2 (token in
//! the query, in the `Authorization` header, in the first frame, a refresh), bad tokens on each,
//! and publishes with the right key and a wrong one, over plain TCP and over TLS.

use std::time::Duration;

use cortex_realtime::mint_hs256;
use serde_json::{Value, json};

use crate::tls::{Ca, https_publish_with, recv, send, wss};
use crate::util::*;

/// This test's own secrets, so that no other string can match by chance.
const JWT_SECRET: &str = "logs-secret-Zq8vN3xW7tPbK4yL";
const KEY: &str = "logs-publish-key-Hr5mK2cJ9sLdQ1";
const WRONG_KEY: &str = "logs-wrong-key-Vb6nT0gF3wXe";

fn tok(sub: &str) -> String {
    mint_hs256(JWT_SECRET, sub, "o_1", unix_now() + 3600, None)
}

/// A token signed with another secret: refused, and never logged either.
fn forged(sub: &str) -> String {
    mint_hs256(
        "another-secret-entirely-9f8e",
        sub,
        "o_1",
        unix_now() + 3600,
        None,
    )
}

/// Runs one session against `serve --log-format FORMAT` at trace level and returns the secrets
/// it used and everything the process wrote.
async fn session(format: &str) -> (Vec<String>, String, String) {
    let ca = Ca::new();
    let issued = ca.issue("server");
    let client = ca.usual_client();
    let mut plain = Proc::spawn(
        &["serve", "--listen", "127.0.0.1:0", "--log-format", format],
        &[
            ("RUST_LOG", "trace"),
            ("CORTEX_JWT_SECRET", JWT_SECRET),
            ("CORTEX_PUBLISH_KEY", KEY),
        ],
    );
    let addr = plain.listening().await;
    let url = format!("ws://{addr}/api/ws");
    let mut secrets = vec![JWT_SECRET.to_owned(), KEY.to_owned(), WRONG_KEY.to_owned()];

    // 1. The token in the query; then a refresh with another token of the same user.
    let t1 = tok("u_1");
    let mut c1 = Client::connect(&format!("{url}?token={t1}")).await;
    assert_eq!(c1.recv().await["type"], "connected");
    let t4 = tok("u_1");
    c1.send(json!({"type":"refresh","token":t4})).await;
    assert_eq!(c1.recv().await["type"], "refreshed");
    // A refresh with a bad token is refused and the connection keeps its old one.
    let bad4 = forged("u_1");
    c1.send(json!({"type":"refresh","token":bad4})).await;
    assert_eq!(c1.recv().await["code"], "invalid_token");
    c1.subscribe("task:t_1").await;
    // 2. The header.
    let t2 = tok("u_2");
    let mut c2 = Client::connect_with(&url, &[("Authorization", &format!("Bearer {t2}"))])
        .await
        .expect("upgraded");
    assert_eq!(c2.recv().await["type"], "connected");
    // 3. The first frame.
    let t3 = tok("u_3");
    let mut c3 = Client::connect(&url).await;
    c3.send(json!({"type":"auth","token":t3})).await;
    assert_eq!(c3.recv().await["type"], "connected");
    // Bad tokens on each transport.
    let (b1, b2, b3) = (forged("u_5"), forged("u_6"), forged("u_7"));
    assert_eq!(
        Client::connect_with(&format!("{url}?token={b1}"), &[])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        Client::connect_with(&url, &[("Authorization", &format!("Bearer {b2}"))])
            .await
            .err(),
        Some(401)
    );
    let mut c5 = Client::connect(&url).await;
    c5.send(json!({"type":"auth","token":b3})).await;
    assert_eq!(c5.closed().await, Some(4001));
    // Publishes: the right key, a wrong one.
    let events = format!("http://{addr}/api/events");
    let (status, _) = publish_to(&events, KEY, event("o_1", &["task:t_1"], 1)).await;
    assert_eq!(status, 202);
    assert_eq!(c1.recv().await["payload"]["n"], 1);
    let (status, _) = publish_to(&events, WRONG_KEY, event("o_1", &["task:t_1"], 2)).await;
    assert_eq!(status, 401);
    drop((c1, c2, c3));
    secrets.extend([t1, t2, t3, t4, b1, b2, b3, bad4]);

    // The same over TLS, on a second node.
    let mut tls = Proc::spawn(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            format,
            "--tls-cert",
            issued.cert.to_str().unwrap(),
            "--tls-key",
            issued.key.to_str().unwrap(),
        ],
        &[
            ("RUST_LOG", "trace"),
            ("CORTEX_JWT_SECRET", JWT_SECRET),
            ("CORTEX_PUBLISH_KEY", KEY),
        ],
    );
    let taddr = tls.listening().await;
    let t5 = tok("u_8");
    let (mut w, _) = wss(taddr, &client, &format!("/api/ws?token={t5}")).await;
    assert_eq!(recv(&mut w).await["type"], "connected");
    let t6 = tok("u_8");
    send(&mut w, json!({"type":"refresh","token":t6})).await;
    assert_eq!(recv(&mut w).await["type"], "refreshed");
    send(&mut w, json!({"type":"subscribe","channelId":"task:t_1"})).await;
    assert_eq!(recv(&mut w).await["type"], "subscribed");
    let (status, _) =
        https_publish_with(taddr, &client, KEY, &event("o_1", &["task:t_1"], 3)).await;
    assert_eq!(status, 202);
    assert_eq!(recv(&mut w).await["payload"]["n"], 3);
    secrets.extend([t5, t6]);
    drop(w);
    // A failed handshake is logged at debug.
    let mut tcp = tokio::net::TcpStream::connect(taddr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut rest),
    )
    .await;

    // Let the closes be logged, then stop both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = String::new();
    let mut err = String::new();
    for p in [&mut plain, &mut tls] {
        p.terminate();
        assert!(p.wait_exit(Duration::from_secs(15)).await.success());
        out.push_str(&p.stdout());
        err.push_str(&p.stderr());
    }
    (secrets, out, err)
}

/// No secret, nor its first 16 characters, in `text`.
fn assert_no_secret(format: &str, secrets: &[String], text: &str) {
    for s in secrets {
        for needle in [s.as_str(), &s[..16]] {
            if let Some(at) = text.find(needle) {
                let line = text[..at].rsplit('\n').next().unwrap_or("");
                panic!("{format} logs hold a secret ({needle:?}) in: {line}...");
            }
        }
    }
}

#[tokio::test]
async fn no_token_or_key_appears_in_text_logs_at_trace_level() {
    let (secrets, out, err) = session("text").await;
    assert!(err.contains(" INFO ") && err.contains("serving"), "{err}");
    assert!(
        err.contains("DEBUG") && err.contains("TLS handshake failed"),
        "{err}"
    );
    assert!(
        !err.contains('\x1b'),
        "no colours when stderr is not a terminal"
    );
    assert_no_secret("text", &secrets, &out);
    assert_no_secret("text", &secrets, &err);
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_and_hold_no_token_or_key() {
    let (secrets, out, err) = session("json").await;
    assert_no_secret("json", &secrets, &out);
    assert_no_secret("json", &secrets, &err);
    let mut levels = std::collections::BTreeSet::new();
    let mut n = 0;
    for line in err.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "no {key} in {line}");
        }
        assert!(v["fields"].is_object(), "no fields in {line}");
        levels.insert(v["level"].as_str().unwrap().to_owned());
        n += 1;
    }
    assert!(n >= 4, "{n} lines:\n{err}");
    assert!(
        levels.contains("info") && levels.contains("debug"),
        "{levels:?}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains(r#""message":"serving""#) && l.contains(r#""addr":"#)),
        "the start is logged with its address as a field"
    );
}

#[tokio::test]
async fn the_log_format_is_read_from_the_environment_and_the_file_and_checked() {
    let base = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        JWT_SECRET,
        "--publish-key",
        KEY,
    ];
    let first_line_is_json = |p: &Proc| {
        let err = p.stderr();
        let line = err.lines().next().unwrap_or_default().to_owned();
        serde_json::from_str::<Value>(&line).is_ok_and(|v| v["message"] == "serving")
    };
    let mut p = Proc::spawn(&base, &[("CORTEX_LOG_FORMAT", "json")]);
    p.listening().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(first_line_is_json(&p), "{}", p.stderr());
    p.kill();

    let file = temp_path("logs.toml");
    std::fs::write(&file, "log_format = \"json\"\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--config", file.to_str().unwrap()]);
    let mut p = Proc::spawn(&args, &[]);
    p.listening().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(first_line_is_json(&p), "{}", p.stderr());
    p.kill();
    // The flag beats the file.
    args.extend(["--log-format", "text"]);
    let mut p = Proc::spawn(&args, &[]);
    p.listening().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !first_line_is_json(&p) && p.stderr().contains("serving"),
        "{}",
        p.stderr()
    );
    p.kill();
    let _ = std::fs::remove_file(&file);

    let p = run_bin(&["serve", "--log-format", "xml"], &[]).await;
    assert!(!p.status().success());
    assert!(
        p.stderr().contains("possible values: text, json"),
        "{}",
        p.stderr()
    );
    std::fs::write(&file, "log_format = \"xml\"\n").unwrap();
    let p = run_bin(&["serve", "--config", file.to_str().unwrap()], &[]).await;
    assert!(!p.status().success());
    assert!(p.stderr().contains("log_format"), "{}", p.stderr());
    let _ = std::fs::remove_file(&file);
}
