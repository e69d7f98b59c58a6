//! An SVG plot of a capacity sweep: token hit ratio against capacity (log scale), one line per
//! policy. Written by hand: a few dozen lines beat a plotting dependency.

use std::fmt::Write;

use super::SweepRow;

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Renders the sweep as a standalone SVG document.
pub fn sweep_svg(rows: &[SweepRow], title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    if rows.is_empty() {
        s.push_str("</svg>\n");
        return s;
    }
    let xs: Vec<f64> = rows
        .iter()
        .map(|r| (r.capacity_blocks.max(1) as f64).log10())
        .collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(f64::MIN, f64::max),
    );
    let span = if x1 > x0 { x1 - x0 } else { 1.0 };
    let ymax = rows
        .iter()
        .map(|r| r.belady.max(r.lru).max(r.hit_density))
        .fold(0.0, f64::max);
    let ytop = ((ymax * 100.0 / 5.0).ceil() * 5.0).max(5.0);
    let px = |x: f64| LEFT + (x - x0) / span * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y * 100.0) / ytop * (H - TOP - BOTTOM);
    // Axes and grid.
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}" stroke="black"/>"#,
        H - BOTTOM
    );
    let mut t = 0.0;
    while t <= ytop + 1e-9 {
        let y = py(t / 100.0);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{t:.0}%</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        t += if ytop > 20.0 { 5.0 } else { 1.0 };
    }
    for (r, &x) in rows.iter().zip(&xs) {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            px(x),
            H - BOTTOM + 18.0,
            short(r.capacity_blocks)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">capacity (blocks, log scale)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" transform="rotate(-90 18 {})" text-anchor="middle">token hit ratio</text>"#,
        H / 2.0,
        H / 2.0
    );
    type Series = (&'static str, &'static str, fn(&SweepRow) -> f64);
    let series: [Series; 3] = [
        ("Belady (optimum)", "#888888", |r| r.belady),
        ("hit density (default)", "#1f77b4", |r| r.hit_density),
        ("LRU", "#d62728", |r| r.lru),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = rows
            .iter()
            .zip(&xs)
            .map(|(r, &x)| format!("{:.1},{:.1}", px(x), py(f(r))))
            .collect();
        let dash = if i == 0 {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 34.0,
            W - RIGHT + 40.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn short(n: usize) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_line_per_policy() {
        let rows: Vec<SweepRow> = [1000, 5000, 20000]
            .iter()
            .map(|&c| SweepRow {
                capacity_blocks: c,
                capacity_bytes: 0,
                lru: 0.1,
                hit_density: 0.2,
                belady: 0.3,
            })
            .collect();
        let svg = sweep_svg(&rows, "a <test>");
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("<circle").count(), 9);
        assert!(
            svg.contains("a &lt;test&gt;") && svg.contains(">5k<") && svg.ends_with("</svg>\n")
        );
    }
}
