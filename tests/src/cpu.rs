//! CPU time spent by groups of processes (the relay, PostgreSQL, the broker, the benchmark
//! itself), read from `/proc`. On two cores shared by every part of the pipeline, a stage's
//! throughput is the cores divided by the CPU each row costs all the processes together, so the
//! benchmarks report that cost per row and per process rather than only a rate.

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `USER_HZ`, 100 on every Linux
/// architecture this runs on (the kernel fixes it for user space whatever its own tick).
const TICKS_PER_SECOND: f64 = 100.0;

/// The parent pid and the CPU seconds in a `/proc/<pid>/stat` line: user + system, with those
/// of the children that ended and were waited for (so PostgreSQL's backends that came and went
/// count, under the postmaster, and so does a load generator run to its end).
pub fn parse_stat(stat: &str) -> Option<(u32, f64)> {
    let fields = stat_fields(stat)?;
    let parent = fields.get(1)?.parse().ok()?;
    // utime, stime, cutime and cstime are fields 14 to 17 of the line, 12 to 15 after the name
    // and the state.
    Some((parent, ticks(&fields, 11..15)? / TICKS_PER_SECOND))
}

/// The CPU seconds in a `/proc/<pid>/stat` line of the process alone: user + system, without
/// its children's (a load generator it ran and waited for is not counted as its own work).
pub fn parse_own_seconds(stat: &str) -> Option<f64> {
    Some(ticks(&stat_fields(stat)?, 11..13)? / TICKS_PER_SECOND)
}

/// The fields of a stat line after the command name (field 2), which is in parentheses and may
/// hold spaces: the state (field 3) is the first.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect())
}

/// The sum of the clock-tick fields at `range` (indexes of [`stat_fields`]).
fn ticks(fields: &[&str], range: std::ops::Range<usize>) -> Option<f64> {
    range.map(|i| fields.get(i)?.parse::<f64>().ok()).sum()
}

/// CPU seconds of `pid` so far ([`parse_stat`]), or `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, s)| s)
}

/// Every process's pid and stat line.
fn all_stats() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, std::fs::read_to_string(e.path().join("stat")).ok()?))
        })
        .collect()
}

/// CPU seconds of `parent` and of its live children, from every process's stat line: a child's
/// time moves into the parent's when it ends, so the sum never falls as children come and go.
pub fn tree_seconds(parent: u32, stats: &[(u32, String)]) -> Option<f64> {
    let mut own = None;
    let mut children = 0.0;
    for (pid, stat) in stats {
        let Some((ppid, secs)) = parse_stat(stat) else {
            continue;
        };
        if *pid == parent {
            own = Some(secs);
        } else if ppid == parent {
            children += secs;
        }
    }
    Some(own? + children)
}

/// The processes whose command name (`/proc/<pid>/comm`) is `comm`.
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .collect()
}

/// A group of processes whose CPU time is summed.
#[derive(Debug, Clone)]
pub enum Group {
    /// These processes.
    Pids(Vec<u32>),
    /// Every process of this command name when sampled: PostgreSQL's backends come and go.
    Named(String),
    /// A process and its children (a PostgreSQL server of its own: the postmaster's pid).
    Tree(u32),
    /// The calling process (with the children it waited for).
    This,
    /// The calling process alone, without the children it waited for (a server running in
    /// the benchmark's process while the load generator it runs is measured apart).
    ThisAlone,
}

impl Group {
    /// CPU seconds the group used so far, `None` if none of it could be read.
    pub fn seconds(&self) -> Option<f64> {
        let sum = |pids: Vec<u32>| {
            let times: Vec<f64> = pids.into_iter().filter_map(cpu_seconds).collect();
            (!times.is_empty()).then(|| times.iter().sum())
        };
        match self {
            Group::Pids(p) => sum(p.clone()),
            Group::Named(comm) => sum(pids_named(comm)),
            Group::Tree(parent) => tree_seconds(*parent, &all_stats()),
            Group::This => cpu_seconds(std::process::id()),
            Group::ThisAlone => parse_own_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?),
        }
    }
}

/// CPU time of several groups from a starting point.
pub struct CpuMeter {
    groups: Vec<(String, Group, Option<f64>)>,
    machine_busy: Option<f64>,
}

impl CpuMeter {
    /// Starts counting for `groups` (name, group) now.
    pub fn start(groups: Vec<(&str, Group)>) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|(n, g)| {
                    let s = g.seconds();
                    (n.to_owned(), g, s)
                })
                .collect(),
            machine_busy: machine_busy_seconds(),
        }
    }

    /// CPU seconds each group used since the start, in the order given, then `machine` (every
    /// core's busy time, whoever used it). A process started since counts from zero; one that
    /// ended since is missed unless a process of the group waited for it.
    pub fn used(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = self
            .groups
            .iter()
            .map(|(name, g, before)| {
                let used = match (before, g.seconds()) {
                    (Some(b), Some(now)) => (now - b).max(0.0),
                    // Nothing of the group was running at the start: all its time is new.
                    (None, Some(now)) => now,
                    (_, None) => 0.0,
                };
                (name.clone(), used)
            })
            .collect();
        if let (Some(before), Some(now)) = (self.machine_busy, machine_busy_seconds()) {
            out.push(("machine".to_owned(), now - before));
        }
        out
    }
}

/// Prints and emits (as `cost.{of}.{group}` figures, in µs) what each unit of work (a
/// message, a transaction) cost each group of `used` (from [`CpuMeter::used`]) over `units`.
pub fn report_per_unit(of: &str, label: &str, used: &[(String, f64)], units: f64) {
    let per_unit: Vec<(&str, f64)> = used
        .iter()
        .map(|(g, secs)| (g.as_str(), secs * 1e6 / units.max(1.0)))
        .collect();
    let line: Vec<String> = per_unit.iter().map(|(g, us)| format!("{g} {us:.1}")).collect();
    println!("    CPU µs each, {label}: {}", line.join(", "));
    for (group, us) in per_unit {
        crate::figures::Figure::new(
            format!("cost.{of}.{group}"),
            format!("CPU each, {label}: {group}"),
            us,
            "µs",
        )
        .with("units", units)
        .emit();
    }
}

/// Busy CPU seconds of all cores since boot (`/proc/stat`: everything but idle and iowait).
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = cpu.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle) / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_is_counted_for_this_process_and_the_machine() {
        let meter = CpuMeter::start(vec![("me", Group::This)]);
        let end = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let used = meter.used();
        assert_eq!(used[0].0, "me");
        assert!(used[0].1 >= 0.2, "{used:?}");
        assert_eq!(used[1].0, "machine");
        assert!(used[1].1 >= used[0].1 - 0.02, "{used:?}");
    }

    #[test]
    fn a_child_that_ended_and_was_waited_for_is_counted_unless_alone() {
        let meter = CpuMeter::start(vec![("me", Group::This), ("alone", Group::ThisAlone)]);
        // A fixed amount of work for the child (a few tenths of a second of CPU); this
        // process only waits meanwhile, so without the child's time it would count ~0.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let used = meter.used();
        assert!(used[0].1 >= 0.05, "{used:?}");
        assert!(used[1].1 < used[0].1 / 2.0, "{used:?}");
    }

    #[test]
    fn a_tree_is_its_root_with_reaped_children_and_its_live_children() {
        // pid (comm) state ppid ... utime stime cutime cstime at fields 14-17.
        let line = |pid: u32, ppid: u32, ticks: [u32; 4]| {
            let [u, s, cu, cs] = ticks;
            (
                pid,
                format!("{pid} (post gres) S {ppid} 1 1 0 -1 4194304 0 0 0 0 {u} {s} {cu} {cs} 20 0 1 0"),
            )
        };
        let stats = [
            line(7, 1, [100, 20, 50, 10]),
            line(8, 7, [30, 5, 0, 0]),
            line(9, 1, [999, 0, 0, 0]),
        ];
        assert_eq!(parse_stat(&stats[0].1), Some((1, 1.8)));
        assert_eq!(parse_own_seconds(&stats[0].1), Some(1.2));
        let secs = tree_seconds(7, &stats).unwrap();
        assert!((secs - 2.15).abs() < 1e-9, "{secs}");
        assert_eq!(tree_seconds(5, &stats), None);
    }

    #[test]
    fn this_process_is_found_by_its_name() {
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(pids_named(comm.trim_end()).contains(&std::process::id()));
    }
}
