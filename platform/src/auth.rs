//! Bearer-token authentication shared by both APIs (CONTRACT.md, "Authentication").
//!
//! Only HS256 is accepted; `exp` is required with 30 s of leeway; `sub` must be a UUID and
//! `role` one of `customer` / `admin`. Anything else is 401 `unauthorized`. With `AUTH=off`
//! every caller is an admin (demos only; a warning is logged at start).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::problem::Problem;
use crate::settings::{self, SettingError};

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Customer,
    Admin,
}

/// The authenticated caller of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: a customer's id (for admins, the admin's id).
    pub subject: Uuid,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this action needs the admin role",
            ))
        }
    }
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    /// `None` when `AUTH=off`.
    key: Option<Arc<DecodingKey>>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Authenticator {
    // The key is a secret: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("enabled", &self.key.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: String,
}

/// Clock skew tolerated on `exp`.
pub const LEEWAY_SECS: u64 = 30;

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_exp = true;
        Self {
            key: Some(Arc::new(DecodingKey::from_secret(secret))),
            validation: Arc::new(validation),
        }
    }

    /// Treats every caller as an admin.
    pub fn disabled() -> Self {
        Self {
            key: None,
            validation: Arc::new(Validation::new(Algorithm::HS256)),
        }
    }

    /// From `AUTH` and `JWT_SECRET`: the service refuses to start without a secret unless
    /// `AUTH=off`.
    pub fn from_env() -> Result<Self, SettingError> {
        match settings::raw("AUTH").as_deref() {
            Some("off") => {
                tracing::warn!("AUTH=off: every caller is treated as an admin; never run this way in production");
                Ok(Self::disabled())
            }
            None | Some("on") => match settings::raw("JWT_SECRET") {
                Some(secret) if secret.len() >= 16 => Ok(Self::hs256(secret.as_bytes())),
                Some(_) => Err(SettingError::new("JWT_SECRET", "must be at least 16 bytes long")),
                None => Err(SettingError::new(
                    "JWT_SECRET",
                    "is required (or set AUTH=off for a local demo)",
                )),
            },
            Some(other) => Err(SettingError::new("AUTH", format!("{other:?} is not on or off"))),
        }
    }

    /// Authenticates the value of an `Authorization` header (`None` if absent).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, Problem> {
        let Some(key) = &self.key else {
            return Ok(Caller {
                subject: Uuid::nil(),
                role: Role::Admin,
            });
        };
        let header = authorization.ok_or_else(|| unauthorized("a bearer token is required"))?;
        let header = std::str::from_utf8(header).map_err(|_| unauthorized("malformed Authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("the token has expired"),
                ErrorKind::InvalidAlgorithm => unauthorized("only HS256 tokens are accepted"),
                ErrorKind::MissingRequiredClaim(c) => unauthorized(&format!("the token lacks the {c} claim")),
                _ => unauthorized("the token is invalid"),
            }
        })?;
        let subject = Uuid::parse_str(&data.claims.sub).map_err(|_| unauthorized("the token's sub is not a UUID"))?;
        let role = match data.claims.role.as_str() {
            "customer" => Role::Customer,
            "admin" => Role::Admin,
            _ => return Err(unauthorized("the token's role is not customer or admin")),
        };
        Ok(Caller { subject, role })
    }
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Authenticator::from_ref(state);
        auth.authenticate(
            parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret-0123456789";

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn exp(offset: i64) -> i64 {
        chrono::Utc::now().timestamp() + offset
    }

    fn check(t: &str) -> Result<Caller, Problem> {
        Authenticator::hs256(SECRET).authenticate(Some(format!("Bearer {t}").as_bytes()))
    }

    #[test]
    fn accepts_a_valid_customer_token() {
        let sub = Uuid::now_v7();
        let t = token(
            json!({"sub": sub, "role": "customer", "exp": exp(60)}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(
            check(&t).unwrap(),
            Caller {
                subject: sub,
                role: Role::Customer
            }
        );
    }

    #[test]
    fn refuses_bad_tokens() {
        let sub = Uuid::now_v7().to_string();
        let bad = [
            token(
                json!({"sub": sub, "role": "admin", "exp": exp(-31)}),
                Algorithm::HS256,
                SECRET,
            ),
            token(
                json!({"sub": sub, "role": "admin", "exp": exp(60)}),
                Algorithm::HS256,
                b"another-secret-xxxxxx",
            ),
            token(
                json!({"sub": sub, "role": "admin", "exp": exp(60)}),
                Algorithm::HS384,
                SECRET,
            ),
            token(json!({"sub": sub, "role": "admin"}), Algorithm::HS256, SECRET),
            token(
                json!({"sub": sub, "role": "root", "exp": exp(60)}),
                Algorithm::HS256,
                SECRET,
            ),
            token(json!({"sub": sub, "exp": exp(60)}), Algorithm::HS256, SECRET),
            token(
                json!({"sub": "alice", "role": "admin", "exp": exp(60)}),
                Algorithm::HS256,
                SECRET,
            ),
            // alg "none": header {"alg":"none"}, empty signature.
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4Iiwicm9sZSI6ImFkbWluIiwiZXhwIjo5OTk5OTk5OTk5fQ."
                .to_owned(),
            "garbage".to_owned(),
        ];
        for t in bad {
            let p = check(&t).unwrap_err();
            assert_eq!((p.status, p.code.as_str()), (401, "unauthorized"), "{t}");
        }
    }

    #[test]
    fn tolerates_bounded_clock_skew() {
        let t = token(
            json!({"sub": Uuid::now_v7(), "role": "admin", "exp": exp(-20)}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(check(&t).is_ok());
    }

    #[test]
    fn missing_or_non_bearer_header_is_401() {
        let auth = Authenticator::hs256(SECRET);
        assert_eq!(auth.authenticate(None).unwrap_err().status, 401);
        assert_eq!(auth.authenticate(Some(b"Basic abc")).unwrap_err().status, 401);
    }
}
