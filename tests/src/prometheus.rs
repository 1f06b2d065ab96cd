//! The shipped monitoring files (deploy/prometheus, deploy/grafana) in tests: a real Prometheus
//! (Debian's `prometheus`, installed by `scripts/services`) scraping a test pipeline with the
//! shipped alert rules, and the metric names the rules and the dashboard use.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::process::free_addr;

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
}

/// The shipped alert rules (deploy/prometheus/ordering.rules.yml).
pub fn shipped_rules() -> String {
    read("deploy/prometheus/ordering.rules.yml")
}

/// `rules` with every alert's `for:` set to `duration`: the shipped durations (minutes to an hour) are too
/// long for a test. Expressions and thresholds are left as shipped.
pub fn with_for(rules: &str, duration: &str) -> String {
    rules
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: {duration}", &l[..l.len() - l.trim_start().len()]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `expr:` of a rule file, single-line or a `|` block.
pub fn rule_exprs(rules: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" {
            exprs.push(rest.to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = Vec::new();
        while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent || l.trim().is_empty()) {
            block.push(next.trim());
        }
        exprs.push(block.join(" "));
    }
    exprs
}

/// Every query (`targets[].expr`) of the shipped Grafana dashboard.
pub fn dashboard_exprs() -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/ordering.json")).expect("dashboard JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

/// PromQL words that are not metric names: functions, aggregations, keywords.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "delta",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "histogram_quantile",
    "absent",
    "scalar",
    "vector",
    "bool",
    "offset",
];

/// The metric names in a PromQL expression: identifiers outside label matchers, `by (...)`
/// lists and strings that are not functions or keywords. A histogram's `_bucket`, `_sum` and
/// `_count` series are named by the histogram.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    // Inside `{...}`, a string, or the label list after by/without/on/ignoring/group_*.
    let mut braces = false;
    let mut label_list = false;
    let mut last_word = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => braces = true,
            '}' => braces = false,
            '"' => {
                for (_, s) in chars.by_ref() {
                    if s == '"' {
                        break;
                    }
                }
            }
            '[' => {
                // A range or subquery: `[5m]`, `[5m:30s]`.
                for (_, s) in chars.by_ref() {
                    if s == ']' {
                        break;
                    }
                }
            }
            '(' if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&last_word.as_str()) => {
                label_list = true;
            }
            ')' => label_list = false,
            // A number or a duration (`0.99`, `5m`): its letters are no name.
            c if c.is_ascii_digit() => {
                while chars.next_if(|&(_, n)| n.is_ascii_alphanumeric() || n == '.').is_some() {}
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, n)) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' || n == ':' {
                        end = j + n.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &expr[i..end];
                last_word = word.to_owned();
                let next = expr[end..].trim_start();
                let is_function = next.starts_with('(');
                if !braces && !label_list && !is_function && !PROMQL_WORDS.contains(&word) {
                    let name = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    names.insert(name.to_owned());
                }
                continue;
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_word.clear();
        }
    }
    names
}

/// A Prometheus server of the test's own on a free port, its data in a temporary directory
/// (removed on drop); killed when dropped.
pub struct Prometheus {
    addr: SocketAddr,
    dir: PathBuf,
    client: reqwest::Client,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` (job name → instances) every second, evaluating
    /// `rules` every second, and waits until it is ready.
    pub async fn start(jobs: &[(&str, Vec<SocketAddr>)], rules: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("prometheus-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create the Prometheus directory");
        std::fs::write(dir.join("rules.yml"), rules).expect("write the rules");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\nscrape_configs:\n",
        );
        for (job, targets) in jobs {
            let targets: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{targets: [{}]}}]\n",
                targets.join(", ")
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
        let addr = free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn prometheus ({e}): run scripts/services (it installs Debian's prometheus)")
            });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let prometheus = Self {
            addr,
            dir,
            client,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = prometheus.client.get(prometheus.url("/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready within 20 s: {}",
                std::fs::read_to_string(prometheus.dir.join("prometheus.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get_data(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let body: Value = self
            .client
            .get(reqwest::Url::parse_with_params(&self.url(path), query).expect("URL"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(body["status"], "success", "GET {path}: {body}");
        body["data"].clone()
    }

    /// The result of an instant query (`/api/v1/query`).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.get_data("/api/v1/query", &[("query", promql)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts now pending or firing (`/api/v1/alerts`).
    pub async fn alerts(&self) -> Vec<Value> {
        let data = self.get_data("/api/v1/alerts", &[]).await;
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until an alert `name` whose labels include `labels` is firing; returns it and how
    /// long that took, failing after `limit` with the alerts seen.
    pub async fn wait_firing(&self, name: &str, labels: &[(&str, &str)], limit: Duration) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let alerts = self.alerts().await;
            let found = alerts.iter().find(|a| {
                a["state"] == "firing"
                    && a["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            });
            if let Some(a) = found {
                return (a.clone(), start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "{name} {labels:?} not firing after {limit:?}; alerts: {alerts:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
