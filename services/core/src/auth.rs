//! Signed, expiring tokens for the three roles (courier, watch, ops): JWT HS256 via `jsonwebtoken`.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{CourierId, OrderId};

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Streams fixes as this courier; marks its own orders picked up or delivered.
    Courier(CourierId),
    /// Reads one order's state and live updates.
    Watch(OrderId),
    /// Everything under `/v1`.
    Ops,
}

impl Role {
    /// The role's name as it appears in the token and in `POST /v1/tokens`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Courier(_) => "courier",
            Role::Watch(_) => "watch",
            Role::Ops => "ops",
        }
    }

    /// Builds a role from its name and subject, as `POST /v1/tokens` and `trackctl token` take them.
    ///
    /// # Errors
    /// [`TokenError::BadRole`] for an unknown name, a missing subject or a subject that is not an id.
    pub fn from_parts(name: &str, subject: Option<&str>) -> Result<Self, TokenError> {
        let subject_of = |what: &str| {
            subject.ok_or_else(|| {
                TokenError::BadRole(format!("role {name} needs a subject ({what} id)"))
            })
        };
        match name {
            "courier" => CourierId::new(subject_of("courier")?)
                .map(Role::Courier)
                .map_err(|e| TokenError::BadRole(format!("courier id: {e}"))),
            "watch" => OrderId::new(subject_of("order")?)
                .map(Role::Watch)
                .map_err(|e| TokenError::BadRole(format!("order id: {e}"))),
            "ops" if subject.is_none() => Ok(Role::Ops),
            "ops" => Err(TokenError::BadRole("role ops takes no subject".into())),
            other => Err(TokenError::BadRole(format!(
                "unknown role {other:?}; expected courier, watch or ops"
            ))),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid: {0}")]
    Invalid(String),
    #[error("{0}")]
    BadRole(String),
}

/// The JWT claims of a trackline token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    role: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    sub: Option<String>,
    iat: i64,
    exp: i64,
}

/// Mints and verifies tokens with one HMAC secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

/// Default lifetime of a minted token.
pub const DEFAULT_TTL_S: i64 = 24 * 3600;

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is exact: a token is dead the second it expires, not a minute later.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `role` valid for `ttl_s` seconds from `now_s` (unix seconds).
    pub fn mint_at(&self, role: &Role, ttl_s: i64, now_s: i64) -> String {
        let sub = match role {
            Role::Courier(id) => Some(id.to_string()),
            Role::Watch(id) => Some(id.to_string()),
            Role::Ops => None,
        };
        let claims = Claims {
            role: role.name().to_string(),
            sub,
            iat: now_s,
            exp: now_s.saturating_add(ttl_s),
        };
        // unwrap: HS256 signing of a plain struct cannot fail (no key parsing, serde_json of strings and ints)
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap()
    }

    /// A token for `role` valid for `ttl_s` seconds from now.
    pub fn mint(&self, role: &Role, ttl_s: i64) -> String {
        self.mint_at(role, ttl_s, crate::now_ms() / 1000)
    }

    /// Checks signature and expiry and returns the role with its expiry (unix seconds).
    ///
    /// # Errors
    /// [`TokenError::Expired`] or [`TokenError::Invalid`] (bad signature, malformed, unknown role).
    pub fn verify(&self, token: &str) -> Result<(Role, i64), TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        let claims = data.claims;
        let role = Role::from_parts(&claims.role, claims.sub.as_deref())
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        Ok((role, claims.exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_verify_with_their_role() {
        let keys = TokenKeys::new(b"secret");
        for role in [
            Role::Ops,
            Role::Courier(CourierId::new("c1").unwrap()),
            Role::Watch(OrderId::new("o1").unwrap()),
        ] {
            let (back, _) = keys.verify(&keys.mint(&role, 60)).unwrap();
            assert_eq!(back, role);
        }
    }

    #[test]
    fn expired_forged_and_garbage_tokens_fail() {
        let keys = TokenKeys::new(b"secret");
        let expired = keys.mint_at(&Role::Ops, 10, crate::now_ms() / 1000 - 3600);
        assert_eq!(keys.verify(&expired), Err(TokenError::Expired));
        let forged = TokenKeys::new(b"other").mint(&Role::Ops, 60);
        assert!(matches!(keys.verify(&forged), Err(TokenError::Invalid(_))));
        assert!(matches!(
            keys.verify("garbage"),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(keys.verify(""), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn roles_are_parsed_strictly() {
        assert!(Role::from_parts("ops", Some("x")).is_err());
        assert!(Role::from_parts("watch", None).is_err());
        assert!(Role::from_parts("courier", Some("bad id")).is_err());
        assert!(Role::from_parts("admin", None).is_err());
    }
}
