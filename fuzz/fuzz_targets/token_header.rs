//! `JwtVerifier::verify` on arbitrary tokens: never panics, never accepts a token that was not
//! signed with a configured key, and reports `Expired` only for a signed token.
//!
//! Input layout, so that the header and claim parsers are reached often:
//!
//! - byte 0, bits 0-1, the shape: `0` the rest of the input is the token text; otherwise the
//!   rest is `header 0xFF payload 0xFF signature` (0xFF never occurs in UTF-8, so never in
//!   JSON), and the token is `b64(header).b64(payload).S` where S is `b64(signature)` (`1`),
//!   the real HS256 signature with the configured secret (`2`), or the HS256 signature with
//!   another secret (`3`);
//! - bits 2-3, `now`: a fixed recent time, 0, `i64::MIN` or `i64::MAX`;
//! - bit 4, the verifier: only the HS256 secret, or every kind of key (secret, RSA, EC P-256
//!   and Ed25519 PEM files and a JWKS, from the server's test fixtures), so that RS256, ES256
//!   and EdDSA signatures of arbitrary bytes reach the signature code too.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cortex_protocol::channel::ChannelPattern;
use cortex_realtime::internals::JwtVerifier;
use cortex_realtime::{AuthError, KeySource, VerifierConfig};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &str = "fuzz";
const OTHER_SECRET: &str = "not-the-fuzz-secret";
const NOW: i64 = 1_800_000_000;
const SEPARATOR: u8 = 0xFF;

fn secret_config() -> VerifierConfig {
    VerifierConfig {
        keys: vec![KeySource::Secret(SECRET.into())],
        ..Default::default()
    }
}

fn secret_verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| JwtVerifier::new(&secret_config()).expect("a secret is a key"))
}

/// The secret plus every public key kind; falls back to the secret alone (saying so) if the
/// fixtures have moved, so that the target keeps fuzzing.
fn every_key_verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let fixture = |name: &str| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../crates/server/tests/fixtures/jwt")
                .join(name)
        };
        let mut cfg = secret_config();
        cfg.keys.extend([
            KeySource::PublicKeyPem(fixture("rsa-public.pem")),
            KeySource::PublicKeyPem(fixture("ec-public.pem")),
            KeySource::PublicKeyPem(fixture("ed25519-public.pem")),
            KeySource::JwksFile(fixture("jwks.json")),
        ]);
        JwtVerifier::new(&cfg).unwrap_or_else(|e| {
            eprintln!("token_header: fixture keys not loaded ({e}); fuzzing the secret only");
            secret_verifier().clone()
        })
    })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(message: &str, secret: &str) -> String {
    jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HMAC-SHA256 takes a key of any length")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = [NOW, 0, i64::MIN, i64::MAX][usize::from((mode >> 2) & 3)];
    let verifier = if mode & 0x10 == 0 {
        secret_verifier()
    } else {
        every_key_verifier()
    };

    let shape = mode & 3;
    let (token, payload) = if shape == 0 {
        (String::from_utf8_lossy(rest).into_owned(), None)
    } else {
        let mut parts = rest.splitn(3, |b| *b == SEPARATOR);
        let header = parts.next().unwrap_or_default();
        let payload = parts.next().unwrap_or_default();
        let signature = parts.next().unwrap_or_default();
        let message = format!("{}.{}", b64(header), b64(payload));
        let signature = match shape {
            1 => b64(signature),
            2 => hs256(&message, SECRET),
            _ => hs256(&message, OTHER_SECRET),
        };
        (format!("{message}.{signature}"), Some(payload))
    };
    let signed = shape == 2;

    match verifier.verify(&token, now) {
        Ok(claims) => {
            assert!(signed, "unsigned token accepted: {token:?}");
            assert!(!claims.sub.is_empty() && !claims.org.is_empty());
            assert!(
                i128::from(claims.exp) + i128::from(verifier.leeway_secs()) >= i128::from(now),
                "expired token accepted"
            );
            let payload: Value = serde_json::from_slice(payload.expect("signed tokens are built"))
                .expect("an accepted payload is JSON");
            assert_eq!(payload["sub"].as_str(), Some(claims.sub.as_str()));
            assert_eq!(payload["org"].as_str(), Some(claims.org.as_str()));
            assert_eq!(payload["exp"].as_i64(), Some(claims.exp));
            match (&payload["channels"], &claims.channels) {
                (Value::Null, None) => {}
                (Value::Array(raw), Some(patterns)) => {
                    assert_eq!(raw.len(), patterns.len());
                    for (raw, pattern) in raw.iter().zip(patterns) {
                        assert_eq!(raw.as_str(), Some(pattern.to_string().as_str()));
                        assert_eq!(
                            ChannelPattern::parse(&pattern.to_string()).as_ref(),
                            Ok(pattern)
                        );
                    }
                }
                (raw, parsed) => panic!("channels {raw:?} read as {parsed:?}"),
            }
        }
        Err(AuthError::Expired) => assert!(signed, "unsigned token reported expired: {token:?}"),
        Err(AuthError::Invalid(reason)) => assert!(!reason.is_empty()),
    }
});
