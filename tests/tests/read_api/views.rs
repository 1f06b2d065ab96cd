//! The read endpoints against views built by the projector from published events: every
//! endpoint and filter, cursors, auth, validation, ops endpoints.

use std::time::Duration;

use ordering_schema::events::OrderStatus;
use ordering_tests::api_docs::assert_docs_served;
use ordering_tests::read_app::{ReadApp, next_order, next_product, order, order_event, product, product_event};
use ordering_tests::write_app::{Answer, admin_token, answer, customer_token};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn product_view_list_filters_sorts_and_pages() {
    let app = ReadApp::start().await;
    let kettle = product("KET-1", "Steel kettle", "boils water fast", 2599, 10);
    let mug = product("MUG-1", "Blue mug", "holds tea", 899, 0);
    let pot = product("POT-1", "Tea pot", "a kettle's friend", 1500, 3);
    for p in [&kettle, &mug, &pot] {
        app.publish(&product_event(p)).await;
    }
    let kettle2 = next_product(&kettle, |p| p.stock = 8);
    app.publish(&product_event(&kettle2)).await;
    app.wait_version("rv_products", kettle.id, 2).await;
    app.wait_version("rv_products", pot.id, 1).await;
    app.wait_version("rv_products", mug.id, 1).await;

    let one = answer(app.get(&format!("/v1/products/{}", kettle.id))).await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["stock"], 8);
    assert_eq!(one.body["version"], 2);
    assert_eq!(one.body["sku"], "KET-1");
    assert_eq!(one.header("etag"), Some("\"2\""));

    let ids = |a: &Answer| -> Vec<String> {
        a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = answer(app.get("/v1/products")).await;
    assert_eq!(
        ids(&all),
        vec![mug.id.to_string(), kettle.id.to_string(), pot.id.to_string()],
        "name order"
    );
    assert!(all.body["next_cursor"].is_null());
    let search = answer(app.get("/v1/products?search=KETTLE")).await;
    assert_eq!(
        ids(&search),
        vec![kettle.id.to_string(), pot.id.to_string()],
        "search in name and description"
    );
    let both = answer(app.get("/v1/products?search=steel%20water")).await;
    assert_eq!(ids(&both), vec![kettle.id.to_string()], "every term must match");
    let cheap = answer(app.get("/v1/products?max_price=1500&sort=price")).await;
    assert_eq!(ids(&cheap), vec![mug.id.to_string(), pot.id.to_string()]);
    let dear = answer(app.get("/v1/products?min_price=1000&sort=-price")).await;
    assert_eq!(ids(&dear), vec![kettle.id.to_string(), pot.id.to_string()]);
    let stocked = answer(app.get("/v1/products?in_stock=true&sort=price")).await;
    assert_eq!(ids(&stocked), vec![pot.id.to_string(), kettle.id.to_string()]);
    let out = answer(app.get("/v1/products?in_stock=false")).await;
    assert_eq!(ids(&out), vec![mug.id.to_string()]);
    let pct = answer(app.get("/v1/products?search=%25")).await;
    assert!(ids(&pct).is_empty(), "% is a literal, not a wildcard");

    // Pages of one, by price, across all three.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/products?sort=price&limit=1".to_owned(),
            Some(c) => format!("/v1/products?sort=price&limit=1&cursor={c}"),
        };
        let page = answer(app.get(&path)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(ids(&page));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![mug.id.to_string(), pot.id.to_string(), kettle.id.to_string()]
    );

    // A cursor issued for one query is refused for another, and forgeries are refused.
    let first = answer(app.get("/v1/products?sort=price&limit=1")).await;
    let c = first.body["next_cursor"].as_str().unwrap().to_owned();
    answer(app.get(&format!("/v1/products?sort=name&limit=1&cursor={c}")))
        .await
        .assert_problem(422, "validation_failed");
    answer(app.get("/v1/products?cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .await
        .assert_problem(422, "validation_failed");

    for bad in [
        "limit=0",
        "limit=1000",
        "limit=x",
        "sort=colour",
        "in_stock=yes",
        "min_price=-1",
        "colour=red",
        "limit=1&limit=2",
    ] {
        let a = answer(app.get(&format!("/v1/products?{bad}"))).await;
        a.assert_problem(422, "validation_failed");
        assert!(
            a.body["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "{bad}: {}",
            a.text
        );
    }
    answer(app.get("/v1/products/not-a-uuid"))
        .await
        .assert_problem(404, "not_found");
    answer(app.get(&format!("/v1/products/{}", Uuid::now_v7())))
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn order_view_history_and_privacy() {
    let app = ReadApp::start().await;
    let customer = Uuid::now_v7();
    let p = product("A-1", "A", "a", 1000, 5);
    let placed = order(customer, &[(&p, 2)], ordering_schema::events::now());
    let paid = next_order(&placed, OrderStatus::Paid);
    let shipped = next_order(&paid, OrderStatus::Shipped);
    for o in [&placed, &paid, &shipped] {
        app.publish(&order_event(o)).await;
    }
    app.wait_version("rv_orders", placed.id, 3).await;
    let path = format!("/v1/orders/{}", placed.id);
    let mine = answer(app.get(&path).bearer_auth(customer_token(customer))).await;
    assert_eq!(mine.status, 200, "{}", mine.text);
    assert_eq!(mine.body["status"], "shipped");
    assert_eq!(mine.body["total_cents"], 2000);
    assert_eq!(mine.body["lines"][0]["quantity"], 2);
    let history: Vec<&str> = mine.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["placed", "paid", "shipped"]);
    let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(mine.body["history"][1]["at"].clone()).unwrap();
    assert_eq!(at, paid.updated_at, "history[].at is the event's time");
    assert_eq!(mine.header("etag"), Some("\"3\""));

    assert_eq!(answer(app.get(&path).bearer_auth(admin_token())).await.status, 200);
    answer(app.get(&path)).await.assert_problem(401, "unauthorized");
    answer(app.get(&path).bearer_auth(customer_token(Uuid::now_v7())))
        .await
        .assert_problem(404, "not_found");
    answer(app.get("/v1/orders/nope").bearer_auth(admin_token()))
        .await
        .assert_problem(404, "not_found");
    answer(app.get(&format!("/v1/customers/{customer}/orders")))
        .await
        .assert_problem(401, "unauthorized");
    answer(
        app.get(&format!("/v1/customers/{customer}/orders"))
            .bearer_auth(customer_token(Uuid::now_v7())),
    )
    .await
    .assert_problem(404, "not_found");
    answer(
        app.get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(customer_token(Uuid::now_v7())),
    )
    .await
    .assert_problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_list_newest_first_pages_stay_stable_under_inserts_and_summary_adds_up() {
    let app = ReadApp::start().await;
    let customer = Uuid::now_v7();
    let token = customer_token(customer);
    let eur = product("E-1", "E", "e", 1000, 100);
    let mut usd = product("U-1", "U", "u", 700, 100);
    usd.currency = "USD".into();
    let base = ordering_schema::events::now() - chrono::Duration::minutes(10);
    let mut orders = Vec::new();
    for i in 0..7 {
        let p = if i == 6 { &usd } else { &eur };
        let mut o = order(customer, &[(p, 1 + i)], base + chrono::Duration::seconds(i));
        o.currency = p.currency.clone();
        app.publish(&order_event(&o)).await;
        orders.push(o);
    }
    // Order 0 paid, order 1 shipped, order 2 cancelled, order 6 (USD) paid.
    let paid0 = next_order(&orders[0], OrderStatus::Paid);
    let paid1 = next_order(&orders[1], OrderStatus::Paid);
    let shipped1 = next_order(&paid1, OrderStatus::Shipped);
    let cancelled2 = next_order(&orders[2], OrderStatus::Cancelled);
    let paid6 = next_order(&orders[6], OrderStatus::Paid);
    for o in [&paid0, &paid1, &shipped1, &cancelled2, &paid6] {
        app.publish(&order_event(o)).await;
    }
    for (o, v) in [
        (&orders[0], 2),
        (&orders[1], 3),
        (&orders[2], 2),
        (&orders[6], 2),
        (&orders[5], 1),
        (&orders[4], 1),
        (&orders[3], 1),
    ] {
        app.wait_version("rv_orders", o.id, v).await;
    }

    let list = |path: String| {
        let req = app.get(&path).bearer_auth(&token);
        async move { answer(req).await }
    };
    // Page through two at a time, inserting a newer order after the first page: the pages
    // after it neither repeat nor skip anything.
    let first = list(format!("/v1/customers/{customer}/orders?limit=2")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let mut seen: Vec<String> = first.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    let newest = order(customer, &[(&eur, 1)], ordering_schema::events::now());
    app.publish(&order_event(&newest)).await;
    app.wait_version("rv_orders", newest.id, 1).await;
    let mut cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    loop {
        let page = list(format!("/v1/customers/{customer}/orders?limit=2&cursor={cursor}")).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = orders.iter().rev().map(|o| o.id.to_string()).collect();
    assert_eq!(seen, expected, "newest first, each exactly once");

    let all = list(format!("/v1/customers/{customer}/orders?limit=100")).await;
    let items = all.body["items"].as_array().unwrap();
    assert_eq!(items[0]["id"], newest.id.to_string());
    let item = items.iter().find(|o| o["id"] == orders[1].id.to_string()).unwrap();
    assert_eq!(item["status"], "shipped");
    assert_eq!(item["item_count"], 2);
    assert_eq!(item["total_cents"], 2000);
    for key in [
        "id",
        "status",
        "total_cents",
        "currency",
        "item_count",
        "created_at",
        "updated_at",
    ] {
        assert!(item.get(key).is_some(), "list item lacks {key}");
    }
    let paid = list(format!("/v1/customers/{customer}/orders?status=paid")).await;
    let paid_ids: Vec<&str> = paid.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(paid_ids, [orders[6].id.to_string(), orders[0].id.to_string()]);
    list(format!("/v1/customers/{customer}/orders?status=lost"))
        .await
        .assert_problem(422, "validation_failed");
    // A cursor of this customer's list is refused for another's (as an admin, to get that far).
    let other = Uuid::now_v7();
    let foreign = answer(
        app.get(&format!("/v1/customers/{other}/orders?cursor={cursor}"))
            .bearer_auth(admin_token()),
    )
    .await;
    foreign.assert_problem(422, "validation_failed");

    let s = list(format!("/v1/customers/{customer}/summary")).await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["customer_id"], customer.to_string());
    assert_eq!(s.body["order_count"], 8);
    // Open: placed (3, 4, 5, newest) and paid (0, 6).
    assert_eq!(s.body["open_order_count"], 6);
    assert_eq!(
        s.body["spent_cents"],
        serde_json::json!({"EUR": 1000 + 2000, "USD": 700 * 7})
    );
    assert!(s.body["last_order_at"].is_string());
    let admin = answer(
        app.get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(admin_token()),
    )
    .await;
    assert_eq!(admin.body, s.body);
    let nobody = answer(
        app.get(&format!("/v1/customers/{other}/summary"))
            .bearer_auth(admin_token()),
    )
    .await;
    assert_eq!(nobody.body["order_count"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_endpoints_and_openapi() {
    let app = ReadApp::start().await;
    let live = answer(app.get("/health/live")).await;
    assert_eq!(live.status, 200);
    let ready = answer(app.get("/health/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["dependencies"]["postgres"]["ok"], true);
    let doc = assert_docs_served(&app.client, &app.url("")).await;
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/products",
        "/v1/products/{id}",
        "/v1/orders/{id}",
        "/v1/customers/{customer_id}/orders",
        "/v1/customers/{customer_id}/summary",
    ] {
        assert!(paths.contains_key(p), "openapi lacks {p}");
    }
    let p = product("M-1", "M", "m", 1, 1);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let metrics = app.metrics().await;
    for name in ["read_events_applied_total", "read_projection_lag_seconds"] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
}
