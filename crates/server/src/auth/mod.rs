//! JWT verification: which tokens open a connection, and what they allow (CONTRACT.md section 4).
//!
//! [`JwtVerifier`] is built once from a [`VerifierConfig`] (that is the only place with I/O: key
//! files are read there) and then [`JwtVerifier::verify`] is pure: it takes the token and the
//! current unix time and answers [`Claims`] or an [`AuthError`]. In verification `jsonwebtoken`
//! is used only for the signature arithmetic (it also mints the HS256 tokens of
//! [`mint_hs256`]); every rule about the token's shape, header and claims is written here (in
//! `policy`) so that it is exactly ours and can be read in one place. Key files are read with
//! the `pem`, `spki` and `pkcs1` crates, our key rules on top (in `keys`).
//!
//! # What `verify` checks, in order
//!
//! 1. Shape: at most [`MAX_TOKEN_LEN`] bytes, exactly three non-empty segments of unpadded
//!    base64url (`[A-Za-z0-9_-]`, canonical encoding).
//! 2. Header: a JSON object without duplicate members; `alg` a string naming an algorithm of a
//!    configured key (an RSA key allows `RS256`, an EC P-256 key `ES256`, an Ed25519 key `EdDSA`,
//!    a secret `HS256`, nothing else; `none` in any spelling is always refused); no `crit`,
//!    `jku`, `x5u`, `jwk` or `x5c` member (no key is ever taken from, or fetched because of, a
//!    token); `kid` a string when present.
//! 3. Signature, with each configured key of the token's algorithm that the `kid` selects:
//!    a key from a JWKS entry with a `kid` only for tokens naming that `kid`; a JWKS entry
//!    without `kid` only for tokens without `kid`; a secret or PEM key (which has no `kid`) for
//!    any token. HS256 is only ever checked against configured secrets, so a token "signed" with
//!    a public key's PEM text as HMAC secret (algorithm confusion) cannot pass.
//! 4. Claims, on the payload as a JSON object without duplicate members: `sub` and `org`
//!    non-empty strings; `exp` required; `nbf` and `iat`, when present, not later than now plus
//!    the leeway; `iss` and `aud` only when configured (`aud` a string or an array of strings);
//!    `channels`, when present, an array of channel patterns, each valid. The time claims
//!    (NumericDate) must be JSON integers: RFC 7519 allows fractions, but every issuer we target
//!    writes whole seconds, and refusing the rest keeps comparisons exact and `"exp":"1e9"`-style
//!    confusion out. `"channels": null` is refused rather than read as "no restriction", because
//!    a missing allowlist widens access.
//! 5. Expiry last: `exp + leeway < now` gives [`AuthError::Expired`], and only a token that
//!    passed every other check can be reported as expired. Everything else is
//!    [`AuthError::Invalid`] with a fixed reason that never contains any part of the token.
//!
//! # Keys
//!
//! [`KeySource`] names a secret, a PEM file holding one public key (SPKI `PUBLIC KEY`, or PKCS#1
//! `RSA PUBLIC KEY`), or a JWKS file. Private keys, certificates, RSA moduli outside 2048..=4096
//! bits, EC curves other than P-256 and files with several PEM blocks are refused with a
//! [`KeyError`] naming the file. In a JWKS, entries that are not for us (`use` other than `sig`,
//! `key_ops` without `verify`, another `alg`, another key type or curve) are skipped; an entry
//! that would be used but is malformed, or any entry with private material (`d`), fails the load.
//!
//! # Layout
//!
//! - `policy`: the token rules above (shape, header, claims), pure.
//! - `keys`: key loading (secrets, PEM files, JWKS files), the only I/O.
//! - `console`: the console's tail tokens (a key derived from the admin key).
//! - this module: the public types and the glue of [`JwtVerifier::verify`]. It uses both;
//!   neither uses the other.

use std::fmt;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

mod console;
mod keys;
mod policy;
#[cfg(test)]
mod test_util;

pub use console::{CONSOLE_SUBJECT, CONSOLE_TOKEN_TTL, ConsoleKey};
pub use keys::{KeyError, KeySource};
pub use policy::{AuthError, Claims, MAX_TOKEN_LEN};

use keys::VerifyKey;
use policy::{BAD_SIGNATURE, ClaimRules, NO_MATCHING_KEY};

/// Clock leeway applied to `exp`, `nbf` and `iat` unless configured otherwise (CONTRACT.md §4).
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// What the node verifies tokens with: the keys and the claim requirements.
#[derive(Clone)]
pub struct VerifierConfig {
    /// The verification keys; at least one is required.
    pub keys: Vec<KeySource>,
    /// When set, tokens must carry exactly this `iss`; when unset, `iss` is ignored.
    pub issuer: Option<String>,
    /// When set, tokens' `aud` (a string or an array of strings) must contain it; when unset,
    /// `aud` is ignored.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Verifies connection tokens against the configured keys. Cheap to clone; `Send + Sync`, so it
/// can also be shared behind an `Arc`.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<VerifyKey>,
    rules: ClaimRules,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys)
            .field("issuer", &self.rules.issuer)
            .field("audience", &self.rules.audience)
            .field("leeway_secs", &self.rules.leeway_secs)
            .finish()
    }
}

impl JwtVerifier {
    /// Loads every configured key (reading PEM and JWKS files) and fixes the algorithm
    /// allowlist. Fails on the first unusable source, naming it.
    pub fn new(cfg: &VerifierConfig) -> Result<JwtVerifier, KeyError> {
        let mut keys = Vec::new();
        for source in &cfg.keys {
            keys.extend(keys::load(source)?);
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        if cfg.issuer.as_deref() == Some("") {
            return Err(KeyError::EmptySetting("issuer"));
        }
        if cfg.audience.as_deref() == Some("") {
            return Err(KeyError::EmptySetting("audience"));
        }
        Ok(JwtVerifier {
            keys,
            rules: ClaimRules {
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                leeway_secs: cfg.leeway_secs,
            },
        })
    }

    /// Verifies `token` at unix time `now` (seconds). Pure: no I/O, no clock.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let parts = policy::split(token)?;
        let (alg, kid) = policy::check_header(&parts.header, |alg| self.allows(alg))?;

        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.alg == alg && k.kid.accepts(kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::Invalid(NO_MATCHING_KEY));
        }
        let signed = candidates.any(|k| {
            jsonwebtoken::crypto::verify(parts.signature, parts.message.as_bytes(), &k.key, alg)
                .unwrap_or(false)
        });
        if !signed {
            return Err(AuthError::Invalid(BAD_SIGNATURE));
        }

        // Only an authenticated payload is parsed.
        self.rules.check(&parts.payload, now)
    }

    /// The clock leeway in seconds, also used by sessions to close at `exp + leeway`.
    pub fn leeway_secs(&self) -> u64 {
        self.rules.leeway_secs
    }

    /// The accepted `alg` values (e.g. `["RS256", "EdDSA"]`).
    #[cfg(test)]
    pub fn algorithms(&self) -> Vec<&'static str> {
        [
            Algorithm::HS256,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ]
        .into_iter()
        .filter(|alg| self.allows(*alg))
        .map(keys::alg_name)
        .collect()
    }

    fn allows(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.alg == alg)
    }
}

/// Mints an HS256 token with `sub`, `org`, `exp` and, when given, `channels` (used by the `token`
/// command and by tests). The header is `{"typ":"JWT","alg":"HS256"}`.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    org: &str,
    exp: i64,
    channels: Option<&[String]>,
) -> String {
    let mut claims = Map::new();
    claims.insert("sub".to_owned(), Value::from(sub));
    claims.insert("org".to_owned(), Value::from(org));
    claims.insert("exp".to_owned(), Value::from(exp));
    if let Some(channels) = channels {
        claims.insert("channels".to_owned(), Value::from(channels));
    }
    mint_hs256_claims(secret, &claims)
}

/// Mints an HS256 token carrying exactly `claims` (for extra claims such as `iat`, `iss`, `aud`).
pub fn mint_hs256_claims(secret: &str, claims: &Map<String, Value>) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HMAC-SHA256 accepts a key of any length and a JSON map always serializes")
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use cortex_protocol::channel::ChannelPattern;
    use jsonwebtoken::Algorithm;
    use serde_json::{Value, json};

    use super::policy::KID_NOT_STRING;
    use super::test_util::*;
    use super::*;

    // --- accepted tokens ---

    #[test]
    fn hs256_token_is_accepted_with_its_claims() {
        assert_eq!(
            secret_verifier().verify(&hs(claims()), NOW),
            Ok(expected_claims())
        );
    }

    #[test]
    fn rs256_token_is_accepted_with_spki_and_pkcs1_pem() {
        for pem in ["rsa-public.pem", "rsa-public-pkcs1.pem"] {
            assert_eq!(
                pem_verifier(pem).verify(&rs(claims()), NOW),
                Ok(expected_claims()),
                "{pem}"
            );
        }
    }

    #[test]
    fn es256_token_is_accepted_with_p256_pem() {
        assert_eq!(
            pem_verifier("ec-public.pem").verify(&es(claims()), NOW),
            Ok(expected_claims())
        );
    }

    #[test]
    fn eddsa_token_is_accepted_with_ed25519_pem() {
        assert_eq!(
            pem_verifier("ed25519-public.pem").verify(&ed(claims()), NOW),
            Ok(expected_claims())
        );
    }

    #[test]
    fn every_algorithm_is_accepted_when_every_kind_of_key_is_configured() {
        let v = every_key_verifier();
        assert_eq!(v.algorithms(), ["HS256", "RS256", "ES256", "EdDSA"]);
        for token in [hs(claims()), rs(claims()), es(claims()), ed(claims())] {
            assert_eq!(v.verify(&token, NOW), Ok(expected_claims()));
        }
    }

    #[test]
    fn jwks_tokens_are_accepted_by_kid() {
        let v = jwks_verifier("jwks.json");
        assert_eq!(v.algorithms(), ["RS256", "ES256", "EdDSA"]);
        let tokens = [
            with_kid(Algorithm::RS256, "rsa-1", &rsa_private("rsa-private.pem")),
            with_kid(Algorithm::ES256, "ec-1", &ec_private()),
            with_kid(Algorithm::EdDSA, "ed-1", &ed_private()),
        ];
        for token in tokens {
            assert_eq!(v.verify(&token, NOW), Ok(expected_claims()));
        }
    }

    #[test]
    fn jwks_key_without_kid_serves_tokens_without_kid_only() {
        let v = jwks_verifier("jwks-no-kid.json");
        let key = rsa_private("rsa2-private.pem");
        let token = sign(json!({"alg": "RS256"}), claims(), &key, Algorithm::RS256);
        assert_eq!(v.verify(&token, NOW), Ok(expected_claims()));
        assert_invalid(
            v.verify(&with_kid(Algorithm::RS256, "k1", &key), NOW),
            NO_MATCHING_KEY,
        );
    }

    #[test]
    fn pem_keys_are_each_tried_whatever_the_kid() {
        let v = verifier(vec![
            KeySource::PublicKeyPem(fixture("rsa-public.pem")),
            KeySource::PublicKeyPem(fixture("rsa2-public.pem")),
        ]);
        for private in ["rsa-private.pem", "rsa2-private.pem"] {
            let key = rsa_private(private);
            let token = sign(json!({"alg": "RS256"}), claims(), &key, Algorithm::RS256);
            assert_eq!(v.verify(&token, NOW), Ok(expected_claims()), "{private}");
            let token = with_kid(Algorithm::RS256, "any-kid", &key);
            assert_eq!(v.verify(&token, NOW), Ok(expected_claims()), "{private}");
        }
    }

    #[test]
    fn several_secrets_are_each_tried() {
        let v = verifier(vec![
            KeySource::Secret("old-secret".to_owned()),
            KeySource::Secret(SECRET.to_owned()),
        ]);
        assert_eq!(v.verify(&hs(claims()), NOW), Ok(expected_claims()));
    }

    // --- kid ---

    #[test]
    fn unknown_kid_is_refused() {
        let v = jwks_verifier("jwks.json");
        let key = rsa_private("rsa-private.pem");
        for kid in ["rsa-9", "RSA-1", "rsa-1 ", ""] {
            assert_invalid(
                v.verify(&with_kid(Algorithm::RS256, kid, &key), NOW),
                NO_MATCHING_KEY,
            );
        }
    }

    #[test]
    fn jwks_key_with_kid_is_not_used_for_a_token_without_kid() {
        assert_invalid(
            jwks_verifier("jwks.json").verify(&rs(claims()), NOW),
            NO_MATCHING_KEY,
        );
    }

    #[test]
    fn kid_of_a_key_for_another_algorithm_is_refused() {
        let token = with_kid(Algorithm::RS256, "ec-1", &rsa_private("rsa-private.pem"));
        assert_invalid(
            jwks_verifier("jwks.json").verify(&token, NOW),
            NO_MATCHING_KEY,
        );
    }

    #[test]
    fn jwks_key_not_for_signatures_is_never_used() {
        let token = with_kid(
            Algorithm::RS256,
            "rsa-enc",
            &rsa_private("rsa2-private.pem"),
        );
        assert_invalid(
            jwks_verifier("jwks.json").verify(&token, NOW),
            NO_MATCHING_KEY,
        );
    }

    #[test]
    fn non_string_kid_is_refused() {
        for kid in [json!(7), json!(null), json!(["rsa-1"])] {
            assert_invalid(
                secret_verifier().verify(&hs_header(json!({"alg": "HS256", "kid": kid})), NOW),
                KID_NOT_STRING,
            );
        }
    }

    // --- signatures ---

    fn signed_cases() -> Vec<(JwtVerifier, String)> {
        vec![
            (secret_verifier(), hs(claims())),
            (pem_verifier("rsa-public.pem"), rs(claims())),
            (pem_verifier("ec-public.pem"), es(claims())),
            (pem_verifier("ed25519-public.pem"), ed(claims())),
        ]
    }

    #[test]
    fn tampered_payload_is_refused() {
        let forged = b64(claims_with(&[("sub", json!("admin"))])
            .to_string()
            .as_bytes());
        for (v, token) in signed_cases() {
            assert_eq!(v.verify(&token, NOW), Ok(expected_claims()));
            assert_invalid(
                v.verify(&replace_segment(&token, 1, &forged), NOW),
                BAD_SIGNATURE,
            );
        }
    }

    #[test]
    fn tampered_header_is_refused() {
        let forged = b64(json!({"alg": "HS256", "typ": "at+jwt"})
            .to_string()
            .as_bytes());
        let token = hs(claims());
        assert_invalid(
            secret_verifier().verify(&replace_segment(&token, 0, &forged), NOW),
            BAD_SIGNATURE,
        );
    }

    #[test]
    fn token_signed_with_another_secret_is_refused() {
        let token = sign(
            json!({"alg": "HS256"}),
            claims(),
            &secret_key(b"another-secret"),
            Algorithm::HS256,
        );
        assert_invalid(secret_verifier().verify(&token, NOW), BAD_SIGNATURE);
    }

    #[test]
    fn token_signed_with_another_rsa_key_is_refused() {
        let token = sign(
            json!({"alg": "RS256"}),
            claims(),
            &rsa_private("rsa2-private.pem"),
            Algorithm::RS256,
        );
        assert_invalid(
            pem_verifier("rsa-public.pem").verify(&token, NOW),
            BAD_SIGNATURE,
        );
    }

    #[test]
    fn truncated_or_altered_signature_is_refused() {
        for (v, token) in signed_cases() {
            let signature = token.rsplit('.').next().unwrap();
            // A signature cut short by a few bytes is still base64url: the signature check
            // refuses it.
            let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
            for cut in [1, 3, bytes.len() - 1] {
                let truncated = b64(&bytes[..bytes.len() - cut]);
                assert_invalid(
                    v.verify(&replace_segment(&token, 2, &truncated), NOW),
                    BAD_SIGNATURE,
                );
            }
            // Cut short by one character, it is usually not canonical base64url any more.
            let truncated = &signature[..signature.len() - 1];
            assert!(
                v.verify(&replace_segment(&token, 2, truncated), NOW)
                    .is_err()
            );
            let mut altered = signature.as_bytes().to_vec();
            altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert_invalid(
                v.verify(&replace_segment(&token, 2, &altered), NOW),
                BAD_SIGNATURE,
            );
        }
    }

    #[test]
    fn unauthenticated_payload_is_not_parsed() {
        let key = secret_key(b"another-secret");
        let token = sign_raw(r#"{"alg":"HS256"}"#, "not json", &key, Algorithm::HS256);
        assert_invalid(secret_verifier().verify(&token, NOW), BAD_SIGNATURE);
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let secret = "hunter2-very-secret-value";
        let cfg = config(vec![
            KeySource::Secret(secret.to_owned()),
            KeySource::PublicKeyPem(fixture("rsa-public.pem")),
        ]);
        let text = format!("{cfg:?}");
        assert!(text.contains("Secret(<redacted>)"), "{text}");
        assert!(text.contains("rsa-public.pem"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let verifier = JwtVerifier::new(&cfg).unwrap();
        let text = format!("{verifier:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains(&b64(secret.as_bytes())[..12]), "{text}");
        assert!(!text.contains(&STANDARD.encode(secret)[..12]), "{text}");
    }

    #[test]
    fn no_key_empty_secret_or_empty_setting_is_refused() {
        assert!(matches!(load_error(vec![]), KeyError::NoKeys));
        assert!(matches!(
            load_error(vec![KeySource::Secret(String::new())]),
            KeyError::EmptySecret
        ));
        for (issuer, audience, name) in [
            (Some(String::new()), None, "issuer"),
            (None, Some(String::new()), "audience"),
        ] {
            let err = JwtVerifier::new(&VerifierConfig {
                issuer,
                audience,
                ..config(vec![KeySource::Secret(SECRET.to_owned())])
            })
            .unwrap_err();
            assert!(
                matches!(err, KeyError::EmptySetting(n) if n == name),
                "{err}"
            );
        }
    }

    // --- minting and the type's properties ---

    #[test]
    fn minted_tokens_verify() {
        let v = secret_verifier();
        let token = mint_hs256(SECRET, "u_1", "o_1", NOW + 3600, None);
        assert_eq!(v.verify(&token, NOW), Ok(expected_claims()));
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));

        let channels = ["agent:*".to_owned(), "task:t_9".to_owned()];
        let claims = v
            .verify(
                &mint_hs256(SECRET, "u_1", "o_1", NOW + 60, Some(&channels)),
                NOW,
            )
            .unwrap();
        assert_eq!(
            claims.channels,
            Some(vec![
                ChannelPattern::parse("agent:*").unwrap(),
                ChannelPattern::parse("task:t_9").unwrap(),
            ])
        );

        let strict = JwtVerifier::new(&VerifierConfig {
            issuer: Some("cortex".to_owned()),
            audience: Some("realtime".to_owned()),
            ..config(vec![KeySource::Secret(SECRET.to_owned())])
        })
        .unwrap();
        let claims = claims_with(&[
            ("iat", json!(NOW)),
            ("iss", json!("cortex")),
            ("aud", json!(["realtime"])),
        ]);
        let token = mint_hs256_claims(SECRET, claims.as_object().unwrap());
        assert_eq!(strict.verify(&token, NOW), Ok(expected_claims()));
        assert_invalid(
            v.verify(&mint_hs256("other", "u_1", "o_1", NOW + 60, None), NOW),
            BAD_SIGNATURE,
        );
    }

    #[test]
    fn verifier_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<JwtVerifier>();
        let v = every_key_verifier();
        let copy = v.clone();
        assert_eq!(copy.verify(&ed(claims()), NOW), Ok(expected_claims()));
    }

    #[test]
    fn auth_errors_tell_expired_from_invalid() {
        assert!(AuthError::Expired.is_expired());
        assert!(!AuthError::Invalid(BAD_SIGNATURE).is_expired());
        assert_eq!(AuthError::Expired.to_string(), "token expired");
        assert_eq!(
            AuthError::Invalid(BAD_SIGNATURE).to_string(),
            "invalid token: bad signature"
        );
    }
}
