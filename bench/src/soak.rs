//! `bench soak <duration>`: the whole pipeline (write-api, two relays, read-api) under a steady
//! rate of random commands, sampled once a minute: lag (the services' own histograms, over that
//! minute), each service's resident memory, the outbox table's and its indexes' size, its dead
//! tuples and autovacuum runs. The report says, for each, whether it grows.
//!
//! The relay runs with `OUTBOX_RETENTION=2m` and cleanup every 30 s, so that the outbox reaches
//! its steady state within the run: with the default retention (7 days) it grows by design for a
//! week, which says nothing about leaks or bloat.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use indicatif::{ProgressBar, ProgressStyle};
use ordering_tests::pipeline::{Pipeline, PipelineOptions, memory_kib, pid_of};
use ordering_tests::process::addr_var;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::machine;

/// One minute's sample.
#[derive(Debug, Clone, Serialize)]
struct Minute {
    minute: u32,
    commands_answered: u64,
    relay_commit_to_confirm_p50_ms: Option<f64>,
    relay_commit_to_confirm_p99_ms: Option<f64>,
    read_event_lag_p50_ms: Option<f64>,
    read_event_lag_p99_ms: Option<f64>,
    rss_kib: Vec<(String, u64)>,
    outbox_table_bytes: i64,
    outbox_index_bytes: i64,
    outbox_live_rows: i64,
    outbox_dead_rows: i64,
    autovacuum_runs: i64,
    unsent_rows: i64,
}

/// The soak's report.
#[derive(Debug, Serialize)]
struct SoakReport {
    date: String,
    host: String,
    machine: machine::Machine,
    rate_asked: u32,
    duration_s: u64,
    cpu_idle_before: f64,
    minutes: Vec<Minute>,
    verdicts: Vec<(String, String)>,
}

/// Cumulative bucket counts of histogram `name` in a Prometheus text page: (upper bound s, count).
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = line.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let Some(count) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        // Series with other labels add up per bound.
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => out.push((le, count)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile (ms) of the observations between two pages' buckets, interpolated inside
/// its bucket as Prometheus' `histogram_quantile` does; `None` without observations.
fn quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, c0)| *c0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, count) in &delta {
        if *count >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let share = if count - lower.1 > 0.0 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return Some((lower.0 + (le - lower.0) * share) * 1000.0);
        }
        lower = (*le, *count);
    }
    None
}

#[derive(QueryableByName)]
struct TableStats {
    #[diesel(sql_type = BigInt)]
    table_bytes: i64,
    #[diesel(sql_type = BigInt)]
    index_bytes: i64,
    #[diesel(sql_type = BigInt)]
    live: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
    #[diesel(sql_type = BigInt)]
    autovacuums: i64,
    #[diesel(sql_type = BigInt)]
    unsent: i64,
}

/// The outbox's size and vacuum figures now.
async fn table_stats(p: &Pipeline) -> anyhow::Result<TableStats> {
    // In here only: its `load` and `first` would shadow the atomics' and the slices'.
    use diesel_async::RunQueryDsl;
    let mut conn = p.write_db.conn().await;
    Ok(diesel::sql_query(
        "SELECT pg_table_size('outbox') AS table_bytes, pg_indexes_size('outbox') AS index_bytes,
                s.n_live_tup AS live, s.n_dead_tup AS dead, s.autovacuum_count AS autovacuums,
                (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS unsent
           FROM pg_stat_user_tables s WHERE s.relname = 'outbox'",
    )
    .get_result(&mut conn)
    .await?)
}

/// Whether a series grows: its last value is over 20% above its value after the first minute
/// (the warm-up) and the last three samples never fall.
fn grows(series: &[f64]) -> bool {
    let (Some(&base), Some(&last)) = (series.get(1), series.last()) else {
        return false;
    };
    let tail = &series[series.len().saturating_sub(3)..];
    last > base * 1.2 + 1.0 && tail.windows(2).all(|w| w[1] >= w[0])
}

pub async fn run(duration: Duration, rate: u32, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let cpu_idle_before = machine::idle_share(Duration::from_secs(1)).await;
    let started = chrono::Utc::now();
    let relay_env = vec![
        ("OUTBOX_RETENTION".to_owned(), "2m".to_owned()),
        ("OUTBOX_CLEANUP_CRON".to_owned(), "*/30 * * * * *".to_owned()),
    ];
    let p = Pipeline::start(PipelineOptions {
        relays: 2,
        relay_env,
        ..Default::default()
    })
    .await;
    let driver = p.driver();
    driver.seed(50, 1_000_000_000, 200).await;
    let pids: Vec<(String, u32)> = [
        ("write-api", Some(&p.write_api)),
        ("outbox-relay", p.relays.first()),
        ("read-api", p.read_api.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, s)| Some((name.to_owned(), pid_of(addr_var(name), s?.addr)?)))
    .collect();
    // Commands are sent on a fixed schedule, at most 64 at a time: a slow answer does not slow
    // the rate asked, it shows up as lag.
    let inflight = Arc::new(Semaphore::new(64));
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (driver, inflight, answered, stop) = (driver.clone(), inflight.clone(), answered.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                // The semaphore is never closed; if it were, stop sending.
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let (driver, answered) = (driver.clone(), answered.clone());
                tokio::spawn(async move {
                    if driver.random_command().await.is_some() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
        })
    };
    let minutes_total = duration.as_secs().div_ceil(60).max(1);
    let bar = ProgressBar::new(minutes_total);
    bar.set_style(ProgressStyle::with_template("soak [{bar:30}] {pos}/{len} min {msg}")?.progress_chars("=> "));
    let mut relay_before = buckets(&p.relays[0].metrics().await, "relay_commit_to_confirm_seconds");
    let mut read_before = buckets(&p.read_metrics().await, "read_event_lag_seconds");
    let mut answered_before = 0;
    let mut minutes = Vec::new();
    let t0 = Instant::now();
    for minute in 1..=minutes_total {
        let until = Duration::from_secs((minute * 60).min(duration.as_secs()));
        tokio::time::sleep(until.saturating_sub(t0.elapsed())).await;
        let relay_now = buckets(&p.relays[0].metrics().await, "relay_commit_to_confirm_seconds");
        let read_now = buckets(&p.read_metrics().await, "read_event_lag_seconds");
        let stats = table_stats(&p).await?;
        let answered_now = answered.load(Ordering::Relaxed);
        let m = Minute {
            minute: minute as u32,
            commands_answered: answered_now - answered_before,
            relay_commit_to_confirm_p50_ms: quantile_ms(&relay_before, &relay_now, 0.5),
            relay_commit_to_confirm_p99_ms: quantile_ms(&relay_before, &relay_now, 0.99),
            read_event_lag_p50_ms: quantile_ms(&read_before, &read_now, 0.5),
            read_event_lag_p99_ms: quantile_ms(&read_before, &read_now, 0.99),
            rss_kib: pids
                .iter()
                .filter_map(|(n, pid)| Some((n.clone(), memory_kib(*pid)?.1)))
                .collect(),
            outbox_table_bytes: stats.table_bytes,
            outbox_index_bytes: stats.index_bytes,
            outbox_live_rows: stats.live,
            outbox_dead_rows: stats.dead,
            autovacuum_runs: stats.autovacuums,
            unsent_rows: stats.unsent,
        };
        bar.set_message(format!(
            "{} commands; read lag p99 {:.1} ms; outbox {} kB",
            m.commands_answered,
            m.read_event_lag_p99_ms.unwrap_or(f64::NAN),
            m.outbox_table_bytes / 1024
        ));
        bar.inc(1);
        minutes.push(m);
        (relay_before, read_before, answered_before) = (relay_now, read_now, answered_now);
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    bar.finish();
    let mut verdicts = Vec::new();
    let mut judge = |what: String, series: Vec<f64>| {
        let verdict = if series.len() < 3 {
            "too short to tell (3 minutes or more)".to_owned()
        } else if grows(&series) {
            format!(
                "GROWS: {} after minute 1, {} at the end",
                series[1],
                series[series.len() - 1]
            )
        } else {
            "flat".to_owned()
        };
        verdicts.push((what, verdict));
    };
    for (name, _) in &pids {
        judge(
            format!("{name} RSS (KiB)"),
            minutes
                .iter()
                .map(|m| {
                    m.rss_kib
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(0.0, |(_, v)| *v as f64)
                })
                .collect(),
        );
    }
    judge(
        "outbox table bytes".into(),
        minutes.iter().map(|m| m.outbox_table_bytes as f64).collect(),
    );
    judge(
        "outbox index bytes".into(),
        minutes.iter().map(|m| m.outbox_index_bytes as f64).collect(),
    );
    judge(
        "outbox dead rows".into(),
        minutes.iter().map(|m| m.outbox_dead_rows as f64).collect(),
    );
    judge(
        "read lag p99 (ms)".into(),
        minutes.iter().map(|m| m.read_event_lag_p99_ms.unwrap_or(0.0)).collect(),
    );
    let report = SoakReport {
        date: started.format("%Y-%m-%d").to_string(),
        host: machine::host(),
        machine: machine::Machine::read(),
        rate_asked: rate,
        duration_s: duration.as_secs(),
        cpu_idle_before,
        minutes,
        verdicts,
    };
    let stem = out.join(format!("{}-{}-soak", report.date, report.host));
    let md = markdown(&report);
    crate::report::write_pair(&stem, &report, &md)?;
    println!("{md}\nReport: {}.md (and .json)", stem.display());
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1}"))
}

fn markdown(r: &SoakReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak: {} on {}\n\n{} commands/s asked for {} s through write-api, two relays and read-api \
         (OUTBOX_RETENTION=2m, cleanup every 30 s); CPU {:.0}% idle before. Lag is each service's \
         histogram over the minute (interpolated within buckets).\n",
        r.date,
        r.host,
        r.rate_asked,
        r.duration_s,
        r.cpu_idle_before * 100.0
    );
    md.push_str("## Verdicts\n\n| what | verdict |\n|---|---|\n");
    for (what, verdict) in &r.verdicts {
        let _ = writeln!(md, "| {what} | {verdict} |");
    }
    md.push_str(
        "\n## Per minute\n\n| min | answered | first relay commit-to-confirm p50/p99 ms | read lag p50/p99 ms | RSS KiB (write, first relay, read) | \
         outbox table / index kB | live / dead rows | autovacuums | unsent |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in &r.minutes {
        let rss = m
            .rss_kib
            .iter()
            .map(|(_, v)| v.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {} / {} | {rss} | {} / {} | {} / {} | {} | {} |",
            m.minute,
            m.commands_answered,
            ms(m.relay_commit_to_confirm_p50_ms),
            ms(m.relay_commit_to_confirm_p99_ms),
            ms(m.read_event_lag_p50_ms),
            ms(m.read_event_lag_p99_ms),
            m.outbox_table_bytes / 1024,
            m.outbox_index_bytes / 1024,
            m.outbox_live_rows,
            m.outbox_dead_rows,
            m.autovacuum_runs,
            m.unsent_rows
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_minutes_own_observations() {
        let page = |counts: [u64; 4]| {
            format!(
                "x_bucket{{le=\"0.001\"}} {}\nx_bucket{{le=\"0.01\"}} {}\nx_bucket{{le=\"0.1\"}} {}\nx_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            )
        };
        let before = buckets(&page([10, 10, 10, 10]), "x");
        // 100 new observations, all between 1 and 10 ms.
        let after = buckets(&page([10, 110, 110, 110]), "x");
        let p50 = quantile_ms(&before, &after, 0.5).unwrap();
        assert!((p50 - 5.5).abs() < 1e-9, "{p50}");
        assert_eq!(quantile_ms(&after, &after, 0.5), None);
    }

    #[test]
    fn growth_is_a_rise_past_the_warm_up_that_does_not_fall_back() {
        assert!(grows(&[10.0, 100.0, 130.0, 160.0, 200.0]));
        assert!(!grows(&[10.0, 100.0, 130.0, 100.0, 110.0]));
        assert!(!grows(&[10.0, 100.0, 101.0, 102.0, 103.0]));
    }
}
