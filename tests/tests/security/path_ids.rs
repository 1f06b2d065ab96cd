//! Path ids whose percent-decoding is not UTF-8 (`%ff%fe`) name nothing: on every route with an
//! id, on both APIs, they are 404 `not_found` problem+json like any other id that is not a UUID
//! (the framework's own answer would be 400 text/plain "Invalid URL").

use ordering_tests::read_app::ReadApp;
use ordering_tests::write_app::{WriteApp, admin_token, answer};
use reqwest::Method;
use serde_json::json;

const BAD: &str = "%ff%fe";

#[tokio::test(flavor = "multi_thread")]
async fn non_utf8_path_ids_are_404_problems_on_the_write_api() {
    let app = WriteApp::start().await;
    let routes = [
        (Method::PATCH, format!("/v1/products/{BAD}"), json!({"name": "x"})),
        (
            Method::POST,
            format!("/v1/products/{BAD}/stock-adjustments"),
            json!({"delta": 1}),
        ),
        (
            Method::POST,
            format!("/v1/orders/{BAD}/pay"),
            json!({"payment_reference": "r"}),
        ),
        (Method::POST, format!("/v1/orders/{BAD}/ship"), json!({})),
        (Method::POST, format!("/v1/orders/{BAD}/cancel"), json!({})),
    ];
    for (method, path, body) in routes {
        let a = answer(app.send(method.clone(), &path, &admin_token(), &body)).await;
        assert_eq!(a.status, 404, "{method} {path}: {}", a.text);
        a.assert_problem(404, "not_found");
    }
    assert_eq!(app.counts().await, Default::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn non_utf8_path_ids_are_404_problems_on_the_read_api() {
    let app = ReadApp::start().await;
    for path in [
        format!("/v1/products/{BAD}"),
        format!("/v1/orders/{BAD}"),
        format!("/v1/customers/{BAD}/orders"),
        format!("/v1/customers/{BAD}/summary"),
    ] {
        let a = answer(app.get(&path).bearer_auth(admin_token())).await;
        assert_eq!(a.status, 404, "{path}: {}", a.text);
        a.assert_problem(404, "not_found");
    }
}
