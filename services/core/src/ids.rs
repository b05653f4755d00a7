//! Order and courier ids: 1-64 characters of `A-Za-z0-9_.-`, checked once at the edge.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest id the protocol accepts.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} characters long, at most {MAX_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("id contains {0:?}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed")]
    BadChar(char),
}

fn check(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(raw.chars().count()));
    }
    match raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(bad) => Err(IdError::BadChar(bad)),
        None => Ok(()),
    }
}

/// The schema of every id: what [`check`] accepts, so generated clients and property-based tests
/// send ids the server takes.
fn id_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .pattern(Some("^[A-Za-z0-9_.-]+$"))
        .into()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `raw` as an id.
            ///
            /// # Errors
            /// [`IdError`] when it is empty, longer than 64 bytes or has a character outside `A-Za-z0-9_.-`.
            pub fn new(raw: &str) -> Result<Self, IdError> {
                check(raw)?;
                Ok(Self(Arc::from(raw)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, IdError> {
                Self::new(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        /// In the OpenAPI document: a string of the id alphabet, as [`check`] enforces.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// The id of one delivery order.
    OrderId
);
id_type!(
    /// The id of one courier (the person and app, across connections).
    CourierId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "order-42", "C_1.x", &"x".repeat(64)] {
            assert_eq!(OrderId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_empty_long_and_foreign_ids() {
        assert_eq!(OrderId::new(""), Err(IdError::Empty));
        assert_eq!(OrderId::new(&"x".repeat(65)), Err(IdError::TooLong(65)));
        assert_eq!(CourierId::new("../etc"), Err(IdError::BadChar('/')));
        assert_eq!(CourierId::new("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(CourierId::new("é"), Err(IdError::BadChar('é')));
        assert_eq!(CourierId::new("a\0"), Err(IdError::BadChar('\0')));
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<OrderId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<OrderId>("\"not ok\"").is_err());
    }
}
