//! The outbox rows each command writes, in the same transaction as its change: the exact
//! CloudEvents body, the columns the relay routes by, `sequence` = the aggregate's version, and
//! the trace context (`traceparent`, `tracestate`) of the command in `headers`.

use ordering_tests::write_app::{WriteApp, admin_token, answer, customer_token};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Asserts `row` is the outbox row of a `key` event about `aggregate` `subject` at `sequence`,
/// whose data is `data`, with the exact CloudEvents envelope of the contract.
#[track_caller]
fn assert_event(row: &Value, key: &str, subject: &str, sequence: i64, data: &Value) {
    let aggregate = key.split('.').next().unwrap();
    assert_eq!(row["event_type"], key, "routing key column: {row}");
    assert_eq!(row["aggregate_type"], aggregate, "{row}");
    assert_eq!(row["aggregate_id"], subject, "{row}");
    assert_eq!(row["sequence"], sequence, "{row}");
    let ce = &row["payload"];
    let mut keys: Vec<_> = ce
        .as_object()
        .expect("payload object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aggregatetype",
            "data",
            "datacontenttype",
            "id",
            "sequence",
            "source",
            "specversion",
            "subject",
            "time",
            "type"
        ],
        "{ce}"
    );
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["id"], row["event_id"], "CloudEvents id is the event_id column");
    assert!(Uuid::parse_str(ce["id"].as_str().unwrap()).is_ok());
    assert_eq!(ce["source"], "/ordering/write-api");
    assert_eq!(ce["type"], format!("ordering.{key}.v1"));
    assert_eq!(ce["subject"], subject);
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["aggregatetype"], aggregate);
    assert_eq!(ce["sequence"], sequence, "sequence in the body");
    assert_eq!(ce["data"]["version"], sequence, "sequence is the aggregate's version");
    assert_eq!(&ce["data"], data, "data is the state after the change");
    let time = ce["time"].as_str().expect("time");
    let parsed =
        chrono::DateTime::parse_from_rfc3339(time).unwrap_or_else(|e| panic!("time {time:?} is not RFC 3339: {e}"));
    let updated = chrono::DateTime::parse_from_rfc3339(data["updated_at"].as_str().unwrap()).unwrap();
    assert_eq!(parsed, updated, "time is when the change happened");
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_a_product_writes_one_product_created_event_with_the_exact_cloudevents_shape() {
    let app = WriteApp::start().await;
    let p = app.create_product("CE-1", 100, "EUR", 5).await;
    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 1);
    assert_event(&rows[0], "product.created", p["id"].as_str().unwrap(), 1, &p);
    assert_eq!(rows[0]["headers"], json!({}), "no traceparent, no headers");
}

#[tokio::test(flavor = "multi_thread")]
async fn updating_and_adjusting_a_product_write_updated_and_stock_changed_events_in_sequence() {
    let app = WriteApp::start().await;
    let p = app.create_product("CE-2", 100, "EUR", 5).await;
    let id = p["id"].as_str().unwrap();
    let updated = answer(app.send(
        Method::PATCH,
        &format!("/v1/products/{id}"),
        &admin_token(),
        &json!({"price_cents": 120}),
    ))
    .await;
    assert_eq!(updated.status, 200);
    let adjusted = answer(app.post(
        &format!("/v1/products/{id}/stock-adjustments"),
        &admin_token(),
        &json!({"delta": -2, "reason": "broken"}),
    ))
    .await;
    assert_eq!(adjusted.status, 200);
    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 3);
    assert_event(&rows[0], "product.created", id, 1, &p);
    assert_event(&rows[1], "product.updated", id, 2, &updated.body);
    assert_event(&rows[2], "product.stock_changed", id, 3, &adjusted.body);
    assert_eq!(rows[2]["payload"]["data"]["stock"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn placing_an_order_writes_order_placed_and_one_stock_changed_per_product() {
    let app = WriteApp::start().await;
    let a = app.create_product("CE-A", 250, "EUR", 10).await;
    let b = app.create_product("CE-B", 1000, "EUR", 10).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let customer = Uuid::now_v7();
    let o = app
        .place_order(&customer_token(customer), None, &[(b_id, 3), (a_id, 2)])
        .await;
    assert_eq!(o.status, 201, "{}", o.text);
    let order_id = o.body["id"].as_str().unwrap();

    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 2 + 3, "2 creations, then order.placed and 2 stock_changed");
    let new: Vec<_> = rows[2..].to_vec();
    assert_event(&new[0], "order.placed", order_id, 1, &o.body);
    let mut stock_rows: Vec<_> = new[1..].iter().collect();
    stock_rows.sort_by_key(|r| r["aggregate_id"].as_str().unwrap().to_owned());
    let mut want = [(a_id, 8), (b_id, 7)];
    want.sort();
    for (row, (id, stock)) in stock_rows.iter().zip(want) {
        let state = app.product_row(id).await;
        assert_eq!(state["stock"], stock);
        let data = &row["payload"]["data"];
        assert_eq!(data["stock"], stock);
        assert_event(row, "product.stock_changed", id, 2, data);
        // The event data is the stored state.
        assert_eq!(data["version"], state["version"]);
        assert_eq!(data["price_cents"], state["price_cents"]);
    }
    // Every event of one command has a distinct id.
    let mut ids: Vec<_> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn paying_shipping_and_cancelling_write_their_order_events() {
    let app = WriteApp::start().await;
    let p = app.create_product("CE-3", 500, "EUR", 10).await;
    let pid = p["id"].as_str().unwrap();
    let customer = Uuid::now_v7();
    let tok = customer_token(customer);

    let first = app.place_order(&tok, None, &[(pid, 2)]).await;
    let first_id = first.body["id"].as_str().unwrap();
    let paid = answer(app.post(
        &format!("/v1/orders/{first_id}/pay"),
        &tok,
        &json!({"payment_reference": "r"}),
    ))
    .await;
    assert_eq!(paid.status, 200);
    let shipped = answer(app.post(&format!("/v1/orders/{first_id}/ship"), &admin_token(), &json!({}))).await;
    assert_eq!(shipped.status, 200);

    let second = app.place_order(&tok, None, &[(pid, 3)]).await;
    let second_id = second.body["id"].as_str().unwrap();
    let before = app.outbox_rows().await.len();
    let cancelled = answer(app.post(
        &format!("/v1/orders/{second_id}/cancel"),
        &tok,
        &json!({"reason": "late"}),
    ))
    .await;
    assert_eq!(cancelled.status, 200);

    let rows = app.outbox_rows().await;
    let of = |id: &str| {
        rows.iter()
            .filter(|r| r["aggregate_id"] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let first_rows = of(first_id);
    assert_eq!(first_rows.len(), 3);
    assert_event(&first_rows[0], "order.placed", first_id, 1, &first.body);
    assert_event(&first_rows[1], "order.paid", first_id, 2, &paid.body);
    assert_event(&first_rows[2], "order.shipped", first_id, 3, &shipped.body);

    // The cancel wrote exactly order.cancelled and the stock released.
    let cancel_rows = &rows[before..];
    assert_eq!(cancel_rows.len(), 2, "{cancel_rows:?}");
    assert_event(&cancel_rows[0], "order.cancelled", second_id, 2, &cancelled.body);
    let product_now = app.product_row(pid).await;
    assert_eq!(product_now["stock"], 10 - 2);
    assert_eq!(product_now["version"], 4, "created, two reservations, one release");
    assert_event(
        &cancel_rows[1],
        "product.stock_changed",
        pid,
        4,
        &cancel_rows[1]["payload"]["data"],
    );
    assert_eq!(cancel_rows[1]["payload"]["data"]["stock"], 8);

    // One aggregate's sequences are 1..=n without gaps or repeats.
    let seqs: Vec<i64> = of(pid).iter().map(|r| r["sequence"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_context_of_a_command_is_stored_in_the_headers_of_every_row_it_writes() {
    let app = WriteApp::start().await;
    let body = json!({"sku": "TP-1", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 9});
    let a = answer(
        app.post("/v1/products", &admin_token(), &body)
            .header("traceparent", TRACEPARENT),
    )
    .await;
    assert_eq!(a.status, 201);
    let pid = a.body["id"].as_str().unwrap().to_owned();
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    let o = answer(
        app.post(
            "/v1/orders",
            &customer_token(Uuid::now_v7()),
            &json!({"lines": [{"product_id": pid, "quantity": 1}]}),
        )
        .header("traceparent", other),
    )
    .await;
    assert_eq!(o.status, 201);
    // Untraced (no OTLP endpoint), the caller's tracestate travels with its traceparent; on
    // its own it names no trace and is dropped.
    let state = answer(
        app.post(
            "/v1/products",
            &admin_token(),
            &json!({"sku": "TP-2", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        )
        .header("traceparent", TRACEPARENT)
        .header("tracestate", "vendor=a,other=b"),
    )
    .await;
    assert_eq!(state.status, 201);
    let alone = answer(
        app.post(
            "/v1/products",
            &admin_token(),
            &json!({"sku": "TP-3", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        )
        .header("tracestate", "vendor=a"),
    )
    .await;
    assert_eq!(alone.status, 201);
    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0]["headers"], json!({"traceparent": TRACEPARENT}));
    assert_eq!(rows[1]["headers"], json!({"traceparent": other}));
    assert_eq!(rows[2]["headers"], json!({"traceparent": other}));
    assert_eq!(
        rows[3]["headers"],
        json!({"traceparent": TRACEPARENT, "tracestate": "vendor=a,other=b"})
    );
    assert_eq!(rows[4]["headers"], json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_traceparent_is_not_stored_and_does_not_refuse_the_command() {
    let app = WriteApp::start().await;
    let bad = [
        "garbage",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "",
    ];
    for (i, tp) in bad.iter().enumerate() {
        let body = json!({"sku": format!("BAD-TP-{i}"), "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
        let a = answer(
            app.post("/v1/products", &admin_token(), &body)
                .header("traceparent", *tp),
        )
        .await;
        assert_eq!(a.status, 201, "traceparent {tp:?}: {}", a.text);
    }
    let rows = app.outbox_rows().await;
    assert_eq!(rows.len(), bad.len());
    for row in rows {
        assert_eq!(row["headers"], json!({}), "{row}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_commands_write_no_outbox_row() {
    let app = WriteApp::start().await;
    let p = app.create_product("NO-EV", 100, "EUR", 1).await;
    let id = p["id"].as_str().unwrap();
    let tok = admin_token();
    let refusals = [
        answer(app.post(
            "/v1/products",
            &tok,
            &json!({"sku": "NO-EV", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}),
        ))
        .await,
        answer(app.post(
            &format!("/v1/products/{id}/stock-adjustments"),
            &tok,
            &json!({"delta": -2}),
        ))
        .await,
        answer(
            app.send(
                Method::PATCH,
                &format!("/v1/products/{id}"),
                &tok,
                &json!({"name": "x"}),
            )
            .header("If-Match", "\"9\""),
        )
        .await,
        app.place_order(&tok, Some(Uuid::now_v7()), &[(id, 2)]).await,
    ];
    let statuses: Vec<u16> = refusals.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [409, 409, 412, 409]);
    assert_eq!(app.outbox_rows().await.len(), 1, "only the creation");
}
