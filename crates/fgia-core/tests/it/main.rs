//! Integration tests of fgia-core.

mod datasets;
mod fuzz;
mod images;
