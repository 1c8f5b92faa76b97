//! Image decoding edge cases that need a fixture made outside Rust.

use std::path::Path;

#[test]
fn cmyk_jpeg_decodes_to_the_right_colours() {
    // Written by tests/fixtures/make_fixtures.py (Pillow, Adobe inverted CMYK): red | blue.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cmyk.jpg");
    let img = fgia_core::imaging::load_rgb(&p).expect("CMYK JPEG decodes");
    assert_eq!(img.dimensions(), (16, 8));
    let (l, r) = (img.get_pixel(2, 4), img.get_pixel(13, 4));
    assert!(l[0] > 230 && l[1] < 30 && l[2] < 30, "left should be red, got {l:?}");
    assert!(r[0] < 30 && r[1] < 30 && r[2] > 230, "right should be blue, got {r:?}");
}

#[test]
fn real_cub_images_batch_in_parallel_and_repeat() {
    use fgia_core::datasets::{ReadOptions, read_cub};
    use fgia_core::imaging::{Normalize, Transform, load_batch};
    let Some(root) = fgia_core::testing::shared_data(env!("CARGO_MANIFEST_DIR"), "real_cub_images", "cub-mini") else { return };
    let ds = read_cub(&root, ReadOptions::default()).expect("reads");
    let t = Transform::train(128, 112, Normalize::Imagenet);
    let idx: Vec<usize> = (0..24).collect();
    let a = load_batch(&ds.train, &idx, &t, 3, 1, false).expect("batch");
    let b = load_batch(&ds.train, &idx, &t, 3, 1, false).expect("batch");
    assert_eq!(a.pixels.len(), 24 * 3 * 112 * 112);
    assert_eq!(a.pixels, b.pixels, "same seed and epoch give the same batch");
    let c = load_batch(&ds.train, &idx, &t, 3, 2, false).expect("batch");
    assert_ne!(a.pixels, c.pixels, "another epoch draws other crops");
    assert!(a.pixels.iter().all(|v| v.is_finite() && v.abs() < 3.0));
    assert_eq!(a.labels, ds.train[..24].iter().map(|r| r.label).collect::<Vec<_>>());
}

#[test]
fn a_corrupt_image_in_a_batch_is_an_error_or_a_counted_skip() {
    use fgia_core::datasets::{ReadOptions, read_list_files};
    use fgia_core::imaging::{Normalize, Transform, load_batch};
    let dir = tempfile::tempdir().expect("tempdir");
    let good = image::RgbImage::from_pixel(20, 20, image::Rgb([1, 2, 3]));
    good.save_with_format(dir.path().join("good.jpg"), image::ImageFormat::Jpeg).expect("save");
    std::fs::write(dir.path().join("bad.jpg"), b"\xff\xd8\xff\xe0 truncated").expect("write");
    std::fs::write(dir.path().join("list.txt"), "1 good.jpg\n2 bad.jpg\n").expect("write");
    let ds = read_list_files(dir.path(), &dir.path().join("list.txt"), &dir.path().join("list.txt"), ReadOptions::default()).expect("list");
    let t = Transform::eval(16, 16, Normalize::Imagenet);
    let e = load_batch(&ds.train, &[0, 1], &t, 0, 0, false).expect_err("bad image");
    assert!(e.to_string().contains("bad.jpg"), "{e}");
    let b = load_batch(&ds.train, &[0, 1], &t, 0, 0, true).expect("skips");
    assert_eq!((b.labels.len(), b.skipped.len()), (1, 1));
}
