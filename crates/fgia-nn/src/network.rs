//! The backbone registry: one enum of every supported network, with a uniform surface (spatial
//! features, a pooled embedding, a replaceable head, stage-wise forward for partial freezing).

use std::fmt;
use std::str::FromStr;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use fgia_core::imaging::Normalize;
use serde::{Deserialize, Serialize};

use crate::efficientnet::{EfficientNetLite, EfficientNetLiteConfig};
use crate::ops::global_avg_pool;
use crate::resnet::{ResNet, ResNetConfig};
use crate::vgg::{Vgg16, Vgg16Config};

/// The backbones of the survey's tables, plus the small network of the CPU smoke profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackboneKind {
    /// ResNet-18 (torchvision layout).
    #[serde(rename = "resnet18")]
    ResNet18,
    /// ResNet-50.
    #[serde(rename = "resnet50")]
    ResNet50,
    /// ResNet-101.
    #[serde(rename = "resnet101")]
    ResNet101,
    /// VGG-16 convolutions.
    #[serde(rename = "vgg16")]
    Vgg16,
    /// EfficientNet-Lite0.
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
}

impl BackboneKind {
    /// Every kind.
    pub const ALL: [BackboneKind; 5] =
        [BackboneKind::ResNet18, BackboneKind::ResNet50, BackboneKind::ResNet101, BackboneKind::Vgg16, BackboneKind::EfficientNetLite0];

    /// Command-line and recipe name.
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::ResNet18 => "resnet18",
            BackboneKind::ResNet50 => "resnet50",
            BackboneKind::ResNet101 => "resnet101",
            BackboneKind::Vgg16 => "vgg16",
            BackboneKind::EfficientNetLite0 => "efficientnet-lite0",
        }
    }

    /// Number of stages of [`Network::forward_stage`] for this kind.
    pub fn num_stages(self) -> usize {
        match self {
            BackboneKind::ResNet18 | BackboneKind::ResNet50 | BackboneKind::ResNet101 => crate::resnet::STAGES,
            BackboneKind::Vgg16 => crate::vgg::STAGES,
            BackboneKind::EfficientNetLite0 => crate::efficientnet::STAGES,
        }
    }

    /// Display name as in papers.
    pub fn display_name(self) -> &'static str {
        match self {
            BackboneKind::ResNet18 => "ResNet-18",
            BackboneKind::ResNet50 => "ResNet-50",
            BackboneKind::ResNet101 => "ResNet-101",
            BackboneKind::Vgg16 => "VGG-16",
            BackboneKind::EfficientNetLite0 => "EfficientNet-Lite0",
        }
    }

    /// The input normalisation the pretrained weights expect.
    pub fn normalize(self) -> Normalize {
        match self {
            BackboneKind::EfficientNetLite0 => Normalize::Symmetric127,
            _ => Normalize::Imagenet,
        }
    }

    /// Where pretrained ImageNet weights come from: a Hugging Face repository and file, or the
    /// name `cargo xtask weights fetch` knows.
    pub fn pretrained_source(self) -> PretrainedSource {
        match self {
            BackboneKind::ResNet18 => PretrainedSource::Hub { repo: "timm/resnet18.tv_in1k", file: "model.safetensors" },
            BackboneKind::ResNet50 => PretrainedSource::Hub { repo: "timm/resnet50.tv_in1k", file: "model.safetensors" },
            BackboneKind::ResNet101 => PretrainedSource::Hub { repo: "timm/resnet101.tv_in1k", file: "model.safetensors" },
            BackboneKind::Vgg16 => PretrainedSource::Hub { repo: "timm/vgg16.tv_in1k", file: "model.safetensors" },
            BackboneKind::EfficientNetLite0 => PretrainedSource::Cache { file: "efficientnet-lite0-57934424.pth" },
        }
    }
}

/// Where a backbone's pretrained weights are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainedSource {
    /// A file of a Hugging Face hub repository (resolved in the hub cache).
    Hub {
        /// Repository id.
        repo: &'static str,
        /// File name in the repository.
        file: &'static str,
    },
    /// A file in the toolkit's weights cache, put there by `cargo xtask weights fetch`.
    Cache {
        /// File name.
        file: &'static str,
    },
}

impl fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackboneKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackboneKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = BackboneKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown backbone '{s}' (known: {})", names.join(", "))
        })
    }
}

/// Configuration of a [`Network`].
#[derive(Config, Debug)]
pub struct NetworkConfig {
    /// Which backbone.
    pub kind: BackboneKind,
    /// Classes of the head.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Divides the widths (1 = the real network; larger values give tiny test networks with
    /// the same parameter names).
    #[config(default = 1)]
    pub width_div: usize,
}

impl NetworkConfig {
    /// Channels of the feature map and of the pooled embedding.
    pub fn feature_dim(&self) -> usize {
        match self.kind {
            BackboneKind::ResNet18 | BackboneKind::ResNet50 | BackboneKind::ResNet101 => self.resnet().feature_dim(),
            BackboneKind::Vgg16 => Vgg16Config::new().with_width_div(self.width_div).feature_dim(),
            BackboneKind::EfficientNetLite0 => EfficientNetLiteConfig::new().with_width_div(self.width_div).feature_dim(),
        }
    }

    fn resnet(&self) -> ResNetConfig {
        let depth = match self.kind {
            BackboneKind::ResNet18 => 18,
            BackboneKind::ResNet50 => 50,
            _ => 101,
        };
        ResNetConfig::new(depth).with_num_classes(self.num_classes).with_base_width(64 / self.width_div)
    }

    /// Builds the network with random weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Network<B> {
        match self.kind {
            BackboneKind::ResNet18 | BackboneKind::ResNet50 | BackboneKind::ResNet101 => Network::ResNet(self.resnet().init(device)),
            BackboneKind::Vgg16 => Network::Vgg16(Vgg16Config::new().with_num_classes(self.num_classes).with_width_div(self.width_div).init(device)),
            BackboneKind::EfficientNetLite0 => {
                Network::EfficientNetLite(EfficientNetLiteConfig::new().with_num_classes(self.num_classes).with_width_div(self.width_div).init(device))
            }
        }
    }
}

/// Any supported backbone with its classifier head.
///
/// The variants differ in size (a ResNet holds its blocks in vectors, VGG-16 its layers inline);
/// a network exists a few times per process, so they are not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network<B: Backend> {
    /// A ResNet.
    ResNet(ResNet<B>),
    /// VGG-16.
    Vgg16(Vgg16<B>),
    /// EfficientNet-Lite0.
    EfficientNetLite(EfficientNetLite<B>),
}

impl<B: Backend> Network<B> {
    /// Number of stages of [`Network::forward_stage`].
    pub fn num_stages(&self) -> usize {
        match self {
            Network::ResNet(_) => ResNet::<B>::STAGES,
            Network::Vgg16(_) => Vgg16::<B>::STAGES,
            Network::EfficientNetLite(_) => EfficientNetLite::<B>::STAGES,
        }
    }

    /// Runs stage `i`; running all stages in order gives [`Network::features`].
    pub fn forward_stage(&self, i: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Network::ResNet(n) => n.forward_stage(i, x),
            Network::Vgg16(n) => n.forward_stage(i, x),
            Network::EfficientNetLite(n) => n.forward_stage(i, x),
        }
    }

    /// SCDA+'s upper and lower layers (Wei et al. 2017, §4.3). VGG-16: `pool5` and `relu5_2`,
    /// as in the paper. Others: the last stage and the deepest stage at a larger resolution
    /// (ResNet: `layer4` and `layer3`; EfficientNet-Lite0: the 1280-channel head convolution
    /// and the 112-channel stage).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` to (`[B, C1, h, w]`, `[B, C2, h', w']`) with `h' > h`.
    pub fn scda_layers(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        if let Network::Vgg16(n) = self {
            return n.scda_layers(x);
        }
        let mut sizes = Vec::new();
        let mut outs = Vec::new();
        let mut h = x;
        for s in 0..self.num_stages() {
            h = self.forward_stage(s, h);
            sizes.push(h.dims()[2]);
            outs.push(h.clone());
        }
        let last = *sizes.last().expect("networks have stages");
        let lower = (0..sizes.len()).rev().find(|&s| sizes[s] > last).unwrap_or(0);
        (h, outs.swap_remove(lower))
    }

    /// Runs stages `from..` (the rest of the network after frozen stages).
    pub fn forward_stages_from(&self, from: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (from..self.num_stages()).fold(x, |x, i| self.forward_stage(i, x))
    }

    /// Spatial features of the last stage.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` to `[B, C, h, w]`.
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_stages_from(0, x)
    }

    /// The pooled embedding (global average of [`Network::features`]).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` to `[B, C]`.
    pub fn embed(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        global_avg_pool(self.features(x))
    }

    /// The head on pooled features (with the network's own dropout where it has one).
    ///
    /// # Shapes
    /// `[B, C]` to `[B, num_classes]`.
    pub fn head(&self, pooled: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Network::ResNet(n) => n.fc.forward(pooled),
            Network::Vgg16(n) => n.head.forward(pooled),
            Network::EfficientNetLite(n) => n.fc.forward(n.dropout.forward(pooled)),
        }
    }

    /// Logits from a feature map.
    ///
    /// # Shapes
    /// `[B, C, h, w]` to `[B, num_classes]`.
    pub fn head_from_features(&self, features: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head(global_avg_pool(features))
    }

    /// # Shapes
    /// `[B, 3, H, W]` to logits `[B, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head_from_features(self.features(x))
    }

    /// The classifier head (the layer that gets the head learning rate when fine-tuning).
    pub fn head_layer(&self) -> &Linear<B> {
        match self {
            Network::ResNet(n) => &n.fc,
            Network::Vgg16(n) => &n.head,
            Network::EfficientNetLite(n) => &n.fc,
        }
    }

    /// Channels of the features.
    pub fn feature_dim(&self) -> usize {
        match self {
            Network::ResNet(n) => n.fc.weight.dims()[0],
            Network::Vgg16(n) => n.head.weight.dims()[0],
            Network::EfficientNetLite(n) => n.fc.weight.dims()[0],
        }
    }

    /// Number of classes of the head.
    pub fn num_classes(&self) -> usize {
        match self {
            Network::ResNet(n) => n.fc.weight.dims()[1],
            Network::Vgg16(n) => n.head.weight.dims()[1],
            Network::EfficientNetLite(n) => n.fc.weight.dims()[1],
        }
    }

    /// Replaces the head by a freshly initialised one with `num_classes` outputs.
    pub fn reset_classifier(self, num_classes: usize, device: &B::Device) -> Self {
        let head = LinearConfig::new(self.feature_dim(), num_classes).init(device);
        match self {
            Network::ResNet(mut n) => {
                n.fc = head;
                Network::ResNet(n)
            }
            Network::Vgg16(mut n) => {
                n.head = head;
                Network::Vgg16(n)
            }
            Network::EfficientNetLite(mut n) => {
                n.fc = head;
                Network::EfficientNetLite(n)
            }
        }
    }
}

/// A model that maps images to class scores.
pub trait Classifier<B: Backend> {
    /// # Shapes
    /// `[B, 3, H, W]` to `[B, num_classes]`.
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;
}

/// A model that maps images to embeddings for retrieval.
pub trait Embedder<B: Backend> {
    /// # Shapes
    /// `[B, 3, H, W]` to `[B, D]`.
    fn embed(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;
}

impl<B: Backend> Classifier<B> for Network<B> {
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(images)
    }
}

impl<B: Backend> Embedder<B> for Network<B> {
    fn embed(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        Network::embed(self, images)
    }
}
