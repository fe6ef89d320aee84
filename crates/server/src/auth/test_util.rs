//! Shared helpers of the auth module's unit tests: fixtures, signing, verifiers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::keys::alg_name;
use super::{AuthError, Claims, JwtVerifier, KeyError, KeySource, VerifierConfig};

pub(super) const NOW: i64 = 1_800_000_000;
pub(super) const SECRET: &str = "test-secret-0123456789-abcdefghij";

pub(super) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

pub(super) fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture readable")
}

/// A file in the temp dir, removed on drop.
pub(super) struct TempFile(pub PathBuf);

impl TempFile {
    pub(super) fn new(contents: &[u8]) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "cortex-auth-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("temp file writable");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token from raw header and payload text, signed with `key` as `alg`.
pub(super) fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

pub(super) fn sign(header: Value, claims: Value, key: &EncodingKey, alg: Algorithm) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), key, alg)
}

pub(super) fn secret_key(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret)
}

pub(super) fn rsa_private(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture_bytes(name)).unwrap()
}

pub(super) fn ec_private() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).unwrap()
}

pub(super) fn ed_private() -> EncodingKey {
    EncodingKey::from_ed_pem(&fixture_bytes("ed25519-private.pem")).unwrap()
}

pub(super) fn claims() -> Value {
    json!({"sub": "u_1", "org": "o_1", "exp": NOW + 3600})
}

/// `claims()` with members set, in order; a name starting with `-` removes that member
/// instead (its value is ignored).
pub(super) fn claims_with(changes: &[(&str, Value)]) -> Value {
    let mut c = claims();
    let map = c.as_object_mut().unwrap();
    for (name, value) in changes {
        match name.strip_prefix('-') {
            Some(removed) => {
                map.remove(removed);
            }
            None => {
                map.insert((*name).to_owned(), value.clone());
            }
        }
    }
    c
}

pub(super) fn hs(claims: Value) -> String {
    sign(
        json!({"alg": "HS256", "typ": "JWT"}),
        claims,
        &secret_key(SECRET.as_bytes()),
        Algorithm::HS256,
    )
}

pub(super) fn hs_header(header: Value) -> String {
    sign(
        header,
        claims(),
        &secret_key(SECRET.as_bytes()),
        Algorithm::HS256,
    )
}

pub(super) fn rs(claims: Value) -> String {
    sign(
        json!({"alg": "RS256", "typ": "JWT"}),
        claims,
        &rsa_private("rsa-private.pem"),
        Algorithm::RS256,
    )
}

pub(super) fn es(claims: Value) -> String {
    sign(
        json!({"alg": "ES256"}),
        claims,
        &ec_private(),
        Algorithm::ES256,
    )
}

pub(super) fn ed(claims: Value) -> String {
    sign(
        json!({"alg": "EdDSA"}),
        claims,
        &ed_private(),
        Algorithm::EdDSA,
    )
}

pub(super) fn with_kid(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    sign(
        json!({"alg": alg_name(alg), "kid": kid}),
        claims(),
        key,
        alg,
    )
}

pub(super) fn config(keys: Vec<KeySource>) -> VerifierConfig {
    VerifierConfig {
        keys,
        ..VerifierConfig::default()
    }
}

pub(super) fn verifier(keys: Vec<KeySource>) -> JwtVerifier {
    JwtVerifier::new(&config(keys)).unwrap()
}

pub(super) fn secret_verifier() -> JwtVerifier {
    verifier(vec![KeySource::Secret(SECRET.to_owned())])
}

pub(super) fn pem_verifier(name: &str) -> JwtVerifier {
    verifier(vec![KeySource::PublicKeyPem(fixture(name))])
}

pub(super) fn jwks_verifier(name: &str) -> JwtVerifier {
    verifier(vec![KeySource::JwksFile(fixture(name))])
}

pub(super) fn every_key_verifier() -> JwtVerifier {
    verifier(vec![
        KeySource::Secret(SECRET.to_owned()),
        KeySource::PublicKeyPem(fixture("rsa-public.pem")),
        KeySource::PublicKeyPem(fixture("ec-public.pem")),
        KeySource::PublicKeyPem(fixture("ed25519-public.pem")),
    ])
}

pub(super) fn expected_claims() -> Claims {
    Claims {
        sub: "u_1".to_owned(),
        org: "o_1".to_owned(),
        exp: NOW + 3600,
        channels: None,
    }
}

#[track_caller]
pub(super) fn assert_invalid(result: Result<Claims, AuthError>, reason: &'static str) {
    assert_eq!(result, Err(AuthError::Invalid(reason)));
}

pub(super) fn replace_segment(token: &str, index: usize, segment: &str) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[index] = segment;
    parts.join(".")
}

#[track_caller]
pub(super) fn load_error(keys: Vec<KeySource>) -> KeyError {
    JwtVerifier::new(&config(keys)).expect_err("refused")
}
