//! Order commands of the write-api against a real PostgreSQL: placing (stock reserved for all
//! lines or none), paying, shipping and cancelling (stock released), with their answers and
//! every refusal the contract names for them.

use ordering_schema::consistency::VersionMark;
use ordering_schema::events::AggregateType;
use ordering_tests::write_app::{Answer, WriteApp, admin_token, answer, customer_token};
use serde_json::json;
use uuid::Uuid;

fn uuid(v: &serde_json::Value) -> Uuid {
    Uuid::parse_str(v.as_str().expect("id string")).expect("uuid")
}

/// Two EUR products (kettle 2599 × 10, mug 899 × 5) and a customer.
async fn shop(app: &WriteApp) -> (String, String, Uuid) {
    let kettle = app.create_product("KETTLE", 2599, "EUR", 10).await;
    let mug = app.create_product("MUG", 899, "EUR", 5).await;
    (
        kettle["id"].as_str().unwrap().to_owned(),
        mug["id"].as_str().unwrap().to_owned(),
        Uuid::now_v7(),
    )
}

async fn stock(app: &WriteApp, id: &str) -> (i64, i64) {
    let row = app.product_row(id).await;
    (row["stock"].as_i64().unwrap(), row["version"].as_i64().unwrap())
}

async fn placed(app: &WriteApp, customer: Uuid, lines: &[(&str, i64)]) -> Answer {
    let a = app.place_order(&customer_token(customer), None, lines).await;
    assert_eq!(a.status, 201, "{}", a.text);
    a
}

async fn act(app: &WriteApp, token: &str, order_id: &str, action: &str, body: serde_json::Value) -> Answer {
    answer(app.post(&format!("/v1/orders/{order_id}/{action}"), token, &body)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn place_order_answers_201_with_lines_totals_and_reserves_stock() {
    let app = WriteApp::start().await;
    let (kettle, mug, customer) = shop(&app).await;
    let a = app
        .place_order(&customer_token(customer), Some(customer), &[(&kettle, 2), (&mug, 1)])
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let o = &a.body;
    let id = o["id"].as_str().unwrap();
    assert_eq!(uuid(&o["id"]).get_version_num(), 7);
    assert_eq!(o["customer_id"], customer.to_string());
    assert_eq!(o["status"], "placed");
    assert_eq!(o["version"], 1);
    assert_eq!(o["currency"], "EUR");
    assert_eq!(o["total_cents"], 2 * 2599 + 899);
    assert_eq!(o["created_at"], o["updated_at"]);
    assert_eq!(
        o["lines"],
        json!([
            {"product_id": kettle, "sku": "KETTLE", "name": "KETTLE name", "unit_price_cents": 2599, "quantity": 2, "line_total_cents": 5198},
            {"product_id": mug, "sku": "MUG", "name": "MUG name", "unit_price_cents": 899, "quantity": 1, "line_total_cents": 899},
        ])
    );
    let mut keys: Vec<_> = o.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "created_at",
            "currency",
            "customer_id",
            "id",
            "lines",
            "status",
            "total_cents",
            "updated_at",
            "version"
        ]
    );
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(a.header("location"), Some(format!("/v1/orders/{id}").as_str()));

    // The token names the order and every product whose stock moved, at their new versions.
    let mut marks = a.consistency_marks();
    marks.sort_by_key(|m| (m.aggregate, m.id));
    let mut want = vec![
        VersionMark {
            aggregate: AggregateType::Order,
            id: uuid(&o["id"]),
            version: 1,
        },
        VersionMark {
            aggregate: AggregateType::Product,
            id: Uuid::parse_str(&kettle).unwrap(),
            version: 2,
        },
        VersionMark {
            aggregate: AggregateType::Product,
            id: Uuid::parse_str(&mug).unwrap(),
            version: 2,
        },
    ];
    want.sort_by_key(|m| (m.aggregate, m.id));
    assert_eq!(marks, want);

    assert_eq!(stock(&app, &kettle).await, (8, 2));
    assert_eq!(stock(&app, &mug).await, (4, 2));
    let c = app.counts().await;
    assert_eq!((c.orders, c.order_lines), (1, 2));
    let stored = app
        .query_json(&format!(
            "SELECT status, total_cents, customer_id::text AS customer_id, version FROM orders WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(
        stored,
        [json!({"status": "placed", "total_cents": 6097, "customer_id": customer.to_string(), "version": 1})]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_may_leave_customer_id_out_and_gets_its_own() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let a = app.place_order(&customer_token(customer), None, &[(&kettle, 1)]).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["customer_id"], customer.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_places_for_a_named_customer_and_must_name_one() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let a = app.place_order(&admin_token(), Some(customer), &[(&kettle, 1)]).await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["customer_id"], customer.to_string());
    let a = app.place_order(&admin_token(), None, &[(&kettle, 1)]).await;
    a.assert_problem(422, "validation_failed");
    assert_eq!(a.body["errors"][0]["field"], "customer_id");
    assert_eq!(app.counts().await.orders, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_whose_second_line_lacks_stock_is_409_and_leaves_no_trace() {
    let app = WriteApp::start().await;
    let (kettle, mug, customer) = shop(&app).await;
    let before = app.counts().await;
    let a = app
        .place_order(&customer_token(customer), None, &[(&kettle, 3), (&mug, 6)])
        .await;
    a.assert_problem(409, "insufficient_stock");
    assert_eq!(
        stock(&app, &kettle).await,
        (10, 1),
        "the first line's stock is untouched"
    );
    assert_eq!(stock(&app, &mug).await, (5, 1));
    assert_eq!(app.counts().await, before, "no order, line or outbox row");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_naming_an_unknown_product_is_404_and_leaves_no_trace() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let before = app.counts().await;
    let ghost = Uuid::now_v7().to_string();
    for lines in [
        vec![(kettle.as_str(), 3), (ghost.as_str(), 1)],
        vec![(ghost.as_str(), 1), (kettle.as_str(), 3)],
    ] {
        let a = app.place_order(&customer_token(customer), None, &lines).await;
        a.assert_problem(404, "not_found");
    }
    assert_eq!(stock(&app, &kettle).await, (10, 1));
    assert_eq!(app.counts().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_mixing_currencies_is_422() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let dollar = app.create_product("USD-ITEM", 100, "USD", 5).await;
    let before = app.counts().await;
    let a = app
        .place_order(
            &customer_token(customer),
            None,
            &[(&kettle, 1), (dollar["id"].as_str().unwrap(), 1)],
        )
        .await;
    a.assert_problem(422, "validation_failed");
    assert_eq!(app.counts().await, before);
    assert_eq!(stock(&app, &kettle).await, (10, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_may_take_the_last_unit_but_not_one_more() {
    let app = WriteApp::start().await;
    let (_, mug, customer) = shop(&app).await;
    placed(&app, customer, &[(&mug, 5)]).await;
    assert_eq!(stock(&app, &mug).await, (0, 2));
    let a = app.place_order(&customer_token(customer), None, &[(&mug, 1)]).await;
    a.assert_problem(409, "insufficient_stock");
    assert_eq!(stock(&app, &mug).await, (0, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_goes_placed_paid_shipped_with_a_version_per_step() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let o = placed(&app, customer, &[(&kettle, 1)]).await.body;
    let id = o["id"].as_str().unwrap();

    let paid = act(
        &app,
        &customer_token(customer),
        id,
        "pay",
        json!({"payment_reference": "psp-123"}),
    )
    .await;
    assert_eq!(paid.status, 200, "{}", paid.text);
    assert_eq!(
        (paid.body["status"].as_str(), paid.body["version"].as_i64()),
        (Some("paid"), Some(2))
    );
    assert_eq!(paid.body["lines"], o["lines"]);
    assert_eq!(paid.body["created_at"], o["created_at"]);
    assert_eq!(paid.header("etag"), Some("\"2\""));
    assert_eq!(paid.header("location"), None);
    assert_eq!(
        paid.consistency_marks(),
        [VersionMark {
            aggregate: AggregateType::Order,
            id: uuid(&o["id"]),
            version: 2
        }]
    );

    let shipped = act(&app, &admin_token(), id, "ship", json!({})).await;
    assert_eq!(shipped.status, 200, "{}", shipped.text);
    assert_eq!(
        (shipped.body["status"].as_str(), shipped.body["version"].as_i64()),
        (Some("shipped"), Some(3))
    );
    assert_eq!(shipped.header("etag"), Some("\"3\""));
    assert_eq!(
        shipped.consistency_marks(),
        [VersionMark {
            aggregate: AggregateType::Order,
            id: uuid(&o["id"]),
            version: 3
        }]
    );

    let stored = app
        .query_json(&format!(
            "SELECT status, version, payment_reference FROM orders WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(
        stored,
        [json!({"status": "shipped", "version": 3, "payment_reference": "psp-123"})]
    );
    // Paying and shipping touch no stock.
    assert_eq!(stock(&app, &kettle).await, (9, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn ship_with_no_body_at_all_is_accepted_as_empty() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let id = placed(&app, customer, &[(&kettle, 1)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = act(&app, &admin_token(), &id, "pay", json!({"payment_reference": "p"})).await;
    assert_eq!(a.status, 200);
    let a = answer(
        app.client
            .post(app.url(&format!("/v1/orders/{id}/ship")))
            .bearer_auth(admin_token()),
    )
    .await;
    assert_eq!(
        (a.status, a.body["status"].as_str()),
        (200, Some("shipped")),
        "{}",
        a.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn illegal_transitions_are_409_invalid_transition_and_change_nothing() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let tok = customer_token(customer);
    let id = placed(&app, customer, &[(&kettle, 1)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pay = json!({"payment_reference": "p-1"});

    // placed: cannot ship.
    act(&app, &admin_token(), &id, "ship", json!({}))
        .await
        .assert_problem(409, "invalid_transition");
    // paid: cannot pay again.
    assert_eq!(act(&app, &tok, &id, "pay", pay.clone()).await.status, 200);
    act(&app, &tok, &id, "pay", pay.clone())
        .await
        .assert_problem(409, "invalid_transition");
    // shipped: cannot pay, cancel or ship again.
    assert_eq!(act(&app, &admin_token(), &id, "ship", json!({})).await.status, 200);
    let before = app.counts().await;
    act(&app, &tok, &id, "pay", pay.clone())
        .await
        .assert_problem(409, "invalid_transition");
    act(&app, &tok, &id, "cancel", json!({}))
        .await
        .assert_problem(409, "invalid_transition");
    act(&app, &admin_token(), &id, "ship", json!({}))
        .await
        .assert_problem(409, "invalid_transition");
    assert_eq!(app.counts().await, before);
    assert_eq!(
        stock(&app, &kettle).await,
        (9, 2),
        "a refused cancel of a shipped order released nothing"
    );

    // cancelled: nothing more.
    let id2 = placed(&app, customer, &[(&kettle, 1)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(act(&app, &tok, &id2, "cancel", json!({})).await.status, 200);
    let before = app.counts().await;
    act(&app, &tok, &id2, "pay", pay.clone())
        .await
        .assert_problem(409, "invalid_transition");
    act(&app, &admin_token(), &id2, "ship", json!({}))
        .await
        .assert_problem(409, "invalid_transition");
    act(&app, &tok, &id2, "cancel", json!({}))
        .await
        .assert_problem(409, "invalid_transition");
    assert_eq!(app.counts().await, before);
    assert_eq!(stock(&app, &kettle).await, (9, 4), "a second cancel released nothing");
    let stored = app
        .query_json(&format!("SELECT status, version FROM orders WHERE id = '{id2}'"))
        .await;
    assert_eq!(stored, [json!({"status": "cancelled", "version": 2})]);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_placed_order_releases_its_stock() {
    let app = WriteApp::start().await;
    let (kettle, mug, customer) = shop(&app).await;
    let o = placed(&app, customer, &[(&mug, 2), (&kettle, 3)]).await.body;
    let id = o["id"].as_str().unwrap();
    assert_eq!(stock(&app, &kettle).await, (7, 2));
    let a = act(
        &app,
        &customer_token(customer),
        id,
        "cancel",
        json!({"reason": "changed my mind"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        (a.body["status"].as_str(), a.body["version"].as_i64()),
        (Some("cancelled"), Some(2))
    );
    assert_eq!(a.body["total_cents"], o["total_cents"]);
    assert_eq!(a.header("etag"), Some("\"2\""));
    assert_eq!(stock(&app, &kettle).await, (10, 3));
    assert_eq!(stock(&app, &mug).await, (5, 3));
    let mut marks = a.consistency_marks();
    marks.sort_by_key(|m| (m.aggregate, m.id));
    let mut want = vec![
        VersionMark {
            aggregate: AggregateType::Order,
            id: uuid(&o["id"]),
            version: 2,
        },
        VersionMark {
            aggregate: AggregateType::Product,
            id: Uuid::parse_str(&kettle).unwrap(),
            version: 3,
        },
        VersionMark {
            aggregate: AggregateType::Product,
            id: Uuid::parse_str(&mug).unwrap(),
            version: 3,
        },
    ];
    want.sort_by_key(|m| (m.aggregate, m.id));
    assert_eq!(marks, want);
    let stored = app
        .query_json(&format!("SELECT status, cancel_reason FROM orders WHERE id = '{id}'"))
        .await;
    assert_eq!(
        stored,
        [json!({"status": "cancelled", "cancel_reason": "changed my mind"})]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_paid_order_releases_its_stock() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let id = placed(&app, customer, &[(&kettle, 4)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        act(&app, &admin_token(), &id, "pay", json!({"payment_reference": "p"}))
            .await
            .status,
        200
    );
    let a = act(&app, &admin_token(), &id, "cancel", json!({})).await;
    assert_eq!(
        (a.status, a.body["status"].as_str(), a.body["version"].as_i64()),
        (200, Some("cancelled"), Some(3)),
        "{}",
        a.text
    );
    assert_eq!(stock(&app, &kettle).await, (10, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn order_commands_on_unknown_or_non_uuid_ids_are_404() {
    let app = WriteApp::start().await;
    let before = app.counts().await;
    for id in [Uuid::now_v7().to_string(), "not-a-uuid".to_owned(), "0".to_owned()] {
        act(&app, &admin_token(), &id, "pay", json!({"payment_reference": "p"}))
            .await
            .assert_problem(404, "not_found");
        act(&app, &admin_token(), &id, "ship", json!({}))
            .await
            .assert_problem(404, "not_found");
        act(&app, &admin_token(), &id, "cancel", json!({}))
            .await
            .assert_problem(404, "not_found");
    }
    assert_eq!(app.counts().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn order_commands_honour_if_match() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let id = placed(&app, customer, &[(&kettle, 1)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pay = |tag: &'static str| {
        app.post(
            &format!("/v1/orders/{id}/pay"),
            &admin_token(),
            &json!({"payment_reference": "p"}),
        )
        .header("If-Match", tag)
    };
    answer(pay("\"2\"")).await.assert_problem(412, "version_conflict");
    answer(pay("W/\"7\"")).await.assert_problem(412, "version_conflict");
    assert_eq!(
        app.query_json(&format!("SELECT status FROM orders WHERE id = '{id}'"))
            .await,
        [json!({"status": "placed"})]
    );
    let a = answer(pay("W/\"1\"")).await;
    assert_eq!((a.status, a.body["version"].as_i64()), (200, Some(2)), "{}", a.text);
    let cancel = answer(
        app.post(&format!("/v1/orders/{id}/cancel"), &admin_token(), &json!({}))
            .header("If-Match", "\"1\""),
    )
    .await;
    cancel.assert_problem(412, "version_conflict");
    assert_eq!(stock(&app, &kettle).await, (9, 2), "a 412 cancel released nothing");
    let ship = answer(
        app.post(&format!("/v1/orders/{id}/ship"), &admin_token(), &json!({}))
            .header("If-Match", "*"),
    )
    .await;
    assert_eq!(
        (ship.status, ship.body["status"].as_str()),
        (200, Some("shipped")),
        "{}",
        ship.text
    );
    // If-Match on placing an order can never hold.
    let a = answer(
        app.post(
            "/v1/orders",
            &customer_token(customer),
            &json!({"lines": [{"product_id": kettle, "quantity": 1}]}),
        )
        .header("If-Match", "*"),
    )
    .await;
    a.assert_problem(412, "version_conflict");
    assert_eq!(app.counts().await.orders, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn pay_validates_the_payment_reference() {
    let app = WriteApp::start().await;
    let (kettle, _, customer) = shop(&app).await;
    let id = placed(&app, customer, &[(&kettle, 1)]).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = app.counts().await;
    for bad in [
        json!({"payment_reference": ""}),
        json!({"payment_reference": "p".repeat(201)}),
        json!({}),
        json!({"payment_reference": 5}),
    ] {
        let a = act(&app, &admin_token(), &id, "pay", bad.clone()).await;
        a.assert_problem(422, "validation_failed");
        assert_eq!(a.body["errors"][0]["field"], "payment_reference", "{bad}");
    }
    assert_eq!(app.counts().await, before);
    let a = act(
        &app,
        &admin_token(),
        &id,
        "pay",
        json!({"payment_reference": "p".repeat(200)}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
}
