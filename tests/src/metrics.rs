//! Prometheus text exposition format (version 0.0.4): scraping an admin port and reading values.
//!
//! The parser is strict where a broken exporter would show: bad names, bad escapes, unparsable
//! values, a label given twice, or the same series exposed twice are errors.

use std::collections::HashSet;
use std::net::SocketAddr;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(label, value)` pair of `wanted` is among this sample's labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// `GET http://<admin>/metrics`; panics unless it answers 200.
pub async fn scrape(admin: SocketAddr) -> String {
    let url = format!("http://{admin}/metrics");
    let response = crate::client::http_get(&url)
        .await
        .unwrap_or_else(|e| panic!("scraping {url}: {e}"));
    assert_eq!(response.status, 200, "scraping {url}: {}", response.text());
    response.text()
}

/// Sum of the values of every series named exactly `name` (for a histogram, name the
/// `_bucket`/`_sum`/`_count` series) whose labels include all of `labels`; 0 if there is none.
/// Panics if `text` is not valid exposition format.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name, labels).iter().map(|s| s.value).sum()
}

/// Every series named `name` whose labels include all of `labels`. Panics on invalid text.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    parse(text)
        .unwrap_or_else(|e| panic!("invalid metrics text: {e}\n{text}"))
        .into_iter()
        .filter(|s| s.name == name && s.has_labels(labels))
        .collect()
}

/// Parses a whole exposition. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", index + 1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment).map_err(at)?;
            continue;
        }
        let sample = parse_sample(line).map_err(at)?;
        let mut key: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        key.sort();
        if !seen.insert((sample.name.clone(), key)) {
            return Err(at("series exposed twice".to_owned()));
        }
        samples.push(sample);
    }
    Ok(samples)
}

fn check_comment(comment: &str) -> Result<(), String> {
    let mut words = comment.split_whitespace();
    match words.next() {
        Some("TYPE") => {
            let name = words.next().ok_or("TYPE without a metric name")?;
            check_metric_name(name)?;
            match words.next() {
                Some("counter" | "gauge" | "histogram" | "summary" | "untyped") => Ok(()),
                other => Err(format!("unknown metric type {other:?}")),
            }
        }
        Some("HELP") => check_metric_name(words.next().ok_or("HELP without a metric name")?),
        _ => Ok(()),
    }
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let ok = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).ok_or("no value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

type Labels = Vec<(String, String)>;

/// Parses `a="x",b="y"}` (after the opening brace); returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let name = s[..eq].trim();
        check_label_name(name)?;
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name:?} given twice"));
        }
        let after_eq = s[eq + 1..].trim_start();
        let quoted = after_eq.strip_prefix('"').ok_or("label value not quoted")?;
        let (value, after_value) = unescape_until_quote(quoted)?;
        labels.push((name.to_owned(), value));
        s = after_value.trim_start();
        if let Some(after_comma) = s.strip_prefix(',') {
            s = after_comma;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label".to_owned());
        }
    }
}

/// Reads an escaped label value up to its closing quote; returns it and the text after the quote.
fn unescape_until_quote(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                other => return Err(format!("bad escape {:?}", other.map(|(_, c)| c))),
            },
            '\n' => return Err("raw newline in label value".to_owned()),
            c => value.push(c),
        }
    }
    Err("unterminated label value".to_owned())
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}
