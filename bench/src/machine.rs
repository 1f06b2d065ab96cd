//! What machine the sitting ran on, and how busy it was: the idle share of the CPU is sampled
//! from `/proc/stat` over a second before each part, so a report taken on a busy machine says so.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The machine, as the report describes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc` (Linux); unknown fields stay empty elsewhere.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_default();
        let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// The host's name (from `/proc`, then `HOSTNAME`), made safe for a file name.
pub fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    name.trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

/// (idle, total) jiffies of all CPUs.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: idle and iowait are idle time.
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((idle, v.iter().take(8).sum()))
}

/// The CPU's idle share (0 to 1) over `window`; 1 where `/proc/stat` is missing.
pub async fn idle_share(window: Duration) -> f64 {
    let Some((idle0, total0)) = cpu_times() else {
        return 1.0;
    };
    tokio::time::sleep(window).await;
    let Some((idle1, total1)) = cpu_times() else {
        return 1.0;
    };
    let total = total1.saturating_sub(total0);
    if total == 0 {
        return 1.0;
    }
    idle1.saturating_sub(idle0) as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_loop_lowers_the_idle_share() {
        let spin = std::thread::spawn(|| {
            let end = std::time::Instant::now() + Duration::from_millis(600);
            let mut x = 0u64;
            while std::time::Instant::now() < end {
                x = x.wrapping_add(1);
            }
            x
        });
        let idle = idle_share(Duration::from_millis(500)).await;
        spin.join().unwrap();
        let cpus = Machine::read().cpus as f64;
        // One core of `cpus` spinning: idle at most (cpus - 1) / cpus, with some slack.
        assert!(
            idle <= (cpus - 1.0) / cpus + 0.1,
            "idle {idle} with one core spinning of {cpus}"
        );
        assert!(!host().is_empty());
    }
}
