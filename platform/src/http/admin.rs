//! What every service's admin pages (`/admin`) share: the login with an admin JWT kept in a
//! cookie, CSRF protection of the pages' forms, and the HTML frame (docs/operations.md,
//! "Admin pages").
//!
//! - **Login**: `GET /admin` without a session shows a form to paste a token; `POST
//!   /admin/login` verifies it (HS256 with `JWT_SECRET`, like the APIs' bearer tokens) and
//!   keeps it in the cookie `ordering_admin` (`HttpOnly`, `SameSite=Strict`, `Path=/admin`).
//!   A missing or invalid token is 401, a valid token without the admin role 403. The cookie
//!   lives as long as the token: its `exp` still applies on every request.
//! - **CSRF**: every state-changing request is a POST carrying `csrf`, an HMAC of the session's
//!   token under the secret (so a page from another site can neither read nor forge it), and
//!   is refused with 403 when it is missing or wrong, or when an `Origin` header names another
//!   host. `SameSite=Strict` keeps the cookie off cross-site requests in the first place.
//! - **Off**: without `JWT_SECRET` there is no admin page: `/admin` answers 404 with a page
//!   saying how to turn it on.
//!
//! Pages are rendered on the server with `maud` (which escapes every value) and need no
//! external asset and no JavaScript; they are never cached and never framed.

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use hmac::{Hmac, Mac};
use maud::{DOCTYPE, Markup, html};
use sha2::Sha256;

use crate::auth::{Authenticator, Caller, ExpectedClaims, jwt_secret_from_env};
use crate::settings::{self, SettingError};

/// The cookie holding the admin's token.
pub const COOKIE: &str = "ordering_admin";

/// Where the admin pages live.
pub const BASE: &str = "/admin";

/// Verifies admin sessions and their CSRF tokens.
#[derive(Clone)]
pub struct AdminGate {
    auth: Authenticator,
    secret: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for AdminGate {
    // The secret must never be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminGate").finish_non_exhaustive()
    }
}

impl AdminGate {
    /// Sessions signed with `secret`, whose tokens name `expected`'s audience and issuer.
    pub fn new(secret: &[u8], expected: &ExpectedClaims) -> Self {
        Self {
            auth: Authenticator::hs256_expecting(secret, expected),
            secret: secret.into(),
        }
    }

    /// From `JWT_SECRET` (and `JWT_AUDIENCE`, `JWT_ISSUER`): `None` when `JWT_SECRET` is unset,
    /// which turns the admin pages off. `AUTH=off` does not open them: they always need a token.
    pub fn from_env() -> Result<Option<Self>, SettingError> {
        if settings::raw("JWT_SECRET").is_none() {
            return Ok(None);
        }
        Ok(Some(Self::new(
            jwt_secret_from_env()?.as_bytes(),
            &ExpectedClaims::from_env()?,
        )))
    }

    /// The CSRF token of a session: an HMAC of its JWT, so it changes with every login.
    fn csrf_for(&self, token: &str) -> String {
        hex::encode(self.mac(token).finalize().into_bytes())
    }

    fn mac(&self, token: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(b"ordering-admin-csrf\0");
        mac.update(token.as_bytes());
        mac
    }

    /// 403 unless `sent` is the CSRF token of `token`'s session (compared in constant time).
    fn check_csrf(&self, token: &str, sent: Option<&str>) -> Result<(), Response> {
        let bad = || {
            refused(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or wrong. Reload the page and try again.",
            )
        };
        let sent = sent.and_then(|s| hex::decode(s).ok()).ok_or_else(bad)?;
        self.mac(token).verify_slice(&sent).map_err(|_| bad())
    }

    /// The caller of `token`, if it is a valid admin token; else the page that says why.
    fn admit(&self, token: &str) -> Result<Caller, Response> {
        let caller = self
            .auth
            .authenticate(Some(format!("Bearer {token}").as_bytes()))
            .map_err(|p| login_page(StatusCode::UNAUTHORIZED, Some(&p.detail)))?;
        if !caller.is_admin() {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "This token is valid but does not have the admin role.",
            ));
        }
        Ok(caller)
    }
}

/// A signed-in admin. As an extractor it reads the session cookie (401 with the login form
/// without one, 403 for a token without the admin role) and, on anything but GET, refuses a
/// request whose `Origin` names another host (403).
#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    /// The value every form of the page must send back as `csrf`.
    pub csrf: String,
}

/// A state-changing form of an admin page: the CSRF token only.
#[derive(Debug, serde::Deserialize)]
pub struct CsrfForm {
    pub csrf: Option<String>,
}

/// A checked POST: the session, after its CSRF token and `Origin` were verified.
pub struct Verified(pub Session);

impl Verified {
    /// Verifies a POST of an admin page (session, `Origin`, CSRF token), or answers 401/403.
    pub fn check(gate: &AdminGate, headers: &HeaderMap, form: &CsrfForm) -> Result<Self, Response> {
        same_origin(headers)?;
        let token = cookie(headers).ok_or_else(|| login_page(StatusCode::UNAUTHORIZED, None))?;
        let caller = gate.admit(token)?;
        gate.check_csrf(token, form.csrf.as_deref())?;
        Ok(Self(Session {
            caller,
            csrf: gate.csrf_for(token),
        }))
    }
}

impl<S> FromRequestParts<S> for Session
where
    S: Send + Sync,
    AdminGate: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let gate = AdminGate::from_ref(state);
        if parts.method != Method::GET {
            same_origin(&parts.headers)?;
        }
        let token = cookie(&parts.headers).ok_or_else(|| login_page(StatusCode::UNAUTHORIZED, None))?;
        let caller = gate.admit(token)?;
        Ok(Session {
            caller,
            csrf: gate.csrf_for(token),
        })
    }
}

/// The token in the `ordering_admin` cookie, if any.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// 403 when an `Origin` header is present and names another host than `Host`: a form posted
/// from another site. Browsers send `Origin` on every POST; its absence (curl) is let through,
/// since the CSRF token still has to match.
fn same_origin(headers: &HeaderMap) -> Result<(), Response> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(refused(
            StatusCode::FORBIDDEN,
            "This form was posted from another origin.",
        )),
    }
}

/// The login form posted to `/admin/login`.
#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: Option<String>,
}

/// `POST /admin/login` and `POST /admin/logout`, for a router whose state holds the gate.
pub fn session_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    AdminGate: FromRef<S>,
{
    Router::new()
        .route("/admin/login", post(login::<S>))
        .route("/admin/logout", post(logout::<S>))
}

async fn login<S>(State(state): State<S>, headers: HeaderMap, form: axum::Form<LoginForm>) -> Response
where
    AdminGate: FromRef<S>,
{
    let gate = AdminGate::from_ref(&state);
    if let Err(r) = same_origin(&headers) {
        return r;
    }
    let token = form.0.token.unwrap_or_default();
    let token = token.trim();
    // A token is a JWT: three base64url parts. Anything else could break the cookie's syntax.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return login_page(StatusCode::UNAUTHORIZED, Some("paste a JWT (three base64url parts)"));
    }
    if let Err(r) = gate.admit(token) {
        return r;
    }
    // No `Secure` attribute: the service cannot know whether a proxy in front serves it over
    // HTTPS (docs/operations.md says to serve /admin over HTTPS only).
    let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path={BASE}");
    let mut res = Redirect::to(BASE).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("checked characters"),
    );
    res
}

async fn logout<S>(State(state): State<S>, headers: HeaderMap, form: axum::Form<CsrfForm>) -> Response
where
    AdminGate: FromRef<S>,
{
    let gate = AdminGate::from_ref(&state);
    if let Err(r) = Verified::check(&gate, &headers, &form.0) {
        return r;
    }
    let mut res = Redirect::to(BASE).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ordering_admin=; HttpOnly; SameSite=Strict; Path=/admin; Max-Age=0"),
    );
    res
}

/// What the last action of an admin page did, carried through the redirect back to it
/// (`/admin?replayed=<id>`, `?discarded=<id>`, `?missing=<id>`): post/redirect/get.
#[derive(Debug, serde::Deserialize)]
pub struct Done<Id> {
    pub replayed: Option<Id>,
    pub discarded: Option<Id>,
    pub missing: Option<Id>,
}

/// A service's admin page: `page` at `/admin`, `replay` and `discard` of dead letter `{id}`,
/// sign-in and sign-out; with `None` (no `JWT_SECRET`), the page that says it is off.
pub fn dead_letter_page<S>(
    state: Option<S>,
    page: MethodRouter<S>,
    replay: MethodRouter<S>,
    discard: MethodRouter<S>,
) -> Router
where
    S: Clone + Send + Sync + 'static,
    AdminGate: FromRef<S>,
{
    let Some(state) = state else {
        return disabled();
    };
    Router::new()
        .route(BASE, page)
        .route("/admin/dead-letters/{id}/replay", replay)
        .route("/admin/dead-letters/{id}/discard", discard)
        .merge(session_routes())
        .with_state(state)
}

/// `/admin` and everything under it when the pages are off: 404 saying how to turn them on.
pub fn disabled() -> Router {
    async fn off() -> Response {
        page(
            StatusCode::NOT_FOUND,
            "Admin pages are off",
            html! {
                p { "This service's admin pages are off because " code { "JWT_SECRET" } " is not set." }
                p { "Set " code { "JWT_SECRET" } " (the same secret the APIs use, at least 16 bytes) and restart; then sign in here with an admin token (" code { "write-api token --role admin" } ")." }
            },
        )
    }
    Router::new()
        .route("/admin", get(off).post(off))
        .route("/admin/{*rest}", get(off).post(off))
}

/// The login form, answered with `status` and an optional reason.
fn login_page(status: StatusCode, reason: Option<&str>) -> Response {
    page(
        status,
        "Sign in",
        html! {
            @if let Some(reason) = reason { p.error { "Not signed in: " (reason) } }
            p { "Paste an admin token (a JWT with role " code { "admin" } ", e.g. from " code { "write-api token --role admin" } ")." }
            form method="post" action="/admin/login" {
                textarea name="token" rows="4" cols="80" required autocomplete="off" spellcheck="false" {}
                br;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A refusal page with `status`.
fn refused(status: StatusCode, why: &str) -> Response {
    page(
        status,
        "Refused",
        html! {
            p.error { (why) }
            p { a href=(BASE) { "Back to the admin page" } }
        },
    )
}

/// The inline style of every admin page: no external asset is ever loaded.
const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.5em;max-width:60em;max-height:20em;overflow:auto;margin:0}\
.error{color:#a00}.ok{color:#070}.warn{color:#a60}.notice{background:#eef6ee;padding:.5em}\
form.inline{display:inline}button{margin:.1em}code{background:#f3f3f3;padding:0 .2em}";

/// A complete HTML page with `status`: never cached, never framed, no external asset.
pub fn page(status: StatusCode, title: &str, body: Markup) -> Response {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                h1 { (title) }
                (body)
            }
        }
    };
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            // Lower case (the value is case-insensitive): upper-case literals here are read as
            // setting names by the --help test.
            (header::X_FRAME_OPTIONS, "deny"),
            // Not `no-referrer`: with it, browsers send `Origin: null` on form posts, which the
            // same-origin check must refuse.
            (header::REFERRER_POLICY, "same-origin"),
        ],
        html,
    )
        .into_response()
}

/// A form that POSTs to `action` with the session's CSRF token, as one button.
pub fn action_button(session: &Session, action: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" { (label) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ordering_admin=tok.en.x ; b=2"),
        );
        assert_eq!(cookie(&h), Some("tok.en.x"));
        h.insert(header::COOKIE, HeaderValue::from_static("ordering_admin="));
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn origin_must_match_host_when_present() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9000"));
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9000"));
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h).is_err());
    }

    #[test]
    fn csrf_tokens_belong_to_one_session() {
        let gate = AdminGate::new(b"0123456789abcdef0123", &ExpectedClaims::default());
        let good = gate.csrf_for("a.b.c");
        assert!(gate.check_csrf("a.b.c", Some(&good)).is_ok());
        assert!(gate.check_csrf("a.b.d", Some(&good)).is_err());
        assert!(gate.check_csrf("a.b.c", None).is_err());
        assert!(gate.check_csrf("a.b.c", Some("zz")).is_err());
    }
}
