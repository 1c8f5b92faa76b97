//! The image pipeline: decode, optional box crop, resize of the shorter side, random or centre
//! crop, horizontal flip and normalisation to a `[3, H, W]` `f32` buffer.
//!
//! Decoding sniffs the format from the bytes, so a PNG saved as `.jpg` loads. Grayscale, CMYK and
//! 16-bit images are converted to 8-bit RGB. Augmentation draws from
//! [`SplitMix64::for_item`]`(seed, epoch, index)`, so a run (and a resumed run) repeats exactly,
//! whatever the number of threads.
//!
//! Hostile files are errors naming the file, never a panic or a huge allocation:
//! - a JPEG whose last scan has no end-of-image marker after it (cut inside its scan data) is an
//!   error, where the decoder alone would fill the rest with grey;
//! - the decoder refuses sides above [`MAX_SIDE`] and allocations above [`MAX_DECODE_BYTES`];
//! - a resize target above [`MAX_RESIZE_PIXELS`] (a 1×4,000,000 strip resized to a shorter side
//!   of 448) is an error;
//! - pixel index arithmetic is done in `usize`.

use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::datasets::{BBox, Record};
use crate::error::{DataError, Result};
use crate::rng::SplitMix64;

/// Longest side the decoder accepts, in pixels.
pub const MAX_SIDE: u32 = 16_384;
/// Most bytes the decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;
/// Most pixels of a resize target.
pub const MAX_RESIZE_PIXELS: u64 = 64 << 20;

/// Whether JPEG bytes end their last scan with an end-of-image marker. Inside entropy-coded data
/// every `0xFF` is followed by `0x00` or a restart marker, so `FF D9` after the last start-of-scan
/// (`FF DA`) is the real end; an embedded EXIF thumbnail ends before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else { return false };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Largest image file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Reads an image file's bytes: regular files only (a device such as `/dev/zero` or a FIFO
/// would never end or never open), at most [`MAX_FILE_BYTES`].
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let bad = |message: String| DataError::Image { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(bad(format!("{} bytes, above the limit of {MAX_FILE_BYTES}", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)).map_err(|e| DataError::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(bad(format!("grew past the limit of {MAX_FILE_BYTES} bytes while read")));
    }
    Ok(bytes)
}

/// Decodes an image file to 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = read_image_file(path)?;
    decode_rgb(&bytes).map_err(|message| DataError::Image { path: path.to_path_buf(), message })
}

/// Decodes image bytes (JPEG or PNG, format sniffed from the content) to 8-bit RGB.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("unknown image format".into());
    }
    let mut reader = reader;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err("truncated JPEG: no end-of-image marker after the last scan".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// How pixel values are normalised after scaling to `[0, 255]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// torchvision's ImageNet statistics: `(x/255 - mean) / std`.
    Imagenet,
    /// EfficientNet-Lite's `(x - 127) / 128`.
    Symmetric127,
}

impl Normalize {
    /// The per-channel mean and standard deviation subtracted and divided (in `[0, 255]` units).
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalize::Imagenet => ([0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0], [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0]),
            Normalize::Symmetric127 => ([127.0; 3], [128.0; 3]),
        }
    }
}

/// Where the square crop is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropMode {
    /// The centre (evaluation).
    Center,
    /// A uniformly random position (training).
    Random,
}

/// Where a transformed view's pixels come from: the map from source-image coordinates to
/// coordinates in the `crop x crop` output, so that boxes and part locations follow the
/// augmentation. Coordinates are continuous, pixel `i` spanning `[i, i + 1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewGeometry {
    /// Origin of the used source region (box crop), in source pixels.
    pub origin: (f32, f32),
    /// Scale from source to resized pixels, horizontally and vertically.
    pub scale: (f32, f32),
    /// Top-left corner of the crop in the resized image.
    pub offset: (f32, f32),
    /// Side of the output.
    pub crop: f32,
    /// Mirrored horizontally.
    pub flipped: bool,
}

impl ViewGeometry {
    /// A source point `(x, y)` in output coordinates (it may fall outside `[0, crop)`).
    pub fn map_point(&self, x: f32, y: f32) -> (f32, f32) {
        let u = (x - self.origin.0) * self.scale.0 - self.offset.0;
        let v = (y - self.origin.1) * self.scale.1 - self.offset.1;
        (if self.flipped { self.crop - u } else { u }, v)
    }

    /// A source box in output coordinates, clipped to the view; `None` when nothing of it is
    /// in the view.
    pub fn map_box(&self, b: BBox) -> Option<BBox> {
        let (x0, y0) = self.map_point(b.x, b.y);
        let (x1, y1) = self.map_point(b.x + b.w, b.y + b.h);
        let (l, r) = (x0.min(x1).max(0.0), x0.max(x1).min(self.crop));
        let (t, btm) = (y0.min(y1).max(0.0), y0.max(y1).min(self.crop));
        (r > l && btm > t).then_some(BBox { x: l, y: t, w: r - l, h: btm - t })
    }
}

/// One image transform, as recorded in a run's protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// Shorter side after resizing, in pixels (0 keeps the size).
    pub resize: u32,
    /// Side of the square crop.
    pub crop: u32,
    /// Crop position.
    pub crop_mode: CropMode,
    /// Flip horizontally with probability 1/2.
    pub random_flip: bool,
    /// Crop to the record's box (when it has one) before resizing.
    pub box_crop: bool,
    /// Normalisation.
    pub normalize: Normalize,
}

impl Transform {
    /// The usual training transform: resize to `resize`, random `crop`, random flip.
    pub fn train(resize: u32, crop: u32, normalize: Normalize) -> Self {
        Transform { resize, crop, crop_mode: CropMode::Random, random_flip: true, box_crop: false, normalize }
    }

    /// The usual evaluation transform: resize to `resize`, centre `crop`.
    pub fn eval(resize: u32, crop: u32, normalize: Normalize) -> Self {
        Transform { resize, crop, crop_mode: CropMode::Center, random_flip: false, box_crop: false, normalize }
    }

    /// Number of floats of one output image.
    pub fn output_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }

    /// Applies the transform to a decoded image, writing `[3, crop, crop]` floats into `out`.
    /// `trim_bottom` rows are dropped first (FGVC-Aircraft's banner); `bbox` is used when
    /// [`Transform::box_crop`] is set. Returns where the view lies in the source image, or an
    /// error when a resize target would exceed [`MAX_RESIZE_PIXELS`] (an extreme aspect ratio).
    pub fn apply(
        &self,
        img: &RgbImage,
        trim_bottom: u32,
        bbox: Option<BBox>,
        rng: &mut SplitMix64,
        out: &mut [f32],
    ) -> std::result::Result<ViewGeometry, String> {
        assert_eq!(out.len(), self.output_len(), "output buffer has the wrong size");
        let bounded = |nw: u64, nh: u64| -> std::result::Result<(u32, u32), String> {
            if nw.saturating_mul(nh) > MAX_RESIZE_PIXELS || nw > u32::MAX as u64 || nh > u32::MAX as u64 {
                return Err(format!("a {}x{} image would be resized to {nw}x{nh} pixels, above the limit of {MAX_RESIZE_PIXELS}", img.width(), img.height()));
            }
            Ok((nw as u32, nh as u32))
        };
        let (w, h) = img.dimensions();
        let h = h.saturating_sub(trim_bottom).max(1);
        // Region of the source image to use: whole image, or the clipped box.
        let (mut x0, mut y0, mut rw, mut rh) = (0u32, 0u32, w, h);
        if self.box_crop
            && let Some(b) = bbox
        {
            let bx0 = b.x.floor().clamp(0.0, (w - 1) as f32) as u32;
            let by0 = b.y.floor().clamp(0.0, (h - 1) as f32) as u32;
            let bx1 = (b.x + b.w).ceil().clamp(bx0 as f32 + 1.0, w as f32) as u32;
            let by1 = (b.y + b.h).ceil().clamp(by0 as f32 + 1.0, h as f32) as u32;
            (x0, y0, rw, rh) = (bx0, by0, bx1 - bx0, by1 - by0);
        }
        let region = image::imageops::crop_imm(img, x0, y0, rw, rh).to_image();
        let resized = if self.resize > 0 {
            let (nw, nh) = if rw <= rh {
                bounded(self.resize as u64, ((rh as u64 * self.resize as u64 + rw as u64 / 2) / rw as u64).max(1))?
            } else {
                bounded(((rw as u64 * self.resize as u64 + rh as u64 / 2) / rh as u64).max(1), self.resize as u64)?
            };
            if (nw, nh) == (rw, rh) { region } else { image::imageops::resize(&region, nw, nh, FilterType::Triangle) }
        } else {
            region
        };
        // A crop larger than the image takes the whole image, resized up to the crop.
        let resized = if resized.width() < self.crop || resized.height() < self.crop {
            let s = self.crop as f64 / resized.width().min(resized.height()) as f64;
            let nw = ((resized.width() as f64 * s).round() as u64).max(self.crop as u64);
            let nh = ((resized.height() as f64 * s).round() as u64).max(self.crop as u64);
            let (nw, nh) = bounded(nw, nh)?;
            image::imageops::resize(&resized, nw, nh, FilterType::Triangle)
        } else {
            resized
        };
        let (iw, ih) = resized.dimensions();
        let scale = (iw as f32 / rw as f32, ih as f32 / rh as f32);
        let c = self.crop;
        let (cx, cy) = match self.crop_mode {
            CropMode::Center => ((iw - c) / 2, (ih - c) / 2),
            CropMode::Random => (rng.below((iw - c + 1) as u64) as u32, rng.below((ih - c + 1) as u64) as u32),
        };
        let flip = self.random_flip && rng.coin();
        let (mean, std) = self.normalize.mean_std();
        let (c, cx, cy, iw) = (c as usize, cx as usize, cy as usize, iw as usize);
        let plane = c * c;
        let raw = resized.as_raw();
        for y in 0..c {
            let row = (cy + y) * iw * 3;
            for x in 0..c {
                let sx = if flip { cx + c - 1 - x } else { cx + x };
                let px = &raw[row + sx * 3..row + sx * 3 + 3];
                let o = y * c + x;
                for ch in 0..3 {
                    out[ch * plane + o] = (px[ch] as f32 - mean[ch]) / std[ch];
                }
            }
        }
        Ok(ViewGeometry { origin: (x0 as f32, y0 as f32), scale, offset: (cx as f32, cy as f32), crop: c as f32, flipped: flip })
    }
}

/// The ten test views of fine-grained SBIR (Yu et al. 2016, as the authors' release crops):
/// the four corners and the centre of a `side x side` image at `crop x crop`, each also flipped
/// horizontally. Each view is `(x, y, flipped)`, the crop's top-left corner; the centre is at
/// `(side - crop) / 2`, rounded down.
pub fn ten_view_offsets(side: u32, crop: u32) -> [(u32, u32, bool); 10] {
    let m = side.saturating_sub(crop);
    let c = m / 2;
    let base = [(0, 0), (m, 0), (0, m), (m, m), (c, c)];
    let mut out = [(0, 0, false); 10];
    for (i, &(x, y)) in base.iter().enumerate() {
        out[i] = (x, y, false);
        out[i + 5] = (x, y, true);
    }
    out
}

/// The image at its own size, normalised: `[3, h, w]` floats and `(h, w)` (no resize, no crop).
pub fn normalized_chw(img: &RgbImage, normalize: Normalize) -> (Vec<f32>, (usize, usize)) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (mean, std) = normalize.mean_std();
    let plane = w * h;
    let mut out = vec![0f32; 3 * plane];
    for (o, px) in img.as_raw().chunks_exact(3).enumerate() {
        for ch in 0..3 {
            out[ch * plane + o] = (px[ch] as f32 - mean[ch]) / std[ch];
        }
    }
    (out, (h, w))
}

/// A batch of transformed images.
#[derive(Debug)]
pub struct Batch {
    /// `[n, 3, crop, crop]` floats, row-major.
    pub pixels: Vec<f32>,
    /// Class labels, parallel to the images.
    pub labels: Vec<usize>,
    /// Indices (into the record list) of the images in the batch.
    pub indices: Vec<usize>,
    /// Where each view lies in its source image (to carry boxes and parts), parallel to the
    /// images.
    pub geometry: Vec<ViewGeometry>,
    /// Images that could not be decoded and were skipped (with `skip_bad`).
    pub skipped: Vec<DataError>,
}

/// Loads and transforms `indices` of `records` in parallel on all cores.
///
/// Each image draws its augmentation from `(seed, epoch, index)`. An undecodable image is an
/// error naming the file, or with `skip_bad` a skipped entry of the batch.
pub fn load_batch(records: &[Record], indices: &[usize], transform: &Transform, seed: u64, epoch: u64, skip_bad: bool) -> Result<Batch> {
    let n = transform.output_len();
    type Loaded = Result<(Vec<f32>, ViewGeometry)>;
    let results: Vec<(usize, Loaded)> = indices
        .par_iter()
        .map(|&i| {
            let rec = &records[i];
            let r = load_rgb(&rec.path).and_then(|img| {
                let mut out = vec![0f32; n];
                let mut rng = SplitMix64::for_item(seed, epoch, i as u64);
                let g = transform
                    .apply(&img, rec.trim_bottom, rec.bbox, &mut rng, &mut out)
                    .map_err(|message| DataError::Image { path: rec.path.clone(), message })?;
                Ok((out, g))
            });
            (i, r)
        })
        .collect();
    let mut batch = Batch { pixels: Vec::with_capacity(n * indices.len()), labels: Vec::new(), indices: Vec::new(), geometry: Vec::new(), skipped: Vec::new() };
    for (i, r) in results {
        match r {
            Ok((px, g)) => {
                batch.pixels.extend_from_slice(&px);
                batch.labels.push(records[i].label);
                batch.indices.push(i);
                batch.geometry.push(g);
            }
            Err(e) if skip_bad => batch.skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb};

    fn gradient(w: u32, h: u32) -> RgbImage {
        ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 77]))
    }

    fn encode(img: &DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
        let mut v = Vec::new();
        img.write_to(&mut Cursor::new(&mut v), fmt).expect("encode");
        v
    }

    #[test]
    fn decodes_grayscale_16bit_and_misnamed_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Grayscale JPEG.
        let gray = DynamicImage::ImageLuma8(ImageBuffer::from_fn(16, 8, |x, _| Luma([(x * 16) as u8])));
        let p = dir.path().join("gray.jpg");
        std::fs::write(&p, encode(&gray, image::ImageFormat::Jpeg)).expect("write");
        let img = load_rgb(&p).expect("gray decodes");
        assert_eq!(img.dimensions(), (16, 8));
        let px = img.get_pixel(15, 4);
        assert!(px[0] == px[1] && px[1] == px[2] && px[0] > 200, "{px:?}");
        // 16-bit RGB PNG: 65535 must map to 255, not wrap.
        let deep = DynamicImage::ImageRgb16(ImageBuffer::from_fn(4, 4, |x, _| Rgb([65535u16, (x * 20000) as u16, 0])));
        let p = dir.path().join("deep.png");
        std::fs::write(&p, encode(&deep, image::ImageFormat::Png)).expect("write");
        let img = load_rgb(&p).expect("16-bit decodes");
        assert_eq!(img.get_pixel(0, 0)[0], 255);
        assert_eq!(img.get_pixel(3, 0)[1], (60000.0f32 / 65535.0 * 255.0).round() as u8);
        // A PNG saved with a .jpg name.
        let p = dir.path().join("actually_png.jpg");
        std::fs::write(&p, encode(&DynamicImage::ImageRgb8(gradient(10, 6)), image::ImageFormat::Png)).expect("write");
        assert_eq!(load_rgb(&p).expect("sniffed").get_pixel(9, 5), gradient(10, 6).get_pixel(9, 5));
    }

    #[test]
    fn corrupt_and_truncated_images_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("junk.jpg");
        std::fs::write(&p, b"this is not an image").expect("write");
        let e = load_rgb(&p).expect_err("junk fails");
        assert!(e.to_string().contains("junk.jpg"), "{e}");
        let png = encode(&DynamicImage::ImageRgb8(gradient(64, 64)), image::ImageFormat::Png);
        let p = dir.path().join("cut.png");
        std::fs::write(&p, &png[..png.len() / 2]).expect("write");
        let e = load_rgb(&p).expect_err("truncated png fails");
        assert!(e.to_string().contains("cut.png"), "{e}");
        let e = load_rgb(&dir.path().join("absent.jpg")).expect_err("missing fails");
        assert!(e.to_string().contains("absent.jpg"), "{e}");
        // A device, directly or behind a symlink with an image's name, is never read.
        let link = dir.path().join("zero.jpg");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
        for p in [Path::new("/dev/zero"), link.as_path(), dir.path()] {
            let e = load_rgb(p).expect_err("not a regular file").to_string();
            assert!(e.contains("not a regular file") && e.contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_jpeg_cut_inside_its_scan_data_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jpg = encode(&DynamicImage::ImageRgb8(gradient(96, 64)), image::ImageFormat::Jpeg);
        let p = dir.path().join("whole.jpg");
        std::fs::write(&p, &jpg).expect("write");
        load_rgb(&p).expect("the whole file decodes");
        // Trailing bytes after the end marker are tolerated, as many cameras write them.
        let mut trailing = jpg.clone();
        trailing.extend_from_slice(&[0u8; 100]);
        decode_rgb(&trailing).expect("trailing zeros");
        for cut in [jpg.len() * 2 / 3, jpg.len() - 2] {
            let p = dir.path().join("cut.jpg");
            std::fs::write(&p, &jpg[..cut]).expect("write");
            let e = load_rgb(&p).expect_err("truncated jpeg fails").to_string();
            assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
        }
        // Where bad items are skipped, the batch names it as a skipped file.
        let rec = Record::new(dir.path().join("cut.jpg"), 0, "cut".into());
        let b = load_batch(&[rec], &[0], &Transform::eval(32, 32, Normalize::Imagenet), 0, 0, true).expect("skips");
        assert_eq!((b.labels.len(), b.skipped.len()), (0, 1));
        assert!(b.skipped[0].to_string().contains("cut.jpg"));
    }

    #[test]
    fn a_strip_image_is_refused_at_decode_and_at_resize() {
        // 1 x 4 000 000 grey pixels: about 15 KB as PNG, and 448 x 1.8·10⁹ after a shorter-side
        // resize to 448.
        let strip: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_pixel(1, 4_000_000, Luma([128u8]));
        let mut png = Vec::new();
        let enc =
            image::codecs::png::PngEncoder::new_with_quality(&mut png, image::codecs::png::CompressionType::Best, image::codecs::png::FilterType::NoFilter);
        image::ImageEncoder::write_image(enc, strip.as_raw(), 1, 4_000_000, image::ExtendedColorType::L8).expect("png");
        assert!(png.len() < 64 << 10, "{} bytes", png.len());
        let e = decode_rgb(&png).expect_err("too tall");
        assert!(e.to_lowercase().contains("limit"), "{e}");
        // Within the decoder's limits, the resize target is still bounded.
        let img = gradient(1, MAX_SIDE);
        let t = Transform::eval(448, 448, Normalize::Imagenet);
        let mut out = vec![0f32; t.output_len()];
        let e = t.apply(&img, 0, None, &mut SplitMix64::new(0), &mut out).expect_err("huge resize");
        assert!(e.contains("above the limit"), "{e}");
        // A crop larger than a thin image takes the other bound.
        let t = Transform::eval(0, 448, Normalize::Imagenet);
        let e = t.apply(&img, 0, None, &mut SplitMix64::new(0), &mut out).expect_err("huge upscale");
        assert!(e.contains("above the limit"), "{e}");
    }

    #[test]
    fn the_ten_views_sit_at_the_corners_and_the_centre() {
        let v = ten_view_offsets(256, 225);
        assert_eq!(v[..5], [(0, 0, false), (31, 0, false), (0, 31, false), (31, 31, false), (15, 15, false)]);
        assert_eq!(v[5..], [(0, 0, true), (31, 0, true), (0, 31, true), (31, 31, true), (15, 15, true)]);
        assert_eq!(ten_view_offsets(225, 225)[3], (0, 0, false));
    }

    #[test]
    fn centre_crop_resize_and_normalise_are_exact_on_a_known_image() {
        // 8x4 image, resize shorter side 4 (no-op), centre crop 4 -> columns 2..6.
        let img = gradient(8, 4);
        let t = Transform { resize: 4, crop: 4, crop_mode: CropMode::Center, random_flip: false, box_crop: false, normalize: Normalize::Symmetric127 };
        let mut out = vec![0.0; t.output_len()];
        t.apply(&img, 0, None, &mut SplitMix64::new(0), &mut out).expect("applies");
        let expect_r = |x: u32| (((x * 255 / 8) as f32) - 127.0) / 128.0;
        assert_eq!(out[0], expect_r(2));
        assert_eq!(out[3], expect_r(5));
        // Blue plane is constant 77.
        assert!(out[32..48].iter().all(|&v| v == (77.0 - 127.0) / 128.0));
    }

    #[test]
    fn flip_mirrors_and_random_crop_repeats_with_the_seed() {
        let img = gradient(40, 30);
        let mut t = Transform::train(30, 24, Normalize::Symmetric127);
        let run = |t: &Transform, seed: u64| {
            let mut out = vec![0.0; t.output_len()];
            t.apply(&img, 0, None, &mut SplitMix64::for_item(seed, 0, 5), &mut out).expect("applies");
            out
        };
        assert_eq!(run(&t, 1), run(&t, 1));
        let distinct: std::collections::HashSet<Vec<u32>> = (0..20).map(|s| run(&t, s).iter().map(|v| v.to_bits()).collect()).collect();
        assert!(distinct.len() > 5, "random crops should vary with the seed");
        // Forced flip vs no flip on a centre crop: rows are mirrored.
        t.crop_mode = CropMode::Center;
        t.random_flip = false;
        let plain = run(&t, 0);
        let seed_with_flip = (0..64).find(|&s| SplitMix64::for_item(s, 0, 5).coin()).expect("some seed flips");
        t.random_flip = true;
        let flipped = run(&t, seed_with_flip);
        for x in 0..24 {
            assert_eq!(plain[x], flipped[23 - x]);
        }
    }

    #[test]
    fn view_geometry_carries_a_part_and_a_box_through_crop_resize_and_flip() {
        // A white 4x4 dot on black at source (150..154, 30..34); a box around it.
        let img: RgbImage = ImageBuffer::from_fn(200, 120, |x, y| if (150..154).contains(&x) && (30..34).contains(&y) { Rgb([255; 3]) } else { Rgb([0; 3]) });
        let mut t = Transform::train(90, 64, Normalize::Symmetric127);
        let mut seen = (0, 0);
        for seed in 0..40 {
            let mut out = vec![0.0; t.output_len()];
            let g = t.apply(&img, 0, None, &mut SplitMix64::for_item(seed, 0, 0), &mut out).expect("applies");
            let (u, v) = g.map_point(152.0, 32.0);
            let brightest = (0..64 * 64).max_by(|&a, &b| out[a].total_cmp(&out[b])).expect("pixels");
            let (bx, by) = ((brightest % 64) as f32 + 0.5, (brightest / 64) as f32 + 0.5);
            if (0.0..64.0).contains(&u) && (0.0..64.0).contains(&v) {
                assert!((bx - u).abs() <= 1.0 && (by - v).abs() <= 1.0, "seed {seed}: dot at ({bx}, {by}), mapped to ({u}, {v}), {g:?}");
                let b = g.map_box(BBox { x: 146.0, y: 26.0, w: 12.0, h: 12.0 }).expect("the box holds the visible dot");
                assert!(b.x <= bx && bx <= b.x + b.w && b.y <= by && by <= b.y + b.h, "{b:?}");
                seen.0 += 1;
                seen.1 += usize::from(g.flipped);
            } else if g.map_box(BBox { x: 150.0, y: 30.0, w: 4.0, h: 4.0 }).is_none() {
                assert!(out[brightest] < 0.5, "seed {seed}: the dot is out of view, yet a bright pixel at ({bx}, {by})");
            }
        }
        assert!(seen.0 >= 5 && seen.1 >= 1, "views with the dot (flipped): {seen:?}");
        // A box crop moves the origin.
        t.box_crop = true;
        let mut out = vec![0.0; t.output_len()];
        let g = t.apply(&img, 0, Some(BBox { x: 120.0, y: 10.0, w: 60.0, h: 60.0 }), &mut SplitMix64::new(3), &mut out).expect("applies");
        assert_eq!(g.origin, (120.0, 10.0));
        assert!(g.map_box(BBox { x: 0.0, y: 0.0, w: 10.0, h: 10.0 }).is_none(), "a box outside the crop maps to nothing");
    }

    #[test]
    fn box_crop_and_banner_trim_restrict_the_region() {
        // Left half red, right half green; a box on the right half yields only green.
        let img: RgbImage = ImageBuffer::from_fn(20, 20, |x, _| if x < 10 { Rgb([255, 0, 0]) } else { Rgb([0, 255, 0]) });
        let mut t = Transform::eval(8, 8, Normalize::Symmetric127);
        t.box_crop = true;
        let mut out = vec![0.0; t.output_len()];
        t.apply(&img, 0, Some(BBox { x: 11.0, y: 2.0, w: 8.0, h: 16.0 }), &mut SplitMix64::new(0), &mut out).expect("applies");
        assert!(out[..64].iter().all(|&v| v < 0.0), "red plane must be empty");
        // Banner: bottom 10 rows white are removed entirely.
        let img: RgbImage = ImageBuffer::from_fn(30, 40, |_, y| if y >= 30 { Rgb([255, 255, 255]) } else { Rgb([0, 0, 0]) });
        let t = Transform::eval(30, 30, Normalize::Symmetric127);
        let mut out = vec![0.0; t.output_len()];
        t.apply(&img, 10, None, &mut SplitMix64::new(0), &mut out).expect("applies");
        assert!(out.iter().all(|&v| v < 0.0));
    }
}
