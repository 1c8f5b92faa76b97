//! The static HTML page of a query: the query image and its top-K results as thumbnails, with
//! distances. Thumbnails are written beside the page (`<page>_files/`), so the page opens from
//! disk on any machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::index::IndexItem;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A thumbnail of `src`, read only from a regular file ([`fgia_core::imaging::load_rgb`]): an
/// item path such as `/dev/zero` is shown as unreadable instead of hanging the page.
fn thumbnail(src: &Path, dst: &Path) -> Result<(), String> {
    let img = fgia_core::imaging::load_rgb(src).map_err(|e| e.to_string())?;
    // Fit inside 160 x 160, keeping the aspect ratio.
    let scale = 160.0 / img.width().max(img.height()).max(1) as f64;
    let (w, h) = (((img.width() as f64 * scale).round() as u32).max(1), ((img.height() as f64 * scale).round() as u32).max(1));
    image::imageops::thumbnail(&img, w, h).save(dst).map_err(|e| format!("{}: {e}", dst.display()))
}

fn file_name(p: &str) -> &str {
    p.rsplit(['/', '\\']).next().unwrap_or(p)
}

/// Writes `page` with the query (headed `title`) and `(item, distance)` results, `note` saying
/// what the distances are; returns the page path.
pub fn write_query_page(page: &Path, query: &Path, results: &[(&IndexItem, f32)], index_path: &Path, title: &str, note: &str) -> Result<PathBuf, String> {
    let stem = page.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "query".into());
    let dir = page.with_file_name(format!("{stem}_files"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cell = |i: usize, path: &Path| -> String {
        let name = format!("{i:03}.png");
        match thumbnail(path, &dir.join(&name)) {
            Ok(()) => format!("<div class=\"t\"><img src=\"{}/{name}\" alt=\"\"></div>", esc(&format!("{stem}_files"))),
            Err(e) => format!("<div class=\"bad\">unreadable: {}</div>", esc(&e)),
        }
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Query: {}</title><style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:.5em;text-align:center;font-size:12px;width:170px;vertical-align:top}}.t{{height:164px;display:flex;align-items:center;justify-content:center}}figcaption{{word-break:break-all}}img{{border:1px solid #ccc}}.q img{{border:3px solid #1f77b4}}.bad{{color:#a00}}</style></head><body>",
        esc(&query.display().to_string())
    );
    let _ = write!(
        body,
        "<h1>{}</h1><p>Index: <code>{}</code>. {}</p><figure class=\"q\" title=\"{}\">{}<figcaption>{}</figcaption></figure>",
        esc(title),
        esc(&index_path.display().to_string()),
        esc(note),
        esc(&query.display().to_string()),
        cell(0, query),
        esc(file_name(&query.display().to_string()))
    );
    let _ = write!(body, "<h2>Top {} results</h2>", results.len());
    for (r, (item, d)) in results.iter().enumerate() {
        let _ = write!(
            body,
            "<figure title=\"{}\">{}<figcaption>#{} &middot; distance {:.4}<br>{}{}</figcaption></figure>",
            esc(&item.path),
            cell(r + 1, Path::new(&item.path)),
            r + 1,
            d.max(0.0),
            esc(file_name(&item.path)),
            item.label.as_ref().map(|l| format!("<br><b>{}</b>", esc(l))).unwrap_or_default()
        );
    }
    body.push_str("</body></html>\n");
    fgia_core::record::write_atomic(page, body.as_bytes()).map_err(|e| e.to_string())?;
    Ok(page.to_path_buf())
}
