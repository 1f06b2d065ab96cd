//! The report's charts, drawn with plotters as SVG (no font files needed: text stays SVG text):
//! each stage's throughput as a share of its raw limit, lag percentiles against the offered
//! rate (ours beside the peer's), and latency percentiles.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Measured, Report};

/// One bar: its label and height.
struct Bar {
    label: String,
    value: f64,
}

fn draw_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e}")
}

/// Bars over categories `0..n`, labelled below.
fn bar_chart(path: &Path, title: &str, y_desc: &str, bars: &[Bar], guide: Option<f64>) -> anyhow::Result<()> {
    let n = bars.len().max(1);
    let top = bars
        .iter()
        .map(|b| b.value)
        .chain(guide)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let root = SVGBackend::new(path, (140 * n as u32 + 160, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(draw_err)?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let label_of = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label_of)
        .x_label_style(("sans-serif", 12))
        .y_desc(y_desc)
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let x = i as f64;
            Rectangle::new([(x - 0.35, 0.0), (x + 0.35, b.value)], BLUE.mix(0.7).filled())
        }))
        .map_err(draw_err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let text = if b.value >= 10.0 {
                format!("{:.0}", b.value)
            } else {
                format!("{:.1}", b.value)
            };
            Text::new(text, (i as f64 - 0.2, b.value + top * 0.02), ("sans-serif", 13))
        }))
        .map_err(draw_err)?;
    if let Some(g) = guide {
        chart
            .draw_series(LineSeries::new([(-0.5, g), (n as f64 - 0.5, g)], RED.stroke_width(1)))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    Ok(())
}

/// Throughput as a share (%) of the raw limit measured in the same sitting.
fn shares(report: &Report) -> Vec<Bar> {
    report
        .figures
        .iter()
        .filter(|m| m.figure.unit != "ms" && m.figure.unit != "us")
        .filter_map(|m| {
            Some(Bar {
                label: short(&m.figure.id),
                value: m.ratio? * 100.0,
            })
        })
        .collect()
}

/// A figure id without its leading stage word, short enough for an axis.
fn short(id: &str) -> String {
    id.replace("write.http.tps.", "write ")
        .replace("relay.drain.", "relay ")
        .replace(".rps", "")
        .replace("read.", "read ")
}

/// The lag runs of `prefix` (`relay.lag` or `peer.<mode>.lag`): (rate asked, ms) per quantile.
fn lag_points(report: &Report, prefix: &str, quantile: &str) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = report
        .figures
        .iter()
        .filter(|m| m.figure.id.starts_with(&format!("{prefix}.{quantile}.")))
        .filter(|m| {
            m.figure
                .conditions
                .get("aggregates")
                .and_then(serde_json::Value::as_i64)
                != Some(20)
        })
        .filter_map(|m| Some((m.figure.conditions.get("rate_asked")?.as_f64()?, m.figure.value)))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// A named line of (x, y) points in a colour.
type Series = (String, Vec<(f64, f64)>, RGBColor);

fn lag_chart(path: &Path, report: &Report) -> anyhow::Result<bool> {
    let series: Vec<Series> = [
        ("ours p50", "relay.lag", "p50", BLUE),
        ("ours p99", "relay.lag", "p99", RGBColor(0, 0, 120)),
        ("peer, polling p50", "peer.polling.lag", "p50", RGBColor(230, 120, 0)),
        ("peer, polling p99", "peer.polling.lag", "p99", RED),
        ("peer, logical p50", "peer.logical.lag", "p50", RGBColor(0, 150, 0)),
        ("peer, logical p99", "peer.logical.lag", "p99", RGBColor(0, 90, 0)),
    ]
    .into_iter()
    .map(|(name, prefix, q, color)| (name.to_owned(), lag_points(report, prefix, q), color))
    .filter(|(_, points, _)| !points.is_empty())
    .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let all = series.iter().flat_map(|(_, p, _)| p.iter());
    let (max_rate, max_ms) = all.fold((1.0f64, 1.0f64), |(r, m), (x, y)| (r.max(*x), m.max(*y)));
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Commit-to-delivery lag against the offered rate", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_rate * 1.1, (0.1f64..max_ms * 2.0).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("offered rate (rows/s)")
        .y_desc("lag (ms, log scale)")
        .draw()
        .map_err(draw_err)?;
    for (name, points, color) in series {
        let clamp = |(x, y): (f64, f64)| (x, y.max(0.1));
        chart
            .draw_series(LineSeries::new(
                points.iter().copied().map(clamp),
                color.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(
                points
                    .iter()
                    .copied()
                    .map(clamp)
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(true)
}

/// p50 and p99 of every latency figure measured (`latency_p50` / `latency_p99` in its id).
fn latencies(report: &Report) -> Vec<Bar> {
    report
        .figures
        .iter()
        .filter(|m: &&Measured| m.figure.unit == "ms" && m.figure.id.contains(".latency_"))
        .map(|m| Bar {
            label: m
                .figure
                .id
                .replace(".latency_", " ")
                .replace("raw.pgbench", "pgbench")
                .replace("write.http", "write"),
            value: m.figure.value,
        })
        .collect()
}

/// Draws the charts beside the report's stem; returns (title, file name) of each drawn.
pub fn draw(report: &Report, stem: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut drawn = Vec::new();
    let file = |suffix: &str| {
        let path = stem.with_file_name(format!(
            "{}-{suffix}.svg",
            stem.file_name().and_then(|s| s.to_str()).unwrap_or("report")
        ));
        let name = path.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        (path, name)
    };
    let bars = shares(report);
    if !bars.is_empty() {
        let (path, name) = file("share-of-raw");
        let title = "Throughput as a share of the raw limit (same sitting)";
        bar_chart(&path, title, "% of raw limit", &bars, Some(100.0))?;
        drawn.push((title.to_owned(), name));
    }
    let (path, name) = file("lag");
    if lag_chart(&path, report)? {
        drawn.push((
            "Lag percentiles against the offered rate, ours beside the peer's".to_owned(),
            name,
        ));
    }
    let bars = latencies(report);
    if !bars.is_empty() {
        let (path, name) = file("latency");
        let title = "Latency percentiles (write-api and pgbench by clients; reads)";
        bar_chart(&path, title, "ms", &bars, None)?;
        drawn.push((title.to_owned(), name));
    }
    Ok(drawn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use ordering_tests::figures::Figure;

    #[test]
    fn charts_are_svg_with_the_figures_labels() {
        let figures = vec![
            Figure::new("raw.pgbench.tps.c8", "pgbench", 1000.0, "tps"),
            Figure::new("write.http.tps.c8", "write", 650.0, "tps").of("raw.pgbench.tps.c8"),
            Figure::new("write.http.latency_p99.c8", "p99", 12.5, "ms"),
            Figure::new("relay.lag.p50.rate100.aggregates1000", "lag", 1.2, "ms").with("rate_asked", 100.0),
            Figure::new("relay.lag.p50.rate2000.aggregates1000", "lag", 3.4, "ms").with("rate_asked", 2000.0),
            Figure::new("peer.polling.lag.p50.rate100", "peer", 180.0, "ms").with("rate_asked", 100.0),
        ];
        let mut report = Report {
            date: "2026-12-04".into(),
            host: "test".into(),
            machine: Machine::default(),
            started_at: String::new(),
            finished_at: String::new(),
            parts: vec![],
            figures: figures
                .into_iter()
                .map(|figure| Measured {
                    figure,
                    part: "p".into(),
                    raw_value: None,
                    ratio: None,
                })
                .collect(),
            targets: vec![],
            notes: vec![],
        };
        report.settle();
        let dir = std::env::temp_dir().join(format!("bench-charts-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let drawn = draw(&report, &report.stem(&dir)).unwrap();
        assert_eq!(drawn.len(), 3, "{drawn:?}");
        let share = std::fs::read_to_string(dir.join("2026-12-04-test-share-of-raw.svg")).unwrap();
        assert!(
            share.starts_with("<svg") && share.contains("write c8") && share.contains("\n65\n</text>"),
            "{share}"
        );
        let lag = std::fs::read_to_string(dir.join("2026-12-04-test-lag.svg")).unwrap();
        assert!(lag.contains("peer, polling p50") && lag.contains("ours p50"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
