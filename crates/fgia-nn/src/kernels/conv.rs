//! 2-D convolution kernels on contiguous NCHW `f32` slices: forward, and the gradients of the
//! input, weight and bias. Three kinds cover the backbones:
//!
//! - **dense** (`groups = 1`, any kernel, stride, dilation and per-side padding): per image,
//!   `im2col` into a `[C_in k_h k_w, H_out W_out]` panel, then one matrix product with the
//!   `[C_out, C_in k_h k_w]` weight. The backward recomputes the panel: `dW += dY · colᵀ`, and
//!   `dX = col2im(Wᵀ · dY)`. Transposed operands are read in place through the product's
//!   strides; nothing is copied to transpose.
//! - **pointwise** (1x1, stride 1, no padding): the dense kind with the image itself as the panel.
//! - **depthwise** (`groups = C_in = C_out`): direct loops over each channel's plane, with the
//!   padding handled by clipping each row's range, not by a padded copy.
//!
//! Images run in parallel over the rayon pool; where there are fewer images than threads (batch
//! 1 at inference), each product uses every thread instead.

use rayon::prelude::*;

use super::gemm::{Threads, View, gemm};

/// A convolution's geometry; padding may differ between the start and the end of a dimension
/// (TensorFlow's "SAME" puts the odd pixel at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Zero padding before the first row / column.
    pub pad_start: [usize; 2],
    /// Zero padding after the last row / column.
    pub pad_end: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

/// Which kernel runs a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    /// `groups = 1`, through `im2col` and a matrix product.
    Dense,
    /// 1x1, stride 1, no padding, `groups = 1`: one matrix product per image.
    Pointwise,
    /// One filter per channel (`groups = C_in = C_out`).
    Depthwise,
}

impl ConvGeom {
    /// The output size, or `None` where the kernel does not fit the padded input.
    pub fn out_size(&self, input: [usize; 2], kernel: [usize; 2]) -> Option<[usize; 2]> {
        let one = |d: usize| {
            let span = self.dilation[d] * (kernel[d].checked_sub(1)?) + 1;
            let padded = input[d] + self.pad_start[d] + self.pad_end[d];
            (padded >= span && self.stride[d] > 0).then(|| (padded - span) / self.stride[d] + 1)
        };
        Some([one(0)?, one(1)?])
    }

    /// The kernel for an input of `x = [N, C_in, H, W]` and a weight of `w = [C_out, C_in /
    /// groups, k_h, k_w]`, or `None` for the shapes these kernels leave to the backend (other
    /// groupings, empty tensors).
    pub fn kind(&self, x: [usize; 4], w: [usize; 4]) -> Option<ConvKind> {
        if x.contains(&0) || w.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return None;
        }
        self.out_size([x[2], x[3]], [w[2], w[3]])?;
        if self.groups == 1 && w[1] == x[1] {
            let pointwise = w[2] == 1 && w[3] == 1 && self.stride == [1, 1] && self.pad_start == [0, 0] && self.pad_end == [0, 0];
            Some(if pointwise { ConvKind::Pointwise } else { ConvKind::Dense })
        } else if self.groups == x[1] && w[0] == x[1] && w[1] == 1 {
            Some(ConvKind::Depthwise)
        } else {
            None
        }
    }
}

/// The outputs `o` in `0..outs` whose input index `o * stride + offset` lies in `0..size`.
fn valid_range(outs: usize, stride: usize, offset: isize, size: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { ((-offset) + s - 1) / s };
    let room = size as isize - offset;
    let hi = if room <= 0 { 0 } else { ((room + s - 1) / s).min(outs as isize) };
    let lo = lo.min(hi);
    (lo as usize, hi as usize)
}

/// Sizes shared by the kernels.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn new(x: [usize; 4], w: [usize; 4], g: &ConvGeom) -> Self {
        let [oh, ow] = g.out_size([x[2], x[3]], [w[2], w[3]]).expect("checked by ConvGeom::kind");
        Dims { n: x[0], ci: x[1], h: x[2], w: x[3], co: w[0], kh: w[2], kw: w[3], oh, ow }
    }
    fn plane_in(&self) -> usize {
        self.h * self.w
    }
    fn plane_out(&self) -> usize {
        self.oh * self.ow
    }
    /// Rows of the `im2col` panel.
    fn k(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    /// Offset of kernel tap `t` (row or column `d`) relative to `o * stride`.
    fn offset(&self, g: &ConvGeom, d: usize, t: usize) -> isize {
        (t * g.dilation[d]) as isize - g.pad_start[d] as isize
    }
}

fn inner_threads(images: usize) -> Threads {
    if images >= rayon::current_num_threads() { Threads::One } else { Threads::All }
}

/// Output rows per `im2col` tile: the panel (`K` rows of `rows * W_out`) stays near 1 M values,
/// so it is reused from the thread's scratch and stays in cache while the product reads it.
fn tile_rows(d: &Dims) -> usize {
    (PANEL / (d.k() * d.ow).max(1)).clamp(1, d.oh.max(1))
}

/// Values of an `im2col` tile the tiling aims at (tiny under test, so the tests run images of
/// many tiles).
const PANEL: usize = if cfg!(test) { 64 } else { 1 << 20 };

/// Output rows `oh0..oh1` of `im2col`: `col[(c k_h + i) k_w + j, (oh - oh0) W_out + ow] =
/// x[c, oh s + i d - p, ow s + j d - p]`, zero outside the input.
fn im2col(x: &[f32], col: &mut [f32], d: &Dims, g: &ConvGeom, (oh0, oh1): (usize, usize)) {
    let (p, ow_n) = ((oh1 - oh0) * d.ow, d.ow);
    for c in 0..d.ci {
        let plane = &x[c * d.plane_in()..(c + 1) * d.plane_in()];
        for i in 0..d.kh {
            let oi = d.offset(g, 0, i);
            let (rlo, rhi) = valid_range(d.oh, g.stride[0], oi, d.h);
            for j in 0..d.kw {
                let oj = d.offset(g, 1, j);
                let (clo, chi) = valid_range(ow_n, g.stride[1], oj, d.w);
                let row = &mut col[((c * d.kh + i) * d.kw + j) * p..][..p];
                for oh in oh0..oh1 {
                    let out = &mut row[(oh - oh0) * ow_n..(oh - oh0 + 1) * ow_n];
                    if oh < rlo || oh >= rhi || clo >= chi {
                        out.fill(0.0);
                        continue;
                    }
                    let ih = (oh * g.stride[0]) as isize + oi;
                    let src = &plane[ih as usize * d.w..(ih as usize + 1) * d.w];
                    out[..clo].fill(0.0);
                    out[chi..].fill(0.0);
                    let start = (clo * g.stride[1]) as isize + oj;
                    if g.stride[1] == 1 {
                        out[clo..chi].copy_from_slice(&src[start as usize..start as usize + (chi - clo)]);
                    } else {
                        for (o, v) in out[clo..chi].iter_mut().zip(src[start as usize..].iter().step_by(g.stride[1])) {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`] for output rows `oh0..oh1`: `dx[c, ih, iw] += dcol[...]`.
fn col2im(dcol: &[f32], dx: &mut [f32], d: &Dims, g: &ConvGeom, (oh0, oh1): (usize, usize)) {
    let (p, ow_n) = ((oh1 - oh0) * d.ow, d.ow);
    for c in 0..d.ci {
        let plane = &mut dx[c * d.plane_in()..(c + 1) * d.plane_in()];
        for i in 0..d.kh {
            let oi = d.offset(g, 0, i);
            let (rlo, rhi) = valid_range(d.oh, g.stride[0], oi, d.h);
            for j in 0..d.kw {
                let oj = d.offset(g, 1, j);
                let (clo, chi) = valid_range(ow_n, g.stride[1], oj, d.w);
                if clo >= chi {
                    continue;
                }
                let row = &dcol[((c * d.kh + i) * d.kw + j) * p..][..p];
                for oh in rlo.max(oh0)..rhi.min(oh1) {
                    let ih = ((oh * g.stride[0]) as isize + oi) as usize;
                    let dst = &mut plane[ih * d.w..(ih + 1) * d.w];
                    let start = ((clo * g.stride[1]) as isize + oj) as usize;
                    let src = &row[(oh - oh0) * ow_n + clo..(oh - oh0) * ow_n + chi];
                    if g.stride[1] == 1 {
                        for (o, v) in dst[start..start + src.len()].iter_mut().zip(src) {
                            *o += *v;
                        }
                    } else {
                        for (o, v) in dst[start..].iter_mut().step_by(g.stride[1]).zip(src) {
                            *o += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Per-thread scratch reused across calls (the `im2col` tiles): no allocation and no page
/// clearing per image. A thread that re-enters while its buffer is lent (rayon stealing work
/// inside a multi-threaded product) gets a fresh one.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
        Err(_) => f(&mut vec![0.0f32; len]),
    })
}

/// The output-row tiles of one image.
fn tiles(d: &Dims) -> impl Iterator<Item = (usize, usize)> {
    let t = tile_rows(d);
    (0..d.oh.div_ceil(t)).map(move |i| (i * t, ((i + 1) * t).min(d.oh)))
}

/// Forward convolution. `x: [N, C_in, H, W]`, `w: [C_out, C_in / groups, k_h, k_w]`, `bias:
/// [C_out]`; returns `y: [N, C_out, H_out, W_out]` and its shape.
///
/// # Panics
/// When `kind` is not `g.kind(xs, ws)`.
pub fn forward(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], bias: Option<&[f32]>, g: &ConvGeom) -> (Vec<f32>, [usize; 4]) {
    let kind = g.kind(xs, ws).expect("a convolution these kernels run");
    let d = Dims::new(xs, ws, g);
    let (pi, po) = (d.ci * d.plane_in(), d.co * d.plane_out());
    let mut y = vec![0.0f32; d.n * po];
    match kind {
        ConvKind::Pointwise | ConvKind::Dense => {
            let threads = inner_threads(d.n);
            let p = d.plane_out();
            y.par_chunks_mut(po.max(1)).enumerate().for_each(|(n, yn)| {
                let xn = &x[n * pi..(n + 1) * pi];
                if kind == ConvKind::Pointwise {
                    gemm(yn, View::rows(d.co, p), false, w, View::rows(d.co, d.k()), xn, View::rows(d.k(), p), 1.0, threads);
                } else {
                    for (oh0, oh1) in tiles(&d) {
                        let cols = (oh1 - oh0) * d.ow;
                        with_scratch(d.k() * cols, |col| {
                            im2col(xn, col, &d, g, (oh0, oh1));
                            // y[:, tile] = W · col
                            let dst = View { rows: d.co, cols, rs: p, cs: 1 };
                            gemm(&mut yn[oh0 * d.ow..], dst, false, w, View::rows(d.co, d.k()), col, View::rows(d.k(), cols), 1.0, threads);
                        });
                    }
                }
                if let Some(b) = bias {
                    for (row, &bv) in yn.chunks_mut(p).zip(b) {
                        row.iter_mut().for_each(|v| *v += bv);
                    }
                }
            });
        }
        ConvKind::Depthwise => {
            y.par_chunks_mut(d.plane_out().max(1)).enumerate().for_each(|(nc, out)| {
                let c = nc % d.ci;
                let phases = Phases::split(&x[nc * d.plane_in()..(nc + 1) * d.plane_in()], &d, g.stride[1]);
                let taps = &w[c * d.kh * d.kw..(c + 1) * d.kh * d.kw];
                out.fill(bias.map_or(0.0, |b| b[c]));
                depthwise_taps(&d, g, |oh, (lo, hi), ih, start, tap| {
                    let dst = &mut out[oh * d.ow + lo..oh * d.ow + hi];
                    let len = dst.len();
                    axpy(dst, taps[tap], phases.run(ih, start, len));
                });
            });
        }
    }
    (y, [d.n, d.co, d.oh, d.ow])
}

/// A plane's columns split by their remainder modulo the stride: input column `s + k stride`
/// is entry `k` of phase `s % stride` from `s / stride`, so a strided read becomes a contiguous
/// one (and vectorises). Stride 1 borrows the plane.
struct Phases<'a> {
    data: std::borrow::Cow<'a, [f32]>,
    stride: usize,
    /// Row length of every phase.
    width: usize,
    /// Rows of the plane.
    rows: usize,
}

impl<'a> Phases<'a> {
    fn split(plane: &'a [f32], d: &Dims, stride: usize) -> Self {
        if stride == 1 {
            return Phases { data: std::borrow::Cow::Borrowed(plane), stride, width: d.w, rows: d.h };
        }
        let width = d.w.div_ceil(stride);
        let mut data = vec![0.0f32; stride * d.h * width];
        for (r, row) in plane.chunks(d.w).enumerate() {
            for p in 0..stride.min(d.w) {
                let dst = &mut data[(p * d.h + r) * width..][..width];
                for (o, v) in dst.iter_mut().zip(row[p..].iter().step_by(stride)) {
                    *o = *v;
                }
            }
        }
        Phases { data: std::borrow::Cow::Owned(data), stride, width, rows: d.h }
    }

    /// `len` values of input row `row` from column `start` on, every `stride` columns.
    fn run(&self, row: usize, start: usize, len: usize) -> &[f32] {
        let at = ((start % self.stride) * self.rows + row) * self.width + start / self.stride;
        &self.data[at..at + len]
    }
}

/// Accumulates into phase-split storage; [`Self::merge`] writes it back as a plane.
struct PhaseAcc {
    data: Vec<f32>,
    stride: usize,
    width: usize,
    rows: usize,
}

impl PhaseAcc {
    fn new(d: &Dims, stride: usize) -> Self {
        let width = d.w.div_ceil(stride);
        PhaseAcc { data: vec![0.0f32; stride * d.h * width], stride, width, rows: d.h }
    }

    fn run(&mut self, row: usize, start: usize, len: usize) -> &mut [f32] {
        let at = ((start % self.stride) * self.rows + row) * self.width + start / self.stride;
        &mut self.data[at..at + len]
    }

    fn merge(&self, plane: &mut [f32], w: usize) {
        for (r, row) in plane.chunks_mut(w).enumerate() {
            for p in 0..self.stride.min(w) {
                let src = &self.data[(p * self.rows + r) * self.width..][..self.width];
                for (o, v) in row[p..].iter_mut().step_by(self.stride).zip(src) {
                    *o = *v;
                }
            }
        }
    }
}

/// `dst += a src`.
fn axpy(dst: &mut [f32], a: f32, src: &[f32]) {
    for (o, v) in dst.iter_mut().zip(src) {
        *o += a * v;
    }
}

/// `Σ a_i b_i` in eight independent partial sums (so it vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Calls `f(oh, (ow_lo, ow_hi), ih, iw_start, tap)` for every output row and kernel tap with a
/// valid input row: outputs `ow_lo..ow_hi` of row `oh` read input row `ih` from column
/// `iw_start` on, every `stride` columns.
fn depthwise_taps(d: &Dims, g: &ConvGeom, mut f: impl FnMut(usize, (usize, usize), usize, usize, usize)) {
    let ranges: Vec<((usize, usize), isize)> = (0..d.kw)
        .map(|j| {
            let oj = d.offset(g, 1, j);
            (valid_range(d.ow, g.stride[1], oj, d.w), oj)
        })
        .collect();
    for oh in 0..d.oh {
        for i in 0..d.kh {
            let ih = (oh * g.stride[0]) as isize + d.offset(g, 0, i);
            if ih < 0 || ih >= d.h as isize {
                continue;
            }
            for (j, &((lo, hi), oj)) in ranges.iter().enumerate() {
                if lo < hi {
                    f(oh, (lo, hi), ih as usize, ((lo * g.stride[1]) as isize + oj) as usize, i * d.kw + j);
                }
            }
        }
    }
}

/// The gradients a backward pass asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Needs {
    /// Of the input.
    pub x: bool,
    /// Of the weight.
    pub w: bool,
    /// Of the bias.
    pub bias: bool,
}

/// Gradients `(dx, dw, dbias)` of a convolution, given `dy: [N, C_out, H_out, W_out]`; each is
/// `None` where `needs` does not ask for it.
pub type Grads = (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>);

/// Backward convolution (see [`forward`] for the shapes).
///
/// # Panics
/// When the shapes are not a convolution these kernels run.
pub fn backward(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], dy: &[f32], g: &ConvGeom, needs: Needs) -> Grads {
    let kind = g.kind(xs, ws).expect("a convolution these kernels run");
    let d = Dims::new(xs, ws, g);
    let (pi, po) = (d.ci * d.plane_in(), d.co * d.plane_out());
    let dbias = needs.bias.then(|| {
        let mut db = vec![0.0f32; d.co];
        for img in dy.chunks(po.max(1)) {
            for (acc, row) in db.iter_mut().zip(img.chunks(d.plane_out().max(1))) {
                *acc += row.iter().sum::<f32>();
            }
        }
        db
    });
    match kind {
        ConvKind::Pointwise | ConvKind::Dense => {
            let threads = inner_threads(d.n);
            let dense = kind == ConvKind::Dense;
            let (k, p) = (d.k(), d.plane_out());
            let mut dx = if needs.x { vec![0.0f32; d.n * pi] } else { Vec::new() };
            // One image: dW += dY · colᵀ, and dX = Wᵀ dY (through col2im for the dense kind).
            let per_image = |n: usize, dxn: Option<&mut [f32]>, dw: &mut Option<Vec<f32>>| {
                let dyn_ = &dy[n * po..(n + 1) * po];
                let xn = &x[n * pi..(n + 1) * pi];
                if !dense {
                    if let Some(dw) = dw.as_mut() {
                        gemm(dw, View::rows(d.co, k), true, dyn_, View::rows(d.co, p), xn, View::transposed(k, p), 1.0, threads);
                    }
                    if let Some(dxn) = dxn {
                        gemm(dxn, View::rows(k, p), false, w, View::transposed(d.co, k), dyn_, View::rows(d.co, p), 1.0, threads);
                    }
                    return;
                }
                let mut dxn = dxn;
                for (oh0, oh1) in tiles(&d) {
                    let cols = (oh1 - oh0) * d.ow;
                    let dy_tile = View { rows: d.co, cols, rs: p, cs: 1 };
                    with_scratch(k * cols, |col| {
                        if let Some(dw) = dw.as_mut() {
                            im2col(xn, col, &d, g, (oh0, oh1));
                            // dW[C_out, K] += dY[:, tile] · colᵀ
                            gemm(dw, View::rows(d.co, k), true, &dyn_[oh0 * d.ow..], dy_tile, col, View::transposed(k, cols), 1.0, threads);
                        }
                        if let Some(dxn) = dxn.as_deref_mut() {
                            // dcol[K, tile] = Wᵀ · dY[:, tile], then scattered back.
                            gemm(col, View::rows(k, cols), false, w, View::transposed(d.co, k), &dyn_[oh0 * d.ow..], dy_tile, 1.0, threads);
                            col2im(col, dxn, &d, g, (oh0, oh1));
                        }
                    });
                }
            };
            let init = || needs.w.then(|| vec![0.0f32; d.co * k]);
            let partials: Vec<Option<Vec<f32>>> = if needs.x {
                dx.par_chunks_mut(pi.max(1))
                    .enumerate()
                    .fold(init, |mut dw, (n, dxn)| {
                        per_image(n, Some(dxn), &mut dw);
                        dw
                    })
                    .collect()
            } else {
                (0..d.n)
                    .into_par_iter()
                    .fold(init, |mut dw, n| {
                        per_image(n, None, &mut dw);
                        dw
                    })
                    .collect()
            };
            let dw = needs.w.then(|| {
                let mut total = vec![0.0f32; d.co * k];
                for part in partials.into_iter().flatten() {
                    total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
                }
                total
            });
            (needs.x.then_some(dx), dw, dbias)
        }
        ConvKind::Depthwise => {
            let taps = d.kh * d.kw;
            let sw = g.stride[1];
            let dx = needs.x.then(|| {
                let mut dx = vec![0.0f32; d.n * pi];
                dx.par_chunks_mut(d.plane_in().max(1)).enumerate().for_each(|(nc, plane)| {
                    let c = nc % d.ci;
                    let grad = &dy[nc * d.plane_out()..(nc + 1) * d.plane_out()];
                    let wc = &w[c * taps..(c + 1) * taps];
                    if sw == 1 {
                        depthwise_taps(&d, g, |oh, (lo, hi), ih, start, tap| {
                            axpy(&mut plane[ih * d.w + start..ih * d.w + start + hi - lo], wc[tap], &grad[oh * d.ow + lo..oh * d.ow + hi]);
                        });
                    } else {
                        let mut acc = PhaseAcc::new(&d, sw);
                        depthwise_taps(&d, g, |oh, (lo, hi), ih, start, tap| {
                            axpy(acc.run(ih, start, hi - lo), wc[tap], &grad[oh * d.ow + lo..oh * d.ow + hi]);
                        });
                        acc.merge(plane, d.w);
                    }
                });
                dx
            });
            let dw = needs.w.then(|| {
                let mut dw = vec![0.0f32; d.co * taps];
                dw.par_chunks_mut(taps).enumerate().for_each(|(c, acc)| {
                    for n in 0..d.n {
                        let nc = n * d.ci + c;
                        let phases = Phases::split(&x[nc * d.plane_in()..(nc + 1) * d.plane_in()], &d, sw);
                        let grad = &dy[nc * d.plane_out()..(nc + 1) * d.plane_out()];
                        depthwise_taps(&d, g, |oh, (lo, hi), ih, start, tap| {
                            acc[tap] += dot(&grad[oh * d.ow + lo..oh * d.ow + hi], phases.run(ih, start, hi - lo));
                        });
                    }
                });
                dw
            });
            (dx, dw, dbias)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, one output at a time.
    fn naive(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], g: &ConvGeom) -> Vec<f32> {
        let [oh, ow] = g.out_size([xs[2], xs[3]], [ws[2], ws[3]]).expect("fits");
        let cig = ws[1];
        let cog = ws[0] / g.groups;
        let mut y = vec![0.0f32; xs[0] * ws[0] * oh * ow];
        for n in 0..xs[0] {
            for co in 0..ws[0] {
                let grp = co / cog;
                for a in 0..oh {
                    for b in 0..ow {
                        let mut s = 0.0;
                        for cl in 0..cig {
                            let ci = grp * cig + cl;
                            for i in 0..ws[2] {
                                for j in 0..ws[3] {
                                    let ih = (a * g.stride[0] + i * g.dilation[0]) as isize - g.pad_start[0] as isize;
                                    let iw = (b * g.stride[1] + j * g.dilation[1]) as isize - g.pad_start[1] as isize;
                                    if ih >= 0 && iw >= 0 && (ih as usize) < xs[2] && (iw as usize) < xs[3] {
                                        s += x[((n * xs[1] + ci) * xs[2] + ih as usize) * xs[3] + iw as usize] * w[((co * cig + cl) * ws[2] + i) * ws[3] + j];
                                    }
                                }
                            }
                        }
                        y[((n * ws[0] + co) * oh + a) * ow + b] = s;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    #[test]
    fn valid_range_keeps_exactly_the_inputs_inside() {
        for (outs, stride, offset, size) in [(5, 1, -1, 5), (3, 2, -1, 6), (4, 2, 1, 6), (2, 3, -4, 3), (3, 1, 9, 4)] {
            let (lo, hi) = valid_range(outs, stride, offset, size);
            for o in 0..outs {
                let i = (o * stride) as isize + offset;
                assert_eq!((lo..hi).contains(&o), i >= 0 && i < size as isize, "{outs} {stride} {offset} {size}: o = {o}");
            }
        }
    }

    #[test]
    fn every_kind_matches_the_definition_and_its_adjoint() {
        let cases = [
            ([2, 3, 7, 6], [4, 3, 3, 3], ConvGeom { stride: [1, 1], pad_start: [1, 1], pad_end: [1, 1], dilation: [1, 1], groups: 1 }),
            ([2, 3, 8, 9], [5, 3, 3, 3], ConvGeom { stride: [2, 2], pad_start: [0, 1], pad_end: [1, 1], dilation: [1, 1], groups: 1 }),
            ([1, 2, 9, 9], [3, 2, 7, 7], ConvGeom { stride: [2, 2], pad_start: [3, 3], pad_end: [3, 3], dilation: [1, 1], groups: 1 }),
            ([2, 2, 8, 7], [3, 2, 3, 2], ConvGeom { stride: [1, 2], pad_start: [2, 0], pad_end: [0, 1], dilation: [2, 1], groups: 1 }),
            ([3, 5, 4, 6], [7, 5, 1, 1], ConvGeom { stride: [1, 1], pad_start: [0, 0], pad_end: [0, 0], dilation: [1, 1], groups: 1 }),
            ([2, 4, 9, 8], [4, 1, 5, 5], ConvGeom { stride: [2, 2], pad_start: [1, 1], pad_end: [2, 2], dilation: [1, 1], groups: 4 }),
            ([2, 3, 6, 7], [3, 1, 3, 3], ConvGeom { stride: [1, 1], pad_start: [1, 1], pad_end: [1, 1], dilation: [1, 1], groups: 3 }),
            ([1, 2, 5, 5], [2, 1, 3, 3], ConvGeom { stride: [2, 1], pad_start: [0, 2], pad_end: [1, 0], dilation: [1, 2], groups: 2 }),
        ];
        for (xs, ws, g) in cases {
            let kind = g.kind(xs, ws).expect("supported");
            let x = values(xs.iter().product(), 0.7);
            let w = values(ws.iter().product(), 0.3);
            let bias = values(ws[0], 1.3);
            let (y, ys) = forward(&x, xs, &w, ws, Some(&bias), &g);
            let want = naive(&x, xs, &w, ws, &g);
            let plane = ys[2] * ys[3];
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                let b = b + bias[(i / plane) % ws[0]];
                assert!((a - b).abs() < 1e-4, "{kind:?} {xs:?} {ws:?}: y[{i}] {a} vs {b}");
            }
            // Adjoint checks: <dy, conv(dx_probe)> against <backward(dy), probe> for x and w.
            let dy = values(y.len(), 0.17);
            let (dx, dw, db) = backward(&x, xs, &w, ws, &dy, &g, Needs { x: true, w: true, bias: true });
            let (dx, dw, db) = (dx.expect("dx"), dw.expect("dw"), db.expect("db"));
            let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| (*p as f64) * (*q as f64)).sum::<f64>();
            let px = values(x.len(), 0.53);
            let lin_x = naive(&px, xs, &w, ws, &g);
            let pw = values(w.len(), 0.41);
            let lin_w = naive(&x, xs, &pw, ws, &g);
            for (what, lhs, rhs) in [("dx", dot(&dy, &lin_x), dot(&dx, &px)), ("dw", dot(&dy, &lin_w), dot(&dw, &pw))] {
                assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{kind:?} {xs:?} {ws:?} {what}: {lhs} vs {rhs}");
            }
            for (c, v) in db.iter().enumerate() {
                let want: f32 = (0..xs[0]).map(|n| dy[(n * ws[0] + c) * plane..][..plane].iter().sum::<f32>()).sum();
                assert!((v - want).abs() < 1e-4, "db[{c}]");
            }
        }
    }

    #[test]
    fn other_groupings_are_left_to_the_backend() {
        let g = ConvGeom { stride: [1, 1], pad_start: [0, 0], pad_end: [0, 0], dilation: [1, 1], groups: 2 };
        assert_eq!(g.kind([1, 4, 5, 5], [4, 2, 3, 3]), None);
        assert_eq!(g.kind([1, 2, 5, 5], [4, 1, 3, 3]), None, "a channel multiplier of 2");
        let g1 = ConvGeom { groups: 1, ..g };
        assert_eq!(g1.kind([1, 2, 2, 2], [4, 2, 3, 3]), None, "the kernel does not fit");
    }
}
