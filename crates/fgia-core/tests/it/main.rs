//! Integration tests of fgia-core.

mod datasets;
mod datasets_external;
mod fuzz;
mod images;
