//! The result record of one run: what was measured, under which protocol, on what, by which
//! code. Reports are built from these files only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Version of the record layout; bump on incompatible changes.
pub const RECORD_SCHEMA: u32 = 1;

/// Which part of the backbone was trained, and whether its maps came from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureMode {
    /// The backbone is frozen and its maps are cached: only the method's layers train.
    #[default]
    Frozen,
    /// The leading stages are frozen (their maps cached or run without a graph); the stages
    /// from [`Protocol::trained_from_stage`] on train live.
    Partial,
    /// Pixels through the whole network; every layer trains.
    EndToEnd,
    /// No training (an unsupervised descriptor of pretrained features).
    Untrained,
}

impl FeatureMode {
    /// The name used in recipes and records.
    pub fn name(self) -> &'static str {
        match self {
            FeatureMode::Frozen => "frozen",
            FeatureMode::Partial => "partial",
            FeatureMode::EndToEnd => "end-to-end",
            FeatureMode::Untrained => "untrained",
        }
    }
}

/// How a number was obtained: everything a reader needs to judge whether it is comparable.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Protocol {
    /// Which split was trained and tested on, and where it comes from.
    pub split: String,
    /// Training images: resize/crop/flip/normalisation, in words.
    pub train_transform: String,
    /// Test images: resize/crop/normalisation, in words.
    pub eval_transform: String,
    /// Test-time augmentation (`none`, `flip`).
    pub tta: String,
    /// Which checkpoint gave the number (`last epoch` unless a held-out validation split exists).
    pub checkpoint: String,
    /// Seeds of this configuration (this record holds one of them).
    pub seeds: Vec<u64>,
    /// Training epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Optimiser and schedule, in words.
    pub optimizer: String,
    /// Which layers were trained.
    pub trained_layers: String,
    /// Frozen, partial or end-to-end training of the backbone.
    #[serde(default)]
    pub mode: FeatureMode,
    /// With [`FeatureMode::Partial`]: the first trained backbone stage.
    #[serde(default)]
    pub trained_from_stage: Option<usize>,
    /// The loss, where a table compares losses (Table 6: the triplet loss or HOLEF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
    /// Data parallelism over several devices: replicas, how batches and gradients are split and
    /// combined, and whether batch-norm statistics are per replica or synchronised. `None`: one
    /// device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<String>,
}

/// One operator on a device against the CPU (`fgia check-device`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAgreement {
    /// Backbone or operator name.
    pub name: String,
    /// `backbone trunk (training mode)` or `pooling`.
    pub kind: String,
    /// Input shape.
    pub shape: Vec<usize>,
    /// `max |device - cpu| / max |cpu|` of the output.
    pub forward_rel: f64,
    /// The same for the gradient with respect to the input.
    pub backward_rel: f64,
    /// The accepted largest relative difference.
    pub tolerance: f64,
    /// Both within the tolerance.
    pub pass: bool,
}

/// One timed training step (`fgia check-device`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    /// Backbone.
    pub backbone: String,
    /// Input side, pixels.
    pub side: usize,
    /// Batch.
    pub batch: usize,
    /// Median milliseconds per step (forward, loss, backward, SGD update).
    pub median_ms: f64,
    /// Images per second at the median.
    pub images_per_s: f64,
    /// Timed steps (after two warm-up steps).
    pub steps: usize,
}

/// What `fgia check-device` measured on one machine; `results/environment/*.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentReport {
    /// The checked device, in words.
    pub device: String,
    /// What it was compared with.
    pub reference: String,
    /// burn version.
    pub burn_version: String,
    /// Code revision.
    pub git_revision: String,
    /// When (UTC, RFC 3339).
    pub created_utc: String,
    /// Small shapes (a test of the check itself), not the real sizes.
    pub quick: bool,
    /// Forward and backward agreement per backbone and pooling operator.
    pub checks: Vec<DeviceAgreement>,
    /// Training-step times per backbone and side.
    pub timings: Vec<StepTiming>,
}

/// One measured result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// Layout version ([`RECORD_SCHEMA`]).
    pub schema: u32,
    /// The survey table this reproduces (`table4`, `table2`, ...).
    pub table: String,
    /// Method name as in the survey.
    pub method: String,
    /// Dataset name as in the survey (`CUB-200-2011`).
    pub dataset: String,
    /// The data actually used (`CUB-200-2011 full`, `cub-mini: 40 classes`).
    pub data: String,
    /// Backbone name.
    pub backbone: String,
    /// Input side in pixels.
    pub resolution: u32,
    /// The paper's input side this run stands in for (a smoke run at 112 px for the paper's
    /// 224 px), when it differs.
    #[serde(default)]
    pub paper_resolution: Option<u32>,
    /// The backbone of the paper's setting this run stands in for (`vgg16`), when known.
    #[serde(default)]
    pub paper_backbone: Option<String>,
    /// The survey section of the method (`5.2.1`), when the table groups by section.
    #[serde(default)]
    pub section: Option<String>,
    /// The protocol.
    pub protocol: Protocol,
    /// Seed of this run.
    pub seed: u64,
    /// Metric name to value (percent for accuracies).
    pub metrics: BTreeMap<String, f64>,
    /// Every way this run departs from the paper's protocol.
    pub deviations: Vec<String>,
    /// `git describe --always --dirty` of the code, or `unknown`.
    pub git_revision: String,
    /// burn version the run was built with.
    pub burn_version: String,
    /// Device, in words.
    pub device: String,
    /// Wall time of training and evaluation, seconds.
    pub wall_time_s: f64,
    /// When the record was written (UTC, RFC 3339).
    pub created_utc: String,
    /// Run folder, relative to the workspace root where possible.
    pub run_dir: String,
}

impl ResultRecord {
    /// Reads a record, rejecting unknown schema versions.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let r: ResultRecord = serde_json::from_str(&text).map_err(|e| DataError::format(path, e.to_string()))?;
        if r.schema != RECORD_SCHEMA {
            return Err(DataError::format(path, format!("record schema {} (this build reads {RECORD_SCHEMA})", r.schema)));
        }
        Ok(r)
    }

    /// Writes the record atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_json_atomic(path, self)
    }
}

/// Serde for `f64` that keeps NaN and ±inf: JSON has no such numbers, and `serde_json` writes
/// them as `null`, which then fails to read back as a number. Non-finite values are written as
/// the strings `"NaN"`, `"inf"` and `"-inf"`; reading also accepts `null` (as NaN), so lines
/// written before this rule still load.
pub mod nonfinite {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
        Null(()),
    }

    fn from_repr<E: serde::de::Error>(r: Repr) -> Result<f64, E> {
        match r {
            Repr::Number(v) => Ok(v),
            Repr::Null(()) => Ok(f64::NAN),
            Repr::Text(t) => match t.as_str() {
                "NaN" | "nan" => Ok(f64::NAN),
                "inf" | "Infinity" | "+inf" => Ok(f64::INFINITY),
                "-inf" | "-Infinity" => Ok(f64::NEG_INFINITY),
                other => Err(E::custom(format!("'{other}' is not a number"))),
            },
        }
    }

    /// Writes a number, or a string for NaN and ±inf.
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from_repr(Repr::deserialize(d)?)
    }

    /// The same for `Option<f64>` (`null` stays `None`).
    pub mod option {
        use super::*;

        /// Writes `null`, a number, or a string for NaN and ±inf.
        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads what [`serialize`] writes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            match Option::<Repr>::deserialize(d)? {
                None | Some(Repr::Null(())) => Ok(None),
                Some(r) => from_repr(r).map(Some),
            }
        }
    }
}

/// One line of `metrics.jsonl`. Non-finite values round-trip ([`nonfinite`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    #[serde(with = "nonfinite")]
    pub train_loss: f64,
    /// Training accuracy on the augmented batches, percent.
    #[serde(with = "nonfinite")]
    pub train_top1: f64,
    /// Learning rate of the pretrained layers at the end of the epoch.
    #[serde(with = "nonfinite")]
    pub lr: f64,
    /// Global gradient norm (before clipping), mean over the epoch.
    #[serde(with = "nonfinite")]
    pub grad_norm: f64,
    /// Test top-1 when evaluated this epoch (for the curves only).
    #[serde(with = "nonfinite::option", default)]
    pub test_top1: Option<f64>,
    /// Seconds spent in this epoch.
    #[serde(with = "nonfinite")]
    pub seconds: f64,
    /// Images skipped as undecodable in this epoch.
    pub skipped_images: usize,
}

/// Reads a run folder's `metrics.jsonl` (one [`EpochMetrics`] per line).
pub fn read_metrics(run_dir: &Path) -> Result<Vec<EpochMetrics>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| DataError::malformed(&path, i + 1, e.to_string())))
        .collect()
}

/// The infix of the temporary files of [`write_atomic`]: `.<name>.tmp-<random>`.
pub const TMP_INFIX: &str = ".tmp-";

/// Writes `bytes` to `path` atomically: a temporary file with a unique name in the same folder,
/// synced to disk, renamed over the target, and the folder synced. A crash leaves either the old
/// file or the new one, never a torn one; a temporary file left by a kill is removed when its
/// run folder is next claimed ([`crate::runlock`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path.file_name().ok_or_else(|| DataError::Invalid(format!("{} has no file name", path.display())))?;
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{}{TMP_INFIX}", name.to_string_lossy())).tempfile_in(dir).map_err(|e| DataError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| DataError::io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| DataError::io(tmp.path(), e))?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path).map_err(|e| DataError::io(path, e.error))?;
    sync_dir(dir)
}

/// Syncs a folder, so that a rename inside it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| DataError::io(dir, e))
}

/// Serialises `value` as pretty JSON and writes it with [`write_atomic`].
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| DataError::format(path, e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// The current time as RFC 3339 UTC, without a date library.
pub fn now_utc_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ResultRecord {
        ResultRecord {
            schema: RECORD_SCHEMA,
            table: "table4".into(),
            method: "ResNet-50 baseline".into(),
            dataset: "CUB-200-2011".into(),
            data: "cub-mini".into(),
            backbone: "efficientnet-lite0".into(),
            resolution: 112,
            paper_resolution: Some(224),
            paper_backbone: Some("resnet50".into()),
            section: None,
            protocol: Protocol {
                split: "official".into(),
                train_transform: "resize 128, random crop 112, flip".into(),
                eval_transform: "resize 128, centre crop 112".into(),
                tta: "none".into(),
                checkpoint: "last epoch".into(),
                seeds: vec![0],
                epochs: 2,
                batch_size: 16,
                optimizer: "sgd".into(),
                trained_layers: "all".into(),
                mode: FeatureMode::EndToEnd,
                trained_from_stage: None,
                loss: None,
                data_parallel: None,
            },
            seed: 0,
            metrics: [("top1".to_string(), 50.0)].into_iter().collect(),
            deviations: vec!["smaller resolution".into()],
            git_revision: "abc".into(),
            burn_version: "0.21.0".into(),
            device: "cpu".into(),
            wall_time_s: 1.5,
            created_utc: now_utc_rfc3339(),
            run_dir: "runs/x".into(),
        }
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("sub").join("r.json");
        let r = sample();
        r.write(&p).expect("write");
        assert_eq!(ResultRecord::read(&p).expect("read"), r);
        let mut r2 = r.clone();
        r2.seed = 9;
        r2.write(&p).expect("overwrite");
        assert_eq!(ResultRecord::read(&p).expect("read").seed, 9);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("parent")).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn wrong_schema_and_garbage_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.json");
        let mut v = serde_json::to_value(sample()).expect("json");
        v["schema"] = 99.into();
        std::fs::write(&p, v.to_string()).expect("write");
        assert!(ResultRecord::read(&p).expect_err("schema").to_string().contains("schema 99"));
        std::fs::write(&p, "{ not json").expect("write");
        assert!(ResultRecord::read(&p).expect_err("garbage").to_string().contains("r.json"));
    }

    #[test]
    fn rfc3339_has_the_right_shape() {
        let s = now_utc_rfc3339();
        assert_eq!(s.len(), 20);
        assert!(s.starts_with("20") && s.ends_with('Z'));
    }

    #[test]
    fn non_finite_metrics_round_trip_through_metrics_jsonl() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = [
            EpochMetrics {
                epoch: 1,
                train_loss: f64::NAN,
                train_top1: 1.0,
                lr: 0.1,
                grad_norm: f64::INFINITY,
                test_top1: Some(f64::NEG_INFINITY),
                seconds: 2.0,
                skipped_images: 0,
            },
            EpochMetrics { epoch: 2, train_loss: 0.5, train_top1: 2.0, lr: 0.1, grad_norm: 3.0, test_top1: None, seconds: 2.0, skipped_images: 1 },
        ];
        let text: String = lines.iter().map(|m| format!("{}\n", serde_json::to_string(m).expect("serialise"))).collect();
        assert!(text.contains("\"NaN\"") && text.contains("\"inf\"") && text.contains("\"-inf\""), "{text}");
        std::fs::write(dir.path().join("metrics.jsonl"), &text).expect("write");
        let back = read_metrics(dir.path()).expect("reads back");
        assert!(back[0].train_loss.is_nan());
        assert_eq!((back[0].grad_norm, back[0].test_top1), (f64::INFINITY, Some(f64::NEG_INFINITY)));
        assert_eq!(back[1], lines[1]);
        // A line written as serde_json does by default (`null`) still reads.
        let old = r#"{"epoch":3,"train_loss":null,"train_top1":1.0,"lr":0.1,"grad_norm":null,"test_top1":null,"seconds":1.0,"skipped_images":0}"#;
        let m: EpochMetrics = serde_json::from_str(old).expect("null reads as NaN");
        assert!(m.train_loss.is_nan() && m.test_top1.is_none());
        assert!(serde_json::from_str::<EpochMetrics>(&old.replace("null,\"train_top1", "\"many\",\"train_top1")).is_err());
    }
}
