//! The README's quickstart, run as written against a pipeline of the test's own, so it can't rot.
//!
//! The lines are taken from the `sh` block under "## Quickstart" in README.md and run by bash in
//! a scratch directory laid out as the repository is after `scripts/pipeline up`
//! (`.pipeline/jwt_secret`, `target/release/write-api`). Only what must differ for the test to
//! be isolated is replaced: the two default addresses.

use std::process::Command;

use ordering_tests::pipeline::{Pipeline, PipelineOptions};
use ordering_tests::process::binary;
use ordering_tests::write_app::SECRET;

/// The commands of the README's quickstart.
fn quickstart() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let section = readme
        .split("\n## Quickstart\n")
        .nth(1)
        .expect("README has a Quickstart section");
    let block = section.split("```sh\n").nth(1).expect("the Quickstart has an sh block");
    block.split("\n```").next().expect("the block ends").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_quickstart_works_as_written() {
    let p = Pipeline::start(PipelineOptions::default()).await;
    let script = quickstart()
        .replace("http://127.0.0.1:8080", &p.write_api.url(""))
        .replace("http://127.0.0.1:8081", &p.read().url(""));
    let dir = std::env::temp_dir().join(format!("quickstart-{}", p.id));
    std::fs::create_dir_all(dir.join(".pipeline")).expect("scratch dir");
    std::fs::create_dir_all(dir.join("target/release")).expect("scratch dir");
    std::fs::write(dir.join(".pipeline/jwt_secret"), SECRET).expect("secret");
    std::os::unix::fs::symlink(binary("write-api"), dir.join("target/release/write-api")).expect("link");
    let database_url = p.write_db.url().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&dir)
            .env("DATABASE_URL", database_url)
            .output()
            .expect("run bash");
        let _ = std::fs::remove_dir_all(&dir);
        out
    });
    let out = run.await.expect("quickstart");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quickstart failed: {stderr}\n{stdout}");
    // The order, read back at once with the consistency token: the customer's, placed, 2 kettles.
    let json_start = stdout.find("{\n").expect("the order view, as jq prints it");
    let json_end = stdout[json_start..].find("\n}\n").expect("the end of the order view") + json_start + 2;
    let order: serde_json::Value = serde_json::from_str(&stdout[json_start..json_end]).expect("order JSON");
    assert_eq!(order["status"], "placed", "{order}");
    assert_eq!(order["customer_id"], "0193a4f0-0000-7000-8000-00000000c001");
    assert_eq!(order["lines"][0]["quantity"], 2);
    assert_eq!(order["lines"][0]["name"], "Kettle");
    assert_eq!(order["history"][0]["status"], "placed");
    // The outbox rows it shows, and the events on the broker (the test's own queue bound to the
    // exchange): the product's creation, the order and the stock it reserved.
    for event in ["order.placed", "product.stock_changed", "product.created"] {
        assert!(stdout.contains(event), "{event} not in the outbox: {stdout}");
    }
    let order_id = order["id"].as_str().expect("id").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !p
        .recorder
        .all()
        .iter()
        .any(|r| r.routing_key == "order.placed" && r.subject == order_id)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "order.placed never reached the broker"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
