//! Token policy: what a token's shape, header and claims must be (the module documentation of
//! [`crate::auth`] lists the rules in order). Pure: no I/O, no clock and no key material; the
//! caller says which algorithms its keys allow and at what time the claims are judged.
//!
//! This is deliberately hand-written rather than left to `jsonwebtoken::Validation`: the rules,
//! their order and their fixed reasons are ours (integer-only NumericDates, `exp` decided last,
//! `"channels": null` refused, no key material taken from a header), and a library's defaults
//! or error kinds changing between versions must not change which tokens open a connection.
//! It never reads a file or the clock (`now` is an argument), and an error never quotes any
//! part of the token.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cortex_protocol::channel::ChannelPattern;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Longest token accepted, in bytes. Real tokens are well under 2 KiB; anything past this is
/// refused before any decoding work.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Header members that name key material or extensions outside the token: refused.
const FORBIDDEN_HEADERS: [(&str, &str); 5] = [
    ("crit", "crit header is not supported"),
    ("jku", "jku header is refused"),
    ("x5u", "x5u header is refused"),
    ("jwk", "jwk header is refused"),
    ("x5c", "x5c header is refused"),
];

// The fixed reasons carried by `AuthError::Invalid`.
pub(super) const TOO_LARGE: &str = "token too large";
pub(super) const NOT_THREE_SEGMENTS: &str = "not three dot-separated segments";
pub(super) const EMPTY_SEGMENT: &str = "empty segment";
pub(super) const NOT_BASE64URL: &str = "segment is not base64url";
pub(super) const HEADER_NOT_OBJECT: &str = "header is not a JSON object";
pub(super) const NO_ALG: &str = "header has no alg";
pub(super) const ALG_NOT_STRING: &str = "alg is not a string";
pub(super) const ALG_NONE: &str = "alg none is refused";
pub(super) const ALG_NOT_ALLOWED: &str = "algorithm not allowed";
pub(super) const KID_NOT_STRING: &str = "kid is not a string";
pub(super) const NO_MATCHING_KEY: &str = "no key matches the token's kid";
pub(super) const BAD_SIGNATURE: &str = "bad signature";
pub(super) const PAYLOAD_NOT_OBJECT: &str = "payload is not a JSON object";
pub(super) const BAD_SUB: &str = "sub must be a non-empty string";
pub(super) const BAD_ORG: &str =
    "org must be an id (a string matching [A-Za-z0-9][A-Za-z0-9._-]{0,127})";
pub(super) const NO_EXP: &str = "exp is required";
pub(super) const BAD_EXP: &str = "exp must be an integer";
pub(super) const BAD_NBF: &str = "nbf must be an integer";
pub(super) const BAD_IAT: &str = "iat must be an integer";
pub(super) const NOT_YET_VALID: &str = "token not valid yet (nbf)";
pub(super) const ISSUED_IN_FUTURE: &str = "token issued in the future (iat)";
pub(super) const WRONG_ISSUER: &str = "wrong issuer";
pub(super) const BAD_AUD: &str = "aud must be a string or an array of strings";
pub(super) const WRONG_AUDIENCE: &str = "wrong audience";
pub(super) const BAD_CHANNELS: &str = "channels must be an array of strings";
pub(super) const BAD_CHANNEL_PATTERN: &str = "channels holds an invalid channel pattern";

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id (`sub`), non-empty.
    pub sub: String,
    /// The organisation (tenant) the connection acts in (`org`), non-empty.
    pub org: String,
    /// Expiry (`exp`), unix seconds; the session closes with 4002 once it passes plus the leeway.
    pub exp: i64,
    /// The token's channel allowlist; `None` means every channel of the org. It never widens the
    /// org rule.
    pub channels: Option<Vec<ChannelPattern>>,
}

/// Why a token was refused. Messages are fixed strings: they never contain any part of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is valid in every respect but `exp` (plus the leeway) has passed: HTTP 401
    /// `token_expired`, close code 4002. The client should fetch a new token.
    #[error("token expired")]
    Expired,
    /// Anything else: HTTP 401 `unauthorized`, close code 4001. The reason is for logs and the
    /// error message, never for branching.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    /// Whether this is [`AuthError::Expired`] (4002 / `token_expired`) rather than any other
    /// failure (4001 / `unauthorized`).
    pub fn is_expired(&self) -> bool {
        matches!(self, AuthError::Expired)
    }
}

/// A token cut at its dots, every segment decoded and the header parsed; nothing checked yet
/// beyond the shape.
pub(super) struct Parts<'a> {
    /// The header, a JSON object without duplicate members.
    pub header: Map<String, Value>,
    /// The payload's bytes: not parsed until the signature is checked.
    pub payload: Vec<u8>,
    /// The signed text: `header.payload`, as received.
    pub message: &'a str,
    /// The signature segment, still base64url (as the signature check takes it).
    pub signature: &'a str,
}

/// Applies the shape rules (length, three segments, canonical base64url) and parses the header.
pub(super) fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Invalid(TOO_LARGE));
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(AuthError::Invalid(NOT_THREE_SEGMENTS));
    };
    let header = decode_segment(header_b64)?;
    let payload = decode_segment(payload_b64)?;
    decode_segment(signature_b64)?;
    let header = parse_object(&header).ok_or(AuthError::Invalid(HEADER_NOT_OBJECT))?;
    Ok(Parts {
        header,
        payload,
        message: &token[..header_b64.len() + 1 + payload_b64.len()],
        signature: signature_b64,
    })
}

/// Applies the header rules and answers the token's algorithm (one that `allows` accepts) and
/// its `kid`, if any.
pub(super) fn check_header(
    header: &Map<String, Value>,
    allows: impl Fn(Algorithm) -> bool,
) -> Result<(Algorithm, Option<&str>), AuthError> {
    for (name, reason) in FORBIDDEN_HEADERS {
        if header.contains_key(name) {
            return Err(AuthError::Invalid(reason));
        }
    }
    let alg = match header.get("alg") {
        None => return Err(AuthError::Invalid(NO_ALG)),
        Some(Value::String(alg)) => alg,
        Some(_) => return Err(AuthError::Invalid(ALG_NOT_STRING)),
    };
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::Invalid(ALG_NONE));
    }
    let alg = parse_alg(alg)
        .filter(|alg| allows(*alg))
        .ok_or(AuthError::Invalid(ALG_NOT_ALLOWED))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(AuthError::Invalid(KID_NOT_STRING)),
    };
    Ok((alg, kid))
}

/// The claim requirements of a verifier.
#[derive(Debug, Clone)]
pub(super) struct ClaimRules {
    /// When set, `iss` must be exactly this.
    pub issuer: Option<String>,
    /// When set, `aud` must contain this.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: u64,
}

impl ClaimRules {
    /// Parses an authenticated payload and applies the claim rules at unix time `now`; expiry
    /// is decided last.
    pub(super) fn check(&self, payload: &[u8], now: i64) -> Result<Claims, AuthError> {
        let claims = parse_object(payload).ok_or(AuthError::Invalid(PAYLOAD_NOT_OBJECT))?;
        let sub = non_empty_string(&claims, "sub").ok_or(AuthError::Invalid(BAD_SUB))?;
        // An id, as in channel ids: never a `{` or `}`, which would break the Redis hash tag.
        let org = non_empty_string(&claims, "org")
            .filter(|o| cortex_protocol::channel::is_valid_id(o))
            .ok_or(AuthError::Invalid(BAD_ORG))?;
        let exp = numeric_date(&claims, "exp", BAD_EXP)?.ok_or(AuthError::Invalid(NO_EXP))?;
        let nbf = numeric_date(&claims, "nbf", BAD_NBF)?;
        let iat = numeric_date(&claims, "iat", BAD_IAT)?;

        let now = i128::from(now);
        let leeway = i128::from(self.leeway_secs);
        if nbf.is_some_and(|nbf| i128::from(nbf) > now + leeway) {
            return Err(AuthError::Invalid(NOT_YET_VALID));
        }
        if iat.is_some_and(|iat| i128::from(iat) > now + leeway) {
            return Err(AuthError::Invalid(ISSUED_IN_FUTURE));
        }

        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(AuthError::Invalid(WRONG_ISSUER));
        }
        if let Some(audience) = &self.audience {
            check_audience(claims.get("aud"), audience)?;
        }

        let channels = match claims.get("channels") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| {
                        let text = item.as_str().ok_or(AuthError::Invalid(BAD_CHANNELS))?;
                        ChannelPattern::parse(text)
                            .map_err(|_| AuthError::Invalid(BAD_CHANNEL_PATTERN))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(AuthError::Invalid(BAD_CHANNELS)),
        };

        if i128::from(exp) + leeway < now {
            return Err(AuthError::Expired);
        }
        Ok(Claims {
            sub: sub.to_owned(),
            org: org.to_owned(),
            exp,
            channels,
        })
    }
}

/// The four algorithms this server can ever accept, spelled exactly (case-sensitive, RFC 7518).
fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Decodes one token segment: non-empty, only `[A-Za-z0-9_-]`, canonical unpadded base64url.
///
/// The alphabet is checked here by hand, not left to the engine: base64 engines differ (and are
/// configurable) on padding, whitespace and the `+/` alphabet, and a token must be refused for
/// any of them whatever the engine does. Canonical trailing bits are the `URL_SAFE_NO_PAD`
/// engine's own rule (`decode_allow_trailing_bits` is off), pinned by the tests.
fn decode_segment(segment: &str) -> Result<Vec<u8>, AuthError> {
    if segment.is_empty() {
        return Err(AuthError::Invalid(EMPTY_SEGMENT));
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AuthError::Invalid(NOT_BASE64URL));
    }
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Invalid(NOT_BASE64URL))
}

/// A JSON object whose members are all distinct: `{"alg":"HS256","alg":"none"}` is refused
/// instead of letting the last member win (parsers disagree on which one counts).
///
/// Hand-written because `serde_json` (like most JSON parsers) keeps the last of duplicate members
/// without saying so, and the `jsonwebtoken` header and claims types inherit that; a visitor
/// that sees every member is the only way to notice.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(A::Error::custom("duplicate member"));
                    }
                    let value = access.next_value::<Value>()?;
                    map.insert(key, value);
                }
                Ok(UniqueObject(map))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

fn parse_object(json: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<UniqueObject>(json)
        .ok()
        .map(|object| object.0)
}

fn non_empty_string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A NumericDate claim: absent is `None`; present must be a JSON integer that fits an `i64`.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    reason: &'static str,
) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value.as_i64().map(Some).ok_or(AuthError::Invalid(reason)),
    }
}

fn check_audience(aud: Option<&Value>, audience: &str) -> Result<(), AuthError> {
    let found = match aud {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                let item = item.as_str().ok_or(AuthError::Invalid(BAD_AUD))?;
                found |= item == audience;
            }
            found
        }
        None => false,
        Some(_) => return Err(AuthError::Invalid(BAD_AUD)),
    };
    if found {
        Ok(())
    } else {
        Err(AuthError::Invalid(WRONG_AUDIENCE))
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;
    use serde_json::{Value, json};

    use super::*;
    use crate::auth::test_util::*;
    use crate::auth::{DEFAULT_LEEWAY_SECS, JwtVerifier, KeySource, VerifierConfig};

    // --- algorithms ---

    #[test]
    fn alg_none_is_refused_in_every_spelling_signed_or_not() {
        let v = every_key_verifier();
        let payload = b64(claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
            assert_invalid(
                v.verify(&format!("{header}.{payload}."), NOW),
                EMPTY_SEGMENT,
            );
            assert_invalid(
                v.verify(&format!("{header}.{payload}"), NOW),
                NOT_THREE_SEGMENTS,
            );
            let signed = hs_header(json!({"alg": alg, "typ": "JWT"}));
            assert_invalid(v.verify(&signed, NOW), ALG_NONE);
        }
    }

    #[test]
    fn algorithm_without_a_configured_key_is_refused() {
        assert_invalid(
            pem_verifier("rsa-public.pem").verify(&hs(claims()), NOW),
            ALG_NOT_ALLOWED,
        );
        assert_invalid(
            secret_verifier().verify(&rs(claims()), NOW),
            ALG_NOT_ALLOWED,
        );
        assert_invalid(
            pem_verifier("rsa-public.pem").verify(&es(claims()), NOW),
            ALG_NOT_ALLOWED,
        );
        assert_invalid(
            pem_verifier("ec-public.pem").verify(&ed(claims()), NOW),
            ALG_NOT_ALLOWED,
        );
        assert_invalid(
            pem_verifier("ed25519-public.pem").verify(&rs(claims()), NOW),
            ALG_NOT_ALLOWED,
        );
        assert_invalid(
            jwks_verifier("jwks.json").verify(&hs(claims()), NOW),
            ALG_NOT_ALLOWED,
        );
    }

    #[test]
    fn other_algorithms_of_a_configured_key_family_are_refused() {
        let rsa = rsa_private("rsa-private.pem");
        let v = pem_verifier("rsa-public.pem");
        for alg in [
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let header = json!({ "alg": alg });
            let token = sign(header, claims(), &rsa, alg);
            assert_invalid(v.verify(&token, NOW), ALG_NOT_ALLOWED);
        }
        let secret = secret_key(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(json!({ "alg": alg }), claims(), &secret, alg);
            assert_invalid(secret_verifier().verify(&token, NOW), ALG_NOT_ALLOWED);
        }
        let token = hs_header(json!({"alg": "ES384"}));
        assert_invalid(
            pem_verifier("ec-public.pem").verify(&token, NOW),
            ALG_NOT_ALLOWED,
        );
    }

    #[test]
    fn misspelled_missing_or_mistyped_alg_is_refused() {
        let v = every_key_verifier();
        for alg in [
            "hs256",
            "HS256 ",
            " HS256",
            "RS256\u{0}",
            "",
            "eddsa",
            "Ed25519",
        ] {
            assert_invalid(
                v.verify(&hs_header(json!({ "alg": alg })), NOW),
                ALG_NOT_ALLOWED,
            );
        }
        assert_invalid(v.verify(&hs_header(json!({"typ": "JWT"})), NOW), NO_ALG);
        for alg in [
            json!(256),
            json!(["HS256"]),
            json!(null),
            json!({"HS256": 1}),
        ] {
            assert_invalid(
                v.verify(&hs_header(json!({ "alg": alg })), NOW),
                ALG_NOT_STRING,
            );
        }
    }

    #[test]
    fn hs256_signed_with_a_public_key_as_secret_is_refused() {
        for (pem, keys) in [
            ("rsa-public.pem", "rsa-public.pem"),
            ("ec-public.pem", "ec-public.pem"),
            ("ed25519-public.pem", "ed25519-public.pem"),
            ("rsa-public-pkcs1.pem", "rsa-public-pkcs1.pem"),
        ] {
            let forged = sign(
                json!({"alg": "HS256"}),
                claims(),
                &secret_key(&fixture_bytes(pem)),
                Algorithm::HS256,
            );
            // Public key only: HS256 is not even allowed.
            assert_invalid(pem_verifier(keys).verify(&forged, NOW), ALG_NOT_ALLOWED);
            // With a secret too: HS256 is checked against the secret only.
            let v = verifier(vec![
                KeySource::PublicKeyPem(fixture(keys)),
                KeySource::Secret(SECRET.to_owned()),
            ]);
            assert_invalid(v.verify(&forged, NOW), BAD_SIGNATURE);
        }
        let forged = sign(
            json!({"alg": "HS256", "kid": "rsa-1"}),
            claims(),
            &secret_key(&fixture_bytes("jwks.json")),
            Algorithm::HS256,
        );
        assert_invalid(
            jwks_verifier("jwks.json").verify(&forged, NOW),
            ALG_NOT_ALLOWED,
        );
    }

    // --- time ---

    #[test]
    fn expiry_beyond_the_leeway_is_expired_and_within_it_accepted() {
        let v = secret_verifier();
        assert_eq!(v.leeway_secs(), DEFAULT_LEEWAY_SECS);
        let result = v.verify(&hs(claims_with(&[("exp", json!(NOW - 31))])), NOW);
        assert_eq!(result, Err(AuthError::Expired));
        assert!(result.unwrap_err().is_expired());
        for exp in [NOW - 30, NOW - 1, NOW] {
            assert!(
                v.verify(&hs(claims_with(&[("exp", json!(exp))])), NOW)
                    .is_ok(),
                "{exp}"
            );
        }

        let strict = JwtVerifier::new(&VerifierConfig {
            leeway_secs: 0,
            ..config(vec![KeySource::Secret(SECRET.to_owned())])
        })
        .unwrap();
        assert_eq!(strict.leeway_secs(), 0);
        assert_eq!(
            strict.verify(&hs(claims_with(&[("exp", json!(NOW - 1))])), NOW),
            Err(AuthError::Expired)
        );
        assert!(
            strict
                .verify(&hs(claims_with(&[("exp", json!(NOW))])), NOW)
                .is_ok()
        );
    }

    #[test]
    fn only_an_otherwise_valid_token_is_reported_expired() {
        let v = JwtVerifier::new(&VerifierConfig {
            issuer: Some("https://auth.example".to_owned()),
            ..config(vec![KeySource::Secret(SECRET.to_owned())])
        })
        .unwrap();
        // An expired token with the right issuer, changed by `extra`.
        let with_iss = |extra: &[(&str, Value)]| {
            let base = [
                ("exp", json!(NOW - 3600)),
                ("iss", json!("https://auth.example")),
            ];
            claims_with(&[&base[..], extra].concat())
        };
        assert_eq!(v.verify(&hs(with_iss(&[])), NOW), Err(AuthError::Expired));
        let bad_signature = sign(
            json!({"alg": "HS256"}),
            with_iss(&[]),
            &secret_key(b"another-secret"),
            Algorithm::HS256,
        );
        assert_invalid(v.verify(&bad_signature, NOW), BAD_SIGNATURE);
        assert_invalid(
            v.verify(&hs(with_iss(&[("-org", json!(null))])), NOW),
            BAD_ORG,
        );
        assert_invalid(
            v.verify(
                &hs(with_iss(&[("iss", json!("https://evil.example"))])),
                NOW,
            ),
            WRONG_ISSUER,
        );
        assert_invalid(
            v.verify(&hs(with_iss(&[("channels", json!(["nope:x"]))])), NOW),
            BAD_CHANNEL_PATTERN,
        );
        assert_invalid(
            v.verify(&hs(with_iss(&[("nbf", json!(NOW + 3600))])), NOW),
            NOT_YET_VALID,
        );
    }

    #[test]
    fn nbf_ahead_beyond_the_leeway_is_refused() {
        let v = secret_verifier();
        assert_invalid(
            v.verify(&hs(claims_with(&[("nbf", json!(NOW + 31))])), NOW),
            NOT_YET_VALID,
        );
        for nbf in [NOW + 30, NOW, NOW - 3600] {
            assert!(
                v.verify(&hs(claims_with(&[("nbf", json!(nbf))])), NOW)
                    .is_ok()
            );
        }
        for nbf in [json!("soon"), json!(1.5), json!(null), json!(true)] {
            assert_invalid(v.verify(&hs(claims_with(&[("nbf", nbf)])), NOW), BAD_NBF);
        }
    }

    #[test]
    fn iat_in_the_future_beyond_the_leeway_is_refused() {
        let v = secret_verifier();
        assert_invalid(
            v.verify(&hs(claims_with(&[("iat", json!(NOW + 31))])), NOW),
            ISSUED_IN_FUTURE,
        );
        for iat in [NOW + 30, NOW, NOW - 86_400] {
            assert!(
                v.verify(&hs(claims_with(&[("iat", json!(iat))])), NOW)
                    .is_ok()
            );
        }
        for iat in [json!("now"), json!(1.5), json!(null), json!([NOW])] {
            assert_invalid(v.verify(&hs(claims_with(&[("iat", iat)])), NOW), BAD_IAT);
        }
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let v = secret_verifier();
        assert!(
            v.verify(&hs(claims_with(&[("exp", json!(i64::MAX))])), i64::MAX)
                .is_ok()
        );
        assert_eq!(
            v.verify(&hs(claims_with(&[("exp", json!(i64::MIN))])), NOW),
            Err(AuthError::Expired)
        );
        assert_invalid(
            v.verify(&hs(claims_with(&[("nbf", json!(i64::MAX))])), i64::MIN),
            NOT_YET_VALID,
        );
        let lenient = JwtVerifier::new(&VerifierConfig {
            leeway_secs: u64::MAX,
            ..config(vec![KeySource::Secret(SECRET.to_owned())])
        })
        .unwrap();
        assert!(
            lenient
                .verify(&hs(claims_with(&[("exp", json!(i64::MIN))])), i64::MAX)
                .is_ok()
        );
    }

    // --- claims ---

    #[test]
    fn missing_or_mistyped_required_claims_are_refused() {
        let cases = [
            (claims_with(&[("-sub", json!(null))]), BAD_SUB),
            (claims_with(&[("sub", json!(42))]), BAD_SUB),
            (claims_with(&[("sub", json!(""))]), BAD_SUB),
            (claims_with(&[("sub", json!(null))]), BAD_SUB),
            (claims_with(&[("sub", json!(["u_1"]))]), BAD_SUB),
            (claims_with(&[("-org", json!(null))]), BAD_ORG),
            (claims_with(&[("org", json!(""))]), BAD_ORG),
            (claims_with(&[("org", json!(7))]), BAD_ORG),
            (claims_with(&[("org", json!("o_1}"))]), BAD_ORG),
            (claims_with(&[("org", json!("{o_1"))]), BAD_ORG),
            (claims_with(&[("org", json!("o 1"))]), BAD_ORG),
            (claims_with(&[("org", json!("x".repeat(129)))]), BAD_ORG),
            (claims_with(&[("org", json!({"id": "o_1"}))]), BAD_ORG),
            (claims_with(&[("-exp", json!(null))]), NO_EXP),
            (claims_with(&[("exp", json!("1800003600"))]), BAD_EXP),
            (claims_with(&[("exp", json!(1_800_003_600.5))]), BAD_EXP),
            (claims_with(&[("exp", json!(1_800_003_600.0))]), BAD_EXP),
            (claims_with(&[("exp", json!(u64::MAX))]), BAD_EXP),
            (claims_with(&[("exp", json!(null))]), BAD_EXP),
            (claims_with(&[("exp", json!(true))]), BAD_EXP),
        ];
        let v = secret_verifier();
        for (claims, reason) in cases {
            let text = claims.to_string();
            assert_eq!(
                v.verify(&hs(claims), NOW),
                Err(AuthError::Invalid(reason)),
                "{text}"
            );
        }
    }

    #[test]
    fn payload_that_is_not_a_json_object_is_refused() {
        let key = secret_key(SECRET.as_bytes());
        for payload in ["[]", "\"u_1\"", "null", "42", "{", "not json", "{} {}"] {
            let token = sign_raw(r#"{"alg":"HS256"}"#, payload, &key, Algorithm::HS256);
            assert_invalid(secret_verifier().verify(&token, NOW), PAYLOAD_NOT_OBJECT);
        }
    }

    #[test]
    fn duplicate_members_are_refused() {
        let key = secret_key(SECRET.as_bytes());
        let payload = claims().to_string();
        let token = sign_raw(
            r#"{"alg":"HS256","alg":"none"}"#,
            &payload,
            &key,
            Algorithm::HS256,
        );
        assert_invalid(secret_verifier().verify(&token, NOW), HEADER_NOT_OBJECT);
        let payload = format!(
            r#"{{"sub":"u_1","sub":"admin","org":"o_1","exp":{}}}"#,
            NOW + 60
        );
        let token = sign_raw(r#"{"alg":"HS256"}"#, &payload, &key, Algorithm::HS256);
        assert_invalid(secret_verifier().verify(&token, NOW), PAYLOAD_NOT_OBJECT);
    }

    #[test]
    fn issuer_is_checked_only_when_configured() {
        let v = JwtVerifier::new(&VerifierConfig {
            issuer: Some("https://auth.example".to_owned()),
            ..config(vec![KeySource::Secret(SECRET.to_owned())])
        })
        .unwrap();
        assert!(
            v.verify(
                &hs(claims_with(&[("iss", json!("https://auth.example"))])),
                NOW
            )
            .is_ok()
        );
        for iss in [
            json!("https://evil.example"),
            json!(""),
            json!(5),
            json!(["https://auth.example"]),
        ] {
            assert_invalid(
                v.verify(&hs(claims_with(&[("iss", iss)])), NOW),
                WRONG_ISSUER,
            );
        }
        assert_invalid(v.verify(&hs(claims()), NOW), WRONG_ISSUER);

        for iss in [json!("https://anything.example"), json!(5)] {
            assert!(
                secret_verifier()
                    .verify(&hs(claims_with(&[("iss", iss)])), NOW)
                    .is_ok()
            );
        }
    }

    #[test]
    fn audience_is_checked_only_when_configured() {
        let v = JwtVerifier::new(&VerifierConfig {
            audience: Some("cortex".to_owned()),
            ..config(vec![KeySource::Secret(SECRET.to_owned())])
        })
        .unwrap();
        for aud in [
            json!("cortex"),
            json!(["other", "cortex"]),
            json!(["cortex"]),
        ] {
            assert!(v.verify(&hs(claims_with(&[("aud", aud)])), NOW).is_ok());
        }
        for aud in [json!("other"), json!(["other"]), json!([]), json!("Cortex")] {
            assert_invalid(
                v.verify(&hs(claims_with(&[("aud", aud)])), NOW),
                WRONG_AUDIENCE,
            );
        }
        assert_invalid(v.verify(&hs(claims()), NOW), WRONG_AUDIENCE);
        for aud in [
            json!(["cortex", 5]),
            json!(5),
            json!({"aud": "cortex"}),
            json!(null),
        ] {
            assert_invalid(v.verify(&hs(claims_with(&[("aud", aud)])), NOW), BAD_AUD);
        }

        for aud in [json!("anything"), json!(5)] {
            assert!(
                secret_verifier()
                    .verify(&hs(claims_with(&[("aud", aud)])), NOW)
                    .is_ok()
            );
        }
    }

    #[test]
    fn channels_claim_is_parsed_into_patterns() {
        let v = secret_verifier();
        let claims = v
            .verify(
                &hs(claims_with(&[(
                    "channels",
                    json!(["project:p_4", "agent:*"]),
                )])),
                NOW,
            )
            .unwrap();
        assert_eq!(
            claims.channels,
            Some(vec![
                ChannelPattern::parse("project:p_4").unwrap(),
                ChannelPattern::parse("agent:*").unwrap(),
            ])
        );
        let claims = v
            .verify(&hs(claims_with(&[("channels", json!([]))])), NOW)
            .unwrap();
        assert_eq!(claims.channels, Some(vec![]));
    }

    #[test]
    fn bad_channels_claim_is_refused() {
        let v = secret_verifier();
        for channels in [
            json!(["nope:x"]),
            json!(["agent:"]),
            json!(["*"]),
            json!(["agent:a b"]),
            json!(["project:p_4", "bad"]),
            json!(["*:*"]),
        ] {
            assert_invalid(
                v.verify(&hs(claims_with(&[("channels", channels)])), NOW),
                BAD_CHANNEL_PATTERN,
            );
        }
        for channels in [
            json!("agent:*"),
            json!({"agent": "*"}),
            json!(null),
            json!([1]),
            json!(true),
            json!([["agent:*"]]),
        ] {
            assert_invalid(
                v.verify(&hs(claims_with(&[("channels", channels)])), NOW),
                BAD_CHANNELS,
            );
        }
    }

    // --- headers and shape ---

    #[test]
    fn crit_and_key_location_headers_are_refused() {
        let v = every_key_verifier();
        let cases = [
            ("crit", json!(["exp"]), "crit header is not supported"),
            ("crit", json!([]), "crit header is not supported"),
            (
                "jku",
                json!("https://evil.example/jwks.json"),
                "jku header is refused",
            ),
            (
                "x5u",
                json!("https://evil.example/cert.pem"),
                "x5u header is refused",
            ),
            (
                "jwk",
                json!({"kty": "oct", "k": "c2VjcmV0"}),
                "jwk header is refused",
            ),
            ("x5c", json!(["MIIBIjANBgkq"]), "x5c header is refused"),
        ];
        for (name, value, reason) in cases {
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            header[name] = value;
            assert_invalid(v.verify(&hs_header(header), NOW), reason);
        }
        // Also on an asymmetric token, and with a kid that would otherwise be found.
        let token = sign(
            json!({"alg": "RS256", "kid": "rsa-1", "jku": "https://evil.example/k"}),
            claims(),
            &rsa_private("rsa-private.pem"),
            Algorithm::RS256,
        );
        assert_invalid(
            jwks_verifier("jwks.json").verify(&token, NOW),
            "jku header is refused",
        );
    }

    #[test]
    fn garbage_tokens_are_refused() {
        let v = every_key_verifier();
        let good = hs(claims());
        let (h, p, s) = {
            let parts: Vec<&str> = good.split('.').collect();
            (
                parts[0].to_owned(),
                parts[1].to_owned(),
                parts[2].to_owned(),
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (String::new(), NOT_THREE_SEGMENTS),
            (".".to_owned(), NOT_THREE_SEGMENTS),
            ("..".to_owned(), EMPTY_SEGMENT),
            ("...".to_owned(), NOT_THREE_SEGMENTS),
            ("abcdefgh".to_owned(), NOT_THREE_SEGMENTS),
            (format!("{h}.{p}"), NOT_THREE_SEGMENTS),
            (format!("{h}.{p}.{s}.{s}"), NOT_THREE_SEGMENTS),
            (format!("{h}.{p}.{s}."), NOT_THREE_SEGMENTS),
            (format!("{h}.{p}.{s}.{h}.{p}"), NOT_THREE_SEGMENTS),
            (format!("{h}..{s}"), EMPTY_SEGMENT),
            (format!(".{p}.{s}"), EMPTY_SEGMENT),
            (format!("{h}.{p}."), EMPTY_SEGMENT),
            (format!("{h}=.{p}.{s}"), NOT_BASE64URL),
            (format!("{h}.{p}.{s}="), NOT_BASE64URL),
            (format!("{h}.{p}+.{s}"), NOT_BASE64URL),
            (format!("{h}.{p}.{s}/"), NOT_BASE64URL),
            (format!(" {h}.{p}.{s}"), NOT_BASE64URL),
            (format!("{h}.{p}.{s}\n"), NOT_BASE64URL),
            (format!("{h}.{p}é.{s}"), NOT_BASE64URL),
            (format!("{h}.AAAAA.{s}"), NOT_BASE64URL),
            (format!("{h}.AB.{s}"), NOT_BASE64URL),
        ];
        for (token, reason) in cases {
            assert_eq!(
                v.verify(&token, NOW),
                Err(AuthError::Invalid(reason)),
                "{token:?}"
            );
        }
        for header in [
            "[1]",
            "\"HS256\"",
            "null",
            "{",
            "not json",
            r#"{"alg":"HS256"} x"#,
            "",
        ] {
            let token = format!("{}.{p}.{s}", b64(header.as_bytes()));
            let expected = if header.is_empty() {
                EMPTY_SEGMENT
            } else {
                HEADER_NOT_OBJECT
            };
            assert_invalid(v.verify(&token, NOW), expected);
        }
    }

    #[test]
    fn oversize_token_is_refused() {
        let v = secret_verifier();
        assert_invalid(v.verify(&"a".repeat(MAX_TOKEN_LEN + 1), NOW), TOO_LARGE);
        // The largest validly signed token under the limit passes; one character more does not.
        let mut pad = 5_900;
        let mut last_fitting = None;
        loop {
            let token = hs(claims_with(&[("pad", json!("x".repeat(pad)))]));
            if token.len() > MAX_TOKEN_LEN {
                assert_invalid(v.verify(&token, NOW), TOO_LARGE);
                break;
            }
            last_fitting = Some(token);
            pad += 1;
        }
        let last_fitting = last_fitting.expect("padding started below the limit");
        assert!(last_fitting.len() > MAX_TOKEN_LEN - 3);
        assert!(v.verify(&last_fitting, NOW).is_ok());
    }

    // --- nothing leaks ---

    #[test]
    fn errors_never_contain_any_part_of_the_token() {
        let v = every_key_verifier();
        let mut tokens = vec![
            "q7Zr9xWvKp2LmNb4TtYh".to_owned(),
            "q7Zr9xWvKp.2LmNb4TtYh.Jd8sQw3Ee".to_owned(),
            hs(claims_with(&[("exp", json!(NOW - 3600))])),
            hs(claims_with(&[("sub", json!(""))])),
            hs(claims_with(&[("channels", json!(["nope:x"]))])),
            hs_header(json!({"alg": "none"})),
            hs_header(json!({"alg": "HS256", "jku": "https://evil.example"})),
            hs_header(json!({"alg": "HS512"})),
            sign(
                json!({"alg": "HS256"}),
                claims(),
                &secret_key(b"another-secret"),
                Algorithm::HS256,
            ),
            format!("{}.{}.sig+", b64(b"{\"alg\":\"HS256\"}"), b64(b"{}")),
            format!("{}.{}.c2ln", b64(b"[\"alg\",\"HS256\"]"), b64(b"{}")),
            "x".repeat(MAX_TOKEN_LEN + 10),
        ];
        tokens.push(replace_segment(
            &rs(claims()),
            1,
            &b64(b"{\"sub\":\"admin\"}"),
        ));
        for token in &tokens {
            let error = v.verify(token, NOW).expect_err("refused");
            for text in [error.to_string(), format!("{error:?}")] {
                for window in token.as_bytes().windows(8) {
                    let window = std::str::from_utf8(window).unwrap();
                    assert!(
                        !text.contains(window),
                        "{text:?} contains {window:?} of the token"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_is_refused_without_panicking(token in "\\PC{0,300}") {
            let result = every_key_verifier().verify(&token, NOW);
            proptest::prop_assert!(matches!(result, Err(AuthError::Invalid(_))));
        }

        #[test]
        fn arbitrary_segments_are_refused_without_panicking(
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            signature in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            alg in proptest::sample::select(vec!["HS256", "RS256", "ES256", "EdDSA", "none"]),
        ) {
            let v = every_key_verifier();
            let raw = format!("{}.{}.{}", b64(&header), b64(&payload), b64(&signature));
            proptest::prop_assert!(matches!(v.verify(&raw, NOW), Err(AuthError::Invalid(_))));
            // A well-formed header naming an allowed algorithm, with arbitrary payload and
            // signature bytes: still refused, by the signature check.
            let header = b64(json!({ "alg": alg }).to_string().as_bytes());
            let token = format!("{header}.{}.{}", b64(&payload), b64(&signature));
            proptest::prop_assert!(matches!(v.verify(&token, NOW), Err(AuthError::Invalid(_))));
        }
    }
}
