//! Inputs at the edges of the contract:
//!
//! - an `Idempotency-Key` is scoped to the route and the UUIDs in its path, however they are
//!   spelled (upper-case, without hyphens, `urn:uuid:`, braces): one change, five equal answers;
//! - a `PATCH` restating the current values is a no-op success (same version, same ETag, no
//!   event), still subject to `If-Match`; a zero stock delta stays 422;
//! - an out-of-range number (`1e400`) is 422 `validation_failed` naming its field;
//! - a declared `Content-Length` beyond the body limit is 413 at once, before any body is read.

use std::time::{Duration, Instant};

use ordering_tests::write_app::{WriteApp, admin_token, answer};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_applies_once_however_the_path_id_is_spelled() {
    let app = WriteApp::start().await;
    let p = app.create_product("IK-SPELL", 100, "EUR", 10).await;
    let id: Uuid = p["id"].as_str().unwrap().parse().unwrap();
    let tok = admin_token();
    let spellings = [
        id.hyphenated().to_string(),
        id.hyphenated().to_string().to_uppercase(),
        id.simple().to_string(),
        id.urn().to_string(),
        id.braced().to_string(),
    ];
    let mut answers = Vec::new();
    for spelling in &spellings {
        let a = answer(
            app.post(
                &format!("/v1/products/{spelling}/stock-adjustments"),
                &tok,
                &json!({"delta": 1}),
            )
            .header("Idempotency-Key", "restock-once"),
        )
        .await;
        assert_eq!(a.status, 200, "{spelling}: {}", a.text);
        answers.push(a);
    }
    for (spelling, a) in spellings.iter().zip(&answers) {
        assert_eq!(a.body, answers[0].body, "{spelling} got another answer");
    }
    let row = app.product_row(&id.to_string()).await;
    assert_eq!((row["stock"].as_i64(), row["version"].as_i64()), (Some(11), Some(2)));
    let counts = app.counts().await;
    assert_eq!((counts.outbox, counts.idempotency_keys), (2, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patch_restating_the_current_values_changes_nothing_and_records_no_event() {
    let app = WriteApp::start().await;
    let p = app.create_product("NOOP-1", 100, "EUR", 3).await;
    let id = p["id"].as_str().unwrap();
    let path = format!("/v1/products/{id}");
    let before = app.counts().await;
    let restated = json!({"name": p["name"], "description": p["description"], "price_cents": p["price_cents"]});
    for body in [restated, json!({"price_cents": 100}), json!({"name": "NOOP-1 name"})] {
        let a = answer(
            app.send(Method::PATCH, &path, &admin_token(), &body)
                .header("If-Match", "\"1\""),
        )
        .await;
        assert_eq!(a.status, 200, "{body}: {}", a.text);
        assert_eq!(a.body, p, "{body}: the answer is the current state");
        assert_eq!(a.header("etag"), Some("\"1\""));
        assert!(a.header("x-consistency-token").is_some());
    }
    assert_eq!(app.counts().await, before, "no outbox row");
    assert_eq!(app.product_row(id).await["version"], 1);

    // If-Match still applies to a no-op.
    let stale = answer(
        app.send(Method::PATCH, &path, &admin_token(), &json!({"price_cents": 100}))
            .header("If-Match", "\"7\""),
    )
    .await;
    stale.assert_problem(412, "version_conflict");

    // A real change after the no-ops is version 2, with one event.
    let changed = answer(app.send(
        Method::PATCH,
        &path,
        &admin_token(),
        &json!({"price_cents": 101, "name": "NOOP-1 name"}),
    ))
    .await;
    assert_eq!(
        (changed.status, changed.body["version"].as_i64()),
        (200, Some(2)),
        "{}",
        changed.text
    );
    assert_eq!(app.counts().await.outbox, before.outbox + 1);

    // A zero stock delta is refused: the contract asks for a non-zero delta.
    let zero = answer(app.post(
        &format!("{path}/stock-adjustments"),
        &admin_token(),
        &json!({"delta": 0}),
    ))
    .await;
    zero.assert_problem(422, "validation_failed");
    assert_eq!(zero.body["errors"][0]["field"], "delta");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_of_range_number_is_422_naming_its_field() {
    let app = WriteApp::start().await;
    let p = app.create_product("RANGE-1", 100, "EUR", 3).await;
    let id = p["id"].as_str().unwrap();
    let cases = [
        (
            format!("/v1/products/{id}/stock-adjustments"),
            r#"{"delta": 1e400}"#,
            "delta",
        ),
        (
            format!("/v1/products/{id}/stock-adjustments"),
            r#"{"delta": -1e400}"#,
            "delta",
        ),
        (
            "/v1/orders".to_owned(),
            r#"{"lines": [{"product_id": "00000000-0000-0000-0000-000000000000", "quantity": 1e999}]}"#,
            "lines[0].quantity",
        ),
    ];
    for (path, raw, field) in cases {
        let a = answer(
            app.client
                .post(app.url(&path))
                .bearer_auth(admin_token())
                .header("content-type", "application/json")
                .body(raw),
        )
        .await;
        a.assert_problem(422, "validation_failed");
        assert_eq!(a.body["errors"][0]["field"], field, "{raw}: {}", a.text);
    }
    assert_eq!(app.product_row(id).await["stock"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_length_beyond_the_body_limit_is_413_at_once() {
    let app = WriteApp::start().await;
    let p = app.create_product("HUGE-1", 100, "EUR", 3).await;
    let id = p["id"].as_str().unwrap();
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /v1/products/{id}/stock-adjustments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n{{\"delta\": 1",
        admin_token()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("payload_too_large") {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within 3 s; so far: {}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(text.contains("payload_too_large"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(app.product_row(id).await["stock"], 3);
}
