//! Integration tests of fgia-core.

mod datasets;
mod images;
