//! Catalog commands of the write-api against a real PostgreSQL: create, update and adjust
//! stock, with their answers (state, version, ETag, Location, consistency token) and every
//! refusal the contract names for them.

use ordering_schema::consistency::VersionMark;
use ordering_schema::events::AggregateType;
use ordering_tests::write_app::{WriteApp, admin_token, answer, customer_token};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

fn product_body(sku: &str) -> serde_json::Value {
    json!({"sku": sku, "name": "Kettle", "description": "1.7 l, steel", "price_cents": 2599, "currency": "EUR", "stock": 10})
}

fn mark(aggregate: AggregateType, id: &str, version: i64) -> VersionMark {
    VersionMark {
        aggregate,
        id: Uuid::parse_str(id).expect("uuid"),
        version,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_product_answers_201_with_state_location_etag_and_token() {
    let app = WriteApp::start().await;
    let a = answer(app.post("/v1/products", &admin_token(), &product_body("KET-1"))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert!(a.content_type().starts_with("application/json"));
    let p = &a.body;
    let id = p["id"].as_str().expect("id");
    let uuid = Uuid::parse_str(id).expect("id is a uuid");
    assert_eq!(uuid.get_version_num(), 7, "ids are UUID v7");
    assert_eq!(p["sku"], "KET-1");
    assert_eq!(p["name"], "Kettle");
    assert_eq!(p["description"], "1.7 l, steel");
    assert_eq!(p["price_cents"], 2599);
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["stock"], 10);
    assert_eq!(p["version"], 1);
    assert!(p["created_at"].is_string());
    assert_eq!(p["created_at"], p["updated_at"]);
    let mut keys: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "currency",
            "description",
            "id",
            "name",
            "price_cents",
            "sku",
            "stock",
            "updated_at",
            "version"
        ]
    );
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(a.header("location"), Some(format!("/v1/products/{id}").as_str()));
    assert_eq!(a.consistency_marks(), [mark(AggregateType::Product, id, 1)]);
    // Stored as answered.
    let row = app.product_row(id).await;
    assert_eq!(
        (row["sku"].as_str(), row["stock"].as_i64(), row["version"].as_i64()),
        (Some("KET-1"), Some(10), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_product_without_description_stores_an_empty_one() {
    let app = WriteApp::start().await;
    let body = json!({"sku": "NO-DESC", "name": "n", "price_cents": 0, "currency": "USD", "stock": 0});
    let a = answer(app.post("/v1/products", &admin_token(), &body)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["description"], "");
    assert_eq!(a.body["price_cents"], 0);
    assert_eq!(a.body["stock"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_product_accepts_the_limits_inclusive() {
    let app = WriteApp::start().await;
    let body = json!({
        "sku": "a".repeat(64), "name": "€".repeat(200), "description": "ü".repeat(2000),
        "price_cents": 1_000_000_000_000i64, "currency": "JPY", "stock": 1_000_000_000,
    });
    let a = answer(app.post("/v1/products", &admin_token(), &body)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["price_cents"], 1_000_000_000_000i64);
    assert_eq!(a.body["name"].as_str().unwrap().chars().count(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_product_with_a_taken_sku_is_409_and_writes_nothing() {
    let app = WriteApp::start().await;
    app.create_product("DUP-1", 100, "EUR", 1).await;
    let before = app.counts().await;
    let a = answer(app.post("/v1/products", &admin_token(), &product_body("DUP-1"))).await;
    a.assert_problem(409, "sku_taken");
    assert_eq!(app.counts().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_product_with_if_match_is_412_because_nothing_exists_yet() {
    let app = WriteApp::start().await;
    for tag in ["\"1\"", "*"] {
        let a = answer(
            app.post("/v1/products", &admin_token(), &product_body("IFM"))
                .header("If-Match", tag),
        )
        .await;
        a.assert_problem(412, "version_conflict");
    }
    assert_eq!(app.counts().await.products, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_product_changes_given_fields_and_bumps_version() {
    let app = WriteApp::start().await;
    let p = app.create_product("UPD-1", 100, "EUR", 3).await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/v1/products/{id}");
    let a = answer(app.send(
        Method::PATCH,
        &path,
        &admin_token(),
        &json!({"name": "New name", "price_cents": 150}),
    ))
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["name"], "New name");
    assert_eq!(a.body["price_cents"], 150);
    assert_eq!(a.body["description"], p["description"], "untouched field kept");
    assert_eq!(a.body["sku"], "UPD-1");
    assert_eq!(a.body["stock"], 3);
    assert_eq!(a.body["version"], 2);
    assert_eq!(a.body["created_at"], p["created_at"]);
    assert_ne!(a.body["updated_at"], p["updated_at"]);
    assert_eq!(a.header("etag"), Some("\"2\""));
    assert_eq!(a.header("location"), None);
    assert_eq!(a.consistency_marks(), [mark(AggregateType::Product, id, 2)]);

    let b = answer(app.send(Method::PATCH, &path, &admin_token(), &json!({"description": ""}))).await;
    assert_eq!(b.status, 200, "{}", b.text);
    assert_eq!(
        (b.body["description"].as_str(), b.body["version"].as_i64()),
        (Some(""), Some(3))
    );
    let row = app.product_row(id).await;
    assert_eq!(
        (
            row["name"].as_str(),
            row["price_cents"].as_i64(),
            row["version"].as_i64()
        ),
        (Some("New name"), Some(150), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_product_of_unknown_or_non_uuid_id_is_404() {
    let app = WriteApp::start().await;
    for id in [Uuid::now_v7().to_string(), "not-a-uuid".to_owned(), "123".to_owned()] {
        let a = answer(app.send(
            Method::PATCH,
            &format!("/v1/products/{id}"),
            &admin_token(),
            &json!({"name": "x"}),
        ))
        .await;
        a.assert_problem(404, "not_found");
    }
    assert_eq!(app.counts().await.outbox, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_product_with_no_field_is_422() {
    let app = WriteApp::start().await;
    let p = app.create_product("EMPTY-PATCH", 100, "EUR", 3).await;
    let before = app.counts().await;
    let a = answer(app.send(
        Method::PATCH,
        &format!("/v1/products/{}", p["id"].as_str().unwrap()),
        &admin_token(),
        &json!({}),
    ))
    .await;
    a.assert_problem(422, "validation_failed");
    assert!(a.body["errors"].as_array().is_some_and(|e| !e.is_empty()), "{}", a.text);
    assert_eq!(app.counts().await, before);
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["version"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_product_validation_names_every_bad_field() {
    let app = WriteApp::start().await;
    let p = app.create_product("BAD-PATCH", 100, "EUR", 3).await;
    let a = answer(app.send(
        Method::PATCH,
        &format!("/v1/products/{}", p["id"].as_str().unwrap()),
        &admin_token(),
        &json!({"name": "", "price_cents": -1}),
    ))
    .await;
    a.assert_problem(422, "validation_failed");
    let mut fields: Vec<_> = a.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    fields.sort();
    assert_eq!(fields, ["name", "price_cents"]);
    for e in a.body["errors"].as_array().unwrap() {
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_accepts_strong_weak_and_star_and_refuses_a_stale_version_with_412() {
    let app = WriteApp::start().await;
    let p = app.create_product("IFM-1", 100, "EUR", 3).await;
    let path = format!("/v1/products/{}", p["id"].as_str().unwrap());
    let patch = |name: &str, tag: &str| {
        app.send(Method::PATCH, &path, &admin_token(), &json!({"name": name}))
            .header("If-Match", tag.to_owned())
    };

    let a = answer(patch("v2", "\"1\"")).await;
    assert_eq!((a.status, a.body["version"].as_i64()), (200, Some(2)), "{}", a.text);
    let a = answer(patch("v3", "W/\"2\"")).await;
    assert_eq!((a.status, a.body["version"].as_i64()), (200, Some(3)), "{}", a.text);
    let a = answer(patch("v4", "*")).await;
    assert_eq!((a.status, a.body["version"].as_i64()), (200, Some(4)), "{}", a.text);

    let before = app.counts().await;
    for stale in ["\"1\"", "W/\"3\"", "\"5\""] {
        let a = answer(patch("never", stale)).await;
        a.assert_problem(412, "version_conflict");
    }
    assert_eq!(app.counts().await, before);
    let row = app.product_row(p["id"].as_str().unwrap()).await;
    assert_eq!((row["name"].as_str(), row["version"].as_i64()), (Some("v4"), Some(4)));
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_on_an_unknown_product_is_404_not_412() {
    let app = WriteApp::start().await;
    let a = answer(
        app.send(
            Method::PATCH,
            &format!("/v1/products/{}", Uuid::now_v7()),
            &admin_token(),
            &json!({"name": "x"}),
        )
        .header("If-Match", "*"),
    )
    .await;
    a.assert_problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_adjustment_adds_and_removes_stock() {
    let app = WriteApp::start().await;
    let p = app.create_product("ADJ-1", 100, "EUR", 5).await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/v1/products/{id}/stock-adjustments");
    let a = answer(app.post(&path, &admin_token(), &json!({"delta": 7, "reason": "delivery"}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.body["stock"].as_i64(), a.body["version"].as_i64()),
        (Some(12), Some(2))
    );
    assert_eq!(a.body["id"], id);
    assert_eq!(a.header("etag"), Some("\"2\""));
    assert_eq!(a.consistency_marks(), [mark(AggregateType::Product, id, 2)]);

    let a = answer(app.post(&path, &admin_token(), &json!({"delta": -12}))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.body["stock"].as_i64(), a.body["version"].as_i64()),
        (Some(0), Some(3))
    );
    assert_eq!(a.header("etag"), Some("\"3\""));
    assert_eq!(app.product_row(id).await["stock"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_adjustment_below_zero_is_409_insufficient_stock_and_changes_nothing() {
    let app = WriteApp::start().await;
    let p = app.create_product("ADJ-2", 100, "EUR", 5).await;
    let id = p["id"].as_str().unwrap();
    let before = app.counts().await;
    let a = answer(app.post(
        &format!("/v1/products/{id}/stock-adjustments"),
        &admin_token(),
        &json!({"delta": -6}),
    ))
    .await;
    a.assert_problem(409, "insufficient_stock");
    assert_eq!(app.counts().await, before);
    let row = app.product_row(id).await;
    assert_eq!((row["stock"].as_i64(), row["version"].as_i64()), (Some(5), Some(1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_adjustment_above_the_stock_limit_is_422() {
    let app = WriteApp::start().await;
    let p = app.create_product("ADJ-3", 100, "EUR", 1_000_000_000).await;
    let id = p["id"].as_str().unwrap();
    let a = answer(app.post(
        &format!("/v1/products/{id}/stock-adjustments"),
        &admin_token(),
        &json!({"delta": 1}),
    ))
    .await;
    a.assert_problem(422, "validation_failed");
    assert_eq!(app.product_row(id).await["stock"], 1_000_000_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_adjustment_of_unknown_or_non_uuid_product_is_404() {
    let app = WriteApp::start().await;
    for id in [Uuid::now_v7().to_string(), "nope".to_owned()] {
        let a = answer(app.post(
            &format!("/v1/products/{id}/stock-adjustments"),
            &admin_token(),
            &json!({"delta": 1}),
        ))
        .await;
        a.assert_problem(404, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_adjustment_honours_if_match() {
    let app = WriteApp::start().await;
    let p = app.create_product("ADJ-4", 100, "EUR", 5).await;
    let path = format!("/v1/products/{}/stock-adjustments", p["id"].as_str().unwrap());
    let a = answer(
        app.post(&path, &admin_token(), &json!({"delta": 1}))
            .header("If-Match", "\"2\""),
    )
    .await;
    a.assert_problem(412, "version_conflict");
    let a = answer(
        app.post(&path, &admin_token(), &json!({"delta": 1}))
            .header("If-Match", "\"1\""),
    )
    .await;
    assert_eq!((a.status, a.body["stock"].as_i64()), (200, Some(6)), "{}", a.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn location_points_where_the_resource_can_be_read() {
    // The write-api serves no reads: with READ_API_URL set, `Location` names the read-api.
    let app = WriteApp::start_reading_at("https://reads.example:8443/").await;
    let created = answer(app.post("/v1/products", &admin_token(), &product_body("LOC-1"))).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let pid = created.body["id"].as_str().expect("id");
    assert_eq!(
        created.header("location"),
        Some(format!("https://reads.example:8443/v1/products/{pid}").as_str())
    );
    let placed = app
        .place_order(&customer_token(Uuid::now_v7()), None, &[(pid, 1)])
        .await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let oid = placed.body["id"].as_str().expect("id");
    assert_eq!(
        placed.header("location"),
        Some(format!("https://reads.example:8443/v1/orders/{oid}").as_str())
    );
}
