//! Localization-classification networks: §5.1 of Wei et al. and its rows of Table 2.
//!
//! One file per method, headed by its paper, its equations and its deviations:
//!
//! - §5.1.1, detection with annotations: [`part_rcnn`] (Part-based R-CNN, Zhang et al. 2014);
//! - §5.1.2, deep filters: [`dfl`] (DFL-CNN, Wang et al. 2018), [`s3n`] (S3N, Ding et al. 2019);
//! - §5.1.3, attention: [`ra_cnn`] (RA-CNN, Fu et al. 2017), [`ma_cnn`] (MA-CNN, Zheng et al.
//!   2017), [`osme_mamc`] (OSME + MAMC, Sun et al. 2018), [`tasn`] (TASN, Zheng et al. 2019);
//! - §5.1.4, other localization: [`stn`] (STN, Jaderberg et al. 2015), [`nts_net`] (NTS-Net,
//!   Yang et al. 2018);
//! - beyond the survey's table: [`ws_dan`] (WS-DAN, Hu et al. 2019) and [`cal`] (CAL, Rao et
//!   al. 2021), which the report marks "not in the survey".
//!
//! [`geometry`] holds what they share: boxes, NMS, NTS-Net's anchors, affine grids and
//! RoI-align on `grid_sample`, RA-CNN's boxcar mask, TASN's inverse-CDF sampler, S3N's
//! saliency sampler and Part-based R-CNN's head and body boxes. [`run`] runs a recipe in cached
//! rounds on the frozen trunk (the localizer on cached maps, then crops resampled on pixels and
//! run through the backbone, then the classifiers); [`live`] trains end to end (`mode =
//! "end-to-end"`, the `--full` profile), with the crops resampled from the pixels inside the step
//! and run through the backbone it trains (RA-CNN, STN; DFL-CNN and OSME + MAMC on the live map);
//! [`looks`] draws what each method looked at.
//!
//! The crate depends on `fgia-core`, `fgia-nn` and `fgia-train` only.

use burn::tensor::backend::AutodiffBackend;
use fgia_core::datasets::Dataset;
use fgia_train::TrainError;
use serde::{Deserialize, Serialize};

pub mod cal;
pub mod dfl;
pub mod geometry;
pub mod live;
pub mod looks;
pub mod ma_cnn;
pub mod nn;
pub mod nts_net;
pub mod osme_mamc;
pub mod part_rcnn;
pub mod ra_cnn;
pub mod recipe;
pub mod run;
pub mod s3n;
pub mod stn;
pub mod tasn;
pub mod ws_dan;

/// The methods a §5.1 recipe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Part-based R-CNN: box, head and body regions from the annotations.
    PartRcnn,
    /// DFL-CNN: the discriminative filter bank.
    DflCnn,
    /// S3N: selective sparse sampling.
    S3n,
    /// RA-CNN: recurrent attention over scales.
    RaCnn,
    /// MA-CNN: multi-attention by channel grouping.
    MaCnn,
    /// OSME + MAMC: one-squeeze multi-excitation with the multi-attention multi-class loss.
    OsmeMamc,
    /// TASN: trilinear attention sampling.
    Tasn,
    /// STN: spatial transformers.
    Stn,
    /// NTS-Net: navigator, teacher and scrutinizer.
    NtsNet,
    /// WS-DAN: weakly supervised data augmentation (not in the survey).
    WsDan,
    /// CAL: counterfactual attention learning on WS-DAN (not in the survey).
    Cal,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 11] = [
        Method::PartRcnn,
        Method::DflCnn,
        Method::S3n,
        Method::RaCnn,
        Method::MaCnn,
        Method::OsmeMamc,
        Method::Tasn,
        Method::Stn,
        Method::NtsNet,
        Method::WsDan,
        Method::Cal,
    ];

    /// The recipe name.
    pub fn key(self) -> &'static str {
        match self {
            Method::PartRcnn => "part-rcnn",
            Method::DflCnn => "dfl-cnn",
            Method::S3n => "s3n",
            Method::RaCnn => "ra-cnn",
            Method::MaCnn => "ma-cnn",
            Method::OsmeMamc => "osme-mamc",
            Method::Tasn => "tasn",
            Method::Stn => "stn",
            Method::NtsNet => "nts-net",
            Method::WsDan => "ws-dan",
            Method::Cal => "cal",
        }
    }

    /// The method's file, relative to the workspace.
    pub fn file(self) -> &'static str {
        match self {
            Method::PartRcnn => "crates/fgia-localization/src/part_rcnn.rs",
            Method::DflCnn => "crates/fgia-localization/src/dfl.rs",
            Method::S3n => "crates/fgia-localization/src/s3n.rs",
            Method::RaCnn => "crates/fgia-localization/src/ra_cnn.rs",
            Method::MaCnn => "crates/fgia-localization/src/ma_cnn.rs",
            Method::OsmeMamc => "crates/fgia-localization/src/osme_mamc.rs",
            Method::Tasn => "crates/fgia-localization/src/tasn.rs",
            Method::Stn => "crates/fgia-localization/src/stn.rs",
            Method::NtsNet => "crates/fgia-localization/src/nts_net.rs",
            Method::WsDan => "crates/fgia-localization/src/ws_dan.rs",
            Method::Cal => "crates/fgia-localization/src/cal.rs",
        }
    }

    /// The survey section (WS-DAN and CAL, not in the survey, sit with the attention methods).
    pub fn section(self) -> &'static str {
        match self {
            Method::PartRcnn => "5.1.1",
            Method::DflCnn | Method::S3n => "5.1.2",
            Method::RaCnn | Method::MaCnn | Method::OsmeMamc | Method::Tasn | Method::WsDan | Method::Cal => "5.1.3",
            Method::Stn | Method::NtsNet => "5.1.4",
        }
    }

    /// Whether the survey's table lists the method.
    pub fn in_survey(self) -> bool {
        match self {
            Method::WsDan | Method::Cal => false,
            Method::PartRcnn
            | Method::DflCnn
            | Method::S3n
            | Method::RaCnn
            | Method::MaCnn
            | Method::OsmeMamc
            | Method::Tasn
            | Method::Stn
            | Method::NtsNet => true,
        }
    }

    /// Whether the method needs object boxes and part locations.
    pub fn needs_parts(self) -> bool {
        match self {
            Method::PartRcnn => true,
            Method::DflCnn
            | Method::S3n
            | Method::RaCnn
            | Method::MaCnn
            | Method::OsmeMamc
            | Method::Tasn
            | Method::Stn
            | Method::NtsNet
            | Method::WsDan
            | Method::Cal => false,
        }
    }

    /// Checks the method's `[method.params]` against its typed config.
    pub fn check_params(self, p: &toml::Table) -> Result<(), String> {
        match self {
            Method::PartRcnn => part_rcnn::PartRcnnConfig::from_params(p).map(drop),
            Method::DflCnn => dfl::DflConfig::from_params(p).map(drop),
            Method::S3n => s3n::S3nConfig::from_params(p).map(drop),
            Method::RaCnn => ra_cnn::RaCnnConfig::from_params(p).map(drop),
            Method::MaCnn => ma_cnn::MaCnnConfig::from_params(p).map(drop),
            Method::OsmeMamc => osme_mamc::OsmeMamcConfig::from_params(p).map(drop),
            Method::Tasn => tasn::TasnConfig::from_params(p).map(drop),
            Method::Stn => stn::StnConfig::from_params(p).map(drop),
            Method::NtsNet => nts_net::NtsConfig::from_params(p).map(drop),
            Method::WsDan | Method::Cal => ws_dan::WsDanConfig::from_params(p).map(drop),
        }
    }

    /// Checks that the dataset has what the method needs: an error names the first image
    /// without it.
    pub fn check_data(self, ds: &Dataset) -> Result<(), String> {
        if !self.needs_parts() {
            return Ok(());
        }
        for rec in ds.train.iter().chain(&ds.test) {
            if rec.bbox.is_none() {
                return Err(format!("{} needs an object box for every image; {} (id {}) has none", self.key(), rec.path.display(), rec.id));
            }
            if rec.parts.is_empty() {
                return Err(format!("{} needs part locations for every image; {} (id {}) has none", self.key(), rec.path.display(), rec.id));
            }
        }
        Ok(())
    }

    /// The deviations every run of the method has (its file's header says why).
    pub fn deviations(self) -> &'static [&'static str] {
        match self {
            Method::PartRcnn => part_rcnn::DEVIATIONS,
            Method::DflCnn => dfl::DEVIATIONS,
            Method::S3n => s3n::DEVIATIONS,
            Method::RaCnn => ra_cnn::DEVIATIONS,
            Method::MaCnn => ma_cnn::DEVIATIONS,
            Method::OsmeMamc => osme_mamc::DEVIATIONS,
            Method::Tasn => tasn::DEVIATIONS,
            Method::Stn => stn::DEVIATIONS,
            Method::NtsNet => nts_net::DEVIATIONS,
            Method::WsDan => ws_dan::DEVIATIONS,
            Method::Cal => cal::DEVIATIONS,
        }
    }

    /// Trains and evaluates the method end to end; `None` when the run stopped early.
    pub fn run_live<B: AutodiffBackend>(self, stage: &live::LiveStage<'_, B>) -> Result<Option<run::Outcome>, TrainError> {
        match self {
            Method::DflCnn => dfl::run(stage),
            Method::OsmeMamc => osme_mamc::run(stage),
            Method::RaCnn => ra_cnn::run_live(stage),
            Method::Stn => stn::run_live(stage),
            Method::NtsNet => nts_net::run_live(stage),
            Method::WsDan => ws_dan::run_live(stage, false),
            Method::Cal => ws_dan::run_live(stage, true),
            Method::PartRcnn => part_rcnn::run_live(stage),
            Method::S3n => s3n::run_live(stage),
            Method::MaCnn => ma_cnn::run_live(stage),
            Method::Tasn => tasn::run_live(stage),
        }
    }

    /// The deviations every end-to-end run of the method has.
    pub fn live_deviations(self) -> &'static [&'static str] {
        match self {
            Method::DflCnn => dfl::LIVE_DEVIATIONS,
            Method::OsmeMamc => osme_mamc::LIVE_DEVIATIONS,
            Method::RaCnn => ra_cnn::LIVE_DEVIATIONS,
            Method::Stn => stn::LIVE_DEVIATIONS,
            Method::NtsNet => nts_net::LIVE_DEVIATIONS,
            Method::WsDan => ws_dan::LIVE_DEVIATIONS,
            Method::Cal => cal::LIVE_DEVIATIONS,
            Method::PartRcnn => part_rcnn::LIVE_DEVIATIONS,
            Method::S3n => s3n::LIVE_DEVIATIONS,
            Method::MaCnn => ma_cnn::LIVE_DEVIATIONS,
            Method::Tasn => tasn::LIVE_DEVIATIONS,
        }
    }

    /// Runs the method's rounds.
    pub fn run<B: AutodiffBackend>(self, stage: &run::Stage<'_, B>) -> Result<Option<run::Outcome>, TrainError> {
        match self {
            Method::PartRcnn => part_rcnn::run(stage),
            Method::DflCnn => dfl::run(stage),
            Method::S3n => s3n::run(stage),
            Method::RaCnn => ra_cnn::run(stage),
            Method::MaCnn => ma_cnn::run(stage),
            Method::OsmeMamc => osme_mamc::run(stage),
            Method::Tasn => tasn::run(stage),
            Method::Stn => stn::run(stage),
            Method::NtsNet => nts_net::run(stage),
            Method::WsDan => ws_dan::run(stage, false),
            Method::Cal => ws_dan::run(stage, true),
        }
    }
}
