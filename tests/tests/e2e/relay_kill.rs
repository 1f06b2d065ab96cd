//! End to end: a steady stream of commands while one of two relays is killed with SIGKILL and
//! restarted several times. Nothing committed is lost, nothing rolled back appears, each
//! aggregate's events arrive in order, and the views finally equal the write side.

use std::time::{Duration, Instant};

use ordering_tests::pipeline::{Load, Pipeline, PipelineOptions};
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn e2e_relay_sigkilled_repeatedly_loses_nothing_and_keeps_order() {
    let mut p = Pipeline::start(PipelineOptions::default()).await;
    let driver = p.driver();
    driver.seed(8, 500, 6).await;
    let started = Instant::now();
    let load = Load::start(&driver, 4, Duration::from_millis(10));
    let mut kills = 0;
    let mut recovered = Vec::new();
    for _ in 0..4 {
        let wait = rand::rng().random_range(1000..2500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        p.restart_relay(0);
        kills += 1;
        let t = Instant::now();
        p.relays[0].wait_ready_status(200, Duration::from_secs(30)).await;
        recovered.push(t.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commands = load.stop().await;
    let outcomes = driver.outcomes();
    let report = p.check(&driver, Duration::from_secs(90)).await;
    println!(
        "[e2e relay kill] {kills} SIGKILLs of relay 0 during {:.1?} of load; restarted relay ready after {recovered:.1?}; \
         commands answered {commands} (committed {}, refused {:?}, 503 {}, no answer {}); {report}",
        started.elapsed(),
        outcomes.committed,
        outcomes.refused,
        outcomes.unavailable,
        outcomes.transport_errors,
    );
    assert!(
        outcomes.server_errors.is_empty(),
        "server errors: {:?}",
        outcomes.server_errors
    );
    assert_eq!(
        outcomes.transport_errors, 0,
        "the write-api did not answer some commands"
    );
    assert!(
        outcomes.committed > 100,
        "too little load to prove anything: {outcomes:?}"
    );
}
