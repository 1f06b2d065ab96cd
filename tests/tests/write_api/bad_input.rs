//! A table-driven sweep of malformed requests: each gets its exact status and problem `code`
//! as `application/problem+json`, never a 5xx, and leaves every table as it was.

use ordering_tests::write_app::{RowCounts, WriteApp, admin_token, answer, customer_token};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use uuid::Uuid;

enum Body {
    Json(Value),
    /// Raw bytes with an optional content type.
    Raw(Option<&'static str>, Vec<u8>),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Body,
    status: u16,
    code: &'static str,
    /// The `field` of the first entry of `errors`, for 422s that name one.
    field: Option<&'static str>,
}

fn case(name: &'static str, method: Method, path: &str, body: Body, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        headers: vec![],
        body,
        status,
        code,
        field: None,
    }
}

impl Case {
    fn field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }
    fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}

fn good_product() -> Value {
    json!({"sku": "SWEEP-NEW", "name": "n", "description": "d", "price_cents": 100, "currency": "EUR", "stock": 1})
}

fn product_with(key: &str, value: Value) -> Body {
    let mut p = good_product();
    p[key] = value;
    Body::Json(p)
}

fn product_without(key: &str) -> Body {
    let mut p = good_product();
    p.as_object_mut().unwrap().remove(key);
    Body::Json(p)
}

fn order_with_lines(lines: Value) -> Body {
    Body::Json(json!({"customer_id": Uuid::now_v7(), "lines": lines}))
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn cases(pid: &str, oid: &str) -> Vec<Case> {
    use Method as M;
    let products = "/v1/products";
    let product = format!("/v1/products/{pid}");
    let adjust = format!("/v1/products/{pid}/stock-adjustments");
    let orders = "/v1/orders";
    let pay = format!("/v1/orders/{oid}/pay");
    let ship = format!("/v1/orders/{oid}/ship");
    let cancel = format!("/v1/orders/{oid}/cancel");
    let line = |q: Value| json!([{"product_id": pid, "quantity": q}]);
    let raw_json = |s: &str| Body::Raw(Some("application/json"), s.as_bytes().to_vec());
    let good = || Body::Json(good_product());
    let big = {
        let mut p = good_product();
        p["description"] = json!("x".repeat(70_000));
        Body::Json(p)
    };
    vec![
        // Body framing: 400, 413, 415.
        case(
            "truncated JSON",
            M::POST,
            products,
            raw_json(r#"{"sku": "A", "name":"#),
            400,
            "malformed_json",
        ),
        case(
            "trailing garbage",
            M::POST,
            products,
            raw_json(r#"{"sku": "A"} x"#),
            400,
            "malformed_json",
        ),
        case(
            "single quotes",
            M::POST,
            products,
            raw_json("{'sku': 'A'}"),
            400,
            "malformed_json",
        ),
        case(
            "empty body with JSON type",
            M::POST,
            &adjust,
            raw_json(""),
            400,
            "malformed_json",
        ),
        case(
            "invalid UTF-8",
            M::POST,
            products,
            Body::Raw(Some("application/json"), b"{\"sku\": \"\xff\xfe\"}".to_vec()),
            400,
            "malformed_json",
        ),
        case(
            "lone surrogate escape",
            M::POST,
            products,
            raw_json(r#"{"sku": "\ud800"}"#),
            400,
            "malformed_json",
        ),
        case(
            "nesting beyond the parser's depth",
            M::POST,
            products,
            raw_json(&nested(10_000)),
            400,
            "malformed_json",
        ),
        case(
            "text/plain",
            M::POST,
            products,
            Body::Raw(Some("text/plain"), good_product().to_string().into_bytes()),
            415,
            "unsupported_media_type",
        ),
        case(
            "form encoded",
            M::POST,
            orders,
            Body::Raw(Some("application/x-www-form-urlencoded"), b"sku=x".to_vec()),
            415,
            "unsupported_media_type",
        ),
        case(
            "no content type",
            M::PATCH,
            &product,
            Body::Raw(None, br#"{"name": "x"}"#.to_vec()),
            415,
            "unsupported_media_type",
        ),
        case(
            "JSON-like but not JSON type",
            M::POST,
            &adjust,
            Body::Raw(Some("application/jsonx"), br#"{"delta": 1}"#.to_vec()),
            415,
            "unsupported_media_type",
        ),
        case("body over 64 KiB", M::POST, products, big, 413, "payload_too_large"),
        // Shape: 422 naming the field.
        case(
            "JSON array body",
            M::POST,
            products,
            Body::Json(json!([good_product()])),
            422,
            "validation_failed",
        )
        .field("body"),
        case(
            "JSON null body",
            M::POST,
            &adjust,
            Body::Json(Value::Null),
            422,
            "validation_failed",
        )
        .field("body"),
        case(
            "JSON string body",
            M::POST,
            &pay,
            Body::Json(json!("pay")),
            422,
            "validation_failed",
        )
        .field("body"),
        case(
            "nested arrays in a field",
            M::POST,
            products,
            product_with("sku", serde_json::from_str(&nested(100)).unwrap()),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "unknown field",
            M::POST,
            products,
            product_with("color", json!("red")),
            422,
            "validation_failed",
        )
        .field("color"),
        case(
            "unknown field in a line",
            M::POST,
            orders,
            order_with_lines(json!([{"product_id": pid, "quantity": 1, "gift": true}])),
            422,
            "validation_failed",
        )
        .field("lines[0].gift"),
        case(
            "price as a string",
            M::POST,
            products,
            product_with("price_cents", json!("100")),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "price as a float",
            M::POST,
            products,
            product_with("price_cents", json!(1.5)),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "sku as a number",
            M::POST,
            products,
            product_with("sku", json!(42)),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "missing sku",
            M::POST,
            products,
            product_without("sku"),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "missing price",
            M::POST,
            products,
            product_without("price_cents"),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "missing lines",
            M::POST,
            orders,
            Body::Json(json!({"customer_id": Uuid::now_v7()})),
            422,
            "validation_failed",
        )
        .field("lines"),
        case(
            "missing delta",
            M::POST,
            &adjust,
            Body::Json(json!({"reason": "x"})),
            422,
            "validation_failed",
        )
        .field("delta"),
        // Ranges and limits: 422 naming the field.
        case(
            "negative price",
            M::POST,
            products,
            product_with("price_cents", json!(-1)),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "price 2^63",
            M::POST,
            products,
            product_with("price_cents", json!(9_223_372_036_854_775_808u64)),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "price 10^12 + 1",
            M::POST,
            products,
            product_with("price_cents", json!(1_000_000_000_001i64)),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "patch price 10^12 + 1",
            M::PATCH,
            &product,
            Body::Json(json!({"price_cents": 1_000_000_000_001i64})),
            422,
            "validation_failed",
        )
        .field("price_cents"),
        case(
            "stock 10^9 + 1",
            M::POST,
            products,
            product_with("stock", json!(1_000_000_001)),
            422,
            "validation_failed",
        )
        .field("stock"),
        case(
            "negative stock",
            M::POST,
            products,
            product_with("stock", json!(-1)),
            422,
            "validation_failed",
        )
        .field("stock"),
        case(
            "sku with a space",
            M::POST,
            products,
            product_with("sku", json!("A B")),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "sku of 65 chars",
            M::POST,
            products,
            product_with("sku", json!("a".repeat(65))),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "empty sku",
            M::POST,
            products,
            product_with("sku", json!("")),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "non-ASCII sku",
            M::POST,
            products,
            product_with("sku", json!("café")),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "name of 201 chars",
            M::POST,
            products,
            product_with("name", json!("n".repeat(201))),
            422,
            "validation_failed",
        )
        .field("name"),
        case(
            "empty name",
            M::PATCH,
            &product,
            Body::Json(json!({"name": ""})),
            422,
            "validation_failed",
        )
        .field("name"),
        case(
            "description of 2001 chars",
            M::POST,
            products,
            product_with("description", json!("d".repeat(2001))),
            422,
            "validation_failed",
        )
        .field("description"),
        case(
            "NUL in name",
            M::POST,
            products,
            product_with("name", json!("a\u{0}b")),
            422,
            "validation_failed",
        )
        .field("name"),
        case(
            "NUL in sku",
            M::POST,
            products,
            product_with("sku", json!("A\u{0}")),
            422,
            "validation_failed",
        )
        .field("sku"),
        case(
            "NUL in patched description",
            M::PATCH,
            &product,
            Body::Json(json!({"description": "\u{0}"})),
            422,
            "validation_failed",
        )
        .field("description"),
        case(
            "currency eur",
            M::POST,
            products,
            product_with("currency", json!("eur")),
            422,
            "validation_failed",
        )
        .field("currency"),
        case(
            "currency EURO",
            M::POST,
            products,
            product_with("currency", json!("EURO")),
            422,
            "validation_failed",
        )
        .field("currency"),
        case(
            "delta 0",
            M::POST,
            &adjust,
            Body::Json(json!({"delta": 0})),
            422,
            "validation_failed",
        )
        .field("delta"),
        case(
            "delta 10^9 + 1",
            M::POST,
            &adjust,
            Body::Json(json!({"delta": 1_000_000_001})),
            422,
            "validation_failed",
        )
        .field("delta"),
        case(
            "delta -(10^9 + 1)",
            M::POST,
            &adjust,
            Body::Json(json!({"delta": -1_000_000_001})),
            422,
            "validation_failed",
        )
        .field("delta"),
        case(
            "delta as a string",
            M::POST,
            &adjust,
            Body::Json(json!({"delta": "5"})),
            422,
            "validation_failed",
        )
        .field("delta"),
        case(
            "reason of 501 chars",
            M::POST,
            &adjust,
            Body::Json(json!({"delta": 1, "reason": "r".repeat(501)})),
            422,
            "validation_failed",
        )
        .field("reason"),
        case(
            "NUL in reason",
            M::POST,
            &cancel,
            Body::Json(json!({"reason": "a\u{0}"})),
            422,
            "validation_failed",
        )
        .field("reason"),
        case(
            "NUL in payment reference",
            M::POST,
            &pay,
            Body::Json(json!({"payment_reference": "\u{0}"})),
            422,
            "validation_failed",
        )
        .field("payment_reference"),
        case(
            "ship with a field",
            M::POST,
            &ship,
            Body::Json(json!({"carrier": "ups"})),
            422,
            "validation_failed",
        )
        .field("carrier"),
        case(
            "quantity 0",
            M::POST,
            orders,
            order_with_lines(line(json!(0))),
            422,
            "validation_failed",
        )
        .field("lines[0].quantity"),
        case(
            "quantity 10001",
            M::POST,
            orders,
            order_with_lines(line(json!(10_001))),
            422,
            "validation_failed",
        )
        .field("lines[0].quantity"),
        case(
            "negative quantity",
            M::POST,
            orders,
            order_with_lines(line(json!(-5))),
            422,
            "validation_failed",
        )
        .field("lines[0].quantity"),
        case(
            "quantity 2^63",
            M::POST,
            orders,
            order_with_lines(line(json!(9_223_372_036_854_775_808u64))),
            422,
            "validation_failed",
        )
        .field("lines[0].quantity"),
        case(
            "101 lines",
            M::POST,
            orders,
            order_with_lines(Value::Array(
                (0..101)
                    .map(|_| json!({"product_id": Uuid::now_v7(), "quantity": 1}))
                    .collect(),
            )),
            422,
            "validation_failed",
        )
        .field("lines"),
        case(
            "empty lines",
            M::POST,
            orders,
            order_with_lines(json!([])),
            422,
            "validation_failed",
        )
        .field("lines"),
        case(
            "a product twice",
            M::POST,
            orders,
            order_with_lines(json!([{"product_id": pid, "quantity": 1}, {"product_id": pid, "quantity": 2}])),
            422,
            "validation_failed",
        )
        .field("lines[1].product_id"),
        case(
            "product id not a uuid",
            M::POST,
            orders,
            order_with_lines(json!([{"product_id": "p-1", "quantity": 1}])),
            422,
            "validation_failed",
        )
        .field("lines[0].product_id"),
        case(
            "customer id not a uuid",
            M::POST,
            orders,
            Body::Json(json!({"customer_id": "bob", "lines": line(json!(1))})),
            422,
            "validation_failed",
        )
        .field("customer_id"),
        case(
            "lines not an array",
            M::POST,
            orders,
            Body::Json(json!({"customer_id": Uuid::now_v7(), "lines": {"product_id": pid}})),
            422,
            "validation_failed",
        )
        .field("lines"),
        case(
            "patch with no field",
            M::PATCH,
            &product,
            Body::Json(json!({})),
            422,
            "validation_failed",
        ),
        case(
            "patch with only nulls",
            M::PATCH,
            &product,
            Body::Json(json!({"name": null, "price_cents": null})),
            422,
            "validation_failed",
        ),
        // Headers: 400 invalid_header, whatever the body.
        case(
            "If-Match abc",
            M::PATCH,
            &product,
            Body::Json(json!({"name": "x"})),
            400,
            "invalid_header",
        )
        .header("if-match", hv("abc")),
        case(
            "If-Match without quotes",
            M::PATCH,
            &product,
            Body::Json(json!({"name": "x"})),
            400,
            "invalid_header",
        )
        .header("if-match", hv("1")),
        case(
            "If-Match negative",
            M::POST,
            &adjust,
            Body::Json(json!({"delta": 1})),
            400,
            "invalid_header",
        )
        .header("if-match", hv("\"-1\"")),
        case(
            "If-Match W/ unquoted",
            M::POST,
            &pay,
            Body::Json(json!({"payment_reference": "r"})),
            400,
            "invalid_header",
        )
        .header("if-match", hv("W/1")),
        case(
            "If-Match twice",
            M::PATCH,
            &product,
            Body::Json(json!({"name": "x"})),
            400,
            "invalid_header",
        )
        .header("if-match", hv("\"1\""))
        .header("if-match", hv("\"1\"")),
        case(
            "Idempotency-Key of 256 chars",
            M::POST,
            products,
            good(),
            400,
            "invalid_header",
        )
        .header("idempotency-key", hv(&"k".repeat(256))),
        case(
            "Idempotency-Key with a space",
            M::POST,
            products,
            good(),
            400,
            "invalid_header",
        )
        .header("idempotency-key", hv("two words")),
        case(
            "Idempotency-Key non-ASCII",
            M::POST,
            products,
            good(),
            400,
            "invalid_header",
        )
        .header("idempotency-key", HeaderValue::from_bytes("clé".as_bytes()).unwrap()),
        case(
            "Idempotency-Key empty",
            M::POST,
            products,
            good(),
            400,
            "invalid_header",
        )
        .header("idempotency-key", hv("")),
        case(
            "Idempotency-Key with a tab",
            M::POST,
            products,
            good(),
            400,
            "invalid_header",
        )
        .header("idempotency-key", hv("a\tb")),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_their_exact_4xx_problem_and_change_nothing() {
    let app = WriteApp::start().await;
    let p = app.create_product("SWEEP", 100, "EUR", 10).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let customer = Uuid::now_v7();
    let order = app.place_order(&customer_token(customer), None, &[(&pid, 1)]).await;
    assert_eq!(order.status, 201);
    let oid = order.body["id"].as_str().unwrap().to_owned();
    let before: RowCounts = app.counts().await;
    let token = admin_token();

    let cases = cases(&pid, &oid);
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in &cases {
        let mut req = app
            .client
            .request(c.method.clone(), app.url(&c.path))
            .bearer_auth(&token);
        req = match &c.body {
            Body::Json(v) => req.json(v),
            Body::Raw(ct, bytes) => {
                let req = req.body(bytes.clone());
                match ct {
                    Some(ct) => req.header("content-type", *ct),
                    None => req,
                }
            }
        };
        for (name, value) in &c.headers {
            req = req.header(*name, value.clone());
        }
        let a = answer(req).await;
        let got_field = a.body["errors"][0]["field"].as_str();
        let ok = a.status == c.status
            && a.code() == c.code
            && a.content_type().starts_with("application/problem+json")
            && a.body["status"] == c.status
            && c.field.is_none_or(|f| got_field == Some(f));
        if !ok {
            failures.push(format!(
                "{}: want {} {} {:?}, got {} {:?}",
                c.name,
                c.status,
                c.code,
                c.field,
                a.status,
                a.text.chars().take(300).collect::<String>()
            ));
        }
        assert!(a.status < 500, "{} got a {}: {}", c.name, a.status, a.text);
        let now = app.counts().await;
        assert_eq!(now, before, "{} changed the tables", c.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let row = app.product_row(&pid).await;
    assert_eq!(
        (row["stock"].as_i64(), row["version"].as_i64(), row["name"].as_str()),
        (Some(9), Some(2), Some("SWEEP name"))
    );
    assert_eq!(
        app.query_json(&format!("SELECT status, version FROM orders WHERE id = '{oid}'"))
            .await,
        [json!({"status": "placed", "version": 1})]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_of_exactly_64_kib_is_accepted_and_one_byte_more_is_413() {
    let app = WriteApp::start().await;
    let padded = |sku: &str, len: usize| {
        let mut s = json!({"sku": sku, "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}).to_string();
        s.push_str(&" ".repeat(len - s.len()));
        s
    };
    let send = |raw: String| {
        app.client
            .post(app.url("/v1/products"))
            .bearer_auth(admin_token())
            .header("content-type", "application/json")
            .body(raw)
    };
    let a = answer(send(padded("LIMIT-OK", 64 * 1024))).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let before = app.counts().await;
    let a = answer(send(padded("LIMIT-OVER", 64 * 1024 + 1))).await;
    a.assert_problem(413, "payload_too_large");
    assert_eq!(app.counts().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_reports_every_bad_field_at_once() {
    let app = WriteApp::start().await;
    let body = json!({"sku": "", "name": "", "description": "d".repeat(2001), "price_cents": -1, "currency": "eu", "stock": -1});
    let a = answer(app.post("/v1/products", &admin_token(), &body)).await;
    a.assert_problem(422, "validation_failed");
    let mut fields: Vec<&str> = a.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["currency", "description", "name", "price_cents", "sku", "stock"]
    );
    assert_eq!(app.counts().await, RowCounts::default());
}
