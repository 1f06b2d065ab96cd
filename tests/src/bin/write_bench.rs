//! Place-order benchmark: the write-api over HTTP against pgbench running the same SQL
//! transaction on the same database, in the same run, at 1, 8 and 32 concurrent clients.
//!
//! Run: `cargo build --release -p write-api -p ordering-tests && target/release/write-bench`
//! (needs the local PostgreSQL and `pgbench`). Settings: `BENCH_SECONDS` (default 10) per
//! run. The write-api runs as its own process (release build next to this binary) with
//! `DB_POOL_SIZE=32`, so it and the load generator share the two cores as in production
//! they would share a host.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use diesel_async::RunQueryDsl;
use hdrhistogram::Histogram;
use ordering_tests::cpu::{CpuMeter, Group, report_per_unit};
use ordering_tests::figures::Figure;
use ordering_tests::test_db::TestDatabase;
use ordering_tests::write_app::{SECRET, customer_token};
use serde_json::json;
use uuid::Uuid;

const PRODUCTS: usize = 2000;

struct Figures {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let db = TestDatabase::new().await;
    seed_products(&db).await?;

    let port = ordering_tests::process::free_addr().port();
    let mut server = start_write_api(db.url(), port)?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await?;
    let ids = Arc::new(product_ids(&db).await?);
    let script = pgbench_script(&db, &base, &ids).await?;

    println!("place-order (2 lines, 3 outbox rows), {seconds} s per run, same database, same run");
    println!(
        "{:>7} | {:>22} | {:>22} | {:>6}",
        "clients", "write-api HTTP", "pgbench same SQL", "ratio"
    );
    println!(
        "{:>7} | {:>8} {:>6} {:>6} | {:>8} {:>6} {:>6} | {:>6}",
        "", "tps", "p50ms", "p99ms", "tps", "p50ms", "p99ms", ""
    );
    for clients in [1usize, 8, 32] {
        // pgbench runs as this process's child, so its CPU is this process's once it ended.
        let meter = CpuMeter::start(vec![
            ("postgres", Group::Named("postgres".into())),
            ("load generator", Group::This),
        ]);
        let raw = run_pgbench(&db, &script, clients, seconds)?;
        let raw_cost = meter.used();
        let meter = CpuMeter::start(vec![
            ("write-api", Group::Pids(vec![server.id()])),
            ("postgres", Group::Named("postgres".into())),
            ("load generator", Group::This),
        ]);
        let http = run_http(&base, ids.clone(), clients, Duration::from_secs(seconds)).await?;
        let http_cost = meter.used();
        println!(
            "{clients:>7} | {:>8.0} {:>6.2} {:>6.2} | {:>8.0} {:>6.2} {:>6.2} | {:>5.0}%",
            http.tps,
            http.p50_ms,
            http.p99_ms,
            raw.tps,
            raw.p50_ms,
            raw.p99_ms,
            100.0 * http.tps / raw.tps
        );
        report_per_unit(
            &format!("raw.pgbench.c{clients}"),
            &format!("transaction, pgbench, {clients} clients"),
            &raw_cost,
            raw.tps * seconds as f64,
        );
        report_per_unit(
            &format!("write.http.c{clients}"),
            &format!("order, write-api, {clients} clients"),
            &http_cost,
            http.tps * seconds as f64,
        );
        for (side, f, raw_id) in [
            ("raw.pgbench", &raw, None),
            ("write.http", &http, Some(format!("raw.pgbench.tps.c{clients}"))),
        ] {
            let who = if raw_id.is_some() {
                "write-api over HTTP"
            } else {
                "pgbench, same SQL"
            };
            let tps = Figure::new(
                format!("{side}.tps.c{clients}"),
                format!("place order, {who}"),
                f.tps,
                "tps",
            );
            let tps = match raw_id {
                Some(raw_id) => tps.of(raw_id),
                None => tps,
            };
            tps.with("clients", clients).with("seconds", seconds).emit();
            for (q, v) in [("p50", f.p50_ms), ("p99", f.p99_ms)] {
                Figure::new(
                    format!("{side}.latency_{q}.c{clients}"),
                    format!("place order {q}, {who}"),
                    v,
                    "ms",
                )
                .with("clients", clients)
                .with("quantile", q)
                .emit();
            }
        }
    }
    server.kill().ok();
    server.wait().ok();
    Ok(())
}

/// Products `bench-1` … `bench-2000` with ample stock, created in sku order so that their
/// v7 ids sort like their numbers (pgbench locks the lower one first, as the write-api does).
async fn seed_products(db: &TestDatabase) -> anyhow::Result<()> {
    let mut conn = db.conn().await;
    let mut values = Vec::with_capacity(PRODUCTS);
    for n in 1..=PRODUCTS {
        values.push(format!(
            "('{}', 'bench-{n}', 'Bench product {n}', 'a product for the benchmark', 100, 'EUR', 1000000000, 1, now(), now())",
            Uuid::now_v7()
        ));
    }
    diesel::sql_query(format!("INSERT INTO products VALUES {}", values.join(",")))
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn start_write_api(database_url: &str, port: u16) -> anyhow::Result<Child> {
    let bin = std::env::current_exe()?.with_file_name("write-api");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p write-api)",
            bin.display()
        );
    }
    Command::new(bin)
        .env("DATABASE_URL", database_url)
        .env("WRITE_API_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_SECRET", SECRET)
        .env("DB_POOL_SIZE", "32")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start write-api")
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/health/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("write-api did not become ready")
}

fn pick_pair() -> (usize, usize) {
    let a = 1 + rand_below(PRODUCTS / 2);
    let b = PRODUCTS / 2 + 1 + rand_below(PRODUCTS / 2);
    (a, b)
}

fn rand_below(n: usize) -> usize {
    (Uuid::new_v4().as_u128() % n as u128) as usize
}

async fn product_ids(base_db: &TestDatabase) -> anyhow::Result<Vec<Uuid>> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let mut conn = base_db.conn().await;
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id FROM products WHERE sku LIKE 'bench-%' ORDER BY substring(sku from 7)::int")
            .load(&mut conn)
            .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Places one order over HTTP to capture real outbox payloads, then writes the pgbench script
/// running the write-api's statements: lock both products, update both, insert the order,
/// its lines and three outbox rows with payloads of the real size.
async fn pgbench_script(db: &TestDatabase, base: &str, ids: &[Uuid]) -> anyhow::Result<std::path::PathBuf> {
    let token = customer_token(Uuid::now_v7());
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/orders"))
        .bearer_auth(&token)
        .json(&json!({"lines": [{"product_id": ids[0], "quantity": 1}, {"product_id": ids[PRODUCTS / 2], "quantity": 1}]}))
        .send()
        .await?;
    if res.status() != 201 {
        bail!("sample order failed: {} {}", res.status(), res.text().await?);
    }
    #[derive(diesel::QueryableByName)]
    struct Payload {
        #[diesel(sql_type = diesel::sql_types::Text)]
        p: String,
    }
    let mut conn = db.conn().await;
    let payloads: Vec<Payload> = diesel::sql_query("SELECT payload::text AS p FROM outbox ORDER BY id")
        .load(&mut conn)
        .await?;
    // Payloads go in as SQL literals; pgbench leaves a ':name' that is no variable as is.
    let lit = |s: &str| s.replace('\'', "''");
    let (p1, p2, p3) = (lit(&payloads[0].p), lit(&payloads[1].p), lit(&payloads[2].p));
    let half = PRODUCTS / 2;
    let script = format!(
        r#"\set a random(1, {half})
\set b random({b0}, {PRODUCTS})
BEGIN;
SELECT (array_agg(id ORDER BY id))[1] AS pa, (array_agg(id ORDER BY id))[2] AS pb FROM (SELECT id FROM products WHERE sku = 'bench-' || :a OR sku = 'bench-' || :b ORDER BY id FOR UPDATE) s \gset
UPDATE products SET stock = stock - 1, version = version + 1, updated_at = now() WHERE id = :pa;
UPDATE products SET stock = stock - 1, version = version + 1, updated_at = now() WHERE id = :pb;
INSERT INTO orders (id, customer_id, status, currency, total_cents, version, created_at, updated_at) VALUES (gen_random_uuid(), gen_random_uuid(), 'placed', 'EUR', 200, 1, now(), now()) RETURNING id AS oid \gset
INSERT INTO order_lines VALUES (:oid, 0, :pa, 'bench-1', 'Bench product', 100, 1, 100), (:oid, 1, :pb, 'bench-2', 'Bench product', 100, 1, 100);
INSERT INTO outbox (event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers) VALUES (gen_random_uuid(), 'order', :oid, 1, 'order.placed', '{p1}', '{{}}'), (gen_random_uuid(), 'product', :pa, 2, 'product.stock_changed', '{p2}', '{{}}'), (gen_random_uuid(), 'product', :pb, 2, 'product.stock_changed', '{p3}', '{{}}');
COMMIT;
"#,
        b0 = half + 1,
    );
    let path = std::env::temp_dir().join(format!("place-order-{}.sql", Uuid::new_v4().simple()));
    std::fs::write(&path, script)?;
    drop(conn);
    Ok(path)
}

fn run_pgbench(db: &TestDatabase, script: &std::path::Path, clients: usize, seconds: u64) -> anyhow::Result<Figures> {
    let logdir = std::env::temp_dir().join(format!("pgbench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logdir)?;
    let out = Command::new("pgbench")
        .current_dir(&logdir)
        .args(["-h", "127.0.0.1", "-U", "root", "-n", "-M", "extended", "-l"])
        .arg("-f")
        .arg(script)
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
            "-T",
            &seconds.to_string(),
        ])
        .arg(db.name())
        .output()
        .context("run pgbench (is it installed?)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("failed transactions: 0 (0.000%)") {
        bail!("pgbench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .context("pgbench printed no tps")?;
    // Per-transaction log lines: client_id transaction_no time_us script_no epoch epoch_us.
    let mut hist = Histogram::<u64>::new(3)?;
    for entry in std::fs::read_dir(&logdir)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()) {
                hist.record(us)?;
            }
        }
    }
    std::fs::remove_dir_all(&logdir).ok();
    Ok(Figures {
        tps,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

async fn run_http(base: &str, ids: Arc<Vec<Uuid>>, clients: usize, duration: Duration) -> anyhow::Result<Figures> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let token = Arc::new(customer_token(Uuid::now_v7()));
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, ids, token, base) = (client.clone(), ids.clone(), token.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let (a, b) = pick_pair();
                let body = json!({"lines": [{"product_id": ids[a - 1], "quantity": 1}, {"product_id": ids[b - 1], "quantity": 1}]});
                let t = Instant::now();
                // The body is read, as a client would: a response dropped unread closes its
                // connection instead of returning it to the pool.
                let ok = match client.post(format!("{base}/v1/orders")).bearer_auth(token.as_str()).json(&body).send().await {
                    Ok(r) => r.status() == 201 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    hist.record(t.elapsed().as_micros() as u64).expect("record");
                } else {
                    failures += 1;
                }
            }
            (hist, failures)
        }));
    }
    let mut total = Histogram::<u64>::new(3)?;
    let mut failures = 0;
    for t in tasks {
        let (h, f) = t.await?;
        total.add(h)?;
        failures += f;
    }
    if failures > 0 {
        bail!("{failures} orders failed during the HTTP run");
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Figures {
        tps: total.len() as f64 / elapsed,
        p50_ms: total.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
