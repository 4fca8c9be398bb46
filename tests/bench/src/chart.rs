//! The latency chart: p50 and p99 against concurrency for each target,
//! drawn as SVG and rasterised to PNG with resvg (system fonts for text).

use std::{fmt::Write as _, path::Path};

use anyhow::Context;

use crate::compare::Table;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const MARGIN: f64 = 70.0;
const COLORS: [&str; 4] = ["#2b8a3e", "#e8590c", "#1c7ed6", "#868e96"];

/// Draws `targets` (at most four; the rest are left out) from `table`.
pub fn render(table: &Table, targets: &[&str], png: &Path) -> anyhow::Result<()> {
    let svg = svg(table, targets);
    std::fs::write(png.with_extension("svg"), &svg)?;
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(&svg, &options).context("parsing the chart SVG")?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(WIDTH as u32, HEIGHT as u32)
        .context("allocating the chart")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    pixmap.save_png(png).context("writing the PNG")?;
    Ok(())
}

fn svg(table: &Table, targets: &[&str]) -> String {
    let levels: Vec<usize> = table.keys().copied().collect();
    let max_ms = table
        .values()
        .flat_map(|t| t.values())
        .map(|s| s.quantile_ms(0.99))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(0.01)
        * 1.1;
    let (plot_w, plot_h) = (WIDTH - 2.0 * MARGIN, HEIGHT - 2.0 * MARGIN);
    let x = |i: usize| MARGIN + plot_w * (i as f64) / ((levels.len().max(2) - 1) as f64);
    let y = |ms: f64| HEIGHT - MARGIN - plot_h * (ms / max_ms);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="DejaVu Sans, sans-serif" font-size="13">"#
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">tools/call echo latency vs concurrency, light driver (solid p50, dashed p99)</text>"#,
        WIDTH / 2.0
    );
    let _ = write!(
        out,
        r#"<line x1="{MARGIN}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{b}" stroke="black"/>"#,
        b = HEIGHT - MARGIN,
        r = WIDTH - MARGIN
    );
    for tick in 0..=4 {
        let ms = max_ms * f64::from(tick) / 4.0;
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end">{ms:.2}</text><line x1="{MARGIN}" y1="{y0}" x2="{}" y2="{y0}" stroke="#e9ecef"/>"##,
            MARGIN - 8.0,
            y(ms) + 4.0,
            WIDTH - MARGIN,
            y0 = y(ms)
        );
    }
    for (i, level) in levels.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">c={level}</text>"#,
            x(i),
            HEIGHT - MARGIN + 20.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="20" y="{}" transform="rotate(-90 20 {})" text-anchor="middle">ms</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    for (t, name) in targets.iter().take(COLORS.len()).enumerate() {
        for (q, dash) in [(0.5, ""), (0.99, r#" stroke-dasharray="6 4""#)] {
            let points: Vec<String> = levels
                .iter()
                .enumerate()
                .filter_map(|(i, level)| {
                    let ms = table[level].get(name)?.quantile_ms(q);
                    ms.is_finite().then(|| format!("{:.1},{:.1}", x(i), y(ms)))
                })
                .collect();
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
                COLORS[t],
                points.join(" ")
            );
        }
        let _ = write!(
            out,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{c}"/><text x="{}" y="{}">{name}</text>"#,
            MARGIN + 20.0 + 130.0 * t as f64,
            MARGIN - 22.0,
            MARGIN + 40.0 + 130.0 * t as f64,
            MARGIN - 16.0,
            c = COLORS[t]
        );
    }
    out.push_str("</svg>");
    out
}
