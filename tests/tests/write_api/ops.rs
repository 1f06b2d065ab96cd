//! Operational endpoints of the write-api: health, readiness over PostgreSQL, Prometheus
//! metrics, the OpenAPI document, and problem bodies for unknown routes and wrong methods.

use ordering_tests::api_docs::assert_docs_served;
use ordering_tests::metrics_text::{not_at_zero, sample, undescribed};
use ordering_tests::write_app::{WriteApp, admin_token, answer, customer_token};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn health_live_and_ready_are_200_with_postgres_ok() {
    let app = WriteApp::start().await;
    let live = answer(app.client.get(app.url("/health/live"))).await;
    assert_eq!(live.status, 200, "{}", live.text);
    let ready = answer(app.client.get(app.url("/health/ready"))).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert!(ready.content_type().starts_with("application/json"));
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["dependencies"]["postgres"]["ok"], true, "{}", ready.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_and_time_them_by_route_and_status() {
    let app = WriteApp::start().await;
    app.create_product("MET-1", 100, "EUR", 1).await;
    let dup = answer(app.post(
        "/v1/products",
        &admin_token(),
        &json!({"sku": "MET-1", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
    ))
    .await;
    assert_eq!(dup.status, 409);
    let m = answer(app.client.get(app.url("/metrics"))).await;
    assert_eq!(m.status, 200);
    assert!(m.content_type().starts_with("text/plain"), "{}", m.content_type());
    let line_with = |name: &str, status: &str| {
        m.text
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("route=\"/v1/products\"")
                    && l.contains(&format!("status=\"{status}\""))
                    && l.contains("method=\"POST\"")
            })
            .map(str::to_owned)
    };
    let created = line_with("http_requests_total", "201").unwrap_or_else(|| panic!("no 201 counter in\n{}", m.text));
    assert!(created.ends_with(" 1"), "{created}");
    let conflict = line_with("http_requests_total", "409").unwrap_or_else(|| panic!("no 409 counter in\n{}", m.text));
    assert!(conflict.ends_with(" 1"), "{conflict}");
    // Durations by status class: the 201 and the 409 in two series, not one per code.
    let by_class = |suffix: &str, class: &str| {
        sample(
            &m.text,
            &format!("http_request_duration_seconds{suffix}"),
            &[("route", "/v1/products"), ("method", "POST"), ("status_class", class)],
        )
    };
    assert_eq!(by_class("_count", "2xx"), Some(1.0), "{}", m.text);
    assert_eq!(by_class("_count", "4xx"), Some(1.0), "{}", m.text);
    assert!(
        by_class("_bucket", "2xx").is_some(),
        "latency is a histogram with buckets"
    );
    assert!(
        line_with("http_request_duration_seconds_count", "201").is_none(),
        "durations are not labelled by status code"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_described_and_business_counters_count_committed_commands_from_zero() {
    let app = WriteApp::start().await;
    let m = answer(app.client.get(app.url("/metrics"))).await;
    assert_eq!(undescribed(&m.text), Vec::<String>::new(), "{}", m.text);
    assert_eq!(
        not_at_zero(&m.text, write_api::catalog::WRITE),
        Vec::<String>::new(),
        "{}",
        m.text
    );
    for name in [
        "orders_placed_total",
        "orders_paid_total",
        "orders_shipped_total",
        "orders_cancelled_total",
        "stock_refusals_total",
    ] {
        assert_eq!(sample(&m.text, name, &[]), Some(0.0), "{name} in {}", m.text);
    }
    assert_eq!(
        sample(&m.text, "build_info", &[("service", "write-api")]),
        Some(1.0),
        "{}",
        m.text
    );
    assert!(sample(&m.text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    assert_eq!(sample(&m.text, "db_pool_connections_max", &[]), Some(8.0), "{}", m.text);

    let product = app.create_product("BIZ-1", 100, "EUR", 1).await;
    let id = product["id"].as_str().expect("id").to_owned();
    let customer = Uuid::now_v7();
    let placed = app.place_order(&customer_token(customer), None, &[(&id, 1)]).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let refused = app.place_order(&customer_token(customer), None, &[(&id, 1)]).await;
    refused.assert_problem(409, "insufficient_stock");
    // A repeat answered from its Idempotency-Key is not a second order.
    let order = placed.body["id"].as_str().expect("order id").to_owned();
    for _ in 0..2 {
        let paid = answer(
            app.post(
                &format!("/v1/orders/{order}/pay"),
                &customer_token(customer),
                &json!({"payment_reference": "P-1"}),
            )
            .header("Idempotency-Key", "pay-once"),
        )
        .await;
        assert_eq!(paid.status, 200, "{}", paid.text);
    }
    let m = answer(app.client.get(app.url("/metrics"))).await;
    for (name, want) in [
        ("orders_placed_total", 1.0),
        ("orders_paid_total", 1.0),
        ("orders_shipped_total", 0.0),
        ("stock_refusals_total", 1.0),
    ] {
        assert_eq!(sample(&m.text, name, &[]), Some(want), "{name} in {}", m.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_lists_every_command_path_with_its_method() {
    let app = WriteApp::start().await;
    let doc = answer(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(doc.status, 200);
    assert!(
        doc.body["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        doc.text
    );
    let paths = &doc.body["paths"];
    for (path, method) in [
        ("/v1/products", "post"),
        ("/v1/products/{id}", "patch"),
        ("/v1/products/{id}/stock-adjustments", "post"),
        ("/v1/orders", "post"),
        ("/v1/orders/{id}/pay", "post"),
        ("/v1/orders/{id}/ship", "post"),
        ("/v1/orders/{id}/cancel", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing from {paths}");
    }
    assert_eq!(paths.as_object().unwrap().len(), 7, "{paths}");
    let schemas = &doc.body["components"]["schemas"];
    for s in ["ProductData", "OrderData", "Problem"] {
        assert!(schemas[s].is_object(), "schema {s} missing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docs_page_serves_swagger_ui_with_bearer_auth_and_example_bodies() {
    let app = WriteApp::start().await;
    let doc = assert_docs_served(&app.client, &app.url("")).await;
    // Every command needs a token, so "Authorize" must apply to all of them.
    assert_eq!(doc["security"], json!([{"bearer": []}]), "{doc}");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // "Try it out" starts from a body the API accepts.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let example = &op["requestBody"]["content"]["application/json"]["example"];
            assert!(example.is_object(), "{method} {path} has no example body");
        }
    }
    let example = &doc["paths"]["/v1/products"]["post"]["requestBody"]["content"]["application/json"]["example"];
    let created = answer(app.post("/v1/products", &admin_token(), example)).await;
    assert_eq!(
        created.status, 201,
        "the documented example is refused: {}",
        created.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_route_is_a_404_problem() {
    let app = WriteApp::start().await;
    for path in ["/nope", "/v1/customers", "/v1/products/x/y/z"] {
        let a = answer(app.client.get(app.url(path))).await;
        a.assert_problem(404, "not_found");
    }
    let a = answer(app.post("/v1/invoices", &admin_token(), &json!({}))).await;
    a.assert_problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let app = WriteApp::start().await;
    for (method, path) in [
        (Method::GET, "/v1/products".to_owned()),
        (Method::DELETE, format!("/v1/products/{}", uuid::Uuid::now_v7())),
        (Method::PUT, format!("/v1/orders/{}/pay", uuid::Uuid::now_v7())),
        (Method::POST, "/health/live".to_owned()),
    ] {
        let a = answer(
            app.client
                .request(method.clone(), app.url(&path))
                .bearer_auth(admin_token()),
        )
        .await;
        a.assert_problem(405, "method_not_allowed");
        assert!(a.header("allow").is_some(), "{method} {path}: no Allow header");
    }
    assert_eq!(app.counts().await.outbox, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_a_request_id() {
    let app = WriteApp::start().await;
    let a = answer(app.client.get(app.url("/health/live")).header("x-request-id", "req-42")).await;
    assert_eq!(a.header("x-request-id"), Some("req-42"));
    let b = answer(app.client.get(app.url("/nope"))).await;
    assert!(b.header("x-request-id").is_some_and(|v| !v.is_empty()));
}
