//! Runs one part of the sitting, a program of its own, with a spinner that shows its latest
//! line: `@figure` lines are collected, every line goes to the part's log file, and the CPU's
//! idle share is sampled before it starts.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use ordering_tests::figures::Figure;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::machine;
use crate::report::{BUSY_BELOW, Measured, PartRun};

/// What a part produced.
pub struct PartOutput {
    pub run: PartRun,
    pub figures: Vec<Measured>,
    /// Its stdout lines that are not figures (for parts whose programs print JSON of their own).
    pub lines: Vec<String>,
}

/// A spinner for one part under `bars`.
pub fn spinner(bars: &MultiProgress, name: &str) -> ProgressBar {
    let bar = bars.add(ProgressBar::new_spinner());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>8} [{elapsed_precise}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner())
            .tick_chars("⠁⠂⠄⡀⢀⠠⠐⠈ "),
    );
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Samples the CPU, then runs `cmd` to its end as part `name`; its output goes to
/// `<log_dir>/<name>.log`. A failing program is recorded in the part's outcome, not returned
/// as an error: the sitting goes on with the other parts.
pub async fn run_part(
    bars: &MultiProgress,
    name: &str,
    mut cmd: Command,
    log_dir: &Path,
) -> anyhow::Result<PartOutput> {
    let bar = spinner(bars, name);
    bar.set_message("sampling the CPU's idle share");
    let idle = machine::idle_share(Duration::from_secs(1)).await;
    let shown = format!("{:?}", cmd.as_std()).replace('"', "");
    bar.set_message(shown.clone());
    let log_path = log_dir.join(format!("{name}.log"));
    let mut log = tokio::fs::File::create(&log_path)
        .await
        .with_context(|| format!("create {}", log_path.display()))?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {shown}"))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        anyhow::bail!("{shown}: its output could not be read");
    };
    let mut out = BufReader::new(stdout).lines();
    let mut err = BufReader::new(stderr).lines();
    let (mut figures, mut lines, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let line = tokio::select! {
            l = out.next_line(), if out_open => match l? {
                Some(l) => l,
                None => { out_open = false; continue; }
            },
            l = err.next_line(), if err_open => match l? {
                Some(l) => l,
                None => { err_open = false; continue; }
            },
        };
        log.write_all(line.as_bytes()).await?;
        log.write_all(b"\n").await?;
        match Figure::parse(&line) {
            Some(Ok(figure)) => {
                bar.set_message(format!(
                    "{}: {} {}",
                    figure.label,
                    crate::report::number(figure.value),
                    figure.unit
                ));
                figures.push(Measured {
                    figure,
                    part: name.to_owned(),
                    raw_value: None,
                    ratio: None,
                });
            }
            Some(Err(e)) => problems.push(format!("unreadable figure line ({e}): {line}")),
            None => {
                bar.set_message(line.chars().take(160).collect::<String>());
                lines.push(line);
            }
        }
    }
    let status = child.wait().await?;
    let seconds = started.elapsed().as_secs_f64();
    let outcome = if status.success() && problems.is_empty() {
        "ok".to_owned()
    } else {
        let tail = lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ");
        format!(
            "failed ({status}); {}; last lines: {tail}; see {}",
            problems.join("; "),
            log_path.display()
        )
    };
    bar.finish_with_message(format!("{} figures in {seconds:.0} s: {outcome}", figures.len()));
    Ok(PartOutput {
        run: PartRun {
            name: name.to_owned(),
            command: shown,
            cpu_idle_before: idle,
            busy: idle < BUSY_BELOW,
            seconds,
            outcome,
        },
        figures,
        lines,
    })
}
