//! Money at the write side's limits: no sum the views serve overflows.

use ordering_schema::events::OrderStatus;
use ordering_tests::read_app::{ReadApp, next_order, order, order_event, product};
use ordering_tests::write_app::{answer, customer_token};
use uuid::Uuid;

/// Ten paid orders at the write side's limits (100 lines × 10,000 units × 10^12 cents, each
/// just short of 10^18) sum beyond `i64::MAX`: the summary serves the exact sum.
#[tokio::test(flavor = "multi_thread")]
async fn a_summary_beyond_i64_is_served_exactly() {
    let app = ReadApp::start().await;
    let customer = Uuid::now_v7();
    let catalog: Vec<_> = (0..100)
        .map(|i| product(&format!("BIG-{i}"), "Dear", "d", 1_000_000_000_000, 10_000))
        .collect();
    let mut expected: i128 = 0;
    for k in 0..10 {
        // A price a little off the round figure, so the sum is not a number a float holds.
        let mut products = catalog.clone();
        products[0].price_cents -= 7 * k + 1;
        let lines: Vec<_> = products.iter().map(|p| (p, 10_000)).collect();
        let placed = order(customer, &lines, ordering_schema::events::now());
        let paid = next_order(&placed, OrderStatus::Paid);
        expected += i128::from(paid.total_cents);
        app.publish(&order_event(&placed)).await;
        app.publish(&order_event(&paid)).await;
        app.wait_version("rv_orders", paid.id, 2).await;
    }
    assert!(expected > i128::from(i64::MAX));
    let s = answer(
        app.get(&format!("/v1/customers/{customer}/summary"))
            .bearer_auth(customer_token(customer)),
    )
    .await;
    assert_eq!(s.status, 200, "{}", s.text);
    assert_eq!(s.body["order_count"], 10);
    assert!(
        s.text.contains(&format!("\"spent_cents\":{{\"EUR\":{expected}}}")),
        "expected the exact sum {expected}: {}",
        s.text
    );
}
