//! The burn-free data layer of the toolkit: official dataset formats, the image pipeline,
//! classification and retrieval metrics, and result records.
//!
//! Nothing here depends on burn, touches the network, or reads `$HOME`, so the orchestration
//! tool (`xtask`) and the report renderer can use it without compiling a tensor library.

pub mod datasets;
pub mod error;
pub mod fuzz;
pub mod imaging;
pub mod linalg;
pub mod mat;
pub mod metrics;
pub mod paths;
pub mod record;
pub mod retrieval;
pub mod rng;
pub mod runlock;
pub mod sampler;
pub mod testing;

pub use error::{DataError, Result};
