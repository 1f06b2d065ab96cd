//! Authentication and authorisation, over HTTP on both APIs:
//!
//! - only HS256 is accepted: `none`, HS384, HS512 and RS256-headed tokens are 401;
//! - `exp` is required, and the clock skew on it is bounded: 29 s past `exp` is accepted, 31 s
//!   past is refused;
//! - an admin-only route with a customer token is 403 and writes nothing;
//! - every customer-scoped read (order, the customer's list, the summary) with another
//!   customer's token is 404, also when the request carries a consistency token naming the
//!   other customer's order (a token makes a reader wait; it never grants access).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use ordering_schema::events::AggregateType;
use ordering_tests::read_app::{ReadApp, order, order_event, product, product_event};
use ordering_tests::write_app::{
    Answer, SECRET, WriteApp, admin_token, answer, customer_token, issue_consistency_token, token_with,
};
use serde_json::json;
use uuid::Uuid;

fn exp(offset: i64) -> i64 {
    chrono::Utc::now().timestamp() + offset
}

fn signed(alg: Algorithm, claims: serde_json::Value) -> String {
    encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("encode")
}

fn unsigned(header: &str, claims: &serde_json::Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// Tokens that must all be refused, each naming an admin (so acceptance would be obvious).
fn refused_tokens() -> Vec<(&'static str, String)> {
    let sub = Uuid::now_v7();
    let claims = json!({"sub": sub, "role": "admin", "exp": exp(600)});
    // An HS256 signature over an RS256 header: the classic algorithm-confusion forgery.
    let rs256_hmac = {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let good = signed(Algorithm::HS256, claims.clone());
        let sig = good.rsplit('.').next().expect("signature").to_owned();
        format!("{header}.{body}.{sig}")
    };
    vec![
        ("alg none", unsigned(r#"{"alg":"none","typ":"JWT"}"#, &claims, "")),
        ("alg None", unsigned(r#"{"alg":"None"}"#, &claims, "")),
        ("HS384", signed(Algorithm::HS384, claims.clone())),
        ("HS512", signed(Algorithm::HS512, claims.clone())),
        (
            "RS256 header",
            unsigned(r#"{"alg":"RS256","typ":"JWT"}"#, &claims, "sig"),
        ),
        ("RS256 header, HS256 signature", rs256_hmac),
        (
            "missing exp",
            signed(Algorithm::HS256, json!({"sub": sub, "role": "admin"})),
        ),
        (
            "exp null",
            signed(Algorithm::HS256, json!({"sub": sub, "role": "admin", "exp": null})),
        ),
        (
            "exp a string",
            signed(Algorithm::HS256, json!({"sub": sub, "role": "admin", "exp": "never"})),
        ),
        ("31 s past exp", token_with(&sub.to_string(), "admin", -31, SECRET)),
        ("a day past exp", token_with(&sub.to_string(), "admin", -86_400, SECRET)),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_write_api_accepts_only_hs256_with_a_bounded_skew() {
    let app = WriteApp::start().await;
    let p = app.create_product("SEC-AUTH", 100, "EUR", 5).await;
    let pid = p["id"].as_str().unwrap();
    let before = app.counts().await;
    for (what, token) in refused_tokens() {
        let a = answer(app.post(
            &format!("/v1/products/{pid}/stock-adjustments"),
            &token,
            &json!({"delta": 1}),
        ))
        .await;
        assert_eq!((a.status, a.code()), (401, "unauthorized"), "{what}: {}", a.text);
        a.assert_problem(401, "unauthorized");
    }
    assert_eq!(app.counts().await, before, "a refused token wrote something");
    // 29 s past exp is inside the 30 s skew.
    let late = token_with(&Uuid::now_v7().to_string(), "admin", -29, SECRET);
    let a = answer(app.post(
        &format!("/v1/products/{pid}/stock-adjustments"),
        &late,
        &json!({"delta": 1}),
    ))
    .await;
    assert_eq!(a.status, 200, "29 s past exp: {}", a.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_api_accepts_only_hs256_with_a_bounded_skew() {
    let app = ReadApp::start().await;
    let customer = Uuid::now_v7();
    let p = product("SEC-R", "sec", "d", 100, 5);
    app.publish(&product_event(&p)).await;
    let o = order(customer, &[(&p, 1)], ordering_schema::events::now());
    app.publish(&order_event(&o)).await;
    app.wait_version("rv_orders", o.id, 1).await;
    let paths = [
        format!("/v1/orders/{}", o.id),
        format!("/v1/customers/{customer}/orders"),
        format!("/v1/customers/{customer}/summary"),
    ];
    for path in &paths {
        for (what, token) in refused_tokens() {
            let a = answer(app.get(path).bearer_auth(&token)).await;
            assert_eq!((a.status, a.code()), (401, "unauthorized"), "{path} {what}: {}", a.text);
            a.assert_problem(401, "unauthorized");
        }
        let late = token_with(&customer.to_string(), "customer", -29, SECRET);
        let a = answer(app.get(path).bearer_auth(&late)).await;
        assert_eq!(a.status, 200, "{path}, 29 s past exp: {}", a.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_only_routes_refuse_customers_with_403_and_write_nothing() {
    let app = WriteApp::start().await;
    let p = app.create_product("SEC-ADMIN", 100, "EUR", 5).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let customer = Uuid::now_v7();
    let token = customer_token(customer);
    let placed = app.place_order(&token, None, &[(&pid, 1)]).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let oid = placed.body["id"].as_str().unwrap().to_owned();
    let paid = answer(app.post(
        &format!("/v1/orders/{oid}/pay"),
        &token,
        &json!({"payment_reference": "r"}),
    ))
    .await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    let before = app.counts().await;
    let attempts: Vec<(reqwest::Method, String, serde_json::Value)> = vec![
        (
            reqwest::Method::POST,
            "/v1/products".into(),
            json!({"sku": "SEC-C", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/products/{pid}"),
            json!({"name": "mine now"}),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/products/{pid}/stock-adjustments"),
            json!({"delta": 100}),
        ),
        (reqwest::Method::POST, format!("/v1/orders/{oid}/ship"), json!({})),
    ];
    for (method, path, body) in attempts {
        let a = answer(app.send(method.clone(), &path, &token, &body)).await;
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{method} {path}: {}", a.text);
        a.assert_problem(403, "forbidden");
    }
    assert_eq!(app.counts().await, before);
    let row = app.product_row(&pid).await;
    assert_eq!(
        (row["name"].as_str(), row["stock"].as_i64()),
        (Some("SEC-ADMIN name"), Some(4))
    );
}

async fn read(app: &ReadApp, path: &str, token: &str, consistency: Option<&str>) -> Answer {
    let mut req = app.get(path).bearer_auth(token);
    if let Some(c) = consistency {
        req = req.header("x-consistency-token", c);
    }
    answer(req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_customer_scoped_read_hides_other_customers_data() {
    let app = ReadApp::start().await;
    let alice = Uuid::now_v7();
    let bob = Uuid::now_v7();
    let p = product("SEC-PRIV", "private", "d", 100, 5);
    app.publish(&product_event(&p)).await;
    let o = order(alice, &[(&p, 2)], ordering_schema::events::now());
    app.publish(&order_event(&o)).await;
    app.wait_version("rv_orders", o.id, 1).await;
    let alice_token = customer_token(alice);
    let bob_token = customer_token(bob);
    // Alice's own token for her order, in Bob's hands.
    let mark = issue_consistency_token(alice, &[(AggregateType::Order, o.id, 1)]);
    let paths = [
        format!("/v1/orders/{}", o.id),
        format!("/v1/customers/{alice}/orders"),
        format!("/v1/customers/{alice}/orders?status=placed&limit=1"),
        format!("/v1/customers/{alice}/summary"),
    ];
    for path in &paths {
        let mine = read(&app, path, &alice_token, None).await;
        assert_eq!(mine.status, 200, "alice reads {path}: {}", mine.text);
        assert!(mine.text.contains(&o.id.to_string()) || mine.text.contains(&alice.to_string()));
        for consistency in [None, Some(mark.as_str())] {
            let theirs = read(&app, path, &bob_token, consistency).await;
            theirs.assert_problem(404, "not_found");
            assert!(
                !theirs.text.contains(&o.id.to_string()) && !theirs.text.contains("SEC-PRIV"),
                "the 404 reveals data: {}",
                theirs.text
            );
        }
        let admin = read(&app, path, &admin_token(), None).await;
        assert_eq!(admin.status, 200, "admin reads {path}: {}", admin.text);
    }
    // Bob's own (empty) list and summary are his to read, and show nothing of Alice's.
    for path in [
        format!("/v1/customers/{bob}/orders"),
        format!("/v1/customers/{bob}/summary"),
    ] {
        let a = read(&app, &path, &bob_token, None).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert!(!a.text.contains(&o.id.to_string()));
    }
    // A 404 for another customer's order looks exactly like one for an order that does not exist.
    let missing = read(&app, &format!("/v1/orders/{}", Uuid::now_v7()), &bob_token, None).await;
    let hidden = read(&app, &format!("/v1/orders/{}", o.id), &bob_token, None).await;
    assert_eq!((missing.status, missing.code()), (hidden.status, hidden.code()));
    assert_eq!(missing.body["detail"], hidden.body["detail"]);
}

/// Tokens as identity providers issue them, each with what the APIs must answer: `nbf` and
/// `iat` in the future beyond the 30 s skew are refused, within it accepted; an `aud` or `iss`
/// claim is ignored while `JWT_AUDIENCE` / `JWT_ISSUER` are unset.
fn provider_tokens(sub: Uuid, role: &str) -> Vec<(&'static str, String, u16)> {
    let now = exp(0);
    let with = |extra: serde_json::Value| {
        let mut claims = json!({"sub": sub, "role": role, "exp": now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(Algorithm::HS256, claims)
    };
    vec![
        ("nbf 60 s ahead", with(json!({"nbf": now + 60})), 401),
        ("iat 60 s ahead", with(json!({"iat": now + 60})), 401),
        ("nbf 20 s ahead", with(json!({"nbf": now + 20})), 200),
        ("iat 20 s ahead", with(json!({"iat": now + 20})), 200),
        ("nbf and iat past", with(json!({"nbf": now - 60, "iat": now - 60})), 200),
        ("an aud claim", with(json!({"aud": "some-api"})), 200),
        (
            "an aud list and iss",
            with(json!({"aud": ["a", "b"], "iss": "https://idp.example"})),
            200,
        ),
    ]
}

/// `Bearer` in any case is the bearer scheme.
fn scheme_spellings(token: &str) -> Vec<String> {
    ["Bearer", "bearer", "BEARER", "bEaReR"]
        .iter()
        .map(|s| format!("{s} {token}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_write_api_checks_nbf_iat_ignores_unconfigured_aud_and_takes_any_scheme_case() {
    let app = WriteApp::start().await;
    let p = app.create_product("SEC-IDP", 100, "EUR", 5).await;
    let path = format!("/v1/products/{}/stock-adjustments", p["id"].as_str().unwrap());
    for (what, token, status) in provider_tokens(Uuid::now_v7(), "admin") {
        let a = answer(app.post(&path, &token, &json!({"delta": 1}))).await;
        assert_eq!(a.status, status, "{what}: {}", a.text);
        if status == 401 {
            a.assert_problem(401, "unauthorized");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{what}");
        }
    }
    for authorization in scheme_spellings(&admin_token()) {
        let a = answer(
            app.client
                .post(app.url(&path))
                .header("authorization", &authorization)
                .json(&json!({"delta": 1})),
        )
        .await;
        assert_eq!(a.status, 200, "{authorization}: {}", a.text);
    }
    let a = answer(app.client.post(app.url(&path)).json(&json!({"delta": 1}))).await;
    a.assert_problem(401, "unauthorized");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_api_checks_nbf_iat_ignores_unconfigured_aud_and_takes_any_scheme_case() {
    let app = ReadApp::start().await;
    let customer = Uuid::now_v7();
    let path = format!("/v1/customers/{customer}/summary");
    for (what, token, status) in provider_tokens(customer, "customer") {
        let a = answer(app.get(&path).bearer_auth(&token)).await;
        assert_eq!(a.status, status, "{what}: {}", a.text);
        if status == 401 {
            a.assert_problem(401, "unauthorized");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{what}");
        }
    }
    for authorization in scheme_spellings(&customer_token(customer)) {
        let a = answer(app.get(&path).header("authorization", &authorization)).await;
        assert_eq!(a.status, 200, "{authorization}: {}", a.text);
    }
    let a = answer(app.get(&path)).await;
    a.assert_problem(401, "unauthorized");
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_jwt_audience_and_jwt_issuer_set_both_claims_are_required_and_checked() {
    use std::collections::HashMap;
    use std::time::Duration;

    use ordering_tests::process::ServiceProcess;
    use ordering_tests::test_db::TestDatabase;

    let db = TestDatabase::new().await;
    let env = HashMap::from([
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
        ("JWT_SECRET".to_owned(), SECRET.to_owned()),
        ("JWT_AUDIENCE".to_owned(), "ordering".to_owned()),
        ("JWT_ISSUER".to_owned(), "https://idp.example".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let service = ServiceProcess::spawn("write-api", &[], "WRITE_API_ADDR", &env);
    service.wait_ready_status(200, Duration::from_secs(60)).await;
    let sub = Uuid::now_v7();
    let token = |extra: serde_json::Value| {
        let mut claims = json!({"sub": sub, "role": "admin", "exp": exp(600)});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(Algorithm::HS256, claims)
    };
    let cases = [
        (
            "both right",
            token(json!({"aud": "ordering", "iss": "https://idp.example"})),
            201,
        ),
        (
            "aud in a list",
            token(json!({"aud": ["other", "ordering"], "iss": "https://idp.example"})),
            201,
        ),
        ("no aud", token(json!({"iss": "https://idp.example"})), 401),
        ("no iss", token(json!({"aud": "ordering"})), 401),
        (
            "wrong aud",
            token(json!({"aud": "billing", "iss": "https://idp.example"})),
            401,
        ),
        (
            "wrong iss",
            token(json!({"aud": "ordering", "iss": "https://evil.example"})),
            401,
        ),
        ("neither", token(json!({})), 401),
    ];
    let client = reqwest::Client::new();
    for (n, (what, token, status)) in cases.into_iter().enumerate() {
        let body = json!({"sku": format!("AUD-{n}"), "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
        let a = answer(client.post(service.url("/v1/products")).bearer_auth(&token).json(&body)).await;
        assert_eq!(a.status, status, "{what}: {}", a.text);
        if status == 401 {
            a.assert_problem(401, "unauthorized");
        }
    }
}
