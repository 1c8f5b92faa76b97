//! The environment page: what `fgia check-device` (`cargo xtask gpu-check`) measured on each
//! machine, read from `results/environment/*.json`: agreement of every backbone and pooling
//! operator with the CPU, forward and backward, and training-step times.

use std::fmt::Write as _;
use std::path::Path;

use fgia_core::record::EnvironmentReport;

use crate::charts::{Series, line_chart};
use crate::{ReportError, esc, write};

/// The reports under `results/environment/`, sorted by file name; unreadable files are named in
/// `unreadable`.
pub fn load(results: &Path, unreadable: &mut Vec<String>) -> Vec<EnvironmentReport> {
    let dir = results.join("environment");
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
    files.sort();
    let mut out = Vec::new();
    for p in files {
        match std::fs::read_to_string(&p).map_err(|e| e.to_string()).and_then(|t| serde_json::from_str::<EnvironmentReport>(&t).map_err(|e| e.to_string())) {
            Ok(r) => out.push(r),
            Err(e) => unreadable.push(format!("{}: {e}", p.display())),
        }
    }
    out
}

/// The page body.
pub fn body(reports: &[EnvironmentReport], out: &Path) -> Result<String, ReportError> {
    let mut b = String::new();
    b.push_str("<p>Each section is one run of <code>cargo xtask gpu-check</code> (<code>fgia --device cuda check-device</code>): every backbone's trunk and every pooling operator, forward and backward, on the device against burn-flex on the CPU with the same weights and inputs (largest difference relative to the largest CPU value), then a timed training step per backbone (forward, cross-entropy, backward, SGD; median after two warm-up steps).</p>\n");
    if reports.is_empty() {
        b.push_str("<p class=\"warn\">No device report yet. On a machine with a GPU, run <code>cargo xtask gpu-check</code>.</p>\n");
        return Ok(b);
    }
    for (i, r) in reports.iter().enumerate() {
        let failed = r.checks.iter().filter(|c| !c.pass).count();
        let _ = writeln!(b, "<h2>{}</h2>", esc(&r.device));
        let _ = writeln!(
            b,
            "<p>Against {}; burn {}, code {}, {}.{}</p>",
            esc(&r.reference),
            esc(&r.burn_version),
            esc(&r.git_revision),
            esc(&r.created_utc),
            if r.quick { " <b>Quick mode: small shapes, a test of the check itself, not the real sizes.</b>" } else { "" }
        );
        let _ = writeln!(
            b,
            "<p class=\"{}\">{} of {} checks within tolerance.</p>",
            if failed == 0 { "pos" } else { "warn" },
            r.checks.len() - failed,
            r.checks.len()
        );
        b.push_str("<table><tr><th>Backbone / operator</th><th>Kind</th><th>Input</th><th>Forward</th><th>Backward</th><th>Tolerance</th><th></th></tr>\n");
        for c in &r.checks {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{:.1e}</td><td class=\"num\">{:.1e}</td><td class=\"num\">{:.0e}</td><td class=\"{}\">{}</td></tr>",
                esc(&c.name),
                esc(&c.kind),
                c.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x"),
                c.forward_rel,
                c.backward_rel,
                c.tolerance,
                if c.pass { "pos" } else { "neg" },
                if c.pass { "ok" } else { "differs" }
            );
        }
        b.push_str("</table>\n");
        b.push_str("<table><tr><th>Backbone</th><th>Input</th><th>Batch</th><th>Median step</th><th>Images/s</th><th>Timed steps</th></tr>\n");
        for t in &r.timings {
            let _ = writeln!(
                b,
                "<tr><td>{}</td><td class=\"num\">{} px</td><td class=\"num\">{}</td><td class=\"num\">{:.1} ms</td><td class=\"num\">{:.1}</td><td class=\"num\">{}</td></tr>",
                esc(&t.backbone),
                t.side,
                t.batch,
                t.median_ms,
                t.images_per_s,
                t.steps
            );
        }
        b.push_str("</table>\n");
        let mut backbones: Vec<&str> = r.timings.iter().map(|t| t.backbone.as_str()).collect();
        backbones.dedup();
        let series: Vec<Series> = backbones
            .iter()
            .enumerate()
            .map(|(k, name)| Series {
                label: (*name).to_string(),
                points: r.timings.iter().filter(|t| t.backbone == *name).map(|t| (t.side as f64, t.images_per_s, 0.0)).collect(),
                colour: k + 1,
                dashed: false,
            })
            .collect();
        let mut sides: Vec<usize> = r.timings.iter().map(|t| t.side).collect();
        sides.sort_unstable();
        sides.dedup();
        // A chart once there is a trend to see: two sides or more.
        if sides.len() > 1 {
            let ticks: Vec<(f64, String)> = sides.iter().map(|&s| (s as f64, format!("{s}"))).collect();
            let svg = line_chart(&format!("Training images/s on {}", r.device), "input side (px)", "images/s", &series, Some(&ticks))?;
            let name = format!("environment-{i}.svg");
            write(&out.join(&name), &svg)?;
            let _ = writeln!(b, "<p><img src=\"{name}\" alt=\"training images per second against input side, per backbone, on {}\"></p>", esc(&r.device));
        }
    }
    Ok(b)
}
