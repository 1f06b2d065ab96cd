//! Query replicas: two read-apis with `PROJECTOR=off` beside the projecting one, all on the same
//! read database and Redis prefix. A consistency token is honoured by whichever instance
//! answers (replicas learn of applied changes by LISTEN/NOTIFY), and a replica killed under
//! load, with readers failing over to the other as a load balancer would, loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ordering_tests::pipeline::{Load, Pipeline, PipelineOptions, metric_sum};
use ordering_tests::process::ServiceProcess;
use ordering_tests::write_app::{admin_token, consistency_key, customer_token};
use serde_json::{Value, json};

const CHECK: Duration = Duration::from_secs(60);

/// A GET with an admin token and a consistency token on `base`; status and body, or the
/// transport error (connection refused or reset).
async fn get_with_token(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let res = client
        .get(format!("{base}{path}"))
        .bearer_auth(admin_token())
        .header("X-Consistency-Token", token)
        .send()
        .await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

/// The version a consistency token promises for the aggregate at `path` (`/v1/<kind>/<id>`).
fn promised(token: &str, path: &str) -> i64 {
    let t = consistency_key().verify(token).expect("a token the write-api signed");
    t.marks
        .iter()
        .filter(|m| path.ends_with(&m.id.to_string()))
        .map(|m| m.version)
        .max()
        .unwrap_or_else(|| panic!("the token of {path} names it"))
}

/// What the readers counted.
#[derive(Default)]
struct Reads {
    done: AtomicU64,
    /// Transport errors (the killed replica), each retried on the other replica.
    connection_errors: AtomicU64,
    /// 503 `not_yet_consistent` (the views did not reach the token within the wait).
    not_yet_consistent: AtomicU64,
    /// Answers older than the version the token promises: never allowed.
    older_than_token: AtomicU64,
    /// Answers older than a version this reader had already been answered for the same
    /// aggregate (by the other replica, with an older token): allowed, counted.
    older_than_seen_before: AtomicU64,
    /// Any other status, with a sample.
    other: std::sync::Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_query_replicas_honour_tokens_and_a_replica_killed_under_load_loses_nothing() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let mut replicas: Vec<ServiceProcess> = vec![
        p.spawn_read_api(&[("PROJECTOR", "off")]).await,
        p.spawn_read_api(&[("PROJECTOR", "off")]).await,
    ];
    let bases: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let driver = p.driver();
    driver.seed(6, 100_000, 4).await;
    let (products, customers) = {
        let l = driver.ledger.lock().expect("ledger");
        (l.products.keys().copied().collect::<Vec<_>>(), l.customers.clone())
    };

    // 1. Right after each write, a read with its token on each replica (at once) answers the
    // new version or a newer one, never the old one.
    let mut waits = Vec::new();
    for i in 0..24 {
        let reply = if i % 2 == 0 {
            let id = products[i % products.len()];
            driver
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/products/{id}/stock-adjustments"),
                    &admin_token(),
                    json!({"delta": 1, "reason": "replicas"}),
                )
                .await
        } else {
            let customer = customers[i % customers.len()];
            driver
                .send(
                    reqwest::Method::POST,
                    "/v1/orders",
                    &customer_token(customer),
                    json!({"customer_id": customer, "lines": [{"product_id": products[i % products.len()], "quantity": 1}]}),
                )
                .await
        }
        .expect("an answer");
        assert!(matches!(reply.status, 200 | 201), "command: {}", reply.body);
        let (path, token) = driver
            .ledger
            .lock()
            .expect("ledger")
            .last_token
            .clone()
            .expect("a token");
        let version = reply.body["version"].as_i64().expect("version");
        assert_eq!(promised(&token, &path), version);
        let started = Instant::now();
        let answers =
            futures::future::join_all(bases.iter().map(|b| get_with_token(&p.client, b, &path, &token))).await;
        waits.push(started.elapsed());
        for (b, a) in bases.iter().zip(answers) {
            let (status, body) = a.unwrap_or_else(|e| panic!("replica {b}: {e}"));
            assert_eq!(status, 200, "replica {b}, {path} with its token: {body}");
            let got = body["version"].as_i64().unwrap_or_default();
            assert!(
                got >= version,
                "replica {b} answered version {got} of {path} after version {version} was written"
            );
        }
    }
    waits.sort();

    // 2. Writes and readers through the replicas; one replica is killed (-9) mid-way.
    let load = Load::start(&driver, 3, Duration::from_millis(10));
    let reads = Arc::new(Reads::default());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let (client, ledger, bases) = (p.client.clone(), driver.ledger.clone(), bases.clone());
            let (reads, stop) = (reads.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen: HashMap<String, i64> = HashMap::new();
                let mut next = reader;
                while !stop.load(Ordering::Relaxed) {
                    let Some((path, token)) = ledger.lock().expect("ledger").last_token.clone() else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let want = promised(&token, &path);
                    // As a load balancer does: round robin, and on a connection error the
                    // same request goes to the other replica.
                    let mut answer = None;
                    for attempt in 0..bases.len() * 2 {
                        let base = &bases[(next + attempt) % bases.len()];
                        match get_with_token(&client, base, &path, &token).await {
                            Ok(a) => {
                                answer = Some(a);
                                break;
                            }
                            Err(_) => {
                                reads.connection_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    next += 1;
                    let (status, body) = answer.expect("no replica answered");
                    reads.done.fetch_add(1, Ordering::Relaxed);
                    match status {
                        200 => {
                            let got = body["version"].as_i64().unwrap_or_default();
                            if got < want {
                                reads.older_than_token.fetch_add(1, Ordering::Relaxed);
                            }
                            let before = seen.entry(path).or_default();
                            if got < *before {
                                reads.older_than_seen_before.fetch_add(1, Ordering::Relaxed);
                            }
                            *before = (*before).max(got);
                        }
                        503 if body["code"] == "not_yet_consistent" => {
                            reads.not_yet_consistent.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => reads
                            .other
                            .lock()
                            .expect("other")
                            .push(format!("{status} {path}: {body}")),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_kill = reads.done.load(Ordering::Relaxed);
    let errors_before_kill = reads.connection_errors.load(Ordering::Relaxed);
    replicas[0].kill9();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
    let commands = load.stop().await;
    let after_kill = reads.done.load(Ordering::Relaxed) - before_kill;
    let kill_window = killed.elapsed();

    // 3. Nothing lost: every event applied once (the projecting instance never restarted, so
    // its count is the whole story), the views equal the write side.
    let report = p.check(&driver, CHECK).await;
    let outcomes = driver.outcomes();
    let replica_metrics = replicas[1].metrics().await;
    let other = reads.other.lock().expect("other").clone();
    println!(
        "[e2e query replicas] token reads right after a write, both replicas at once: {} rounds, wait p50 {:.1?}, max \
         {:.1?}; under load: {} reads ({before_kill} before the kill, {after_kill} in the {kill_window:.1?} after), \
         connection errors {} (before the kill {errors_before_kill}) each retried on the other replica, \
         not_yet_consistent {}, older than the token {}, older than an answer seen before {}, other {:?}; replica \
         consistency waits {}; commands answered {commands} (committed {}, refused {:?}); {report}",
        waits.len(),
        waits[waits.len() / 2],
        waits[waits.len() - 1],
        reads.done.load(Ordering::Relaxed),
        reads.connection_errors.load(Ordering::Relaxed),
        reads.not_yet_consistent.load(Ordering::Relaxed),
        reads.older_than_token.load(Ordering::Relaxed),
        reads.older_than_seen_before.load(Ordering::Relaxed),
        other.iter().take(3).collect::<Vec<_>>(),
        metric_sum(&replica_metrics, "read_consistency_waits_total"),
        outcomes.committed,
        outcomes.refused,
    );
    assert_eq!(
        reads.older_than_token.load(Ordering::Relaxed),
        0,
        "answers older than their token"
    );
    assert_eq!(
        reads.not_yet_consistent.load(Ordering::Relaxed),
        0,
        "tokens not honoured in time"
    );
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    assert!(after_kill > 0, "no read was answered after the kill");
    // A replica has no projector: each wait it finished was ended by a NOTIFY it LISTENed to.
    assert!(
        metric_sum(&replica_metrics, "read_consistency_waits_total") > 0.0,
        "the surviving replica never had to wait for a token"
    );
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
    assert_eq!(
        report.projector_applied as usize, report.committed_events,
        "events applied by the projecting instance vs events committed"
    );
}
