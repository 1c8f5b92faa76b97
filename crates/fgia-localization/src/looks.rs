//! What a method looked at, drawn on 8 test images: one static SVG per run (`looks.svg` in the
//! run folder, which the report puts on the run's page).
//!
//! Each panel is the test image as the method saw it (the evaluation crop, embedded as a PNG),
//! with the method's boxes (crops, parts, anchors kept after NMS), its attention or saliency map
//! as translucent cells, and its sampling grids as warped grid lines.

use std::fmt::Write as _;
use std::path::Path;

use fgia_core::datasets::Record;
use fgia_core::imaging::{Transform, load_rgb};
use fgia_core::rng::SplitMix64;

use crate::geometry::NormBox;

/// One test image's drawing.
#[derive(Debug, Clone, Default)]
pub struct Look {
    /// Test image index.
    pub image: usize,
    /// Boxes with their labels (unit square of the view).
    pub boxes: Vec<(NormBox, String)>,
    /// A `g x g` map over the view (attention, saliency), drawn as cells scaled to its maximum.
    pub heat: Option<(usize, Vec<f32>)>,
    /// Sampling grids `[s, s, 2]` (`grid_sample` coordinates) with their labels.
    pub grids: Vec<(usize, Vec<f32>, String)>,
    /// A line under the image (the prediction).
    pub caption: String,
}

const COLOURS: [&str; 8] = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"];

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The evaluation view of `rec` as PNG bytes (`None` when it cannot be read).
fn view_png(rec: &Record, tf: &Transform) -> Option<(Vec<u8>, usize)> {
    let img = load_rgb(&rec.path).ok()?;
    let c = tf.crop as usize;
    let mut out = vec![0f32; tf.output_len()];
    tf.apply(&img, rec.trim_bottom, rec.bbox, &mut SplitMix64::new(0), &mut out).ok()?;
    let (mean, std) = tf.normalize.mean_std();
    let mut rgb = vec![0u8; c * c * 3];
    for p in 0..c * c {
        for ch in 0..3 {
            rgb[p * 3 + ch] = (out[ch * c * c + p] * std[ch] + mean[ch]).round().clamp(0.0, 255.0) as u8;
        }
    }
    let buf = image::RgbImage::from_raw(c as u32, c as u32, rgb)?;
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(buf).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).ok()?;
    Some((png, c))
}

/// Draws `looks` on their test images into one SVG at `path` (written atomically); returns the
/// panels drawn (images that cannot be read are left out).
pub fn write_looks(path: &Path, test: &[Record], tf: &Transform, looks: &[Look]) -> std::io::Result<usize> {
    let side = 224.0f32;
    let cols = 4usize;
    let (cell_w, cell_h) = (side + 12.0, side + 40.0);
    let rows = looks.len().div_ceil(cols).max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"10\">",
        cols as f32 * cell_w,
        rows as f32 * cell_h
    );
    let _ = write!(svg, "<defs><clipPath id=\"view\"><rect width=\"{side}\" height=\"{side}\"/></clipPath></defs>");
    let mut drawn = 0;
    for (n, look) in looks.iter().enumerate() {
        let Some(rec) = test.get(look.image) else { continue };
        let Some((png, _)) = view_png(rec, tf) else { continue };
        let (ox, oy) = ((n % cols) as f32 * cell_w + 6.0, (n / cols) as f32 * cell_h + 6.0);
        let _ = write!(svg, "<g transform=\"translate({ox},{oy})\">");
        let _ = write!(svg, "<g clip-path=\"url(#view)\"><image width=\"{side}\" height=\"{side}\" href=\"data:image/png;base64,{}\"/>", base64(&png));
        if let Some((g, map)) = &look.heat {
            // Scaled to the map's own range (its minimum transparent, its maximum strongest).
            let (lo, hi) = map.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let span = (hi - lo).max(1e-12);
            let cs = side / *g as f32;
            for (k, &v) in map.iter().enumerate() {
                let a = ((v - lo) / span * 0.55).clamp(0.0, 0.55);
                let _ = write!(
                    svg,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{cs:.1}\" height=\"{cs:.1}\" fill=\"#ff3000\" fill-opacity=\"{a:.3}\"/>",
                    (k % g) as f32 * cs,
                    (k / g) as f32 * cs
                );
            }
        }
        for (j, (s, grid, label)) in look.grids.iter().enumerate() {
            let colour = COLOURS[(j + 3) % COLOURS.len()];
            let step = (*s / 8).max(1);
            let pt = |y: usize, x: usize| -> (f32, f32) {
                let o = (y * s + x) * 2;
                ((grid[o] + 1.0) / 2.0 * side, (grid[o + 1] + 1.0) / 2.0 * side)
            };
            let mut lines: Vec<Vec<(f32, f32)>> = Vec::new();
            for y in (0..*s).step_by(step).chain(std::iter::once(s - 1)) {
                lines.push((0..*s).map(|x| pt(y, x)).collect());
            }
            for x in (0..*s).step_by(step).chain(std::iter::once(s - 1)) {
                lines.push((0..*s).map(|y| pt(y, x)).collect());
            }
            for l in lines {
                let pts: Vec<String> = l.iter().step_by(2).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(svg, "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"0.8\" stroke-opacity=\"0.8\"/>", pts.join(" "));
            }
            let _ = write!(svg, "<text x=\"3\" y=\"{}\" fill=\"{colour}\" stroke=\"white\" stroke-width=\"0.3\">{}</text>", 12 + 11 * j, esc(label));
        }
        for (j, (b, label)) in look.boxes.iter().enumerate() {
            let colour = COLOURS[j % COLOURS.len()];
            let (x, y, w, h) = (b.x0 * side, b.y0 * side, (b.x1 - b.x0) * side, (b.y1 - b.y0) * side);
            let _ = write!(svg, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>");
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\" stroke=\"white\" stroke-width=\"0.3\" font-weight=\"bold\">{}</text>",
                x.max(0.0) + 2.0,
                (y.max(0.0) + 11.0).min(side - 2.0),
                esc(label)
            );
        }
        svg.push_str("</g>");
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><text x=\"0\" y=\"{}\" fill=\"#555\">{}</text>",
            side + 13.0,
            esc(&rec.id),
            side + 26.0,
            esc(&look.caption)
        );
        svg.push_str("</g>");
        drawn += 1;
    }
    svg.push_str("</svg>\n");
    fgia_core::record::write_atomic(path, svg.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(drawn)
}

/// An `out x out` subsample of a `size x size` sampling grid (`[size, size, 2]`), for drawing:
/// the grid points nearest to `out` evenly spaced rows and columns.
pub fn thin_grid(grid: &[f32], size: usize, out: usize) -> Vec<f32> {
    let pick = |k: usize| (((k as f32 + 0.5) * size as f32 / out as f32) as usize).min(size.saturating_sub(1));
    let mut g = Vec::with_capacity(out * out * 2);
    for y in 0..out {
        for x in 0..out {
            let at = (pick(y) * size + pick(x)) * 2;
            g.extend_from_slice(&grid[at..at + 2]);
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (raw, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }
}
