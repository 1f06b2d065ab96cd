//! The interactive API docs, used as a person would: headless Chromium opens each API's `/docs`
//! (served by the release binaries, assets vendored, no network), the operations are listed,
//! "Authorize" takes a token, and "create product" executed from the page creates the product.
//! Screenshots are left in `target/test-artifacts/api-docs/`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use ordering_tests::browser::{Browser, artifact_dir, wait_for};
use ordering_tests::pipeline::{Pipeline, PipelineOptions};
use ordering_tests::write_app::admin_token;

/// The answer Swagger UI shows after "Execute" (the table's body row, not its header).
const LIVE_RESPONSE: &str = "#operations-catalog-create_product .live-responses-table tbody";

/// The ids Swagger UI gives the operations on the page (`operations-<tag>-<operationId>`).
async fn operations_listed(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    for op in client.find_all(Locator::Css(".opblock")).await.expect("operations") {
        ids.push(op.attr("id").await.expect("id").unwrap_or_default());
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn api_docs_in_the_browser_authorise_and_create_a_product() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let dir = artifact_dir("api-docs");
    let browser = Browser::start(&dir).await;
    let client = &browser.client;

    // The write-api's page lists every command.
    client.goto(&p.write_api.url("/docs")).await.expect("open /docs");
    wait_for(client, "#operations-catalog-create_product").await;
    assert_eq!(
        operations_listed(client).await,
        [
            "operations-catalog-adjust_stock",
            "operations-catalog-create_product",
            "operations-catalog-update_product",
            "operations-orders-cancel_order",
            "operations-orders-pay_order",
            "operations-orders-place_order",
            "operations-orders-ship_order",
        ]
    );

    // Authorise with an admin token through the "Authorize" dialog.
    wait_for(client, ".auth-wrapper button.authorize")
        .await
        .click()
        .await
        .expect("open Authorize");
    let input = wait_for(client, ".modal-ux input").await;
    input.send_keys(&admin_token()).await.expect("type the token");
    wait_for(client, ".modal-ux .auth-btn-wrapper button.authorize")
        .await
        .click()
        .await
        .expect("authorise");
    wait_for(client, ".modal-ux button.btn-done")
        .await
        .click()
        .await
        .expect("close the dialog");

    // "Create product", executed from the page with the example body the document gives.
    wait_for(client, "#operations-catalog-create_product .opblock-summary-control")
        .await
        .click()
        .await
        .expect("expand create product");
    let body = wait_for(client, "#operations-catalog-create_product textarea.body-param__text").await;
    let example = body.prop("value").await.expect("body").unwrap_or_default();
    assert!(
        example.contains("WIDGET-1"),
        "the request body is not prefilled with the example: {example}"
    );
    wait_for(client, "#operations-catalog-create_product button.execute")
        .await
        .click()
        .await
        .expect("execute");
    let status = wait_for(client, &format!("{LIVE_RESPONSE} .response-col_status"))
        .await
        .text()
        .await
        .expect("status text");
    client
        .execute(
            &format!("document.querySelector('{LIVE_RESPONSE}').scrollIntoView()"),
            vec![],
        )
        .await
        .expect("scroll to the answer");
    let shot = browser.screenshot(&dir, "write-api-create-product").await;
    assert_eq!(
        status.trim(),
        "201",
        "create product from /docs answered {status}; screenshot {}",
        shot.display()
    );
    let answer = wait_for(client, &format!("{LIVE_RESPONSE} .response-col_description"))
        .await
        .text()
        .await
        .expect("response body");
    assert!(answer.contains("\"sku\": \"WIDGET-1\""), "{answer}");

    // The product exists for real: the read side shows it once the event has flowed.
    let mut found = None;
    for _ in 0..100 {
        let (status, page) = p.read_get("/v1/products?search=Widget").await;
        if status == 200 && page["items"].as_array().is_some_and(|items| !items.is_empty()) {
            found = Some(page["items"][0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = found.expect("the product created from /docs never reached the read-api");
    assert_eq!(found["sku"], "WIDGET-1");

    // The read-api's page lists every query.
    client
        .goto(&p.read().url("/docs"))
        .await
        .expect("open the read-api's /docs");
    wait_for(client, "#operations-catalog-list_products").await;
    assert_eq!(
        operations_listed(client).await,
        [
            "operations-catalog-get_product",
            "operations-catalog-list_products",
            "operations-customers-customer_summary",
            "operations-customers-list_orders",
            "operations-orders-get_order",
        ]
    );
    browser.screenshot(&dir, "read-api-docs").await;
    browser.close().await;
}
