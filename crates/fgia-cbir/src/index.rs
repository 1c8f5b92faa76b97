//! A retrieval index persisted to disk: the gallery's embeddings, what they describe (paths,
//! labels, how they were extracted), and optionally an HNSW graph over them.
//!
//! File layout (little-endian):
//!
//! ```text
//! "FGIAIDX\0"                 8 bytes
//! format version              u32 (1)
//! header length               u64, then the header as JSON (IndexHeader)
//! vectors                     n * dim f32
//! graph length                u64, then the HNSW graph (0 bytes for an exact index)
//! SHA-256 of all the above    32 bytes
//! ```
//!
//! The checksum is verified before anything is parsed, so a truncated or corrupted file is an
//! error naming the file, never a panic; the graph is also validated link by link. Files are
//! written atomically.

use std::path::{Path, PathBuf};

use fgia_core::retrieval::Distance;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hnsw::{Hnsw, HnswParams};
use crate::search::exact_knn;

const MAGIC: &[u8; 8] = b"FGIAIDX\0";
const VERSION: u32 = 1;
/// Largest input side an index may ask the query side to use.
pub const MAX_RESOLUTION: u32 = 4096;
/// Largest HNSW `M`, and largest candidate lists.
pub const MAX_HNSW_M: usize = 512;
/// Largest HNSW candidate list (`ef_construction`, `ef_search`).
pub const MAX_HNSW_EF: usize = 1 << 16;

/// What an index holds, besides the vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// Vector length.
    pub dim: usize,
    /// Number of vectors.
    pub n: usize,
    /// Comparison.
    pub distance: Distance,
    /// How the vectors were made (backbone, resolution, aggregator), for the query side to
    /// repeat.
    pub extractor: ExtractorInfo,
    /// One entry per vector.
    pub items: Vec<IndexItem>,
    /// HNSW parameters when the index has a graph.
    pub hnsw: Option<HnswParams>,
}

/// How to compute a query's vector for this index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractorInfo {
    /// Backbone name (`fgia_nn::BackboneKind`).
    pub backbone: String,
    /// Input side.
    pub resolution: u32,
    /// Aggregator name (`scda`, `gap`).
    pub aggregator: String,
}

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexItem {
    /// Image path as given when indexing.
    pub path: String,
    /// Label, when known.
    pub label: Option<String>,
}

/// An error reading or writing an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not a valid index file.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A gallery index, exact or with an HNSW graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    /// Description.
    pub header: IndexHeader,
    /// The vectors (unit length for cosine), row-major.
    pub vectors: Vec<f32>,
    /// The graph, for approximate search.
    pub graph: Option<Hnsw>,
}

impl Index {
    /// An index over `vectors`; with `hnsw`, a graph is built.
    pub fn build(mut vectors: Vec<f32>, dim: usize, distance: Distance, extractor: ExtractorInfo, items: Vec<IndexItem>, hnsw: Option<HnswParams>) -> Self {
        if distance == Distance::Cosine {
            crate::pca::l2_normalise_rows(&mut vectors, dim);
        }
        let n = vectors.len() / dim;
        assert_eq!(items.len(), n, "one item per vector");
        let graph = hnsw.map(|p| Hnsw::build(vectors.clone(), dim, distance, p));
        Index { header: IndexHeader { dim, n, distance, extractor, items, hnsw }, vectors, graph }
    }

    /// The `k` nearest items of `query`: exact search, or the graph when there is one.
    /// An error unless `dim` (what the query side's extractor produces) is the index's own.
    pub fn check_query_dim(&self, dim: usize) -> Result<(), String> {
        if dim != self.header.dim {
            let e = &self.header.extractor;
            return Err(format!(
                "the index holds {}-d vectors, but {} with {} at {} px gives {dim}-d ones; the index was built by another extractor",
                self.header.dim, e.backbone, e.aggregator, e.resolution
            ));
        }
        Ok(())
    }

    /// The `k` nearest items of `query`, or an error when its length is not the index's `dim`.
    pub fn try_search(&self, query: &[f32], k: usize) -> Result<Vec<(usize, f32)>, String> {
        self.check_query_dim(query.len())?;
        Ok(self.search(query, k))
    }

    /// The `k` nearest items of `query` (of length `dim`; see [`Index::try_search`]).
    pub fn search(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        match &self.graph {
            Some(g) => g.search(query, k),
            None => exact_knn(query, &self.vectors, self.header.dim, k.min(self.header.n), self.header.distance, false).into_iter().next().unwrap_or_default(),
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("the header serialises");
        let mut out = Vec::with_capacity(64 + header.len() + self.vectors.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for v in &self.vectors {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let graph = self.graph.as_ref().map(Hnsw::graph_bytes).unwrap_or_default();
        out.extend_from_slice(&(graph.len() as u64).to_le_bytes());
        out.extend_from_slice(&graph);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Writes the index atomically.
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        fgia_core::record::write_atomic(path, &self.to_bytes()).map_err(|e| IndexError::Invalid { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Reads and validates an index file.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let bytes = std::fs::read(path).map_err(|e| IndexError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_bytes(&bytes).map_err(|message| IndexError::Invalid { path: path.to_path_buf(), message })
    }

    /// Parses [`Index::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err("not an fgia index file (bad magic bytes)".into());
        }
        if bytes.len() < 8 + 4 + 8 + 8 + 32 {
            return Err(format!("truncated: {} bytes is shorter than an empty index", bytes.len()));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err("checksum mismatch: the file is truncated or corrupted".into());
        }
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(format!("index format {version}; this build reads format {VERSION}"));
        }
        let mut pos = 12usize;
        let mut take = |len: usize| -> Result<&[u8], String> {
            let s = body.get(pos..pos.checked_add(len).ok_or("length overflow")?).ok_or_else(|| format!("truncated at byte {pos} (wanted {len} more)"))?;
            pos += len;
            Ok(s)
        };
        let hlen = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let header: IndexHeader = serde_json::from_slice(take(hlen)?).map_err(|e| format!("header: {e}"))?;
        if header.dim == 0 || header.items.len() != header.n {
            return Err(format!("header: dim {} with {} items for {} vectors", header.dim, header.items.len(), header.n));
        }
        let r = header.extractor.resolution;
        if !(16..=MAX_RESOLUTION).contains(&r) {
            return Err(format!("header: resolution {r} is outside 16..={MAX_RESOLUTION}"));
        }
        if let Some(p) = &header.hnsw
            && !((2..=MAX_HNSW_M).contains(&p.m) && (1..=MAX_HNSW_EF).contains(&p.ef_construction) && (1..=MAX_HNSW_EF).contains(&p.ef_search))
        {
            return Err(format!(
                "header: HNSW m {}, ef_construction {}, ef_search {} outside 2..={MAX_HNSW_M} and 1..={MAX_HNSW_EF}",
                p.m, p.ef_construction, p.ef_search
            ));
        }
        let nfloats = header.n.checked_mul(header.dim).ok_or("header: n * dim overflows")?;
        let raw = take(nfloats.checked_mul(4).ok_or("header: size overflows")?)?;
        let vectors: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if vectors.iter().any(|v| !v.is_finite()) {
            return Err("a stored vector has a non-finite value".into());
        }
        let glen = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let graph_bytes = take(glen)?;
        let graph = match (header.hnsw, glen) {
            (None, 0) => None,
            (Some(p), _) => Some(Hnsw::from_parts(vectors.clone(), header.dim, header.distance, p, graph_bytes).map_err(|e| format!("graph: {e}"))?),
            (None, _) => return Err("graph present but no HNSW parameters in the header".into()),
        };
        if pos != body.len() {
            return Err(format!("{} unexpected bytes before the checksum", body.len() - pos));
        }
        Ok(Index { header, vectors, graph })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, dim: usize, hnsw: bool) -> Index {
        let mut g = fgia_core::rng::SplitMix64::new(4);
        let v: Vec<f32> = (0..n * dim).map(|_| g.next_f64() as f32 - 0.5).collect();
        let items = (0..n).map(|i| IndexItem { path: format!("img/{i}.jpg"), label: Some(format!("c{}", i % 3)) }).collect();
        let ex = ExtractorInfo { backbone: "resnet50".into(), resolution: 224, aggregator: "scda".into() };
        Index::build(v, dim, Distance::Cosine, ex, items, hnsw.then(HnswParams::default))
    }

    #[test]
    fn saved_index_reopens_with_identical_results() {
        let dir = tempfile::tempdir().expect("tempdir");
        for hnsw in [false, true] {
            let idx = sample(2000, 16, hnsw);
            let path = dir.path().join(format!("i{hnsw}.fgiaidx"));
            idx.save(&path).expect("save");
            let back = Index::open(&path).expect("open");
            assert_eq!(back, idx);
            for q in 0..20 {
                let query = &idx.vectors[q * 16..(q + 1) * 16];
                assert_eq!(back.search(query, 5), idx.search(query, 5));
                assert_eq!(idx.search(query, 1)[0].0, q, "an indexed vector finds itself");
            }
        }
    }

    #[test]
    fn corrupt_and_truncated_files_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let idx = sample(300, 8, true);
        let bytes = idx.to_bytes();
        let path = dir.path().join("bad.fgiaidx");
        for (what, data) in [
            ("truncated", bytes[..bytes.len() / 2].to_vec()),
            ("flipped byte", {
                let mut b = bytes.clone();
                b[100] ^= 0x40;
                b
            }),
            ("empty", Vec::new()),
            ("other file", b"PK\x03\x04 not an index".to_vec()),
        ] {
            std::fs::write(&path, &data).expect("write");
            let err = Index::open(&path).expect_err(what).to_string();
            assert!(err.contains("bad.fgiaidx"), "{what}: error names the file: {err}");
        }
        // A well-formed checksum over a hostile graph is still rejected by validation.
        let mut body = bytes[..bytes.len() - 32].to_vec();
        let n = body.len();
        body[n - 1] = 0xff;
        let d = Sha256::digest(&body);
        body.extend_from_slice(&d);
        assert!(Index::from_bytes(&body).expect_err("hostile graph").contains("graph"));
    }

    #[test]
    fn a_hostile_header_with_a_valid_checksum_is_refused() {
        let base = sample(50, 8, true);
        let mut cases: Vec<(&str, Index, &str)> = Vec::new();
        let mut r = base.clone();
        r.header.extractor.resolution = 600_000_000;
        cases.push(("resolution", r, "resolution 600000000"));
        let mut m = base.clone();
        if let Some(p) = m.header.hnsw.as_mut() {
            p.m = usize::MAX / 2;
        }
        cases.push(("hnsw m", m, "HNSW m"));
        let mut ef = base.clone();
        if let Some(p) = ef.header.hnsw.as_mut() {
            p.ef_search = usize::MAX;
        }
        cases.push(("ef_search", ef, "ef_search"));
        for (what, idx, expect) in cases {
            // `to_bytes` writes a correct SHA-256 over the hostile header.
            let e = Index::from_bytes(&idx.to_bytes()).expect_err(what);
            assert!(e.contains(expect), "{what}: {e}");
        }
        // A query of another length is an error naming both dimensions, not an assert.
        let e = base.try_search(&[0.0; 512], 5).expect_err("dim");
        assert!(e.contains("8-d") && e.contains("512-d"), "{e}");
        assert_eq!(base.try_search(&base.vectors[..8], 1).expect("same dim")[0].0, 0);
    }

    #[test]
    fn a_query_page_never_reads_a_device_as_a_thumbnail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let items = [IndexItem { path: "/dev/zero".into(), label: None }, IndexItem { path: dir.path().join("absent.jpg").display().to_string(), label: None }];
        let shown: Vec<(&IndexItem, f32)> = items.iter().map(|i| (i, 0.5)).collect();
        let page = dir.path().join("q.html");
        crate::report_html::write_query_page(&page, Path::new("/dev/zero"), &shown, Path::new("g.fgiaidx"), "Query", "distances").expect("page");
        let html = std::fs::read_to_string(&page).expect("read");
        assert_eq!(html.matches("unreadable").count(), 3, "{html}");
        assert!(html.contains("not a regular file"));
    }

    /// Mutates the body of exact and HNSW indexes and appends a correct checksum, so that the
    /// mutations reach the header and graph parsers rather than stopping at the digest.
    #[test]
    fn fuzz_the_index_reader_behind_a_valid_checksum() {
        let seeds: Vec<Vec<u8>> = [false, true]
            .into_iter()
            .map(|hnsw| {
                let b = sample(40, 4, hnsw).to_bytes();
                b[..b.len() - 32].to_vec()
            })
            .collect();
        let crashes = fgia_core::fuzz::crash_dir(env!("CARGO_MANIFEST_DIR"));
        let r = fgia_core::fuzz::run("index", &seeds, fgia_core::fuzz::budget(20_000), 31, false, &crashes, |body| {
            let mut b = body.to_vec();
            b.extend_from_slice(&Sha256::digest(body));
            Index::from_bytes(&b).map(|idx| {
                // An accepted index must also answer queries.
                let q = vec![0.5f32; idx.header.dim];
                let _ = idx.try_search(&q, 3);
            })
        });
        assert!(r.panics.is_empty(), "{} panics, first {:?}", r.panics.len(), r.panics.first());
        assert!(r.accepted > 0, "{r:?}");
    }
}
