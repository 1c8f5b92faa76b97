//! A photo index for sketch queries (`fgia sbir-index`, `fgia sbir-query`): the ten-view
//! embeddings of a list of photos (edge maps) by one trained run, and the ranking of those
//! photos for a sketch, with the run's energy (squared Euclidean, or HOLEF's learned `W`) summed
//! over the ten views, as in the evaluation.
//!
//! File layout: one line of JSON ([`SbirIndexHeader`]), a newline, then little-endian `f32`:
//! the embeddings `[photos, views, dim]`, then `W` `[dim, dim]` when the run learned one. Every
//! size is checked against the header before anything is allocated from it.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use fgia_train::TrainError;

/// Format name in the header.
pub const FORMAT: &str = "fgia-sbir-index";
/// Longest header line read (bytes).
const MAX_HEADER: u64 = 64 << 20;
/// Largest embedding or `W` accepted (values).
const MAX_VALUES: usize = 1 << 30;

/// What the index holds, and which run made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SbirIndexHeader {
    /// [`FORMAT`].
    pub format: String,
    /// Layout version (1).
    pub version: u32,
    /// The run folder whose model embedded the photos (queries are embedded by it too).
    pub run_dir: String,
    /// Method and loss, in words.
    pub method: String,
    /// Views per photo (ten).
    pub views: usize,
    /// Embedding size.
    pub dim: usize,
    /// Whether `W` follows the embeddings.
    pub holef: bool,
    /// The photos, in row order.
    pub photos: Vec<String>,
}

/// An index in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct SbirIndex {
    /// Header.
    pub header: SbirIndexHeader,
    /// `[photos, views, dim]`, row-major.
    pub embeddings: Vec<f32>,
    /// HOLEF's `W`, `[dim, dim]`.
    pub w: Option<Vec<f32>>,
}

fn bad(path: &Path, message: String) -> TrainError {
    TrainError::Invalid { path: path.to_path_buf(), message }
}

impl SbirIndex {
    /// Writes the index atomically.
    pub fn write(&self, path: &Path) -> Result<(), TrainError> {
        let mut bytes = serde_json::to_vec(&self.header).map_err(|e| bad(path, e.to_string()))?;
        bytes.push(b'\n');
        for v in self.embeddings.iter().chain(self.w.iter().flatten()) {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        fgia_core::record::write_atomic(path, &bytes).map_err(|e| bad(path, e.to_string()))
    }

    /// Reads and checks an index: the header's format and version, the sizes it claims against
    /// the bytes that follow, and finite values.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
        let total = file.metadata().map_err(|e| TrainError::io(path, e))?.len();
        let mut r = std::io::BufReader::new(file);
        let mut line = Vec::new();
        (&mut r).take(MAX_HEADER).read_until(b'\n', &mut line).map_err(|e| TrainError::io(path, e))?;
        if line.last() != Some(&b'\n') {
            return Err(bad(path, format!("no header line in the first {MAX_HEADER} bytes: not an SBIR index")));
        }
        let header: SbirIndexHeader = serde_json::from_slice(&line).map_err(|e| bad(path, format!("header: {e}")))?;
        if header.format != FORMAT || header.version != 1 {
            return Err(bad(path, format!("format '{}' version {}: expected {FORMAT} version 1", header.format, header.version)));
        }
        let count = |a: usize, b: usize| a.checked_mul(b).filter(|&n| n <= MAX_VALUES);
        let emb = count(header.photos.len(), header.views).and_then(|n| count(n, header.dim));
        let w = if header.holef { count(header.dim, header.dim) } else { Some(0) };
        let (Some(emb), Some(w)) = (emb, w) else {
            return Err(bad(path, format!("{} photos x {} views x {} dimensions is beyond any index", header.photos.len(), header.views, header.dim)));
        };
        if header.views == 0 || header.dim == 0 {
            return Err(bad(path, "zero views or dimensions".into()));
        }
        let want = ((emb + w) as u64) * 4;
        let have = total - line.len() as u64;
        if have != want {
            return Err(bad(path, format!("the header claims {want} bytes of values, the file holds {have}")));
        }
        let mut raw = vec![0u8; want as usize];
        r.read_exact(&mut raw).map_err(|e| TrainError::io(path, e))?;
        let values: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(path, format!("value {i} is not finite")));
        }
        let (embeddings, rest) = values.split_at(emb);
        Ok(SbirIndex { header, embeddings: embeddings.to_vec(), w: (w > 0).then(|| rest.to_vec()) })
    }

    /// The photos ranked for a sketch's `[views, dim]` embeddings: `(photo, summed energy)`,
    /// nearest first, ties to the lower index.
    pub fn rank(&self, sketch: &[f32]) -> Vec<(usize, f32)> {
        let (views, d) = (self.header.views, self.header.dim);
        assert_eq!(sketch.len(), views * d, "a query has one embedding per view");
        // D_W(s, p) = Σ_i s_i² (W1)_i + Σ_j p_j² (Wᵀ1)_j − 2 sᵀ W p; with no W, |s − p|².
        let sums = self.w.as_ref().map(|w| {
            let rows: Vec<f32> = (0..d).map(|i| w[i * d..(i + 1) * d].iter().sum()).collect();
            let cols: Vec<f32> = (0..d).map(|j| (0..d).map(|i| w[i * d + j]).sum()).collect();
            (rows, cols)
        });
        let sw: Vec<Vec<f32>> = match &self.w {
            Some(w) => (0..views).map(|v| (0..d).map(|j| (0..d).map(|i| sketch[v * d + i] * w[i * d + j]).sum()).collect()).collect(),
            None => Vec::new(),
        };
        let mut out: Vec<(usize, f32)> = (0..self.header.photos.len())
            .map(|p| {
                let e: f32 = (0..views)
                    .map(|v| {
                        let s = &sketch[v * d..(v + 1) * d];
                        let q = &self.embeddings[(p * views + v) * d..(p * views + v + 1) * d];
                        match &sums {
                            None => s.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(),
                            Some((rows, cols)) => {
                                let a: f32 = s.iter().zip(rows).map(|(x, r)| x * x * r).sum();
                                let b: f32 = q.iter().zip(cols).map(|(x, c)| x * x * c).sum();
                                let cross: f32 = sw[v].iter().zip(q).map(|(x, y)| x * y).sum();
                                a + b - 2.0 * cross
                            }
                        }
                    })
                    .sum();
                (p, e)
            })
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out
    }

    /// The photo paths.
    pub fn photo_paths(&self) -> Vec<PathBuf> {
        self.header.photos.iter().map(PathBuf::from).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(w: Option<Vec<f32>>) -> SbirIndex {
        // Three photos, two views, two dimensions.
        let embeddings = vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0];
        let header = SbirIndexHeader {
            format: FORMAT.into(),
            version: 1,
            run_dir: "runs/x".into(),
            method: "test".into(),
            views: 2,
            dim: 2,
            holef: w.is_some(),
            photos: vec!["a.png".into(), "b.png".into(), "c.png".into()],
        };
        SbirIndex { header, embeddings, w }
    }

    #[test]
    fn ranking_sums_the_views_breaks_ties_low_and_uses_w() {
        let ix = index(None);
        // Sketch (1, 0) in both views: a at 1 + 1, b at 0, c at 2 + 2.
        let r = ix.rank(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(r, vec![(1, 0.0), (0, 2.0), (2, 4.0)]);
        // At the origin, b and c tie at 2: the lower index first.
        assert_eq!(ix.rank(&[0.0, 0.0, 0.0, 0.0]).iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1, 2]);
        // W = I gives the Euclidean energies; W = 2 I doubles them.
        assert_eq!(index(Some(vec![1.0, 0.0, 0.0, 1.0])).rank(&[1.0, 0.0, 1.0, 0.0]), r);
        let doubled = index(Some(vec![2.0, 0.0, 0.0, 2.0])).rank(&[1.0, 0.0, 1.0, 0.0]);
        assert_eq!(doubled, vec![(1, 0.0), (0, 4.0), (2, 8.0)]);
    }

    #[test]
    fn a_written_index_reads_back_and_damaged_ones_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("photos.fgiasbir");
        let ix = index(Some(vec![1.0, 0.5, 0.0, 1.0]));
        ix.write(&p).expect("write");
        assert_eq!(SbirIndex::open(&p).expect("read"), ix);
        let bytes = std::fs::read(&p).expect("read");
        let cut = dir.path().join("cut");
        std::fs::write(&cut, &bytes[..bytes.len() - 3]).expect("write");
        assert!(SbirIndex::open(&cut).expect_err("short").to_string().contains("bytes"));
        let huge = String::from_utf8_lossy(&bytes).replace("\"dim\":2", "\"dim\":4000000000");
        let hp = dir.path().join("huge");
        std::fs::write(&hp, huge.as_bytes()).expect("write");
        assert!(SbirIndex::open(&hp).is_err());
        let nan = dir.path().join("nan");
        let mut b = bytes.clone();
        let n = b.len();
        b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&nan, &b).expect("write");
        assert!(SbirIndex::open(&nan).expect_err("nan").to_string().contains("finite"));
        std::fs::write(&nan, b"not an index").expect("write");
        assert!(SbirIndex::open(&nan).is_err());
    }
}
