//! The Table 3 page: recognition with external information (§5.3).
//!
//! Three kinds of rows, kept apart: the survey's Table 3 (the papers' values, with their
//! provenance); ours, each marked by what its data is (real images with synthetic label noise,
//! real class attributes, simulated users); and the methods whose data cannot be had offline,
//! listed as "needs data" with the reader that takes it. No Δ is computed: none of our rows runs
//! a survey row's setting (their web images, sentences or locations).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::charts::{Series, line_chart};
use crate::reference::ReferenceValue;
use crate::{Loaded, ReportError, deviations_list, esc, run_page_name, write};

/// Our noisy-label methods, in the chart's order.
const NOISY: [&str; 3] = ["Cross-entropy", "Co-teaching", "Peer-learning"];

/// The 20-questions policies: metric key and name.
const POLICIES: [(&str, &str); 3] = [("vision", "computer vision only"), ("random", "random questions"), ("info_gain", "information gain")];

/// The rows that need data we do not have: method, survey family, what it needs, the reader.
const NEEDS_DATA: [(&str, &str, &str, &str); 5] = [
    (
        "Xu et al.; Krause et al.; MetaFGNet",
        "noisy web data",
        "their crawled web images (and MetaFGNet's auxiliary sets)",
        "WebFG-style class folders: fgia_core::datasets::read_webfg",
    ),
    ("CVL", "multi-modal data", "the Reed et al. sentences (10 per image)", "text_c10/<class>/<image>.txt: fgia_core::datasets::read_captions"),
    ("T-CNN", "multi-modal data", "its knowledge base and the Reed et al. sentences", "text_c10 reader as above"),
    ("Bi-modal PMA", "multi-modal data", "the Reed et al. sentences", "text_c10 reader as above"),
    (
        "Geo prior (Mac Aodha et al. 2019) on its benchmarks",
        "location and time",
        "iNaturalist 2017/2018 or NABirds images with their locations and dates (our row above runs the same code on synthetic locations)",
        "fgia_core::datasets::read_inat with the inat20xx_locations files; read_nabirds; cargo xtask download inat2018",
    ),
];

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 { (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    (m, sd)
}

fn fmt(v: &[f64]) -> String {
    if v.is_empty() {
        return "<td>—</td>".into();
    }
    let (m, sd) = mean_sd(v);
    if v.len() > 1 { format!("<td class=\"num\"><b>{m:.1}</b> ± {sd:.1}</td>") } else { format!("<td class=\"num\"><b>{m:.1}</b></td>") }
}

/// What the data of one of our rows is.
fn data_kind(r: &fgia_core::record::ResultRecord) -> &'static str {
    match r.section.as_deref() {
        // A noisy-label run records its noise rate (0 for clean labels); one on crawled web
        // images has none to record.
        Some("5.3.1") if !r.metrics.contains_key("noise_rate") => "crawled web images, their real label noise",
        Some("5.3.1") => "real images, synthetic label noise (stand-in for web labels)",
        Some("5.3.2") => "real images and real class attributes",
        Some("5.3.3") => "real images and attributes, simulated users",
        Some("5.3") => "real images, SYNTHETIC locations (no offline benchmark data has locations)",
        _ => "real data",
    }
}

/// The page body.
pub fn table3_body(records: &[&Loaded], reference: &[&ReferenceValue], out: &Path) -> Result<String, ReportError> {
    let mut body = String::from(
        "<p>Recognition with external information (survey §5.3): noisy web data, multi-modal data (attributes, text, knowledge), location priors and humans in the loop. Most of the papers' data (crawled web images, sentences, locations) cannot be had offline: the algorithms run here on the data we have, each row saying what its data is, and every method whose data is missing is listed as <b>needs data</b> with the reader that takes it. No Δ is computed: none of our rows runs a survey row's setting.</p>\n",
    );
    body.push_str("<h2>The survey's Table 3</h2>\n<table><tr><th>Method</th><th>Family</th><th>Venue</th><th>Backbone</th><th>Dataset</th><th>Top-1</th><th>Provenance</th><th>Note</th></tr>\n");
    for r in reference {
        let prov = if r.is_unverified() { format!("<span class=\"unverified\">{}</span>", esc(&r.provenance_label())) } else { esc(&r.provenance_label()) };
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td class=\"num\">{:.1}</td><td>{prov}</td><td class=\"muted\">{}</td></tr>",
            esc(&r.method),
            esc(&r.family),
            esc(&r.venue),
            esc(&r.year),
            esc(&r.backbone),
            esc(&r.dataset),
            r.value,
            esc(&r.note)
        );
    }
    body.push_str("</table>\n");
    body.push_str("<h2>Ours</h2>\n");
    if records.is_empty() {
        body.push_str("<p class=\"warn\">No Table 3 results yet. Run <code>cargo xtask reproduce table3 --smoke</code>.</p>\n");
    } else {
        // Rows: (section, method, data) with the seeds' top-1.
        let mut rows: BTreeMap<(String, String, String), Vec<&Loaded>> = BTreeMap::new();
        for l in records {
            let r = &l.record;
            rows.entry((r.section.clone().unwrap_or_default(), r.method.clone(), r.data.clone())).or_default().push(l);
        }
        body.push_str(
            "<table><tr><th>§</th><th>Method</th><th>Data</th><th>What the data is</th><th>Seeds</th><th>Top-1 (%)</th><th>Chance</th><th>Runs</th></tr>\n",
        );
        for ((section, method, data), ls) in &rows {
            let top1: Vec<f64> = ls.iter().filter_map(|l| l.record.metrics.get("top1").copied()).collect();
            let chance = ls[0].record.metrics.get("chance").map_or("—".into(), |c| format!("{c:.1}"));
            let links: Vec<String> = ls.iter().map(|l| format!("<a href=\"{}\">seed {}</a>", esc(&run_page_name(l)), l.record.seed)).collect();
            let _ = writeln!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>{}<td class=\"num\">{chance}</td><td>{}</td></tr>",
                esc(section),
                esc(method),
                esc(data),
                data_kind(&ls[0].record),
                ls.len(),
                fmt(&top1),
                links.join(" ")
            );
        }
        body.push_str("</table>\n");
        body.push_str(&extra_information(records));
        body.push_str(&noise_chart(records, out)?);
        body.push_str(&questions_chart(records, out)?);
    }
    body.push_str("<h2>Needs data</h2>\n<p>These rows are not run: their data is not available offline. Each has a reader, tested on small files in the official layout, so a user who has the data can run it.</p>\n<table><tr><th>Method</th><th>Family</th><th>Needs</th><th>Reader</th></tr>\n");
    for (m, f, need, reader) in NEEDS_DATA {
        let _ = writeln!(body, "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>", esc(m), esc(f), esc(need), esc(reader));
    }
    body.push_str("</table>\n");
    if !records.is_empty() {
        body.push_str("<h2>Protocol (as recorded)</h2>\n<table><tr><th>Method</th><th>Data</th><th>Trained</th><th>Loss</th><th>Optimiser</th><th>Epochs</th><th>Batch</th><th>Split</th><th>Checkpoint</th></tr>\n");
        for l in records {
            let (r, p) = (&l.record, &l.record.protocol);
            let _ = writeln!(
                body,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&run_page_name(l)),
                esc(&r.method),
                esc(&r.data),
                esc(&p.trained_layers),
                esc(p.loss.as_deref().unwrap_or("not recorded")),
                esc(&p.optimizer),
                p.epochs,
                p.batch_size,
                esc(&p.split),
                esc(&p.checkpoint)
            );
        }
        body.push_str("</table>\n");
        body.push_str(&deviations_list(records));
    }
    Ok(body)
}

/// The rows whose record also holds the image classifier's accuracy without the extra
/// information (the geo prior's image head, KERL's score classifier): both numbers on the same
/// test images, and the gain. The comparison is between our own runs, never with the survey.
fn extra_information(records: &[&Loaded]) -> String {
    const BASELINES: [(&str, &str); 2] = [
        ("top1_image_only", "the image classifier alone (no location)"),
        ("top1_score_classifier", "its score classifier on the pooled feature (no graph, no gates)"),
    ];
    let mut rows = String::new();
    for l in records {
        let r = &l.record;
        for (key, what) in BASELINES {
            if let (Some(base), Some(with)) = (r.metrics.get(key), r.metrics.get("top1")) {
                let _ = writeln!(
                    rows,
                    "<tr><td>{}</td><td>{what}</td><td class=\"num\">{base:.1}</td><td class=\"num\"><b>{with:.1}</b></td><td class=\"num\">{:+.1}</td><td><a href=\"{}\">seed {}</a></td></tr>",
                    esc(&r.method),
                    with - base,
                    esc(&run_page_name(l)),
                    r.seed
                );
            }
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "<h2>What the extra information adds</h2>\n<p>The same run's classifier without the extra information, on the same test images. These compare our own numbers with each other; the geo prior's locations are synthetic, so its gain says only that the prior is learned and combined correctly.</p>\n<table><tr><th>Method</th><th>Without</th><th>Top-1 without (%)</th><th>Top-1 with (%)</th><th>Gain (points)</th><th>Run</th></tr>\n{rows}</table>\n"
    )
}

/// Top-1 against the noise rate for the noisy-label methods, one line per method and kind of
/// noise (the clean point shared), with the numbers in a table.
fn noise_chart(records: &[&Loaded], out: &Path) -> Result<String, ReportError> {
    let noisy: Vec<&&Loaded> = records.iter().filter(|l| l.record.metrics.contains_key("noise_rate")).collect();
    if noisy.is_empty() {
        return Ok(String::new());
    }
    // (kind name, value of `noise_pair_flip`, dashed)
    let kinds = [("pair flips", 1.0, false), ("symmetric", 0.0, true)];
    let mut rates: Vec<u32> = noisy.iter().map(|l| l.record.metrics["noise_rate"].round() as u32).filter(|&r| r > 0).collect();
    rates.sort_unstable();
    rates.dedup();
    let at = |of: &[&&Loaded], rate: u32, kind: f64| -> Vec<f64> {
        of.iter()
            .filter(|l| {
                let m = &l.record.metrics;
                m["noise_rate"].round() as u32 == rate && (rate == 0 || m.get("noise_pair_flip") == Some(&kind))
            })
            .filter_map(|l| l.record.metrics.get("top1").copied())
            .collect()
    };
    let mut table = String::from("<table><tr><th>Method</th><th>clean labels</th>");
    for (k, _, _) in kinds {
        for r in &rates {
            let _ = write!(table, "<th>{r} % {k}</th>");
        }
    }
    table.push_str("</tr>\n");
    let mut series = Vec::new();
    for (j, name) in NOISY.iter().enumerate() {
        let of: Vec<&&Loaded> = noisy.iter().copied().filter(|l| l.record.method.starts_with(name)).collect();
        if of.is_empty() {
            continue;
        }
        let _ = write!(table, "<tr><td>{}</td>{}", esc(name), fmt(&at(&of, 0, 0.0)));
        for (kind, value, dashed) in kinds {
            let mut points = Vec::new();
            for rate in std::iter::once(0).chain(rates.iter().copied()) {
                let v = at(&of, rate, value);
                if rate > 0 {
                    table.push_str(&fmt(&v));
                }
                if !v.is_empty() {
                    let (m, sd) = mean_sd(&v);
                    points.push((f64::from(rate), m, sd));
                }
            }
            series.push(Series { label: format!("{name}, {kind}"), points, colour: 1 + j, dashed });
        }
        table.push_str("</tr>\n");
    }
    table.push_str("</table>\n");
    let ticks: Vec<(f64, String)> = std::iter::once(0).chain(rates.iter().copied()).map(|r| (f64::from(r), format!("{r} %"))).collect();
    let svg = line_chart("Top-1 against label noise (cub-mini test split)", "training labels corrupted", "top-1 (%)", &series, Some(&ticks))?;
    write(&out.join("table3-noise.svg"), &svg)?;
    Ok(format!(
        "<h3>Noisy labels (§5.3.1)</h3>\n<p><img src=\"table3-noise.svg\" alt=\"top-1 against the label-noise rate for cross-entropy, co-teaching and Peer-learning, pair flips and symmetric noise\"></p>\n{table}<p class=\"muted\">Solid: pair flips inside the confusable groups (classes whose names end in the same word); dashed: symmetric noise over the other classes; each at the recorded rate. The test labels are clean.</p>\n"
    ))
}

/// Accuracy against the number of questions for the three policies.
fn questions_chart(records: &[&Loaded], out: &Path) -> Result<String, ReportError> {
    let of: Vec<&&Loaded> = records.iter().filter(|l| l.record.metrics.contains_key("questions")).collect();
    let Some(first) = of.first() else { return Ok(String::new()) };
    let q = first.record.metrics["questions"] as usize;
    let mut series = Vec::new();
    let mut table = String::from("<table><tr><th>Policy</th>");
    let shown: Vec<usize> = [0, 1, 2, 3, 5, 10, 15, 20].into_iter().filter(|&t| t <= q).collect();
    for t in &shown {
        let _ = write!(table, "<th>{t} q.</th>");
    }
    table.push_str("</tr>\n");
    for (j, (key, name)) in POLICIES.iter().enumerate() {
        let at = |t: usize| -> Vec<f64> { of.iter().filter_map(|l| l.record.metrics.get(&format!("acc_q{t}_{key}")).copied()).collect() };
        let points: Vec<(f64, f64, f64)> = (0..=q)
            .filter_map(|t| {
                let v = at(t);
                (!v.is_empty()).then(|| {
                    let (m, sd) = mean_sd(&v);
                    (t as f64, m, sd)
                })
            })
            .collect();
        let _ = write!(table, "<tr><td>{}</td>", esc(name));
        for &t in &shown {
            table.push_str(&fmt(&at(t)));
        }
        table.push_str("</tr>\n");
        series.push(Series { label: (*name).to_string(), points, colour: if j == 0 { 0 } else { j + 1 }, dashed: j == 0 });
    }
    table.push_str("</table>\n");
    let ticks: Vec<(f64, String)> = (0..=q).step_by(5.max(q / 4)).map(|t| (t as f64, t.to_string())).collect();
    let svg = line_chart("20 questions: top-1 after t answers (cub-mini test split)", "questions asked", "top-1 (%)", &series, Some(&ticks))?;
    write(&out.join("table3-questions.svg"), &svg)?;
    Ok(format!(
        "<h3>Humans in the loop (§5.3.3)</h3>\n<p><img src=\"table3-questions.svg\" alt=\"top-1 against the number of questions for the vision-only, random and information-gain policies\"></p>\n{table}<p class=\"muted\">Simulated users answer from CUB's class-level attribute percentages (see the deviations); every policy meets the same users.</p>\n"
    ))
}
