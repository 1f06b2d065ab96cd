//! How `outbox-relay dlq list` and `dlq show` print dead letters: an aligned table and a
//! record view for people, NDJSON for scripts. Only text is made here; the rows come from
//! [`crate::store::DeadLetters`].
//!
//! Aggregate ids, event types and errors come from the outbox, that is from whoever writes
//! it: control characters are replaced before they reach a terminal, so a row cannot move
//! the cursor or recolour the screen of the operator reading it.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use ordering_platform::terminal::{clip, clip_middle, printable};

use crate::store::{DeadLetter, DeadLetterDetail, DeadLetterPage};

/// The table's width when the terminal's is not known (`COLUMNS` unset).
pub const DEFAULT_WIDTH: usize = 120;

const HEADERS: [&str; 6] = [
    "OUTBOX ID",
    "AGGREGATE",
    "EVENT TYPE",
    "ATTEMPTS",
    "DEAD SINCE",
    "LAST ERROR",
];
/// Event types are cut here (a poison row's may be hundreds of characters long).
const MAX_EVENT_TYPE: usize = 32;
/// Aggregates are cut in the middle, keeping their type and the end of their id, to at most
/// this (room for `product/<uuid>`), and down to [`MIN_AGGREGATE`] if the line is short.
const MAX_AGGREGATE: usize = 48;
const MIN_AGGREGATE: usize = 24;
/// The error column is never narrower than this, even if the line then overflows.
const MIN_ERROR: usize = 20;
const GAP: &str = "  ";

/// `page` as an aligned table fitting `width` characters, the last error cut to fit, or one
/// line saying there are none in `table`; a footer says how many were left out.
pub fn table(out: &mut impl Write, page: &DeadLetterPage, table: &str, width: usize) -> io::Result<()> {
    if page.letters.is_empty() {
        return writeln!(out, "no dead letters in {table}");
    }
    let rows: Vec<[String; 6]> = page
        .letters
        .iter()
        .map(|d| {
            [
                d.outbox_id.to_string(),
                printable(&format!("{}/{}", d.aggregate_type, d.aggregate_id), false),
                clip(&printable(&d.event_type, false), MAX_EVENT_TYPE),
                d.attempts.to_string(),
                timestamp(d.dead_at),
                printable(&d.last_error, false),
            ]
        })
        .collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // What the aggregate and the error share: the line less the other columns and the gaps.
    let others: usize = [0, 2, 3, 4].iter().map(|&i| widths[i]).sum();
    let room = width.saturating_sub(others + 5 * GAP.len());
    // The error keeps MIN_ERROR; past that, the aggregate gives way down to MIN_AGGREGATE.
    widths[1] = widths[1]
        .min(MAX_AGGREGATE)
        .min(room.saturating_sub(MIN_ERROR).max(MIN_AGGREGATE));
    let error_width = room.saturating_sub(widths[1]).max(MIN_ERROR);
    let header = HEADERS.map(str::to_owned);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row[..5].iter().zip(widths).enumerate() {
            match i {
                // Numbers right-aligned, as people compare them by their last digits.
                0 | 3 => line.push_str(&format!("{cell:>w$}{GAP}")),
                1 => line.push_str(&format!("{:<w$}{GAP}", clip_middle(cell, w))),
                _ => line.push_str(&format!("{cell:<w$}{GAP}")),
            }
        }
        line.push_str(&clip(&row[5], error_width));
        writeln!(out, "{}", line.trim_end())?;
    }
    if let Some(note) = more_note(page) {
        writeln!(out, "{note}")?;
    }
    Ok(())
}

/// `letters` as NDJSON: one object per dead letter, every field in full.
pub fn ndjson(out: &mut impl Write, letters: &[DeadLetter]) -> io::Result<()> {
    for d in letters {
        serde_json::to_writer(&mut *out, d)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// What a page left out, e.g. "showing 100 of 250 dead letters (--limit <n> or --all for the
/// rest)"; `None` when it shows them all.
pub fn more_note(page: &DeadLetterPage) -> Option<String> {
    let shown = page.letters.len() as i64;
    (page.total > shown).then(|| {
        format!(
            "showing {shown} of {} dead letters, oldest first ({} more: --limit <n> or --all)",
            page.total,
            page.total - shown
        )
    })
}

/// One dead letter in full: its fields, headers, last error and payload (pretty JSON).
pub fn show(out: &mut impl Write, d: &DeadLetterDetail) -> io::Result<()> {
    let l = &d.letter;
    let missing = || "(the outbox row is gone)".to_owned();
    let fields = [
        ("outbox id", l.outbox_id.to_string()),
        ("event id", l.event_id.to_string()),
        ("aggregate type", printable(&l.aggregate_type, false)),
        ("aggregate id", printable(&l.aggregate_id, false)),
        ("sequence", l.sequence.to_string()),
        ("event type", printable(&l.event_type, false)),
        ("attempts", l.attempts.to_string()),
        ("dead since", timestamp(l.dead_at)),
        ("written at", d.created_at.map_or_else(missing, timestamp)),
        (
            "headers",
            d.headers.as_ref().map_or_else(missing, serde_json::Value::to_string),
        ),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (key, value) in fields {
        writeln!(out, "{:width$} {value}", format!("{key}:"))?;
    }
    writeln!(out, "last error:")?;
    for line in printable(&l.last_error, true).lines() {
        writeln!(out, "  {line}")?;
    }
    writeln!(out, "payload:")?;
    match &d.payload {
        Some(p) => writeln!(out, "{}", serde_json::to_string_pretty(p)?),
        None => writeln!(out, "{}", missing()),
    }
}

/// `d` as one JSON object on one line.
pub fn show_json(out: &mut impl Write, d: &DeadLetterDetail) -> io::Result<()> {
    serde_json::to_writer(&mut *out, d)?;
    out.write_all(b"\n")
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: i64, event_type: &str, error: &str) -> DeadLetter {
        DeadLetter {
            outbox_id: id,
            event_id: uuid::Uuid::nil(),
            aggregate_type: "order".into(),
            aggregate_id: "a-1".into(),
            sequence: 2,
            event_type: event_type.into(),
            attempts: 5,
            last_error: error.into(),
            dead_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    fn render(page: &DeadLetterPage, width: usize) -> String {
        let mut out = Vec::new();
        table(&mut out, page, "outbox", width).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_table_is_aligned_and_fits_the_width() {
        let page = DeadLetterPage {
            letters: vec![
                letter(7, "order.placed", &"broker refused the message (nack) ".repeat(10)),
                letter(12345, &"x".repeat(300), "routing key\nover 255 bytes\x1b[31m"),
            ],
            total: 2,
        };
        let text = render(&page, 130);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("OUTBOX ID  AGGREGATE"), "{text}");
        // The errors start where their header does, and the lines fit.
        let at = lines[0].find("LAST ERROR").unwrap();
        for l in &lines[1..] {
            assert!(l.chars().count() <= 130, "{l}");
            assert_eq!(l.chars().nth(at - 1), Some(' '), "{text}");
            assert!(l.chars().nth(at).is_some_and(|c| c.is_alphabetic()), "{text}");
        }
        assert!(lines[1].starts_with("        7  order/a-1"), "{text}");
        assert!(lines[1].ends_with('…') && lines[1].chars().count() == 130, "{text}");
        assert!(lines[2].contains(&format!("  {}…  ", "x".repeat(31))), "{text}");
        assert!(lines[2].ends_with("routing key over 255 bytes\u{fffd}[31m"), "{text}");
        assert!(!text.contains('\x1b'));
        // Never narrower than MIN_ERROR, however narrow the terminal.
        assert!(
            render(&page, 10)
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("broker refused the …")
        );
    }

    #[test]
    fn a_long_aggregate_gives_way_in_its_middle_before_the_error_does() {
        let id = "0193f2a4-7c1e-7b3a-9d2e-5f8a1c2b3d4e";
        let mut d = letter(1, "order.paid", &"the queue is full; ".repeat(5));
        d.aggregate_id = id.into();
        let page = DeadLetterPage {
            letters: vec![d],
            total: 1,
        };
        let wide = render(&page, 200);
        assert!(wide.contains(&format!("  order/{id}  ")), "{wide}");
        let narrow = render(&page, 110);
        let row = narrow.lines().nth(1).unwrap();
        assert_eq!(row.chars().count(), 110, "{narrow}");
        assert!(
            row.contains("  order/0193f2a4-7…d2e-5f8a1c2b3d4e  order.paid"),
            "{narrow}"
        );
        assert!(row.ends_with("  the queue is full; …"), "{narrow}");
        assert_eq!(clip_middle("abcdef", 4), "ab…f");
    }

    #[test]
    fn none_says_so_and_a_cut_page_says_how_many_more() {
        let empty = DeadLetterPage {
            letters: vec![],
            total: 0,
        };
        assert_eq!(render(&empty, 80), "no dead letters in outbox\n");
        let page = DeadLetterPage {
            letters: vec![letter(1, "order.placed", "nack")],
            total: 3,
        };
        let text = render(&page, 80);
        assert!(text.ends_with("(2 more: --limit <n> or --all)\n"), "{text}");
        assert_eq!(more_note(&DeadLetterPage { total: 1, ..page }), None);
    }

    #[test]
    fn show_prints_the_error_in_full_and_the_payload_pretty() {
        let error = "nack\nsecond line ".repeat(40);
        let d = DeadLetterDetail {
            letter: letter(9, "order.placed", &error),
            created_at: None,
            headers: Some(serde_json::json!({"x": "y"})),
            payload: Some(serde_json::json!({"data": {"total": 1}})),
        };
        let mut out = Vec::new();
        show(&mut out, &d).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("outbox id:      9\n"), "{text}");
        assert!(text.contains("written at:     (the outbox row is gone)"), "{text}");
        assert_eq!(text.matches("  second line").count(), 40, "{text}");
        assert!(
            text.ends_with("payload:\n{\n  \"data\": {\n    \"total\": 1\n  }\n}\n"),
            "{text}"
        );
        let mut out = Vec::new();
        show_json(&mut out, &d).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["last_error"], error.as_str());
        assert_eq!(v["payload"]["data"]["total"], 1);
    }
}
