//! Concurrency against a real PostgreSQL: no oversell, no lost update, no deadlock, unique
//! skus under a race, and an `Idempotency-Key` sent many times at once writing exactly once.

use std::collections::HashMap;

use futures::future::join_all;
use ordering_tests::write_app::{Answer, WriteApp, admin_token, answer, customer_token};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

fn histogram(answers: &[Answer]) -> HashMap<(u16, String), usize> {
    let mut h = HashMap::new();
    for a in answers {
        *h.entry((a.status, a.code().to_owned())).or_default() += 1;
    }
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_orders_for_fifty_units_sell_exactly_fifty() {
    let app = WriteApp::start_with_pool(16).await;
    let p = app.create_product("HOT", 100, "EUR", 50).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let tokens: Vec<(Uuid, String)> = (0..200)
        .map(|_| Uuid::now_v7())
        .map(|c| (c, customer_token(c)))
        .collect();
    let answers = join_all(tokens.iter().map(|(_, t)| app.place_order(t, None, &[(&pid, 1)]))).await;

    let h = histogram(&answers);
    assert_eq!(h.get(&(201, String::new())), Some(&50), "{h:?}");
    assert_eq!(h.get(&(409, "insufficient_stock".to_owned())), Some(&150), "{h:?}");
    assert_eq!(h.len(), 2, "no other answer: {h:?}");

    let row = app.product_row(&pid).await;
    assert_eq!((row["stock"].as_i64(), row["version"].as_i64()), (Some(0), Some(51)));
    let c = app.counts().await;
    assert_eq!((c.orders, c.order_lines), (50, 50));
    assert_eq!(
        c.outbox,
        1 + 50 * 2,
        "creation, then order.placed + stock_changed per order"
    );

    // The product's events carry versions 1..=51 exactly once each, with the stock falling by one.
    let rows = app
        .query_json(&format!("SELECT sequence, (payload->'data'->>'stock')::bigint AS stock FROM outbox WHERE aggregate_id = '{pid}' ORDER BY sequence"))
        .await;
    let seqs: Vec<i64> = rows.iter().map(|r| r["sequence"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=51).collect::<Vec<_>>());
    for r in &rows {
        assert_eq!(r["stock"].as_i64().unwrap(), 50 - (r["sequence"].as_i64().unwrap() - 1));
    }
    // Each successful answer names a distinct stock version of the product.
    let mut versions: Vec<i64> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| {
            a.consistency_marks()
                .iter()
                .find(|m| m.id.to_string() == pid)
                .expect("product mark")
                .version
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=51).collect::<Vec<_>>());
    // The orders belong to the customers who were answered 201.
    let placed = app.query_json("SELECT customer_id::text AS c FROM orders").await;
    let mut stored: Vec<String> = placed.iter().map(|r| r["c"].as_str().unwrap().to_owned()).collect();
    let mut answered: Vec<String> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.body["customer_id"].as_str().unwrap().to_owned())
        .collect();
    stored.sort();
    answered.sort();
    assert_eq!(stored, answered);
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_stock_adjustments_lose_no_update() {
    let app = WriteApp::start().await;
    let p = app.create_product("ADJ-RACE", 100, "EUR", 10).await;
    let path = format!("/v1/products/{}/stock-adjustments", p["id"].as_str().unwrap());
    let tok = admin_token();
    let answers = join_all((0..50).map(|_| answer(app.post(&path, &tok, &json!({"delta": 1}))))).await;
    assert!(answers.iter().all(|a| a.status == 200), "{:?}", histogram(&answers));
    let mut versions: Vec<i64> = answers.iter().map(|a| a.body["version"].as_i64().unwrap()).collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=51).collect::<Vec<_>>(),
        "each answer saw its own version"
    );
    let row = app.product_row(p["id"].as_str().unwrap()).await;
    assert_eq!((row["stock"].as_i64(), row["version"].as_i64()), (Some(60), Some(51)));
    assert_eq!(app.counts().await.outbox, 51);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_withdrawals_never_take_stock_below_zero() {
    let app = WriteApp::start().await;
    let p = app.create_product("ADJ-DOWN", 100, "EUR", 30).await;
    let path = format!("/v1/products/{}/stock-adjustments", p["id"].as_str().unwrap());
    let tok = admin_token();
    let answers = join_all((0..40).map(|_| answer(app.post(&path, &tok, &json!({"delta": -1}))))).await;
    let h = histogram(&answers);
    assert_eq!(h.get(&(200, String::new())), Some(&30), "{h:?}");
    assert_eq!(h.get(&(409, "insufficient_stock".to_owned())), Some(&10), "{h:?}");
    let row = app.product_row(p["id"].as_str().unwrap()).await;
    assert_eq!((row["stock"].as_i64(), row["version"].as_i64()), (Some(0), Some(31)));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_conditional_updates_on_one_version_let_exactly_one_through() {
    let app = WriteApp::start().await;
    let p = app.create_product("IFM-RACE", 100, "EUR", 1).await;
    let path = format!("/v1/products/{}", p["id"].as_str().unwrap());
    let tok = admin_token();
    let answers = join_all((0..20).map(|i| {
        answer(
            app.send(Method::PATCH, &path, &tok, &json!({"name": format!("writer {i}")}))
                .header("If-Match", "\"1\""),
        )
    }))
    .await;
    let h = histogram(&answers);
    assert_eq!(h.get(&(200, String::new())), Some(&1), "{h:?}");
    assert_eq!(h.get(&(412, "version_conflict".to_owned())), Some(&19), "{h:?}");
    let winner = answers.iter().find(|a| a.status == 200).unwrap();
    let row = app.product_row(p["id"].as_str().unwrap()).await;
    assert_eq!(row["name"], winner.body["name"]);
    assert_eq!(row["version"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_over_the_same_products_in_opposite_line_order_never_deadlock() {
    let app = WriteApp::start_with_pool(16).await;
    let a = app.create_product("PAIR-A", 100, "EUR", 10_000).await;
    let b = app.create_product("PAIR-B", 100, "EUR", 10_000).await;
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    let tok = customer_token(Uuid::now_v7());
    let rounds = 3;
    let pairs = 30;
    for _ in 0..rounds {
        let answers = join_all((0..pairs).flat_map(|_| {
            [
                app.place_order(&tok, None, &[(&a, 1), (&b, 2)]),
                app.place_order(&tok, None, &[(&b, 1), (&a, 2)]),
            ]
        }))
        .await;
        assert!(answers.iter().all(|x| x.status == 201), "{:?}", histogram(&answers));
    }
    let n = (rounds * pairs) as i64;
    assert_eq!(app.product_row(&a).await["stock"], 10_000 - 3 * n);
    assert_eq!(app.product_row(&b).await["stock"], 10_000 - 3 * n);
    assert_eq!(app.counts().await.orders, 2 * n);
    // Cancelling them all at once (order lock, then products) does not deadlock with new orders.
    let ids: Vec<String> = app
        .query_json("SELECT id::text AS id FROM orders")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let cancels = ids
        .iter()
        .take(40)
        .map(|id| answer(app.post(&format!("/v1/orders/{id}/cancel"), &tok, &json!({}))));
    let more = (0..20).map(|i| {
        if i % 2 == 0 {
            app.place_order(&tok, None, &[(&a, 1), (&b, 1)])
        } else {
            app.place_order(&tok, None, &[(&b, 1), (&a, 1)])
        }
    });
    let (cancels, more) = tokio::join!(join_all(cancels), join_all(more));
    assert!(cancels.iter().all(|x| x.status == 200), "{:?}", histogram(&cancels));
    assert!(more.iter().all(|x| x.status == 201), "{:?}", histogram(&more));
    // Stock accounting is exact: all placed minus released.
    let stock = app
        .query_json(&format!(
            "SELECT p.stock + coalesce((SELECT sum(l.quantity) FROM order_lines l JOIN orders o ON o.id = l.order_id \
             WHERE l.product_id = p.id AND o.status <> 'cancelled'), 0) AS total FROM products p WHERE p.id IN ('{a}', '{b}')"
        ))
        .await;
    assert_eq!(stock, [json!({"total": 10_000}), json!({"total": 10_000})]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_of_one_sku_make_one_product_and_409s() {
    let app = WriteApp::start().await;
    let tok = admin_token();
    let body = json!({"sku": "RACE-SKU", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
    let answers = join_all((0..10).map(|_| answer(app.post("/v1/products", &tok, &body)))).await;
    let h = histogram(&answers);
    assert_eq!(h.get(&(201, String::new())), Some(&1), "{h:?}");
    assert_eq!(h.get(&(409, "sku_taken".to_owned())), Some(&9), "{h:?}");
    let c = app.counts().await;
    assert_eq!((c.products, c.outbox), (1, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_twice_at_the_same_moment_writes_one_order() {
    let app = WriteApp::start().await;
    let p = app.create_product("IDEM-2", 100, "EUR", 10).await;
    let tok = customer_token(Uuid::now_v7());
    let body = json!({"lines": [{"product_id": p["id"], "quantity": 2}]});
    for round in 0..5 {
        let key = format!("twice-{round}");
        let send = || {
            answer(
                app.post("/v1/orders", &tok, &body)
                    .header("Idempotency-Key", key.clone()),
            )
        };
        let (x, y) = tokio::join!(send(), send());
        assert_eq!(x.status, 201, "{}", x.text);
        assert_eq!((x.status, &x.body), (y.status, &y.body), "both answers identical");
        assert_eq!(x.header("etag"), y.header("etag"));
        assert_eq!(x.header("location"), y.header("location"));
        assert_eq!(x.header("x-consistency-token"), y.header("x-consistency-token"));
    }
    let c = app.counts().await;
    assert_eq!(
        (c.orders, c.order_lines, c.outbox, c.idempotency_keys),
        (5, 5, 1 + 5 * 2, 5)
    );
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_requests_with_one_idempotency_key_at_once_write_one_order_and_answer_alike() {
    let app = WriteApp::start().await;
    let p = app.create_product("IDEM-20", 100, "EUR", 100).await;
    let tok = customer_token(Uuid::now_v7());
    let body = json!({"lines": [{"product_id": p["id"], "quantity": 3}]});
    let answers = join_all((0..20).map(|_| {
        answer(
            app.post("/v1/orders", &tok, &body)
                .header("Idempotency-Key", "burst-of-twenty"),
        )
    }))
    .await;
    let first = &answers[0];
    assert_eq!(first.status, 201, "{}", first.text);
    for a in &answers {
        assert_eq!(
            (a.status, &a.body),
            (first.status, &first.body),
            "every answer identical"
        );
        assert_eq!(a.header("x-consistency-token"), first.header("x-consistency-token"));
    }
    let c = app.counts().await;
    assert_eq!((c.orders, c.outbox, c.idempotency_keys), (1, 1 + 2, 1));
    assert_eq!(app.product_row(p["id"].as_str().unwrap()).await["stock"], 97);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_idempotency_key_racing_for_the_last_unit_replays_one_refusal() {
    let app = WriteApp::start().await;
    let p = app.create_product("IDEM-NONE", 100, "EUR", 1).await;
    let tok = customer_token(Uuid::now_v7());
    let body = json!({"lines": [{"product_id": p["id"], "quantity": 2}]});
    let answers = join_all((0..10).map(|_| {
        answer(
            app.post("/v1/orders", &tok, &body)
                .header("Idempotency-Key", "too-many"),
        )
    }))
    .await;
    for a in &answers {
        a.assert_problem(409, "insufficient_stock");
        assert_eq!(a.body, answers[0].body, "the refusal is replayed as is");
    }
    let c = app.counts().await;
    assert_eq!((c.orders, c.outbox, c.idempotency_keys), (0, 1, 1));
}
