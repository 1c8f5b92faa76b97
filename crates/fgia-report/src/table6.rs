//! The Table 6 page: fine-grained sketch-based image retrieval, acc@K on QMUL-Shoe and
//! QMUL-Chair.
//!
//! Three kinds of rows, kept apart: the survey's Table 6 (the papers' values, on the sets as
//! first released), the authors' released models on the cleaned re-release (the data we have;
//! the reference CSV's `extra:` rows), and ours (mean ± std over seeds). Δ acc@1 is taken
//! against the released model where one exists (same data), else against the survey's value,
//! and says which.

use std::fmt::Write as _;
use std::path::Path;

use polars::prelude::*;

use crate::charts::{Series, line_chart};
use crate::reference::ReferenceValue;
use crate::{Loaded, ReportError, cell, deviations_list, esc, get_f64, get_str, run_page_name, write};

/// acc@K is drawn for K = 1..=`MAX_K`.
const MAX_K: usize = 20;

/// Which reference rows a method of ours reproduces: our method name's prefix, the reference
/// CSV's method name, and its year (the CSV has two "Song et al." rows).
const PAPERS: [(&str, &str, &str); 2] = [("Triplet Sketch-a-Net", "Yu et al. (Sketch Me That Shoe)", "2016"), ("DSSA", "Song et al.", "2017")];

fn metric_names() -> Vec<String> {
    let mut m: Vec<String> = (1..=MAX_K).map(|k| format!("acc@{k}")).collect();
    m.extend(["acc@1_1view", "acc@10_1view", "triplets_correct", "chance@1", "chance@10"].map(String::from));
    m
}

/// Mean and standard deviation over seeds of every metric, per (dataset, method, loss,
/// backbone, trained layers, data), computed with polars.
fn summarise(records: &[&Loaded]) -> Result<DataFrame, ReportError> {
    let s = |f: &dyn Fn(&fgia_core::record::ResultRecord) -> String| -> Vec<String> { records.iter().map(|l| f(&l.record)).collect() };
    let mut cols: Vec<Column> = vec![
        Column::new("dataset".into(), s(&|r| r.dataset.clone())),
        Column::new("method".into(), s(&|r| r.method.clone())),
        Column::new("loss".into(), s(&|r| r.protocol.loss.clone().unwrap_or_else(|| "not recorded".into()))),
        Column::new("backbone".into(), s(&|r| r.backbone.clone())),
        Column::new("trained".into(), s(&|r| r.protocol.trained_layers.clone())),
        Column::new("data".into(), s(&|r| r.data.clone())),
    ];
    let names = metric_names();
    for m in &names {
        cols.push(Column::new(m.as_str().into(), records.iter().map(|l| l.record.metrics.get(m).copied()).collect::<Vec<Option<f64>>>()));
    }
    let df = DataFrame::new(records.len(), cols)?;
    let mut aggs = vec![col("acc@1").count().alias("n")];
    for m in &names {
        aggs.push(col(m.as_str()).mean().alias(format!("{m}:mean")));
        aggs.push(col(m.as_str()).std(1).alias(format!("{m}:std")));
    }
    let keys = ["dataset", "method", "loss", "backbone", "trained", "data"].map(col);
    Ok(df.lazy().group_by(keys).agg(aggs).sort(["method", "loss"], Default::default()).collect()?)
}

fn is_released(r: &ReferenceValue) -> bool {
    r.note.starts_with("extra:")
}

/// The reference rows of our `method` on `dataset` for `metric`: (survey, released model).
fn paper_values<'a>(refs: &[&'a ReferenceValue], method: &str, dataset: &str, metric: &str) -> (Option<&'a ReferenceValue>, Option<&'a ReferenceValue>) {
    let Some(&(_, name, year)) = PAPERS.iter().find(|p| method.starts_with(p.0)) else { return (None, None) };
    let of = |released: bool| {
        refs.iter().copied().find(|r| r.method == name && r.year == year && r.dataset == dataset && r.metric == metric && is_released(r) == released)
    };
    (of(false), of(true))
}

/// The page body.
pub fn table6_body(records: &[&Loaded], reference: &[&ReferenceValue], out: &Path) -> Result<String, ReportError> {
    let mut body = String::new();
    body.push_str("<p>Fine-grained sketch-based image retrieval (survey §6.2): each test sketch queries the test photos (edge maps) of its set, and acc@K is the share of sketches whose own photo ranks in the top K (ties go to the lower index). Protocol (Yu et al., CVPR 2016): images at 256 px, grey, 225 px crops; at test, ten views of every sketch and photo (four corners and the centre, each mirrored), their squared distances (or the learned HOLEF energy) summed over the views. \"%corr\" is the share of the test split's human triplet annotations (photo a is more like the sketch than photo b) that the distances order the same way.</p>\n<p><b>Two kinds of paper values.</b> The survey prints the papers' numbers on the sets as first released. The sets we have are the authors' cleaned re-release, on which their released triplet Sketch-a-Net models score differently (listed as \"released model\"). Δ is taken against the released model where there is one (same data), else against the survey's value.</p>\n");
    if records.is_empty() {
        body.push_str("<p class=\"warn\">No Table 6 results yet. Run <code>cargo xtask reproduce table6 --smoke</code>.</p>\n");
    }
    let df = if records.is_empty() { None } else { Some(summarise(records)?) };
    let mut datasets: Vec<String> = Vec::new();
    for d in reference.iter().map(|r| r.dataset.clone()).chain(records.iter().map(|l| l.record.dataset.clone())) {
        if !datasets.contains(&d) {
            datasets.push(d);
        }
    }
    // Sets we run first.
    datasets.sort_by_key(|d| !records.iter().any(|l| &l.record.dataset == d));
    for (di, dataset) in datasets.iter().enumerate() {
        let _ = writeln!(body, "<h2>{}</h2>", esc(dataset));
        let refs: Vec<&ReferenceValue> = reference.iter().copied().filter(|r| &r.dataset == dataset).collect();
        // The papers' rows: one per method, venue and year, survey and released apart.
        let mut paper_rows: Vec<(String, String, bool)> = Vec::new();
        for r in &refs {
            let key = (r.method.clone(), format!("{} {}", r.venue, r.year), is_released(r));
            if !paper_rows.contains(&key) {
                paper_rows.push(key);
            }
        }
        body.push_str("<table><tr><th>Paper</th><th>Venue</th><th>Values</th><th>acc@1</th><th>acc@10</th><th>Provenance</th></tr>\n");
        for (method, venue, released) in &paper_rows {
            let get = |m: &str| {
                refs.iter().find(|r| &r.method == method && &format!("{} {}", r.venue, r.year) == venue && is_released(r) == *released && r.metric == m)
            };
            let v = |m: &str| get(m).map(|r| format!("<td class=\"num\">{:.2}</td>", r.value)).unwrap_or_else(|| "<td>—</td>".into());
            let prov = get("acc@1").or_else(|| get("acc@10")).map(|r| r.provenance_label()).unwrap_or_default();
            let kind = if *released { "released model, cleaned re-release" } else { "survey's Table 6 (paper)" };
            let _ =
                writeln!(body, "<tr><td>{}</td><td>{}</td><td>{kind}</td>{}{}<td>{}</td></tr>", esc(method), esc(venue), v("acc@1"), v("acc@10"), esc(&prov));
        }
        let ours: Vec<usize> = df.as_ref().map(|df| (0..df.height()).filter(|&i| &get_str(df, "dataset", i) == dataset).collect()).unwrap_or_default();
        if ours.is_empty() {
            body.push_str("<tr><td colspan=\"6\" class=\"muted\">Ours: not run on this set (its data is not in the shared sets).</td></tr>\n</table>\n");
            continue;
        }
        body.push_str("</table>\n");
        let df = df.as_ref().expect("rows imply a frame");
        let mut data: Vec<String> = ours.iter().map(|&i| get_str(df, "data", i)).collect();
        data.sort();
        data.dedup();
        let _ = writeln!(body, "<p>Ours, on <b>{}</b>:</p>", esc(&data.join("; ")));
        body.push_str("<table><tr><th>Method</th><th>Loss</th><th>Trunk / trained</th><th>Seeds</th><th>acc@1</th><th>acc@5</th><th>acc@10</th><th>One view acc@1 / @10</th><th>%corr</th><th>Chance acc@1 / @10</th><th>Δ acc@1</th></tr>\n");
        let mut series = Vec::new();
        for (j, &i) in ours.iter().enumerate() {
            let method = get_str(df, "method", i);
            let n = df.column("n").ok().and_then(|c| c.get(i).ok()).and_then(|v| v.try_extract::<u64>().ok()).unwrap_or(0);
            let m = |k: &str| get_f64(df, &format!("{k}:mean"), i);
            let sd = |k: &str| get_f64(df, &format!("{k}:std"), i);
            let mut s = format!(
                "<td>{}</td><td>{}</td><td>{}<br><span class=\"muted\">{}</span></td><td class=\"num\">{n}</td>",
                esc(&method),
                esc(&get_str(df, "loss", i)),
                esc(&get_str(df, "backbone", i)),
                esc(&get_str(df, "trained", i))
            );
            for k in ["acc@1", "acc@5", "acc@10"] {
                s.push_str(&cell(m(k), sd(k), n));
            }
            let f = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "—".into());
            let _ = write!(s, "<td class=\"num\">{} / {}</td>", f(m("acc@1_1view")), f(m("acc@10_1view")));
            s.push_str(&cell(m("triplets_correct"), sd("triplets_correct"), n));
            let _ = write!(s, "<td class=\"num\">{} / {}</td>", f(m("chance@1")), f(m("chance@10")));
            let (survey, released) = paper_values(&refs, &method, dataset, "acc@1");
            match (m("acc@1"), released.or(survey)) {
                (Some(o), Some(p)) => {
                    let d = o - p.value;
                    let against = if released.is_some() { "released model" } else { "survey" };
                    let _ = write!(s, "<td class=\"num {}\">{d:+.1}<br><span class=\"muted\">vs {against}</span></td>", if d < 0.0 { "neg" } else { "pos" });
                }
                _ => s.push_str("<td>—</td>"),
            }
            let _ = writeln!(body, "<tr>{s}</tr>");
            let points: Vec<(f64, f64, f64)> =
                (1..=MAX_K).filter_map(|k| m(&format!("acc@{k}")).map(|v| (k as f64, v, sd(&format!("acc@{k}")).unwrap_or(0.0)))).collect();
            let label = if get_str(df, "loss", i).contains("HOLEF") && !method.contains("HOLEF") {
                format!("{method}, HOLEF (ours)")
            } else {
                format!("{method} (ours)")
            };
            series.push(Series { label, points, colour: 1 + j, dashed: false });
        }
        body.push_str("</table>\n");
        // The papers' points, in the colour of our first row of the same method.
        for (prefix, _, _) in PAPERS {
            let Some(j) = ours.iter().position(|&i| get_str(df, "method", i).starts_with(prefix)) else { continue };
            for (released, name) in [(false, "paper, survey"), (true, "released model")] {
                let points: Vec<(f64, f64, f64)> = [1, 10]
                    .iter()
                    .filter_map(|&k| {
                        let (s, r) = paper_values(&refs, prefix, dataset, &format!("acc@{k}"));
                        if released { r } else { s }.map(|p| (k as f64, p.value, 0.0))
                    })
                    .collect();
                if !points.is_empty() {
                    series.push(Series { label: format!("{prefix} ({name})"), points, colour: 1 + j, dashed: true });
                }
            }
        }
        if let Some(&i) = ours.first() {
            let test = get_f64(df, "chance@1:mean", i).filter(|c| *c > 0.0).map(|c| 100.0 / c).unwrap_or(0.0);
            if test > 0.0 {
                series.push(Series {
                    label: "chance (K / test photos)".into(),
                    points: (1..=MAX_K).map(|k| (k as f64, (100.0 * k as f64 / test).min(100.0), 0.0)).collect(),
                    colour: 0,
                    dashed: true,
                });
            }
        }
        let ticks: Vec<(f64, String)> = [1, 5, 10, 15, 20].iter().map(|&k| (k as f64, k.to_string())).collect();
        let svg = line_chart(&format!("acc@K on {dataset} (ten views)"), "K", "acc@K (%)", &series, Some(&ticks))?;
        let name = format!("table6-acck-{di}.svg");
        write(&out.join(&name), &svg)?;
        let _ = writeln!(
            body,
            "<p><img src=\"{name}\" alt=\"acc@K curves for K = 1 to 20 on {}: ours solid, paper values dashed\"></p><p class=\"muted\">Solid: ours, K = 1..{MAX_K} (error bars: std over seeds). Dashed: the paper's and the released model's acc@1 and acc@10, and chance (grey).</p>",
            esc(dataset)
        );
    }
    if !records.is_empty() {
        body.push_str("<h2>Protocol (as recorded)</h2>\n<table><tr><th>Method</th><th>Data</th><th>Training views</th><th>Test views</th><th>Trained layers</th><th>Loss</th><th>Optimiser</th><th>Epochs</th><th>Batch</th><th>Seed</th><th>Checkpoint</th></tr>\n");
        for l in records {
            let (r, p) = (&l.record, &l.record.protocol);
            let _ = writeln!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&run_page_name(l)),
                esc(&r.method),
                esc(&r.data),
                esc(&p.train_transform),
                esc(&p.eval_transform),
                esc(&p.trained_layers),
                esc(p.loss.as_deref().unwrap_or("not recorded")),
                esc(&p.optimizer),
                p.epochs,
                p.batch_size,
                r.seed,
                esc(&p.checkpoint)
            );
        }
        body.push_str("</table>\n");
        body.push_str(&deviations_list(records));
    }
    Ok(body)
}
