//! Key loading: configured secrets, PEM public-key files and JWKS files become the verifier's
//! keys, each with the one algorithm it allows (the module documentation of [`crate::auth`]
//! says which files are refused and which JWKS entries skipped). The only I/O of the verifier,
//! done once at start; it never sees a token and never fetches a key over the network.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey};
use pkcs1::RsaPublicKey;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny};
use serde_json::Value;
use spki::der::Decode as _;
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 4096;

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
pub(super) enum KidMatch {
    /// A secret or PEM key: it has no id and is tried for every token of its algorithm.
    Any,
    /// A JWKS entry with a `kid`: only for tokens naming it.
    Exactly(String),
    /// A JWKS entry without `kid`: only for tokens without `kid`.
    NoKid,
}

impl KidMatch {
    pub(super) fn accepts(&self, kid: Option<&str>) -> bool {
        match self {
            KidMatch::Any => true,
            KidMatch::Exactly(own) => kid == Some(own.as_str()),
            KidMatch::NoKid => kid.is_none(),
        }
    }
}

/// One loaded key and the single algorithm it allows.
#[derive(Clone)]
pub(super) struct VerifyKey {
    pub alg: Algorithm,
    pub kid: KidMatch,
    pub key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("alg", &alg_name(self.alg))
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The name of an algorithm a key can carry, as `alg` spells it.
pub(super) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        // Never loaded: keys only ever carry the four algorithms above.
        _ => "unsupported",
    }
}

/// Loads the keys of one configured source: one for a secret or a PEM file, one or more for a
/// JWKS file.
pub(super) fn load(source: &KeySource) -> Result<Vec<VerifyKey>, KeyError> {
    match source {
        KeySource::Secret(secret) => {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            Ok(vec![VerifyKey {
                alg: Algorithm::HS256,
                kid: KidMatch::Any,
                key: DecodingKey::from_secret(secret.as_bytes()),
            }])
        }
        KeySource::PublicKeyPem(path) => Ok(vec![load_pem(path)?]),
        KeySource::JwksFile(path) => load_jwks(path),
    }
}

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
    let (alg, key) = match label.as_str() {
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
///
/// The framing and base64 are the `pem` crate's; "exactly one block" is our rule, checked on
/// the text first so that a second block is reported as such even when it is itself malformed.
/// RFC 1421 headers (`Proc-Type: ...`) belong to encrypted private keys, never to a public key:
/// a block with headers is not one we read.
fn parse_single_pem(text: &str) -> Result<(String, Vec<u8>), &'static str> {
    const NOT_PEM: &str = "not a PEM file";
    if text.matches("-----BEGIN ").count() > 1 {
        return Err("more than one PEM block; put one public key in each file");
    }
    let block = pem::parse(text).map_err(|_| NOT_PEM)?;
    if block.tag().contains(['\r', '\n']) || block.headers().iter().next().is_some() {
        return Err(NOT_PEM);
    }
    Ok((block.tag().to_owned(), block.into_contents()))
}

// The object identifiers of the keys we read (RFC 5480, RFC 3279, RFC 8410).
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Classifies an X.509 SubjectPublicKeyInfo and builds the key with its one algorithm.
fn spki_key(der: &[u8]) -> Result<(Algorithm, DecodingKey), &'static str> {
    let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|_| "malformed public key")?;
    // A public key is a whole number of bytes: no unused bits.
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or("malformed public key")?;
    match spki.algorithm.oid {
        OID_RSA_ENCRYPTION => Ok((Algorithm::RS256, pkcs1_rsa_key(key)?)),
        OID_EC_PUBLIC_KEY => match spki.algorithm.parameters_oid() {
            Ok(OID_P256) => Ok((Algorithm::ES256, ec_p256_key(key)?)),
            _ => Err("EC keys must be on curve P-256 (ES256)"),
        },
        OID_ED25519 => Ok((Algorithm::EdDSA, ed25519_key(key)?)),
        _ => Err("not an RSA, EC P-256 or Ed25519 public key"),
    }
}

/// Reads a PKCS#1 `RSAPublicKey` (`SEQUENCE { n INTEGER, e INTEGER }`).
fn pkcs1_rsa_key(der: &[u8]) -> Result<DecodingKey, &'static str> {
    let key = RsaPublicKey::from_der(der).map_err(|_| "malformed RSA public key")?;
    rsa_key(key.modulus.as_bytes(), key.public_exponent.as_bytes())
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
    // The document stays a `Value` only to tell "not JSON" from "no keys array"; each entry is
    // read as a `Jwk`.
    let document: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    let Some(Value::Array(entries)) = document.get("keys") else {
        return Err(invalid("no \"keys\" array"));
    };
    let mut keys = Vec::new();
    for entry in entries {
        let not_object = || invalid("a key is not a JSON object");
        if !entry.is_object() {
            return Err(not_object());
        }
        // Cannot fail on an object: every member of a `Jwk` takes any JSON value.
        let jwk = Jwk::deserialize(entry).map_err(|_| not_object())?;
        if let Some(key) = jwk_key(&jwk).map_err(invalid)? {
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

/// One JWKS entry (RFC 7517), the members we read; others are ignored. Each is a [`Member`], so
/// that an entry always deserializes and [`jwk_key`] applies the rules in their order, with
/// their own reasons, to the members it needs.
#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: Member<String>,
    #[serde(default)]
    kid: Member<String>,
    #[serde(default, rename = "use")]
    use_: Member<String>,
    #[serde(default)]
    key_ops: Member<Vec<Member<String>>>,
    #[serde(default)]
    alg: Member<String>,
    #[serde(default)]
    crv: Member<String>,
    #[serde(default)]
    n: Member<String>,
    #[serde(default)]
    e: Member<String>,
    #[serde(default)]
    x: Member<String>,
    #[serde(default)]
    y: Member<String>,
    /// Private material: present at all, whatever its value, fails the load.
    #[serde(default)]
    d: Member<IgnoredAny>,
}

/// A member of a JWKS entry: absent, of its JSON type, or present with another type. `null` is
/// "another type", not "absent" (a plain `Option` would read it as absent).
#[derive(Default)]
enum Member<T> {
    #[default]
    Absent,
    Valid(T),
    Mistyped,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Member<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Typed<T> {
            Valid(T),
            Mistyped(IgnoredAny),
        }
        Ok(match Typed::deserialize(deserializer)? {
            Typed::Valid(value) => Member::Valid(value),
            Typed::Mistyped(_) => Member::Mistyped,
        })
    }
}

impl Member<String> {
    /// The member's text; `None` when absent.
    fn text(&self) -> Result<Option<&str>, &'static str> {
        match self {
            Member::Absent => Ok(None),
            Member::Valid(text) => Ok(Some(text)),
            Member::Mistyped => Err("a key member that must be a string is not"),
        }
    }

    /// The bytes of a required base64url member.
    fn bytes(&self) -> Result<Vec<u8>, &'static str> {
        let value = self.text()?.ok_or("a key lacks a required member")?;
        JWK_BASE64
            .decode(value)
            .map_err(|_| "a key member is not base64url")
    }
}

/// One JWKS entry: `Ok(None)` when it is not an RS256/ES256/EdDSA signature key.
fn jwk_key(jwk: &Jwk) -> Result<Option<VerifyKey>, &'static str> {
    if !matches!(jwk.d, Member::Absent) {
        return Err("a key holds private material (\"d\"): publish public keys only");
    }
    let kty = jwk.kty.text()?.ok_or("a key has no \"kty\"")?;
    let kid = jwk.kid.text()?;
    let declared_alg = jwk.alg.text()?;
    if jwk.use_.text()?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    match &jwk.key_ops {
        Member::Absent => {}
        Member::Mistyped => return Err("\"key_ops\" is not an array"),
        Member::Valid(ops) => {
            if !ops
                .iter()
                .any(|op| matches!(op, Member::Valid(op) if op == "verify"))
            {
                return Ok(None);
            }
        }
    }
    let (alg, key) = match kty {
        "RSA" => {
            if !matches!(declared_alg, None | Some("RS256")) {
                return Ok(None);
            }
            (Algorithm::RS256, rsa_key(&jwk.n.bytes()?, &jwk.e.bytes()?)?)
        }
        "EC" => {
            if jwk.crv.text()? != Some("P-256") || !matches!(declared_alg, None | Some("ES256")) {
                return Ok(None);
            }
            let (x, y) = (jwk.x.bytes()?, jwk.y.bytes()?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes");
            }
            let point = [&[0x04][..], &x, &y].concat();
            (Algorithm::ES256, ec_p256_key(&point)?)
        }
        "OKP" => {
            if jwk.crv.text()? != Some("Ed25519")
                || !matches!(declared_alg, None | Some("EdDSA" | "Ed25519"))
            {
                return Ok(None);
            }
            (Algorithm::EdDSA, ed25519_key(&jwk.x.bytes()?)?)
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
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{Value, json};

    use super::*;
    use crate::auth::JwtVerifier;
    use crate::auth::test_util::*;

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
    fn pem_rules_of_ours_hold_on_top_of_the_pem_crate() {
        let rsa = String::from_utf8(fixture_bytes("rsa-public.pem")).unwrap();
        // Text around the one block, and CRLF line ends, are fine.
        let framed = format!(
            "# issuer key, 2025\n{}\ntrailing note\n",
            rsa.replace('\n', "\r\n")
        );
        let file = TempFile::new(framed.as_bytes());
        assert!(JwtVerifier::new(&config(vec![KeySource::PublicKeyPem(file.0.clone())])).is_ok());

        let (begin, body) = rsa.split_once('\n').unwrap();
        let mut der = STANDARD
            .decode(
                body.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        der.push(0);
        let trailing = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&der)
        );
        let pkcs1 = String::from_utf8(fixture_bytes("rsa-public-pkcs1.pem")).unwrap();
        let short_pkcs1 = pkcs1.replacen("\n", "\nMAo=\n-----END RSA PUBLIC KEY-----\n", 1);
        let cases = [
            // A second block counts even when it is not well-formed itself.
            (
                format!("{rsa}-----BEGIN PUBLIC KEY-----\nnot base64\n"),
                "more than one PEM block; put one public key in each file",
            ),
            // RFC 1421 headers belong to (encrypted) private keys, never to a public key.
            (
                format!("{begin}\nProc-Type: 4,ENCRYPTED\n\n{body}"),
                "not a PEM file",
            ),
            (rsa.replace("PUBLIC KEY", "PUBLIC\nKEY"), "not a PEM file"),
            (trailing, "malformed public key"),
            (short_pkcs1, "malformed RSA public key"),
        ];
        for (contents, expected) in cases {
            let file = TempFile::new(contents.as_bytes());
            let err = load_error(vec![KeySource::PublicKeyPem(file.0.clone())]);
            assert!(
                matches!(&err, KeyError::UnsupportedKey { reason, .. } if *reason == expected),
                "{expected}: {err:?}"
            );
        }
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
    fn jwks_members_present_with_another_type_are_not_read_as_absent() {
        let jwks: Value = serde_json::from_slice(&fixture_bytes("jwks.json")).unwrap();
        let rsa = jwks["keys"][0].clone();
        let with = |name: &str, value: Value| {
            let mut key = rsa.clone();
            key[name] = value;
            json!({ "keys": [key] }).to_string()
        };
        let cases = [
            (
                with("d", json!(null)),
                "a key holds private material (\"d\"): publish public keys only",
            ),
            (
                with("kid", json!(null)),
                "a key member that must be a string is not",
            ),
            (
                with("use", json!(null)),
                "a key member that must be a string is not",
            ),
            (
                with("kty", json!(["RSA"])),
                "a key member that must be a string is not",
            ),
            (
                with("e", json!(65537)),
                "a key member that must be a string is not",
            ),
            (with("key_ops", json!(null)), "\"key_ops\" is not an array"),
        ];
        for (contents, expected) in cases {
            let file = TempFile::new(contents.as_bytes());
            let err = load_error(vec![KeySource::JwksFile(file.0.clone())]);
            assert!(
                matches!(&err, KeyError::Jwks { reason, .. } if *reason == expected),
                "{expected}: {err:?}"
            );
        }
        // Members a key type does not read, unknown members and non-string `key_ops` items
        // are ignored; the last of duplicate members counts, as in any JSON object.
        let mut key = rsa.clone();
        key["crv"] = json!(5);
        key["x5c"] = json!(["MIIB"]);
        key["key_ops"] = json!([7, null, "verify"]);
        let text = json!({ "keys": [key] }).to_string().replacen(
            "\"kid\":",
            "\"kid\":\"other\",\"kid\":",
            1,
        );
        let file = TempFile::new(text.as_bytes());
        let v = verifier(vec![KeySource::JwksFile(file.0.clone())]);
        let token = with_kid(Algorithm::RS256, "rsa-1", &rsa_private("rsa-private.pem"));
        assert!(v.verify(&token, NOW).is_ok());
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
}
