//! Text for people at a terminal: what the CLIs print from data someone else wrote (dead
//! letters, broker messages). Control characters are replaced before they reach a terminal,
//! so a row cannot move the cursor or recolour the screen of the operator reading it; long
//! cells are cut with a visible `…`.

/// `s` with control characters replaced: line breaks and tabs by a space (or kept, with
/// `keep_lines`), anything else by U+FFFD.
pub fn printable(s: &str, keep_lines: bool) -> String {
    s.chars()
        .map(|c| match c {
            '\n' if keep_lines => c,
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// `s` cut at its end to at most `max` characters, the cut marked with `…`.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` cut in its middle to at most `max` characters, keeping both ends.
pub fn clip_middle(s: &str, max: usize) -> String {
    let len = s.chars().count();
    if len <= max {
        return s.to_owned();
    }
    let tail = max.saturating_sub(1) / 2;
    let head = max.saturating_sub(1) - tail;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(len - tail));
    out
}
