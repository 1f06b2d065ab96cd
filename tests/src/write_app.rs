//! A write-api running in-process on a free port, over its own test database.

use std::net::SocketAddr;

use jsonwebtoken::{EncodingKey, Header, encode};
use ordering_platform::auth::Authenticator;
use ordering_platform::http::layers::HttpLimits;
use ordering_schema::events::AggregateType;
use serde_json::json;
use uuid::Uuid;
use write_api::AppState;

use crate::test_db::TestDatabase;

/// The JWT secret test apps run with.
pub const SECRET: &str = "test-secret-for-ordering-0123456789";

/// A running write-api and what a test needs to talk to it.
pub struct WriteApp {
    pub db: TestDatabase,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl WriteApp {
    /// Starts a write-api on a fresh database, with a pool of `pool_size` connections.
    pub async fn start() -> Self {
        Self::start_with_pool(8).await
    }

    pub async fn start_with_pool(pool_size: usize) -> Self {
        Self::start_with(pool_size, HttpLimits::default()).await
    }

    /// Starts a write-api on a fresh database, with a pool of `pool_size` connections, serving
    /// with `limits`.
    pub async fn start_with(pool_size: usize, limits: HttpLimits) -> Self {
        Self::start_configured(pool_size, limits, |state| state).await
    }

    /// Starts a write-api whose `Location` headers point at the read-api at `url`.
    pub async fn start_reading_at(url: &str) -> Self {
        Self::start_configured(8, HttpLimits::default(), |state| state.with_read_api_url(url)).await
    }

    async fn start_configured(
        pool_size: usize,
        limits: HttpLimits,
        configure: impl FnOnce(AppState) -> AppState,
    ) -> Self {
        let db = TestDatabase::new().await;
        let state = configure(AppState::new(
            db.url(),
            pool_size,
            Authenticator::hs256(SECRET.as_bytes()),
            consistency_key(),
            &limits,
        ));
        let app = write_api::router(state, limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        Self {
            db,
            addr,
            client,
            server,
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A `POST`/`PATCH` with a JSON body and a bearer token.
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body)
    }

    pub fn post(&self, path: &str, token: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.send(reqwest::Method::POST, path, token, body)
    }

    /// Creates a product as an admin and returns its JSON.
    pub async fn create_product(&self, sku: &str, price_cents: i64, currency: &str, stock: i64) -> serde_json::Value {
        let body = json!({"sku": sku, "name": format!("{sku} name"), "description": "d", "price_cents": price_cents, "currency": currency, "stock": stock});
        let res = self
            .post("/v1/products", &admin_token(), &body)
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 201, "create product {sku}");
        res.json().await.expect("json")
    }
}

impl Drop for WriteApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A token for `sub` with `role`, expiring `exp_in_secs` from now, signed with `secret`.
pub fn token_with(sub: &str, role: &str, exp_in_secs: i64, secret: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_in_secs;
    encode(
        &Header::default(),
        &json!({"sub": sub, "role": role, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// The key test apps sign and verify consistency tokens with (derived from [`SECRET`], as
/// the services derive theirs from `JWT_SECRET`).
pub fn consistency_key() -> ordering_schema::consistency::ConsistencyKey {
    ordering_schema::consistency::ConsistencyKey::new(SECRET.as_bytes())
}

/// The consistency token the write-api would give, bound to `subject`, for a command that
/// changed `marks` (aggregate, id, version).
pub fn issue_consistency_token(subject: Uuid, marks: &[(AggregateType, Uuid, i64)]) -> String {
    let marks = marks
        .iter()
        .map(|&(aggregate, id, version)| ordering_schema::consistency::VersionMark { aggregate, id, version })
        .collect();
    consistency_key().sign(&ordering_schema::consistency::ConsistencyToken { subject, marks })
}

/// A valid admin token.
pub fn admin_token() -> String {
    token_with(&Uuid::now_v7().to_string(), "admin", 3600, SECRET)
}

/// A valid token of customer `id`.
pub fn customer_token(id: Uuid) -> String {
    token_with(&id.to_string(), "customer", 3600, SECRET)
}

// ---------------------------------------------------------------------------------------------
// Helpers for the write-api integration tests (tests/tests/write_api/).

/// A whole HTTP answer: status, headers, text and (when it is JSON) the parsed body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON, or `Null` when it is not JSON.
    pub body: serde_json::Value,
}

impl Answer {
    /// Reads `res` to the end.
    pub async fn read(res: reqwest::Response) -> Self {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("read answer body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Self {
            status,
            headers,
            text,
            body,
        }
    }

    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Content-Type` header, or "".
    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    /// The problem `code` of an error answer, or "".
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// The verified `X-Consistency-Token`; panics if it is missing or does not verify.
    pub fn consistency_token(&self) -> ordering_schema::consistency::ConsistencyToken {
        let raw = self
            .header("x-consistency-token")
            .unwrap_or_else(|| panic!("no X-Consistency-Token in {self:?}"));
        consistency_key()
            .verify(raw)
            .unwrap_or_else(|e| panic!("unverifiable X-Consistency-Token {raw:?}: {e}"))
    }

    /// The marks of the verified `X-Consistency-Token`.
    pub fn consistency_marks(&self) -> Vec<ordering_schema::consistency::VersionMark> {
        self.consistency_token().marks
    }

    /// Panics (showing the answer) unless this is a problem+json answer of `status` and `code`.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "answer: {}", self.text);
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "content type {:?} of {}",
            self.content_type(),
            self.text
        );
        assert_eq!(self.body["status"], status, "problem status field: {}", self.text);
        for key in ["type", "title", "detail"] {
            assert!(self.body[key].is_string(), "problem lacks {key}: {}", self.text);
        }
    }
}

/// Sends `req` and reads the whole answer.
pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    Answer::read(req.send().await.expect("send request")).await
}

/// Row counts of every write-side table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RowCounts {
    pub products: i64,
    pub orders: i64,
    pub order_lines: i64,
    pub outbox: i64,
    pub idempotency_keys: i64,
}

impl WriteApp {
    /// Runs `sql` (a SELECT) and returns its rows as JSON objects, in the query's order.
    pub async fn query_json(&self, sql: &str) -> Vec<serde_json::Value> {
        self.db.query_json(sql).await
    }

    /// Row counts of products, orders, order_lines, outbox and idempotency_keys.
    pub async fn counts(&self) -> RowCounts {
        let row = self
            .query_json(
                "SELECT (SELECT count(*) FROM products) AS products, (SELECT count(*) FROM orders) AS orders, \
                 (SELECT count(*) FROM order_lines) AS order_lines, (SELECT count(*) FROM outbox) AS outbox, \
                 (SELECT count(*) FROM idempotency_keys) AS idempotency_keys",
            )
            .await
            .remove(0);
        let n = |k: &str| row[k].as_i64().expect("count");
        RowCounts {
            products: n("products"),
            orders: n("orders"),
            order_lines: n("order_lines"),
            outbox: n("outbox"),
            idempotency_keys: n("idempotency_keys"),
        }
    }

    /// Every outbox row (all columns but `created_at`), oldest first.
    pub async fn outbox_rows(&self) -> Vec<serde_json::Value> {
        self.query_json("SELECT id, event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers FROM outbox ORDER BY id").await
    }

    /// The stored row of product `id` (stock, version, ...).
    pub async fn product_row(&self, id: &str) -> serde_json::Value {
        self.query_json(&format!("SELECT * FROM products WHERE id = '{id}'"))
            .await
            .pop()
            .unwrap_or_else(|| panic!("no product {id}"))
    }

    /// Places an order with `lines` of (product id, quantity) as the holder of `token`. The
    /// request is built at once, so the future borrows nothing (handy for `join_all`).
    pub fn place_order(
        &self,
        token: &str,
        customer_id: Option<Uuid>,
        lines: &[(&str, i64)],
    ) -> impl std::future::Future<Output = Answer> + use<> {
        let lines: Vec<_> = lines
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        let mut body = json!({ "lines": lines });
        if let Some(c) = customer_id {
            body["customer_id"] = json!(c);
        }
        answer(self.post("/v1/orders", token, &body))
    }
}
