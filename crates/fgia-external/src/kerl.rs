//! KERL: knowledge-embedded representation learning (§5.3.2, multi-modal data: knowledge).
//!
//! Chen, Lin, Chen, Wu and Luo, "Knowledge-Embedded Representation Learning for Fine-Grained
//! Image Recognition", IJCAI 2018.
//!
//! **Knowledge graph.** Nodes are the `C` classes and the `A` attributes (`|V| = C + A`; on
//! cub-mini 40 + 312). Edges join a class to an attribute only, weighted by the class-attribute
//! score, linearly normalised to `[0, 1]` over the whole matrix: `S ∈ [0, 1]^{C×A}` and
//! `A_c = [[0, S], [Sᵀ, 0]]` (undirected). CUB's class-level attribute percentages are the
//! scores ([`Graph::from_percent`]).
//!
//! **Gated graph network, fed by the image.** A classifier's score vector `s` of the image
//! initialises the nodes: `x_v = [s_v, 0, …, 0]` for class `v`, `x_v = 0` for an attribute,
//! `h_v⁰ = x_v` (hidden size `H`). Then `T` steps of
//!
//! ```text
//! a_v = Σ_u A_c[v, u] h_u + b
//! z_v = σ(W_z a_v + U_z h_v),  r_v = σ(W_r a_v + U_r h_v)
//! h̃_v = tanh(W a_v + U (r_v ⊙ h_v)),  h_v ← (1 − z_v) ⊙ h_v + z_v ⊙ h̃_v
//! ```
//!
//! and the output `o_v = W_o [h_vᵀ; x_v]` (size `O`); the knowledge representation is
//! `f_g = [o_1; …; o_|V|]`.
//!
//! **Graph-guided gates over the regions** (the paper's eq. 6): with `f_ij` the image's feature at
//! location `(i, j)`,
//!
//! ```text
//! f = Σ_ij σ(g([f_ij; f_g])) ⊙ f_ij,   g([f_ij; f_g]) = W_f f_ij + W_g f_g + b
//! ```
//!
//! an element-wise sigmoid gate per location, then sum pooling; a linear layer on `f` gives the
//! class scores, trained with cross-entropy. With `knowledge = false` the gate sees the region
//! alone (`g = W_f f_ij + b`): the paper's "self-guided" ablation.
//!
//! **Deviations.**
//! - The regions are the frozen ImageNet EfficientNet-Lite0's last map (7×7 at 224 px), projected
//!   by a learned 1×1 layer to `region_dim` channels, instead of a fine-tuned compact-bilinear
//!   VGG-16 at 448 px (the projection keeps the CPU cost of the gates small).
//! - `s` comes from a linear classifier on the pooled feature trained jointly (its cross-entropy is
//!   added to the loss) and enters the graph as a softmax with the gradient stopped, instead of
//!   a separately pre-trained classifier.
//! - `H = 10`, `O = 5`, `T = 5` follow a reading of the paper, not its code (none is public).
//!
//! Recipe: `recipes/table3/kerl.toml` (and `recipes/table3/kerl-self-guided.toml`, the ablation).

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax, tanh};
use burn::tensor::backend::AutodiffBackend;
use fgia_train::engine::{ParamGroup, StepLoss, TrainMethod, single_group};
use fgia_train::sources::MapBatch;
use serde::{Deserialize, Serialize};

/// The recipe's `[method.kerl]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KerlSettings {
    /// GGNN hidden size `H`.
    pub hidden: usize,
    /// Output size `O` per node.
    pub out: usize,
    /// Propagation steps `T`.
    pub steps: usize,
    /// Channels of the projected regions.
    pub region_dim: usize,
    /// Whether the gates see the graph (`false`: the self-guided ablation).
    pub knowledge: bool,
}

impl Default for KerlSettings {
    fn default() -> Self {
        KerlSettings { hidden: 10, out: 5, steps: 5, region_dim: 256, knowledge: true }
    }
}

impl KerlSettings {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=256).contains(&self.hidden) || !(1..=256).contains(&self.out) || self.steps > 32 || !(1..=4096).contains(&self.region_dim) {
            return Err(format!(
                "method.kerl: hidden {} and out {} in 1..=256, steps {} at most 32, region_dim {} in 1..=4096",
                self.hidden, self.out, self.steps, self.region_dim
            ));
        }
        Ok(())
    }
}

/// The class-attribute graph: `S` normalised to `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Classes `C`.
    pub classes: usize,
    /// Attributes `A`.
    pub attributes: usize,
    /// `S`, `[C, A]` row-major, in `[0, 1]`.
    pub s: Vec<f32>,
}

impl Graph {
    /// The graph from class-attribute percentages `[C][A]`, normalised linearly by the matrix's
    /// minimum and maximum. An error if the rows differ in length or hold no finite spread.
    pub fn from_percent(percent: &[Vec<f32>]) -> Result<Graph, String> {
        let classes = percent.len();
        let attributes = percent.first().map_or(0, Vec::len);
        if classes == 0 || attributes == 0 || percent.iter().any(|r| r.len() != attributes) {
            return Err(format!("class-attribute scores must be a non-empty {classes} x {attributes} matrix with rows of one length"));
        }
        let flat: Vec<f32> = percent.iter().flatten().copied().collect();
        if flat.iter().any(|v| !v.is_finite()) {
            return Err("class-attribute scores hold a value that is not finite".into());
        }
        let (lo, hi) = flat.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if hi - lo <= 0.0 {
            return Err(format!("class-attribute scores are all {lo}: the graph would have no edges"));
        }
        Ok(Graph { classes, attributes, s: flat.iter().map(|v| (v - lo) / (hi - lo)).collect() })
    }

    /// Nodes `C + A`.
    pub fn nodes(&self) -> usize {
        self.classes + self.attributes
    }

    /// `A_c = [[0, S], [Sᵀ, 0]]`, `[V, V]` row-major.
    pub fn adjacency(&self) -> Vec<f32> {
        let (c, a, v) = (self.classes, self.attributes, self.nodes());
        let mut m = vec![0.0f32; v * v];
        for i in 0..c {
            for j in 0..a {
                let w = self.s[i * a + j];
                m[i * v + c + j] = w;
                m[(c + j) * v + i] = w;
            }
        }
        m
    }
}

/// The gated graph network's weights.
#[derive(Module, Debug)]
pub struct Ggnn<B: Backend> {
    bias: Param<Tensor<B, 1>>,
    w_z: Linear<B>,
    u_z: Linear<B>,
    w_r: Linear<B>,
    u_r: Linear<B>,
    w_h: Linear<B>,
    u_h: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> Ggnn<B> {
    fn new(hidden: usize, out: usize, device: &B::Device) -> Self {
        let l = |i, o| LinearConfig::new(i, o).init(device);
        let nb = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Ggnn {
            bias: Param::from_tensor(Tensor::zeros([hidden], device)),
            w_z: l(hidden, hidden),
            u_z: nb(hidden, hidden),
            w_r: l(hidden, hidden),
            u_r: nb(hidden, hidden),
            w_h: l(hidden, hidden),
            u_h: nb(hidden, hidden),
            out: l(2 * hidden, out),
        }
    }

    /// `T` propagation steps from `x` over the adjacency, then the outputs.
    ///
    /// # Shapes
    /// `x: [N, V, H]`, `adjacency: [V, V]` to `[N, V, O]`.
    pub fn forward(&self, x: Tensor<B, 3>, adjacency: Tensor<B, 2>, steps: usize) -> Tensor<B, 3> {
        let [n, v, _] = x.dims();
        let adj = adjacency.unsqueeze::<3>().expand([n, v, v]); // [N, V, V]
        let mut h = x.clone();
        for _ in 0..steps {
            let a = adj.clone().matmul(h.clone()) + self.bias.val().reshape([1, 1, -1]); // [N, V, H]
            let z = sigmoid(self.w_z.forward(a.clone()) + self.u_z.forward(h.clone()));
            let r = sigmoid(self.w_r.forward(a.clone()) + self.u_r.forward(h.clone()));
            let cand = tanh(self.w_h.forward(a) + self.u_h.forward(r * h.clone()));
            h = z.clone().neg().add_scalar(1.0) * h + z * cand;
        }
        self.out.forward(Tensor::cat(vec![h, x], 2)) // [N, V, O]
    }
}

/// The KERL network on cached region features.
#[derive(Module, Debug)]
pub struct Kerl<B: Backend> {
    /// The score classifier on the pooled feature (initialises the graph).
    pub scorer: Linear<B>,
    /// 1×1 projection of the regions.
    pub project: Linear<B>,
    /// The graph network.
    pub ggnn: Ggnn<B>,
    /// `W_f` (and `b`).
    pub gate_region: Linear<B>,
    /// `W_g`; `None` in the self-guided ablation.
    pub gate_graph: Option<Linear<B>>,
    /// The classifier on `f`.
    pub classify: Linear<B>,
    /// `A_c`, `[V, V]` row-major (a constant).
    pub adjacency: Vec<f32>,
    /// Nodes `V`.
    pub nodes: usize,
    /// Classes `C` (the first `C` nodes).
    pub classes: usize,
    /// The settings' `H`.
    pub hidden: usize,
    /// The settings' `T`.
    pub steps: usize,
}

/// What one forward pass gives.
pub struct KerlOutput<B: Backend> {
    /// KERL's class scores `[N, C]`.
    pub logits: Tensor<B, 2>,
    /// The score classifier's `[N, C]`.
    pub scorer_logits: Tensor<B, 2>,
    /// The mean gate per location `[N, L]` (what the graph lets through where).
    pub gate_map: Tensor<B, 2>,
}

impl<B: Backend> Kerl<B> {
    /// A fresh network for `channels` region channels and `graph`.
    pub fn new(channels: usize, graph: &Graph, s: &KerlSettings, device: &B::Device) -> Self {
        let (c, d) = (graph.classes, s.region_dim);
        Kerl {
            scorer: LinearConfig::new(channels, c).init(device),
            project: LinearConfig::new(channels, d).init(device),
            ggnn: Ggnn::new(s.hidden, s.out, device),
            gate_region: LinearConfig::new(d, d).init(device),
            gate_graph: s.knowledge.then(|| LinearConfig::new(graph.nodes() * s.out, d).with_bias(false).init(device)),
            classify: LinearConfig::new(d, c).init(device),
            adjacency: graph.adjacency(),
            nodes: graph.nodes(),
            classes: c,
            hidden: s.hidden,
            steps: s.steps,
        }
    }

    /// The forward pass on region maps.
    ///
    /// # Shapes
    /// `maps: [N, K, h, w]` (`K` channels) to logits `[N, C]`.
    pub fn forward(&self, maps: Tensor<B, 4>) -> KerlOutput<B> {
        let [n, k, hh, ww] = maps.dims();
        let l = hh * ww;
        let device = maps.device();
        let regions = maps.reshape([n, k, l]).swap_dims(1, 2); // [N, L, K]
        let pooled = regions.clone().mean_dim(1).reshape([n, k]); // [N, K]
        let scorer_logits = self.scorer.forward(pooled);
        let regions = self.project.forward(regions); // [N, L, D]
        let mut pre = self.gate_region.forward(regions.clone()); // [N, L, D]
        if let Some(gate_graph) = &self.gate_graph {
            // x_v = [s_v, 0, ..., 0] for the classes, 0 for the attributes.
            let s = softmax(scorer_logits.clone().detach(), 1).reshape([n, self.classes, 1]); // [N, C, 1]
            let x = Tensor::cat(
                vec![
                    Tensor::cat(vec![s, Tensor::zeros([n, self.classes, self.hidden - 1], &device)], 2),
                    Tensor::zeros([n, self.nodes - self.classes, self.hidden], &device),
                ],
                1,
            ); // [N, V, H]
            let adjacency = Tensor::<B, 2>::from_data(TensorData::new(self.adjacency.clone(), [self.nodes, self.nodes]), &device);
            let o = self.ggnn.forward(x, adjacency, self.steps); // [N, V, O]
            let [_, v, out] = o.dims();
            let fg = gate_graph.forward(o.reshape([n, v * out])); // [N, D]
            pre = pre + fg.unsqueeze_dim::<3>(1);
        }
        let gate = sigmoid(pre); // [N, L, D]
        let gate_map = gate.clone().mean_dim(2).reshape([n, l]); // [N, L]
        let f = (gate * regions).sum_dim(1).reshape([n, self.classify.weight.dims()[0]]); // [N, D]
        KerlOutput { logits: self.classify.forward(f), scorer_logits, gate_map }
    }
}

/// KERL as the engine's method, on cached region maps.
#[derive(Module, Debug)]
pub struct KerlMethod<B: Backend> {
    /// The network.
    pub model: Kerl<B>,
}

impl<B: AutodiffBackend> TrainMethod<B> for KerlMethod<B> {
    type Batch = MapBatch;
    type Input = (Tensor<B, 4>, Tensor<B, 1, Int>, Vec<usize>);

    fn prepare(&self, b: MapBatch, device: &B::Device) -> Self::Input {
        let y = Tensor::from_data(TensorData::new(b.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [b.labels.len()]), device);
        (Tensor::from_data(TensorData::new(b.data, b.shape), device), y, b.labels)
    }

    fn loss(&self, (maps, y, labels): &Self::Input, _: usize) -> StepLoss<B> {
        let out = self.model.forward(maps.clone());
        let host: Vec<f32> = out.logits.clone().into_data().convert::<f32>().to_vec().unwrap_or_default();
        let hits = fgia_core::metrics::argmax_rows(&host, self.model.classes).iter().zip(labels).filter(|(p, l)| p == l).count();
        let ce = CrossEntropyLossConfig::new().init(&maps.device());
        let loss = ce.forward(out.logits, y.clone()) + ce.forward(out.scorer_logits, y.clone());
        StepLoss { loss, hits: Some(hits) }
    }

    fn param_groups(&self, grads: B::Gradients) -> Vec<ParamGroup> {
        single_group(self, grads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;

    #[test]
    fn the_graph_joins_classes_to_attributes_only_with_normalised_scores() {
        let g = Graph::from_percent(&[vec![0.0, 50.0, 100.0], vec![25.0, 25.0, 75.0]]).expect("graph");
        assert_eq!(g.nodes(), 5);
        let m = g.adjacency();
        // Class 0 to attribute 2 (node 4): 100 % -> 1; class 1 to attribute 0 (node 2): 0.25.
        assert_eq!(m[4], 1.0);
        assert_eq!(m[4 * 5], 1.0);
        assert!((m[5 + 2] - 0.25).abs() < 1e-6 && (m[2 * 5 + 1] - 0.25).abs() < 1e-6);
        // No class-class or attribute-attribute edge, and symmetric.
        for i in 0..5 {
            for j in 0..5 {
                assert_eq!(m[i * 5 + j], m[j * 5 + i]);
                if (i < 2) == (j < 2) {
                    assert_eq!(m[i * 5 + j], 0.0, "{i} {j}");
                }
            }
        }
        assert!(Graph::from_percent(&[vec![3.0, 3.0]]).expect_err("flat").contains("no edges"));
        assert!(Graph::from_percent(&[vec![1.0, f32::NAN]]).is_err());
        assert!(Graph::from_percent(&[vec![1.0, 2.0], vec![1.0]]).is_err());
    }

    #[test]
    fn one_ggnn_step_matches_the_equations_by_hand() {
        // Two nodes, H = 1, identity-like weights set by hand: a = A h + b; z = σ(a + h);
        // r = σ(a + h); h̃ = tanh(a + r h); h' = (1 - z) h + z h̃.
        let device = Default::default();
        let mut g = Ggnn::<Flex>::new(1, 1, &device);
        // Linear weights are [in, out] in burn.
        let set = |_: Linear<Flex>, w: f32, b: Option<f32>| -> Linear<Flex> {
            let weight = Param::from_tensor(Tensor::from_data(TensorData::new(vec![w], [1, 1]), &device));
            let bias = b.map(|b| Param::from_tensor(Tensor::from_data(TensorData::new(vec![b], [1]), &device)));
            Linear { weight, bias }
        };
        g.bias = Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32], [1]), &device));
        g.w_z = set(g.w_z, 1.0, Some(0.0));
        g.u_z = set(g.u_z, 1.0, None);
        g.w_r = set(g.w_r, 1.0, Some(0.0));
        g.u_r = set(g.u_r, 1.0, None);
        g.w_h = set(g.w_h, 1.0, Some(0.0));
        g.u_h = set(g.u_h, 1.0, None);
        let x = Tensor::<Flex, 3>::from_data(TensorData::new(vec![0.8f32, 0.0], [1, 2, 1]), &device);
        let adj = Tensor::<Flex, 2>::from_data(TensorData::new(vec![0.0f32, 0.6, 0.6, 0.0], [2, 2]), &device);
        // Compare the hidden state through the output layer set to pick h: out = [1, 0] · [h; x].
        let weight = Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, 0.0], [2, 1]), &device));
        g.out = Linear { weight, bias: None };
        let got: Vec<f32> = g.forward(x, adj, 1).into_data().to_vec().expect("f32");
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let step = |h: f32, a: f32| {
            let a = a + 0.5;
            let z = s(a + h);
            let r = s(a + h);
            let c = (a + r * h).tanh();
            (1.0 - z) * h + z * c
        };
        let want = [step(0.8, 0.6 * 0.0), step(0.0, 0.6 * 0.8)];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn kerl_trains_forward_and_backward_and_the_graph_reaches_the_gates() {
        let device = Default::default();
        let graph = Graph::from_percent(&[vec![90.0, 10.0, 50.0], vec![10.0, 90.0, 50.0]]).expect("graph");
        let settings = KerlSettings { region_dim: 8, ..KerlSettings::default() };
        let model = Kerl::<A>::new(6, &graph, &settings, &device);
        let method = KerlMethod { model };
        let maps: Vec<f32> = (0..2 * 6 * 3 * 3).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
        let input =
            method.prepare(MapBatch { data: maps, shape: [2, 6, 3, 3], labels: vec![0, 1], items: vec![0, 1], skipped: 0, geometry: Vec::new() }, &device);
        let out = method.model.forward(input.0.clone());
        assert_eq!(out.logits.dims(), [2, 2]);
        assert_eq!(out.gate_map.dims(), [2, 9]);
        let loss = method.loss(&input, 0).loss;
        let v: f32 = loss.clone().into_scalar();
        assert!(v.is_finite() && v > 0.0, "{v}");
        let grads = loss.backward();
        // The graph's output layer and W_g receive gradient; the scorer too (its own loss).
        let gg = method.model.gate_graph.as_ref().expect("knowledge").weight.grad(&grads).expect("W_g grad");
        let go = method.model.ggnn.out.weight.grad(&grads).expect("GGNN grad");
        let sum = |t: Tensor<Flex, 2>| t.abs().sum().into_scalar();
        assert!(sum(gg) > 0.0 && sum(go) > 0.0);
        assert!(method.model.scorer.weight.grad(&grads).is_some());
        // The self-guided ablation has no graph path.
        let ablation = Kerl::<A>::new(6, &graph, &KerlSettings { knowledge: false, region_dim: 8, ..KerlSettings::default() }, &device);
        assert!(ablation.gate_graph.is_none());
        assert_eq!(ablation.forward(input.0).logits.dims(), [2, 2]);
    }
}
