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
    let end = body.find(&format!("-----END {label}-----")).ok_or(NOT_PEM)?;
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
            (Algorithm::RS256, rsa_key(&bytes(jwk, "n")?, &bytes(jwk, "e")?)?)
        }
        "EC" => {
            if text(jwk, "crv")? != Some("P-256") || !matches!(declared_alg, None | Some("ES256"))
            {
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
