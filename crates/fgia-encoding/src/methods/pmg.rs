//! PMG: progressive multi-granularity training with jigsaw patches.
//!
//! Du, Chang, Bhunia, Xie, Ma, Song and Guo, "Fine-Grained Visual Classification via
//! Progressive Multi-Granularity Training of Jigsaw Patches", ECCV 2020, §3.
//! - Three classifiers read the last three stages of the backbone, each through a convolution
//!   block (1x1 then 3x3 convolution, batch norm, ReLU) and global max pooling, and a fourth
//!   reads their concatenation (§3.1).
//! - Each batch is trained in four steps (§3.2): stage `l` (l = 1, 2, 3) is trained on the
//!   image cut into `n x n` jigsaw patches shuffled at random, `n = 8, 4, 2` (granularity from
//!   fine to coarse), and the concatenated classifier on the original image, its loss doubled
//!   as in the authors' code; every step is a separate optimiser step.
//! - At test time the four classifiers' scores are summed.
//!
//! Deviations: the classifiers are `Linear → ELU → Linear` (the batch norms of the authors'
//! classifier omitted); the block width is a recipe parameter (the paper: 512 then 1024; the
//! smoke recipes 256); the first two stages' maps come from the frozen backbone and only the
//! last stage is fine-tuned; each cached view of a training image has one fixed jigsaw per
//! granularity, drawn from `(seed, image, view)`.
//!
//! Recipe: `recipes/table2/pmg.toml` (`cargo xtask reproduce table2 --smoke --methods pmg`).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use fgia_core::rng::SplitMix64;
use fgia_nn::Network;

use super::{Head, Inputs, LastStage, StepOutput, cross_entropy, elu, gmp, permute_regions};

/// Jigsaw granularities of the three stages.
pub const GRANULARITIES: [usize; 3] = [8, 4, 2];

/// Cuts an image `[3, s, s]` into `n x n` patches of `⌊s/n⌋` pixels and shuffles them.
pub fn jigsaw(pixels: &mut [f32], s: usize, n: usize, rng: &mut SplitMix64) {
    let mut perm: Vec<usize> = (0..n * n).collect();
    rng.shuffle(&mut perm);
    permute_regions(pixels, s, n, &perm);
}

/// The generator of image `index`'s jigsaw at granularity `n` in view `view`.
pub fn jigsaw_rng(seed: u64, n: usize, index: usize, view: u64) -> SplitMix64 {
    SplitMix64::for_item(seed ^ 0x9a95_0000 ^ n as u64, view, index as u64)
}

/// 1x1 and 3x3 convolutions, each with batch norm and ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    conv1: Conv2d<B>,
    bn1: BatchNorm<B>,
    conv2: Conv2d<B>,
    bn2: BatchNorm<B>,
}

impl<B: Backend> ConvBlock<B> {
    fn new(input: usize, width: usize, device: &B::Device) -> Self {
        ConvBlock {
            conv1: Conv2dConfig::new([input, width], [1, 1]).init(device),
            bn1: BatchNormConfig::new(width).init(device),
            conv2: Conv2dConfig::new([width, width], [3, 3]).with_padding(PaddingConfig2d::Same).init(device),
            bn2: BatchNormConfig::new(width).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        gmp(relu(self.bn2.forward(self.conv2.forward(relu(self.bn1.forward(self.conv1.forward(x)))))))
    }
}

/// `Linear → ELU → Linear`.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    fn new(input: usize, hidden: usize, classes: usize, device: &B::Device) -> Self {
        Classifier { fc1: LinearConfig::new(input, hidden).init(device), fc2: LinearConfig::new(hidden, classes).init(device) }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(elu(self.fc1.forward(x)))
    }
}

/// The three stage classifiers, the concatenated one, and the fine-tuned last stage.
#[derive(Module, Debug)]
pub struct PmgHead<B: Backend> {
    /// The backbone's last stage (stage `f`).
    pub last: LastStage<B>,
    /// Blocks on stages `f − 2`, `f − 1`, `f`.
    pub blocks: Vec<ConvBlock<B>>,
    /// Their classifiers.
    pub classifiers: Vec<Classifier<B>>,
    /// The classifier of the concatenation.
    pub concat: Classifier<B>,
}

impl<B: Backend> PmgHead<B> {
    /// On stages `f − 2 .. f` of `net` with `channels` channels each, block width `width`.
    pub fn new(net: Network<B>, stage: usize, channels: [usize; 3], width: usize, classes: usize, device: &B::Device) -> Self {
        PmgHead {
            last: LastStage { net, stage },
            blocks: channels.iter().map(|&c| ConvBlock::new(c, width, device)).collect(),
            classifiers: (0..3).map(|_| Classifier::new(width, width, classes, device)).collect(),
            concat: Classifier::new(3 * width, width, classes, device),
        }
    }

    /// Stage maps `f − 2`, `f − 1`, `f` of edited view `e` (`None`: the original).
    fn stage_map(&self, x: &Inputs<B>, level: usize, edited: Option<usize>) -> Tensor<B, 4> {
        let f = self.last.stage;
        let tap = |s: usize| match edited {
            Some(e) => x.edited_tap(e, s),
            None => x.tap(s),
        };
        match level {
            0 => tap(f - 2),
            1 => tap(f - 1),
            _ => self.last.forward(tap(f - 1)),
        }
    }

    fn all(&self, x: &Inputs<B>) -> (Vec<Tensor<B, 2>>, Tensor<B, 2>) {
        let v: Vec<Tensor<B, 2>> = (0..3).map(|l| self.blocks[l].forward(self.stage_map(x, l, None))).collect();
        let per: Vec<Tensor<B, 2>> = (0..3).map(|l| self.classifiers[l].forward(v[l].clone())).collect();
        (per, self.concat.forward(Tensor::cat(v, 1)))
    }
}

impl<B: Backend> Head<B> for PmgHead<B> {
    fn steps(&self) -> usize {
        4
    }

    fn loss(&self, x: &Inputs<B>, step: usize) -> StepOutput<B> {
        if step < 3 {
            let logits = self.classifiers[step].forward(self.blocks[step].forward(self.stage_map(x, step, Some(step))));
            StepOutput { loss: cross_entropy(logits.clone(), &x.labels), logits }
        } else {
            let (_, concat) = self.all(x);
            StepOutput { loss: cross_entropy(concat.clone(), &x.labels) * 2.0, logits: concat }
        }
    }

    fn logits(&self, x: &Inputs<B>) -> Tensor<B, 2> {
        let (per, concat) = self.all(x);
        per.into_iter().fold(concat, |a, b| a + b)
    }

    fn backbone(&self) -> Option<&Network<B>> {
        Some(&self.last.net)
    }
}
