//! SVG charts of the training metrics against step: reward, F1 per category, KL, operation
//! mix, memory size.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

use crate::TrainError;

/// A named line: `(step, value)` points.
pub type Series = (String, Vec<(f64, f64)>);

/// Reads a number at a `/`-separated path of a metrics record.
fn at(record: &Value, path: &str) -> Option<f64> {
    record.pointer(path).and_then(Value::as_f64)
}

/// Builds one series per pointer over the records that have it.
fn series(records: &[Value], lines: &[(&str, &str)]) -> Vec<Series> {
    lines
        .iter()
        .map(|(name, pointer)| {
            let points = records
                .iter()
                .filter_map(|r| Some((at(r, "/step")?, at(r, pointer)?)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            (name.to_string(), points)
        })
        .filter(|(_, points): &Series| !points.is_empty())
        .collect()
}

/// Draws lines into an SVG file.
pub fn line_chart(path: &Path, title: &str, lines: &[Series]) -> Result<(), TrainError> {
    let err = |e: String| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (_, points) in lines {
        for &(x, y) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return Ok(());
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Writes every chart of a run from its metrics records into `dir`; returns the files.
pub fn plot_run(records: &[Value], dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut categories: Vec<String> = records
        .iter()
        .filter_map(|r| r.get("f1_by_category").and_then(Value::as_object))
        .flat_map(|m| m.keys().cloned())
        .collect();
    categories.sort();
    categories.dedup();
    let f1_pointers: Vec<(String, String)> = std::iter::once(("all".to_string(), "/f1".to_string()))
        .chain(
            categories
                .iter()
                .map(|c| (c.clone(), format!("/f1_by_category/{c}"))),
        )
        .collect();
    let f1_lines: Vec<(&str, &str)> = f1_pointers
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    // (file, title, [(line name, JSON pointer)])
    type Chart<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let charts: Vec<Chart<'_>> = vec![
        (
            "reward.svg",
            "reward",
            vec![
                ("global mean", "/reward_global/mean"),
                ("local mean", "/reward_local/mean"),
            ],
        ),
        ("f1.svg", "F1 by category (global rollouts)", f1_lines),
        ("kl.svg", "KL to reference", vec![("kl", "/update/kl")]),
        (
            "ops.svg",
            "memory operations per step",
            vec![
                ("ADD", "/ops/add"),
                ("UPDATE", "/ops/update"),
                ("DELETE", "/ops/delete"),
                ("NOOP", "/ops/noop"),
            ],
        ),
        (
            "memory.svg",
            "final memory size",
            vec![
                ("entries", "/memory_entries"),
                ("tokens / 10", "/memory_tokens_tenths"),
            ],
        ),
    ];
    // Derived field for the memory chart (tokens on the entries' scale).
    let records: Vec<Value> = records
        .iter()
        .cloned()
        .map(|mut r| {
            if let Some(t) = at(&r, "/memory_tokens") {
                r["memory_tokens_tenths"] = Value::from(t / 10.0);
            }
            r
        })
        .collect();
    let mut written = Vec::new();
    for (file, title, lines) in charts {
        let path = dir.join(file);
        let data = series(&records, &lines);
        if data.is_empty() {
            continue;
        }
        line_chart(&path, title, &data)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Value> = (1..=4)
            .map(|s| {
                serde_json::json!({
                    "step": s, "f1": 0.1 * s as f64, "f1_by_category": {"single-hop": 0.2},
                    "reward_global": {"mean": 0.3}, "reward_local": {"mean": 0.1},
                    "update": {"kl": 0.01}, "ops": {"add": 3, "update": 1, "delete": 0, "noop": 2},
                    "memory_entries": 5.0, "memory_tokens": 40.0
                })
            })
            .collect();
        let files = plot_run(&records, dir.path()).unwrap();
        assert_eq!(files.len(), 5);
        let svg = std::fs::read_to_string(dir.path().join("f1.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("single-hop"));
    }
}
