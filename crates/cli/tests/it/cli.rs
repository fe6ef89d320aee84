//! The `cortex-realtime` binary (CONTRACT.md section 10): `serve`, `token` and `publish`, run as
//! child processes with an empty environment, always on 127.0.0.1:0, killed when a test ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::util::unix_now;
use cortex_realtime::mint_hs256;
use serde_json::{Value, json};

use crate::util::*;

/// How long `serve` may take to drain by default.
const DRAIN: Duration = Duration::from_secs(10);

/// Starts `serve` with `args` and `env`, and reads its `listening on` line.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let mut p = Proc::spawn(&all, env);
    let addr = p.listening().await;
    (p, addr)
}

/// A token signed with `secret`, valid for an hour.
fn token_signed(secret: &str, sub: &str, org: &str) -> String {
    mint_hs256(secret, sub, org, unix_now() + 3600, None)
}

/// Connects to `addr` with the token in the query string; the HTTP status on refusal.
async fn connect(addr: SocketAddr, token: &str) -> Result<Client, u16> {
    let mut c = Client::connect_with(&format!("ws://{addr}/api/ws?token={token}"), &[]).await?;
    let m = c.recv().await;
    assert_eq!(m["type"], "connected", "{m}");
    Ok(c)
}

/// Publishes a valid event to `addr` with `key`; the HTTP status.
async fn publish_status(addr: SocketAddr, key: &str) -> u16 {
    publish_to(
        &format!("http://{addr}/api/events"),
        key,
        event("o_1", &["task:t_9"], 1),
    )
    .await
    .0
}

/// Subscribes `c` to `n` distinct channels and returns the reply to one more.
async fn subscribe_past(c: &mut Client, n: usize) -> Value {
    for i in 0..n {
        let r = c.subscribe(&format!("task:t_{i}")).await;
        assert_eq!(r["type"], "subscribed", "subscription {i}: {r}");
    }
    c.subscribe("task:one_more").await
}

/// `serve` flags for a minimal valid configuration on 127.0.0.1:0.
const MINIMAL: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--jwt-secret",
    "s",
    "--publish-key",
    "k",
];

/// Runs the binary with `args` and `env` and asserts that it does not start; its stderr.
async fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let p = run_bin(args, env).await;
    assert!(!p.status().success(), "{args:?} must not start");
    assert!(!p.stdout().contains("listening on"), "{}", p.stdout());
    p.stderr()
}

/// `token` arguments for `u` in `o`, signed with the test secret, then `extra`.
fn token_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["token", "--jwt-secret", SECRET, "--sub", "u", "--org", "o"];
    args.extend_from_slice(extra);
    args
}

async fn stop(mut p: Proc) -> Proc {
    p.sigterm_caught().await;
    p.terminate();
    let status = p.wait_exit(DRAIN).await;
    assert!(status.success(), "exit {status:?}; stderr:\n{}", p.stderr());
    p
}

// ---- serve: refusing to start ----

#[tokio::test]
async fn serve_without_a_verification_key_refuses_to_start_and_names_the_missing_key() {
    for (args, env) in [
        (
            vec!["serve", "--listen", "127.0.0.1:0", "--publish-key", "k"],
            vec![],
        ),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--publish-key",
                "k",
                "--jwt-secret",
                "",
            ],
            vec![],
        ),
        (
            vec!["serve"],
            vec![
                ("CORTEX_LISTEN", "127.0.0.1:0"),
                ("CORTEX_PUBLISH_KEY", "k"),
            ],
        ),
    ] {
        let err = refused_start(&args, &env).await;
        assert!(
            err.contains("jwt-secret") && err.contains("jwt-public-key") && err.contains("jwks"),
            "stderr names the missing verification key: {err}"
        );
    }
}

#[tokio::test]
async fn serve_without_a_publish_key_refuses_to_start_and_names_publish_key() {
    for (args, env) in [
        (
            vec!["serve", "--listen", "127.0.0.1:0", "--jwt-secret", "s"],
            vec![],
        ),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--jwt-secret",
                "s",
                "--publish-key",
                "",
            ],
            vec![],
        ),
        (
            vec!["serve", "--listen", "127.0.0.1:0"],
            vec![("CORTEX_JWT_SECRET", "s"), ("CORTEX_PUBLISH_KEY", "")],
        ),
    ] {
        let err = refused_start(&args, &env).await;
        assert!(
            err.contains("publish-key"),
            "stderr names publish-key: {err}"
        );
    }
}

#[tokio::test]
async fn serve_with_a_config_file_holding_an_unknown_key_refuses_to_start_and_names_it() {
    let path = temp_path("unknown.toml");
    std::fs::write(
        &path,
        "jwt_secret = \"s\"\npublish_key = [\"k\"]\nlisten = \"127.0.0.1:0\"\nmax_subscriptionz = 3\n",
    )
    .unwrap();
    let p = run_bin(&["serve", "--config", path.to_str().unwrap()], &[]).await;
    assert!(!p.status().success());
    assert!(p.stderr().contains("max_subscriptionz"), "{}", p.stderr());
    let _ = std::fs::remove_file(path);
}

// ---- serve: starting, configuration, draining ----

#[tokio::test]
async fn serve_prints_one_listening_line_with_the_real_port_and_answers_healthz() {
    let (p, addr) = serve(&MINIMAL, &[]).await;
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the real port, not 0");
    let (status, body) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    let p = stop(p).await;
    assert_eq!(
        p.stdout_lines(),
        vec![format!("listening on {addr}")],
        "exactly one stdout line"
    );
}

#[tokio::test]
async fn serve_reads_every_setting_from_cortex_environment_variables() {
    let (p, addr) = serve(
        &[],
        &[
            ("CORTEX_JWT_SECRET", "env-secret"),
            ("CORTEX_PUBLISH_KEY", "k1,k2"),
            ("CORTEX_LISTEN", "127.0.0.1:0"),
            ("CORTEX_MAX_SUBSCRIPTIONS", "2"),
        ],
    )
    .await;
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_eq!(publish_status(addr, "k1").await, 202, "the first key");
    assert_eq!(publish_status(addr, "k2").await, 202, "the second key");
    assert_eq!(
        publish_status(addr, "k1,k2").await,
        401,
        "the list is split, not one key"
    );
    assert_eq!(publish_status(addr, "k3").await, 401);

    let mut c = connect(addr, &token_signed("env-secret", "u_1", "o_1"))
        .await
        .expect("a token signed with CORTEX_JWT_SECRET is accepted");
    assert_eq!(
        connect(addr, &token_signed("other", "u_1", "o_1"))
            .await
            .err(),
        Some(401)
    );
    let r = subscribe_past(&mut c, 2).await;
    assert_eq!(
        r["code"], "too_many_subscriptions",
        "CORTEX_MAX_SUBSCRIPTIONS=2: {r}"
    );
    drop(c);
    stop(p).await;
}

#[tokio::test]
async fn serve_reads_its_settings_from_a_toml_config_file() {
    let path = temp_path("cortex.toml");
    std::fs::write(
        &path,
        r#"
listen = "127.0.0.1:0"
jwt_secret = "file-secret"
publish_key = ["fk1", "fk2"]
max_subscriptions = 2
"#,
    )
    .unwrap();
    let (p, addr) = serve(&["--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    assert_eq!(publish_status(addr, "fk1").await, 202);
    assert_eq!(publish_status(addr, "fk2").await, 202);
    assert_eq!(publish_status(addr, "nope").await, 401);
    let mut c = connect(addr, &token_signed("file-secret", "u_1", "o_1"))
        .await
        .expect("the file's secret verifies tokens");
    let r = subscribe_past(&mut c, 2).await;
    assert_eq!(r["code"], "too_many_subscriptions", "{r}");
    drop(c);
    stop(p).await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn flags_override_the_config_file() {
    let path = temp_path("override.toml");
    std::fs::write(
        &path,
        r#"
listen = "127.0.0.1:1"
jwt_secret = "file-secret"
publish_key = ["file-key"]
max_subscriptions = 1
"#,
    )
    .unwrap();
    let (p, addr) = serve(
        &[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            "flag-secret",
            "--publish-key",
            "flag-key",
            "--max-subscriptions",
            "3",
        ],
        &[],
    )
    .await;
    assert_ne!(addr.port(), 1, "--listen overrides the file's listen");
    assert_eq!(publish_status(addr, "flag-key").await, 202);
    assert_eq!(
        publish_status(addr, "file-key").await,
        401,
        "--publish-key replaces the file's keys"
    );
    assert_eq!(
        connect(addr, &token_signed("file-secret", "u_1", "o_1"))
            .await
            .err(),
        Some(401)
    );
    let mut c = connect(addr, &token_signed("flag-secret", "u_1", "o_1"))
        .await
        .expect("--jwt-secret overrides the file's secret");
    let r = subscribe_past(&mut c, 3).await;
    assert_eq!(
        r["code"], "too_many_subscriptions",
        "--max-subscriptions 3: {r}"
    );
    drop(c);
    stop(p).await;
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn environment_variables_override_the_config_file() {
    let path = temp_path("env-over-file.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\njwt_secret = \"file-secret\"\npublish_key = [\"file-key\"]\n",
    )
    .unwrap();
    let (p, addr) = serve(
        &["--config", path.to_str().unwrap()],
        &[
            ("CORTEX_PUBLISH_KEY", "env-key"),
            ("CORTEX_JWT_SECRET", "env-secret"),
        ],
    )
    .await;
    assert_eq!(publish_status(addr, "env-key").await, 202);
    assert_eq!(publish_status(addr, "file-key").await, 401);
    assert!(
        connect(addr, &token_signed("env-secret", "u_1", "o_1"))
            .await
            .is_ok()
    );
    stop(p).await;
    let _ = std::fs::remove_file(path);
}

/// One setting of each kind (a number, a duration, a list, a key source) set in the layers from
/// `top` down, each to its own value: the value served is `top`'s, and with no layer the default.
#[tokio::test]
async fn a_flag_beats_the_environment_beats_the_file_beats_the_default_for_each_kind_of_setting() {
    const LAYERS: [&str; 3] = ["flag", "env", "file"];
    let subs = |layer: &str| match layer {
        "flag" => 3,
        "env" => 2,
        _ => 1,
    };
    for top in 0..=LAYERS.len() {
        let winner = LAYERS.get(top).copied();
        let name = winner.unwrap_or("default");
        let path = temp_path("layers.toml");
        // Enough commands per second to reach the default subscription limit at once.
        let mut args = ["--listen", "127.0.0.1:0", "--commands-per-sec", "1000"]
            .map(str::to_owned)
            .to_vec();
        let mut env = Vec::new();
        for &layer in &LAYERS[top..] {
            let (n, secret, key) = (
                subs(layer),
                format!("{layer}-secret"),
                format!("{layer}-key"),
            );
            let timeout = if Some(layer) == winner { "300ms" } else { "1h" };
            match layer {
                "flag" => args.extend(
                    [
                        "--max-subscriptions",
                        &n.to_string(),
                        "--auth-timeout",
                        timeout,
                        "--publish-key",
                        &key,
                        "--jwt-secret",
                        &secret,
                    ]
                    .map(str::to_owned),
                ),
                "env" => env.extend([
                    ("CORTEX_MAX_SUBSCRIPTIONS", n.to_string()),
                    ("CORTEX_AUTH_TIMEOUT", timeout.to_owned()),
                    ("CORTEX_PUBLISH_KEY", key),
                    ("CORTEX_JWT_SECRET", secret),
                ]),
                _ => {
                    std::fs::write(
                        &path,
                        format!(
                            "max_subscriptions = {n}\nauth_timeout = \"{timeout}\"\n\
                             publish_key = [\"{key}\"]\njwt_secret = \"{secret}\"\n"
                        ),
                    )
                    .unwrap();
                    args.extend(["--config".to_owned(), path.to_str().unwrap().to_owned()]);
                }
            }
        }
        if winner.is_none() {
            // Keys have no default: these flags only let the node start.
            args.extend(
                [
                    "--publish-key",
                    "default-key",
                    "--jwt-secret",
                    "default-secret",
                ]
                .map(str::to_owned),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (p, addr) = serve(&args, &env).await;

        for layer in LAYERS.iter().copied().chain(["default"]) {
            let (key, secret) = (format!("{layer}-key"), format!("{layer}-secret"));
            let (status, token) = if layer == name {
                (202, Ok(()))
            } else {
                (401, Err(Some(401)))
            };
            assert_eq!(
                publish_status(addr, &key).await,
                status,
                "{name} wins; {key}"
            );
            let c = connect(addr, &token_signed(&secret, "u_1", "o_1")).await;
            assert_eq!(c.map(drop).map_err(Some), token, "{name} wins; {secret}");
        }
        let mut c = connect(addr, &token_signed(&format!("{name}-secret"), "u_1", "o_1"))
            .await
            .unwrap();
        let limit = winner.map_or(cortex_realtime::Limits::default().max_subscriptions, subs);
        let r = subscribe_past(&mut c, limit).await;
        assert_eq!(
            r["code"], "too_many_subscriptions",
            "{name} wins; {limit}: {r}"
        );

        let mut waiting = Client::connect(&format!("ws://{addr}/api/ws")).await;
        if winner.is_some() {
            assert_eq!(waiting.closed().await, Some(4003), "{name} wins: 300ms");
        } else {
            let d = Duration::from_millis(500);
            assert!(
                tokio::time::timeout(d, waiting.closed()).await.is_err(),
                "the default auth timeout is longer than {d:?}"
            );
        }
        drop((c, waiting));
        stop(p).await;
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test]
async fn a_duration_that_does_not_parse_refuses_to_start_and_names_its_flag() {
    let path = temp_path("bad-duration.toml");
    std::fs::write(&path, "history_max_age = \"soon\"\n").unwrap();
    for (args, env) in [
        (vec!["--idle-timeout", "soon"], vec![]),
        (vec![], vec![("CORTEX_DRAIN_TIMEOUT", "soon")]),
        (vec!["--config", path.to_str().unwrap()], vec![]),
    ] {
        let args = [&["serve"][..], &MINIMAL, &args].concat();
        let err = refused_start(&args, &env).await;
        assert!(err.contains("not a duration: soon"), "{err}");
        let flag = ["--idle-timeout", "--drain-timeout", "--history-max-age"];
        assert!(flag.iter().any(|f| err.contains(f)), "{err}");
    }
    let _ = std::fs::remove_file(path);
}

/// `serve --help` shows the library's defaults, and every flag's variable is `CORTEX_<FLAG>`.
#[tokio::test]
async fn serve_help_shows_the_library_defaults_and_a_cortex_variable_for_every_flag() {
    let p = run_bin(&["serve", "--help"], &[]).await;
    assert!(p.status().success(), "{}", p.stderr());
    let help = p.stdout();
    let lines: Vec<&str> = help.lines().collect();
    // A flag's description: the lines after its own up to the next flag's, joined (clap wraps
    // them at the terminal's width, or at 100 columns without a terminal).
    // A flag's own line is indented less than its description, whose wrapped lines may start
    // with a `--` that names another flag.
    let is_flag = |l: &str| {
        let t = l.trim_start();
        t.starts_with('-') && l.len() - t.len() < 10
    };
    let described = |flag: &str| -> String {
        let at = lines
            .iter()
            .position(|l| is_flag(l) && l.trim_start().starts_with(&format!("--{flag} ")))
            .unwrap_or_else(|| panic!("--{flag} in:\n{help}"));
        lines[at + 1..]
            .iter()
            .take_while(|l| !is_flag(l))
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut flags = 0;
    for l in lines.iter().filter(|l| is_flag(l)) {
        let Some(flag) = l.trim_start().strip_prefix("--") else {
            continue;
        };
        let flag = flag.split(' ').next().unwrap();
        if flag == "help" {
            continue;
        }
        let var = format!("[env: CORTEX_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            described(flag).contains(&var),
            "--{flag}: {}",
            described(flag)
        );
        flags += 1;
    }
    assert!(flags >= 25, "{flags} flags:\n{help}");

    let c = cortex_realtime::Config::default();
    for (flag, default) in [
        ("listen", "0.0.0.0:8080".to_owned()),
        ("jwt-leeway", c.auth.leeway_secs.to_string()),
        ("max-frame-bytes", c.limits.max_frame_bytes.to_string()),
        ("max-subscriptions", c.limits.max_subscriptions.to_string()),
        ("outbox-bytes", c.limits.outbox_bytes.to_string()),
        ("outbox-events", c.limits.outbox_events.to_string()),
        ("commands-per-sec", c.limits.commands_per_sec.to_string()),
        (
            "connections-per-user",
            c.limits.connections_per_user.to_string(),
        ),
        (
            "connections-per-node",
            c.limits.connections_per_node.to_string(),
        ),
        ("max-event-bytes", c.limits.max_event_bytes.to_string()),
        ("history-events", c.history.per_channel.to_string()),
        ("history-max-bytes", c.history.max_bytes.to_string()),
        (
            "redis-prefix",
            cortex_realtime::RedisConfig::DEFAULT_PREFIX.to_owned(),
        ),
    ] {
        let line = described(flag);
        assert!(
            line.contains(&format!("[default: {default}]")),
            "--{flag}: {line}"
        );
    }
    // A duration's default in any spelling humantime reads back (`5s`, `5m` or `300s`).
    for (flag, default) in [
        ("auth-timeout", c.limits.auth_timeout),
        ("ping-interval", c.limits.ping_interval),
        ("idle-timeout", c.limits.idle_timeout),
        ("drain-timeout", c.drain_timeout),
        ("history-max-age", c.history.max_age),
    ] {
        let line = described(flag);
        let shown = line
            .split_once("[default: ")
            .and_then(|(_, d)| d.split_once(']'))
            .unwrap_or_else(|| panic!("--{flag} shows a default: {line}"))
            .0;
        assert_eq!(
            humantime::parse_duration(shown).ok(),
            Some(default),
            "--{flag}: {line}"
        );
    }
    for flag in ["jwt-secret", "publish-key", "allowed-origin", "config"] {
        assert!(
            !described(flag).contains("[default:"),
            "--{flag}: {}",
            described(flag)
        );
    }
}

#[tokio::test]
async fn sigterm_closes_every_connection_with_1001_and_exits_0_within_the_drain_timeout() {
    let (p, addr) = serve(
        &[
            "--listen",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
            "--publish-key",
            PUBLISH_KEY,
        ],
        &[],
    )
    .await;
    let url = format!("ws://{addr}/api/ws");
    let t = token("u_1", "o_1");
    // One client per way of authenticating, each subscribed.
    let mut by_query = connect(addr, &t).await.unwrap();
    let bearer = format!("Bearer {t}");
    let mut by_header = Client::connect_with(&url, &[("authorization", bearer.as_str())])
        .await
        .unwrap();
    assert_eq!(by_header.recv().await["type"], "connected");
    let mut by_frame = Client::connect(&url).await;
    by_frame.send(json!({"type": "auth", "token": t})).await;
    assert_eq!(by_frame.recv().await["type"], "connected");
    for c in [&mut by_query, &mut by_header, &mut by_frame] {
        assert_eq!(c.subscribe("task:t_9").await["type"], "subscribed");
    }
    // A client that has not authenticated yet, and one that stops reading.
    let mut unauthenticated = Client::connect(&url).await;
    let mut not_reading = connect(addr, &t).await.unwrap();

    let mut p = p;
    p.sigterm_caught().await;
    let started = Instant::now();
    p.terminate();
    for (name, c) in [
        ("query", &mut by_query),
        ("header", &mut by_header),
        ("frame", &mut by_frame),
        ("unauthenticated", &mut unauthenticated),
    ] {
        assert_eq!(c.closed().await, Some(1001), "{name} client");
    }
    let status = p.wait_exit(DRAIN).await;
    assert!(status.success(), "exit {status:?}; stderr:\n{}", p.stderr());
    assert!(
        started.elapsed() < DRAIN,
        "drained in {:?}",
        started.elapsed()
    );
    assert_eq!(
        not_reading.closed().await,
        Some(1001),
        "the close frame was sent to it too"
    );
    assert_eq!(
        p.stdout_lines().len(),
        1,
        "only the listening line: {:?}",
        p.stdout_lines()
    );
}

#[tokio::test]
async fn sigterm_with_no_connections_exits_0_at_once() {
    let (p, _addr) = serve(&MINIMAL, &[]).await;
    p.sigterm_caught().await;
    let started = Instant::now();
    stop(p).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sigterm_right_after_the_listening_line_drains_and_exits_0() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..30 {
        let mut p = Proc::spawn(&[&["serve"][..], &MINIMAL].concat(), &[]);
        p.listening_blocking();
        p.terminate();
        let status = rt.block_on(p.wait_exit(DRAIN));
        assert!(
            status.success(),
            "a SIGTERM after `listening on` must drain: {status:?}"
        );
    }
}

// ---- token ----

#[tokio::test]
async fn token_prints_a_jwt_the_server_accepts_with_its_channel_allowlist() {
    let p = run_bin(
        &[
            "token",
            "--jwt-secret",
            SECRET,
            "--sub",
            "u_cli",
            "--org",
            "o_cli",
            "--ttl",
            "1h",
            "--channel",
            "agent:*",
        ],
        &[],
    )
    .await;
    assert!(p.status().success(), "{}", p.stderr());
    let lines = p.stdout_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let jwt = lines[0].trim();
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");

    let s = TestServer::start().await;
    let mut c = s.client_with_token(jwt).await;
    let r = c.subscribe("agent:x").await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let r = c.subscribe("task:y").await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{r}"
    );

    // The claims: sub, org, and an expiry an hour out.
    let mut again = Client::connect(&s.ws_url()).await;
    again.send(json!({"type": "auth", "token": jwt})).await;
    let connected = again.recv().await;
    assert_eq!(connected["userId"], "u_cli");
    assert_eq!(connected["orgId"], "o_cli");
    let expires = time::OffsetDateTime::parse(
        connected["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ttl = expires - time::OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::minutes(59) && ttl <= time::Duration::minutes(60),
        "{ttl}"
    );
    drop((c, again));
    s.shutdown().await;
}

#[tokio::test]
async fn token_without_channels_allows_every_channel_of_its_org_and_bad_arguments_fail() {
    let p = run_bin(&token_args(&[]), &[]).await;
    assert!(p.status().success(), "{}", p.stderr());
    let s = TestServer::start().await;
    let mut c = s.client_with_token(p.stdout().trim()).await;
    assert_eq!(c.subscribe("task:y").await["type"], "subscribed");
    assert_eq!(c.subscribe("org:o").await["type"], "subscribed");
    assert_eq!(c.subscribe("org:other").await["code"], "forbidden");
    drop(c);
    s.shutdown().await;

    for args in [
        token_args(&["--ttl", "soon"]),
        token_args(&["--channel", "nope"]),
        vec!["token", "--sub", "u", "--org", "o"],
    ] {
        let p = run_bin(&args, &[]).await;
        assert!(!p.status().success(), "{args:?}");
        assert!(
            p.stdout().trim().is_empty(),
            "no token printed: {}",
            p.stdout()
        );
    }
}

// ---- publish ----

fn publish_args<'a>(url: &'a str, key: &'a str, ty: &'a str, payload: &'a str) -> Vec<&'a str> {
    vec![
        "publish",
        "--url",
        url,
        "--publish-key",
        key,
        "--org",
        "o_1",
        "--type",
        ty,
        "--payload",
        payload,
    ]
}

#[tokio::test]
async fn publish_prints_the_202_answer_exits_0_and_the_event_is_delivered() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("task:t_9").await;
    let url = format!("http://{}", s.addr);
    let payload = r#"{"taskId":"t_9","oldStatus":"todo","newStatus":"done","extra":{"k":[1,2]}}"#;
    let p = run_bin(
        &publish_args(&url, PUBLISH_KEY, "task.status_changed", payload),
        &[],
    )
    .await;
    assert!(p.status().success(), "stderr: {}", p.stderr());
    let answer: Value = serde_json::from_str(p.stdout().trim()).expect("the answer is JSON");
    assert!(
        answer["id"].as_str().unwrap().starts_with("evt_"),
        "{answer}"
    );
    assert_eq!(answer["channels"], json!(["task:t_9", "org:o_1"]));
    assert_eq!(answer["recipients"], 1);
    let ev = c.recv().await;
    assert_eq!(ev["id"], answer["id"]);
    assert_eq!(ev["type"], "task.status_changed");
    assert_eq!(ev["payload"]["extra"], json!({"k": [1, 2]}));

    // A trailing slash on --url, explicit --channel and --idempotency-key.
    let url_slash = format!("{url}/");
    let mut args = publish_args(
        &url_slash,
        PUBLISH_KEY,
        "task.deleted",
        r#"{"taskId":"t_1"}"#,
    );
    args.extend(["--channel", "task:t_9", "--idempotency-key", "cli-1"]);
    let first = run_bin(&args, &[]).await;
    assert!(first.status().success(), "{}", first.stderr());
    let first: Value = serde_json::from_str(first.stdout().trim()).unwrap();
    assert_eq!(first["channels"], json!(["task:t_9"]));
    assert_eq!(c.recv().await["id"], first["id"]);
    let again = run_bin(&args, &[]).await;
    assert!(again.status().success());
    let again: Value = serde_json::from_str(again.stdout().trim()).unwrap();
    assert_eq!(
        again["id"], first["id"],
        "the repeat is answered with the first id"
    );
    c.silent_for(Duration::from_millis(100)).await;
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn publish_of_a_refused_event_prints_the_400_answer_and_exits_non_zero() {
    let s = TestServer::start().await;
    let mut c = s.client("u_1", "o_1").await;
    c.subscribe("org:o_1").await;
    let url = format!("http://{}", s.addr);
    for (ty, payload, code) in [
        (
            "chief.task.progress",
            r#"{"taskId":"t_1","progress":101,"message":"m"}"#,
            "invalid_payload",
        ),
        ("task.exploded", r#"{"taskId":"t_1"}"#, "unknown_type"),
        ("task.deleted", r#"{}"#, "invalid_payload"),
    ] {
        let p = run_bin(&publish_args(&url, PUBLISH_KEY, ty, payload), &[]).await;
        assert!(!p.status().success(), "{ty} {payload}");
        let answer: Value = serde_json::from_str(p.stdout().trim()).expect("the answer is JSON");
        assert_eq!(answer["error"], code, "{answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }
    c.silent_for(Duration::from_millis(100)).await;
    drop(c);
    s.shutdown().await;
}

#[tokio::test]
async fn publish_with_a_wrong_key_an_unreachable_url_or_bad_payload_json_exits_non_zero() {
    let s = TestServer::start().await;
    let url = format!("http://{}", s.addr);
    let payload = r#"{"taskId":"t_1"}"#;
    let p = run_bin(
        &publish_args(&url, "wrong-key", "task.deleted", payload),
        &[],
    )
    .await;
    assert!(!p.status().success());
    let answer: Value = serde_json::from_str(p.stdout().trim()).expect("the 401 answer is printed");
    assert_eq!(answer["error"], "unauthorized");

    let p = run_bin(
        &publish_args(&url, PUBLISH_KEY, "task.deleted", "{not json"),
        &[],
    )
    .await;
    assert!(!p.status().success());
    s.shutdown().await;

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let p = run_bin(
        &publish_args(&closed, PUBLISH_KEY, "task.deleted", payload),
        &[],
    )
    .await;
    assert!(!p.status().success(), "nothing listens there");
    assert!(!p.stderr().is_empty());
}

/// A Redis URL that cannot be one stops `serve`, saying why, before anything listens.
#[tokio::test]
async fn serve_refuses_a_redis_url_it_cannot_use_and_says_why() {
    for (url, why) in [
        (
            "http://127.0.0.1:6379",
            "the scheme must be redis or rediss",
        ),
        ("redis://", "bad Redis URL"),
        ("not a url", "the scheme must be redis or rediss"),
    ] {
        let mut args = vec!["serve"];
        args.extend(MINIMAL);
        let from_env = args.clone();
        args.extend(["--redis", url]);
        let err = refused_start(&args, &[]).await;
        assert!(err.contains(why), "{url}: {err}");
        let err = refused_start(&from_env, &[("CORTEX_REDIS", url)]).await;
        assert!(err.contains(why), "{url} from the environment: {err}");
    }
}

/// `--redis-cluster` is read from the flag, `CORTEX_REDIS_CLUSTER` and the config file alike
/// (each seed node checked as a Redis URL), and refused together with `--redis`.
#[tokio::test]
async fn serve_reads_redis_cluster_from_every_layer_and_refuses_it_with_redis() {
    let mut args = vec!["serve"];
    args.extend(MINIMAL);
    let base = args.clone();
    args.extend([
        "--redis-cluster",
        "redis://127.0.0.1:7000,http://127.0.0.1:7001",
    ]);
    let err = refused_start(&args, &[]).await;
    assert!(
        err.contains("http://127.0.0.1:7001: the scheme must be redis or rediss"),
        "every seed node is checked: {err}"
    );
    let err = refused_start(&base, &[("CORTEX_REDIS_CLUSTER", "ftp://127.0.0.1:7000")]).await;
    assert!(
        err.contains("ftp://127.0.0.1:7000: the scheme must be redis or rediss"),
        "from the environment: {err}"
    );
    let path = temp_path("cluster.toml");
    std::fs::write(
        &path,
        "jwt_secret = \"s\"\npublish_key = [\"k\"]\nlisten = \"127.0.0.1:0\"\n\
         redis_cluster = [\"redis://\"]\n",
    )
    .unwrap();
    let err = refused_start(&["serve", "--config", path.to_str().unwrap()], &[]).await;
    assert!(err.contains("bad Redis URL"), "from the config file: {err}");
    let _ = std::fs::remove_file(path);

    // One server or a Cluster, never both, from whichever layers they come.
    let mut both = base.clone();
    both.extend([
        "--redis",
        "redis://127.0.0.1:6390",
        "--redis-cluster",
        "redis://127.0.0.1:7000",
    ]);
    let err = refused_start(&both, &[]).await;
    assert!(
        err.contains("--redis and --redis-cluster exclude each other"),
        "{err}"
    );
    let err = refused_start(
        &base,
        &[
            ("CORTEX_REDIS", "redis://127.0.0.1:6390"),
            ("CORTEX_REDIS_CLUSTER", "redis://127.0.0.1:7000"),
        ],
    )
    .await;
    assert!(
        err.contains("exclude each other"),
        "from the environment: {err}"
    );
}

/// TLS to Redis that cannot be set up stops `serve`, saying why, before anything listens: a CA
/// file (from the flag, `CORTEX_REDIS_TLS_CA` or the config file) that is missing or holds no
/// certificate, a CA file for a `redis://` URL, seed nodes that mix the schemes, `#insecure`.
#[tokio::test]
async fn serve_refuses_tls_to_redis_it_cannot_set_up_and_says_why() {
    let missing = temp_path("no-such-ca.pem");
    let not_pem = temp_path("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let (missing, not_pem_s) = (missing.to_str().unwrap(), not_pem.to_str().unwrap());
    let mut base = vec!["serve"];
    base.extend(MINIMAL);
    let tls = "rediss://127.0.0.1:1";
    for (ca, why) in [
        (missing, "No such file"),
        (not_pem_s, "no PEM certificate in it"),
    ] {
        let mut args = base.clone();
        args.extend(["--redis", tls, "--redis-tls-ca", ca]);
        let err = refused_start(&args, &[]).await;
        assert!(err.contains(ca) && err.contains(why), "{ca}: {err}");
        let mut args = base.clone();
        args.extend(["--redis-cluster", tls]);
        let err = refused_start(&args, &[("CORTEX_REDIS_TLS_CA", ca)]).await;
        assert!(err.contains(why), "{ca} from the environment: {err}");
    }
    let path = temp_path("tls-ca.toml");
    std::fs::write(
        &path,
        format!(
            "jwt_secret = \"s\"\npublish_key = [\"k\"]\nlisten = \"127.0.0.1:0\"\n\
             redis = \"{tls}\"\nredis_tls_ca = \"{missing}\"\n"
        ),
    )
    .unwrap();
    let err = refused_start(&["serve", "--config", path.to_str().unwrap()], &[]).await;
    assert!(err.contains(missing), "from the config file: {err}");
    let _ = std::fs::remove_file(path);

    let mut args = base.clone();
    args.extend([
        "--redis",
        "redis://127.0.0.1:1",
        "--redis-tls-ca",
        not_pem_s,
    ]);
    let err = refused_start(&args, &[]).await;
    assert!(err.contains("is not rediss://"), "a CA without TLS: {err}");

    let mut args = base.clone();
    args.extend([
        "--redis-cluster",
        "rediss://127.0.0.1:1,redis://127.0.0.1:2",
    ]);
    let err = refused_start(&args, &[]).await;
    assert!(
        err.contains("redis://127.0.0.1:2: the seed nodes mix redis:// and rediss://"),
        "{err}"
    );

    let mut args = base.clone();
    args.extend(["--redis", "rediss://127.0.0.1:1/#insecure"]);
    let err = refused_start(&args, &[]).await;
    assert!(err.contains("#insecure"), "{err}");
    let _ = std::fs::remove_file(not_pem);
}

#[tokio::test]
async fn every_flag_of_serve_help_is_in_the_configuration_reference_of_operations_md() {
    let p = run_bin(&["serve", "--help"], &[]).await;
    assert!(p.status().success(), "{}", p.stderr());
    let help = p.stdout();
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let start = doc
        .find("<!-- config-reference:start -->")
        .expect("the reference");
    let end = doc.find("<!-- config-reference:end -->").expect("its end");
    let reference = &doc[start..end];
    let mut flags = 0;
    for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
        let Some(name) = word.strip_prefix("--") else {
            continue;
        };
        if name.is_empty() || name == "help" {
            continue;
        }
        let env = format!("CORTEX_{}", name.to_uppercase().replace('-', "_"));
        // Flags named in help sentences (`--tls-key`) are checked as well: all are flags.
        assert!(
            reference.contains(&format!("| `--{name}` | `{env}` |")),
            "--{name} of `serve --help` is not in docs/operations.md's reference"
        );
        flags += 1;
    }
    assert!(flags > 30, "{flags} flags read from:\n{help}");
    // And nothing in the reference that `serve --help` does not have.
    for line in reference.lines().filter(|l| l.starts_with("| `--")) {
        let flag = line.split('`').nth(1).unwrap();
        assert!(
            help.contains(flag),
            "{flag} is in the reference, not in `serve --help`"
        );
    }
}
