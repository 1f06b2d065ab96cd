//! A write-api running in-process on a free port, over its own test database.

use std::net::SocketAddr;

use jsonwebtoken::{EncodingKey, Header, encode};
use ordering_platform::auth::Authenticator;
use ordering_platform::http::layers::HttpLimits;
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
        let db = TestDatabase::new().await;
        let pool = ordering_platform::db::pool(db.url(), pool_size);
        let state = AppState { pool, auth: Authenticator::hs256(SECRET.as_bytes()) };
        let app = write_api::router(state, HttpLimits::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
        Self { db, addr, client, server }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A `POST`/`PATCH` with a JSON body and a bearer token.
    pub fn send(&self, method: reqwest::Method, path: &str, token: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(token).json(body)
    }

    pub fn post(&self, path: &str, token: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.send(reqwest::Method::POST, path, token, body)
    }

    /// Creates a product as an admin and returns its JSON.
    pub async fn create_product(&self, sku: &str, price_cents: i64, currency: &str, stock: i64) -> serde_json::Value {
        let body = json!({"sku": sku, "name": format!("{sku} name"), "description": "d", "price_cents": price_cents, "currency": currency, "stock": stock});
        let res = self.post("/v1/products", &admin_token(), &body).send().await.expect("send");
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
    encode(&Header::default(), &json!({"sub": sub, "role": role, "exp": exp}), &EncodingKey::from_secret(secret.as_bytes()))
        .expect("encode token")
}

/// A valid admin token.
pub fn admin_token() -> String {
    token_with(&Uuid::now_v7().to_string(), "admin", 3600, SECRET)
}

/// A valid token of customer `id`.
pub fn customer_token(id: Uuid) -> String {
    token_with(&id.to_string(), "customer", 3600, SECRET)
}
