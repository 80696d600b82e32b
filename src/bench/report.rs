//! Printing a result: one JSON line on stdout (for scripts) and a readable
//! two-column table on stderr (for people).

use serde::Serialize;

use super::stats::{human_us, Summary};

/// A readable table of `name  value` rows.
#[derive(Debug, Default)]
pub struct Table {
    title: String,
    rows: Vec<(String, String)>,
}

impl Table {
    /// An empty table with a title line.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.rows.push((name.to_owned(), value.to_string()));
        self
    }

    /// Adds the percentiles of a latency summary as one row.
    pub fn latency(&mut self, name: &str, s: &Summary) -> &mut Self {
        let value = if s.count == 0 {
            "-".to_owned()
        } else {
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
                human_us(s.p50),
                human_us(s.p90),
                human_us(s.p99),
                human_us(s.p999),
                human_us(s.max),
                s.count
            )
        };
        self.row(name, value)
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (n, v) in &self.rows {
            out.push_str(&format!("  {n:<width$}  {v}\n"));
        }
        out
    }
}

/// Prints `table` to stderr and `report` as one JSON line to stdout.
pub fn emit<T: Serialize>(table: &Table, report: &T) -> anyhow::Result<()> {
    eprint!("{}", table.render());
    println!("{}", serde_json::to_string(report)?);
    Ok(())
}

/// Formats a rate with thousands separators (`12,345/s`).
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", thousands(per_sec.round() as u64))
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_rows() {
        let mut t = Table::new("bench");
        t.row("a", 1).row("longer", "x");
        t.latency("lat", &Summary::default());
        assert_eq!(t.render(), "bench\n  a       1\n  longer  x\n  lat     -\n");
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate(12345.4), "12,345/s");
    }
}
