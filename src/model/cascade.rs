//! The head cascade: backbone features -> view, make and model probabilities.
//!
//! Each head is a small MLP (Linear -> ReLU -> Dropout -> Linear -> softmax) on the
//! flattened features. The tree starts with a view head; each view leads to a make
//! head, each (view, make) to a model head. The idea this follows switched heads by
//! the previous head's answer; we run every head that some image in the batch may
//! reach (see [`SKIP_BELOW`]) and keep two readings:
//!
//! - the greedy path, the answer of the head that the previous answer selects, which is
//!   what a person reading `classify` output expects, and
//! - the probability of every leaf (view, make, model) as the product of conditionals
//!   along its branch, from which marginals follow: P(make) sums over views
//!   P(view) * P(make | view). The matcher asks "how likely is this a BMW 3 Series"
//!   of the marginal, so a hesitant view head does not hide a confident make head.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::embedding::{Embedding, MeanEmbedding};
pub use super::labels::{Label, Leaf, Level};
use super::manifest::Manifest;
use super::weights::WeightFile;
use super::{ModelError, Placement, Precision};

/// One fully connected head's weights, on the model's device, in the heads' precision
/// (see [`head_kind`]).
pub struct Mlp {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Mlp {
    /// Tensor names of a PyTorch `nn.Sequential(Linear, ReLU, Dropout, Linear)`.
    pub const NAMES: [&'static str; 4] = ["0.weight", "0.bias", "3.weight", "3.bias"];

    fn load(
        path: &Path,
        inputs: i64,
        hidden: i64,
        outputs: i64,
        device: Device,
        kind: Kind,
    ) -> Result<Mlp, ModelError> {
        let f = WeightFile::open(path)?;
        let shapes = [vec![hidden, inputs], vec![hidden], vec![outputs, hidden], vec![outputs]];
        let mut t = Vec::with_capacity(4);
        for (name, shape) in Self::NAMES.iter().zip(shapes) {
            t.push(f.tensor(name, &shape, kind, device)?);
        }
        let [w1, b1, w2, b2]: [Tensor; 4] = t
            .try_into()
            .map_err(|_| ModelError::Corrupt { path: path.to_path_buf(), reason: "head weights incomplete".into() })?;
        Ok(Mlp { w1, b1, w2, b2 })
    }

    /// Class probabilities `[N, k]` (fp32) for flattened features `[N, inputs]` in the
    /// heads' precision.
    fn probabilities(&self, x: &Tensor) -> Result<Tensor, tch::TchError> {
        x.f_linear(&self.w1, Some(&self.b1))?.f_relu()?.f_linear(&self.w2, Some(&self.b2))?.f_softmax(-1, Kind::Float)
    }
}

/// One node of the tree.
struct Node {
    id: String,
    level: Level,
    labels: Vec<String>,
    /// Index of the node each label leads to (none at the model level).
    next: Vec<Option<usize>>,
    /// Absent for a single-label node, whose answer is certain.
    mlp: Option<Mlp>,
}

/// A head is evaluated only for batches in which some image reaches it with at least
/// this probability, or reaches it along its greedy path. A cascade has one model head
/// per (view, make), each with megabytes of weights to read; a confident view and make
/// make all but a few of them irrelevant.
const SKIP_BELOW: f32 = 1e-4;

/// The loaded cascade.
pub struct Cascade {
    nodes: Vec<Node>,
    root: usize,
    leaves: Arc<[Leaf]>,
    /// For each leaf, the (node, label) steps from the root down to it.
    leaf_steps: Vec<[(usize, usize); 3]>,
    feature_len: i64,
    notice: Option<String>,
    /// The heads' precision ([`head_kind`]).
    kind: Kind,
}

/// Flattened fp32 features `[N, C*H*W]` in NCHW order (whatever the memory layout of
/// the backbone's output), which is the order heads are trained on.
pub fn flatten(features: &Tensor) -> Result<Tensor, ModelError> {
    features
        .f_to_kind(Kind::Float)
        .and_then(|f| f.f_contiguous())
        .and_then(|f| f.f_flatten(1, -1))
        .map_err(ModelError::torch("flattening features"))
}

/// The precision the heads run in next to a backbone in `placement`: fp32 next to fp32,
/// otherwise the backbone's reduced type (bf16 next to int8 on a CPU with native bf16).
/// A head's first layer holds 25088 x 256 weights, 25 MB in fp32, read on every call:
/// with a dozen heads that is most of a small batch's time on a CPU, and bf16 halves it.
/// Activations are accumulated in fp32 either way and probabilities come out in fp32.
pub fn head_kind(placement: Placement) -> Kind {
    match (placement.device, placement.precision) {
        (_, Precision::Fp32) => Kind::Float,
        (Device::Cuda(_), p) if p != Precision::Int8 => p.kind(),
        (Device::Cpu, Precision::Bf16) => Kind::BFloat16,
        (Device::Cpu, Precision::Int8) if super::cpu_has_native_bf16() => Kind::BFloat16,
        _ => Kind::Float,
    }
}

impl Cascade {
    /// Loads every head's weights, checking their shapes against the manifest and the
    /// backbone's feature length, in the precision [`head_kind`] gives for `placement`.
    pub fn load(manifest: &Manifest, feature_len: i64, placement: Placement) -> Result<Cascade, ModelError> {
        let (device, kind) = (placement.device, head_kind(placement));
        let index: HashMap<&str, usize> = manifest.heads.iter().enumerate().map(|(i, h)| (h.id.as_str(), i)).collect();
        let mut nodes = Vec::with_capacity(manifest.heads.len());
        for h in &manifest.heads {
            let mlp = match manifest.head_weights_path(h) {
                Some(path) => Some(Mlp::load(&path, feature_len, h.hidden, h.labels.len() as i64, device, kind)?),
                None => None,
            };
            let next = h.labels.iter().map(|l| h.next.get(l).map(|id| index[id.as_str()])).collect();
            nodes.push(Node { id: h.id.clone(), level: h.level, labels: h.labels.clone(), next, mlp });
        }
        let root = index[manifest.root.as_str()];
        Ok(Cascade::from_nodes(nodes, root, feature_len, manifest.notice.clone(), kind))
    }

    fn from_nodes(nodes: Vec<Node>, root: usize, feature_len: i64, notice: Option<String>, kind: Kind) -> Cascade {
        let mut leaves = Vec::new();
        let mut leaf_steps = Vec::new();
        // Depth-first over (view, make, model); the manifest was validated to be a tree
        // of exactly these three levels.
        let view = &nodes[root];
        for (vi, v) in view.labels.iter().enumerate() {
            let Some(make_node) = view.next[vi] else { continue };
            for (mi, m) in nodes[make_node].labels.iter().enumerate() {
                let Some(model_node) = nodes[make_node].next[mi] else { continue };
                for (oi, o) in nodes[model_node].labels.iter().enumerate() {
                    leaves.push(Leaf::new(v, m, o));
                    leaf_steps.push([(root, vi), (make_node, mi), (model_node, oi)]);
                }
            }
        }
        Cascade { nodes, root, leaves: leaves.into(), leaf_steps, feature_len, notice, kind }
    }

    /// Every (view, make, model) the cascade can answer.
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// Every distinct label at `level` (first spelling seen), in tree order.
    pub fn labels(&self, level: Level) -> Vec<Label> {
        super::labels::distinct(self.leaves.iter().map(|l| l.label(level)))
    }

    /// The manifest's notice (set for the synthetic demo model).
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    pub fn feature_len(&self) -> i64 {
        self.feature_len
    }

    /// Predictions for backbone features `[N, C, 7, 7]` (or already flat `[N, F]`).
    pub fn run(&self, features: &Tensor) -> Result<Vec<Prediction>, ModelError> {
        // NCHW order (the order heads are trained on), in the heads' precision.
        let x = if features.dim() == 2 { Ok(features.shallow_clone()) } else { features.f_contiguous() }
            .and_then(|f| f.f_flatten(1, -1))
            .and_then(|f| f.f_to_kind(self.kind))
            .map_err(ModelError::torch("flattening features"))?;
        let n = x.size()[0] as usize;
        let count = self.nodes.len();
        let mut probs: Vec<Vec<f32>> = vec![Vec::new(); count];
        // Per node and image: the probability of reaching the node, and whether it lies
        // on the image's greedy path. Parents come before children (breadth first).
        let mut reach: Vec<Vec<f32>> = vec![Vec::new(); count];
        let mut on_path: Vec<Vec<bool>> = vec![Vec::new(); count];
        reach[self.root] = vec![1.0; n];
        on_path[self.root] = vec![true; n];
        let mut queue = std::collections::VecDeque::from([self.root]);
        tch::no_grad(|| -> Result<(), ModelError> {
            while let Some(at) = queue.pop_front() {
                let node = &self.nodes[at];
                let k = node.labels.len();
                let (r, path) = (std::mem::take(&mut reach[at]), std::mem::take(&mut on_path[at]));
                let needed = (0..n).any(|i| path[i] || r[i] >= SKIP_BELOW);
                let p = match &node.mlp {
                    Some(mlp) if needed => {
                        let p = mlp
                            .probabilities(&x)
                            .and_then(|p| p.f_to_device(Device::Cpu))
                            .and_then(|p| p.f_contiguous())
                            .map_err(ModelError::torch(format!("head `{}`", node.id)))?;
                        Vec::<f32>::try_from(p.f_flatten(0, -1).map_err(ModelError::torch("head output"))?)
                            .map_err(ModelError::torch(format!("head `{}` output", node.id)))?
                    }
                    // Unlikely for every image: read as uniform, so that every level
                    // still sums to 1 and no leaf moves by more than SKIP_BELOW.
                    Some(_) => vec![1.0 / k as f32; n * k],
                    None => vec![1.0; n * k],
                };
                let best: Vec<usize> = (0..n)
                    .map(|i| (0..k).max_by(|&a, &b| p[i * k + a].total_cmp(&p[i * k + b])).unwrap_or(0))
                    .collect();
                for (l, next) in node.next.iter().enumerate() {
                    let Some(child) = *next else { continue };
                    reach[child] = (0..n).map(|i| r[i] * p[i * k + l]).collect();
                    on_path[child] = (0..n).map(|i| path[i] && best[i] == l).collect();
                    queue.push_back(child);
                }
                probs[at] = p;
            }
            Ok(())
        })?;
        Ok((0..n).map(|i| self.combine(&probs, i)).collect())
    }

    /// Prediction for image `i` from every node's output `probs[node][i * k + label]`.
    fn combine(&self, probs: &[Vec<f32>], i: usize) -> Prediction {
        let p = |node: usize, label: usize| probs[node][i * self.nodes[node].labels.len() + label];
        let leaf_p = self.leaf_steps.iter().map(|steps| steps.iter().map(|&(n, l)| p(n, l)).product()).collect();
        let mut path = Vec::with_capacity(3);
        let mut node = Some(self.root);
        while let Some(n) = node {
            let k = self.nodes[n].labels.len();
            let mut ranked: Vec<(usize, f32)> = (0..k).map(|l| (l, p(n, l))).collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            let (best, best_p) = ranked[0];
            path.push(Choice {
                level: self.nodes[n].level,
                label: Label::new(self.nodes[n].labels[best].clone()),
                p: best_p,
                top: ranked.iter().take(3).map(|&(l, q)| (self.nodes[n].labels[l].clone(), q)).collect(),
            });
            node = self.nodes[n].next[best];
        }
        Prediction { path, leaves: Arc::clone(&self.leaves), leaf_p, embedding: None }
    }
}

/// The answer of one head along the greedy path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub level: Level,
    pub label: Label,
    /// Probability of `label` given the choices above it.
    pub p: f32,
    /// The three most likely labels of this head, best first (includes `label`).
    pub top: Vec<(String, f32)>,
}

/// What the cascade says about one image (or one region of a frame).
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Greedy path, one [`Choice`] per level.
    pub path: Vec<Choice>,
    leaves: Arc<[Leaf]>,
    /// Joint probability of each leaf, aligned with [`Cascade::leaves`].
    leaf_p: Vec<f32>,
    /// What the image looks like ([`super::embedding`]); for a track, the mean of its
    /// looks. Filled in by [`super::Recognizer`].
    pub embedding: Option<Embedding>,
}

impl Prediction {
    /// The greedy path's label at `level`.
    pub fn label(&self, level: Level) -> &Label {
        static NONE: Label = Label::NONE;
        self.path.get(level.index()).map_or(&NONE, |c| &c.label)
    }

    /// Probability of the greedy path as a whole (product of its conditionals).
    pub fn confidence(&self) -> f32 {
        self.path.iter().map(|c| c.p).product()
    }

    /// Marginal probability of each label at `level`, summed over all branches, most
    /// likely first. Sums to 1.
    pub fn marginal(&self, level: Level) -> Vec<(Label, f32)> {
        let mut out: Vec<(Label, f32)> = Vec::new();
        for (leaf, &p) in self.leaves.iter().zip(&self.leaf_p) {
            let l = leaf.label(level);
            match out.iter_mut().find(|(o, _)| o == l) {
                Some((_, q)) => *q += p,
                None => out.push((l.clone(), p)),
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// Probability that the image shows `make` (and `model`, and from `view`, when
    /// given), summed over every branch.
    pub fn probability(&self, view: Option<&str>, make: &str, model: Option<&str>) -> f32 {
        let eq = |a: &Label, b: Option<&str>| b.is_none_or(|b| a == b);
        self.leaves
            .iter()
            .zip(&self.leaf_p)
            .filter(|(leaf, _)| leaf.make == make && eq(&leaf.model, model) && eq(&leaf.view, view))
            .map(|(_, &p)| p)
            .sum()
    }

    /// Probability that the image shows a vehicle from `view`, whatever its make.
    pub fn view_probability(&self, view: &str) -> f32 {
        self.leaves.iter().zip(&self.leaf_p).filter(|(leaf, _)| leaf.view == view).map(|(_, &p)| p).sum()
    }

    /// Marginal probability of every (make, model) pair, most likely first.
    pub fn make_models(&self) -> Vec<((Label, Label), f32)> {
        let mut out: Vec<((Label, Label), f32)> = Vec::new();
        for (leaf, &p) in self.leaves.iter().zip(&self.leaf_p) {
            match out.iter_mut().find(|((m, o), _)| *m == leaf.make && *o == leaf.model) {
                Some((_, q)) => *q += p,
                None => out.push(((leaf.make.clone(), leaf.model.clone()), p)),
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// One vehicle's predictions over its looks, averaged: the per-track decision rule is
/// the mean probability of each leaf over every look (docs/mqtt.md). A mean keeps one
/// poor look (the vehicle half out of frame, blurred, hidden) from vetoing a track the
/// way a product of probabilities would, and it stays a probability, so an alert's
/// `min_confidence` means the same for tracks as for frames.
#[derive(Debug, Clone)]
pub struct Average {
    leaves: Arc<[Leaf]>,
    sum: Vec<f64>,
    looks: u32,
    embedding: MeanEmbedding,
}

impl Average {
    pub fn new(first: &Prediction) -> Average {
        let mut embedding = MeanEmbedding::default();
        if let Some(e) = &first.embedding {
            embedding.add(e);
        }
        Average {
            leaves: Arc::clone(&first.leaves),
            sum: first.leaf_p.iter().map(|&p| p as f64).collect(),
            looks: 1,
            embedding,
        }
    }

    /// Adds one look (of the same cascade; another one's is ignored).
    pub fn add(&mut self, p: &Prediction) {
        if p.leaf_p.len() != self.sum.len() {
            return;
        }
        for (s, &q) in self.sum.iter_mut().zip(&p.leaf_p) {
            *s += q as f64;
        }
        if let Some(e) = &p.embedding {
            self.embedding.add(e);
        }
        self.looks += 1;
    }

    /// Looks averaged so far.
    pub fn looks(&self) -> u32 {
        self.looks
    }

    /// The mean as a prediction, with its own greedy path.
    pub fn prediction(&self) -> Prediction {
        let n = self.looks.max(1) as f64;
        let leaf_p: Vec<f32> = self.sum.iter().map(|&s| (s / n) as f32).collect();
        let path = greedy_path(&self.leaves, &leaf_p);
        Prediction { path, leaves: Arc::clone(&self.leaves), leaf_p, embedding: self.embedding.get() }
    }
}

/// The most likely label level by level, each given the ones above it, from leaf
/// probabilities alone.
fn greedy_path(leaves: &[Leaf], leaf_p: &[f32]) -> Vec<Choice> {
    let mut path: Vec<Choice> = Vec::with_capacity(Level::ALL.len());
    let mut within: Vec<usize> = (0..leaves.len()).collect();
    for level in Level::ALL {
        let mass: f32 = within.iter().map(|&i| leaf_p[i]).sum();
        let mut ranked: Vec<(Label, f32)> = Vec::new();
        for &i in &within {
            let l = leaves[i].label(level);
            match ranked.iter_mut().find(|(o, _)| o == l) {
                Some((_, q)) => *q += leaf_p[i],
                None => ranked.push((l.clone(), leaf_p[i])),
            }
        }
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let Some((best, best_p)) = ranked.first().cloned() else { break };
        let share = |q: f32| if mass > 0.0 { q / mass } else { 0.0 };
        path.push(Choice {
            level,
            label: best.clone(),
            p: share(best_p),
            top: ranked.iter().take(3).map(|(l, q)| (l.to_string(), share(*q))).collect(),
        });
        within.retain(|&i| *leaves[i].label(level) == best);
    }
    path
}

/// Predictions built by hand, for tests of what consumes them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A prediction whose leaves are `leaves` with their joint probabilities; the greedy
    /// path is the most likely leaf.
    pub fn prediction(leaves: &[((&str, &str, &str), f32)]) -> Prediction {
        let table: Vec<Leaf> = leaves.iter().map(|((v, m, o), _)| Leaf::new(v, m, o)).collect();
        let leaf_p: Vec<f32> = leaves.iter().map(|(_, p)| *p).collect();
        let best = (0..leaves.len()).max_by(|&a, &b| leaf_p[a].total_cmp(&leaf_p[b])).unwrap_or(0);
        let path = Level::ALL
            .iter()
            .map(|&level| Choice { level, label: table[best].label(level).clone(), p: leaf_p[best], top: vec![] })
            .collect();
        Prediction { path, leaves: table.into(), leaf_p, embedding: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, level: Level, labels: &[&str], next: Vec<Option<usize>>) -> Node {
        Node { id: id.into(), level, labels: labels.iter().map(|s| s.to_string()).collect(), next, mlp: None }
    }

    /// view(front, angled) -> make per view (audi, bmw) -> model per make.
    fn tree() -> Cascade {
        let nodes = vec![
            node("view", Level::View, &["front", "angled"], vec![Some(1), Some(2)]),
            node("front/make", Level::Make, &["audi", "bmw"], vec![Some(3), Some(4)]),
            node("angled/make", Level::Make, &["audi", "BMW"], vec![Some(5), Some(6)]),
            node("front/audi/model", Level::Model, &["a4"], vec![None]),
            node("front/bmw/model", Level::Model, &["3-series", "x5"], vec![None, None]),
            node("angled/audi/model", Level::Model, &["a4"], vec![None]),
            node("angled/bmw/model", Level::Model, &["3-series", "x5"], vec![None, None]),
        ];
        Cascade::from_nodes(nodes, 0, 8, None, Kind::Float)
    }

    /// Outputs for one image, node by node.
    fn outputs(rows: &[&[f32]]) -> Vec<Vec<f32>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    /// A head on 2 features whose logits are `scale * features + bias`.
    fn head(id: &str, level: Level, labels: &[&str], next: Vec<Option<usize>>, scale: f32, bias: &[f32]) -> Node {
        let k = labels.len() as i64;
        let eye = Tensor::eye(2, (Kind::Float, Device::Cpu));
        let mlp = Mlp {
            w1: eye.shallow_clone(),
            b1: Tensor::zeros([2], (Kind::Float, Device::Cpu)),
            w2: (eye * scale as f64).narrow(0, 0, k),
            b2: Tensor::from_slice(bias),
        };
        Node { mlp: Some(mlp), ..node(id, level, labels, next) }
    }

    /// The view head follows the features (front for [1, 0], angled for [0, 1]); the
    /// make heads lean audi on the angled side, the model heads lean each their way.
    fn confident_tree() -> Cascade {
        let nodes = vec![
            head("view", Level::View, &["front", "angled"], vec![Some(1), Some(2)], 20.0, &[0.0, 0.0]),
            head("front/make", Level::Make, &["audi", "bmw"], vec![Some(3), Some(4)], 0.0, &[0.0, 1.0]),
            head("angled/make", Level::Make, &["audi", "bmw"], vec![Some(5), Some(6)], 0.0, &[3.0, 0.0]),
            node("front/audi/model", Level::Model, &["a4"], vec![None]),
            head("front/bmw/model", Level::Model, &["3-series", "x5"], vec![None, None], 0.0, &[2.0, 0.0]),
            node("angled/audi/model", Level::Model, &["a4"], vec![None]),
            head("angled/bmw/model", Level::Model, &["3-series", "x5"], vec![None, None], 0.0, &[0.0, 4.0]),
        ];
        Cascade::from_nodes(nodes, 0, 2, None, Kind::Float)
    }

    #[test]
    fn heads_no_image_can_reach_are_skipped_without_breaking_the_sums() {
        let c = confident_tree();
        let front = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let p = c.run(&front).unwrap().remove(0);
        let labels = (p.label(Level::View).as_str(), p.label(Level::Make).as_str(), p.label(Level::Model).as_str());
        assert_eq!(labels, ("front", "bmw", "3-series"));
        // The angled branch (reached with p ~ 2e-9) was not evaluated: its heads read as
        // uniform. Evaluated, angled/make would give audi 19 times bmw's probability.
        let audi = p.probability(Some("angled"), "audi", None);
        let bmw = p.probability(Some("angled"), "bmw", None);
        assert!(audi > 0.0 && (audi / bmw - 1.0).abs() < 1e-3, "angled audi {audi} vs bmw {bmw}");
        for level in Level::ALL {
            let sum: f32 = p.marginal(level).iter().map(|(_, q)| q).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{level} marginals sum to {sum}");
        }
        // With an angled image in the batch, the angled heads run for both images.
        let both = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let ps = c.run(&both).unwrap();
        assert_eq!(ps[1].label(Level::View), "angled");
        let (audi, bmw) =
            (ps[1].probability(Some("angled"), "audi", None), ps[1].probability(Some("angled"), "bmw", None));
        assert!((audi / bmw - 3f32.exp()).abs() < 0.05, "angled image: audi {audi} vs bmw {bmw}");
        assert_eq!(ps[1].label(Level::Model), "a4");
    }

    #[test]
    fn heads_run_in_fp32_next_to_fp32_and_reduced_next_to_reduced() {
        let at = |device, precision| head_kind(Placement { device, precision });
        assert_eq!(at(Device::Cpu, Precision::Fp32), Kind::Float);
        assert_eq!(at(Device::Cuda(0), Precision::Fp32), Kind::Float);
        assert_eq!(at(Device::Cpu, Precision::Bf16), Kind::BFloat16);
        assert_eq!(at(Device::Cuda(0), Precision::Fp16), Kind::Half);
        let int8 = if crate::model::cpu_has_native_bf16() { Kind::BFloat16 } else { Kind::Float };
        assert_eq!(at(Device::Cpu, Precision::Int8), int8);
    }

    /// bf16 heads (what runs next to a bf16 or int8 backbone) against fp32 heads on the
    /// same features: marginals within 0.01.
    #[test]
    fn bf16_heads_give_fp32_marginals() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::model::VggSpec { widths: [4, 8, 8, 16, 16] };
        let backbone = dir.path().join("b.safetensors");
        crate::model::weights::write_atomic(&backbone, &spec.random_state_dict(1)).unwrap();
        let manifest = crate::bench::random_cascade(dir.path(), &backbone, spec).unwrap();
        let load = |precision| {
            Cascade::load(&manifest, spec.feature_len(), Placement { device: Device::Cpu, precision }).unwrap()
        };
        let (fp32, bf16) = (load(Precision::Fp32), load(Precision::Bf16));
        assert_eq!(bf16.kind, Kind::BFloat16);
        let features = Tensor::randn([4, 16, 7, 7], (Kind::Float, Device::Cpu)) * 30.0;
        let (a, b) = (fp32.run(&features).unwrap(), bf16.run(&features).unwrap());
        for (x, y) in a.iter().zip(&b) {
            for level in [Level::View, Level::Make, Level::Model] {
                for ((l1, p1), (l2, p2)) in x.marginal(level).iter().zip(y.marginal(level)) {
                    assert_eq!(l1, &l2);
                    assert!((p1 - p2).abs() < 0.01, "{level:?} {l1}: fp32 {p1} bf16 {p2}");
                }
            }
        }
    }

    #[test]
    fn leaves_enumerate_every_branch() {
        let c = tree();
        assert_eq!(c.leaves().len(), 6);
        assert_eq!(c.labels(Level::Make), vec!["audi", "bmw"]);
    }

    #[test]
    fn marginals_sum_to_one_per_level() {
        let c = tree();
        let probs = outputs(&[&[0.3, 0.7], &[0.2, 0.8], &[0.9, 0.1], &[1.0], &[0.6, 0.4], &[1.0], &[0.25, 0.75]]);
        let p = c.combine(&probs, 0);
        for level in Level::ALL {
            let total: f32 = p.marginal(level).iter().map(|(_, q)| q).sum();
            assert!((total - 1.0).abs() < 1e-5, "{level}: {total}");
        }
        let total: f32 = p.make_models().iter().map(|(_, q)| q).sum();
        assert!((total - 1.0).abs() < 1e-5);
        // P(bmw) = 0.3 * 0.8 + 0.7 * 0.1
        assert!((p.probability(None, "bmw", None) - (0.3 * 0.8 + 0.7 * 0.1)).abs() < 1e-6);
        // P(bmw x5 | front) joint = 0.3 * 0.8 * 0.4
        assert!((p.probability(Some("FRONT"), "Bmw", Some("X5")) - 0.3 * 0.8 * 0.4).abs() < 1e-6);
    }

    #[test]
    fn disagreeing_view_heads_are_resolved_by_the_marginal() {
        // The view head leans front (0.55). The front make head leans audi (0.6); the
        // angled make head is sure it is a BMW. Greedy reading: front, audi. Marginal:
        // P(audi) = 0.55 * 0.6 = 0.33, P(bmw) = 0.55 * 0.4 + 0.45 * 1.0 = 0.67.
        let c = tree();
        let probs = outputs(&[&[0.55, 0.45], &[0.6, 0.4], &[0.0, 1.0], &[1.0], &[0.5, 0.5], &[1.0], &[0.5, 0.5]]);
        let p = c.combine(&probs, 0);
        assert_eq!(p.label(Level::View), "front");
        assert_eq!(p.label(Level::Make), "audi");
        let makes = p.marginal(Level::Make);
        assert_eq!(makes[0].0, "bmw");
        assert!((makes[0].1 - 0.67).abs() < 1e-5, "{makes:?}");
        assert!((p.probability(None, "audi", None) - 0.33).abs() < 1e-5);
    }

    #[test]
    fn greedy_path_reports_conditionals_and_top_three() {
        let c = tree();
        let probs = outputs(&[&[0.1, 0.9], &[0.5, 0.5], &[0.2, 0.8], &[1.0], &[0.5, 0.5], &[1.0], &[0.3, 0.7]]);
        let p = c.combine(&probs, 0);
        let labels: Vec<&str> = p.path.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, vec!["angled", "BMW", "x5"]);
        assert!((p.confidence() - 0.9 * 0.8 * 0.7).abs() < 1e-6);
        assert_eq!(p.path[0].top, vec![("angled".to_string(), 0.9), ("front".to_string(), 0.1)]);
    }

    #[test]
    fn a_tracks_average_is_the_mean_of_its_looks_with_its_own_path() {
        use super::testing::prediction;
        let look = |bmw: f32| prediction(&[(("front", "bmw", "3-series"), bmw), (("front", "audi", "a4"), 1.0 - bmw)]);
        // One poor look among good ones: the mean still says bmw.
        let mut avg = Average::new(&look(0.9));
        avg.add(&look(0.1));
        avg.add(&look(0.8));
        let mean = avg.prediction();
        assert_eq!(avg.looks(), 3);
        assert!((mean.probability(None, "bmw", Some("3-series")) - 0.6).abs() < 1e-6);
        let labels: Vec<&str> = mean.path.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, vec!["front", "bmw", "3-series"]);
        assert!((mean.path[1].p - 0.6).abs() < 1e-6 && (mean.path[2].p - 1.0).abs() < 1e-6);
    }
}
