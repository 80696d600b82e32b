//! How client commands print: results on stdout (text for people, or one
//! JSON object per line with `--json`), messages on stderr, colours only
//! on a terminal that wants them (`NO_COLOR`, `CLICOLOR`, `TERM=dumb` are
//! respected through anstream's choice).
//!
//! Everything printed as text passes through [`clean`]: run errors, prompts
//! and outputs are written by users (a tenant's http node can return any
//! bytes), and a control character in them must not reach a terminal as a
//! command. JSON output needs no such care: serde escapes control
//! characters.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::time::{Duration, UNIX_EPOCH};

use anstyle::{AnsiColor, Style};
use serde_json::Value;

use super::error::Result;

/// The printer of one command.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`: JSON lines on stdout.
    pub json: bool,
    /// Colours on stdout.
    color: bool,
    /// Colours on stderr.
    color_err: bool,
}

/// The look of a status or an event type.
#[derive(Debug, Clone, Copy)]
pub enum Tone {
    Good,
    Bad,
    Warn,
    Info,
    Dim,
    Plain,
}

impl Out {
    /// A printer for this process's stdout and stderr.
    pub fn new(json: bool) -> Self {
        let wants = |c: anstream::ColorChoice| c != anstream::ColorChoice::Never;
        Self {
            json,
            color: !json && wants(anstream::AutoStream::choice(&std::io::stdout())),
            color_err: wants(anstream::AutoStream::choice(&std::io::stderr())),
        }
    }

    /// Whether stdout and stderr are both terminals (a progress bar can be drawn).
    pub fn interactive(&self) -> bool {
        !self.json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
    }

    /// Whether stderr gets colours.
    pub fn color_err(&self) -> bool {
        self.color_err
    }

    /// Writes one line on stdout.
    pub fn line(&self, text: &str) -> Result<()> {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{text}")?;
        o.flush()?;
        Ok(())
    }

    /// Writes one JSON line on stdout.
    pub fn json_line(&self, v: &Value) -> Result<()> {
        self.line(&v.to_string())
    }

    /// Writes a message on stderr (a lost stderr is not worth failing for).
    pub fn note(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }

    /// `text` in `tone`, when stdout has colours.
    pub fn paint(&self, tone: Tone, text: &str) -> String {
        paint(self.color, tone, text)
    }

    /// `text` in `tone`, when stderr has colours.
    pub fn paint_err(&self, tone: Tone, text: &str) -> String {
        paint(self.color_err, tone, text)
    }

    /// Writes rows as a table with a header line, columns padded to fit.
    pub fn table(&self, header: &[&str], rows: &[Vec<(Tone, String)>]) -> Result<()> {
        let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (w, (_, cell)) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let render = |cells: Vec<(Tone, &str)>| {
            let last = cells.len().saturating_sub(1);
            let mut line = String::new();
            for (i, ((tone, cell), w)) in cells.into_iter().zip(&width).enumerate() {
                line.push_str(&self.paint(tone, cell));
                if i < last {
                    let pad = w.saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_owned()
        };
        self.line(&render(header.iter().map(|h| (Tone::Dim, *h)).collect()))?;
        for row in rows {
            self.line(&render(row.iter().map(|(t, c)| (*t, c.as_str())).collect()))?;
        }
        Ok(())
    }
}

fn paint(on: bool, tone: Tone, text: &str) -> String {
    let style = match tone {
        Tone::Good => Style::new().fg_color(Some(AnsiColor::Green.into())),
        Tone::Bad => Style::new().fg_color(Some(AnsiColor::Red.into())).bold(),
        Tone::Warn => Style::new().fg_color(Some(AnsiColor::Yellow.into())),
        Tone::Info => Style::new().fg_color(Some(AnsiColor::Cyan.into())),
        Tone::Dim => Style::new().dimmed(),
        Tone::Plain => Style::new(),
    };
    if on {
        format!("{}{text}{}", style.render(), style.render_reset())
    } else {
        text.to_owned()
    }
}

/// `s` safe for a terminal: control characters (ESC, CR, BEL, ...) and
/// bidi/format characters shown escaped, never interpreted.
pub fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                if bad(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn cut(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

/// A JSON value for one line of text: a string as is, anything else as
/// compact JSON; cleaned and cut.
pub fn show_value(v: &Value, max: usize) -> String {
    let text = match v {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(other.to_string()),
    };
    cut(&clean(&text), max).into_owned()
}

/// A field of an event or record as text ("" when absent).
pub fn field<'a>(v: &'a Value, key: &str) -> Cow<'a, str> {
    match v.get(key) {
        None | Some(Value::Null) => Cow::Borrowed(""),
        Some(Value::String(s)) => clean(s),
        Some(other) => Cow::Owned(other.to_string()),
    }
}

/// A Unix time in milliseconds as UTC, to the second.
pub fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The tone of a run or node status.
pub fn status_tone(status: &str) -> Tone {
    match status {
        "completed" => Tone::Good,
        "failed" => Tone::Bad,
        "cancelled" | "skipped" => Tone::Warn,
        "running" | "active" => Tone::Info,
        _ => Tone::Plain,
    }
}

/// The tone of an event type.
pub fn event_tone(kind: &str) -> Tone {
    match kind {
        "workflow_completed" | "node_completed" => Tone::Good,
        "workflow_failed" | "node_failed" => Tone::Bad,
        "workflow_cancelled" | "node_skipped" | "approval_required" | "replay_gap" => Tone::Warn,
        "workflow_started" | "node_started" => Tone::Info,
        _ => Tone::Dim,
    }
}

/// Longest error text on one event line.
const EVENT_ERROR_CHARS: usize = 300;

/// What an event says, in a few words after its type (no run id).
pub fn event_detail(ev: &Value) -> String {
    let kind = ev.get("type").and_then(Value::as_str).unwrap_or("");
    let node = field(ev, "node_id");
    let error = || cut(&field(ev, "error"), EVENT_ERROR_CHARS).into_owned();
    match kind {
        "workflow_started" => format!(
            "{}: {} nodes",
            field(ev, "tag"),
            ev.get("nodes")
                .map_or(Cow::Borrowed("?"), |_| field(ev, "nodes"))
        ),
        "node_started" => format!("{node} (attempt {})", field(ev, "attempt")),
        "node_completed" => format!(
            "{node} {} (counter {})",
            field(ev, "result_ref"),
            field(ev, "counter")
        ),
        "node_failed" => {
            let again = if ev.get("will_retry").and_then(Value::as_bool) == Some(true) {
                ", will retry"
            } else {
                ""
            };
            format!(
                "{node} (attempt {}{again}): {}",
                field(ev, "attempt"),
                error()
            )
        }
        "node_skipped" => format!("{node}: {}", field(ev, "reason")),
        "node_progress" => {
            let pct = ev.get("progress").and_then(Value::as_f64).unwrap_or(0.0) * 100.0;
            format!("{node} {pct:.0}% {}", field(ev, "message"))
        }
        "approval_required" => format!(
            "{node}: {} (flowcast approve|reject {} {node})",
            ev.get("prompt")
                .map_or(String::new(), |p| show_value(p, 200)),
            field(ev, "run_id")
        ),
        "workflow_completed" => String::new(),
        "workflow_failed" => format!("node {}: {}", field(ev, "failed_node"), error()),
        "workflow_cancelled" => String::new(),
        "replay_gap" => format!(
            "events after {} were trimmed from history; resuming at {}",
            field(ev, "requested_after"),
            field(ev, "oldest_available")
        ),
        _ => {
            let mut rest = ev.clone();
            if let Some(o) = rest.as_object_mut() {
                for k in ["type", "run_id", "seq", "event_id", "timestamp", "ts_ms"] {
                    o.remove(k);
                }
            }
            show_value(&rest, 300)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_characters_never_reach_a_terminal() {
        assert_eq!(clean("plain text é"), "plain text é");
        let hostile = "a\u{1b}[2J\u{1b}]0;pwned\u{7}b\rc\u{202e}d";
        let shown = clean(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert!(!shown.contains('\u{202e}'));
        assert!(shown.contains("\\u{1b}"));
    }

    #[test]
    fn cuts_on_characters() {
        assert_eq!(cut("héllo", 10), "héllo");
        assert_eq!(cut("héllo", 2), "hé…");
        assert_eq!(show_value(&json!("x\ny"), 10), "x\\u{a}y");
        assert_eq!(show_value(&json!({"a": 1}), 10), "{\"a\":1}");
    }

    #[test]
    fn events_read_as_sentences() {
        let failed = json!({"type": "node_failed", "node_id": "n", "attempt": 2,
                            "will_retry": true, "error": "boom\u{1b}[31m"});
        let d = event_detail(&failed);
        assert!(d.starts_with("n (attempt 2, will retry): boom"), "{d}");
        assert!(!d.contains('\u{1b}'));
        let started = json!({"type": "workflow_started", "tag": "t", "nodes": 3});
        assert_eq!(event_detail(&started), "t: 3 nodes");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
