//! `bench growth`: the relay's cost with history. `relay-bench` drains 100,000 rows and holds a
//! steady rate twice: on an empty outbox, then on one holding millions of rows sent over the
//! last 7.5 days (retention 7 days, cleanup every 30 s, so the cleanup works while the relay
//! does). It does so for both shapes of outbox: the ordering service's own, partitioned by day
//! (the cleanup drops the day past retention), and the contract's plain table a sidecar finds
//! (the cleanup deletes its rows one by one). Each case runs `--sittings` times (3 by default),
//! alternating empty and with history, and the report compares medians: one sitting's lag p99
//! and raw publishing rate move by more than 10% from one sitting to the next on this machine.
//! It gives each figure empty and with history, every sitting's value, the change, and whether
//! it stays within 10%.

use std::fmt::Write as _;
use std::path::Path;

use indicatif::MultiProgress;
use serde::Serialize;
use tokio::process::Command;

use crate::machine;
use crate::report::{Measured, PartRun, number};
use crate::runner;

/// The steady rate of the lag runs: about a quarter of one relay's drain rate here, the rate
/// the latency targets are read at.
const LAG_RATE: u32 = 3000;

/// The outbox shapes measured, as `RELAY_BENCH_OUTBOX` names them.
const OUTBOXES: [&str; 2] = ["partitioned", "plain"];

#[derive(Serialize)]
struct Comparison {
    outbox: String,
    figure: String,
    unit: String,
    /// Medians over the sittings.
    empty: f64,
    with_history: f64,
    /// Every sitting's value, in order.
    empty_sittings: Vec<f64>,
    with_history_sittings: Vec<f64>,
    change_percent: f64,
    within_10_percent: bool,
}

#[derive(Serialize)]
struct GrowthReport {
    date: String,
    host: String,
    machine: machine::Machine,
    history_rows: u64,
    sittings: u32,
    lag_rate: u32,
    parts: Vec<PartRun>,
    figures: Vec<Measured>,
    comparisons: Vec<Comparison>,
}

/// The part the figures of one sitting are filed under.
fn part(outbox: &str, history: u64) -> String {
    format!("{outbox} outbox, history {history}")
}

/// Runs `relay-bench drain 1` and `relay-bench lag LAG_RATE` on an `outbox` outbox with
/// `RELAY_BENCH_HISTORY_ROWS`.
async fn sitting(
    bars: &MultiProgress,
    logs: &Path,
    outbox: &str,
    history: u64,
    n: u32,
    out: &mut GrowthReport,
) -> anyhow::Result<()> {
    let bin = crate::sibling("relay-bench")?;
    for (name, args) in [
        ("drain", vec!["drain".to_owned(), "1".to_owned()]),
        ("lag", vec!["lag".to_owned(), LAG_RATE.to_string()]),
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .env("RELAY_BENCH_HISTORY_ROWS", history.to_string())
            .env("RELAY_BENCH_OUTBOX", outbox);
        let label = format!("{name}-{outbox}-h{history}-{n}");
        let run = runner::run_part(bars, &label, cmd, logs).await?;
        out.parts.push(run.run);
        out.figures.extend(run.figures.into_iter().map(|mut m| {
            m.part = part(outbox, history);
            m
        }));
    }
    Ok(())
}

pub async fn run(rows: u64, sittings: u32, out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let started = chrono::Utc::now();
    let logs = std::env::temp_dir().join(format!("bench-growth-logs-{}", started.format("%Y%m%dT%H%M%S")));
    std::fs::create_dir_all(&logs)?;
    let bars = MultiProgress::new();
    let mut report = GrowthReport {
        date: started.format("%Y-%m-%d").to_string(),
        host: machine::host(),
        machine: machine::Machine::read(),
        history_rows: rows,
        sittings,
        lag_rate: LAG_RATE,
        parts: Vec::new(),
        figures: Vec::new(),
        comparisons: Vec::new(),
    };
    for outbox in OUTBOXES {
        for n in 1..=sittings {
            sitting(&bars, &logs, outbox, 0, n, &mut report).await?;
            sitting(&bars, &logs, outbox, rows, n, &mut report).await?;
        }
        compare(&mut report, outbox, rows);
    }
    let stem = out_dir.join(format!("{}-{}-growth", report.date, report.host));
    let md = markdown(&report);
    crate::report::write_pair(&stem, &report, &md)?;
    println!(
        "{md}\nReport: {}.md (and .json); logs in {}",
        stem.display(),
        logs.display()
    );
    Ok(())
}

/// Sets each figure of the `outbox` sittings with history beside its figure without, median
/// against median.
fn compare(report: &mut GrowthReport, outbox: &str, rows: u64) {
    let (bare, full) = (part(outbox, 0), part(outbox, rows));
    // Every sitting's value of `id` in `part`, in order, and its unit.
    let values = |part: &str, id: &str| {
        let found: Vec<&Measured> = report
            .figures
            .iter()
            .filter(|m| m.part == part && m.figure.id == id)
            .collect();
        let unit = found.first().map(|m| m.figure.unit.clone())?;
        Some((found.iter().map(|m| m.figure.value).collect::<Vec<f64>>(), unit))
    };
    let lag_id = |q: &str| format!("relay.lag.{q}.rate{LAG_RATE}.aggregates1000");
    let mut rows_out = Vec::new();
    for id in [
        "relay.drain.relays1".to_owned(),
        "raw.lapin_confirms.before_relays1".to_owned(),
        lag_id("p50"),
        lag_id("p99"),
    ] {
        if let (Some((empty, unit)), Some((with_history, _))) = (values(&bare, &id), values(&full, &id)) {
            rows_out.push((id, unit, empty, with_history));
        }
    }
    // The broker's own rate moves between sittings by more than 10% here: the relay's share of
    // the raw limit measured right before it, sitting by sitting, is the steadier comparison.
    let shares = |part: &str| {
        let (drains, _) = values(part, "relay.drain.relays1")?;
        let (raws, _) = values(part, "raw.lapin_confirms.before_relays1")?;
        Some(
            drains
                .iter()
                .zip(&raws)
                .map(|(d, r)| d / r * 100.0)
                .collect::<Vec<f64>>(),
        )
    };
    if let (Some(empty), Some(with_history)) = (shares(&bare), shares(&full)) {
        rows_out.push((
            "relay.drain.relays1 as a share of raw".into(),
            "%".into(),
            empty,
            with_history,
        ));
    }
    for (figure, unit, empty_sittings, with_history_sittings) in rows_out {
        let (empty, with_history) = (median(&empty_sittings), median(&with_history_sittings));
        let change = (with_history - empty) / empty * 100.0;
        // Throughput may not fall by more than 10%; lag may not rise by more than 10%.
        let within = if unit == "ms" { change <= 10.0 } else { change >= -10.0 };
        report.comparisons.push(Comparison {
            outbox: outbox.to_owned(),
            figure,
            unit,
            empty,
            with_history,
            empty_sittings,
            with_history_sittings,
            change_percent: change,
            within_10_percent: within,
        });
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn markdown(r: &GrowthReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Growth: {} on {}\n\nOne relay drains 100,000 rows, then holds {} rows/s, on an empty outbox and on one \
         holding {} rows sent over the last 7.5 days (retention 7 days, cleanup every 30 s), for each \
         shape of outbox: *partitioned* (the ordering service's own, by day: the cleanup drops the day \
         past retention) and *plain* (the contract's table as a sidecar finds it: the cleanup deletes \
         rows). The history is written in bulk, then vacuumed, analysed and checkpointed before the relay \
         is measured: a service gathers it over days, so the relay meets a settled PostgreSQL, not the \
         back-to-back checkpoints that follow writing gigabytes in a minute.\n",
        r.date, r.host, r.lag_rate, r.history_rows
    );
    let _ = writeln!(
        md,
        "Medians of {} sittings per case (each sitting's values in the last two columns).\n",
        r.sittings
    );
    md.push_str(
        "| outbox | figure | empty | with history | change | within 10% | empty, each | with history, each |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let each = |v: &[f64]| v.iter().map(|x| number(*x)).collect::<Vec<_>>().join(" / ");
    for c in &r.comparisons {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} {} | {} {} | {:+.1}% | {} | {} | {} |",
            c.outbox,
            c.figure,
            number(c.empty),
            c.unit,
            number(c.with_history),
            c.unit,
            c.change_percent,
            if c.within_10_percent { "yes" } else { "**no**" },
            each(&c.empty_sittings),
            each(&c.with_history_sittings),
        );
    }
    md.push_str("\n| part | CPU idle before | seconds | outcome |\n|---|---|---|---|\n");
    for p in &r.parts {
        let _ = writeln!(
            md,
            "| {} | {:.0}% | {:.0} | {} |",
            p.name,
            p.cpu_idle_before * 100.0,
            p.seconds,
            p.outcome
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }
}
