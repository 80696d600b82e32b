//! `/metrics` as Prometheus would read it: the raw text with small lookups
//! of one sample, a strict parser of text format 0.0.4 that fails the test
//! on any malformed line, and a wait for a gauge to reach a value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{get, Daemon, T};

/// The `/metrics` text.
pub async fn metrics(d: &Daemon) -> String {
    let r = get(&format!("{}/metrics", d.http_base()), None).await;
    assert_eq!(r.status, 200);
    r.text
}

/// `/metrics`, parsed strictly.
pub async fn scrape(d: &Daemon) -> Metrics {
    parse_prometheus(&get(&format!("{}/metrics", d.http_base()), None).await.text)
}

/// Polls `/metrics` until the unlabelled metric `name` has the value `want`.
pub async fn wait_metric(d: &Daemon, name: &str, want: f64) {
    let deadline = Instant::now() + T;
    loop {
        let m = metrics(d).await;
        if metric(&m, name) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {want}:\n{m}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The value of a metric with one label whose value is `label`.
pub fn metric_labeled(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        let rest = n.strip_prefix(name)?.strip_prefix('{')?;
        rest.contains(&format!("=\"{label}\""))
            .then(|| v.trim().parse().ok())
            .flatten()
    })
}

/// A parsed Prometheus text exposition.
#[derive(Default, Debug)]
pub struct Metrics {
    /// family → type
    pub types: HashMap<String, String>,
    /// (name, sorted labels) → value
    pub samples: HashMap<(String, Vec<(String, String)>), f64>,
}

impl Metrics {
    /// A sample's value; 0 when absent (a counter not yet incremented).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.samples
            .get(&(name.to_owned(), l))
            .copied()
            .unwrap_or(0.0)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses Prometheus text format 0.0.4 strictly, panicking on any malformed
/// line: `# HELP name text`, `# TYPE name type`, other comments, and samples
/// `name{label="value",...} value [timestamp]`.
pub fn parse_prometheus(text: &str) -> Metrics {
    let mut m = Metrics::default();
    let mut helped = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| -> ! { panic!("/metrics line {}: {why}: {line:?}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(h) = rest.strip_prefix("HELP ") {
                let name = h.split(' ').next().unwrap_or("");
                if !is_metric_name(name) {
                    bad("HELP of a bad name");
                }
                if helped.insert(name.to_owned(), ()).is_some() {
                    bad("second HELP");
                }
            } else if let Some(t) = rest.strip_prefix("TYPE ") {
                let parts: Vec<&str> = t.split(' ').collect();
                if parts.len() != 2 || !is_metric_name(parts[0]) {
                    bad("malformed TYPE");
                }
                if !matches!(
                    parts[1],
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    bad("unknown type");
                }
                if m.types
                    .insert(parts[0].to_owned(), parts[1].to_owned())
                    .is_some()
                {
                    bad("second TYPE");
                }
            }
            continue;
        }
        // name
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad("no value"));
        let name = &line[..name_end];
        if !is_metric_name(name) {
            bad("bad metric name");
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut r = r;
            loop {
                if let Some(after) = r.strip_prefix('}') {
                    r = after;
                    break;
                }
                let eq = r.find('=').unwrap_or_else(|| bad("label without ="));
                let key = &r[..eq];
                if !is_label_name(key) {
                    bad("bad label name");
                }
                let v = r[eq + 1..]
                    .strip_prefix('"')
                    .unwrap_or_else(|| bad("unquoted label value"));
                let mut value = String::new();
                let mut chars = v.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            _ => bad("bad escape in label value"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bad("unterminated label value"),
                    }
                };
                labels.push((key.to_owned(), value));
                r = &v[end + 1..];
                if let Some(after) = r.strip_prefix(',') {
                    r = after;
                } else if !r.starts_with('}') {
                    bad("labels not separated by ,");
                }
            }
            rest = r;
        }
        let fields: Vec<&str> = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| bad("no space before the value"))
            .split(' ')
            .collect();
        if fields.is_empty() || fields.len() > 2 {
            bad("expected a value and an optional timestamp");
        }
        let value = match fields[0] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| bad("value is not a float")),
        };
        if fields.len() == 2 && fields[1].parse::<i64>().is_err() {
            bad("timestamp is not an integer");
        }
        // Every sample belongs to a declared family.
        let family = [name, "_bucket", "_sum", "_count"]
            .iter()
            .skip(1)
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| {
                matches!(
                    m.types.get(*f).map(String::as_str),
                    Some("histogram" | "summary")
                )
            })
            .unwrap_or(name);
        if !m.types.contains_key(family) {
            bad("sample without a TYPE line before it");
        }
        labels.sort();
        if m.samples.insert((name.to_owned(), labels), value).is_some() {
            bad("duplicate sample");
        }
    }
    assert!(!m.samples.is_empty(), "/metrics has no samples:\n{text}");
    m
}
