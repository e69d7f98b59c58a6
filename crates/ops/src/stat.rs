//! `kvtier stat`: a view of a running agent or pool server, from its `/metrics`. One scrape
//! gives the counts (`--once --json` prints them, every series included); two give rates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::http;
use super::prom::{self, Sample};
use super::render::{AGENT_TIERS, POOL_TIERS};
use kvtier_core::error::{Error, ErrorKind, Result};
use kvtier_core::metrics::Family;

/// One scrape.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every sample of the page.
    pub samples: Vec<Sample>,
    /// When it was taken.
    pub at: Instant,
}

/// Scrapes `url` (`host:port`, `http://host:port` or a URL with a path; the path defaults to
/// `/metrics`).
pub fn scrape(url: &str, timeout: Duration) -> Result<Snapshot> {
    let (addr, path) = http::split_url(url, "/metrics");
    let (status, body) = http::get(addr, path, timeout)?;
    if status != 200 {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!("http://{addr}{path} answered {status}: {}", body.trim()),
        ));
    }
    let samples = prom::parse(&body).map_err(|e| Error::corrupt(e.message().to_string()))?;
    Ok(Snapshot {
        samples,
        at: Instant::now(),
    })
}

impl Snapshot {
    /// The value of the first sample of `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
            .map(|s| s.value)
    }

    /// The sum over every sample of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == *v))
            .map(|s| s.value)
            .sum()
    }

    /// The distinct values of `label` on samples of `name`, in page order.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let v = s.label(label).to_string();
            if !out.contains(&v) {
                out.push(v);
            }
        }
        out
    }

    /// `agent`, `pool`, or `unknown`.
    pub fn role(&self) -> String {
        self.samples
            .iter()
            .find(|s| s.name == Family::BuildInfo.name())
            .map_or("unknown".into(), |s| s.label("role").to_string())
    }

    fn tiers(&self) -> &'static [&'static str] {
        match self.role().as_str() {
            "pool" => &POOL_TIERS,
            _ => &AGENT_TIERS,
        }
    }

    /// The error counters the page carries: (JSON key, words for the screen, total).
    fn errors(&self) -> Vec<(&'static str, &'static str, f64)> {
        [
            (
                "dropped_writes",
                "dropped writes",
                Family::DroppedWrites.name(),
            ),
            ("corrupt_objects", "corrupt objects", Family::Corrupt.name()),
            ("bad_records", "bad records", Family::PoolBadRecords.name()),
            (
                "failed_requests",
                "failed requests",
                Family::PoolErrors.name(),
            ),
            (
                "rejected_connections",
                "rejected connections",
                Family::PoolRejected.name(),
            ),
        ]
        .into_iter()
        .filter(|(_, _, name)| self.samples.iter().any(|x| x.name == *name))
        .map(|(key, label, name)| (key, label, self.sum(name, &[])))
        .collect()
    }

    /// Of every lookup, the share some tier served: hits over hits plus the last tier's misses.
    pub fn hit_ratio(&self) -> Option<f64> {
        let tiers = self.tiers();
        let hits: f64 = tiers
            .iter()
            .map(|t| self.sum(Family::Hits.name(), &[("tier", t)]))
            .sum();
        let last = tiers
            .last()
            .map_or(0.0, |t| self.sum(Family::Misses.name(), &[("tier", t)]));
        ratio(hits, hits + last)
    }

    /// Upper bound of the bucket holding quantile `q` of op `op`'s latency, in seconds.
    pub fn latency_quantile(&self, op: &str, q: f64, base: Option<&Snapshot>) -> Option<f64> {
        let bucket = format!("{}_bucket", Family::RequestSeconds.name());
        let mut b: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == bucket && s.label("op") == op)
            .map(|s| {
                let le = match s.label("le") {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::INFINITY),
                };
                let before = base.map_or(0.0, |p| {
                    p.sum(&bucket, &[("op", op), ("le", s.label("le"))])
                });
                (le, s.value - before)
            })
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let total = b.last()?.1;
        if total <= 0.0 {
            return None;
        }
        b.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// A number as JSON: integers stay integers.
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// The counts of one scrape as JSON (`kvtier stat --once --json`): a summary by tier, op,
/// queue and tenant, and `metrics`, every series of the page with its value.
pub fn summary(url: &str, s: &Snapshot) -> Value {
    let mut tiers = Map::new();
    for t in s.tiers() {
        let l = [("tier", *t)];
        let hits = s.sum(Family::Hits.name(), &l);
        let misses = s.sum(Family::Misses.name(), &l);
        let mut m = Map::new();
        m.insert("hits".into(), num(hits));
        m.insert("misses".into(), num(misses));
        m.insert("hit_ratio".into(), json!(ratio(hits, hits + misses)));
        for (key, name) in [
            ("bytes_in", Family::BytesIn.name()),
            ("bytes_out", Family::BytesOut.name()),
            ("used_bytes", Family::UsedBytes.name()),
            ("capacity_bytes", Family::CapacityBytes.name()),
            ("objects", Family::Objects.name()),
            ("evictions", Family::Evictions.name()),
            ("corrupt_objects", Family::Corrupt.name()),
        ] {
            if s.get(name, &l).is_some() {
                m.insert(key.into(), num(s.sum(name, &l)));
            }
        }
        tiers.insert(t.to_string(), Value::Object(m));
    }
    let count = format!("{}_count", Family::RequestSeconds.name());
    let sum = format!("{}_sum", Family::RequestSeconds.name());
    let mut requests = Map::new();
    for op in s.label_values(&count, "op") {
        let c = s.sum(&count, &[("op", &op)]);
        let total = s.sum(&sum, &[("op", &op)]);
        requests.insert(
            op.clone(),
            json!({
                "count": num(c),
                "mean_seconds": ratio(total, c),
                "p99_seconds_at_most": s.latency_quantile(&op, 0.99, None).filter(|v| v.is_finite()),
            }),
        );
    }
    let mut queues = Map::new();
    for q in s.label_values(Family::QueueDepth.name(), "queue") {
        queues.insert(
            q.clone(),
            json!({
                "depth": num(s.sum(Family::QueueDepth.name(), &[("queue", &q)])),
                "capacity": s.get(Family::QueueCapacity.name(), &[("queue", &q)]).map(num),
            }),
        );
    }
    let mut tenants = Map::new();
    for t in s.label_values(Family::TenantSessions.name(), "tenant") {
        let l = [("tenant", t.as_str())];
        tenants.insert(
            t.clone(),
            json!({
                "sessions": num(s.sum(Family::TenantSessions.name(), &l)),
                "leases": num(s.sum(Family::TenantLeases.name(), &l)),
                "used_bytes": num(s.sum(Family::TenantUsedBytes.name(), &l)),
                "saved_blocks": num(s.sum(Family::TenantSaves.name(), &l)),
                "loaded_blocks": num(s.sum(Family::TenantLoads.name(), &l)),
                "missed_blocks": num(s.sum(Family::TenantMisses.name(), &l)),
            }),
        );
    }
    let errors: Map<String, Value> = s
        .errors()
        .into_iter()
        .map(|(key, _, v)| (key.to_string(), num(v)))
        .collect();
    let metrics: BTreeMap<String, Value> = s
        .samples
        .iter()
        .map(|x| (x.series(), num(x.value)))
        .collect();
    let version = s
        .samples
        .iter()
        .find(|x| x.name == Family::BuildInfo.name())
        .map(|x| x.label("version").to_string());
    json!({
        "address": url,
        "role": s.role(),
        "version": version,
        "hit_ratio": s.hit_ratio(),
        "engines": s.get(Family::AgentSessions.name(), &[]).map(num),
        "connections": s.get(Family::PoolConnections.name(), &[]).map(num),
        "draining": s.get(Family::PoolDraining.name(), &[]).map(|v| v > 0.0),
        "tiers": tiers,
        "requests": requests,
        "queues": queues,
        "tenants": tenants,
        "errors": errors,
        "metrics": metrics,
    })
}

fn bytes(v: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.is_infinite() => "> 10 s".into(),
        Some(v) if v < 1e-3 => format!("{:.0} us", v * 1e6),
        Some(v) if v < 1.0 => format!("{:.1} ms", v * 1e3),
        Some(v) => format!("{v:.2} s"),
    }
}

/// The live view of `cur` (with rates since `prev` when given), as lines of text.
pub fn render(url: &str, cur: &Snapshot, prev: Option<&Snapshot>) -> String {
    let dt = prev.map(|p| cur.at.duration_since(p.at).as_secs_f64().max(1e-3));
    let rate = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let p = prev?;
        Some((cur.sum(name, labels) - p.sum(name, labels)) / dt?)
    };
    let mut o = String::new();
    let role = cur.role();
    let version = cur
        .samples
        .iter()
        .find(|x| x.name == Family::BuildInfo.name())
        .map_or(String::new(), |x| x.label("version").to_string());
    o.push_str(&format!("kvtier stat {url}: {role} {version}\n\n"));
    let window_ratio = prev.and_then(|p| {
        let tiers = cur.tiers();
        let d = |name: &str, t: &str| cur.sum(name, &[("tier", t)]) - p.sum(name, &[("tier", t)]);
        let hits: f64 = tiers.iter().map(|t| d(Family::Hits.name(), t)).sum();
        let last = tiers.last().map_or(0.0, |t| d(Family::Misses.name(), t));
        ratio(hits, hits + last)
    });
    o.push_str(&format!(
        "hit ratio     {} since start, {} now\n",
        pct(cur.hit_ratio()),
        pct(window_ratio)
    ));
    if let Some(e) = cur.get(Family::AgentSessions.name(), &[]) {
        o.push_str(&format!(
            "engines       {e:.0} sessions, {:.0} slots leased, pool: {}\n",
            cur.sum(Family::AgentLeases.name(), &[]),
            cur.samples
                .iter()
                .find(|x| x.name == Family::AgentPoolBackend.name())
                .map_or("?", |x| x.label("backend"))
        ));
    }
    if let Some(c) = cur.get(Family::PoolConnections.name(), &[]) {
        let draining = cur.get(Family::PoolDraining.name(), &[]).unwrap_or(0.0) > 0.0;
        o.push_str(&format!(
            "connections   {c:.0} open{}\n",
            if draining { ", DRAINING" } else { "" }
        ));
    }
    o.push_str(&format!(
        "\n{:<8} {:>12} {:>12} {:>8} {:>12} {:>12} {:>24}\n",
        "tier", "hits", "misses", "ratio", "in/s", "out/s", "used / capacity"
    ));
    for t in cur.tiers() {
        let l = [("tier", *t)];
        let (h, m) = (
            cur.sum(Family::Hits.name(), &l),
            cur.sum(Family::Misses.name(), &l),
        );
        let per_s = |name| rate(name, &l).map_or("-".into(), |v| format!("{}/s", bytes(v)));
        let used = match (
            cur.get(Family::UsedBytes.name(), &l),
            cur.get(Family::CapacityBytes.name(), &l),
        ) {
            (Some(u), Some(c)) => format!("{} / {}", bytes(u), bytes(c)),
            _ => "-".into(),
        };
        o.push_str(&format!(
            "{:<8} {:>12.0} {:>12.0} {:>8} {:>12} {:>12} {:>24}\n",
            t,
            h,
            m,
            pct(ratio(h, h + m)),
            per_s(Family::BytesIn.name()),
            per_s(Family::BytesOut.name()),
            used
        ));
    }
    let count = format!("{}_count", Family::RequestSeconds.name());
    o.push_str(&format!(
        "\n{:<12} {:>12} {:>10} {:>10} {:>10}\n",
        "op", "requests", "per s", "p50 <=", "p99 <="
    ));
    for op in cur.label_values(&count, "op") {
        let total = cur.sum(&count, &[("op", &op)]);
        if total == 0.0 {
            continue;
        }
        let window =
            prev.filter(|p| cur.sum(&count, &[("op", &op)]) > p.sum(&count, &[("op", &op)]));
        o.push_str(&format!(
            "{:<12} {:>12.0} {:>10} {:>10} {:>10}\n",
            op,
            total,
            rate(&count, &[("op", &op)]).map_or("-".into(), |v| format!("{v:.1}")),
            secs(cur.latency_quantile(&op, 0.5, window)),
            secs(cur.latency_quantile(&op, 0.99, window)),
        ));
    }
    let queues = cur.label_values(Family::QueueDepth.name(), "queue");
    if !queues.is_empty() {
        let q: Vec<String> = queues
            .iter()
            .map(|q| {
                let d = cur.sum(Family::QueueDepth.name(), &[("queue", q)]);
                match cur.get(Family::QueueCapacity.name(), &[("queue", q)]) {
                    Some(c) => format!("{q} {d:.0}/{c:.0}"),
                    None => format!("{q} {d:.0}"),
                }
            })
            .collect();
        o.push_str(&format!("\nqueues        {}\n", q.join(", ")));
    }
    let errs: Vec<String> = cur
        .errors()
        .into_iter()
        .map(|(_, label, v)| format!("{label} {v:.0}"))
        .collect();
    o.push_str(&format!("errors        {}\n", errs.join(", ")));
    let tenants = cur.label_values(Family::TenantSessions.name(), "tenant");
    if !tenants.is_empty() {
        o.push_str(&format!(
            "\n{:<24} {:>8} {:>12} {:>10} {:>10} {:>10}\n",
            "tenant", "sessions", "used", "saves", "loads", "misses"
        ));
        for t in tenants {
            let l = [("tenant", t.as_str())];
            o.push_str(&format!(
                "{:<24} {:>8.0} {:>12} {:>10.0} {:>10.0} {:>10.0}\n",
                t,
                cur.sum(Family::TenantSessions.name(), &l),
                bytes(cur.sum(Family::TenantUsedBytes.name(), &l)),
                cur.sum(Family::TenantSaves.name(), &l),
                cur.sum(Family::TenantLoads.name(), &l),
                cur.sum(Family::TenantMisses.name(), &l),
            ));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_agent::{AgentStats, TenantStats};
    use kvtier_core::metrics::{Histogram, StoreStats};

    fn agent_snapshot() -> Snapshot {
        let s = AgentStats {
            sessions: 2,
            arena_slots: 10,
            arena_used: 4,
            hits_memory: 30,
            hits_pool: 10,
            misses: 10,
            saves: 4,
            object_bytes: 100,
            slot_bytes: 4096,
            write_queue_capacity: 8,
            prefetch_queue_capacity: 64,
            pool: Some((
                "embedded".into(),
                StoreStats {
                    capacity_bytes: 1 << 20,
                    used_bytes: 8192,
                    ..StoreStats::default()
                },
            )),
            tenants: vec![TenantStats {
                tenant: "vllm \"a\"".into(),
                sessions: 2,
                resident_blocks: 4,
                saves: 4,
                ..TenantStats::default()
            }],
            ..AgentStats::default()
        };
        let h = Histogram::default();
        for _ in 0..99 {
            h.observe(Duration::from_micros(40));
        }
        h.observe(Duration::from_millis(3));
        let page = super::super::render::agent_page(&s, &[("lookup", h.snapshot())], &[]);
        Snapshot {
            samples: prom::parse(&page).unwrap(),
            at: Instant::now(),
        }
    }

    #[test]
    fn the_summary_has_the_counts_of_the_page() {
        let snap = agent_snapshot();
        let v = summary("x", &snap);
        assert_eq!(v["role"], "agent");
        assert_eq!(v["tiers"]["memory"]["hits"], 30);
        assert_eq!(v["tiers"]["memory"]["misses"], 20);
        assert_eq!(v["tiers"]["pool"]["hits"], 10);
        assert_eq!(v["tiers"]["pool"]["misses"], 10);
        assert_eq!(v["hit_ratio"], 0.8);
        assert_eq!(v["tiers"]["memory"]["used_bytes"], 4 * 4096);
        assert_eq!(v["tiers"]["memory"]["bytes_in"], 400);
        assert_eq!(v["tiers"]["pool"]["capacity_bytes"], 1 << 20);
        assert_eq!(v["engines"], 2);
        assert_eq!(v["requests"]["lookup"]["count"], 100);
        assert_eq!(v["requests"]["lookup"]["p99_seconds_at_most"], 0.00005);
        assert_eq!(v["tenants"]["vllm \"a\""]["used_bytes"], 4 * 4096);
        assert_eq!(v["queues"]["write_behind"]["capacity"], 8);
        assert_eq!(v["errors"]["dropped_writes"], 0);
        assert_eq!(v["metrics"]["kvtier_hits_total{tier=\"pool\"}"], 10);
        assert_eq!(
            v["metrics"].as_object().unwrap().len(),
            snap.samples.len(),
            "every series"
        );
        let text = render("x", &snap, Some(&snap));
        assert!(text.contains("80.0% since start"), "{text}");
        assert!(text.contains("lookup"), "{text}");
    }
}
