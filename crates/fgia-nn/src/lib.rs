//! Networks for fine-grained analysis, generic over burn's `Backend`: the survey's backbones
//! (ResNet-18/50/101, VGG-16) and EfficientNet-Lite0, their pretrained-weight import, the shared
//! tensor operations, and the traits evaluation code sees ([`Classifier`], [`Embedder`]).
//!
//! This crate enables no backend; binaries choose one.

pub mod efficientnet;
pub mod error;
pub mod flops;
pub mod imagenet;
pub mod kernels;
pub mod network;
pub mod norm;
pub mod ops;
pub mod resnet;
pub mod torch_layout;
pub mod vgg;
pub mod weights;

pub use error::NnError;
pub use network::{BackboneKind, Classifier, Embedder, Network, NetworkConfig, PretrainedSource};
