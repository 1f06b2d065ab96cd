//! End to end, a slow consumer: a backlog of events (50,000 by default; `E2E_BACKLOG_EVENTS`)
//! is committed while the read-api is down, published by the relays into the projector's queue,
//! and drained once the read-api starts behind a slowed-down broker connection, with memory
//! bounded. Reports the peak RSS (VmHWM) of
//! the read-api and the relays.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use ordering_schema::events::{CloudEvent, EventKind, ProductData};
use ordering_tests::pipeline::{Pipeline, PipelineOptions, memory_kib, metric_sum, pid_of};
use uuid::Uuid;

/// The delay the proxy adds to every chunk between the read-api and the broker.
const SLOW: Duration = Duration::from_millis(2);

/// Events per product (1 created + stock changes).
const PER_PRODUCT: i64 = 100;

/// Peak resident set sizes (KiB) of the processes sampled.
#[derive(Default, Clone)]
struct Peaks(Arc<Mutex<Vec<(String, u32, u64)>>>);

impl Peaks {
    fn sample(&self) {
        for (_, pid, peak) in self.0.lock().expect("peaks").iter_mut() {
            if let Some((hwm, _)) = memory_kib(*pid) {
                *peak = (*peak).max(hwm);
            }
        }
    }
    fn watch(&self, name: &str, pid: u32) {
        self.0.lock().expect("peaks").push((name.to_owned(), pid, 0));
    }
    fn report(&self) -> Vec<(String, u64)> {
        self.0
            .lock()
            .expect("peaks")
            .iter()
            .map(|(n, _, kib)| (n.clone(), kib / 1024))
            .collect()
    }
}

/// Writes `products` products (their final state) and their `PER_PRODUCT` events each
/// straight into the write database, interleaved across products in sequence order, as the
/// write-api would have. Returns the number of events.
async fn commit_backlog(p: &Pipeline, products: usize) -> usize {
    let mut conn = p.write_db.conn().await;
    let now = Utc::now();
    let base_stock = 1000;
    let state = |i: usize, id: Uuid, version: i64| ProductData {
        id,
        sku: format!("bl-{i}-{}", &id.simple().to_string()[24..]),
        name: format!("backlog product {i}"),
        description: "e2e backlog".to_owned(),
        price_cents: 100 + i as i64,
        currency: "EUR".to_owned(),
        stock: base_stock + version - 1,
        version,
        created_at: now,
        updated_at: now,
    };
    let ids: Vec<Uuid> = (0..products).map(|_| Uuid::now_v7()).collect();
    let finals: Vec<ProductData> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| state(i, *id, PER_PRODUCT))
        .collect();
    diesel::sql_query(
        "INSERT INTO products (id, sku, name, description, price_cents, currency, stock, version, created_at, updated_at) \
         SELECT id, sku, name, description, price_cents, currency, stock, version, created_at, updated_at \
         FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, sku text, name text, description text, price_cents bigint, \
              currency text, stock bigint, version bigint, created_at timestamptz, updated_at timestamptz)",
    )
    .bind::<Text, _>(serde_json::to_string(&finals).expect("json"))
    .execute(&mut conn)
    .await
    .expect("insert products");
    let mut batch = Vec::new();
    let mut total = 0;
    for seq in 1..=PER_PRODUCT {
        for (i, id) in ids.iter().enumerate() {
            let kind = if seq == 1 {
                EventKind::ProductCreated
            } else {
                EventKind::ProductStockChanged
            };
            batch.push(CloudEvent::new(kind, *id, seq, now, state(i, *id, seq)));
        }
        if batch.len() >= 5000 || seq == PER_PRODUCT {
            total += batch.len();
            diesel::sql_query(
                "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, sequence, event_type, payload) \
                 SELECT (e->>'id')::uuid, 'product', e->>'subject', (e->>'sequence')::bigint, \
                        CASE WHEN e->>'sequence' = '1' THEN 'product.created' ELSE 'product.stock_changed' END, e \
                 FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS t(e, n) ORDER BY n",
            )
            .bind::<Text, _>(serde_json::to_string(&batch).expect("json"))
            .execute(&mut conn)
            .await
            .expect("insert outbox rows");
            batch.clear();
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_slow_consumer_backlog_drains_with_bounded_memory() {
    let wanted: usize = std::env::var("E2E_BACKLOG_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let products = wanted.div_ceil(PER_PRODUCT as usize);
    let mut p = Pipeline::start(PipelineOptions {
        read_api: false,
        ..Default::default()
    })
    .await;
    let peaks = Peaks::default();
    for (i, r) in p.relays.iter().enumerate() {
        peaks.watch(&format!("relay {i}"), pid_of("RELAY_ADDR", r.addr).expect("relay pid"));
    }
    let sampler = {
        let peaks = peaks.clone();
        tokio::spawn(async move {
            loop {
                peaks.sample();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let t = Instant::now();
    let events = commit_backlog(&p, products).await;
    let committed_in = t.elapsed();
    let published_in = p.wait_drained(Duration::from_secs(600)).await + committed_in;
    // The backlog waits in the projector's queue; now a slow consumer starts: its broker
    // connection goes through the proxy with a delay on every chunk.
    p.amqp().slow(SLOW);
    p.start_read_api().await;
    let read = p.read();
    peaks.watch("read-api", pid_of("READ_API_ADDR", read.addr).expect("read-api pid"));
    let t = Instant::now();
    loop {
        let applied = metric_sum(&p.read_metrics().await, "read_events_applied_total");
        if applied >= events as f64 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the projector applied {applied} of {events} events in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let projected_in = t.elapsed();
    peaks.sample();
    let driver = p.driver();
    let report = p.check(&driver, Duration::from_secs(300)).await;
    sampler.abort();
    let peaks = peaks.report();
    println!(
        "[e2e backlog] {events} events ({products} products x {PER_PRODUCT}) committed in {committed_in:.1?}, \
         published by 2 relays in {published_in:.1?} ({:.0}/s); projector drained the backlog in {projected_in:.1?} \
         ({:.0}/s) through a proxy adding {SLOW:?} per chunk; peak RSS (VmHWM, MiB): {peaks:?}; {report}",
        events as f64 / published_in.as_secs_f64(),
        events as f64 / projected_in.as_secs_f64()
    );
    for (name, mib) in &peaks {
        assert!(
            *mib < 1024,
            "{name} peaked at {mib} MiB for a backlog of {events} events"
        );
    }
}
