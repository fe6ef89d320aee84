//! JWT verification: which tokens open a connection, and what they allow (CONTRACT.md section 4).
//!
//! [`JwtVerifier`] is built once from a [`VerifierConfig`] (that is the only place with I/O: key
//! files are read there) and then [`JwtVerifier::verify`] is pure: it takes the token and the
//! current unix time and answers [`Claims`] or an [`AuthError`]. `jsonwebtoken` is used only for
//! the signature arithmetic; every rule about the token's shape, header and claims is written
//! here so that it is exactly ours and can be read in one place.
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

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use cortex_protocol::channel::ChannelPattern;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

/// Clock leeway applied to `exp`, `nbf` and `iat` unless configured otherwise (CONTRACT.md §4).
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Longest token accepted, in bytes. Real tokens are well under 2 KiB; anything past this is
/// refused before any decoding work.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

/// Header members that name key material or extensions outside the token: refused.
const FORBIDDEN_HEADERS: [(&str, &str); 5] = [
    ("crit", "crit header is not supported"),
    ("jku", "jku header is refused"),
    ("x5u", "x5u header is refused"),
    ("jwk", "jwk header is refused"),
    ("x5c", "x5c header is refused"),
];

// The fixed reasons carried by `AuthError::Invalid`.
const TOO_LARGE: &str = "token too large";
const NOT_THREE_SEGMENTS: &str = "not three dot-separated segments";
const EMPTY_SEGMENT: &str = "empty segment";
const NOT_BASE64URL: &str = "segment is not base64url";
const HEADER_NOT_OBJECT: &str = "header is not a JSON object";
const NO_ALG: &str = "header has no alg";
const ALG_NOT_STRING: &str = "alg is not a string";
const ALG_NONE: &str = "alg none is refused";
const ALG_NOT_ALLOWED: &str = "algorithm not allowed";
const KID_NOT_STRING: &str = "kid is not a string";
const NO_MATCHING_KEY: &str = "no key matches the token's kid";
const BAD_SIGNATURE: &str = "bad signature";
const PAYLOAD_NOT_OBJECT: &str = "payload is not a JSON object";
const BAD_SUB: &str = "sub must be a non-empty string";
const BAD_ORG: &str = "org must be a non-empty string";
const NO_EXP: &str = "exp is required";
const BAD_EXP: &str = "exp must be an integer";
const BAD_NBF: &str = "nbf must be an integer";
const BAD_IAT: &str = "iat must be an integer";
const NOT_YET_VALID: &str = "token not valid yet (nbf)";
const ISSUED_IN_FUTURE: &str = "token issued in the future (iat)";
const WRONG_ISSUER: &str = "wrong issuer";
const BAD_AUD: &str = "aud must be a string or an array of strings";
const WRONG_AUDIENCE: &str = "wrong audience";
const BAD_CHANNELS: &str = "channels must be an array of strings";
const BAD_CHANNEL_PATTERN: &str = "channels holds an invalid channel pattern";

/// Base64url as found in JWKS files: padding tolerated (some producers add it), since the file
/// is trusted configuration rather than attacker input.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where a verification key comes from. Several may be configured at once (key rotation).
#[derive(Clone)]
pub enum KeySource {
    /// An HS256 shared secret; the key is the UTF-8 bytes of the string (`--jwt-secret S`).
    Secret(String),
    /// A file holding one PEM public key: RSA allows RS256, EC P-256 allows ES256, Ed25519
    /// allows EdDSA.
    PublicKeyPem(PathBuf),
    /// A JWKS file (`{"keys":[...]}`) of RSA, EC P-256 and Ed25519 public keys, chosen by `kid`.
    JwksFile(PathBuf),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(<redacted>)"),
            KeySource::PublicKeyPem(path) => f.debug_tuple("PublicKeyPem").field(path).finish(),
            KeySource::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
        }
    }
}

/// Everything [`JwtVerifier::new`] needs: the keys and the claim requirements.
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

/// Why the verifier could not be built. Messages may name a file, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The configuration holds no key at all.
    #[error("no JWT verification key configured (a secret, a PEM public key or a JWKS file)")]
    NoKeys,
    /// A configured secret is the empty string.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// The issuer or audience requirement is configured as an empty string.
    #[error("the configured JWT {0} is empty")]
    EmptySetting(&'static str),
    /// A key file could not be read.
    #[error("cannot read key file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A PEM file holds a private key where a public key belongs.
    #[error(
        "{} holds a private key: configure the public key instead (openssl pkey -pubout)",
        path.display()
    )]
    PrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file does not hold one supported public key.
    #[error("{}: unsupported key: {reason}", path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a fixed string.
        reason: &'static str,
    },
    /// A JWKS file is malformed, or one of its keys that would be used is.
    #[error("{}: invalid JWKS: {reason}", path.display())]
    Jwks {
        /// The file.
        path: PathBuf,
        /// What is wrong, as a fixed string.
        reason: &'static str,
    },
    /// A JWKS file holds no RS256, ES256 or EdDSA signature key.
    #[error("{}: no RSA, EC P-256 or Ed25519 signature key in the JWKS", path.display())]
    NoUsableJwk {
        /// The file.
        path: PathBuf,
    },
}

/// Which tokens a key may verify, by their `kid` header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KidMatch {
    /// A secret or PEM key: it has no id and is tried for every token of its algorithm.
    Any,
    /// A JWKS entry with a `kid`: only for tokens naming it.
    Exactly(String),
    /// A JWKS entry without `kid`: only for tokens without `kid`.
    NoKid,
}

impl KidMatch {
    fn accepts(&self, kid: Option<&str>) -> bool {
        match self {
            KidMatch::Any => true,
            KidMatch::Exactly(own) => kid == Some(own.as_str()),
            KidMatch::NoKid => kid.is_none(),
        }
    }
}

/// One loaded key and the single algorithm it allows.
#[derive(Clone)]
struct VerifyKey {
    alg: Algorithm,
    kid: KidMatch,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("alg", &alg_name(self.alg))
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Verifies connection tokens against the configured keys. Cheap to clone; `Send + Sync`, so it
/// can also be shared behind an `Arc`.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: Vec<VerifyKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl JwtVerifier {
    /// Loads every configured key (reading PEM and JWKS files) and fixes the algorithm
    /// allowlist. Fails on the first unusable source, naming it.
    pub fn new(cfg: &VerifierConfig) -> Result<JwtVerifier, KeyError> {
        let mut keys = Vec::new();
        for source in &cfg.keys {
            match source {
                KeySource::Secret(secret) => {
                    if secret.is_empty() {
                        return Err(KeyError::EmptySecret);
                    }
                    keys.push(VerifyKey {
                        alg: Algorithm::HS256,
                        kid: KidMatch::Any,
                        key: DecodingKey::from_secret(secret.as_bytes()),
                    });
                }
                KeySource::PublicKeyPem(path) => keys.push(load_pem(path)?),
                KeySource::JwksFile(path) => keys.extend(load_jwks(path)?),
            }
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
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway_secs: cfg.leeway_secs,
        })
    }

    /// Verifies `token` at unix time `now` (seconds). Pure: no I/O, no clock.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
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
        let alg = self.check_header(&header)?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(AuthError::Invalid(KID_NOT_STRING)),
        };

        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.alg == alg && k.kid.accepts(kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::Invalid(NO_MATCHING_KEY));
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        let signed = candidates.any(|k| {
            jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &k.key, alg)
                .unwrap_or(false)
        });
        if !signed {
            return Err(AuthError::Invalid(BAD_SIGNATURE));
        }

        // Only an authenticated payload is parsed.
        let claims = parse_object(&payload).ok_or(AuthError::Invalid(PAYLOAD_NOT_OBJECT))?;
        self.check_claims(&claims, now)
    }

    /// The clock leeway in seconds, also used by sessions to close at `exp + leeway`.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// The accepted `alg` values, for the startup log (e.g. `["RS256", "EdDSA"]`).
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
        .map(alg_name)
        .collect()
    }

    fn allows(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.alg == alg)
    }

    /// Applies the header rules and answers the token's (allowed) algorithm.
    fn check_header(&self, header: &Map<String, Value>) -> Result<Algorithm, AuthError> {
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
        parse_alg(alg)
            .filter(|alg| self.allows(*alg))
            .ok_or(AuthError::Invalid(ALG_NOT_ALLOWED))
    }

    /// Applies the claim rules to an authenticated payload; expiry is decided last.
    fn check_claims(&self, claims: &Map<String, Value>, now: i64) -> Result<Claims, AuthError> {
        let sub = non_empty_string(claims, "sub").ok_or(AuthError::Invalid(BAD_SUB))?;
        let org = non_empty_string(claims, "org").ok_or(AuthError::Invalid(BAD_ORG))?;
        let exp = numeric_date(claims, "exp", BAD_EXP)?.ok_or(AuthError::Invalid(NO_EXP))?;
        let nbf = numeric_date(claims, "nbf", BAD_NBF)?;
        let iat = numeric_date(claims, "iat", BAD_IAT)?;

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

/// Mints an HS256 token with `sub`, `org`, `exp` and, when given, `channels` (used by the `token`
/// command and by tests). The header is `{"alg":"HS256","typ":"JWT"}`.
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
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload =
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("a JSON map always serializes"));
    let message = format!("{header}.{payload}");
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HMAC-SHA256 accepts a key of any length");
    format!("{message}.{signature}")
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        // Never loaded: keys only ever carry the four algorithms above.
        _ => "unsupported",
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

// ---------------------------------------------------------------------------------------------
// Key loading: the only I/O in this module.

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|error| KeyError::Read {
        path: path.to_owned(),
        error,
    })
}

/// Loads a PEM file holding exactly one public key.
fn load_pem(path: &Path) -> Result<VerifyKey, KeyError> {
    let unsupported = |reason| KeyError::UnsupportedKey {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_file(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| unsupported("not a PEM file"))?;
    let (label, der) = parse_single_pem(text).map_err(unsupported)?;
    let (alg, key) = match label {
        "PUBLIC KEY" => spki_key(&der).map_err(unsupported)?,
        "RSA PUBLIC KEY" => (Algorithm::RS256, pkcs1_rsa_key(&der).map_err(unsupported)?),
        label if label.ends_with("PRIVATE KEY") => {
            return Err(KeyError::PrivateKey {
                path: path.to_owned(),
            });
        }
        "CERTIFICATE" => {
            return Err(unsupported(
                "a certificate, not a public key (extract it with openssl x509 -pubkey -noout)",
            ));
        }
        _ => return Err(unsupported("not a PEM public key")),
    };
    Ok(VerifyKey {
        alg,
        kid: KidMatch::Any,
        key,
    })
}

/// Splits a PEM text holding one block into its label and DER contents.
fn parse_single_pem(text: &str) -> Result<(&str, Vec<u8>), &'static str> {
    const BEGIN: &str = "-----BEGIN ";
    const DASHES: &str = "-----";
    const NOT_PEM: &str = "not a PEM file";
    let start = text.find(BEGIN).ok_or(NOT_PEM)?;
    let rest = &text[start + BEGIN.len()..];
    if rest.contains(BEGIN) {
        return Err("more than one PEM block; put one public key in each file");
    }
    let label_len = rest.find(DASHES).ok_or(NOT_PEM)?;
    let label = &rest[..label_len];
    if label.is_empty() || label.contains(['\r', '\n']) {
        return Err(NOT_PEM);
    }
    let body = &rest[label_len + DASHES.len()..];
    let end = body
        .find(&format!("-----END {label}-----"))
        .ok_or(NOT_PEM)?;
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(base64).map_err(|_| NOT_PEM)?;
    Ok((label, der))
}

// Object identifiers (DER contents, without tag and length).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// Reads one DER element (definite length): its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, rest) = rest.split_at(count);
        let len = len_bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// Reads a DER element that must have `tag`.
fn der_expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    der_element(input).and_then(|(t, contents, rest)| (t == tag).then_some((contents, rest)))
}

/// Classifies an X.509 SubjectPublicKeyInfo and builds the key with its one algorithm.
fn spki_key(der: &[u8]) -> Result<(Algorithm, DecodingKey), &'static str> {
    const MALFORMED: &str = "malformed public key";
    let parse = || {
        let (spki, rest) = der_expect(der, TAG_SEQUENCE)?;
        let (algorithm_id, rest_spki) = der_expect(spki, TAG_SEQUENCE)?;
        let (bits, after_bits) = der_expect(rest_spki, TAG_BIT_STRING)?;
        let (oid, parameters) = der_expect(algorithm_id, TAG_OID)?;
        // A public key is a whole number of bytes: no unused bits.
        let (&0, key) = bits.split_first()? else {
            return None;
        };
        (rest.is_empty() && after_bits.is_empty()).then_some((oid, parameters, key))
    };
    let (oid, parameters, key) = parse().ok_or(MALFORMED)?;
    if oid == OID_RSA_ENCRYPTION {
        Ok((Algorithm::RS256, pkcs1_rsa_key(key)?))
    } else if oid == OID_EC_PUBLIC_KEY {
        match der_expect(parameters, TAG_OID) {
            Some((curve, [])) if curve == OID_P256 => Ok((Algorithm::ES256, ec_p256_key(key)?)),
            _ => Err("EC keys must be on curve P-256 (ES256)"),
        }
    } else if oid == OID_ED25519 {
        Ok((Algorithm::EdDSA, ed25519_key(key)?))
    } else {
        Err("not an RSA, EC P-256 or Ed25519 public key")
    }
}

/// Reads a PKCS#1 `RSAPublicKey` (`SEQUENCE { n INTEGER, e INTEGER }`).
fn pkcs1_rsa_key(der: &[u8]) -> Result<DecodingKey, &'static str> {
    let parse = || {
        let (seq, rest) = der_expect(der, TAG_SEQUENCE)?;
        let (n, seq_rest) = der_expect(seq, TAG_INTEGER)?;
        let (e, seq_end) = der_expect(seq_rest, TAG_INTEGER)?;
        (rest.is_empty() && seq_end.is_empty()).then_some((n, e))
    };
    let (n, e) = parse().ok_or("malformed RSA public key")?;
    rsa_key(n, e)
}

/// Builds an RSA key from big-endian `n` and `e`, refusing what RS256 should not trust.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, &'static str> {
    fn strip(bytes: &[u8]) -> &[u8] {
        let zeros = bytes.iter().take_while(|&&b| b == 0).count();
        &bytes[zeros..]
    }
    let (n, e) = (strip(n), strip(e));
    let bits = match n.first() {
        Some(&top) => n.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) || n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus must be 2048 to 4096 bits");
    }
    let exponent = (e.len() <= 8).then(|| e.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)));
    if !exponent.is_some_and(|e| (3..(1 << 33)).contains(&e) && e & 1 == 1) {
        return Err("bad RSA public exponent");
    }
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

/// Builds a P-256 key from a SEC1 point, checking that it is on the curve.
fn ec_p256_key(point: &[u8]) -> Result<DecodingKey, &'static str> {
    let well_formed = match point {
        [0x04, rest @ ..] => rest.len() == 64,
        [0x02 | 0x03, rest @ ..] => rest.len() == 32,
        _ => false,
    };
    let key = DecodingKey::from_ec_der(point);
    if !well_formed || !usable(&key, Algorithm::ES256) {
        return Err("not a valid P-256 public key");
    }
    Ok(key)
}

/// Builds an Ed25519 key from its 32 bytes, checking that they decode to a curve point.
fn ed25519_key(x: &[u8]) -> Result<DecodingKey, &'static str> {
    // The length check also keeps the backend from slicing a short key.
    let key = DecodingKey::from_ed_der(x);
    if x.len() != 32 || !usable(&key, Algorithm::EdDSA) {
        return Err("not a valid Ed25519 public key");
    }
    Ok(key)
}

/// Whether the crypto backend accepts `key` for `alg`: verifying a dummy signature fails with
/// `Ok(false)` for a usable key and with `Err` when the key itself cannot be loaded.
fn usable(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("AA", b"", key, alg).is_ok()
}

/// Loads the signature keys of a JWKS file.
fn load_jwks(path: &Path) -> Result<Vec<VerifyKey>, KeyError> {
    let invalid = |reason| KeyError::Jwks {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_file(path)?;
    let document: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("no \"keys\" array"))?;
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry
            .as_object()
            .ok_or_else(|| invalid("a key is not a JSON object"))?;
        if let Some(key) = jwk_key(entry).map_err(invalid)? {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(KeyError::NoUsableJwk {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// One JWKS entry: `Ok(None)` when it is not an RS256/ES256/EdDSA signature key.
fn jwk_key(jwk: &Map<String, Value>) -> Result<Option<VerifyKey>, &'static str> {
    fn text<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, &'static str> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err("a key member that must be a string is not"),
        }
    }
    fn bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, &'static str> {
        let value = text(jwk, name)?.ok_or("a key lacks a required member")?;
        JWK_BASE64
            .decode(value)
            .map_err(|_| "a key member is not base64url")
    }

    if jwk.contains_key("d") {
        return Err("a key holds private material (\"d\"): publish public keys only");
    }
    let kty = text(jwk, "kty")?.ok_or("a key has no \"kty\"")?;
    let kid = text(jwk, "kid")?;
    let declared_alg = text(jwk, "alg")?;
    if text(jwk, "use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("\"key_ops\" is not an array")?;
        if !ops.iter().any(|op| op == "verify") {
            return Ok(None);
        }
    }
    let (alg, key) = match kty {
        "RSA" => {
            if !matches!(declared_alg, None | Some("RS256")) {
                return Ok(None);
            }
            (
                Algorithm::RS256,
                rsa_key(&bytes(jwk, "n")?, &bytes(jwk, "e")?)?,
            )
        }
        "EC" => {
            if text(jwk, "crv")? != Some("P-256") || !matches!(declared_alg, None | Some("ES256")) {
                return Ok(None);
            }
            let (x, y) = (bytes(jwk, "x")?, bytes(jwk, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes");
            }
            let point = [&[0x04][..], &x, &y].concat();
            (Algorithm::ES256, ec_p256_key(&point)?)
        }
        "OKP" => {
            if text(jwk, "crv")? != Some("Ed25519")
                || !matches!(declared_alg, None | Some("EdDSA" | "Ed25519"))
            {
                return Ok(None);
            }
            (Algorithm::EdDSA, ed25519_key(&bytes(jwk, "x")?)?)
        }
        _ => return Ok(None),
    };
    let kid = match kid {
        Some(kid) => KidMatch::Exactly(kid.to_owned()),
        None => KidMatch::NoKid,
    };
    Ok(Some(VerifyKey { alg, kid, key }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const SECRET: &str = "test-secret-0123456789-abcdefghij";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jwt")
            .join(name)
    }

    fn fixture_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).expect("fixture readable")
    }

    /// A file in the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &[u8]) -> TempFile {
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

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token from raw header and payload text, signed with `key` as `alg`.
    fn sign_raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
        let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
        format!("{message}.{signature}")
    }

    fn sign(header: Value, claims: Value, key: &EncodingKey, alg: Algorithm) -> String {
        sign_raw(&header.to_string(), &claims.to_string(), key, alg)
    }

    fn secret_key(secret: &[u8]) -> EncodingKey {
        EncodingKey::from_secret(secret)
    }

    fn rsa_private(name: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(&fixture_bytes(name)).unwrap()
    }

    fn ec_private() -> EncodingKey {
        EncodingKey::from_ec_pem(&fixture_bytes("ec-private.pem")).unwrap()
    }

    fn ed_private() -> EncodingKey {
        EncodingKey::from_ed_pem(&fixture_bytes("ed25519-private.pem")).unwrap()
    }

    fn claims() -> Value {
        json!({"sub": "u_1", "org": "o_1", "exp": NOW + 3600})
    }

    /// `claims()` with members set, in order; a name starting with `-` removes that member
    /// instead (its value is ignored).
    fn claims_with(changes: &[(&str, Value)]) -> Value {
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

    fn hs(claims: Value) -> String {
        sign(
            json!({"alg": "HS256", "typ": "JWT"}),
            claims,
            &secret_key(SECRET.as_bytes()),
            Algorithm::HS256,
        )
    }

    fn hs_header(header: Value) -> String {
        sign(
            header,
            claims(),
            &secret_key(SECRET.as_bytes()),
            Algorithm::HS256,
        )
    }

    fn rs(claims: Value) -> String {
        sign(
            json!({"alg": "RS256", "typ": "JWT"}),
            claims,
            &rsa_private("rsa-private.pem"),
            Algorithm::RS256,
        )
    }

    fn es(claims: Value) -> String {
        sign(
            json!({"alg": "ES256"}),
            claims,
            &ec_private(),
            Algorithm::ES256,
        )
    }

    fn ed(claims: Value) -> String {
        sign(
            json!({"alg": "EdDSA"}),
            claims,
            &ed_private(),
            Algorithm::EdDSA,
        )
    }

    fn with_kid(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
        sign(
            json!({"alg": alg_name(alg), "kid": kid}),
            claims(),
            key,
            alg,
        )
    }

    fn config(keys: Vec<KeySource>) -> VerifierConfig {
        VerifierConfig {
            keys,
            ..VerifierConfig::default()
        }
    }

    fn verifier(keys: Vec<KeySource>) -> JwtVerifier {
        JwtVerifier::new(&config(keys)).unwrap()
    }

    fn secret_verifier() -> JwtVerifier {
        verifier(vec![KeySource::Secret(SECRET.to_owned())])
    }

    fn pem_verifier(name: &str) -> JwtVerifier {
        verifier(vec![KeySource::PublicKeyPem(fixture(name))])
    }

    fn jwks_verifier(name: &str) -> JwtVerifier {
        verifier(vec![KeySource::JwksFile(fixture(name))])
    }

    fn every_key_verifier() -> JwtVerifier {
        verifier(vec![
            KeySource::Secret(SECRET.to_owned()),
            KeySource::PublicKeyPem(fixture("rsa-public.pem")),
            KeySource::PublicKeyPem(fixture("ec-public.pem")),
            KeySource::PublicKeyPem(fixture("ed25519-public.pem")),
        ])
    }

    fn expected_claims() -> Claims {
        Claims {
            sub: "u_1".to_owned(),
            org: "o_1".to_owned(),
            exp: NOW + 3600,
            channels: None,
        }
    }

    #[track_caller]
    fn assert_invalid(result: Result<Claims, AuthError>, reason: &'static str) {
        assert_eq!(result, Err(AuthError::Invalid(reason)));
    }

    fn replace_segment(token: &str, index: usize, segment: &str) -> String {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[index] = segment;
        parts.join(".")
    }

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

    // --- key loading ---

    #[track_caller]
    fn load_error(keys: Vec<KeySource>) -> KeyError {
        JwtVerifier::new(&config(keys)).expect_err("refused")
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

    #[test]
    fn unreadable_key_file_is_refused_naming_it() {
        let path = fixture("does-not-exist.pem");
        for source in [
            KeySource::PublicKeyPem(path.clone()),
            KeySource::JwksFile(path.clone()),
        ] {
            let err = load_error(vec![source]);
            assert!(matches!(err, KeyError::Read { .. }), "{err:?}");
            assert!(err.to_string().contains("does-not-exist.pem"), "{err}");
        }
    }

    #[test]
    fn private_key_pem_is_refused() {
        for name in ["rsa-private.pem", "ec-private.pem", "ed25519-private.pem"] {
            let err = load_error(vec![KeySource::PublicKeyPem(fixture(name))]);
            assert!(
                matches!(err, KeyError::PrivateKey { .. }),
                "{name}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(name), "{text}");
            assert!(!text.contains("MII"), "{text}");
        }
    }

    #[test]
    fn unsupported_public_keys_are_refused() {
        let cases = [
            (
                "ec-p384-public.pem",
                "EC keys must be on curve P-256 (ES256)",
            ),
            (
                "ec-secp256k1-public.pem",
                "EC keys must be on curve P-256 (ES256)",
            ),
            (
                "rsa1024-public.pem",
                "RSA modulus must be 2048 to 4096 bits",
            ),
            ("jwks.json", "not a PEM file"),
            ("generate.sh", "not a PEM file"),
        ];
        for (name, expected) in cases {
            let err = load_error(vec![KeySource::PublicKeyPem(fixture(name))]);
            match &err {
                KeyError::UnsupportedKey { path, reason } => {
                    assert_eq!(*reason, expected, "{name}");
                    assert_eq!(path, &fixture(name));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn pem_file_with_several_keys_certificate_or_broken_body_is_refused() {
        let two = [
            fixture_bytes("rsa-public.pem"),
            fixture_bytes("ec-public.pem"),
        ]
        .concat();
        let rsa = String::from_utf8(fixture_bytes("rsa-public.pem")).unwrap();
        let certificate = rsa.replace("PUBLIC KEY", "CERTIFICATE");
        let broken = rsa.replacen("MII", "M*I", 1);
        let truncated = rsa.replacen("-----END PUBLIC KEY-----", "", 1);
        let mismatched = rsa.replacen(
            "-----END PUBLIC KEY-----",
            "-----END RSA PUBLIC KEY-----",
            1,
        );
        let other_label = rsa.replace("PUBLIC KEY", "SSH2 PUBLIC KEY");
        let cases: [(&[u8], &str); 6] = [
            (
                &two,
                "more than one PEM block; put one public key in each file",
            ),
            (
                certificate.as_bytes(),
                "a certificate, not a public key (extract it with openssl x509 -pubkey -noout)",
            ),
            (broken.as_bytes(), "not a PEM file"),
            (truncated.as_bytes(), "not a PEM file"),
            (mismatched.as_bytes(), "not a PEM file"),
            (other_label.as_bytes(), "not a PEM public key"),
        ];
        for (contents, expected) in cases {
            let file = TempFile::new(contents);
            let err = load_error(vec![KeySource::PublicKeyPem(file.0.clone())]);
            assert!(
                matches!(&err, KeyError::UnsupportedKey { reason, .. } if *reason == expected),
                "{expected}: {err:?}"
            );
        }
        // A valid SPKI wrapper around a key of an unknown algorithm (X25519).
        let x25519 = "-----BEGIN PUBLIC KEY-----\n\
            MCowBQYDK2VuAyEAHEa4HU3oZc5lmqQ5jcgdUpgi56qvOxNyUvAdbjL+RQg=\n\
            -----END PUBLIC KEY-----\n";
        let file = TempFile::new(x25519.as_bytes());
        let err = load_error(vec![KeySource::PublicKeyPem(file.0.clone())]);
        assert!(
            matches!(&err, KeyError::UnsupportedKey { reason, .. }
                if *reason == "not an RSA, EC P-256 or Ed25519 public key"),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_jwks_is_refused() {
        let jwks: Value = serde_json::from_slice(&fixture_bytes("jwks.json")).unwrap();
        let rsa = jwks["keys"][0].clone();
        let ec = jwks["keys"][1].clone();
        let with = |base: &Value, name: &str, value: Value| {
            let mut key = base.clone();
            key[name] = value;
            json!({ "keys": [key] }).to_string()
        };
        let cases = [
            (
                String::from_utf8(fixture_bytes("rsa-public.pem")).unwrap(),
                "not JSON",
            ),
            ("{}".to_owned(), "no \"keys\" array"),
            (r#"{"keys":{}}"#.to_owned(), "no \"keys\" array"),
            (r#"{"keys":[1]}"#.to_owned(), "a key is not a JSON object"),
            (
                r#"{"keys":[{"kid":"a"}]}"#.to_owned(),
                "a key has no \"kty\"",
            ),
            (
                with(&rsa, "d", json!("c2VjcmV0LXByaXZhdGUtZXhwb25lbnQ")),
                "a key holds private material (\"d\"): publish public keys only",
            ),
            (
                with(&rsa, "kid", json!(1)),
                "a key member that must be a string is not",
            ),
            (
                with(&rsa, "n", json!("not base64!")),
                "a key member is not base64url",
            ),
            (
                with(&rsa, "n", json!("AQAB")),
                "RSA modulus must be 2048 to 4096 bits",
            ),
            (with(&rsa, "e", json!("AQ")), "bad RSA public exponent"),
            (
                with(&ec, "x", json!("AQAB")),
                "P-256 coordinates must be 32 bytes",
            ),
            (
                with(&ec, "y", ec["x"].clone()),
                "not a valid P-256 public key",
            ),
            (
                with(&rsa, "key_ops", json!("verify")),
                "\"key_ops\" is not an array",
            ),
        ];
        for (contents, expected) in cases {
            let file = TempFile::new(contents.as_bytes());
            let err = load_error(vec![KeySource::JwksFile(file.0.clone())]);
            assert!(
                matches!(&err, KeyError::Jwks { reason, .. } if *reason == expected),
                "{expected}: {err:?}"
            );
            assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        }
    }

    #[test]
    fn jwks_without_a_usable_signature_key_is_refused() {
        for contents in [
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}"#,
            r#"{"keys":[{"kty":"OKP","crv":"X25519","x":"AA"}]}"#,
        ] {
            let file = TempFile::new(contents.as_bytes());
            let err = load_error(vec![KeySource::JwksFile(file.0.clone())]);
            assert!(
                matches!(err, KeyError::NoUsableJwk { .. }),
                "{contents}: {err:?}"
            );
        }
    }

    #[test]
    fn jwks_entries_for_other_uses_or_algorithms_are_skipped() {
        let jwks: Value = serde_json::from_slice(&fixture_bytes("jwks.json")).unwrap();
        let mut rsa_rs384 = jwks["keys"][0].clone();
        rsa_rs384["alg"] = json!("RS384");
        let mut ec_encrypt = jwks["keys"][1].clone();
        ec_encrypt["key_ops"] = json!(["encrypt"]);
        let mut ed_verify = jwks["keys"][2].clone();
        ed_verify["key_ops"] = json!(["verify"]);
        ed_verify["alg"] = json!("Ed25519");
        let contents = json!({"keys": [
            rsa_rs384,
            ec_encrypt,
            ed_verify,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-1"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
        ]});
        let file = TempFile::new(contents.to_string().as_bytes());
        let v = verifier(vec![KeySource::JwksFile(file.0.clone())]);
        assert_eq!(v.algorithms(), ["EdDSA"]);
        assert!(
            v.verify(&with_kid(Algorithm::EdDSA, "ed-1", &ed_private()), NOW)
                .is_ok()
        );
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
