//! The Prometheus text exposition format (version 0.0.4): a writer for the daemons' `/metrics`
//! and a parser for `kvtier stat` and the tests. Pure code.

use std::collections::BTreeMap;
use std::fmt::Write;

use kvtier_core::error::{Error, Result};
use kvtier_core::metrics::{Family, FamilyKind, HistogramSnapshot, LATENCY_BUCKETS};

/// The `Content-Type` of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes metric families. Samples of one family must be written one after another (the
/// `# HELP` and `# TYPE` lines are written when the name changes).
#[derive(Default)]
pub struct Writer {
    out: String,
    family: String,
}

/// Labels of one sample, `(name, value)`.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Writer {
    /// An empty page.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: &str) {
        if self.family != name {
            let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
            let _ = writeln!(self.out, "# TYPE {name} {kind}");
            self.family = name.to_string();
        }
    }

    fn sample(&mut self, name: &str, labels: Labels, extra: Option<(&str, &str)>, v: f64) {
        self.out.push_str(name);
        let all = labels.iter().copied().chain(extra);
        let mut first = true;
        for (k, val) in all {
            self.out.push(if first { '{' } else { ',' });
            first = false;
            let _ = write!(self.out, "{k}=\"{}\"", escape(val));
        }
        if !first {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(v));
    }

    /// A counter sample.
    pub fn counter(&mut self, f: Family, labels: Labels, v: u64) {
        debug_assert_eq!(f.kind(), FamilyKind::Counter, "{f:?}");
        let name = f.name();
        self.family(name, f.help(), "counter");
        self.sample(name, labels, None, v as f64);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, f: Family, labels: Labels, v: f64) {
        debug_assert_eq!(f.kind(), FamilyKind::Gauge, "{f:?}");
        let name = f.name();
        self.family(name, f.help(), "gauge");
        self.sample(name, labels, None, v);
    }

    /// A histogram of [`LATENCY_BUCKETS`]: cumulative buckets, `_sum`, `_count`.
    pub fn histogram(&mut self, f: Family, labels: Labels, h: &HistogramSnapshot) {
        debug_assert_eq!(f.kind(), FamilyKind::Histogram, "{f:?}");
        let name = f.name();
        self.family(name, f.help(), "histogram");
        let bucket = format!("{name}_bucket");
        let mut cum = 0u64;
        for (i, c) in h.counts.iter().enumerate() {
            cum += c;
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |b| number(*b));
            self.sample(&bucket, labels, Some(("le", &le)), cum as f64);
        }
        self.sample(&format!("{name}_sum"), labels, None, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, None, cum as f64);
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Integers without a fraction (counters stay exact), other values as Rust prints them.
fn number(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v.fract() == 0.0 && v.abs() < 9.007_199_254_740_992e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` for histogram parts).
    pub name: String,
    /// Labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// `name{a="x",b="y"}` with labels sorted: one string per series.
    pub fn series(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let l: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        format!("{}{{{}}}", self.name, l.join(","))
    }

    /// The value of label `k`, or "".
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// Parses a page of the text format. Comment lines are skipped; a malformed line is an error
/// naming its number.
pub fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|e| {
            Error::invalid(format!("metrics line {}: {}: `{line}`", n + 1, e.message()))
        })?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or_else(|| Error::invalid("no value"))?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err(Error::invalid("no metric name"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let end;
        loop {
            // Skip separators, then read `key="value"` or the closing brace.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(i, c)) = chars.peek() else {
                return Err(Error::invalid("unclosed label set"));
            };
            if c == '}' {
                end = i + 1;
                break;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|x| x.1) != Some('"') {
                return Err(Error::invalid(format!("label `{key}` has no quoted value")));
            }
            let mut val = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next().map(|x| x.1) {
                        Some('n') => val.push('\n'),
                        Some(o) => val.push(o),
                        None => break,
                    },
                    o => val.push(o),
                }
            }
            if !closed {
                return Err(Error::invalid(format!("label `{key}` is not closed")));
            }
            labels.insert(key.trim().to_string(), val);
        }
        rest = &r[end..];
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| Error::invalid("no value"))?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .map_err(|_| Error::invalid(format!("`{v}` is not a number")))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_core::metrics::Histogram;
    use std::time::Duration;

    #[test]
    fn what_is_written_parses_back() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(20));
        let mut w = Writer::new();
        w.counter(Family::Hits, &[("tier", "memory")], 7);
        w.counter(Family::Hits, &[("tier", "pool")], 9_007_199_254_740_000);
        w.gauge(Family::AgentSessions, &[], 0.5);
        w.gauge(Family::TenantSessions, &[("tenant", "a \"b\" \\c\nd")], 1.0);
        w.histogram(Family::RequestSeconds, &[("op", "get")], &h.snapshot());
        let page = w.finish();
        assert_eq!(page.matches("# TYPE kvtier_hits_total counter").count(), 1);
        let s = parse(&page).unwrap();
        let get = |series: &str| s.iter().find(|x| x.series() == series).map(|x| x.value);
        assert_eq!(get("kvtier_hits_total{tier=\"memory\"}"), Some(7.0));
        assert_eq!(
            get("kvtier_hits_total{tier=\"pool\"}"),
            Some(9_007_199_254_740_000.0)
        );
        assert_eq!(get("kvtier_agent_sessions"), Some(0.5));
        let t = s
            .iter()
            .find(|x| x.name == "kvtier_tenant_sessions")
            .unwrap();
        assert_eq!(t.label("tenant"), "a \"b\" \\c\nd");
        assert_eq!(
            get("kvtier_request_duration_seconds_bucket{le=\"0.0001\",op=\"get\"}"),
            Some(0.0)
        );
        assert_eq!(
            get("kvtier_request_duration_seconds_bucket{le=\"0.0005\",op=\"get\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("kvtier_request_duration_seconds_bucket{le=\"10\",op=\"get\"}"),
            Some(1.0)
        );
        assert_eq!(
            get("kvtier_request_duration_seconds_bucket{le=\"+Inf\",op=\"get\"}"),
            Some(2.0)
        );
        assert_eq!(
            get("kvtier_request_duration_seconds_count{op=\"get\"}"),
            Some(2.0)
        );
        assert!(
            (get("kvtier_request_duration_seconds_sum{op=\"get\"}").unwrap() - 20.0003).abs()
                < 1e-9
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("# ok\na 1\nb{x=1} 2\n").unwrap_err();
        assert_eq!(e.kind(), kvtier_core::error::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(parse("a{x=\"1\"} one")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!(parse("a{x=\"1\" 1").is_err());
    }
}
