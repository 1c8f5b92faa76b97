//! End-to-end feature encoding (the survey's §5.2): high-order pooling layers that turn a
//! backbone's feature map `[B, C, h, w]` into an orderless descriptor for a classifier.
//!
//! One file per method under [`pooling`], each headed by its paper, equations and deviations.
//! Every layer works on any backbone's feature map and is generic over burn's `Backend`
//! (gradients through burn's autodiff; MPN-COV's eigendecomposition through an exact linear
//! surrogate, see [`pooling::mpn_cov`]).

pub mod pooling;
