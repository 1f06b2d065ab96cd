//! Figures the benchmark binaries hand to the report (`bench`): each one a line
//! `@figure {json}` on stdout, beside the lines people read. The binaries stay usable on their
//! own; `bench` runs them, collects these lines and divides each figure by its raw limit.
//!
//! A figure's `id` is a dotted name (`write.http.tps.c8`); `raw` names the figure of the same
//! run it is a share of (`raw.pgbench.tps.c8`), so the ratio is always taken against a limit
//! measured in the same sitting.

use serde::{Deserialize, Serialize};

/// The prefix of a figure line on stdout.
pub const PREFIX: &str = "@figure ";

/// One measured figure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// Dotted name, unique in a run.
    pub id: String,
    /// What it is, for people.
    pub label: String,
    pub value: f64,
    /// `rows/s`, `req/s`, `tps`, `ms`, `events/s`, `B`...
    pub unit: String,
    /// The id of the raw limit this figure is a share of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// How it was measured (clients, rate, rows, payload size...).
    #[serde(default)]
    pub conditions: serde_json::Map<String, serde_json::Value>,
}

impl Figure {
    /// A figure without a raw limit or conditions.
    pub fn new(id: impl Into<String>, label: impl Into<String>, value: f64, unit: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            label: label.into(),
            value,
            unit: unit.into(),
            raw: None,
            conditions: serde_json::Map::new(),
        }
    }

    /// The share of the raw limit `raw` (an id of the same run).
    #[must_use]
    pub fn of(mut self, raw: impl Into<String>) -> Self {
        self.raw = Some(raw.into());
        self
    }

    /// One more condition of the measurement.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.conditions.insert(key.to_owned(), value.into());
        self
    }

    /// Prints the figure's line for `bench` to collect.
    pub fn emit(&self) {
        println!("{PREFIX}{}", serde_json::to_string(self).expect("a figure serialises"));
    }

    /// The figure on `line`, if it is a figure line.
    pub fn parse(line: &str) -> Option<Result<Self, serde_json::Error>> {
        line.strip_prefix(PREFIX).map(serde_json::from_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_line_round_trips_and_other_lines_are_not_figures() {
        let f = Figure::new("write.http.tps.c8", "write-api, 8 clients", 1234.5, "tps")
            .of("raw.pgbench.tps.c8")
            .with("clients", 8);
        let line = format!("{PREFIX}{}", serde_json::to_string(&f).unwrap());
        assert_eq!(Figure::parse(&line).unwrap().unwrap(), f);
        assert!(Figure::parse("(a) raw lapin: 21000 msgs/s").is_none());
        assert!(Figure::parse("@figure {").unwrap().is_err());
    }
}
