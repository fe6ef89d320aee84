//! The console's tail tokens: short HS256 tokens that let the operators' web console subscribe
//! to one channel on the admin listener's `/api/ws`, and nowhere else.
//!
//! The signing key is derived from the admin key (`HMAC-SHA256(admin key, "cortex-realtime
//! console token")`), so every node started with the same admin key accepts a token another
//! minted, and the admin key itself never signs anything a browser holds. The token is checked
//! by the same rules as every connection token ([`JwtVerifier`]); only its key differs. The main
//! listener never holds this key, so it refuses these tokens like any other unknown signature.
//! Pure: no I/O.

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::keys::{KidMatch, VerifyKey};
use super::policy::ClaimRules;
use super::{AuthError, Claims, DEFAULT_LEEWAY_SECS, JwtVerifier};

/// The `sub` of every tail token.
pub const CONSOLE_SUBJECT: &str = "admin-console";
/// How long a tail token lives, seconds.
pub const CONSOLE_TOKEN_TTL: i64 = 300;
/// What the admin key is stretched with to give the tail tokens' key.
const DERIVATION: &[u8] = b"cortex-realtime console token";

/// Mints and verifies the console's tail tokens of one admin key.
#[derive(Clone)]
pub struct ConsoleKey {
    secret: [u8; 32],
    verifier: JwtVerifier,
}

impl std::fmt::Debug for ConsoleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleKey(<redacted>)")
    }
}

impl ConsoleKey {
    /// The key derived from `admin_key`.
    pub fn new(admin_key: &str) -> ConsoleKey {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(admin_key.as_bytes()).expect("any key length");
        mac.update(DERIVATION);
        let secret: [u8; 32] = mac.finalize().into_bytes().into();
        let verifier = JwtVerifier {
            keys: vec![VerifyKey {
                alg: Algorithm::HS256,
                kid: KidMatch::Any,
                key: DecodingKey::from_secret(&secret),
            }],
            rules: ClaimRules {
                issuer: None,
                audience: None,
                leeway_secs: DEFAULT_LEEWAY_SECS,
            },
        };
        ConsoleKey { secret, verifier }
    }

    /// A token for `channel` of `org`, valid from `now` for [`CONSOLE_TOKEN_TTL`] seconds; also
    /// its expiry (unix seconds).
    pub fn mint(&self, org: &str, channel: &str, now: i64) -> (String, i64) {
        let exp = now + CONSOLE_TOKEN_TTL;
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from(CONSOLE_SUBJECT));
        claims.insert("org".into(), Value::from(org));
        claims.insert("exp".into(), Value::from(exp));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("channels".into(), Value::from(vec![channel.to_owned()]));
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .expect("HMAC-SHA256 and a JSON map never fail");
        (token, exp)
    }

    /// Verifies a tail token at unix time `now`: the connection token rules, this key, and
    /// the console's subject.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let claims = self.verifier.verify(token, now)?;
        if claims.sub != CONSOLE_SUBJECT || claims.channels.is_none() {
            return Err(AuthError::Invalid("not a console token"));
        }
        Ok(claims)
    }

    /// The clock leeway, seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.verifier.leeway_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_for_its_one_channel_and_only_with_the_same_admin_key() {
        let k = ConsoleKey::new("admin-key");
        let (token, exp) = k.mint("o_1", "project:p_4", 1_000);
        assert_eq!(exp, 1_300);
        let c = k.verify(&token, 1_010).unwrap();
        assert_eq!((c.sub.as_str(), c.org.as_str()), ("admin-console", "o_1"));
        let allowed = c.channels.unwrap();
        assert_eq!(allowed.len(), 1);
        assert!(
            ConsoleKey::new("admin-key").verify(&token, 1_010).is_ok(),
            "same key, other node"
        );
        assert!(ConsoleKey::new("other-key").verify(&token, 1_010).is_err());
        assert_eq!(k.verify(&token, 1_400), Err(AuthError::Expired));
        // A plain connection token signed with the admin key itself is not a console token.
        let plain = crate::auth::mint_hs256("admin-key", "admin-console", "o_1", 2_000, None);
        assert!(k.verify(&plain, 1_010).is_err());
    }
}
