//! Hostile tokens (H45..H56, H76): in `?token=`, in `Authorization: Bearer` and in the `auth`
//! frame.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cortex_realtime::KeySource;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::timeout;

use super::raw::{Raw, Seen, assert_refused, exchange, upgrade, with_raw_header};
use super::{assert_still_serving, expect_error, hostile_config, server};
use crate::util::*;

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWS with exactly this header and these claims, signed with `key`.
fn jws(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("signs");
    format!("{message}.{sig}")
}

/// An HS256 JWS with the test secret and this header: a valid signature over whatever it says.
fn hs256(header: Value, claims: &Value) -> String {
    jws(
        &header,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
}

/// Claims valid for an hour.
fn claims(sub: &str, org: &str) -> Value {
    json!({"sub": sub, "org": org, "exp": unix_now() + 3600})
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../server/tests/fixtures/jwt/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn rsa_private_key() -> EncodingKey {
    let pem = std::fs::read(fixture("rsa-private.pem")).expect("fixture");
    EncodingKey::from_rsa_pem(&pem).expect("an RSA private key")
}

/// `token` is refused at the upgrade (query and header: 401 with `error`, the token not echoed)
/// and in the `auth` frame (close `close`).
async fn assert_token_refused(s: &TestServer, token: &str, error: &str, close: u16) {
    for a in [
        exchange(s.addr, upgrade(&format!("/api/ws?token={token}"), &[])).await,
        exchange(
            s.addr,
            upgrade("/api/ws", &[("Authorization", &format!("Bearer {token}"))]),
        )
        .await,
    ] {
        assert_refused(&a, 401, error);
        assert!(
            token.is_empty() || !a.body().contains(token),
            "the token is echoed: {a:?}"
        );
    }
    let mut c = Client::connect(&s.ws_url()).await;
    c.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.closed().await, Some(close));
}

#[tokio::test]
async fn h45_alg_none_in_any_spelling_is_refused() {
    let s = server().await;
    let body = b64(claims("u_1", "o_1").to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let head = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
        for sig in ["", "AAAA"] {
            assert_token_refused(&s, &format!("{head}.{body}.{sig}"), "unauthorized", 4001).await;
        }
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h46_crit_header_is_refused_even_with_a_valid_signature() {
    let s = server().await;
    let t = hs256(
        json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
        &claims("u_1", "o_1"),
    );
    assert_token_refused(&s, &t, "unauthorized", 4001).await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h47_jku_and_x5u_headers_are_refused_and_never_fetched() {
    let s = server().await;
    let trap = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    let c = claims("u_1", "o_1");
    for member in ["jku", "x5u"] {
        let mut header = json!({"alg": "HS256"});
        header[member] = json!(url);
        let t = hs256(header.clone(), &c);
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
        header["alg"] = json!("RS256");
        let t = jws(&header, &c, &rsa_private_key(), Algorithm::RS256);
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    assert!(
        timeout(Duration::from_millis(300), trap.accept())
            .await
            .is_err(),
        "the server fetched a key URL named in a token"
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h48_embedded_jwk_or_x5c_or_a_foreign_secret_is_refused() {
    let s = server().await;
    let c = claims("u_1", "o_1");
    let attacker = EncodingKey::from_secret(b"attacker");
    let jwk = json!({"kty": "oct", "k": b64("attacker")});
    for header in [
        json!({"alg": "HS256", "jwk": jwk}),
        json!({"alg": "HS256", "x5c": ["MIIB"]}),
        json!({"alg": "HS256", "typ": "JWT"}),
    ] {
        let t = jws(&header, &c, &attacker, Algorithm::HS256);
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h49_algorithm_confusion_hs256_signed_with_the_public_key_is_refused() {
    let mut cfg = hostile_config();
    cfg.auth.keys = vec![KeySource::PublicKeyPem(fixture("rsa-public.pem").into())];
    let s = TestServer::with(cfg).await;
    let c = claims("u_1", "o_1");
    let pem = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let t = jws(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &c,
        &EncodingKey::from_secret(&pem),
        Algorithm::HS256,
    );
    assert_token_refused(&s, &t, "unauthorized", 4001).await;
    for alg in [
        "HS384", "HS512", "RS512", "PS256", "ES256", "EdDSA", "RSA-OAEP",
    ] {
        let t = jws(
            &json!({"alg": alg}),
            &c,
            &rsa_private_key(),
            Algorithm::RS256,
        );
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    // The same claims, properly signed RS256, connect.
    let good = jws(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &c,
        &rsa_private_key(),
        Algorithm::RS256,
    );
    let mut client = s.client_with_token(&good).await;
    client.assert_alive().await;
}

#[tokio::test]
async fn h50_tampered_truncated_or_non_canonical_tokens_are_refused() {
    let s = server().await;
    let good = token("u_1", "o_1");
    let parts: Vec<&str> = good.split('.').collect();
    let other_org = b64(claims("u_1", "o_2").to_string());
    for t in [
        format!("{}.{other_org}.{}", parts[0], parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.{}", parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        good[..good.len() - 1].to_owned(),
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            token("u_2", "o_1").split('.').nth(2).unwrap()
        ),
        "..".to_owned(),
    ] {
        assert_token_refused(&s, &t, "unauthorized", 4001).await;
    }
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h51_expired_token_gets_token_expired_4002_and_invalid_token_on_refresh() {
    let s = server().await;
    assert_token_refused(&s, &expired_token("u_1", "o_1"), "token_expired", 4002).await;
    let mut c = s.client("u_1", "o_1").await;
    let m = c
        .request(json!({"type": "refresh", "token": expired_token("u_1", "o_1"), "ref": 1}))
        .await;
    assert_eq!(
        (m["code"].as_str(), m["ref"].as_u64()),
        (Some("invalid_token"), Some(1)),
        "{m}"
    );
    c.assert_alive().await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h52_another_orgs_channel_is_forbidden_and_a_channels_claim_never_widens_it() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    let m = expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(m["channelId"], "org:o_2");
    let mut c = s
        .client_with_token(&token_for("u_1", "o_1", &["org:*", "task:*"]))
        .await;
    expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    // The same channel name in another org is another channel: o_2's events never arrive.
    assert_eq!(c.subscribe("task:t_9").await["type"], "subscribed");
    let (status, _) = s.publish(event("o_2", &["task:t_9", "org:o_2"], 1)).await;
    assert_eq!(status, 202);
    c.silent_for(Duration::from_millis(200)).await;
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h53_one_megabyte_authorization_header_gets_431_or_a_close() {
    let s = server().await;
    let huge = format!("Bearer {}", "A".repeat(1024 * 1024));
    let a = exchange(s.addr, upgrade("/api/ws", &[("Authorization", &huge)])).await;
    assert!(matches!(a.status(), Some(431) | None), "{a:?}");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h54_token_in_header_and_query_the_header_wins() {
    let s = server().await;
    let header = format!("Bearer {}", token("u_header", "o_1"));
    let target = format!("/api/ws?token={}", token("u_query", "o_1"));
    let mut r = Raw::connect(s.addr).await;
    assert!(
        r.send(upgrade(&target, &[("Authorization", &header)]).as_bytes())
            .await
    );
    assert_eq!(r.answer().await.status(), Some(101));
    match r.next().await {
        Seen::Text(m) => assert_eq!(m["userId"], "u_header", "{m}"),
        other => panic!("expected connected, got {other:?}"),
    }
    // A bad header is not rescued by a good query token.
    let a = exchange(
        s.addr,
        upgrade(&target, &[("Authorization", "Bearer nonsense")]),
    )
    .await;
    assert_refused(&a, 401, "unauthorized");
    // Two `token` parameters: the first is the one verified.
    let target = format!("/api/ws?token=nonsense&token={}", token("u_query", "o_1"));
    assert_refused(
        &exchange(s.addr, upgrade(&target, &[])).await,
        401,
        "unauthorized",
    );
    let target = format!("/api/ws?token={}&token=nonsense", token("u_query", "o_1"));
    assert_eq!(
        exchange(s.addr, upgrade(&target, &[])).await.status(),
        Some(101)
    );
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h55_refresh_with_another_users_or_orgs_token_gets_token_mismatch() {
    let s = server().await;
    let mut c = s.client("u_1", "o_1").await;
    for t in [
        token("u_2", "o_1"),
        token("u_1", "o_2"),
        token("u_2", "o_2"),
    ] {
        let m = c.request(json!({"type": "refresh", "token": t})).await;
        assert_eq!(m["code"], "token_mismatch", "{m}");
    }
    let m = c
        .request(json!({"type": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(m["code"], "invalid_token", "{m}");
    // The connection keeps its own identity: org o_2's channel is still forbidden.
    expect_error(
        &mut c,
        r#"{"type":"subscribe","channelId":"org:o_2"}"#,
        "forbidden",
    )
    .await;
    assert_eq!(c.subscribe("org:o_1").await["type"], "subscribed");
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h56_validly_signed_token_over_8_kib_is_refused() {
    let s = server().await;
    let mut c = claims("u_1", "o_1");
    c["pad"] = json!("x".repeat(9 * 1024));
    let t = hs256(json!({"alg": "HS256", "typ": "JWT"}), &c);
    let a = exchange(
        s.addr,
        upgrade("/api/ws", &[("Authorization", &format!("Bearer {t}"))]),
    )
    .await;
    assert_refused(&a, 401, "unauthorized");
    let mut client = Client::connect(&s.ws_url()).await;
    client.send(json!({"type": "auth", "token": t})).await;
    assert_eq!(client.closed().await, Some(4001));
    assert_still_serving(&s).await;
}

#[tokio::test]
async fn h76_authorization_header_that_is_not_ascii_gets_401() {
    let s = server().await;
    let a = exchange(
        s.addr,
        with_raw_header(upgrade("/api/ws", &[]), b"Authorization: Bearer \xff\xfe"),
    )
    .await;
    assert_refused(&a, 401, "unauthorized");
    assert_still_serving(&s).await;
}
