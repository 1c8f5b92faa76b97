//! Data parallelism over devices, inside the one engine ([`crate::engine::train`]).
//!
//! With `n > 1` devices, every batch is split into `n` contiguous chunks (sizes differing by at
//! most one, [`chunk_sizes`]). One worker thread per device holds a replica: at each optimiser
//! step it forks the current model onto its device, computes the method's loss on its chunk,
//! backpropagates, scales its gradients by its share `n_i / N` of the batch and moves them to the
//! main device. The engine sums the shares in device order, clips and steps once, on the main
//! device; the next step forks the updated model again, so the replicas never drift.
//!
//! For a loss that is a mean over the items of the batch, `Σ_i (n_i/N) ∇L_i = ∇L`: the same
//! update as one device with the same global batch, up to floating-point order. Two things are
//! per replica by design, as in PyTorch's `DistributedDataParallel`:
//!
//! - **batch-norm statistics** in training are computed over each replica's chunk, not
//!   synchronised over the global batch. The running averages are burn's [`RunningState`]s,
//!   shared by the replicas and averaged over them (each worker thread keeps its own slot).
//!   [`BATCH_NORM_POLICY`] says so in every data-parallel record;
//! - **in-batch terms** (pairs, triplets, N-pair and proxy interactions, DCL's and PMG's shuffles)
//!   only see the items of their own chunk.
//!
//! A worker is a thread for the whole run (not one per step), so that burn's per-thread slots of
//! the running states stay stable.
//!
//! **Determinism.** Dropout and drop-connect draw from the backend's generator, which is one per
//! process on the CPU, and the running states are shared by the replicas. So the replicas take
//! their forward passes in turn, in device order (`Turn`): each seeds its device from the step's
//! seed and its index, forks, prepares and runs the forward pass, then hands the turn on. The
//! backward passes, which hold most of the work, run at the same time. The engine draws every
//! lazily initialised parameter before the first step (`engine::materialize`): a fork of an
//! unused parameter would draw its own values on each replica. The same seed then gives the same
//! run, replica for replica.
//!
//! [`RunningState`]: burn::module::RunningState

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;

use burn::module::AutodiffModule;
use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use burn::tensor::backend::{AutodiffBackend, DeviceId};

use crate::clip::scale_gradients;
use crate::engine::{HostBatch, ParamGroup, TrainMethod};

/// How batch norm behaves under data parallelism, for the record.
pub const BATCH_NORM_POLICY: &str =
    "batch-norm statistics per replica (each normalises over its own chunk; not synchronised), running averages averaged over the replicas";

/// A device holding one replica: its index among the devices of its kind, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDevice {
    /// Index (`cuda:1` is 1; every CPU replica is 0).
    pub index: u16,
    /// Name for the record (`cuda:1`, `cpu`).
    pub name: String,
}

/// The protocol line of a run on `devices` (device names), or `None` for one device.
pub fn describe(devices: &[String]) -> Option<String> {
    (devices.len() > 1).then(|| {
        format!(
            "data parallel over {} replicas ({}): each batch split into contiguous chunks, gradients weighted by the chunk's share and summed, one optimiser step; {BATCH_NORM_POLICY}; in-batch pair and triplet terms within each chunk",
            devices.len(),
            devices.join(", ")
        )
    })
}

/// The devices of a run: `main` alone, or the devices with the indices `replicas` of `main`'s
/// kind (`cuda:0, cuda:1`; on the CPU, replicas of the one CPU device).
pub fn replica_devices<B: Backend>(main: &B::Device, replicas: &[u16]) -> Vec<B::Device> {
    if replicas.len() < 2 {
        return vec![main.clone()];
    }
    let kind = main.to_id().type_id;
    replicas.iter().map(|&index_id| B::Device::from_id(DeviceId { type_id: kind, index_id })).collect()
}

/// Sizes of `parts` contiguous chunks of `n` items, in order, the first `n % parts` one larger;
/// never a chunk of fewer than 2 items (batch norm needs two), so fewer chunks for small batches.
pub fn chunk_sizes(n: usize, parts: usize) -> Vec<usize> {
    let parts = parts.min(n / 2).max(1);
    (0..parts).map(|i| n / parts + usize::from(i < n % parts)).collect()
}

/// Splits row-major `data` of `sizes.iter().sum()` items of `per` values each into chunks.
pub fn split_rows<T: Clone>(data: &[T], per: usize, sizes: &[usize]) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &s in sizes {
        out.push(data[at * per..(at + s) * per].to_vec());
        at += s;
    }
    out
}

/// Splits a per-item list into chunks of `sizes` (an empty list stays empty in every chunk).
pub fn split_items<T: Clone>(items: &[T], sizes: &[usize]) -> Vec<Vec<T>> {
    if items.is_empty() {
        return vec![Vec::new(); sizes.len()];
    }
    split_rows(items, 1, sizes)
}

/// One step's work for a replica.
struct Job<M, H> {
    method: M,
    /// The replica's chunk at the first step of a batch; later steps reuse its prepared input.
    chunk: Option<H>,
    step: usize,
    weight: f64,
    /// The step's seed, mixed with the replica's index by the worker.
    seed: u64,
}

/// Whose forward pass it is: replica `i` runs its forward pass when the count is `i`.
#[derive(Default)]
struct Turn {
    next: Mutex<usize>,
    moved: Condvar,
}

impl Turn {
    fn reset(&self) {
        *self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = 0;
    }

    /// Runs `f` when it is replica `i`'s turn, then hands the turn on (also when `f` panics, so
    /// that the other replicas never wait for a turn that cannot come).
    fn take<T>(&self, i: usize, f: impl FnOnce() -> T) -> T {
        let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *next != i {
            next = self.moved.wait(next).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let _handover = Handover { turn: self, next, to: i + 1 };
        f()
    }
}

/// Hands the turn to replica `to` when dropped.
struct Handover<'a> {
    turn: &'a Turn,
    next: std::sync::MutexGuard<'a, usize>,
    to: usize,
}

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        *self.next = self.to;
        self.turn.moved.notify_all();
    }
}

/// The seed of replica `replica` at a step with seed `step_seed` (SplitMix64's finaliser).
pub fn replica_seed(step_seed: u64, replica: usize) -> u64 {
    let mut z = step_seed ^ (replica as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a replica sends back: its weighted gradients on the main device, its weighted loss and
/// its hits; or what was not finite.
type Reply = Result<(Vec<ParamGroup>, f64, Option<usize>), (&'static str, f64)>;

/// The replicas of a run, one worker thread each.
pub struct Replicas<M, H> {
    workers: Vec<(Sender<Job<M, H>>, Receiver<Reply>)>,
    /// Each active replica's share of the current batch.
    weights: Vec<f64>,
    turn: Arc<Turn>,
}

impl<M, H: HostBatch> Replicas<M, H> {
    /// Starts one worker per device in `scope`; gradients are gathered on `main`.
    pub fn spawn<'scope, B>(scope: &'scope Scope<'scope, '_>, devices: &[B::Device], main: &B::Device) -> Self
    where
        B: AutodiffBackend,
        M: TrainMethod<B, Batch = H> + 'scope,
        H: 'scope,
    {
        let turn = Arc::new(Turn::default());
        let workers = devices
            .iter()
            .enumerate()
            .map(|(index, device)| {
                let (job_tx, job_rx) = channel::<Job<M, H>>();
                let (reply_tx, reply_rx) = channel::<Reply>();
                let (device, main, turn) = (device.clone(), main.clone(), turn.clone());
                scope.spawn(move || worker::<B, M>(Worker { index, device, main, turn }, job_rx, reply_tx));
                (job_tx, reply_rx)
            })
            .collect();
        Replicas { workers, weights: Vec::new(), turn }
    }

    /// Replicas of the run.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// One optimiser step `step` of `method` over the replicas: for `step == 0`, `batch` is split
    /// and handed out first. `seed` seeds the replicas' generators (each mixes in its index).
    /// Returns the summed groups (in the method's group order), the batch's loss and hits.
    pub fn step<B>(&mut self, method: &M, batch: Option<H>, step: usize, seed: u64) -> Reply
    where
        B: AutodiffBackend,
        M: TrainMethod<B, Batch = H>,
    {
        let mut chunks: Vec<Option<H>> = match batch {
            Some(b) => {
                let n = b.len();
                let sizes = chunk_sizes(n, self.workers.len());
                self.weights = sizes.iter().map(|&s| s as f64 / n as f64).collect();
                b.split(&sizes).into_iter().map(Some).collect()
            }
            None => (0..self.weights.len()).map(|_| None).collect(),
        };
        self.turn.reset();
        for (i, w) in self.weights.iter().enumerate() {
            let job = Job { method: method.clone(), chunk: chunks[i].take(), step, weight: *w, seed };
            if self.workers[i].0.send(job).is_err() {
                return Err(("replica (its worker stopped)", f64::NAN));
            }
        }
        let mut merged: Vec<(ParamGroup, GradientsAccumulator<M>)> = Vec::new();
        let (mut loss, mut hits, mut failed) = (0.0, Some(0usize), None);
        for i in 0..self.weights.len() {
            let reply = self.workers[i].1.recv().unwrap_or(Err(("replica (its worker stopped)", f64::NAN)));
            match reply {
                Err(e) => failed = failed.or(Some(e)),
                Ok((groups, l, h)) => {
                    loss += l;
                    hits = hits.zip(h).map(|(a, b)| a + b);
                    if merged.is_empty() {
                        merged = groups
                            .into_iter()
                            .map(|g| (ParamGroup { name: g.name, lr_mult: g.lr_mult, grads: Default::default() }, acc(method, g.grads)))
                            .collect();
                    } else {
                        for ((_, a), g) in merged.iter_mut().zip(groups) {
                            a.accumulate::<B>(method, g.grads);
                        }
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let groups = merged.into_iter().map(|(mut g, mut a)| {
            g.grads = a.grads();
            g
        });
        Ok((groups.collect(), loss, hits))
    }
}

fn acc<B: AutodiffBackend, M: AutodiffModule<B>>(method: &M, grads: burn::optim::GradientsParams) -> GradientsAccumulator<M> {
    let mut a = GradientsAccumulator::new();
    a.accumulate::<B>(method, grads);
    a
}

/// A worker's place: its index among the replicas, its device, the main device and the turn.
struct Worker<D> {
    index: usize,
    device: D,
    main: D,
    turn: Arc<Turn>,
}

fn worker<B: AutodiffBackend, M: TrainMethod<B>>(w: Worker<B::Device>, jobs: Receiver<Job<M, M::Batch>>, replies: Sender<Reply>) {
    let (device, main) = (&w.device, &w.main);
    let mut input: Option<M::Input> = None;
    for job in jobs {
        // The forward pass in turn (the module docs say why); the backward pass at once.
        let forward = w.turn.take(w.index, || {
            B::seed(device, replica_seed(job.seed, w.index));
            let replica = job.method.fork(device);
            if let Some(chunk) = job.chunk {
                input = Some(replica.prepare(chunk, device));
            }
            let out = input.as_ref().map(|x| replica.loss(x, job.step));
            (replica, out)
        });
        let reply = match forward {
            (_, None) => Err(("replica input (a step before the batch's first)", f64::NAN)),
            (replica, Some(out)) => {
                let value: f64 = out.loss.clone().into_scalar().elem();
                if value.is_finite() {
                    let mut groups = replica.param_groups(out.loss.backward());
                    for g in &mut groups {
                        scale_gradients::<B, M>(&replica, &mut g.grads, job.weight);
                        g.grads = std::mem::take(&mut g.grads).to_device::<B, M>(main, &replica);
                    }
                    Ok((groups, value * job.weight, out.hits))
                } else {
                    Err(("loss", value))
                }
            }
        };
        if replies.send(reply).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{BatchSource, EngineSpec, LrSchedule, OptimizerSpec, RunIo, Sampler, StepLoss, Trained, train};
    use crate::error::TrainError;
    use crate::sources::MapBatch;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
    use burn::optim::GradientsParams;

    type A = Autodiff<Flex>;

    /// A two-layer classifier over `[n, 3, 2, 2]` inputs, in two parameter groups (the body at a
    /// tenth of the learning rate); the loss is the batch mean of the cross-entropy.
    #[derive(burn::module::Module, Debug)]
    struct Mlp<B: Backend> {
        body: Linear<B>,
        drop: Dropout,
        head: Linear<B>,
    }

    impl TrainMethod<A> for Mlp<A> {
        type Batch = MapBatch;
        type Input = (Tensor<A, 2>, Tensor<A, 1, Int>);
        fn prepare(&self, b: MapBatch, device: &burn_flex::FlexDevice) -> Self::Input {
            let n = b.labels.len();
            let x = Tensor::<A, 1>::from_floats(b.data.as_slice(), device).reshape([n, 12]);
            let y = Tensor::<A, 1, Int>::from_ints(b.labels.iter().map(|&l| l as i64).collect::<Vec<_>>().as_slice(), device);
            (x, y)
        }
        fn loss(&self, (x, y): &Self::Input, _: usize) -> StepLoss<A> {
            let logits = self.head.forward(self.drop.forward(burn::tensor::activation::relu(self.body.forward(x.clone()))));
            StepLoss { loss: CrossEntropyLossConfig::new().init(&x.device()).forward(logits, y.clone()), hits: Some(0) }
        }
        fn param_groups(&self, mut grads: <A as AutodiffBackend>::Gradients) -> Vec<ParamGroup> {
            vec![
                ParamGroup { name: "body", lr_mult: 0.1, grads: GradientsParams::from_module(&mut grads, &self.body) },
                ParamGroup { name: "head", lr_mult: 1.0, grads: GradientsParams::from_module(&mut grads, &self.head) },
            ]
        }
    }

    /// 21 fixed items of 12 values in 4 classes.
    struct Fixed {
        data: Vec<f32>,
        labels: Vec<usize>,
    }

    impl BatchSource for Fixed {
        type Batch = MapBatch;
        fn labels(&self) -> &[usize] {
            &self.labels
        }
        fn load(&self, _: usize, _: usize, items: &[usize]) -> Result<MapBatch, TrainError> {
            let data = items.iter().flat_map(|&i| self.data[i * 12..(i + 1) * 12].iter().copied()).collect();
            let labels = items.iter().map(|&i| self.labels[i]).collect();
            Ok(MapBatch { data, shape: [items.len(), 3, 2, 2], labels, items: items.to_vec(), skipped: 0, geometry: Vec::new() })
        }
    }

    fn weights(m: &Mlp<A>) -> Vec<f32> {
        [m.body.weight.val(), m.head.weight.val()]
            .into_iter()
            .flat_map(|w| w.into_data().to_vec::<f32>().unwrap_or_default())
            .chain([m.body.bias.as_ref(), m.head.bias.as_ref()].into_iter().flatten().flat_map(|b| b.val().into_data().to_vec::<f32>().unwrap_or_default()))
            .collect()
    }

    fn train_on(replicas: Vec<u16>, init: &Mlp<A>, source: &Fixed) -> Vec<f32> {
        let dir = tempfile::tempdir().expect("temp dir");
        // One epoch of 3 batches of 7 (split 4 + 3 over two replicas): 3 optimiser steps.
        let spec = EngineSpec {
            epochs: 1,
            lr: 0.5,
            optimizer: OptimizerSpec::Sgd { momentum: 0.9, nesterov: false, weight_decay: 1e-3 },
            schedule: LrSchedule::cosine(),
            clip_grad_norm: 0.8,
            seed: 3,
            sampler: Sampler::Shuffled { batch_size: 7 },
        };
        let io = RunIo { run_dir: dir.path().to_path_buf(), resume: false, progress: false, label: "mlp".into(), stop_after_epochs: None, replicas };
        match train::<A, _, _>(&spec, &io, init.clone(), source, None, &Default::default()).expect("trains") {
            Trained::Finished { method, epochs, .. } => {
                assert_eq!(epochs.len(), 1);
                weights(&method)
            }
            Trained::Stopped { .. } => panic!("not stopped"),
        }
    }

    #[test]
    fn two_replicas_match_one_device_with_the_same_global_batch() {
        let device = Default::default();
        let init =
            Mlp::<A> { body: LinearConfig::new(12, 16).init(&device), drop: DropoutConfig::new(0.0).init(), head: LinearConfig::new(16, 4).init(&device) };
        let mut rng = fgia_core::rng::SplitMix64::new(11);
        let source = Fixed { data: (0..21 * 12).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect(), labels: (0..21).map(|i| i % 4).collect() };
        let before = weights(&init);
        let one = train_on(Vec::new(), &init, &source);
        let two = train_on(vec![0, 0], &init, &source);
        let moved = one.iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let diff = one.iter().zip(&two).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("data parallel, 3 steps: weights moved up to {moved:.3e}; 2 replicas vs 1 device, largest weight difference {diff:.3e}");
        assert!(moved > 1e-3, "the steps changed the weights ({moved})");
        assert!(diff < 1e-5, "2 replicas differ from 1 device by {diff}");
    }

    #[test]
    fn data_parallel_runs_with_dropout_repeat_exactly() {
        // Dropout draws from the backend's one generator: the replicas take their forward passes
        // in turn, each from its own seed, so every run is the same.
        let device = Default::default();
        let init =
            Mlp::<A> { body: LinearConfig::new(12, 16).init(&device), drop: DropoutConfig::new(0.5).init(), head: LinearConfig::new(16, 4).init(&device) };
        let mut rng = fgia_core::rng::SplitMix64::new(12);
        let source = Fixed { data: (0..21 * 12).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect(), labels: (0..21).map(|i| i % 4).collect() };
        let first = train_on(vec![0, 0], &init, &source);
        for run in 1..6 {
            assert_eq!(train_on(vec![0, 0], &init, &source), first, "run {run} differs");
        }
        assert_ne!(replica_seed(7, 0), replica_seed(7, 1));
        assert_ne!(replica_seed(7, 0), replica_seed(8, 0));
    }

    #[test]
    fn a_panicking_forward_pass_still_hands_the_turn_on() {
        let turn = Arc::new(Turn::default());
        let t = turn.clone();
        let first = std::thread::spawn(move || t.take(0, || panic!("forward pass failed")));
        assert!(first.join().is_err());
        // Replica 1 gets its turn instead of waiting for ever.
        assert_eq!(turn.take(1, || 42), 42);
    }

    #[test]
    fn chunks_cover_the_batch_and_keep_two_items_each() {
        assert_eq!(chunk_sizes(16, 2), vec![8, 8]);
        assert_eq!(chunk_sizes(7, 2), vec![4, 3]);
        assert_eq!(chunk_sizes(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(chunk_sizes(3, 2), vec![3], "a chunk of one item would break batch norm");
        assert_eq!(chunk_sizes(5, 1), vec![5]);
        let rows: Vec<u32> = (0..14).collect();
        let parts = split_rows(&rows, 2, &[4, 3]);
        assert_eq!(parts, vec![(0..8).collect::<Vec<_>>(), (8..14).collect()]);
        assert_eq!(split_items::<u8>(&[], &[2, 2]), vec![Vec::<u8>::new(), Vec::new()]);
        assert_eq!(describe(&["cpu".into()]), None);
        assert!(describe(&["cuda:0".into(), "cuda:1".into()]).is_some_and(|d| d.contains("2 replicas (cuda:0, cuda:1)") && d.contains("per replica")));
    }
}
