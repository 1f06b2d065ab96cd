//! Secrets stay secret, and internal errors reveal only an id:
//!
//! - the write-api and read-api binaries, run with `RUST_LOG=debug` and served good and bad
//!   requests (valid, forged, expired tokens; malformed bodies; an internal error), never
//!   write `JWT_SECRET` to stdout or stderr, nor put it in any answer;
//! - a bad `JWT_SECRET` or a database URL with a password is refused or reported without
//!   echoing the secret;
//! - an internal error (a database failure the write-api does not expect) is answered 500
//!   `internal_error` with an `error_id` and no detail, and the log has the detail under that id.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diesel_async::RunQueryDsl;
use ordering_tests::process::{binary, free_addr, run_to_exit};
use ordering_tests::relay::broker::AMQP_URL;
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::{Answer, answer, token_with};
use serde_json::json;
use uuid::Uuid;

/// A service binary with its stdout and stderr captured to files.
struct Logged {
    child: Child,
    addr: std::net::SocketAddr,
    out: PathBuf,
    err: PathBuf,
}

impl Logged {
    fn spawn(package: &str, addr_var: &str, env: &HashMap<String, String>) -> Self {
        let addr = free_addr();
        let dir = std::env::temp_dir();
        let tag = Uuid::now_v7().simple().to_string();
        let out = dir.join(format!("{package}-{tag}.out"));
        let err = dir.join(format!("{package}-{tag}.err"));
        let child = Command::new(binary(package))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .env(addr_var, addr.to_string())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {package}: {e}"));
        Self { child, addr, out, err }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = client.get(self.url("/health/ready")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready; logs:\n{}", self.addr, self.logs());
    }

    /// Stops the process (SIGTERM, then SIGKILL) and returns everything it wrote.
    fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs()
    }

    fn logs(&self) -> String {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}\n{}", read(&self.out), read(&self.err))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

fn secret() -> String {
    format!("jwt-secret-{}", Uuid::new_v4().simple())
}

/// Sends `req`, checks the answer does not contain `secret`, returns it.
async fn send(req: reqwest::RequestBuilder, secret: &str) -> Answer {
    let a = answer(req).await;
    assert!(!a.text.contains(secret), "the secret is in an answer: {}", a.text);
    for (name, value) in &a.headers {
        assert!(
            !value.to_str().unwrap_or("").contains(secret),
            "the secret is in header {name}"
        );
    }
    a
}

/// Bad and good requests common to both APIs: forged, expired, wrongly-signed tokens, odd
/// headers, the ops endpoints.
async fn common_requests(client: &reqwest::Client, method: reqwest::Method, base: &str, path: &str, secret: &str) {
    let sub = Uuid::now_v7().to_string();
    let tokens = [
        token_with(&sub, "admin", 600, "another-secret-0123456789abcdef"),
        token_with(&sub, "admin", -3600, secret),
        token_with(&sub, "root", 600, secret),
        token_with("not-a-uuid", "customer", 600, secret),
        "garbage.token.here".to_owned(),
        // The secret itself as a bearer token: must not be echoed back or logged.
        secret.to_owned(),
    ];
    for t in &tokens {
        let a = send(
            client
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(t)
                .json(&json!({})),
            secret,
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.text);
    }
    for ops in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
        let a = send(client.get(format!("{base}{ops}")), secret).await;
        assert_eq!(a.status, 200, "{ops}: {}", a.text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_write_api_never_logs_or_answers_its_secret_and_internal_errors_show_only_an_id() {
    let db = TestDatabase::new().await;
    let secret = secret();
    let env: HashMap<String, String> = [
        ("DATABASE_URL", db.url()),
        ("JWT_SECRET", secret.as_str()),
        ("RUST_LOG", "debug"),
        ("LOG_FORMAT", "json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut svc = Logged::spawn("write-api", "WRITE_API_ADDR", &env);
    svc.wait_ready().await;
    let client = reqwest::Client::new();
    let base = svc.url("");
    common_requests(&client, reqwest::Method::POST, &base, "/v1/products", &secret).await;
    let admin = token_with(&Uuid::now_v7().to_string(), "admin", 600, &secret);
    let good = json!({"sku": "SECRET-1", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1});
    let a = send(
        client
            .post(format!("{base}/v1/products"))
            .bearer_auth(&admin)
            .header("idempotency-key", "k-1")
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .json(&good),
        &secret,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let pid = a.body["id"].as_str().unwrap().to_owned();
    for (ct, body) in [
        ("application/json", "{not json".to_owned()),
        ("text/plain", "x".to_owned()),
        ("application/json", json!({"sku": secret, "name": 1}).to_string()),
        ("application/json", "x".repeat(70_000)),
    ] {
        // A client of its own each: the server closes a connection whose body it refused
        // unread (413), and a shared pool could hand that closed connection to the next request.
        let a = send(
            reqwest::Client::new()
                .post(format!("{base}/v1/products"))
                .bearer_auth(&admin)
                .header("content-type", ct)
                .body(body),
            &secret,
        )
        .await;
        assert!((400..500).contains(&a.status), "{}", a.text);
    }
    let a = send(
        client
            .patch(format!("{base}/v1/products/{pid}"))
            .bearer_auth(&admin)
            .header("if-match", "\"7\"")
            .json(&json!({"name": "x"})),
        &secret,
    )
    .await;
    a.assert_problem(412, "version_conflict");

    // An internal error: a trigger makes every new product fail with a detailed message.
    let detail = format!("boom-detail-{}", Uuid::new_v4().simple());
    {
        let mut conn = db.conn().await;
        diesel::sql_query(format!(
            "CREATE FUNCTION sec_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{detail} at db-host:5432'; END $$"
        ))
        .execute(&mut conn)
        .await
        .expect("create function");
        diesel::sql_query("CREATE TRIGGER sec_boom BEFORE INSERT ON products FOR EACH ROW EXECUTE FUNCTION sec_boom()")
            .execute(&mut conn)
            .await
            .expect("create trigger");
    }
    let before = db.count("outbox").await;
    let mut body = good.clone();
    body["sku"] = json!("SECRET-2");
    let a = send(
        client
            .post(format!("{base}/v1/products"))
            .bearer_auth(&admin)
            .json(&body),
        &secret,
    )
    .await;
    a.assert_problem(500, "internal_error");
    let error_id = a.body["error_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_id: {}", a.text))
        .to_owned();
    assert!(a.body["detail"].as_str().unwrap_or("").contains(&error_id));
    for leak in [
        detail.as_str(),
        "db-host",
        "products",
        "trigger",
        "postgres",
        "SELECT",
        "INSERT",
    ] {
        assert!(!a.text.contains(leak), "the 500 reveals {leak:?}: {}", a.text);
    }
    assert_eq!(db.count("outbox").await, before, "the failed command left an event");

    let logs = svc.stop();
    assert!(!logs.is_empty(), "no logs captured");
    assert!(!logs.contains(&secret), "JWT_SECRET appears in the write-api's logs");
    let line = logs
        .lines()
        .find(|l| l.contains(&error_id))
        .unwrap_or_else(|| panic!("error id {error_id} not logged:\n{logs}"));
    assert!(
        line.contains(&detail),
        "the log line of {error_id} lacks the detail: {line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_api_never_logs_or_answers_its_secret() {
    let db = TestDatabase::empty().await;
    let secret = secret();
    let name = format!("test.{}", Uuid::new_v4().simple());
    let queue = format!("{name}.projector");
    let stream = format!("{name}.log");
    let prefix = format!("{name}:");
    let env: HashMap<String, String> = [
        ("DATABASE_URL", db.url()),
        ("JWT_SECRET", secret.as_str()),
        ("RUST_LOG", "debug"),
        ("LOG_FORMAT", "json"),
        ("AMQP_URL", AMQP_URL),
        ("REDIS_URL", ordering_tests::read_app::REDIS_URL),
        ("EVENTS_EXCHANGE", name.as_str()),
        ("PROJECTOR_QUEUE", queue.as_str()),
        ("EVENT_LOG_STREAM", stream.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut svc = Logged::spawn("read-api", "READ_API_ADDR", &env);
    svc.wait_ready().await;
    let client = reqwest::Client::new();
    let base = svc.url("");
    let customer = Uuid::now_v7();
    common_requests(
        &client,
        reqwest::Method::GET,
        &base,
        &format!("/v1/customers/{customer}/summary"),
        &secret,
    )
    .await;
    let mine = token_with(&customer.to_string(), "customer", 600, &secret);
    let a = send(
        client
            .get(format!("{base}/v1/customers/{customer}/summary"))
            .bearer_auth(&mine),
        &secret,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    for path in [
        format!("/v1/customers/{customer}/orders?cursor=forged"),
        format!("/v1/customers/{}/orders", Uuid::now_v7()),
        "/v1/products?limit=0".to_owned(),
        format!("/v1/orders/{}", Uuid::now_v7()),
    ] {
        let a = send(client.get(format!("{base}{path}")).bearer_auth(&mine), &secret).await;
        assert!((400..500).contains(&a.status), "{path}: {}", a.text);
    }
    let a = send(
        client
            .get(format!("{base}/v1/products/{}", Uuid::now_v7()))
            .header("x-consistency-token", "c1.garbage"),
        &secret,
    )
    .await;
    a.assert_problem(400, "invalid_header");
    let logs = svc.stop();
    drop(svc);
    ordering_tests::relay::broker::delete(name.clone(), vec![queue.clone(), format!("{queue}.dead"), stream]).await;
    ordering_tests::relay::broker::delete(format!("{queue}.dlx"), Vec::new()).await;
    ordering_tests::read_app::delete_keys(ordering_tests::read_app::REDIS_URL, &prefix).await;
    assert!(!logs.is_empty(), "no logs captured");
    assert!(!logs.contains(&secret), "JWT_SECRET appears in the read-api's logs");
}

#[test]
fn bad_secrets_and_database_passwords_are_not_echoed_at_start() {
    // Too short a secret: refused with exit status 2, naming the setting but not its value.
    let short = "short-s3cr3t";
    for package in ["write-api", "read-api"] {
        let env: HashMap<String, String> = [("JWT_SECRET", short), ("RUST_LOG", "debug")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (status, stderr) = run_to_exit(package, &[], &env);
        assert_eq!(status.code(), Some(2), "{package}: {stderr}");
        assert!(stderr.contains("JWT_SECRET"), "{package}: {stderr}");
        assert!(!stderr.contains(short), "{package} echoes the secret: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_password_is_not_logged_when_the_database_is_unreachable() {
    let password = format!("pw{}", Uuid::new_v4().simple());
    let dead = free_addr();
    let secret = secret();
    let env: HashMap<String, String> = [
        ("DATABASE_URL", format!("postgres://someone:{password}@{dead}/ordering")),
        ("JWT_SECRET", secret.clone()),
        ("RUST_LOG", "debug".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut svc = Logged::spawn("write-api", "WRITE_API_ADDR", &env);
    // It either serves (readiness 503) or exits; in both cases give it a moment to log.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    for _ in 0..30 {
        if let Ok(r) = client.get(svc.url("/health/ready")).send().await {
            let text = r.text().await.unwrap_or_default();
            assert!(!text.contains(&password), "readiness reveals the password: {text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = token_with(&Uuid::now_v7().to_string(), "admin", 600, &secret);
    if let Ok(r) = client
        .post(svc.url("/v1/products"))
        .bearer_auth(admin)
        .json(&json!({"sku": "PW", "name": "n", "price_cents": 1, "currency": "EUR", "stock": 1}))
        .send()
        .await
    {
        let text = r.text().await.unwrap_or_default();
        assert!(!text.contains(&password), "an answer reveals the password: {text}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let logs = svc.stop();
    assert!(!logs.contains(&password), "the database password is logged:\n{logs}");
    assert!(!logs.contains(&secret), "JWT_SECRET is logged");
}
