//! The write-api answers a create and keeps the event in the outbox (harness check).

use ordering_tests::write_app::WriteApp;

#[tokio::test(flavor = "multi_thread")]
async fn creating_a_product_writes_one_outbox_row() {
    let app = WriteApp::start().await;
    let p = app.create_product("smoke-1", 100, "EUR", 5).await;
    assert_eq!(p["version"], 1);
    assert_eq!(app.db.count("outbox").await, 1);
}
