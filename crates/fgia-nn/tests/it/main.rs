//! Integration tests of fgia-nn: weight import against PyTorch references, the hub cache, and
//! the golden test of the real EfficientNet-Lite0 weights.

mod fuzz;
mod golden;
mod weights;
