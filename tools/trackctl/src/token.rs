//! Tokens on the client side: minting offline from the server's secret, and reading which role a
//! token we were handed claims to be (unverified: only the server can check it).

use anyhow::{bail, Context};
use serde::Deserialize;
use trackline_core::auth::{Role, TokenKeys};

/// The signing keys from `--secret` / `TRACKLINE_SECRET`.
///
/// # Errors
/// When no secret (or an empty one) was given, with what to do instead.
pub fn keys_from_secret(secret: Option<&str>) -> anyhow::Result<TokenKeys> {
    match secret {
        Some(secret) if !secret.is_empty() => Ok(TokenKeys::new(secret.as_bytes())),
        _ => bail!(
            "minting a token needs the server's signing secret: pass --secret SECRET or set TRACKLINE_SECRET \
             (the same value the server runs with)"
        ),
    }
}

/// Mints a token for `role` (`courier`, `watch` or `ops`) and `subject`, valid for `ttl_s` seconds.
///
/// # Errors
/// When the role or subject is not valid (e.g. an id with a space).
pub fn mint(
    keys: &TokenKeys,
    role: &str,
    subject: Option<&str>,
    ttl_s: i64,
) -> anyhow::Result<String> {
    let role = Role::from_parts(role, subject)?;
    Ok(keys.mint(&role, ttl_s))
}

/// What a token says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claimed {
    pub role: String,
    #[serde(default)]
    pub sub: Option<String>,
}

/// Reads the role and subject out of a trackline token without checking its signature.
///
/// Used only to decide how to use a token (an ops token creates orders, a courier token streams as
/// that courier); the server still verifies it on every request.
///
/// # Errors
/// When the text is not a JWT with a `role` claim.
pub fn peek(token: &str) -> anyhow::Result<Claimed> {
    jsonwebtoken::dangerous::insecure_decode_claims::<Claimed>(token.trim()).context(
        "the token is not a trackline token (mint one with `trackctl token ops --secret ...`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_secret_says_what_to_do() {
        for secret in [None, Some("")] {
            let message = format!("{:#}", keys_from_secret(secret).unwrap_err());
            assert!(
                message.contains("--secret") && message.contains("TRACKLINE_SECRET"),
                "{message}"
            );
        }
    }

    #[test]
    fn peek_reads_role_and_subject_of_minted_tokens() {
        let keys = keys_from_secret(Some("s3cret")).unwrap();
        let courier = mint(&keys, "courier", Some("c-7"), 60).unwrap();
        assert_eq!(
            peek(&courier).unwrap(),
            Claimed {
                role: "courier".into(),
                sub: Some("c-7".into())
            }
        );
        let ops = mint(&keys, "ops", None, 60).unwrap();
        assert_eq!(
            peek(&ops).unwrap(),
            Claimed {
                role: "ops".into(),
                sub: None
            }
        );
        assert!(peek("not-a-token").is_err());
    }

    #[test]
    fn bad_subjects_are_refused() {
        let keys = keys_from_secret(Some("s3cret")).unwrap();
        assert!(mint(&keys, "courier", Some("no spaces"), 60).is_err());
        assert!(mint(&keys, "ops", Some("x"), 60).is_err());
    }
}
