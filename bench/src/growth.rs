//! `bench growth`: the relay's cost with history. `relay-bench` drains 100,000 rows and holds a
//! steady rate twice: on an empty outbox, then on one holding millions of rows sent over the
//! last 7.5 days (retention 7 days, cleanup every 30 s, so the cleanup deletes while the relay
//! works). The report gives both, the change, and whether it stays within 10%.

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

#[derive(Serialize)]
struct Comparison {
    figure: String,
    unit: String,
    empty: f64,
    with_history: f64,
    change_percent: f64,
    within_10_percent: bool,
}

#[derive(Serialize)]
struct GrowthReport {
    date: String,
    host: String,
    machine: machine::Machine,
    history_rows: u64,
    lag_rate: u32,
    parts: Vec<PartRun>,
    figures: Vec<Measured>,
    comparisons: Vec<Comparison>,
}

/// Runs `relay-bench drain 1` and `relay-bench lag LAG_RATE` with `RELAY_BENCH_HISTORY_ROWS`.
async fn sitting(bars: &MultiProgress, logs: &Path, history: u64, out: &mut GrowthReport) -> anyhow::Result<()> {
    let bin = crate::sibling("relay-bench")?;
    for (name, args) in [
        ("drain", vec!["drain".to_owned(), "1".to_owned()]),
        ("lag", vec!["lag".to_owned(), LAG_RATE.to_string()]),
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args(&args).env("RELAY_BENCH_HISTORY_ROWS", history.to_string());
        let label = format!("{name}-h{history}");
        let part = runner::run_part(bars, &label, cmd, logs).await?;
        out.parts.push(part.run);
        out.figures.extend(part.figures.into_iter().map(|mut m| {
            m.part = format!("history {history}");
            m
        }));
    }
    Ok(())
}

pub async fn run(rows: u64, out_dir: &Path) -> anyhow::Result<()> {
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
        lag_rate: LAG_RATE,
        parts: Vec::new(),
        figures: Vec::new(),
        comparisons: Vec::new(),
    };
    sitting(&bars, &logs, 0, &mut report).await?;
    sitting(&bars, &logs, rows, &mut report).await?;
    let value = |part: &str, id: &str| {
        report
            .figures
            .iter()
            .find(|m| m.part == part && m.figure.id == id)
            .map(|m| (m.figure.value, m.figure.unit.clone()))
    };
    let lag_id = |q: &str| format!("relay.lag.{q}.rate{LAG_RATE}.aggregates1000");
    for id in [
        "relay.drain.relays1".to_owned(),
        "raw.lapin_confirms.before_relays1".to_owned(),
        lag_id("p50"),
        lag_id("p99"),
    ] {
        if let (Some((empty, unit)), Some((with_history, _))) =
            (value("history 0", &id), value(&format!("history {rows}"), &id))
        {
            let change = (with_history - empty) / empty * 100.0;
            // Throughput may not fall by more than 10%; lag may not rise by more than 10%.
            let within = if unit == "ms" { change <= 10.0 } else { change >= -10.0 };
            report.comparisons.push(Comparison {
                figure: id,
                unit,
                empty,
                with_history,
                change_percent: change,
                within_10_percent: within,
            });
        }
    }
    // The broker's own rate moves between sittings by more than 10% here: the relay's share of
    // the raw limit measured right before it is the steadier comparison.
    let share = |part: &str| {
        Some(value(part, "relay.drain.relays1")?.0 / value(part, "raw.lapin_confirms.before_relays1")?.0 * 100.0)
    };
    if let (Some(empty), Some(with_history)) = (share("history 0"), share(&format!("history {rows}"))) {
        let change = (with_history - empty) / empty * 100.0;
        report.comparisons.push(Comparison {
            figure: "relay.drain.relays1 as a share of raw".into(),
            unit: "%".into(),
            empty,
            with_history,
            change_percent: change,
            within_10_percent: change >= -10.0,
        });
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

fn markdown(r: &GrowthReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Growth: {} on {}\n\nOne relay drains 100,000 rows, then holds {} rows/s, on an empty outbox and on one \
         holding {} rows sent over the last 7.5 days (retention 7 days, cleanup every 30 s).\n",
        r.date, r.host, r.lag_rate, r.history_rows
    );
    md.push_str("| figure | empty | with history | change | within 10% |\n|---|---|---|---|---|\n");
    for c in &r.comparisons {
        let _ = writeln!(
            md,
            "| `{}` | {} {} | {} {} | {:+.1}% | {} |",
            c.figure,
            number(c.empty),
            c.unit,
            number(c.with_history),
            c.unit,
            c.change_percent,
            if c.within_10_percent { "yes" } else { "**no**" }
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
