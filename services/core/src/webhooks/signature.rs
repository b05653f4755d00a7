//! Standard Webhooks signatures: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//! with the key the base64 part of a `whsec_` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of every secret, as the specification writes them.
pub const SECRET_PREFIX: &str = "whsec_";

/// Key lengths the specification allows (bytes, after decoding).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a webhook secret starts with '{SECRET_PREFIX}'")]
    Prefix,
    #[error("a webhook secret is '{SECRET_PREFIX}' followed by base64: {0}")]
    Base64(String),
    #[error("a webhook secret's key has 24 to 64 bytes, not {0}")]
    Length(usize),
}

/// The key of a `whsec_` secret.
///
/// # Errors
/// [`SecretError`] when the prefix, the base64 or the key's length is wrong.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(SecretError::Prefix)?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| SecretError::Base64(e.to_string()))?;
    if !KEY_BYTES.contains(&key.len()) {
        return Err(SecretError::Length(key.len()));
    }
    Ok(key)
}

/// A new random secret (32 bytes of key).
pub fn generate_secret() -> String {
    format!(
        "{SECRET_PREFIX}{}",
        STANDARD.encode(rand::random::<[u8; 32]>())
    )
}

/// The `webhook-signature` header for one delivery.
pub fn sign(key: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    // unwrap: HMAC takes a key of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_specification_example() {
        // The example of the Standard Webhooks specification (and of its libraries' tests).
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn refuses_malformed_secrets() {
        assert_eq!(decode_secret("MfKQ9r8G"), Err(SecretError::Prefix));
        assert!(matches!(
            decode_secret("whsec_!!!"),
            Err(SecretError::Base64(_))
        ));
        assert_eq!(decode_secret("whsec_AAAA"), Err(SecretError::Length(3)));
        assert!(decode_secret(&generate_secret()).is_ok());
    }
}
