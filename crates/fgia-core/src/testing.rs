//! Helpers shared by the test suites of the workspace's crates.
//!
//! Tests that need the shared real-data subsets or downloaded weights call these helpers. Where
//! the data is absent (a fresh clone elsewhere), the test prints why it is skipped and returns;
//! CI sets `FGIA_REQUIRE_DATA=1` so that a skip there is a failure, never a silent pass.

use std::path::{Path, PathBuf};

/// The workspace root, from a crate's `CARGO_MANIFEST_DIR` (`<root>/crates/<name>` or
/// `<root>/xtask`).
pub fn workspace_root(manifest_dir: &str) -> PathBuf {
    let p = Path::new(manifest_dir);
    p.ancestors().find(|a| a.join("Cargo.lock").is_file()).unwrap_or(p).to_path_buf()
}

/// Whether skips must fail (`FGIA_REQUIRE_DATA=1`).
pub fn data_required() -> bool {
    std::env::var("FGIA_REQUIRE_DATA").is_ok_and(|v| v == "1")
}

/// Prints the reason a test does not run, or panics with it when data is required.
pub fn skip(test: &str, reason: &str) {
    if data_required() {
        panic!("{test}: required input is missing: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// The folder `name` (e.g. `cub-mini`) of the shared data, or `None` after reporting the skip.
pub fn shared_data(manifest_dir: &str, test: &str, name: &str) -> Option<PathBuf> {
    let root = workspace_root(manifest_dir);
    match crate::datasets::shared_data_dir(&root) {
        Some(dir) if dir.join(name).is_dir() => Some(dir.join(name)),
        _ => {
            skip(test, &format!("shared data '{name}' not found (set FGIA_DATA or place it at ../shared/data)"));
            None
        }
    }
}
