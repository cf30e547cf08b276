//! The bench's picture: bring-up time against CPU count, as a PNG beside the JSON record.
//!
//! Drawn with `plotters` (bitmap backend). Text needs a font; so that a fresh machine without
//! fonts installed can draw it, DejaVu Sans comes embedded (crate `dejavu`) and is registered
//! with plotters' `ab_glyph` text renderer.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 640;

fn register_dejavu() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu Sans font did not load"));
    });
    result
}

/// (cpus, min, median, max) in seconds of the sweep's `key` phase.
fn series(record: &Value, key: &str) -> Vec<(f64, f64, f64, f64)> {
    let s = |v: &Value| v.as_f64().unwrap_or(0.0) / 1e6;
    record["scale"]["sizes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    let v = &p[key];
                    (p["smp"].as_f64().unwrap_or(0.0), s(&v["min"]), s(&v["median"]), s(&v["max"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Draws T (last load to all running), load, IPIs and the last check-in against CPU count.
pub fn bring_up(record: &Value, out: &Path) -> anyhow::Result<()> {
    register_dejavu()?;
    let t = series(record, "t_us");
    let max_cpus = t.iter().map(|p| p.0).fold(1.0, f64::max);
    let max_s = ["t_us", "load_us", "ipi_us", "last_checkin_us"]
        .iter()
        .flat_map(|k| series(record, k))
        .map(|p| p.3)
        .fold(0.1, f64::max);
    let root = BitMapBackend::new(out, (WIDTH, HEIGHT)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let machine = &record["machine"];
        let caption = format!(
            "Bring-up time against CPU count ({}, {} host CPUs, {}, {})",
            record["firmware"].as_str().unwrap_or("?"),
            machine["host_cpus"],
            machine["cpu"].as_str().unwrap_or("?"),
            machine["qemu"].as_str().unwrap_or("?"),
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..max_cpus * 1.05, 0.0..max_s * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("CPUs (-smp; one instance per AP)")
            .y_desc("seconds (median, bars: min-max)")
            .label_style(("sans-serif", 13))
            .draw()?;
        let lines: [(&str, &str, RGBColor); 4] = [
            ("t_us", "T: last load -> all running", RED),
            ("last_checkin_us", "first INIT -> last AP check-in", BLUE),
            ("ipi_us", "IPIs sent", GREEN),
            ("load_us", "load (all instances)", BLACK),
        ];
        for (key, label, color) in lines {
            let s = series(record, key);
            chart
                .draw_series(LineSeries::new(s.iter().map(|p| (p.0, p.2)), color.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart.draw_series(s.iter().map(|p| Circle::new((p.0, p.2), 3, color.filled())))?;
            chart.draw_series(
                s.iter().map(|p| PathElement::new(vec![(p.0, p.1), (p.0, p.3)], color)),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("{e}")).with_context(|| format!("drawing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_becomes_a_png() {
        let phase = |m: u64| json!({"n": 1, "min": m, "median": m + 10, "max": m + 20});
        let size = |n: u64| {
            json!({"smp": n, "t_us": phase(n * 1000), "load_us": phase(n * 100),
                   "ipi_us": phase(n * 200), "last_checkin_us": phase(n * 300)})
        };
        let record = json!({
            "firmware": "bios",
            "machine": {"cpu": "test CPU", "host_cpus": 2, "qemu": "QEMU test"},
            "scale": {"sizes": [size(4), size(16), size(64)]},
        });
        let out = std::env::temp_dir().join(format!("mk-plot-{}.png", std::process::id()));
        bring_up(&record, &out).unwrap();
        let png = std::fs::read(&out).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(
            png.len() > 10_000,
            "a {WIDTH}x{HEIGHT} chart with text is more than {} bytes",
            png.len()
        );
        let _ = std::fs::remove_file(&out);
    }
}
