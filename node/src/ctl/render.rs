//! Text output of `cohort ctl`: aligned tables, key/value sheets, colours, number formats.
//!
//! Role: everything a person reads. Tables have an upper-case header, columns separated by two
//! spaces, numbers right-aligned, no trailing blanks; a sheet is a column of labels and values.
//!
//! Invariants: colours (ANSI SGR) are added after the padding, so columns line up with and without
//! them, and only when the caller asks (stdout is a terminal and `NO_COLOR` is unset); every text
//! that came from a node has its control characters escaped ([`clean`]), so a registry name
//! cannot move the cursor or change the terminal's colours; an empty cell prints as `-`, so every
//! row splits on blanks into as many fields as the header.

use std::fmt::Write;

/// How a value is coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    /// No colour.
    Plain,
    /// Green: alive, ready, healthy, leader.
    Good,
    /// Yellow: suspect, lagging, degraded, drops.
    Warn,
    /// Red: down, not ready, unavailable.
    Bad,
    /// Dim: left, absent values.
    Dim,
    /// Bold: headers.
    Bold,
}

impl Paint {
    const fn sgr(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::Good => Some("32"),
            Self::Warn => Some("33"),
            Self::Bad => Some("31"),
            Self::Dim => Some("2"),
            Self::Bold => Some("1"),
        }
    }

    /// `text` in this colour (when `color`), else as is.
    pub fn apply(self, text: &str, color: bool) -> String {
        match self.sgr() {
            Some(code) if color => format!("\x1b[{code}m{text}\x1b[0m"),
            _ => text.to_string(),
        }
    }
}

/// Escape control characters (ESC, newlines, ...) of a text that came from a node.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// One table cell or sheet value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    text: String,
    paint: Paint,
}

impl Cell {
    /// A plain cell (cleaned).
    pub fn new(text: impl AsRef<str>) -> Self {
        Self::painted(text, Paint::Plain)
    }

    /// A coloured cell (cleaned).
    pub fn painted(text: impl AsRef<str>, paint: Paint) -> Self {
        let text = clean(text.as_ref());
        if text.is_empty() { Self { text: "-".into(), paint: Paint::Dim } } else { Self { text, paint } }
    }

    /// The text, without colour.
    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }

    fn width(&self) -> usize {
        self.text.chars().count()
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::new(text)
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::new(text)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Self {
        Cell::new(n.to_string())
    }
}

/// An aligned table.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self { headers: headers.to_vec(), right: vec![false; headers.len()], rows: Vec::new() }
    }

    /// Right-align these columns (numbers).
    pub fn right_aligned(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    /// Add a row (missing cells print as `-`, extra ones are dropped).
    pub fn row(&mut self, mut cells: Vec<Cell>) {
        cells.resize_with(self.headers.len(), || Cell::new(""));
        self.rows.push(cells);
    }

    /// The rendered table, one line per row after the header, each ending in a newline.
    pub fn render(&self, color: bool) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.width());
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self.headers.iter().map(|h| Cell::painted(*h, Paint::Bold)).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.width();
                let painted = cell.paint.apply(&cell.text, color);
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(&painted);
                } else {
                    line.push_str(&painted);
                    if i != last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
                if i != last {
                    line.push_str("  ");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

/// Labelled values, one per line: `label  value`, the values aligned.
#[derive(Debug, Default)]
pub struct Sheet {
    rows: Vec<(String, Cell)>,
}

impl Sheet {
    /// An empty sheet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `label  value`.
    pub fn add(&mut self, label: &str, value: impl Into<Cell>) {
        self.rows.push((label.to_string(), value.into()));
    }

    /// The rendered sheet.
    pub fn render(&self, color: bool) -> String {
        let width = self.rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (label, value) in &self.rows {
            let _ = writeln!(out, "{label:<width$}  {}", value.paint.apply(&value.text, color));
        }
        out
    }
}

/// `1536` -> `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3725` -> `1h02m05s`.
pub fn duration_s(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{sec:02}s")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// A list of names, `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() { "-".into() } else { items.join(", ") }
}

/// [`list`], sorted.
pub fn sorted_list(items: &[String]) -> String {
    let mut items = items.to_vec();
    items.sort();
    list(&items)
}

/// `yes` / `no`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The colour of a member state.
pub fn member_state(state: &str) -> Paint {
    match state {
        "alive" => Paint::Good,
        "suspect" => Paint::Warn,
        "down" => Paint::Bad,
        _ => Paint::Dim,
    }
}

/// The colour of a degraded mode.
pub fn degraded_mode(mode: &str) -> Paint {
    match mode {
        "healthy" => Paint::Good,
        "coordinator_degraded" | "root_lagging" => Paint::Warn,
        _ => Paint::Bad,
    }
}

/// The colour of a catch-up state.
pub fn catch_up_state(state: &str) -> Paint {
    match state {
        "fresh" => Paint::Good,
        "lagging" | "recovering" => Paint::Warn,
        _ => Paint::Bad,
    }
}

/// The colour of a raft role.
pub fn raft_role(role: &str) -> Paint {
    match role {
        "leader" => Paint::Good,
        "candidate" | "pre_candidate" => Paint::Warn,
        _ => Paint::Plain,
    }
}

/// Good when true, bad when false.
pub fn good_if(ok: bool) -> Paint {
    if ok { Paint::Good } else { Paint::Bad }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_with_and_without_colour() {
        let mut t = Table::new(&["NODE", "STATE", "N"]).right_aligned(&[2]);
        t.row(vec!["n0".into(), Cell::painted("alive", Paint::Good), 7u64.into()]);
        t.row(vec!["node-long".into(), Cell::painted("down", Paint::Bad), 1234u64.into()]);
        t.row(vec!["x".into()]);
        let plain = t.render(false);
        assert_eq!(
            plain,
            "NODE       STATE     N\nn0         alive     7\nnode-long  down   1234\nx          -         -\n"
        );
        let coloured = t.render(true);
        assert!(coloured.contains("\x1b[32malive\x1b[0m"), "{coloured:?}");
        let stripped = coloured.replace("\x1b[32m", "").replace("\x1b[31m", "").replace("\x1b[2m", "");
        let stripped = stripped.replace("\x1b[1m", "").replace("\x1b[0m", "");
        assert_eq!(stripped, plain);
    }

    #[test]
    fn node_text_cannot_reach_the_terminal() {
        let c = Cell::new("evil\x1b[2Jname\n");
        assert_eq!(c.text(), "evil\\u{1b}[2Jname\\n");
        assert_eq!(Cell::new("").text(), "-");
        assert_eq!(clean("plain é"), "plain é");
    }

    #[test]
    fn sheets_align_values() {
        let mut s = Sheet::new();
        s.add("role", "leader");
        s.add("commit index", 42u64);
        assert_eq!(s.render(false), "role          leader\ncommit index  42\n");
    }

    #[test]
    fn numbers_read_like_an_operator_expects() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(duration_s(42), "42s");
        assert_eq!(duration_s(3725), "1h02m05s");
        assert_eq!(duration_s(90_000), "1d01h00m");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["a".into(), "b".into()]), "a, b");
        assert_eq!(sorted_list(&["n2".into(), "n0".into()]), "n0, n2");
    }
}
