//! Consistency tokens can't be forged, probed or used to exhaust the read-api:
//!
//! - a token the write-api did not sign (or one altered) is 400 `invalid_header` at once;
//! - valid tokens naming versions that never arrive hold no request slot that `/health/*`
//!   needs, and past `CONSISTENCY_MAX_WAITERS` are answered 503 at once with `Retry-After`;
//! - a token bound to another customer names nothing this caller may read: it is answered as
//!   if it were not sent, without waiting;
//! - `GET /v1/products` (lists and searches) honours the token too;
//! - the write-api signs what it issues, bound to the customer whose order it changed (else to
//!   the caller's `sub`), so an admin's token for a customer's order serves that customer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ordering_schema::consistency::{ConsistencyKey, VersionMark};
use ordering_schema::events::AggregateType;
use ordering_tests::read_app::{ReadApp, ReadOptions, order, order_event, product, product_event};
use ordering_tests::write_app::{SECRET, WriteApp, answer, customer_token, issue_consistency_token, token_with};
use serde_json::json;
use uuid::Uuid;

/// What a client could write without the key: the unsigned format of the first tokens.
fn forged(id: Uuid, version: i64) -> String {
    let mut bytes = vec![b'p'];
    bytes.extend_from_slice(id.as_bytes());
    bytes.extend_from_slice(&version.to_be_bytes());
    format!("c1.{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_token_is_refused_at_once() {
    let app = ReadApp::start_with(ReadOptions {
        consistency_wait: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let p = product("FORGE-1", "forged", "d", 100, 1);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let far = 1i64 << 62;
    let mut altered = issue_consistency_token(Uuid::now_v7(), &[(AggregateType::Product, p.id, 1)]).into_bytes();
    // Flip one character of the body (the prefix stays): a different token with no valid MAC.
    let at = altered.len() - 3;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for (what, token) in [("unsigned", forged(p.id, far)), ("altered", altered)] {
        for path in ["/v1/products".to_owned(), format!("/v1/products/{}", p.id)] {
            let started = Instant::now();
            let a = answer(app.get(&path).header("X-Consistency-Token", &token)).await;
            a.assert_problem(400, "invalid_header");
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{what} token on {path} answered after {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_requests_never_starve_health_and_are_bounded() {
    let app = ReadApp::start_with(ReadOptions {
        consistency_wait: Duration::from_secs(6),
        ..Default::default()
    })
    .await;
    let max_waiters = read_api::settings::DEFAULT_MAX_WAITERS;
    let p = product("STARVE-1", "starve", "d", 100, 1);
    app.publish(&product_event(&p)).await;
    app.wait_version("rv_products", p.id, 1).await;
    let token = issue_consistency_token(Uuid::now_v7(), &[(AggregateType::Product, p.id, 1 << 62)]);
    let client = reqwest::Client::builder().pool_max_idle_per_host(1200).build().unwrap();
    let url = app.url(&format!("/v1/products/{}", p.id));
    let sent = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let requests: Vec<_> = (0..1100)
        .map(|_| {
            let req = client.get(&url).header("X-Consistency-Token", &token);
            let answered = answered.clone();
            tokio::spawn(async move {
                let a = answer(req).await;
                answered.fetch_add(1, Ordering::Relaxed);
                (a, sent.elapsed())
            })
        })
        .collect();
    // Until the requests fill the default request limit (1,024): waiting, or already answered.
    let hub = app.state().hub.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.waiting() + answered.load(Ordering::Relaxed) < 1024 {
        assert!(Instant::now() < deadline, "only {} requests waiting", hub.waiting());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Held up behind the waiters would mean answered only once they give up, after 6 s; the
    // bound leaves a loaded machine room and still tells the two apart.
    let not_held = Duration::from_secs(2);
    for path in ["/health/live", "/health/ready"] {
        let started = Instant::now();
        let a = answer(app.get(path)).await;
        let took = started.elapsed();
        assert_eq!(a.status, 200, "{path}: {}", a.text);
        assert!(took < not_held, "{path} took {took:?} behind waiting requests");
    }
    // A request without a token is not held up by them either.
    let started = Instant::now();
    assert_eq!(answer(app.get("/v1/products")).await.status, 200);
    assert!(started.elapsed() < not_held, "took {:?}", started.elapsed());
    let mut refused = 0;
    for r in requests {
        let (a, took) = r.await.unwrap();
        if a.status == 503 && a.code() == "too_many_waiters" {
            refused += 1;
            a.assert_problem(503, "too_many_waiters");
            assert!(a.header("retry-after").is_some(), "no Retry-After: {a:?}");
            assert!(took < Duration::from_secs(3), "refused only after {took:?}");
        } else {
            a.assert_problem(503, "not_yet_consistent");
        }
    }
    assert_eq!(refused, 1100 - max_waiters, "requests beyond the waiter capacity");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_bound_to_another_customer_reveals_nothing() {
    let app = ReadApp::start().await;
    let alice = Uuid::now_v7();
    let bob = Uuid::now_v7();
    let p = product("PROBE-1", "probe", "d", 100, 5);
    app.publish(&product_event(&p)).await;
    let o = order(alice, &[(&p, 1)], ordering_schema::events::now());
    app.publish(&order_event(&o)).await;
    app.wait_version("rv_orders", o.id, 1).await;
    let missing = Uuid::now_v7();
    let bob_bearer = customer_token(bob);
    // Alice's tokens (issued to her): for her order as it is, further on, and for an order not
    // projected yet.
    let alice_tokens = [
        issue_consistency_token(alice, &[(AggregateType::Order, o.id, 1)]),
        issue_consistency_token(alice, &[(AggregateType::Order, o.id, 3)]),
        issue_consistency_token(alice, &[(AggregateType::Order, missing, 1)]),
    ];
    let cases = [
        (format!("/v1/orders/{}", o.id), 404),
        (format!("/v1/orders/{missing}"), 404),
        (format!("/v1/customers/{bob}/orders"), 200),
        (format!("/v1/customers/{bob}/summary"), 200),
    ];
    for (path, status) in &cases {
        let plain = answer(app.get(path).bearer_auth(&bob_bearer)).await;
        assert_eq!(plain.status, *status, "{path}: {}", plain.text);
        for t in &alice_tokens {
            let started = Instant::now();
            let a = answer(app.get(path).bearer_auth(&bob_bearer).header("X-Consistency-Token", t)).await;
            assert_eq!(
                (a.status, a.code(), a.body.get("items"), a.body.get("order_count")),
                (
                    plain.status,
                    plain.code(),
                    plain.body.get("items"),
                    plain.body.get("order_count")
                ),
                "{path} with Alice's token: {}",
                a.text
            );
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{path} with Alice's token waited {:?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn product_lists_and_searches_honour_the_token() {
    let app = ReadApp::start().await;
    let a = answer(
        app.get("/v1/products?search=x")
            .header("X-Consistency-Token", "garbage"),
    )
    .await;
    a.assert_problem(400, "invalid_header");
    let creator = Uuid::now_v7();
    let mut found = 0;
    for i in 0..20 {
        let p = product(&format!("HONOUR-{i}"), &format!("honoured{i}"), "d", 100, 1);
        let token = issue_consistency_token(creator, &[(AggregateType::Product, p.id, 1)]);
        // Read before the event is projected (as a client does right after the create).
        let list = app.get("/v1/products?limit=100").header("X-Consistency-Token", &token);
        let search = app
            .get(&format!("/v1/products?search=honoured{i}"))
            .header("X-Consistency-Token", &token);
        let reads = tokio::spawn(async move { tokio::join!(answer(list), answer(search)) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        app.publish(&product_event(&p)).await;
        let (list, search) = reads.await.unwrap();
        let has = |a: &ordering_tests::write_app::Answer| a.text.contains(&p.id.to_string());
        if has(&list) && has(&search) {
            found += 1;
        }
    }
    assert_eq!(found, 20, "found the new product in {found} of 20 reads");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_write_api_signs_tokens_bound_to_the_orders_customer() {
    let app = WriteApp::start().await;
    let admin = Uuid::now_v7();
    let admin_bearer = token_with(&admin.to_string(), "admin", 600, SECRET);
    let body = json!({"sku": "BOUND-1", "name": "n", "price_cents": 100, "currency": "EUR", "stock": 5});
    let created = answer(app.post("/v1/products", &admin_bearer, &body)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let token = created.consistency_token();
    assert_eq!(token.subject, admin);
    let pid = created.body["id"].as_str().unwrap().to_owned();
    let customer = Uuid::now_v7();
    let placed = app.place_order(&customer_token(customer), None, &[(&pid, 2)]).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    let token = placed.consistency_token();
    assert_eq!(token.subject, customer);
    let oid: Uuid = placed.body["id"].as_str().unwrap().parse().unwrap();
    assert!(token.marks.contains(&VersionMark {
        aggregate: AggregateType::Order,
        id: oid,
        version: 1
    }));
    assert!(token.marks.contains(&VersionMark {
        aggregate: AggregateType::Product,
        id: pid.parse().unwrap(),
        version: 2
    }));
    // Signed with the shared key: with any other, it is not a token.
    let raw = placed.header("x-consistency-token").unwrap();
    assert!(ConsistencyKey::new(b"another-secret-0123456789").verify(raw).is_err());
    // An admin's command on a customer's order: bound to that customer, whose own read of the
    // order must wait for it (the admin hands the token on), not to the admin.
    let for_customer = app.place_order(&admin_bearer, Some(customer), &[(&pid, 1)]).await;
    assert_eq!(for_customer.status, 201, "{}", for_customer.text);
    assert_eq!(for_customer.consistency_token().subject, customer);
}
