//! The Table 2 page for the feature-encoding paradigm (§5.2): top-1 accuracy per method and
//! dataset, grouped like the survey (high-order interactions, losses, other encodings).

use std::fmt::Write as _;

use polars::prelude::*;

use crate::reference::ReferenceValue;
use crate::{Loaded, ReportError, deviations_list, esc, get_f64, get_str, run_page_name};

/// Survey order of the datasets.
const DATASETS: [&str; 4] = ["CUB-200-2011", "Stanford-Dogs", "Stanford-Cars", "FGVC-Aircraft"];

/// Mean and standard deviation over seeds of top-1, top-5 and chance per (method, dataset,
/// backbone, data, resolution), computed with polars.
fn summarise(records: &[&Loaded]) -> Result<DataFrame, ReportError> {
    let s = |f: &dyn Fn(&fgia_core::record::ResultRecord) -> String| -> Vec<String> { records.iter().map(|l| f(&l.record)).collect() };
    let m = |k: &str| -> Vec<Option<f64>> { records.iter().map(|l| l.record.metrics.get(k).copied()).collect() };
    let cols: Vec<Column> = vec![
        Column::new("method".into(), s(&|r| r.method.clone())),
        Column::new("dataset".into(), s(&|r| r.dataset.clone())),
        Column::new("backbone".into(), s(&|r| r.backbone.clone())),
        Column::new("data".into(), s(&|r| r.data.clone())),
        Column::new("resolution".into(), records.iter().map(|l| l.record.resolution as i64).collect::<Vec<i64>>()),
        Column::new("top1".into(), m("top1")),
        Column::new("top5".into(), m("top5")),
        Column::new("chance".into(), m("chance")),
    ];
    let df = DataFrame::new(records.len(), cols)?;
    Ok(df
        .lazy()
        .group_by([col("method"), col("dataset"), col("backbone"), col("data"), col("resolution")])
        .agg([
            col("top1").count().alias("n"),
            col("top1").mean().alias("top1:mean"),
            col("top1").std(1).alias("top1:std"),
            col("top5").mean().alias("top5:mean"),
            col("chance").mean().alias("chance:mean"),
        ])
        .collect()?)
}

/// The paper backbone a method's records stand in for (their `paper_backbone` field), as the
/// survey may write it, most specific first (VGG-16 is "VGG-D"; a symmetric B-CNN is
/// "VGG-D + VGG-D").
fn paper_backbone(records: &[&Loaded], method: &str) -> &'static [&'static str] {
    let Some(bb) = records.iter().filter(|l| l.record.method == method).find_map(|l| l.record.paper_backbone.as_deref()) else {
        return &[];
    };
    const NAMES: [(&str, &[&str]); 3] = [("resnet101", &["ResNet-101"]), ("resnet50", &["ResNet-50"]), ("vgg16", &["VGG-16", "VGG-D + VGG-D", "VGG-D"])];
    NAMES.iter().find(|(k, _)| bb == *k).map(|(_, v)| *v).unwrap_or(&[])
}

/// The paper value shown for a method and dataset: the row with the backbone our recipe stands
/// in for, else the first row; with the number of other rows.
fn paper_row<'a>(refs: &[&'a ReferenceValue], method: &str, dataset: &str, backbones: &[&str]) -> Option<(&'a ReferenceValue, usize)> {
    let rows: Vec<&ReferenceValue> = refs.iter().copied().filter(|r| r.method == method && r.dataset == dataset).collect();
    // Of a method's rows on one backbone, the survey's headline value first.
    let headline = |b: &str| {
        let on: Vec<&'a ReferenceValue> = rows.iter().copied().filter(|r| r.backbone.starts_with(b)).collect();
        on.iter().copied().find(|r| r.note.contains("headline value")).or_else(|| on.first().copied())
    };
    let pick = backbones
        .iter()
        .find_map(|b| headline(b))
        .or_else(|| rows.iter().copied().find(|r| r.note.contains("headline value")))
        .or_else(|| rows.first().copied())?;
    Some((pick, rows.len() - 1))
}

/// The page body.
pub fn table2_body(records: &[&Loaded], reference: &[&ReferenceValue]) -> Result<String, ReportError> {
    let mut body = String::new();
    body.push_str("<p>Fine-grained recognition (survey Table 2): localization-classification networks (§5.1) and end-to-end feature encoding (§5.2), top-1 accuracy on the official train/test splits. Paper values come from the survey's Table 2 with their provenance; ours is the mean ± std over seeds of the last epoch (no model selection on the test split), single centre crop unless the protocol below says otherwise. Δ is computed only against verified paper values: an UNVERIFIED value is shown marked, with no Δ. Every departure from a paper's setting is listed under Deviations, and the method's source file states the rest.</p>\n");
    if records.is_empty() {
        body.push_str("<p class=\"warn\">No Table 2 results yet. Run <code>cargo xtask reproduce table2 --smoke</code>.</p>\n");
    }
    let df = if records.is_empty() { None } else { Some(summarise(records)?) };
    let mut sections: Vec<(String, String)> = Vec::new();
    for r in reference {
        if !sections.iter().any(|(s, _)| *s == r.section) {
            sections.push((r.section.clone(), r.family.clone()));
        }
    }
    // Methods of ours that the survey's table does not list are rendered after the survey's rows
    // of their record's section (or of the first §5.2 section).
    let ref_methods: Vec<&str> = reference.iter().map(|r| r.method.as_str()).collect();
    let mut extra: Vec<String> = records.iter().map(|l| l.record.method.clone()).filter(|m| !ref_methods.contains(&m.as_str())).collect();
    extra.sort();
    extra.dedup();
    for (si, (section, family)) in sections.iter().enumerate() {
        let _ = writeln!(body, "<h2>§{} {}</h2>", esc(section), esc(family));
        body.push_str("<table><tr><th rowspan=\"2\">Method</th><th rowspan=\"2\">Dataset</th><th colspan=\"4\">Paper (survey Table 2)</th><th colspan=\"5\">Ours</th><th rowspan=\"2\">Δ top-1</th></tr>\n<tr><th>Backbone</th><th>Input</th><th>Top-1</th><th>Provenance</th><th>Backbone / data</th><th>Input</th><th>Top-1</th><th>Top-5</th><th>Chance</th></tr>\n");
        let mut methods: Vec<String> = Vec::new();
        for r in reference.iter().filter(|r| &r.section == section) {
            if !methods.contains(&r.method) {
                methods.push(r.method.clone());
            }
        }
        let home = |m: &String| -> String {
            records
                .iter()
                .find(|l| &l.record.method == m)
                .and_then(|l| l.record.section.clone())
                .filter(|s| sections.iter().any(|(x, _)| x == s))
                .unwrap_or_else(|| sections.iter().find(|(x, _)| x.starts_with("5.2")).map(|(x, _)| x.clone()).unwrap_or_default())
        };
        methods.extend(extra.iter().filter(|m| &home(m) == section).cloned());
        let _ = si;
        let refs: Vec<&ReferenceValue> = reference.iter().copied().filter(|r| &r.section == section).collect();
        for method in &methods {
            let ours: Vec<usize> = df.as_ref().map(|df| (0..df.height()).filter(|&i| &get_str(df, "method", i) == method).collect()).unwrap_or_default();
            let bb = paper_backbone(records, method);
            let mut datasets: Vec<&str> = DATASETS.iter().copied().filter(|d| refs.iter().any(|r| &r.method == method && r.dataset == *d)).collect();
            if let Some(df) = &df {
                for &i in &ours {
                    let d = get_str(df, "dataset", i);
                    if let Some(known) = DATASETS.iter().find(|x| **x == d)
                        && !datasets.contains(known)
                    {
                        datasets.push(known);
                    }
                }
            }
            datasets.sort_by_key(|d| DATASETS.iter().position(|x| x == d));
            let span = datasets.len().max(1);
            let mut first = true;
            if datasets.is_empty() {
                let _ = writeln!(body, "<tr><td>{}</td><td colspan=\"11\" class=\"muted\">no dataset</td></tr>", esc(method));
            }
            for dataset in datasets {
                let mut row = String::new();
                if first {
                    let _ = write!(row, "<td rowspan=\"{span}\">{}</td>", esc(method));
                    first = false;
                }
                let _ = write!(row, "<td>{}</td>", esc(dataset));
                let paper = paper_row(&refs, method, dataset, bb);
                match paper {
                    Some((p, others)) => {
                        let more = if others > 0 {
                            format!("<br><span class=\"muted\">+{others} other backbone{}</span>", if others == 1 { "" } else { "s" })
                        } else {
                            String::new()
                        };
                        let _ = write!(
                            row,
                            "<td>{}{more}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td><td class=\"{}\">{}</td>",
                            esc(&p.backbone),
                            esc(if p.resolution.is_empty() { "—" } else { &p.resolution }),
                            p.value,
                            if p.is_unverified() { "unverified" } else { "" },
                            esc(&p.provenance_label())
                        );
                    }
                    None => match ref_methods.iter().find(|m| method.starts_with(&format!("{m}, "))) {
                        // A setting of a survey method ("Part-based R-CNN, oracle box and parts at test").
                        Some(base) => {
                            let notes: Vec<String> = refs
                                .iter()
                                .filter(|r| r.method == *base && r.dataset == dataset)
                                .map(|r| {
                                    let mark = if r.is_unverified() { "UNVERIFIED " } else { "" };
                                    format!("{mark}{:.1}{}", r.value, if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) })
                                })
                                .collect();
                            let _ = write!(
                                row,
                                "<td colspan=\"4\" class=\"muted\">a setting of {} (the survey's rows: {}); no Δ</td>",
                                esc(base),
                                esc(&if notes.is_empty() { "none on this dataset".to_string() } else { notes.join("; ") })
                            );
                        }
                        None => row.push_str("<td colspan=\"4\" class=\"muted\">not in the survey's table</td>"),
                    },
                }
                let df_rows: Vec<usize> =
                    df.as_ref().map(|df| ours.iter().copied().filter(|&i| get_str(df, "dataset", i) == dataset).collect()).unwrap_or_default();
                match (df.as_ref(), df_rows.first()) {
                    (Some(df), Some(&i)) => {
                        let n = df.column("n").ok().and_then(|c| c.get(i).ok()).and_then(|v| v.try_extract::<u64>().ok()).unwrap_or(0);
                        let top1 = get_f64(df, "top1:mean", i);
                        let std = get_f64(df, "top1:std", i).filter(|_| n > 1).map(|s| format!(" ± {s:.1}")).unwrap_or_default();
                        let _ = write!(
                            row,
                            "<td>{}<br><span class=\"muted\">{} · {n} seed{}</span></td><td class=\"num\">{}</td><td class=\"num\"><b>{}</b>{std}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                            esc(&get_str(df, "backbone", i)),
                            esc(&get_str(df, "data", i)),
                            if n == 1 { "" } else { "s" },
                            get_str(df, "resolution", i),
                            top1.map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into()),
                            get_f64(df, "top5:mean", i).map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into()),
                            get_f64(df, "chance:mean", i).map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into()),
                        );
                        match (top1, paper) {
                            (Some(o), Some((p, _))) if !p.is_unverified() => {
                                let d = o - p.value;
                                let _ = write!(row, "<td class=\"num {}\">{d:+.1}</td>", if d < 0.0 { "neg" } else { "pos" });
                            }
                            _ => row.push_str("<td>—</td>"),
                        }
                    }
                    _ => row.push_str("<td colspan=\"5\" class=\"muted\">not run</td><td>—</td>"),
                }
                let _ = writeln!(body, "<tr>{row}</tr>");
            }
        }
        body.push_str("</table>\n");
    }
    if records.iter().any(|l| !l.record.deviations.is_empty()) {
        body.push_str("<p class=\"warn\">Δ is measured against the paper's setting. Runs with the deviations below (another backbone, a subset of the data, a frozen backbone, fewer epochs) are not comparable in absolute terms; they show that each method trains end to end and how the methods rank on the same features.</p>\n");
        body.push_str(&deviations_list(records));
    }
    if !records.is_empty() {
        body.push_str("<h2>Protocol (as recorded)</h2>\n<table><tr><th>Method</th><th>Dataset</th><th>Data</th><th>Train transform</th><th>Test transform</th><th>TTA</th><th>Mode</th><th>Trained layers</th><th>Optimiser and parameters</th><th>Epochs</th><th>Checkpoint</th></tr>\n");
        for l in records {
            let r = &l.record;
            let p = &r.protocol;
            let _ = writeln!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&run_page_name(l)),
                esc(&r.method),
                esc(&r.dataset),
                esc(&r.data),
                esc(&p.train_transform),
                esc(&p.eval_transform),
                esc(&p.tta),
                p.mode.name(),
                esc(&p.trained_layers),
                esc(&p.optimizer),
                p.epochs,
                esc(&p.checkpoint)
            );
        }
        body.push_str("</table>\n");
    }
    Ok(body)
}
