//! `Idempotency-Key` semantics, one request at a time: a repeat replays the first answer and
//! writes nothing, a different body is refused, keys are scoped to the caller and the route,
//! and refusals are remembered like successes.

use diesel_async::RunQueryDsl;
use ordering_tests::write_app::{SECRET, WriteApp, admin_token, answer, customer_token, token_with};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_with_the_same_key_and_body_replays_the_first_answer_and_writes_nothing() {
    let app = WriteApp::start().await;
    let p = app.create_product("IK-1", 100, "EUR", 10).await;
    let tok = customer_token(Uuid::now_v7());
    let body = json!({"lines": [{"product_id": p["id"], "quantity": 2}]});
    let first = answer(
        app.post("/v1/orders", &tok, &body)
            .header("Idempotency-Key", "order-attempt-1"),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let after_first = app.counts().await;
    assert_eq!(after_first.idempotency_keys, 1);

    for _ in 0..3 {
        let again = answer(
            app.post("/v1/orders", &tok, &body)
                .header("Idempotency-Key", "order-attempt-1"),
        )
        .await;
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body);
        for h in ["etag", "location", "x-consistency-token", "content-type"] {
            assert_eq!(again.header(h), first.header(h), "header {h}");
        }
    }
    assert_eq!(app.counts().await, after_first, "no new order, line, outbox row or key");
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 8);

    // Without the key, the same body is a new order.
    let fresh = answer(app.post("/v1/orders", &tok, &body)).await;
    assert_eq!(fresh.status, 201);
    assert_ne!(fresh.body["id"], first.body["id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_body_means_the_same_json_value_whatever_key_order_or_spacing() {
    let app = WriteApp::start().await;
    let tok = admin_token();
    let a = r#"{"sku":"IK-ORD","name":"n","price_cents":5,"currency":"EUR","stock":1}"#;
    let b = "{ \"stock\" : 1 ,\n \"currency\":\"EUR\", \"price_cents\": 5, \"name\": \"n\", \"sku\": \"IK-ORD\" }";
    let send = |raw: &'static str| {
        app.client
            .post(app.url("/v1/products"))
            .bearer_auth(&tok)
            .header("content-type", "application/json")
            .header("Idempotency-Key", "key-order")
            .body(raw)
    };
    let first = answer(send(a)).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let second = answer(send(b)).await;
    assert_eq!((second.status, &second.body), (201, &first.body), "{}", second.text);
    assert_eq!(app.counts().await.products, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_with_a_different_body_is_422_idempotency_key_reused() {
    let app = WriteApp::start().await;
    let p = app.create_product("IK-2", 100, "EUR", 10).await;
    let tok = customer_token(Uuid::now_v7());
    let send = |q: i64| {
        answer(
            app.post(
                "/v1/orders",
                &tok,
                &json!({"lines": [{"product_id": p["id"], "quantity": q}]}),
            )
            .header("Idempotency-Key", "k-2"),
        )
    };
    assert_eq!(send(1).await.status, 201);
    let before = app.counts().await;
    let a = send(2).await;
    a.assert_problem(422, "idempotency_key_reused");
    assert_eq!(app.counts().await, before);
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 9);
    // The original body still replays.
    assert_eq!(send(1).await.status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_scoped_to_the_route() {
    let app = WriteApp::start().await;
    let tok = admin_token();
    let p = answer(
        app.post(
            "/v1/products",
            &tok,
            &json!({"sku": "IK-3", "name": "n", "price_cents": 5, "currency": "EUR", "stock": 5}),
        )
        .header("Idempotency-Key", "shared"),
    )
    .await;
    assert_eq!(p.status, 201);
    let pid = p.body["id"].as_str().unwrap();
    let adj = answer(
        app.post(
            &format!("/v1/products/{pid}/stock-adjustments"),
            &tok,
            &json!({"delta": 1}),
        )
        .header("Idempotency-Key", "shared"),
    )
    .await;
    assert_eq!((adj.status, adj.body["stock"].as_i64()), (200, Some(6)), "{}", adj.text);
    let patch = answer(
        app.send(
            Method::PATCH,
            &format!("/v1/products/{pid}"),
            &tok,
            &json!({"name": "m"}),
        )
        .header("Idempotency-Key", "shared"),
    )
    .await;
    assert_eq!(
        (patch.status, patch.body["version"].as_i64()),
        (200, Some(3)),
        "{}",
        patch.text
    );
    let order = answer(
        app.post(
            "/v1/orders",
            &tok,
            &json!({"customer_id": Uuid::now_v7(), "lines": [{"product_id": pid, "quantity": 1}]}),
        )
        .header("Idempotency-Key", "shared"),
    )
    .await;
    assert_eq!(order.status, 201, "{}", order.text);
    let oid = order.body["id"].as_str().unwrap();
    let pay = answer(
        app.post(
            &format!("/v1/orders/{oid}/pay"),
            &tok,
            &json!({"payment_reference": "r"}),
        )
        .header("Idempotency-Key", "shared"),
    )
    .await;
    assert_eq!(
        (pay.status, pay.body["status"].as_str()),
        (200, Some("paid")),
        "{}",
        pay.text
    );
    let c = app.counts().await;
    assert_eq!((c.idempotency_keys, c.products, c.orders), (5, 1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_is_scoped_to_the_caller() {
    let app = WriteApp::start().await;
    let p = app.create_product("IK-4", 100, "EUR", 10).await;
    let body = json!({"lines": [{"product_id": p["id"], "quantity": 1}]});
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let a = answer(
        app.post("/v1/orders", &customer_token(alice), &body)
            .header("Idempotency-Key", "same-key"),
    )
    .await;
    let b = answer(
        app.post("/v1/orders", &customer_token(bob), &body)
            .header("Idempotency-Key", "same-key"),
    )
    .await;
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.text, b.text);
    assert_ne!(a.body["id"], b.body["id"]);
    assert_eq!(a.body["customer_id"], alice.to_string());
    assert_eq!(b.body["customer_id"], bob.to_string(), "bob did not get alice's answer");
    // Two admins are two callers as well.
    let body = json!({"sku": "IK-ADM", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
    let first = answer(
        app.post(
            "/v1/products",
            &token_with(&Uuid::now_v7().to_string(), "admin", 600, SECRET),
            &body,
        )
        .header("Idempotency-Key", "adm"),
    )
    .await;
    let second = answer(
        app.post(
            "/v1/products",
            &token_with(&Uuid::now_v7().to_string(), "admin", 600, SECRET),
            &body,
        )
        .header("Idempotency-Key", "adm"),
    )
    .await;
    assert_eq!(first.status, 201);
    second.assert_problem(409, "sku_taken");
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_command_with_a_key_is_replayed_as_the_same_refusal() {
    let app = WriteApp::start().await;
    let p = app.create_product("IK-5", 100, "EUR", 1).await;
    let pid = p["id"].as_str().unwrap();
    let tok = customer_token(Uuid::now_v7());
    let body = json!({"lines": [{"product_id": pid, "quantity": 2}]});
    let first = answer(app.post("/v1/orders", &tok, &body).header("Idempotency-Key", "refused")).await;
    first.assert_problem(409, "insufficient_stock");
    // Even once there is stock, the key answers what it answered first.
    let restock = answer(app.post(
        &format!("/v1/products/{pid}/stock-adjustments"),
        &admin_token(),
        &json!({"delta": 5}),
    ))
    .await;
    assert_eq!(restock.status, 200);
    let before = app.counts().await;
    let again = answer(app.post("/v1/orders", &tok, &body).header("Idempotency-Key", "refused")).await;
    again.assert_problem(409, "insufficient_stock");
    assert_eq!(again.body, first.body);
    assert_eq!(app.counts().await, before);
    assert_eq!(app.product_row(pid).await["stock"], 6);
    // A new key runs the command.
    let fresh = answer(
        app.post("/v1/orders", &tok, &body)
            .header("Idempotency-Key", "refused-2"),
    )
    .await;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_not_found_with_a_key_is_replayed_too() {
    let app = WriteApp::start().await;
    let tok = admin_token();
    let id = Uuid::now_v7();
    let send = || {
        answer(
            app.post(&format!("/v1/orders/{id}/cancel"), &tok, &json!({}))
                .header("Idempotency-Key", "nf"),
        )
    };
    let first = send().await;
    first.assert_problem(404, "not_found");
    let second = send().await;
    assert_eq!((second.status, &second.body), (404, &first.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_255_visible_ascii_characters_is_accepted() {
    let app = WriteApp::start().await;
    let key: String = (0..255).map(|i| (b'!' + (i % 94) as u8) as char).collect();
    let body = json!({"sku": "IK-LONG", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
    let first = answer(
        app.post("/v1/products", &admin_token(), &body)
            .header("Idempotency-Key", key.as_str()),
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text);
    let stored = app.query_json("SELECT key FROM idempotency_keys").await;
    assert_eq!(stored, [json!({"key": key})]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_younger_than_24_hours_survive_expiry_and_older_ones_are_dropped() {
    let app = WriteApp::start().await;
    let tok = admin_token();
    let create = |sku: &str, key: &str| {
        app.post(
            "/v1/products",
            &tok,
            &json!({"sku": sku, "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        )
        .header("Idempotency-Key", key.to_owned())
    };
    assert_eq!(answer(create("YOUNG", "young")).await.status, 201);
    assert_eq!(answer(create("OLD", "old")).await.status, 201);
    let mut conn = app.db.conn().await;
    diesel::sql_query(
        "UPDATE idempotency_keys SET created_at = now() - CASE key WHEN 'young' THEN interval '23 hours' \
         ELSE interval '25 hours' END",
    )
    .execute(&mut conn)
    .await
    .expect("age keys");
    let ttl = std::time::Duration::from_secs(24 * 3600);
    let deleted = write_api::store::idempotency::expire(&mut conn, ttl)
        .await
        .expect("expire");
    assert_eq!(deleted, 1);
    // The young key still replays; the expired one runs the command again (and finds the sku taken).
    let young = answer(create("YOUNG", "young")).await;
    assert_eq!(young.status, 201, "{}", young.text);
    answer(create("OLD", "old")).await.assert_problem(409, "sku_taken");
    assert_eq!(app.counts().await.products, 2);
}
