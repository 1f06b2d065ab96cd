//! What both APIs' `/docs` must hold without a browser: Swagger UI served from the binary, over
//! the same `/openapi.json` clients use, with an operation id per operation.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::write_app::answer;

/// Checks `/docs` at `base` (e.g. `http://127.0.0.1:1234`) and returns the OpenAPI document.
pub async fn assert_docs_served(client: &reqwest::Client, base: &str) -> Value {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let bare = answer(no_redirects.get(format!("{base}/docs"))).await;
    assert_eq!(bare.status, 303, "{}", bare.text);
    assert_eq!(bare.headers["location"], "/docs/");

    let page = answer(client.get(format!("{base}/docs/"))).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.headers["content-type"].to_str().unwrap().starts_with("text/html"));
    // Vendored: every asset the page loads is served here, none from a CDN.
    assert!(
        !page.text.contains("https://"),
        "the page loads something remote: {}",
        page.text
    );
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
    ] {
        assert!(page.text.contains(asset), "the page does not load {asset}");
        let a = answer(client.get(format!("{base}/docs/{asset}"))).await;
        assert_eq!(a.status, 200, "{asset}");
        assert!(a.text.len() > 10_000, "{asset} is only {} bytes", a.text.len());
    }
    let init = answer(client.get(format!("{base}/docs/swagger-initializer.js"))).await;
    assert_eq!(init.status, 200);
    let config = init.text.replace(' ', "");
    assert!(config.contains("\"url\":\"/openapi.json\""), "{}", init.text);
    assert!(config.contains("\"validatorUrl\":\"none\""), "{}", init.text);

    let doc = answer(client.get(format!("{base}/openapi.json"))).await;
    assert_eq!(doc.status, 200);
    let mut ids = BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }
    doc.body
}
