//! Authentication and roles: every bad token is 401 `unauthorized` and writes nothing;
//! customers may not write the catalog, ship, or act for another customer.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use ordering_tests::write_app::{SECRET, WriteApp, admin_token, answer, customer_token, token_with};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

/// Base64url without padding, for hand-made tokens.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn exp(offset: i64) -> i64 {
    chrono::Utc::now().timestamp() + offset
}

fn signed(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
    encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encode")
}

/// Every way a bearer token can be wrong, with a name for the failure message.
fn bad_authorizations() -> Vec<(&'static str, Option<String>)> {
    let sub = Uuid::now_v7().to_string();
    let admin = |e: i64| json!({"sub": sub, "role": "admin", "exp": exp(e)});
    let valid_customer = customer_token(Uuid::now_v7());
    let parts: Vec<&str> = valid_customer.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(admin(3600).to_string().as_bytes()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(admin(3600).to_string().as_bytes())
    );
    vec![
        ("missing header", None),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("basic scheme", Some("Basic YWRtaW46YWRtaW4=".to_owned())),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("token without scheme", Some(admin_token())),
        (
            "expired beyond the skew",
            Some(format!("Bearer {}", token_with(&sub, "admin", -60, SECRET))),
        ),
        (
            "expired long ago",
            Some(format!("Bearer {}", token_with(&sub, "admin", -86_400, SECRET))),
        ),
        (
            "forged signature",
            Some(format!(
                "Bearer {}",
                token_with(&sub, "admin", 3600, "another-secret-0123456789abcdef")
            )),
        ),
        ("tampered payload", Some(format!("Bearer {tampered}"))),
        (
            "HS384",
            Some(format!("Bearer {}", signed(Algorithm::HS384, admin(3600), SECRET))),
        ),
        (
            "HS512",
            Some(format!("Bearer {}", signed(Algorithm::HS512, admin(3600), SECRET))),
        ),
        ("alg none", Some(format!("Bearer {none}"))),
        (
            "unknown role",
            Some(format!("Bearer {}", token_with(&sub, "root", 3600, SECRET))),
        ),
        (
            "role with other case",
            Some(format!("Bearer {}", token_with(&sub, "Admin", 3600, SECRET))),
        ),
        (
            "missing role",
            Some(format!(
                "Bearer {}",
                signed(Algorithm::HS256, json!({"sub": sub, "exp": exp(3600)}), SECRET)
            )),
        ),
        (
            "missing exp",
            Some(format!(
                "Bearer {}",
                signed(Algorithm::HS256, json!({"sub": sub, "role": "admin"}), SECRET)
            )),
        ),
        (
            "missing sub",
            Some(format!(
                "Bearer {}",
                signed(Algorithm::HS256, json!({"role": "admin", "exp": exp(3600)}), SECRET)
            )),
        ),
        (
            "non-uuid sub",
            Some(format!("Bearer {}", token_with("alice", "admin", 3600, SECRET))),
        ),
        (
            "empty sub",
            Some(format!("Bearer {}", token_with("", "customer", 3600, SECRET))),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_401_unauthorized_and_writes_nothing() {
    let app = WriteApp::start().await;
    let p = app.create_product("AUTH-1", 100, "EUR", 5).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let before = app.counts().await;
    let commands: Vec<(Method, String, serde_json::Value)> = vec![
        (
            Method::POST,
            "/v1/products".into(),
            json!({"sku": "AUTH-2", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        ),
        (Method::PATCH, format!("/v1/products/{pid}"), json!({"name": "x"})),
        (
            Method::POST,
            format!("/v1/products/{pid}/stock-adjustments"),
            json!({"delta": 1}),
        ),
        (
            Method::POST,
            "/v1/orders".into(),
            json!({"customer_id": Uuid::now_v7(), "lines": [{"product_id": pid, "quantity": 1}]}),
        ),
        (
            Method::POST,
            format!("/v1/orders/{}/pay", Uuid::now_v7()),
            json!({"payment_reference": "r"}),
        ),
    ];
    for (name, authorization) in bad_authorizations() {
        for (method, path, body) in &commands {
            let mut req = app.client.request(method.clone(), app.url(path)).json(body);
            if let Some(v) = &authorization {
                req = req.header("authorization", v.as_str());
            }
            let a = answer(req).await;
            assert_eq!(
                (a.status, a.code()),
                (401, "unauthorized"),
                "{name} on {method} {path}: {}",
                a.text
            );
            assert!(a.content_type().starts_with("application/problem+json"), "{name}");
        }
    }
    assert_eq!(app.counts().await, before);
    assert_eq!(app.product_row(&pid).await["version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expired_within_the_30_second_skew_is_still_accepted() {
    let app = WriteApp::start().await;
    let token = token_with(&Uuid::now_v7().to_string(), "admin", -10, SECRET);
    let body = json!({"sku": "SKEW", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
    let a = answer(app.post("/v1/products", &token, &body)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    // A lower-case scheme is the same scheme.
    let a = answer(
        app.client
            .post(app.url("/v1/products"))
            .header("authorization", format!("bearer {}", admin_token()))
            .json(&json!({"sku": "SKEW-2", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn customers_may_not_write_the_catalog_or_ship() {
    let app = WriteApp::start().await;
    let p = app.create_product("ROLE-1", 100, "EUR", 5).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let customer = Uuid::now_v7();
    let tok = customer_token(customer);
    let order = app.place_order(&tok, None, &[(&pid, 1)]).await;
    assert_eq!(order.status, 201);
    let oid = order.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer(app.post(
            &format!("/v1/orders/{oid}/pay"),
            &tok,
            &json!({"payment_reference": "r"})
        ))
        .await
        .status,
        200
    );
    let before = app.counts().await;

    let refused = [
        answer(app.post(
            "/v1/products",
            &tok,
            &json!({"sku": "ROLE-2", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        ))
        .await,
        answer(app.send(
            Method::PATCH,
            &format!("/v1/products/{pid}"),
            &tok,
            &json!({"price_cents": 1}),
        ))
        .await,
        answer(app.post(
            &format!("/v1/products/{pid}/stock-adjustments"),
            &tok,
            &json!({"delta": 100}),
        ))
        .await,
        answer(app.post(&format!("/v1/orders/{oid}/ship"), &tok, &json!({}))).await,
    ];
    for a in &refused {
        a.assert_problem(403, "forbidden");
    }
    assert_eq!(app.counts().await, before);
    let row = app.product_row(&pid).await;
    assert_eq!(
        (row["price_cents"].as_i64(), row["stock"].as_i64()),
        (Some(100), Some(4))
    );
    assert_eq!(
        app.query_json(&format!("SELECT status FROM orders WHERE id = '{oid}'"))
            .await,
        [json!({"status": "paid"})]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_placing_an_order_for_another_customer_is_403() {
    let app = WriteApp::start().await;
    let p = app.create_product("ROLE-3", 100, "EUR", 5).await;
    let before = app.counts().await;
    let a = app
        .place_order(
            &customer_token(Uuid::now_v7()),
            Some(Uuid::now_v7()),
            &[(p["id"].as_str().unwrap(), 1)],
        )
        .await;
    a.assert_problem(403, "forbidden");
    assert_eq!(app.counts().await, before);
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_acting_on_another_customers_order_gets_404() {
    let app = WriteApp::start().await;
    let p = app.create_product("ROLE-4", 100, "EUR", 5).await;
    let owner = Uuid::now_v7();
    let order = app
        .place_order(&customer_token(owner), None, &[(p["id"].as_str().unwrap(), 2)])
        .await;
    let oid = order.body["id"].as_str().unwrap().to_owned();
    let stranger = customer_token(Uuid::now_v7());
    let before = app.counts().await;
    let pay = answer(app.post(
        &format!("/v1/orders/{oid}/pay"),
        &stranger,
        &json!({"payment_reference": "r"}),
    ))
    .await;
    pay.assert_problem(404, "not_found");
    let cancel = answer(app.post(&format!("/v1/orders/{oid}/cancel"), &stranger, &json!({}))).await;
    cancel.assert_problem(404, "not_found");
    // Indistinguishable from an order that does not exist.
    let missing = answer(app.post(&format!("/v1/orders/{}/cancel", Uuid::now_v7()), &stranger, &json!({}))).await;
    assert_eq!(
        (cancel.status, &cancel.body["code"], &cancel.body["detail"]),
        (missing.status, &missing.body["code"], &missing.body["detail"])
    );
    assert_eq!(app.counts().await, before);
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 3);
    // The owner and an admin may.
    let paid = answer(app.post(
        &format!("/v1/orders/{oid}/pay"),
        &customer_token(owner),
        &json!({"payment_reference": "r"}),
    ))
    .await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    let cancelled = answer(app.post(&format!("/v1/orders/{oid}/cancel"), &admin_token(), &json!({}))).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
}
