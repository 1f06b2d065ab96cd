//! Reading a Prometheus text exposition in tests: which metrics lack a `# HELP`, and the
//! value of one series.

use ordering_platform::meters::{Kind, Metric};

/// The metrics with a `# TYPE` line but no `# HELP` line.
pub fn undescribed(text: &str) -> Vec<String> {
    let named = |prefix: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix)?.split(' ').next())
            .collect()
    };
    let helped = named("# HELP ");
    named("# TYPE ")
        .into_iter()
        .filter(|n| !helped.contains(n))
        .map(str::to_owned)
        .collect()
}

/// The value of the series `name` carrying (at least) `labels`, if present.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every series of `catalog` whose labels are known in advance, as its counter (or its
/// histogram's `_count`) reads in `text`: the ones not at zero, or missing, are returned.
pub fn not_at_zero(text: &str, catalog: &[Metric]) -> Vec<String> {
    let mut wrong = Vec::new();
    for m in catalog {
        let name = match m.kind {
            Kind::Counter => m.name.to_owned(),
            Kind::Histogram => format!("{}_count", m.name),
            Kind::Gauge => continue,
        };
        for labels in m.series {
            if sample(text, &name, labels) != Some(0.0) {
                wrong.push(format!("{name}{labels:?}"));
            }
        }
    }
    wrong
}
