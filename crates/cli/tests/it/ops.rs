//! Operations: `/healthz`, `/readyz`, `/metrics` (CONTRACT.md section 10), and the promise that
//! no token or key is ever written to a log (section 2), checked on the real binary at trace level.

use std::net::SocketAddr;
use std::time::Duration;

use crate::util::unix_now;
use cortex_realtime::mint_hs256;
use serde_json::json;

use crate::util::*;

/// `GET /metrics`: (status, content type, body).
async fn metrics(url: &str) -> (u16, String, String) {
    let resp = reqwest::get(url).await.expect("GET /metrics");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, ctype, resp.text().await.unwrap())
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The sum of every sample of family `name` (every label set; not its `_bucket`s and such).
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            (series.split('{').next() == Some(name)).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// Every line is a comment, blank, or `name[{labels}] value`.
fn assert_prometheus_text(text: &str) {
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {bare:?} in {line:?}"
        );
        assert!(value.parse::<f64>().is_ok(), "sample value in {line:?}");
    }
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let s = TestServer::start().await;
    let (status, body) = get(&s.http("/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&s.http("/readyz")).await;
    assert_eq!(status, 200, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_is_prometheus_text_with_connections_and_published_events() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_9").await;
    let (status, _) = s.publish(event("o_1", &["task:t_9"], 1)).await;
    assert_eq!(status, 202);
    c.recv().await;

    let (status, ctype, text) = metrics(&s.http("/metrics")).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain"), "content type {ctype:?}");
    assert_prometheus_text(&text);
    assert!(text.contains("# TYPE cortex_connections gauge"), "{text}");
    assert!(
        text.contains("# TYPE cortex_events_published_total counter"),
        "{text}"
    );
    // The recorder is process-wide, so other tests count too: at least ours.
    assert!(
        sample(&text, "cortex_connections").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(
        sum_of(&text, "cortex_events_published_total") >= 1.0,
        "{text}"
    );
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn metrics_of_a_fresh_process_count_connections_and_published_events_exactly() {
    let mut p = Proc::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("CORTEX_JWT_SECRET", SECRET),
            ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
        ],
    );
    let addr = p.listening().await;
    let url = format!("http://{addr}/metrics");
    let ws = format!("ws://{addr}/api/ws?token={}", token("u_1", "o_1"));
    let mut a = Client::connect(&ws).await;
    let mut b = Client::connect(&ws).await;
    assert_eq!(a.recv().await["type"], "connected");
    assert_eq!(b.recv().await["type"], "connected");
    a.subscribe("task:t_9").await;
    let events = format!("http://{addr}/api/events");
    let batch = json!({"events": [event("o_1", &["task:t_9"], 1), event("o_1", &["task:t_9"], 2)]});
    assert_eq!(publish_to(&events, PUBLISH_KEY, batch).await.0, 202);
    assert_eq!(
        publish_to(&events, PUBLISH_KEY, event("o_1", &["task:t_9"], 3))
            .await
            .0,
        202
    );
    assert_eq!(
        publish_to(&events, "wrong", event("o_1", &["task:t_9"], 4))
            .await
            .0,
        401
    );
    for _ in 0..3 {
        a.recv().await;
    }

    let (_, _, text) = metrics(&url).await;
    assert_eq!(sample(&text, "cortex_connections"), Some(2.0), "{text}");
    assert_eq!(
        sum_of(&text, "cortex_events_published_total"),
        3.0,
        "{text}"
    );

    drop(b);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, _, text) = metrics(&url).await;
        if sample(&text, "cortex_connections") == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed connection is not counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(a);
    p.sigterm_caught().await;
    p.terminate();
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
}

/// The sample of exactly `series` (`name{labels}` as rendered), 0 when absent.
fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A fresh `serve` exercised by real clients: a connect, subscribes (one resuming), publishes
/// (one refused), a refused handshake, a close for an oversized frame; returns its address and
/// the process.
async fn exercised_server() -> (SocketAddr, Proc) {
    let mut p = Proc::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("CORTEX_JWT_SECRET", SECRET),
            ("CORTEX_PUBLISH_KEY", PUBLISH_KEY),
        ],
    );
    let addr = p.listening().await;
    let ws = format!("ws://{addr}/api/ws");
    let events = format!("http://{addr}/api/events");
    let mut a = Client::connect(&ws).await;
    a.send(json!({"type":"auth","token":token("u_1","o_1")}))
        .await;
    assert_eq!(a.recv().await["type"], "connected");
    let sub = a.subscribe("task:t_9").await;
    assert_eq!(sub["type"], "subscribed");
    for n in 1..=3 {
        assert_eq!(
            publish_to(&events, PUBLISH_KEY, event("o_1", &["task:t_9"], n))
                .await
                .0,
            202
        );
        a.recv().await;
    }
    assert_eq!(
        publish_to(&events, "wrong", event("o_1", &["task:t_9"], 9))
            .await
            .0,
        401
    );
    // A second connection resumes from the first event: two replayed, recovered.
    let mut b = Client::connect(&ws).await;
    b.send(json!({"type":"auth","token":token("u_2","o_1")}))
        .await;
    b.recv().await;
    let epoch = sub["epoch"].as_str().unwrap();
    b.send(json!({"type":"subscribe","channelId":"task:t_9","since":{"offset":1,"epoch":epoch}}))
        .await;
    assert_eq!(b.recv().await["recovered"], true);
    b.recv().await;
    b.recv().await;
    // A command refused: a channel id that breaks the grammar.
    assert_eq!(b.subscribe("nope").await["code"], "invalid_channel");
    // A handshake refused for its token.
    let refused = Client::connect_with(&format!("{ws}?token=not-a-token"), &[]).await;
    assert_eq!(refused.err(), Some(401));
    // A frame over the limit closes with 1009.
    b.send_text(&"x".repeat(70 * 1024)).await;
    assert_eq!(b.closed().await, Some(1009));
    drop(a);
    (addr, p)
}

#[tokio::test]
async fn every_metric_family_moves_for_real_connections_publishes_refusals_and_closes() {
    let (addr, mut p) = exercised_server().await;
    let url = format!("http://{addr}/metrics");
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let (_, _, text) = metrics(&url).await;
        if series(&text, r#"cortex_closes_total{code="1009"}"#) == 1.0
            && series(&text, "cortex_connections") == 0.0
            // The backplane's gauges are set every second.
            && series(&text, "cortex_history_bytes") > 0.0
        {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closes are not counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_prometheus_text(&text);
    for (s, want) in [
        ("cortex_connections_total", 2.0),
        ("cortex_subscriptions", 0.0),
        (r#"cortex_refused_total{reason="unauthorized"}"#, 1.0),
        (r#"cortex_commands_total{type="subscribe"}"#, 3.0),
        (r#"cortex_commands_total{type="auth"}"#, 0.0),
        (
            r#"cortex_command_errors_total{code="invalid_channel"}"#,
            1.0,
        ),
        (
            r#"cortex_events_published_total{type="task.status_changed"}"#,
            3.0,
        ),
        (r#"cortex_deliveries_total{kind="task"}"#, 3.0),
        (r#"cortex_replayed_events_total"#, 2.0),
        (r#"cortex_recoveries_total{recovered="true"}"#, 1.0),
        (r#"cortex_recoveries_total{recovered="false"}"#, 0.0),
        (r#"cortex_publish_requests_total{status="202"}"#, 3.0),
        (r#"cortex_publish_requests_total{status="401"}"#, 1.0),
        ("cortex_publish_fanout_seconds_count", 3.0),
        (r#"cortex_publish_fanout_seconds_bucket{le="+Inf"}"#, 3.0),
        ("cortex_continuity_notices_total", 0.0),
        ("cortex_slow_consumer_closes_total", 0.0),
        ("cortex_backplane_ready", 1.0),
        ("cortex_redis_command_seconds_count", 0.0),
    ] {
        assert_eq!(series(&text, s), want, "{s} in\n{text}");
    }
    assert!(
        series(&text, "cortex_outbox_bytes_total") > 3.0 * 100.0,
        "{text}"
    );
    assert!(series(&text, "cortex_history_bytes") > 0.0, "{text}");
    p.kill();
}

/// Every metric name in a PromQL expression (`cortex_...`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("cortex_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` of a Grafana dashboard's panels (rows' nested panels too).
fn exprs(panels: &[serde_json::Value], out: &mut Vec<String>) {
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("an expr").to_owned());
        }
        exprs(p["panels"].as_array().map_or(&[][..], Vec::as_slice), out);
    }
}

#[tokio::test]
async fn the_grafana_dashboard_charts_every_family_and_names_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/cortex-realtime.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON");
    let mut all = Vec::new();
    exprs(dashboard["panels"].as_array().expect("panels"), &mut all);
    assert!(all.len() >= 10, "{all:?}");

    let (addr, mut p) = exercised_server().await;
    let (_, _, text) = metrics(&format!("http://{addr}/metrics")).await;
    p.kill();
    // What the server exports: each family, and a histogram's series.
    let mut exported = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{s}"));
                }
            }
        }
    }
    let mut charted = std::collections::BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "an expr names no metric: {e}");
        for n in names {
            assert!(
                exported.contains(&n),
                "{n} (in {e}) is not exported:\n{text}"
            );
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|f| exported.contains(*f)))
                .unwrap_or(&n)
                .to_owned();
            charted.insert(family);
        }
    }
    let families: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("# TYPE ")?
                .split(' ')
                .next()
                .map(str::to_owned)
        })
        .collect();
    let missing: Vec<_> = families.difference(&charted).collect();
    assert!(
        missing.is_empty(),
        "families the dashboard does not chart: {missing:?}"
    );
}

// ---- secrets never reach the logs ----

/// Every string that must never appear in the logs, not even in part.
struct Secrets(Vec<String>);

impl Secrets {
    /// Panics when `logs` holds any secret, any 20-character piece of one, or its hex encoding.
    fn assert_absent_from(&self, logs: &str) {
        let lower = logs.to_ascii_lowercase();
        for secret in &self.0 {
            assert!(
                secret.len() >= 20,
                "test secrets are at least 20 characters: {secret}"
            );
            let b = secret.as_bytes();
            for w in b.windows(20) {
                let piece = std::str::from_utf8(w).unwrap();
                if let Some(at) = logs.find(piece) {
                    let from = logs[..at].rfind('\n').map_or(0, |i| i + 1);
                    let to = logs[at..].find('\n').map_or(logs.len(), |i| at + i);
                    panic!(
                        "the logs hold {piece:?} (from {secret:?}):\n{}",
                        &logs[from..to]
                    );
                }
                let hex: String = w.iter().map(|c| format!("{c:02x}")).collect();
                assert!(
                    !lower.contains(&hex),
                    "the logs hold {piece:?} hex-encoded (from {secret:?})"
                );
            }
        }
    }
}

/// A token for `u_log` in `o_log` signed with `secret`, expiring at `exp`.
fn log_token(secret: &str, exp: i64) -> String {
    mint_hs256(secret, "u_log", "o_log", exp, None)
}

/// Runs `f` against a trace-level `serve` with known secrets, stops it, and checks its output.
async fn with_traced_server<F, Fut>(secret: &str, publish_key: &str, f: F) -> Proc
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut p = Proc::spawn(
        &["serve"],
        &[
            ("CORTEX_JWT_SECRET", secret),
            ("CORTEX_PUBLISH_KEY", publish_key),
            ("CORTEX_LISTEN", "127.0.0.1:0"),
            ("RUST_LOG", "trace"),
        ],
    );
    let addr = p.listening().await;
    f(addr).await;
    p.sigterm_caught().await;
    p.terminate();
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    p
}

#[tokio::test]
async fn no_token_key_or_secret_ever_appears_in_the_logs_even_at_trace_level() {
    let secret = "jwt-secret-3f9c1a7e5b2d8046-never-log";
    let publish_key = "publish-key-8e2d4c6a0b1f3957-never-log";
    let bad_publish_key = "bad-publish-key-5a7c9e1b3d2f4680";
    let now = unix_now();
    let good = log_token(secret, now + 3600);
    let good_2 = log_token(secret, now + 3700);
    let good_3 = mint_hs256(
        secret,
        "u_log",
        "o_log",
        now + 3800,
        Some(&["task:*".to_owned()]),
    );
    let refresh_ok = log_token(secret, now + 7200);
    let refresh_other_user = mint_hs256(secret, "u_someone_else", "o_log", now + 7200, None);
    let wrong_signature = log_token("some-other-secret-entirely", now + 3600);
    let expired = log_token(secret, now - 3600);
    let garbage = "opaque-not-a-jwt-token-6d1e0f2a9b8c7d6e".to_owned();
    let secrets = Secrets(vec![
        secret.into(),
        publish_key.into(),
        bad_publish_key.into(),
        good.clone(),
        good_2.clone(),
        good_3.clone(),
        refresh_ok.clone(),
        refresh_other_user.clone(),
        wrong_signature.clone(),
        expired.clone(),
        garbage.clone(),
    ]);

    let p = with_traced_server(secret, publish_key, |addr| async move {
        let ws = format!("ws://{addr}/api/ws");
        // 1. The query string: accepted, and refused for each reason.
        let mut by_query = Client::connect(&format!("{ws}?token={good}")).await;
        assert_eq!(by_query.recv().await["type"], "connected");
        for bad in [&wrong_signature, &expired, &garbage] {
            let refused = Client::connect_with(&format!("{ws}?token={bad}"), &[]).await;
            assert_eq!(refused.err(), Some(401));
        }
        // 2. The Authorization header.
        let bearer = format!("Bearer {good_2}");
        let mut by_header = Client::connect_with(&ws, &[("authorization", bearer.as_str())])
            .await
            .expect("accepted");
        assert_eq!(by_header.recv().await["type"], "connected");
        for bad in [&wrong_signature, &expired, &garbage] {
            let bearer = format!("Bearer {bad}");
            let refused = Client::connect_with(&ws, &[("authorization", bearer.as_str())]).await;
            assert_eq!(refused.err(), Some(401));
        }
        // 3. The auth frame.
        let mut by_frame = Client::connect(&ws).await;
        by_frame
            .send(json!({"type": "auth", "token": good_3}))
            .await;
        assert_eq!(by_frame.recv().await["type"], "connected");
        for (bad, code) in [(&wrong_signature, 4001), (&expired, 4002), (&garbage, 4001)] {
            let mut c = Client::connect(&ws).await;
            c.send(json!({"type": "auth", "token": bad})).await;
            assert_eq!(c.closed().await, Some(code));
        }
        // 4. Refresh: accepted, mismatched, invalid, expired.
        by_query
            .send(json!({"type": "refresh", "token": refresh_ok}))
            .await;
        assert_eq!(by_query.recv().await["type"], "refreshed");
        for (bad, code) in [
            (&refresh_other_user, "token_mismatch"),
            (&wrong_signature, "invalid_token"),
            (&garbage, "invalid_token"),
        ] {
            by_query
                .send(json!({"type": "refresh", "token": bad}))
                .await;
            let m = by_query.recv().await;
            assert_eq!(m["code"], code, "{m}");
        }
        // A token where a channel id belongs, and a second auth frame.
        by_frame
            .send(json!({"type": "subscribe", "channelId": good}))
            .await;
        assert_eq!(by_frame.recv().await["type"], "error");
        by_frame.send(json!({"type": "auth", "token": good})).await;
        assert_eq!(by_frame.recv().await["type"], "error");
        // 5. The publish API: the right key, a wrong one, and a token used as a key.
        let events = format!("http://{addr}/api/events");
        let body = event("o_log", &["task:t_1"], 1);
        assert_eq!(publish_to(&events, publish_key, body.clone()).await.0, 202);
        assert_eq!(
            publish_to(&events, bad_publish_key, body.clone()).await.0,
            401
        );
        assert_eq!(publish_to(&events, &good, body).await.0, 401);
        drop((by_query, by_header, by_frame));
    })
    .await;

    let logs = format!("{}\n{}", p.stdout(), p.stderr());
    assert!(
        p.stderr().len() > 100,
        "trace logging is on: {}",
        p.stderr()
    );
    secrets.assert_absent_from(&logs);
}

#[tokio::test]
async fn no_key_or_secret_appears_in_the_logs_of_a_start_and_a_publish_at_trace_level() {
    let secret = "jwt-secret-0a1b2c3d4e5f6789-never-log";
    let publish_key = "publish-key-9f8e7d6c5b4a3210-never-log";
    let bad_publish_key = "bad-publish-key-1357924680abcdef";
    let secrets = Secrets(vec![
        secret.into(),
        publish_key.into(),
        bad_publish_key.into(),
    ]);
    let p = with_traced_server(secret, publish_key, |addr| async move {
        let events = format!("http://{addr}/api/events");
        let body = event("o_log", &["task:t_1"], 1);
        assert_eq!(publish_to(&events, publish_key, body.clone()).await.0, 202);
        assert_eq!(publish_to(&events, bad_publish_key, body).await.0, 401);
    })
    .await;
    let logs = format!("{}\n{}", p.stdout(), p.stderr());
    secrets.assert_absent_from(&logs);
}

#[tokio::test]
async fn a_token_sent_over_http_query_or_header_never_appears_in_the_logs_at_trace_level() {
    let secret = "jwt-secret-77aa55cc33ee11ff-never-log";
    let publish_key = "publish-key-2468ace013579bdf-never-log";
    let now = unix_now();
    let good = log_token(secret, now + 3600);
    let wrong_signature = log_token("yet-another-secret-value", now + 3600);
    let expired = log_token(secret, now - 3600);
    let secrets = Secrets(vec![good.clone(), wrong_signature.clone(), expired.clone()]);
    let p = with_traced_server(secret, publish_key, |addr| async move {
        let ws = format!("ws://{addr}/api/ws");
        let mut ok = Client::connect(&format!("{ws}?token={good}")).await;
        assert_eq!(ok.recv().await["type"], "connected");
        for bad in [&wrong_signature, &expired] {
            assert_eq!(
                Client::connect_with(&format!("{ws}?token={bad}"), &[])
                    .await
                    .err(),
                Some(401)
            );
            let bearer = format!("Bearer {bad}");
            let refused = Client::connect_with(&ws, &[("authorization", bearer.as_str())]).await;
            assert_eq!(refused.err(), Some(401));
        }
        // Not an upgrade at all, token in the query.
        let (status, _) = get(&format!("http://{addr}/api/ws?token={good}")).await;
        assert_ne!(status, 101);
    })
    .await;
    let logs = format!("{}\n{}", p.stdout(), p.stderr());
    secrets.assert_absent_from(&logs);
}
