//! Integration tests of fgia-cbir.

mod losses;
mod pipeline;
mod recipes;
