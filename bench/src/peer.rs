//! The peer: the npm package `pg-transactional-outbox`, installed with `npm ci` (exact versions,
//! from `bench/peer/package-lock.json`) into a scratch directory and driven by
//! `bench/peer/run.mjs` against the same PostgreSQL and RabbitMQ as our pipeline, with payloads
//! of about 600 B. Its polling listener runs against the machine's PostgreSQL (a database of
//! its own); its logical-replication listener needs `wal_level = logical`, so it gets a
//! PostgreSQL server of its own (made with `initdb`, gone afterwards). Each mode is measured at
//! a steady 100 rows/s and draining a 20,000-row backlog, counting rows lost and duplicated.

use std::path::{Path, PathBuf};

use indicatif::MultiProgress;
use ordering_tests::figures::Figure;
use ordering_tests::pg_server::PgServer;
use ordering_tests::relay::broker::AMQP_URL;
use ordering_tests::test_db::TestDatabase;
use serde_json::Value;
use tokio::process::Command;

use crate::report::Measured;
use crate::runner::{self, PartOutput};

/// The driver and its locked dependencies, in the repository.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peer")
}

/// The steady run's rate (rows/s) and length, and the backlog drained.
const STEADY_RATE: u32 = 100;
const STEADY_SECONDS: u32 = 30;
const BACKLOG: u32 = 20_000;

/// Copies the driver to a scratch directory and installs its dependencies there.
async fn install(bars: &MultiProgress, logs: &Path) -> anyhow::Result<(PathBuf, PartOutput)> {
    let dir = std::env::temp_dir().join(format!("bench-peer-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    for file in ["package.json", "package-lock.json", "run.mjs"] {
        std::fs::copy(sources().join(file), dir.join(file))?;
    }
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir);
    let out = runner::run_part(bars, "peer-npm", cmd, logs).await?;
    Ok((dir, out))
}

/// The figures of one driver run, from the JSON object it prints last.
fn figures(mode: &str, scenario: &str, result: &Value) -> Vec<Figure> {
    let mut out = Vec::new();
    let num = |k: &str| result.get(k).and_then(Value::as_f64);
    let lost = num("lost").unwrap_or(f64::NAN);
    let duplicated = num("duplicated").unwrap_or(f64::NAN);
    let version = result
        .get("package_version")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let with_common = |f: Figure| {
        f.with("mode", mode)
            .with("lost", lost)
            .with("duplicated", duplicated)
            .with("package_version", version.clone())
    };
    if scenario == "steady" {
        // Measured from the instant the writing transaction began.
        let lag = result.get("lag_ms_from_write").cloned().unwrap_or_default();
        for q in ["p50", "p90", "p99", "max"] {
            if let Some(v) = lag.get(q).and_then(Value::as_f64) {
                out.push(with_common(
                    Figure::new(
                        format!("peer.{mode}.lag.{q}.rate{STEADY_RATE}"),
                        format!("pg-transactional-outbox ({mode}), write to delivery, {q}"),
                        v,
                        "ms",
                    )
                    .with("rate_asked", f64::from(STEADY_RATE))
                    .with("quantile", q),
                ));
            }
        }
    } else if let Some(rate) = num("rows_per_sec") {
        out.push(with_common(
            Figure::new(
                format!("peer.{mode}.drain{BACKLOG}"),
                format!("pg-transactional-outbox ({mode}), drain of a {BACKLOG}-row backlog"),
                rate,
                "rows/s",
            )
            .with("rows", BACKLOG),
        ));
    }
    for (k, v) in [("lost", lost), ("duplicated", duplicated)] {
        out.push(with_common(Figure::new(
            format!("peer.{mode}.{scenario}.{k}"),
            format!("pg-transactional-outbox ({mode}, {scenario}): rows {k}"),
            v,
            "rows",
        )));
    }
    out
}

/// Installs and runs the peer in both modes; a missing `node`/`npm` or a failed install is
/// recorded in the parts' outcomes and the notes, not fatal.
pub async fn run(bars: &MultiProgress, logs: &Path, notes: &mut Vec<String>) -> anyhow::Result<Vec<PartOutput>> {
    notes.push(
        "The peer publishes to a classic queue of its own; our relay publishes to a stream and a quorum queue \
         (replicated types, whose confirms cost more). The peer runs with its defaults (batch 5, poll every \
         500 ms, one message at a time); see bench/peer/README.md."
            .to_owned(),
    );
    let (dir, install) = install(bars, logs).await?;
    let mut outputs = vec![];
    if install.run.outcome != "ok" {
        notes.push(format!("The peer could not be installed: {}", install.run.outcome));
        outputs.push(install);
        return Ok(outputs);
    }
    outputs.push(install);
    let polling_db = TestDatabase::empty().await;
    let logical_server = PgServer::start_with("wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10");
    let logical_url = logical_server.create_database("peer").await;
    for (mode, url) in [("polling", polling_db.url().to_owned()), ("logical", logical_url)] {
        for scenario in ["steady", "drain"] {
            let prefix = format!("peer_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let mut cmd = Command::new("node");
            cmd.current_dir(&dir).arg("run.mjs").args([
                "--pg",
                &url,
                "--amqp",
                AMQP_URL,
                "--mode",
                mode,
                "--prefix",
                &prefix,
                "--scenario",
                scenario,
            ]);
            if scenario == "steady" {
                cmd.args([
                    "--rate",
                    &STEADY_RATE.to_string(),
                    "--seconds",
                    &STEADY_SECONDS.to_string(),
                ]);
            } else {
                cmd.args(["--rows", &BACKLOG.to_string()]);
            }
            let mut part = runner::run_part(bars, &format!("peer-{mode}-{scenario}"), cmd, logs).await?;
            let result: Option<Value> = part
                .lines
                .iter()
                .rev()
                .find(|l| l.trim_start().starts_with('{'))
                .and_then(|l| serde_json::from_str(l).ok());
            match result {
                Some(result) => part
                    .figures
                    .extend(figures(mode, scenario, &result).into_iter().map(|figure| Measured {
                        figure,
                        part: part.run.name.clone(),
                        raw_value: None,
                        ratio: None,
                    })),
                None => {
                    notes.push(format!(
                        "The peer's {mode} {scenario} run printed no result: {}",
                        part.run.outcome
                    ));
                }
            }
            outputs.push(part);
        }
    }
    drop(logical_server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(outputs)
}
