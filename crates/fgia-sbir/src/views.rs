//! The views of sketches and photos through the frozen trunk, computed once per set and shared
//! by every recipe of one process that reads the same views ([`SharedViews`]).
//!
//! Each view yields two features: the trunk's pooled last map (what triplet Sketch-a-Net's
//! `fc6` reads) and, when a method asks for it, the "conv5" map [`conv5_stage`] (what DSSA's
//! attention reads).
//!
//! A view is a `crop x crop` window of the image (stored at `side x side`; other sizes are
//! resized first), optionally mirrored, normalised as the trunk expects. Grey images are
//! replicated to three channels by the decoder. Training draws `train_views` random windows
//! and flips per image from `(seed, view, image)`; the test uses the ten fixed views of
//! [`fgia_core::imaging::ten_view_offsets`].

use std::path::PathBuf;

use burn::prelude::*;
use fgia_core::imaging::{Normalize, load_rgb, normalized_chw};
use fgia_core::rng::SplitMix64;
use fgia_nn::ops::global_avg_pool;
use fgia_nn::{BackboneKind, Network};
use fgia_train::TrainError;
use image::RgbImage;
use rayon::prelude::*;

/// A view: the window's top-left corner and whether it is mirrored.
pub type View = (u32, u32, bool);

/// The trunk stage whose output stands in for Sketch-a-Net's `conv5` (256 channels at 7 x 7 for
/// a 225 crop): EfficientNet-Lite0's last block stage (320 channels, 8 x 8), before its 1 x 1
/// head convolution to 1280; the last stage of the others (ResNet `layer4`, VGG-16 `pool5`).
pub fn conv5_stage(kind: BackboneKind) -> usize {
    match kind {
        BackboneKind::EfficientNetLite0 => fgia_nn::efficientnet::STAGES - 2,
        BackboneKind::ResNet18 | BackboneKind::ResNet50 | BackboneKind::ResNet101 | BackboneKind::Vgg16 => kind.num_stages() - 1,
    }
}

/// Features of every view of every image: `[images, views, dim]`, where a map `[C, h, w]` is
/// flattened to `dim = C * h * w`.
#[derive(Debug, Clone)]
pub struct ViewFeatures {
    /// Feature size.
    pub dim: usize,
    /// Views per image.
    pub views: usize,
    /// Row-major `[images, views, dim]`.
    pub data: Vec<f32>,
}

/// What one pass of the trunk over a list of images gives: the pooled features and, when asked,
/// the conv5 maps.
#[derive(Debug, Clone)]
pub struct Views {
    /// Pooled last map, `[images, views, C_last]`.
    pub pooled: ViewFeatures,
    /// Conv5 maps, `[images, views, C * h * w]`, with their shape `[C, h, w]`.
    pub maps: Option<(ViewFeatures, [usize; 3])>,
}

/// The four view sets of one QMUL set (train / test, sketches / photos), kept for the recipes
/// of one process that share `key`.
#[derive(Debug)]
pub struct SharedViews {
    /// Trunk, set, view geometry, views and seed.
    pub key: String,
    /// Training sketches, training photos, test sketches, test photos.
    pub sets: [Views; 4],
}

impl ViewFeatures {
    /// The feature of `view` of `image`.
    pub fn get(&self, image: usize, view: usize) -> &[f32] {
        let at = (image * self.views + view) * self.dim;
        &self.data[at..at + self.dim]
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.data.len() / (self.views * self.dim).max(1)
    }

    /// Whether there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `view`-th random training view of `image`: a uniform window position and a fair flip.
pub fn train_view(seed: u64, image: usize, view: usize, side: u32, crop: u32) -> View {
    let mut rng = SplitMix64::for_item(seed ^ 0x5b12_7a11, view as u64, image as u64);
    let m = side.saturating_sub(crop) as u64 + 1;
    (rng.below(m) as u32, rng.below(m) as u32, rng.coin())
}

/// `[3, crop, crop]` normalised pixels of one view of `img`.
pub fn view_pixels(img: &RgbImage, side: u32, crop: u32, view: View, normalize: Normalize) -> Vec<f32> {
    let resized;
    let img = if img.dimensions() == (side, side) {
        img
    } else {
        resized = image::imageops::resize(img, side, side, image::imageops::FilterType::Triangle);
        &resized
    };
    let (x, y, flip) = view;
    let mut window = image::imageops::crop_imm(img, x.min(side - crop), y.min(side - crop), crop, crop).to_image();
    if flip {
        image::imageops::flip_horizontal_in_place(&mut window);
    }
    normalized_chw(&window, normalize).0
}

/// Features of `views(i)` of each image `paths[i]` through `net`: the pooled last map, and the
/// output of stage `map_stage` when given, in batches of about 32 views.
#[allow(clippy::too_many_arguments)]
pub fn compute<B: Backend>(
    net: &Network<B>,
    map_stage: Option<usize>,
    paths: &[PathBuf],
    views: &(dyn Fn(usize) -> Vec<View> + Sync),
    side: u32,
    crop: u32,
    normalize: Normalize,
    device: &B::Device,
    bar: &indicatif::ProgressBar,
) -> Result<Views, TrainError> {
    let per = views(0).len();
    let images_per_batch = (32 / per.max(1)).max(1);
    let c = crop as usize;
    let (mut data, mut map_data) = (Vec::new(), Vec::new());
    let (mut dim, mut map_shape) = (0, [0; 3]);
    let host =
        |t: Tensor<B, 2>, at: usize| t.into_data().to_vec::<f32>().map_err(|e| TrainError::Checkpoint { path: paths[at].clone(), message: format!("{e:?}") });
    for chunk in (0..paths.len()).collect::<Vec<_>>().chunks(images_per_batch) {
        let pixels: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&i| {
                let img = load_rgb(&paths[i])?;
                let vs = views(i);
                Ok(vs.into_iter().flat_map(|v| view_pixels(&img, side, crop, v, normalize)).collect::<Vec<f32>>())
            })
            .collect::<Result<_, fgia_core::DataError>>()?;
        let n = chunk.len() * per;
        let flat: Vec<f32> = pixels.concat();
        let x = Tensor::<B, 4>::from_data(TensorData::new(flat, [n, 3, c, c]), device);
        let last = match map_stage {
            Some(k) => {
                let map = (0..=k).fold(x, |x, i| net.forward_stage(i, x));
                let [_, mc, mh, mw] = map.dims();
                map_shape = [mc, mh, mw];
                map_data.extend(host(map.clone().reshape([n, mc * mh * mw]), chunk[0])?);
                net.forward_stages_from(k + 1, map)
            }
            None => net.features(x),
        };
        let f = global_avg_pool(last);
        dim = f.dims()[1];
        data.extend(host(f, chunk[0])?);
        bar.inc(chunk.len() as u64);
    }
    let maps = map_stage.map(|_| (ViewFeatures { dim: map_shape.iter().product(), views: per, data: map_data }, map_shape));
    Ok(Views { pooled: ViewFeatures { dim, views: per, data }, maps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_the_window_at_its_offset_mirrored_when_asked() {
        // 4x4 image whose red channel is the column and green the row.
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 0]));
        let n = Normalize::Symmetric127;
        let red = |v: &[f32], i: usize| (v[i] * 128.0 + 127.0).round() as u8;
        let v = view_pixels(&img, 4, 2, (1, 2, false), n);
        // Plane 0 (red) row-major: columns 1, 2; plane 1 (green): rows 2, 3.
        assert_eq!((0..4).map(|i| red(&v, i)).collect::<Vec<_>>(), [10, 20, 10, 20]);
        assert_eq!((4..8).map(|i| red(&v, i)).collect::<Vec<_>>(), [20, 20, 30, 30]);
        let f = view_pixels(&img, 4, 2, (1, 2, true), n);
        assert_eq!((0..4).map(|i| red(&f, i)).collect::<Vec<_>>(), [20, 10, 20, 10]);
        // Training views stay inside the image, spread over every offset and both flips, and
        // change with the seed and the view index.
        let views: Vec<View> = (0..2000).map(|i| train_view(3, i, 1, 256, 225)).collect();
        assert!(views.iter().all(|&(x, y, _)| x <= 31 && y <= 31));
        assert_eq!(views.iter().map(|v| v.0).max(), Some(31));
        assert_eq!(views.iter().map(|v| v.1).min(), Some(0));
        let flips = views.iter().filter(|v| v.2).count();
        assert!((900..1100).contains(&flips), "{flips} of 2000 flipped");
        assert!((0..50).any(|i| train_view(3, i, 1, 256, 225) != train_view(4, i, 1, 256, 225)));
        assert!((0..50).any(|i| train_view(3, i, 1, 256, 225) != train_view(3, i, 2, 256, 225)));
    }
}
