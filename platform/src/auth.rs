//! Bearer-token authentication shared by both APIs (docs/api.md, "Authentication").
//!
//! Only HS256 is accepted; `exp` is required; `exp`, `nbf` and `iat` are checked with 30 s of
//! clock skew (a token not yet valid or issued in the future is refused); `sub` must be a UUID
//! and `role` one of `customer` / `admin`. With `JWT_AUDIENCE` / `JWT_ISSUER` set, `aud` / `iss`
//! are required and must match; unset, those claims are ignored (identity providers add them
//! as a matter of course). The scheme name `Bearer` is case-insensitive (RFC 7235). Anything
//! else is 401 `unauthorized`. With `AUTH=off` every caller is an admin (demos only; a warning
//! is logged at start).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::problem::Problem;
use crate::settings::{self, SettingError};

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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

impl Role {
    /// The `role` claim's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
        }
    }
}

/// `JWT_SECRET`: its bytes as given are the HS256 key, at least 16 of them.
pub fn jwt_secret_from_env() -> Result<String, SettingError> {
    match settings::raw("JWT_SECRET") {
        Some(secret) if secret.len() >= 16 => Ok(secret),
        Some(_) => Err(SettingError::new("JWT_SECRET", "must be at least 16 bytes long")),
        None => Err(SettingError::new(
            "JWT_SECRET",
            "is required (or set AUTH=off for a local demo)",
        )),
    }
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: String,
    role: &'a str,
    iat: i64,
    exp: i64,
}

/// An HS256 token for `subject` in `role`, valid for `ttl` from now, that [`Authenticator`]
/// with the same `secret` accepts (`write-api token`: demos, tests and operations).
pub fn issue_hs256(
    secret: &[u8],
    subject: Uuid,
    role: Role,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let iat = chrono::Utc::now().timestamp();
    let claims = IssuedClaims {
        sub: subject.to_string(),
        role: role.as_str(),
        iat,
        exp: iat.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
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
    /// Checked here: `jsonwebtoken` checks `exp` and `nbf` but not `iat`.
    #[serde(default)]
    iat: Option<f64>,
}

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;

/// The `aud` and `iss` a token must name (`JWT_AUDIENCE`, `JWT_ISSUER`); `None` ignores the claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedClaims {
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl ExpectedClaims {
    /// From `JWT_AUDIENCE` and `JWT_ISSUER` (unset or blank: not checked).
    pub fn from_env() -> Result<Self, SettingError> {
        Ok(Self {
            audience: claim_setting("JWT_AUDIENCE")?,
            issuer: claim_setting("JWT_ISSUER")?,
        })
    }
}

/// A claim value to match exactly: surrounding whitespace or control characters can only be a
/// mistake in the setting, and would make every token fail to match.
fn claim_setting(name: &'static str) -> Result<Option<String>, SettingError> {
    match settings::raw(name) {
        Some(v) if v.trim() != v || v.chars().any(char::is_control) => Err(SettingError::new(
            name,
            "must not have surrounding whitespace or control characters",
        )),
        v => Ok(v),
    }
}

impl Authenticator {
    /// Verifies HS256 tokens signed with `secret`, ignoring `aud` and `iss`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::hs256_expecting(secret, &ExpectedClaims::default())
    }

    /// Verifies HS256 tokens signed with `secret` that name `expected`'s audience and issuer.
    pub fn hs256_expecting(secret: &[u8], expected: &ExpectedClaims) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &expected.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &expected.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
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

    /// From `AUTH`, `JWT_SECRET`, `JWT_AUDIENCE` and `JWT_ISSUER`: the service refuses to start
    /// without a secret unless `AUTH=off`.
    pub fn from_env() -> Result<Self, SettingError> {
        match settings::raw("AUTH").as_deref() {
            Some("off") => {
                tracing::warn!("AUTH=off: every caller is treated as an admin; never run this way in production");
                Ok(Self::disabled())
            }
            None | Some("on") => Ok(Self::hs256_expecting(
                jwt_secret_from_env()?.as_bytes(),
                &ExpectedClaims::from_env()?,
            )),
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
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("the token has expired"),
                ErrorKind::ImmatureSignature => unauthorized("the token is not valid yet (nbf)"),
                ErrorKind::InvalidAudience => unauthorized("the token's aud does not name this service"),
                ErrorKind::InvalidIssuer => unauthorized("the token's iss is not the expected issuer"),
                ErrorKind::InvalidAlgorithm => unauthorized("only HS256 tokens are accepted"),
                ErrorKind::MissingRequiredClaim(c) => unauthorized(&format!("the token lacks the {c} claim")),
                _ => unauthorized("the token is invalid"),
            }
        })?;
        let now = chrono::Utc::now().timestamp() as f64;
        if data.claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS as f64) {
            return Err(unauthorized("the token was issued in the future (iat)"));
        }
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
    fn nbf_and_iat_in_the_future_are_refused_beyond_the_skew() {
        let claims = |extra: serde_json::Value| {
            let mut c = json!({"sub": Uuid::now_v7(), "role": "admin", "exp": exp(600)});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            token(c, Algorithm::HS256, SECRET)
        };
        for (extra, ok) in [
            (json!({"nbf": exp(60)}), false),
            (json!({"iat": exp(60)}), false),
            (json!({"nbf": exp(20), "iat": exp(20)}), true),
            (json!({"nbf": exp(-60), "iat": exp(-60)}), true),
        ] {
            assert_eq!(check(&claims(extra.clone())).is_ok(), ok, "{extra}");
        }
    }

    #[test]
    fn aud_and_iss_are_ignored_unless_expected_then_required() {
        let claims = |extra: serde_json::Value| {
            let mut c = json!({"sub": Uuid::now_v7(), "role": "admin", "exp": exp(600)});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            format!("Bearer {}", token(c, Algorithm::HS256, SECRET))
        };
        let any = Authenticator::hs256(SECRET);
        let strict = Authenticator::hs256_expecting(
            SECRET,
            &ExpectedClaims {
                audience: Some("ordering".into()),
                issuer: Some("https://idp".into()),
            },
        );
        for (extra, any_ok, strict_ok) in [
            (json!({}), true, false),
            (json!({"aud": "other", "iss": "elsewhere"}), true, false),
            (json!({"aud": "ordering", "iss": "https://idp"}), true, true),
            (json!({"aud": ["x", "ordering"], "iss": "https://idp"}), true, true),
            (json!({"aud": "ordering"}), true, false),
            (json!({"iss": "https://idp"}), true, false),
        ] {
            let t = claims(extra.clone());
            assert_eq!(any.authenticate(Some(t.as_bytes())).is_ok(), any_ok, "{extra}");
            assert_eq!(strict.authenticate(Some(t.as_bytes())).is_ok(), strict_ok, "{extra}");
        }
    }

    #[test]
    fn the_scheme_name_is_case_insensitive() {
        let auth = Authenticator::hs256(SECRET);
        let t = token(
            json!({"sub": Uuid::now_v7(), "role": "admin", "exp": exp(60)}),
            Algorithm::HS256,
            SECRET,
        );
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert!(
                auth.authenticate(Some(format!("{scheme} {t}").as_bytes())).is_ok(),
                "{scheme}"
            );
        }
        assert!(auth.authenticate(Some(format!("Bearerx {t}").as_bytes())).is_err());
    }

    #[test]
    fn missing_or_non_bearer_header_is_401() {
        let auth = Authenticator::hs256(SECRET);
        assert_eq!(auth.authenticate(None).unwrap_err().status, 401);
        assert_eq!(auth.authenticate(Some(b"Basic abc")).unwrap_err().status, 401);
    }
}
