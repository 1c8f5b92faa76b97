//! `fgia check-device`: every backbone and pooling operator, forward and backward, on the
//! `--device` backend against burn-flex on the CPU with the same weights and inputs; then a timed
//! training step per backbone. Writes an [`EnvironmentReport`] that `cargo xtask report` shows
//! on its environment page. `cargo xtask gpu-check` runs it on CUDA.
//!
//! Agreement is `max |device - cpu| / max |cpu|` over the whole output (forward: a backbone's
//! last feature map, a pooling operator's descriptor) and over the gradient with respect to the
//! input (backward, through every layer); [`TOLERANCE`] holds it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use fgia_core::record::{DeviceAgreement, EnvironmentReport, StepTiming};
use fgia_encoding::pooling::compact_bilinear::RandomMaclaurin;
use fgia_encoding::pooling::grouped_bilinear::GroupedBilinear;
use fgia_encoding::pooling::hbp::HierarchicalBilinear;
use fgia_encoding::pooling::isqrt_cov::{ITERATIONS, Reduction, isqrt_cov};
use fgia_encoding::pooling::kernel_pooling::KernelPooling;
use fgia_encoding::pooling::lrbp::LowRankBilinear;
use fgia_encoding::pooling::tensor_sketch::TensorSketch;
use fgia_encoding::pooling::{bcnn::bilinear_pool, mpn_cov::mpn_cov};
use fgia_nn::efficientnet::EfficientNetLiteConfig;
use fgia_nn::{BackboneKind, Network, NetworkConfig};

/// Largest relative difference accepted, forward and backward (f32 on both sides; the GPU's
/// reductions and convolution algorithms sum in other orders).
pub const TOLERANCE: f64 = 2e-3;

/// The check's options.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// JSON report to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Small inputs (64 px, batch 2) and one timed step: a quick test of the check itself.
    #[arg(long)]
    pub quick: bool,
    /// Input sides of the timed training step.
    #[arg(long, value_delimiter = ',', default_value = "224,448")]
    pub sides: Vec<usize>,
    /// Batch of the timed training step.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
}

type Cpu = Autodiff<Flex>;

/// The CPU module `src` with its parameters materialised, and `dst` (the same architecture on
/// the device) holding the same values. burn initialises parameters lazily, and each clone of a
/// module whose parameters are not materialised yet draws its own: `fork` materialises them.
fn twin<B: Backend, M1: Module<Cpu>, M2: Module<B>>(src: M1, dst: M2, device: &B::Device) -> Result<(M1, M2)> {
    let src = src.fork(&Default::default());
    let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let bytes = Recorder::<Cpu>::record(&rec, src.clone().into_record(), ()).context("serialising the CPU module")?;
    let record: M2::Record = Recorder::<B>::load(&rec, bytes, device).context("loading the module on the device")?;
    Ok((src, dst.load_record(record)))
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// `max |a - b| / max |b|`.
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-12);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale
}

fn input_data(shape: [usize; 4], seed: u64) -> Vec<f32> {
    let mut g = fgia_core::rng::SplitMix64::new(seed);
    (0..shape.iter().product::<usize>()).map(|_| g.next_f64() as f32).collect()
}

/// A backbone without random layers in training mode: EfficientNet-Lite0's drop-connect would
/// draw different masks on the two sides (every other layer is kept).
fn deterministic<B: Backend>(kind: BackboneKind, device: &B::Device) -> Network<B> {
    match kind {
        BackboneKind::EfficientNetLite0 => {
            Network::EfficientNetLite(EfficientNetLiteConfig::new().with_num_classes(200).with_drop_connect(0.0).with_dropout(0.0).init(device))
        }
        _ => NetworkConfig::new(kind).with_num_classes(200).init(device),
    }
}

/// Forward output and input gradient of `f` on `x` (the gradient of the output's weighted sum,
/// so that every output element matters).
fn forward_backward<B: AutodiffBackend, const D: usize>(
    x: Vec<f32>,
    shape: [usize; 4],
    device: &B::Device,
    f: impl Fn(Tensor<B, 4>) -> Tensor<B, D>,
) -> (Vec<f32>, Vec<f32>) {
    let x = Tensor::<B, 4>::from_data(TensorData::new(x, shape), device).require_grad();
    let y = f(x.clone());
    let dims = y.dims();
    let mut g = fgia_core::rng::SplitMix64::new(9);
    let w: Vec<f32> = (0..dims.iter().product::<usize>()).map(|_| g.next_f64() as f32 - 0.5).collect();
    let w = Tensor::<B, D>::from_data(TensorData::new(w, dims), device);
    let grads = (y.clone() * w).sum().backward();
    let g = x.grad(&grads).map(to_vec).unwrap_or_default();
    (to_vec(y), g)
}

fn agreement(name: String, kind: &str, shape: [usize; 4], dev: (Vec<f32>, Vec<f32>), cpu: (Vec<f32>, Vec<f32>)) -> DeviceAgreement {
    let (f, b) = (rel_diff(&dev.0, &cpu.0), rel_diff(&dev.1, &cpu.1));
    DeviceAgreement {
        name,
        kind: kind.into(),
        shape: shape.to_vec(),
        forward_rel: f,
        backward_rel: b,
        tolerance: TOLERANCE,
        pass: f <= TOLERANCE && b <= TOLERANCE,
    }
}

/// The pooling operators of `fgia-encoding`, at one shape, on one backend.
struct Poolings<B: Backend> {
    rm: RandomMaclaurin<B>,
    ts: TensorSketch,
    hbp: HierarchicalBilinear<B>,
    kp: KernelPooling<B>,
    lrbp: (Reduction<B>, LowRankBilinear<B>),
    reduce: Reduction<B>,
    grouped: GroupedBilinear<B>,
}

const POOLINGS: [&str; 9] = ["bcnn", "compact-bilinear-ts", "compact-bilinear-rm", "hbp", "kernel-pooling", "lrbp", "isqrt-cov", "mpn-cov", "grouped-bilinear"];

impl<B: Backend> Poolings<B> {
    fn new(c: usize, device: &B::Device) -> Self {
        Poolings {
            rm: RandomMaclaurin::new(c, 2048, 1, device),
            ts: TensorSketch::new(c, 2048, 1),
            hbp: HierarchicalBilinear::new(&[c, c, c], 1024, device),
            kp: KernelPooling::new(c, 1024, 3, 1e-3, 1, device),
            lrbp: (Reduction::new(c, 32, device), LowRankBilinear::new(32, 20, 4, device)),
            reduce: Reduction::new(c, 64.min(c), device),
            grouped: GroupedBilinear::new(c, 8, 16, device),
        }
    }

    /// The CPU operators and their twins on `device`, with the same parameters.
    fn twins(c: usize, device: &B::Device) -> Result<(Poolings<Cpu>, Self)> {
        let (cpu, d) = (Poolings::<Cpu>::new(c, &Default::default()), Self::new(c, device));
        let (hbp, d_hbp) = twin(cpu.hbp, d.hbp, device)?;
        let (kp, d_kp) = twin(cpu.kp, d.kp, device)?;
        let (l0, d_l0) = twin(cpu.lrbp.0, d.lrbp.0, device)?;
        let (l1, d_l1) = twin(cpu.lrbp.1, d.lrbp.1, device)?;
        let (reduce, d_reduce) = twin(cpu.reduce, d.reduce, device)?;
        let (grouped, d_grouped) = twin(cpu.grouped, d.grouped, device)?;
        Ok((
            // The random-Maclaurin projections and the sketch are drawn from the seed on the
            // host: the same on both.
            Poolings { rm: cpu.rm, ts: cpu.ts, hbp, kp, lrbp: (l0, l1), reduce, grouped },
            Poolings { rm: d.rm, ts: d.ts, hbp: d_hbp, kp: d_kp, lrbp: (d_l0, d_l1), reduce: d_reduce, grouped: d_grouped },
        ))
    }

    fn run(&self, op: &str, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match op {
            "bcnn" => bilinear_pool(x),
            "compact-bilinear-ts" => self.ts.forward(x),
            "compact-bilinear-rm" => self.rm.forward(x),
            "hbp" => self.hbp.forward(vec![x.clone(), x.clone(), x]),
            "kernel-pooling" => self.kp.forward(x),
            "lrbp" => self.lrbp.1.forward(self.lrbp.0.forward(x)),
            "isqrt-cov" => isqrt_cov(self.reduce.forward(x), ITERATIONS),
            "mpn-cov" => mpn_cov(self.reduce.forward(x), 0.5),
            _ => self.grouped.pool(self.grouped.group(x)),
        }
    }
}

/// Median seconds of `timed` training steps (forward, cross-entropy, backward, SGD with momentum)
/// after two warm-up steps, synchronised with the device at the end of each.
fn step_time<B: AutodiffBackend>(kind: BackboneKind, side: usize, batch: usize, timed: usize, device: &B::Device) -> f64 {
    let mut net: Network<B> = NetworkConfig::new(kind).with_num_classes(200).init(device);
    let mut optim = SgdConfig::new().with_momentum(Some(MomentumConfig::new().with_momentum(0.9))).init::<B, Network<B>>();
    let x = Tensor::<B, 4>::from_data(TensorData::new(input_data([batch, 3, side, side], 5), [batch, 3, side, side]), device);
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new((0..batch as i64).map(|i| i % 200).collect::<Vec<_>>(), [batch]), device);
    let ce = CrossEntropyLossConfig::new().init(device);
    let mut times = Vec::new();
    for i in 0..timed + 2 {
        let t = Instant::now();
        let loss = ce.forward(net.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(0.01, net, grads);
        let _ = B::sync(device);
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs the check on backend `B` (`device`, named `device_name`) and writes the report.
pub fn check_device<B: Backend>(a: CheckArgs, device: B::Device, device_name: String) -> Result<()> {
    type Dev<B> = Autodiff<B>;
    let cpu_device = Default::default();
    let (side, batch) = if a.quick { (64, 2) } else { (224, 4) };
    let mut checks = Vec::new();
    for kind in BackboneKind::ALL {
        let (cpu_net, dev_net) = twin::<Dev<B>, _, _>(deterministic::<Cpu>(kind, &cpu_device), deterministic::<Dev<B>>(kind, &device), &device)?;
        let shape = [batch, 3, side, side];
        let x = input_data(shape, 1);
        // The trunk's feature map: every convolution and batch norm.
        let c = forward_backward::<Cpu, 4>(x.clone(), shape, &cpu_device, |x| cpu_net.features(x));
        let d = forward_backward::<Dev<B>, 4>(x, shape, &device, |x| dev_net.features(x));
        let row = agreement(kind.name().into(), "backbone trunk (training mode)", shape, d, c);
        eprintln!("{:<22} forward {:.2e}  backward {:.2e}  {}", row.name, row.forward_rel, row.backward_rel, if row.pass { "ok" } else { "DIFFERS" });
        checks.push(row);
    }
    let shape = if a.quick { [2, 32, 7, 7] } else { [4, 256, 14, 14] };
    let (cpu_pool, dev_pool) = Poolings::<Dev<B>>::twins(shape[1], &device)?;
    let x = input_data(shape, 2);
    for op in POOLINGS {
        let c = forward_backward::<Cpu, 2>(x.clone(), shape, &cpu_device, |x| cpu_pool.run(op, x.abs()));
        let d = forward_backward::<Dev<B>, 2>(x.clone(), shape, &device, |x| dev_pool.run(op, x.abs()));
        let row = agreement(op.into(), "pooling", shape, d, c);
        eprintln!("{:<22} forward {:.2e}  backward {:.2e}  {}", row.name, row.forward_rel, row.backward_rel, if row.pass { "ok" } else { "DIFFERS" });
        checks.push(row);
    }
    let (sides, batch, timed) = if a.quick { (vec![64], 2, 1) } else { (a.sides.clone(), a.batch, 5) };
    let mut timings = Vec::new();
    for kind in BackboneKind::ALL {
        for &s in &sides {
            let secs = step_time::<Dev<B>>(kind, s, batch, timed, &device);
            eprintln!("{:<22} {s} px, batch {batch}: {:.1} ms per training step ({:.1} images/s)", kind.name(), secs * 1e3, batch as f64 / secs);
            timings.push(StepTiming { backbone: kind.name().into(), side: s, batch, median_ms: secs * 1e3, images_per_s: batch as f64 / secs, steps: timed });
        }
    }
    let report = EnvironmentReport {
        device: device_name,
        reference: "burn-flex on the CPU, same weights and inputs".into(),
        burn_version: fgia_train::BURN_VERSION.into(),
        git_revision: crate::commands::git_revision(),
        created_utc: fgia_core::record::now_utc_rfc3339(),
        quick: a.quick,
        checks,
        timings,
    };
    fgia_core::record::write_json_atomic(&a.out, &report)?;
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.pass).map(|c| c.name.as_str()).collect();
    println!("wrote {} ({} checks, {} failed; {} timings)", a.out.display(), report.checks.len(), failed.len(), report.timings.len());
    if !failed.is_empty() {
        anyhow::bail!("the device differs from the CPU beyond {TOLERANCE} on: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_moved_by_its_record_computes_what_its_twin_computes() {
        let dev = Default::default();
        let config = NetworkConfig::new(BackboneKind::ResNet18).with_num_classes(5).with_width_div(16);
        let (a, b) = twin::<Cpu, _, _>(config.init::<Cpu>(&dev), config.init::<Cpu>(&dev), &dev).expect("moves");
        struct Sum(Vec<f64>);
        impl<B: Backend> burn::module::ModuleVisitor<B> for Sum {
            fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
                self.0.push(p.val().sum().into_scalar().elem::<f64>());
            }
        }
        let (mut sa, mut sb) = (Sum(Vec::new()), Sum(Vec::new()));
        a.visit(&mut sa);
        b.visit(&mut sb);
        assert_eq!(sa.0, sb.0, "parameters");
        let shape = [2, 3, 32, 32];
        let x = input_data(shape, 1);
        let (ya, ga) = forward_backward::<Cpu, 2>(x.clone(), shape, &dev, |x| a.forward(x));
        let (ya2, _) = forward_backward::<Cpu, 2>(x.clone(), shape, &dev, |x| a.forward(x));
        assert_eq!(rel_diff(&ya, &ya2), 0.0, "a itself");
        let (yb, gb) = forward_backward::<Cpu, 2>(x, shape, &dev, |x| b.forward(x));
        assert_eq!(rel_diff(&ya, &yb), 0.0, "{:?} {:?}", &ya[..3], &yb[..3]);
        assert_eq!(rel_diff(&ga, &gb), 0.0);
    }
}
