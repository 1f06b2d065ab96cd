//! `bench`: the one benchmark command. In one sitting it measures this machine's raw limits
//! (pgbench on the order transaction, windowed confirmed publishing with lapin, a bare axum
//! server, Redis GET), the pipeline's stages (`write-bench`, `relay-bench`, `read-bench`) and one
//! peer (the npm package `pg-transactional-outbox`, polling and logical replication), then writes
//! `bench/results/<date>-<host>.json` and `.md` with charts.
//!
//! How it keeps its figures honest: every ratio is taken against a raw limit measured in the
//! same sitting, right before the figure it divides; the CPU's idle share is sampled before each
//! part and the report says when the machine was busy; the targets are printed, never asserted
//! (a slow machine makes a worse report, not a failed build). `bench soak` and `bench growth`
//! measure cost over time and over history. Run it through `scripts/bench`, which builds what it
//! needs in release mode first.

mod charts;
mod growth;
mod machine;
mod peer;
mod report;
mod runner;
mod soak;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use ordering_tests::figures::Figure;
use tokio::process::Command;

use crate::report::{Measured, Report};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Benchmarks the pipeline against this machine's raw limits and a peer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Parts to run, comma-separated, in this order: write, relay, read, redis, peer.
    #[arg(long, value_delimiter = ',', default_value = "write,relay,read,redis,peer")]
    parts: Vec<String>,
    /// Seconds per measured run of the write and read benchmarks.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Merge into today's report on this host, if there is one: the parts run now replace
    /// theirs, the others stay (each part keeps its own conditions and time).
    #[arg(long)]
    merge: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Holds a steady write rate through the whole pipeline and reports, per minute, the
    /// commands answered, lag, the services' memory and CPU, the outbox's size, dead tuples and
    /// autovacuum runs, and the load generator's own CPU (e.g. `soak 10m`).
    Soak {
        /// How long: `90s`, `10m`, `1h`.
        duration: String,
        /// Commands per second. Default: half of what a 25-second closed-loop calibration on the
        /// same pipeline sustains, measured first.
        #[arg(long)]
        rate: Option<u32>,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// The relay's drain and lag with millions of sent rows in the outbox, against an empty one.
    Growth {
        /// Sent rows put in the outbox first.
        #[arg(long, default_value_t = 10_000_000)]
        rows: u64,
        /// Sittings of each case; the report compares their medians (one sitting's lag p99 and
        /// raw rate move by more than 10% between sittings here).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
        sittings: u32,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// Judges the targets again and draws the Markdown report and charts from a report's JSON.
    Render { json: PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run).await,
        Some(Cmd::Soak { duration, rate, out }) => soak::run(parse_duration(&duration)?, rate, &out).await,
        Some(Cmd::Growth { rows, sittings, out }) => growth::run(rows, sittings, &out).await,
        Some(Cmd::Render { json }) => {
            let mut report: Report = serde_json::from_slice(&std::fs::read(&json)?)?;
            report.settle();
            let dir = json.parent().unwrap_or(Path::new("."));
            write_report(&report, dir)?;
            Ok(())
        }
    }
}

/// `90s`, `10m`, `1h` (a bare number is seconds).
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("not a duration: {text:?} (try 90s, 10m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("not a duration: {text:?} (try 90s, 10m, 1h)"),
    };
    Ok(Duration::from_secs(secs))
}

/// A program built next to this one (`target/release`).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: run the benchmark through scripts/bench, which builds it",
        path.display()
    );
    Ok(path)
}

/// The sitting: each part in turn, then the report.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let started = chrono::Utc::now();
    let bars = MultiProgress::new();
    let overall = bars.add(ProgressBar::new(args.parts.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} parts {msg}")?.progress_chars("=> "),
    );
    overall.set_prefix("sitting");
    let logs = std::env::temp_dir().join(format!("bench-logs-{}", started.format("%Y%m%dT%H%M%S")));
    std::fs::create_dir_all(&logs)?;
    let mut parts = Vec::new();
    let mut figures: Vec<Measured> = Vec::new();
    let mut notes = Vec::new();
    let secs = args.seconds.to_string();
    for part in &args.parts {
        overall.set_message(part.clone());
        let outputs = match part.as_str() {
            "write" => {
                let mut cmd = Command::new(sibling("write-bench")?);
                cmd.env("BENCH_SECONDS", &secs);
                vec![runner::run_part(&bars, "write", cmd, &logs).await?]
            }
            "relay" => vec![runner::run_part(&bars, "relay", Command::new(sibling("relay-bench")?), &logs).await?],
            "read" => {
                let mut cmd = Command::new(sibling("read-bench")?);
                cmd.arg(&secs);
                vec![runner::run_part(&bars, "read", cmd, &logs).await?]
            }
            "redis" => vec![redis_get(&bars, &logs).await?],
            "peer" => peer::run(&bars, &logs, &mut notes).await?,
            other => anyhow::bail!("unknown part {other:?}: write, relay, read, redis or peer"),
        };
        for out in outputs {
            if out.run.busy {
                notes.push(format!(
                    "The machine was busy before part {} ({:.0}% idle): its figures may be low.",
                    out.run.name,
                    out.run.cpu_idle_before * 100.0
                ));
            }
            parts.push(out.run);
            figures.extend(out.figures);
        }
        overall.inc(1);
    }
    overall.finish_with_message("done");
    if let Some(note) = postgres_note().await {
        notes.push(note);
    }
    let mut report = Report {
        date: started.format("%Y-%m-%d").to_string(),
        host: machine::host(),
        machine: machine::Machine::read(),
        started_at: started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        parts,
        figures,
        targets: Vec::new(),
        notes,
    };
    if args.merge {
        merge_earlier(&mut report, &args.out)?;
    }
    report.settle();
    let stem = write_report(&report, &args.out)?;
    println!("\nTargets (printed, never asserted):");
    for t in &report.targets {
        let got = match (t.got, t.rule.starts_with("share")) {
            (Some(g), true) => format!("{:.0}%", g * 100.0),
            (Some(g), false) => report::number(g),
            (None, _) => "not measured".to_owned(),
        };
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "n/a",
        };
        println!("  {:<58} {:<22} got {got:<10} {verdict}", t.what, t.rule);
    }
    println!(
        "\nReport: {}.md (and .json); the parts' logs are in {}",
        stem.display(),
        logs.display()
    );
    Ok(())
}

/// Adds to `report` the parts (and their figures and notes) of the earlier report with the
/// same stem that `report` did not run again.
fn merge_earlier(report: &mut Report, dir: &Path) -> anyhow::Result<()> {
    let path = report.stem(dir).with_extension("json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(());
    };
    let earlier: Report = serde_json::from_slice(&bytes).with_context(|| format!("read {}", path.display()))?;
    // A part is rerun if a part of the same family (`peer` covers `peer-*`) ran now.
    let family = |name: &str| name.split('-').next().unwrap_or(name).to_owned();
    let mut rerun: Vec<String> = report.parts.iter().map(|p| family(&p.name)).collect();
    rerun.sort();
    rerun.dedup();
    let kept = |name: &str| !rerun.contains(&family(name));
    let mut parts: Vec<_> = earlier.parts.into_iter().filter(|p| kept(&p.name)).collect();
    let mut figures: Vec<_> = earlier.figures.into_iter().filter(|m| kept(&m.part)).collect();
    parts.append(&mut report.parts);
    figures.append(&mut report.figures);
    report.parts = parts;
    report.figures = figures;
    let about_rerun = |n: &str| {
        n.starts_with("Merged:")
            || rerun
                .iter()
                .any(|r| n.contains(&format!("part {r}")) || n.contains(&format!("The {r}")))
    };
    let mut notes: Vec<String> = earlier.notes.into_iter().filter(|n| !about_rerun(n)).collect();
    notes.append(&mut report.notes);
    // Notes about the machine are written by every run: once is enough.
    let mut seen = std::collections::HashSet::new();
    notes.retain(|n| seen.insert(n.clone()));
    notes.push(format!(
        "Merged: parts {} were run again at {}; the others come from the sitting that started at {}.",
        rerun.join(", "),
        report.started_at,
        earlier.started_at
    ));
    report.notes = notes;
    report.started_at = earlier.started_at;
    Ok(())
}

/// Writes the JSON, the charts and the Markdown; returns the files' stem.
fn write_report(report: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    let stem = report.stem(dir);
    let charts = charts::draw(report, &stem)?;
    report::write_pair(&stem, report, &report.markdown(&charts))?;
    Ok(stem)
}

/// What the report should say about the machine's PostgreSQL settings: autovacuum off (as on
/// CI machines) leaves the outbox's dead rows unreclaimed, which shapes soak and growth figures.
async fn postgres_note() -> Option<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "root",
            "-d",
            "postgres",
            "-Atc",
            "SHOW autovacuum",
        ])
        .output()
        .await
        .ok()?;
    (String::from_utf8_lossy(&out.stdout).trim() == "off").then(|| {
        "autovacuum is off on this machine's PostgreSQL: dead rows (the outbox's sent and cleaned-up rows) are \
         only reclaimed by explicit VACUUMs."
            .to_owned()
    })
}

/// Redis GET of 1 KiB values from 64 connections (`redis-benchmark`, in a database of its own
/// whose key it deletes afterwards): the ceiling of a read served from Redis.
async fn redis_get(bars: &MultiProgress, logs: &Path) -> anyhow::Result<runner::PartOutput> {
    const DB: &str = "9";
    let mut cmd = Command::new("redis-benchmark");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        "6379",
        "--dbnum",
        DB,
        "-t",
        "set,get",
        "-d",
        "1024",
        "-c",
        "64",
        "-n",
        "400000",
        "--csv",
    ]);
    let mut out = runner::run_part(bars, "redis", cmd, logs).await?;
    // The SET run stored the key the GET run reads: remove it.
    let _ = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "-n", DB, "DEL", "key:__rand_int__"])
        .output()
        .await;
    let rps = out.lines.iter().find_map(|l| {
        let cols: Vec<&str> = l.split(',').map(|c| c.trim_matches('"')).collect();
        (cols.first() == Some(&"GET")).then(|| cols.get(1)?.parse::<f64>().ok())?
    });
    match rps {
        Some(rps) => out.figures.push(Measured {
            figure: Figure::new("raw.redis_get.rps", "Redis GET, 1 KiB, 64 connections", rps, "req/s")
                .with("connections", 64)
                .with("value_bytes", 1024),
            part: "redis".into(),
            raw_value: None,
            ratio: None,
        }),
        None => out.run.outcome = format!("no GET figure in redis-benchmark's output: {}", out.lines.join(" / ")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("10d").is_err());
    }
}
