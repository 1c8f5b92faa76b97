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

/// Writes a tiny dataset in the official CUB-200-2011 layout for tests: `classes` classes of
/// `size x size` noisy, striped images in class-specific colours (learnable), the first
/// `train_per_class` of each class in the training split and `test_per_class` in the test split.
/// Deterministic. Panics on I/O errors (test set-up only).
pub fn write_tiny_cub(root: &Path, classes: u32, train_per_class: usize, test_per_class: usize, size: u32) {
    let (mut images, mut labels, mut split, mut names) = (String::new(), String::new(), String::new(), String::new());
    let mut rng = crate::rng::SplitMix64::new(5);
    let mut id = 0;
    for c in 1..=classes {
        names.push_str(&format!("{c} {c:03}.class{c}\n"));
        for k in 0..train_per_class + test_per_class {
            id += 1;
            let rel = format!("{c:03}.class{c}/img{id}.png");
            let base = [(c * 60 % 256) as f32, (255 - c * 50 % 256) as f32, ((c * 97) % 255) as f32];
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                let n = (rng.next_f64() * 60.0) as f32 - 30.0;
                let stripe = if (x / (2 + c) + y) % 2 == 0 { 20.0 } else { -20.0 };
                image::Rgb([0, 1, 2].map(|i| (base[i] + n + stripe).clamp(0.0, 255.0) as u8))
            });
            let p = root.join("images").join(&rel);
            std::fs::create_dir_all(p.parent().expect("image path has a folder")).expect("create test image folder");
            img.save(&p).expect("write test image");
            images.push_str(&format!("{id} {rel}\n"));
            labels.push_str(&format!("{id} {c}\n"));
            split.push_str(&format!("{id} {}\n", u8::from(k < train_per_class)));
        }
    }
    for (f, t) in [("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split), ("classes.txt", names)] {
        std::fs::write(root.join(f), t).expect("write test annotation");
    }
}
