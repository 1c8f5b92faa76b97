//! The static HTML page of a query: the query image and its top-K results as thumbnails, with
//! distances. Thumbnails are written beside the page (`<page>_files/`), so the page opens from
//! disk on any machine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::index::IndexItem;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn thumbnail(src: &Path, dst: &Path) -> Result<(), String> {
    let img = fgia_core::imaging::load_rgb(src).map_err(|e| e.to_string())?;
    let t = image::imageops::thumbnail(&img, 160.min(img.width()), (160 * img.height() / img.width().max(1)).max(1));
    t.save(dst).map_err(|e| format!("{}: {e}", dst.display()))
}

/// Writes `page` with the query and `(item, distance)` results; returns the page path.
pub fn write_query_page(page: &Path, query: &Path, results: &[(&IndexItem, f32)], index_path: &Path) -> Result<PathBuf, String> {
    let stem = page.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "query".into());
    let dir = page.with_file_name(format!("{stem}_files"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cell = |i: usize, path: &Path| -> String {
        let name = format!("{i:03}.png");
        match thumbnail(path, &dir.join(&name)) {
            Ok(()) => format!("<img src=\"{}/{name}\" alt=\"\">", esc(&format!("{stem}_files"))),
            Err(e) => format!("<div class=\"bad\">unreadable: {}</div>", esc(&e)),
        }
    };
    let mut body = String::new();
    let _ = write!(
        body,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Query: {}</title><style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:.5em;text-align:center;font-size:12px;width:170px;vertical-align:top}}img{{border:1px solid #ccc}}.q img{{border:3px solid #1f77b4}}.bad{{color:#a00}}</style></head><body>",
        esc(&query.display().to_string())
    );
    let _ = write!(
        body,
        "<h1>Query</h1><p>Index: <code>{}</code></p><figure class=\"q\">{}<figcaption>{}</figcaption></figure>",
        esc(&index_path.display().to_string()),
        cell(0, query),
        esc(&query.display().to_string())
    );
    let _ = write!(body, "<h2>Top {} results</h2>", results.len());
    for (r, (item, d)) in results.iter().enumerate() {
        let _ = write!(
            body,
            "<figure>{}<figcaption>#{} &middot; distance {:.4}<br>{}{}</figcaption></figure>",
            cell(r + 1, Path::new(&item.path)),
            r + 1,
            d,
            esc(&item.path),
            item.label.as_ref().map(|l| format!("<br><b>{}</b>", esc(l))).unwrap_or_default()
        );
    }
    body.push_str("</body></html>\n");
    fgia_core::record::write_atomic(page, body.as_bytes()).map_err(|e| e.to_string())?;
    Ok(page.to_path_buf())
}
