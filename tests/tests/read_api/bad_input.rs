//! A table-driven sweep of malformed requests over every read-api endpoint: bad query
//! parameters, ids that are not UUIDs, forged, garbled and other-query cursors, malformed
//! `X-Consistency-Token` and `Authorization` headers, wrong methods and unknown paths. Each
//! gets its exact status and problem `code` as `application/problem+json`; nothing gets a 5xx.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ordering_schema::consistency::{ConsistencyKey, ConsistencyToken, VersionMark};
use ordering_schema::events::{AggregateType, OrderStatus, ProductData};
use ordering_tests::read_app::{ReadApp, next_order, order, order_event, product, product_event};
use ordering_tests::write_app::{
    Answer, SECRET, admin_token, answer, customer_token, issue_consistency_token, token_with,
};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::json;
use uuid::Uuid;

/// What a case must answer.
#[derive(Clone, Debug)]
enum Want {
    /// A problem+json of this status and code (and first `errors[].field`, if given).
    Problem(u16, &'static str, Option<&'static str>),
    /// Either a 200 or a 422 `validation_failed`, for inputs the contract leaves open.
    OkOr422,
}

struct Case {
    name: String,
    method: Method,
    path: String,
    token: Option<String>,
    headers: Vec<(&'static str, HeaderValue)>,
    want: Want,
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}

/// A case with an admin token.
fn get(name: impl Into<String>, path: impl Into<String>, want: Want) -> Case {
    Case {
        name: name.into(),
        method: Method::GET,
        path: path.into(),
        token: Some(admin_token()),
        headers: vec![],
        want,
    }
}

fn p422(field: &'static str) -> Want {
    Want::Problem(422, "validation_failed", Some(field))
}

const P404: Want = Want::Problem(404, "not_found", None);
const P400H: Want = Want::Problem(400, "invalid_header", None);
const P401: Want = Want::Problem(401, "unauthorized", None);

impl Case {
    fn header(mut self, name: &'static str, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
    fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
}

fn consistency(marks: Vec<VersionMark>) -> String {
    let marks: Vec<_> = marks.iter().map(|m| (m.aggregate, m.id, m.version)).collect();
    issue_consistency_token(Uuid::now_v7(), &marks)
}

fn bad_consistency_tokens() -> Vec<(&'static str, HeaderValue)> {
    let mark = |v| VersionMark {
        aggregate: AggregateType::Product,
        id: Uuid::now_v7(),
        version: v,
    };
    vec![
        ("garbage", hv("garbage")),
        ("empty", hv("")),
        ("prefix only", hv("c2.")),
        ("bad base64", hv("c2.!!!!")),
        (
            "old unsigned format",
            hv("c1.cAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ),
        ("signed with another key", {
            let t = ConsistencyToken {
                subject: Uuid::now_v7(),
                marks: vec![mark(1)],
            };
            hv(&ConsistencyKey::new(b"another-secret-0123456789").sign(&t))
        }),
        ("truncated mark", hv(&consistency(vec![mark(1)])[..20])),
        ("version 0", hv(&consistency(vec![mark(0)]))),
        ("negative version", hv(&consistency(vec![mark(-5)]))),
        ("102 marks", hv(&consistency((0..102).map(|_| mark(1)).collect()))),
        ("huge", hv(&format!("c2.{}", "A".repeat(8000)))),
        ("unsigned mark", {
            let mut bytes = vec![0; 32];
            bytes.push(b'p');
            bytes.extend_from_slice(Uuid::now_v7().as_bytes());
            bytes.extend_from_slice(&1i64.to_be_bytes());
            hv(&format!("c2.{}", URL_SAFE_NO_PAD.encode(bytes)))
        }),
        (
            "non-ASCII bytes",
            HeaderValue::from_bytes("c2.é".as_bytes()).expect("bytes"),
        ),
    ]
}

fn bad_authorizations() -> Vec<(&'static str, Option<HeaderValue>)> {
    let sub = Uuid::now_v7().to_string();
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let claims = json!({"sub": sub, "role": "admin", "exp": chrono::Utc::now().timestamp() + 600}).to_string();
    let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims));
    let rs256 = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","typ":"JWT"}"#),
        b64(&claims),
        b64("not-a-signature")
    );
    vec![
        ("missing", None),
        ("empty", Some(hv(""))),
        ("Bearer and nothing", Some(hv("Bearer "))),
        ("Basic", Some(hv("Basic YWRtaW46YWRtaW4="))),
        ("token without scheme", Some(hv(&admin_token()))),
        ("garbage", Some(hv("Bearer not.a.jwt"))),
        ("alg none", Some(hv(&format!("Bearer {none}")))),
        ("RS256 header", Some(hv(&format!("Bearer {rs256}")))),
        (
            "expired beyond the skew",
            Some(hv(&format!("Bearer {}", token_with(&sub, "admin", -120, SECRET)))),
        ),
        (
            "other secret",
            Some(hv(&format!(
                "Bearer {}",
                token_with(&sub, "admin", 600, "another-secret-0123456789abcdef")
            ))),
        ),
        (
            "unknown role",
            Some(hv(&format!("Bearer {}", token_with(&sub, "root", 600, SECRET)))),
        ),
        (
            "sub not a UUID",
            Some(hv(&format!("Bearer {}", token_with("alice", "admin", 600, SECRET)))),
        ),
        (
            "non-UTF-8 bytes",
            Some(HeaderValue::from_bytes(b"Bearer \xff\xfe").expect("bytes")),
        ),
    ]
}

struct Fixture {
    customer: Uuid,
    other_customer: Uuid,
    pid: Uuid,
    oid: Uuid,
    other_oid: Uuid,
    /// A real next_cursor of `GET /v1/products?limit=1` (sort by name).
    name_cursor: String,
    /// A real next_cursor of `GET /v1/products?limit=1&sort=price`.
    price_cursor: String,
    /// A real next_cursor of the customer's order list (limit 1).
    orders_cursor: String,
}

async fn fixture(app: &ReadApp) -> Fixture {
    let customer = Uuid::now_v7();
    let other_customer = Uuid::now_v7();
    let products: Vec<ProductData> = (0..3)
        .map(|i| product(&format!("BAD-{i}"), &format!("bad input {i}"), "d", 100 + i, 5))
        .collect();
    for p in &products {
        app.publish(&product_event(p)).await;
    }
    let now = ordering_schema::events::now();
    let o1 = order(customer, &[(&products[0], 1)], now - chrono::TimeDelta::seconds(10));
    let o2 = order(customer, &[(&products[1], 2)], now);
    let o3 = order(other_customer, &[(&products[2], 1)], now);
    for o in [&o1, &o2, &o3] {
        app.publish(&order_event(o)).await;
    }
    let paid = next_order(&o1, OrderStatus::Paid);
    app.publish(&order_event(&paid)).await;
    for p in &products {
        app.wait_version("rv_products", p.id, 1).await;
    }
    app.wait_version("rv_orders", o1.id, 2).await;
    app.wait_version("rv_orders", o2.id, 1).await;
    app.wait_version("rv_orders", o3.id, 1).await;
    let cursor_of = |a: Answer| {
        assert_eq!(a.status, 200, "{}", a.text);
        a.body["next_cursor"]
            .as_str()
            .unwrap_or_else(|| panic!("no next_cursor in {}", a.text))
            .to_owned()
    };
    let name_cursor = cursor_of(answer(app.get("/v1/products?limit=1")).await);
    let price_cursor = cursor_of(answer(app.get("/v1/products?limit=1&sort=price")).await);
    let orders_cursor = cursor_of(
        answer(
            app.get(&format!("/v1/customers/{customer}/orders?limit=1"))
                .bearer_auth(admin_token()),
        )
        .await,
    );
    Fixture {
        customer,
        other_customer,
        pid: products[0].id,
        oid: o1.id,
        other_oid: o3.id,
        name_cursor,
        price_cursor,
        orders_cursor,
    }
}

fn cases(f: &Fixture) -> Vec<Case> {
    let c = f.customer;
    let list = format!("/v1/customers/{c}/orders");
    let summary = format!("/v1/customers/{c}/summary");
    let order = format!("/v1/orders/{}", f.oid);
    let product = format!("/v1/products/{}", f.pid);
    let mut cases = vec![];

    // --- limit, on both lists.
    for base in ["/v1/products".to_owned(), list.clone()] {
        for bad in ["0", "101", "abc", "-1", "1.5", "", "1e2", "99999999999999999999", "%00"] {
            cases.push(get(
                format!("{base} limit={bad}"),
                format!("{base}?limit={bad}"),
                p422("limit"),
            ));
        }
        cases.push(get(
            format!("{base} limit twice"),
            format!("{base}?limit=1&limit=2"),
            p422("limit"),
        ));
        cases.push(get(
            format!("{base} unknown param"),
            format!("{base}?colour=red"),
            p422("colour"),
        ));
        cases.push(get(
            format!("{base} unknown param with odd unicode"),
            format!("{base}?%E2%80%AEcolour=1"),
            p422("\u{202e}colour"),
        ));
        for (what, cursor) in [
            ("garbage", "garbage".to_owned()),
            ("empty", String::new()),
            ("not base64", "!!!!".to_owned()),
            ("overlong", "A".repeat(5000)),
            ("forged mac", {
                let mut b = vec![0u8; 16];
                b.extend_from_slice(br#"[[1,"x"],"00000000-0000-0000-0000-000000000000"]"#);
                URL_SAFE_NO_PAD.encode(b)
            }),
            ("truncated", f.name_cursor[..f.name_cursor.len() - 3].to_owned()),
            ("with NUL", format!("{}%00", f.name_cursor)),
        ] {
            cases.push(get(
                format!("{base} cursor {what}"),
                format!("{base}?cursor={cursor}"),
                p422("cursor"),
            ));
        }
    }

    // --- product list filters.
    let products = |q: &str| format!("/v1/products?{q}");
    for (q, field) in [
        ("min_price=-1", "min_price"),
        ("max_price=-1", "max_price"),
        ("min_price=1000000000001", "min_price"),
        ("max_price=99999999999999999999999", "max_price"),
        ("min_price=abc", "min_price"),
        ("min_price=1.5", "min_price"),
        ("min_price=", "min_price"),
        ("max_price=1e3", "max_price"),
        ("in_stock=yes", "in_stock"),
        ("in_stock=1", "in_stock"),
        ("in_stock=TRUE", "in_stock"),
        ("sort=random", "sort"),
        ("sort=-name", "sort"),
        ("sort=PRICE", "sort"),
        ("sort=price%00", "sort"),
        ("search=a%00b", "search"),
        ("min_price=1&min_price=2", "min_price"),
    ] {
        cases.push(get(format!("products {q}"), products(q), p422(field)));
    }
    cases.push(get(
        "products search of 201 chars",
        products(&format!("search={}", "s".repeat(201))),
        p422("search"),
    ));
    cases.push(get(
        "products search of 201 emoji",
        products(&format!("search={}", "%F0%9F%98%80".repeat(201))),
        p422("search"),
    ));
    cases.push(get(
        "products search of 11 terms",
        products(&format!("search={}", ["t"; 11].join("+"))),
        p422("search"),
    ));
    // A cursor issued for another query (sort, filters, or the customers' list).
    cases.push(get(
        "products name cursor with sort=price",
        products(&format!("sort=price&cursor={}", f.name_cursor)),
        p422("cursor"),
    ));
    cases.push(get(
        "products price cursor with sort=name",
        products(&format!("cursor={}", f.price_cursor)),
        p422("cursor"),
    ));
    cases.push(get(
        "products cursor with another filter",
        products(&format!("min_price=1&cursor={}", f.name_cursor)),
        p422("cursor"),
    ));
    cases.push(get(
        "products cursor with another search",
        products(&format!("search=bad&cursor={}", f.name_cursor)),
        p422("cursor"),
    ));
    cases.push(get(
        "products given an orders cursor",
        products(&format!("cursor={}", f.orders_cursor)),
        p422("cursor"),
    ));
    // Contract leaves these open: an empty page or a 422, never a 5xx.
    for q in [
        "min_price=500&max_price=100",
        "search=%E2%80%AE%D7%A9%D7%9C%D7%95%D7%9D",
        "search=e%CC%81%CC%81%CC%81",
        "search=%F0%9F%98%80%F0%9F%91%A9%E2%80%8D%F0%9F%91%A9%E2%80%8D%F0%9F%91%A7",
        "search=%25%5F%5C",
        "search=%27%3B+DROP+TABLE+rv_products%3B--",
        "search=%FF%FE",
        "search=%EF%BB%BF",
        "max_price=0",
        "min_price=1000000000000",
    ] {
        cases.push(get(format!("products {q}"), products(q), Want::OkOr422));
    }

    // --- the customer's order list.
    for (q, field) in [
        ("status=lost", "status"),
        ("status=PAID", "status"),
        ("status=", "status"),
        ("status=paid%00", "status"),
        ("status=paid&status=placed", "status"),
    ] {
        cases.push(get(format!("orders {q}"), format!("{list}?{q}"), p422(field)));
    }
    cases.push(get(
        "orders cursor with another status",
        format!("{list}?status=paid&cursor={}", f.orders_cursor),
        p422("cursor"),
    ));
    cases.push(get(
        "orders cursor for another customer",
        format!("/v1/customers/{}/orders?cursor={}", f.other_customer, f.orders_cursor),
        p422("cursor"),
    ));
    cases.push(get(
        "orders given a products cursor",
        format!("{list}?cursor={}", f.name_cursor),
        p422("cursor"),
    ));

    // --- ids that are not UUIDs: 404 not_found everywhere.
    for bad in [
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
        "%00",
        "%E2%80%AE",
        "%F0%9F%98%80",
        "..%2F..%2Fetc%2Fpasswd",
        "'%20OR%201=1",
    ] {
        cases.push(get(format!("product id {bad}"), format!("/v1/products/{bad}"), P404));
        cases.push(get(format!("order id {bad}"), format!("/v1/orders/{bad}"), P404));
        cases.push(get(
            format!("customer id {bad} (list)"),
            format!("/v1/customers/{bad}/orders"),
            P404,
        ));
        cases.push(get(
            format!("customer id {bad} (summary)"),
            format!("/v1/customers/{bad}/summary"),
            P404,
        ));
    }
    let long = "a".repeat(3000);
    cases.push(get("product id of 3000 chars", format!("/v1/products/{long}"), P404));
    cases.push(get("order id of 3000 chars", format!("/v1/orders/{long}"), P404));
    // Unknown but well-formed ids.
    cases.push(get("unknown product", format!("/v1/products/{}", Uuid::now_v7()), P404));
    cases.push(get("unknown order", format!("/v1/orders/{}", Uuid::now_v7()), P404));

    // --- another customer's data, with a customer token: 404 (existence not revealed).
    let mine = Some(customer_token(c));
    cases.push(get("another customer's order", format!("/v1/orders/{}", f.other_oid), P404).token(mine.clone()));
    cases.push(
        get(
            "another customer's list",
            format!("/v1/customers/{}/orders", f.other_customer),
            P404,
        )
        .token(mine.clone()),
    );
    cases.push(
        get(
            "another customer's summary",
            format!("/v1/customers/{}/summary", f.other_customer),
            P404,
        )
        .token(mine),
    );

    // --- X-Consistency-Token: 400 invalid_header on every endpoint that reads it.
    for path in [
        "/v1/products?search=x".to_owned(),
        product.clone(),
        order.clone(),
        list.clone(),
        summary.clone(),
    ] {
        for (what, value) in bad_consistency_tokens() {
            cases.push(
                get(format!("{path} consistency token {what}"), path.clone(), P400H)
                    .header("x-consistency-token", value),
            );
        }
    }

    // --- Authorization: 401 on every customer-scoped read.
    for path in [order.clone(), list.clone(), summary.clone()] {
        for (what, value) in bad_authorizations() {
            let mut c = get(format!("{path} authorization {what}"), path.clone(), P401).token(None);
            if let Some(v) = value {
                c = c.header("authorization", v);
            }
            cases.push(c);
        }
    }

    // --- wrong methods: 405 with a problem body (and Allow); unknown paths 404.
    for path in ["/v1/products".to_owned(), product, order, list, summary] {
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            cases.push(
                get(
                    format!("{m} {path}"),
                    path.clone(),
                    Want::Problem(405, "method_not_allowed", None),
                )
                .method(m),
            );
        }
    }
    for path in [
        "/v1/nothing",
        "/v1/products/x/y",
        "/v2/products",
        "/v1/customers",
        "/v1/orders",
    ] {
        cases.push(get(format!("unknown path {path}"), path, P404));
    }
    cases
}

async fn run(app: &ReadApp, c: &Case) -> Result<(), String> {
    let mut req = app.client.request(c.method.clone(), app.url(&c.path));
    if let Some(t) = &c.token {
        req = req.bearer_auth(t);
    }
    for (name, value) in &c.headers {
        req = req.header(*name, value.clone());
    }
    let a = answer(req.timeout(Duration::from_secs(10))).await;
    if a.status >= 500 {
        return Err(format!("{}: got a {}: {}", c.name, a.status, a.text));
    }
    let ok = match &c.want {
        Want::Problem(status, code, field) => {
            a.status == *status
                && a.code() == *code
                && a.content_type().starts_with("application/problem+json")
                && a.body["status"] == *status
                && ["type", "title", "detail"].iter().all(|k| a.body[k].is_string())
                && field.is_none_or(|f| a.body["errors"][0]["field"].as_str() == Some(f))
                && (*status != 405 || a.header("allow").is_some())
        }
        Want::OkOr422 => {
            (a.status == 200 && a.body["items"].is_array())
                || (a.status == 422
                    && a.code() == "validation_failed"
                    && a.content_type().starts_with("application/problem+json"))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{}: want {:?}, got {} {:?}",
            c.name,
            c.want,
            a.status,
            a.text.chars().take(300).collect::<String>()
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_malformed_read_gets_its_exact_4xx_problem_and_never_a_5xx() {
    let app = ReadApp::start().await;
    let f = fixture(&app).await;
    let cases = cases(&f);
    assert!(cases.len() >= 200, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = run(&app, c).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The valid requests still work after the sweep.
    let a = answer(app.get(&format!("/v1/products/{}", f.pid))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = answer(
        app.get(&format!("/v1/orders/{}", f.oid))
            .bearer_auth(customer_token(f.customer)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["status"], "paid");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_cursor_pages_and_a_forged_one_never_reads_other_data() {
    let app = ReadApp::start().await;
    let f = fixture(&app).await;
    // The customer's own cursor, used by the customer: the next page.
    let mine = customer_token(f.customer);
    let a = answer(
        app.get(&format!(
            "/v1/customers/{}/orders?limit=1&cursor={}",
            f.customer, f.orders_cursor
        ))
        .bearer_auth(&mine),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["items"][0]["id"], json!(f.oid));
    // The same cursor against the other customer's list, even as an admin: refused.
    let a = answer(
        app.get(&format!(
            "/v1/customers/{}/orders?limit=1&cursor={}",
            f.other_customer, f.orders_cursor
        ))
        .bearer_auth(admin_token()),
    )
    .await;
    a.assert_problem(422, "validation_failed");
}
