//! The Table 5 page: content-based retrieval, Recall@K on CUB-200-2011 and Stanford Cars.

use std::fmt::Write as _;
use std::path::Path;

use polars::prelude::*;

use crate::charts::{Series, line_chart};
use crate::reference::ReferenceValue;
use crate::{Loaded, ReportError, cell, deviations_list, esc, get_f64, get_str, run_page_name, write};

const KS: [usize; 4] = [1, 2, 4, 8];
/// Metrics summarised over seeds (column names are the record's metric names).
const METRICS: [&str; 8] = ["recall@1", "recall@2", "recall@4", "recall@8", "map", "random/recall@1", "qe/recall@1", "kr/recall@1"];

/// Mean and standard deviation over seeds of every metric, per (dataset, method, backbone,
/// data), computed with polars.
fn summarise(records: &[&Loaded]) -> Result<DataFrame, ReportError> {
    let s = |f: &dyn Fn(&fgia_core::record::ResultRecord) -> String| -> Vec<String> { records.iter().map(|l| f(&l.record)).collect() };
    let mut cols: Vec<Column> = vec![
        Column::new("dataset".into(), s(&|r| r.dataset.clone())),
        Column::new("method".into(), s(&|r| r.method.clone())),
        Column::new("backbone".into(), s(&|r| r.backbone.clone())),
        Column::new("data".into(), s(&|r| r.data.clone())),
    ];
    for m in METRICS {
        cols.push(Column::new(m.into(), records.iter().map(|l| l.record.metrics.get(m).copied()).collect::<Vec<Option<f64>>>()));
    }
    let df = DataFrame::new(records.len(), cols)?;
    let mut aggs = vec![col("recall@1").count().alias("n")];
    for m in METRICS {
        aggs.push(col(m).mean().alias(format!("{m}:mean")));
        aggs.push(col(m).std(1).alias(format!("{m}:std")));
    }
    Ok(df.lazy().group_by([col("dataset"), col("method"), col("backbone"), col("data")]).agg(aggs).collect()?)
}

/// Whether the records of `method` say its equation is a reconstruction.
fn reconstructed(records: &[&Loaded], method: &str) -> bool {
    records.iter().any(|l| l.record.method == method && l.record.deviations.iter().any(|d| d.contains("reconstructed")))
}

/// The page body.
pub fn table5_body(records: &[&Loaded], reference: &[&ReferenceValue], out: &Path) -> Result<String, ReportError> {
    let mut body = String::new();
    body.push_str("<p>Content-based fine-grained image retrieval (survey §6.1). Protocol: class-disjoint split (CUB-200-2011: classes 1-100 train, 101-200 test; Stanford Cars: 1-98 / 99-196); every test image queries all the other test images; Recall@K counts a query when at least one image of its class is among its K nearest (Song et al., 2016). mAP is over the full ranking. \"Random\" is the exact expected Recall@1 of a random ranking of the same test set; +QE and +k-recip. are the same embeddings after average query expansion and k-reciprocal re-ranking (not part of the survey's protocol).</p>\n");
    if records.is_empty() {
        body.push_str("<p class=\"warn\">No Table 5 results yet. Run <code>cargo xtask reproduce table5 --smoke</code>.</p>\n");
    }
    let df = if records.is_empty() { None } else { Some(summarise(records)?) };
    let mut datasets: Vec<String> = reference.iter().map(|r| r.dataset.clone()).collect();
    if let Some(df) = &df {
        datasets.extend((0..df.height()).map(|i| get_str(df, "dataset", i)));
    }
    let mut seen = Vec::new();
    datasets.retain(|d| {
        if seen.contains(d) {
            false
        } else {
            seen.push(d.clone());
            true
        }
    });
    for (di, dataset) in datasets.iter().enumerate() {
        let _ = writeln!(body, "<h2>{}</h2>", esc(dataset));
        let refs: Vec<&&ReferenceValue> = reference.iter().filter(|r| &r.dataset == dataset).collect();
        let mut methods: Vec<String> = Vec::new();
        for r in &refs {
            if !methods.contains(&r.method) {
                methods.push(r.method.clone());
            }
        }
        let ours: Vec<usize> = df.as_ref().map(|df| (0..df.height()).filter(|&i| &get_str(df, "dataset", i) == dataset).collect()).unwrap_or_default();
        let mut extra: Vec<String> =
            ours.iter().map(|&i| get_str(df.as_ref().expect("rows imply a frame"), "method", i)).filter(|m| !methods.contains(m)).collect();
        extra.sort();
        extra.dedup();
        methods.extend(extra);
        let mut data: Vec<String> = ours.iter().map(|&i| get_str(df.as_ref().expect("rows imply a frame"), "data", i)).collect();
        data.sort();
        data.dedup();
        if !data.is_empty() {
            let _ = writeln!(body, "<p>Our runs use: <b>{}</b>.</p>", esc(&data.join("; ")));
        }
        body.push_str("<table><tr><th rowspan=\"2\">Method</th><th colspan=\"6\">Paper (survey Table 5)</th><th colspan=\"9\">Ours</th></tr>\n<tr><th>Backbone</th><th>R@1</th><th>R@2</th><th>R@4</th><th>R@8</th><th>Provenance</th><th>Backbone</th><th>R@1</th><th>R@2</th><th>R@4</th><th>R@8</th><th>Δ R@1</th><th>mAP</th><th>Random R@1</th><th>+QE / +k-recip. R@1</th></tr>\n");
        let mut series = Vec::new();
        for (mi, method) in methods.iter().enumerate() {
            let paper: Vec<Option<&&&ReferenceValue>> =
                KS.iter().map(|k| refs.iter().find(|r| &r.method == method && r.metric == format!("recall@{k}"))).collect();
            let paper_cells = if paper.iter().any(Option::is_some) {
                let p0 = paper.iter().flatten().next().expect("some");
                let mut s = format!("<td>{}</td>", esc(&p0.backbone));
                for p in &paper {
                    let _ = write!(s, "{}", p.map(|p| format!("<td class=\"num\">{:.1}</td>", p.value)).unwrap_or_else(|| "<td>—</td>".into()));
                }
                let _ = write!(s, "<td class=\"{}\">{}</td>", if p0.is_unverified() { "unverified" } else { "" }, esc(&p0.provenance_label()));
                series.push(Series {
                    label: format!("{method} (paper)"),
                    points: paper.iter().enumerate().filter_map(|(j, p)| p.map(|p| (j as f64, p.value, 0.0))).collect(),
                    colour: 1 + mi,
                    dashed: true,
                });
                s
            } else {
                "<td colspan=\"6\" class=\"muted\">not in the survey's table (baseline)</td>".into()
            };
            let rows: Vec<usize> = ours.iter().copied().filter(|&i| &get_str(df.as_ref().expect("rows imply a frame"), "method", i) == method).collect();
            if rows.is_empty() {
                let _ = writeln!(body, "<tr><td>{}</td>{paper_cells}<td colspan=\"9\" class=\"muted\">not run</td></tr>", esc(method));
                continue;
            }
            let df = df.as_ref().expect("rows imply a frame");
            for i in rows {
                let n = df.column("n").ok().and_then(|c| c.get(i).ok()).and_then(|v| v.try_extract::<u64>().ok()).unwrap_or(0);
                let mut s =
                    format!("<td>{}<br><span class=\"muted\">{} seed{}</span></td>", esc(&get_str(df, "backbone", i)), n, if n == 1 { "" } else { "s" });
                let mut pts = Vec::new();
                for (j, k) in KS.iter().enumerate() {
                    let m = get_f64(df, &format!("recall@{k}:mean"), i);
                    if let Some(v) = m {
                        pts.push((j as f64, v, get_f64(df, &format!("recall@{k}:std"), i).unwrap_or(0.0)));
                    }
                    s.push_str(&cell(m, get_f64(df, &format!("recall@{k}:std"), i), n));
                }
                let r1 = get_f64(df, "recall@1:mean", i);
                match (r1, paper[0]) {
                    (Some(o), Some(p)) => {
                        let d = o - p.value;
                        let _ = write!(s, "<td class=\"num {}\">{d:+.1}</td>", if d < 0.0 { "neg" } else { "pos" });
                    }
                    _ => s.push_str("<td>—</td>"),
                }
                s.push_str(&cell(get_f64(df, "map:mean", i), get_f64(df, "map:std", i), n));
                s.push_str(&cell(get_f64(df, "random/recall@1:mean", i), None, 1));
                let qe = get_f64(df, "qe/recall@1:mean", i).map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into());
                let kr = get_f64(df, "kr/recall@1:mean", i).map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into());
                let _ = write!(s, "<td class=\"num\">{qe} / {kr}</td>");
                let _ = writeln!(body, "<tr><td>{}{}</td>{paper_cells}{s}</tr>", esc(method), if reconstructed(records, method) { " †" } else { "" });
                series.push(Series { label: format!("{method} (ours)"), points: pts, colour: 1 + mi, dashed: false });
            }
        }
        body.push_str("</table>\n");
        if methods.iter().any(|m| reconstructed(records, m)) {
            body.push_str("<p class=\"muted\">† loss equation reconstructed from the paper's abstract and the survey's description, not from the paper's full text (see the deviations below and the method's source file).</p>\n");
        }
        if !series.is_empty() {
            let ticks: Vec<(f64, String)> = KS.iter().enumerate().map(|(j, k)| (j as f64, k.to_string())).collect();
            let svg = line_chart(&format!("Recall@K on {dataset}"), "K", "Recall@K (%)", &series, Some(&ticks))?;
            let name = format!("table5-recall-{di}.svg");
            write(&out.join(&name), &svg)?;
            let _ = writeln!(
                body,
                "<p><img src=\"{name}\" alt=\"Recall@K curves on {}: paper dashed, ours solid\"></p><p class=\"muted\">Dashed: the paper's values; solid: ours (error bars: std over seeds). One colour per method.</p>",
                esc(dataset)
            );
        }
    }
    if records.iter().any(|l| !l.record.deviations.is_empty()) {
        body.push_str("<p class=\"warn\">Δ is measured against the paper's setting. Runs with the deviations listed below (another backbone, a subset of the data, a frozen backbone) are not comparable in absolute terms. Methods marked \"equation reconstructed\" follow the paper's abstract and the survey's description, not the paper's full text.</p>\n");
        body.push_str(&deviations_list(records));
    }
    if !records.is_empty() {
        body.push_str("<h2>Protocol (as recorded)</h2>\n<table><tr><th>Method</th><th>Data</th><th>Split</th><th>Test images</th><th>TTA</th><th>Trained layers</th><th>Optimiser</th><th>Epochs</th></tr>\n");
        for l in records {
            let r = &l.record;
            let p = &r.protocol;
            let _ = writeln!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                esc(&run_page_name(l)),
                esc(&r.method),
                esc(&r.data),
                esc(&p.split),
                esc(&p.eval_transform),
                esc(&p.tta),
                esc(&p.trained_layers),
                esc(&p.optimizer),
                p.epochs
            );
        }
        body.push_str("</table>\n");
    }
    Ok(body)
}
