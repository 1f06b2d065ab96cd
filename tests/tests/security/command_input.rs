//! What the write-api's bad-input sweep (write_api_bad_input.rs) leaves out:
//!
//! - odd unicode: limits count characters, not bytes (200 emoji are a valid name, 201 are
//!   not), and right-to-left overrides, combining marks, zero-width joiners and a BOM are
//!   stored and answered byte for byte;
//! - headers on every command route: a non-UTF-8 or RS256-headed `Authorization` is 401, a
//!   garbage `X-Consistency-Token` (a response header of the write-api) is ignored, never a
//!   5xx; and none of it writes anything.

use ordering_tests::write_app::{RowCounts, WriteApp, admin_token, answer, customer_token};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use uuid::Uuid;

const EMOJI: &str = "\u{1F600}";
const ODD: [&str; 6] = [
    "\u{202E}txet desrever",      // right-to-left override
    "e\u{0301}\u{0301}\u{0301}",  // stacked combining marks
    "\u{1F469}\u{200D}\u{1F467}", // zero-width joiner sequence
    "\u{FEFF}bom",                // byte order mark
    "\u{05E9}\u{05DC}\u{05D5}\u{05DD} mixed",
    "tab\tand\nnewline",
];

#[tokio::test(flavor = "multi_thread")]
async fn character_limits_count_characters_and_odd_unicode_round_trips() {
    let app = WriteApp::start().await;
    let admin = admin_token();
    let create = |sku: &str, name: String, description: String| json!({"sku": sku, "name": name, "description": description, "price_cents": 1, "currency": "EUR", "stock": 5});
    // At the limit in characters (800 bytes of emoji): accepted, and stored as sent.
    let name = EMOJI.repeat(200);
    let description = format!("{}{}", EMOJI.repeat(1999), "\u{0301}");
    let a = answer(app.post(
        "/v1/products",
        &admin,
        &create("UNI-1", name.clone(), description.clone()),
    ))
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["name"], json!(name));
    assert_eq!(a.body["description"], json!(description));
    let pid = a.body["id"].as_str().unwrap().to_owned();
    // One character over: 422 naming the field.
    for (field, body) in [
        ("name", create("UNI-2", EMOJI.repeat(201), String::new())),
        ("description", create("UNI-3", "n".into(), EMOJI.repeat(2001))),
        ("sku", create("\u{202E}UNI", "n".into(), String::new())),
        ("sku", create("UNI\u{200D}4", "n".into(), String::new())),
        ("currency", {
            let mut b = create("UNI-5", "n".into(), String::new());
            b["currency"] = json!("E\u{0301}UR");
            b
        }),
    ] {
        let a = answer(app.post("/v1/products", &admin, &body)).await;
        a.assert_problem(422, "validation_failed");
        assert_eq!(a.body["errors"][0]["field"], field, "{}", a.text);
    }
    // Odd unicode in every free-text field round-trips exactly.
    for (i, s) in ODD.iter().enumerate() {
        let a = answer(app.send(
            Method::PATCH,
            &format!("/v1/products/{pid}"),
            &admin,
            &json!({"name": s, "description": s}),
        ))
        .await;
        assert_eq!(a.status, 200, "{i}: {}", a.text);
        assert_eq!(
            (a.body["name"].as_str(), a.body["description"].as_str()),
            (Some(*s), Some(*s))
        );
        let row = app.product_row(&pid).await;
        assert_eq!(row["name"].as_str(), Some(*s), "stored name of case {i}");
    }
    // Payment reference and reason at their limits, in emoji.
    let customer = Uuid::now_v7();
    let token = customer_token(customer);
    let placed = app.place_order(&token, None, &[(&pid, 1)]).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let oid = placed.body["id"].as_str().unwrap().to_owned();
    let a = answer(app.post(
        &format!("/v1/orders/{oid}/pay"),
        &token,
        &json!({"payment_reference": EMOJI.repeat(201)}),
    ))
    .await;
    a.assert_problem(422, "validation_failed");
    let a = answer(app.post(
        &format!("/v1/orders/{oid}/pay"),
        &token,
        &json!({"payment_reference": EMOJI.repeat(200)}),
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = answer(app.post(
        &format!("/v1/orders/{oid}/cancel"),
        &token,
        &json!({"reason": EMOJI.repeat(501)}),
    ))
    .await;
    a.assert_problem(422, "validation_failed");
    let a = answer(app.post(
        &format!("/v1/orders/{oid}/cancel"),
        &token,
        &json!({"reason": format!("{}{}", ODD[0], EMOJI.repeat(480))}),
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_authorization_and_consistency_headers_on_every_command() {
    let app = WriteApp::start().await;
    let p = app.create_product("HDR", 100, "EUR", 10).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let customer = Uuid::now_v7();
    let placed = app.place_order(&customer_token(customer), None, &[(&pid, 1)]).await;
    let oid = placed.body["id"].as_str().unwrap().to_owned();
    let routes: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/v1/products".into(),
            json!({"sku": "HDR-2", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
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
            json!({"lines": [{"product_id": pid, "quantity": 1}]}),
        ),
        (
            Method::POST,
            format!("/v1/orders/{oid}/pay"),
            json!({"payment_reference": "r"}),
        ),
        (Method::POST, format!("/v1/orders/{oid}/ship"), json!({})),
        (Method::POST, format!("/v1/orders/{oid}/cancel"), json!({})),
    ];
    let before: RowCounts = app.counts().await;
    let rs256 = {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "Bearer {}.{}.{}",
            b64(r#"{"alg":"RS256"}"#),
            b64(&json!({"sub": Uuid::now_v7(), "role": "admin", "exp": 9_999_999_999i64}).to_string()),
            b64("sig")
        )
    };
    let bad_auth = [
        HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap(),
        HeaderValue::from_str(&rs256).unwrap(),
        HeaderValue::from_str(&format!("Bearer {}", "a".repeat(8000))).unwrap(),
        HeaderValue::from_static("Bearer a.b"),
        HeaderValue::from_static("Bearer ...."),
    ];
    for (method, path, body) in &routes {
        for auth in &bad_auth {
            let a = answer(
                app.client
                    .request(method.clone(), app.url(path))
                    .header("authorization", auth.clone())
                    .json(body),
            )
            .await;
            a.assert_problem(401, "unauthorized");
        }
    }
    assert_eq!(app.counts().await, before, "a refused command wrote something");
    // X-Consistency-Token is something the write-api hands out, not one it reads: garbage in
    // it is ignored (never a 5xx, never another outcome): each command, made invalid by an
    // unknown field, gets its 422 whatever the header says.
    for (method, path, body) in &routes {
        let mut body = body.clone();
        body["x_unknown"] = json!(1);
        for token in ["garbage", "c1.!!!!", "", "c1.AAAA"] {
            let a = answer(
                app.send(method.clone(), path, &admin_token(), &body)
                    .header("x-consistency-token", token),
            )
            .await;
            a.assert_problem(422, "validation_failed");
        }
    }
    assert_eq!(app.counts().await, before, "a refused command wrote something");
}
