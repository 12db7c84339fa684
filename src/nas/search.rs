//! The search loop: first-order DARTS (with PC-DARTS's edge normalisation
//! when the space has searched nodes), and BNAS's operation-space reduction
//! on top of it.
//!
//! The training data is split 50/50 (stratified, seeded) into a weight half
//! and an architecture half. Each epoch pairs the weight half's batches with
//! the architecture half's: a **weight step** (every parameter except α and
//! β, with the run's optimizer: Adam or SGD on the latent binary weights,
//! clipped to [−1, 1], or Bop) on a weight batch, then an **architecture
//! step** (α and β only, Adam lr 6e-4, betas (0.5, 0.999), weight decay
//! 1e-3) on an architecture batch. For the first 30% of the epochs only the
//! weights are trained (PC-DARTS freezes α and β for its first 15 of 50).
//! After each epoch the supernet's accuracy on the architecture half is
//! measured on the step engine and the epoch's α, β and genotype recorded.
//!
//! With [`Mode::Bnas`], every `reduce_every` epochs after the warm-up a
//! reduction round ([`super::reduction`]) drops one operation per edge, and
//! training continues on the smaller supernet with the same weights.
//!
//! Everything is seeded: with one thread a search is reproducible bit for
//! bit, and [`Search`] is what a checkpoint holds, so a resumed search
//! computes what the uninterrupted one does.

use std::collections::{BTreeMap, BTreeSet};

use super::child_parent::{self, ChildParentConfig};
use super::genotype::{Genotype, discretize, node_edges, restrict, softmax};
use super::parent::{ParentError, full_precision};
use super::reduction::{self, ReductionConfig};
use super::space::{SearchSpace, SpaceError};
use crate::ir::graph::Graph;
use crate::ir::params::Params;
use crate::passes::PassError;
use crate::train::checkpoint::Checkpoint;
use crate::train::data::{self, Batches, Dataset, derive_seed};
use crate::train::optim::{OptimError, Optimizer, OptimizerConfig};
use crate::train::schedule::LrSchedule;
use crate::train::trainer::{StepRunner, TrainError, Trainer, TrainerConfig, evaluate_on_engine};

/// Which search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// First-order DARTS / PC-DARTS: train α, β and the weights, then
    /// discretise.
    Darts,
    /// DARTS plus BNAS's operation-space reduction.
    Bnas,
    /// DARTS plus CP-NAS's child-parent reduction: a full-precision parent
    /// supernet trains beside the binarized one, the child's weights are
    /// pulled towards the parent's kernels, and sampled architectures are
    /// scored by the child's accuracy and its gap to the parent.
    CpNas,
}

impl Mode {
    /// The name `--mode` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Darts => "darts",
            Mode::Bnas => "bnas",
            Mode::CpNas => "cp-nas",
        }
    }
}

/// How to search.
#[derive(Clone, Debug)]
pub struct SearchConfig {
    /// Which search.
    pub mode: Mode,
    /// Epochs.
    pub epochs: usize,
    /// Batch size (of both halves).
    pub batch: usize,
    /// The weights' optimizer.
    pub weight_optimizer: OptimizerConfig,
    /// The weights' learning-rate schedule (per epoch).
    pub schedule: LrSchedule,
    /// The architecture parameters' optimizer.
    pub arch_optimizer: OptimizerConfig,
    /// The fraction of the epochs (rounded down) that trains only the
    /// weights.
    pub warmup_fraction: f32,
    /// Label smoothing.
    pub smoothing: f32,
    /// Threads.
    pub threads: usize,
    /// What runs the step.
    pub runner: StepRunner,
    /// Seed of the split, the batch order and the reduction's sampling.
    pub seed: u64,
    /// The reduction's schedule and sampling (BNAS and CP-NAS).
    pub reduction: ReductionConfig,
    /// CP-NAS's scoring and kernel loss.
    pub child_parent: ChildParentConfig,
}

impl SearchConfig {
    /// The architecture optimizer of DARTS and PC-DARTS: Adam, lr 6e-4,
    /// betas (0.5, 0.999), weight decay 1e-3 (coupled, as in PyTorch's Adam).
    pub fn darts_arch_optimizer() -> OptimizerConfig {
        OptimizerConfig::Adam {
            lr: 6e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-3,
            decoupled: false,
        }
    }

    /// Epochs of weight-only training.
    pub fn warmup_epochs(&self) -> usize {
        ((self.epochs as f32) * self.warmup_fraction).floor() as usize
    }
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The model is not a search space.
    #[error("{0}")]
    Space(#[from] SpaceError),
    /// Training failed.
    #[error("{0}")]
    Train(Box<TrainError>),
    /// A pass (select_cells) failed.
    #[error("{0}")]
    Pass(Box<PassError>),
    /// An optimizer state does not fit.
    #[error("{0}")]
    Optim(#[from] OptimError),
    /// A checkpoint does not fit this search.
    #[error("the checkpoint does not fit this search: {0}")]
    Checkpoint(String),
    /// Too little data.
    #[error("the search needs at least 2 training samples per half, found {0} in all")]
    TooLittleData(usize),
    /// The full-width lowering of a partial-channel space does not have the
    /// supernet's edges and nodes.
    #[error("the full-width network does not have the supernet's search space: {0}")]
    FullWidth(String),
    /// The supernet has no full-precision parent.
    #[error("{0}")]
    Parent(#[from] ParentError),
}

impl From<TrainError> for SearchError {
    fn from(e: TrainError) -> SearchError {
        SearchError::Train(Box::new(e))
    }
}

impl From<PassError> for SearchError {
    fn from(e: PassError) -> SearchError {
        SearchError::Pass(Box::new(e))
    }
}

/// What one epoch measured.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    /// The epoch, from 1.
    pub epoch: usize,
    /// The mean loss of the weight steps.
    pub weight_loss: f32,
    /// The mean loss of the architecture steps (none in the warm-up).
    pub arch_loss: Option<f32>,
    /// The supernet's accuracy on the architecture half.
    pub val_accuracy: f32,
    /// CP-NAS: the parent supernet's accuracy on the architecture half.
    pub parent_val_accuracy: Option<f32>,
    /// α of every edge and β of every node after the epoch, by `choose`, in
    /// the **original** supernet's indexing (dropped operations are absent:
    /// NaN).
    pub alphas: BTreeMap<String, Vec<f32>>,
    /// Operations left per edge.
    pub ops_left: Vec<usize>,
    /// The genotype α and β give after the epoch, one line per node.
    pub genotype: Vec<String>,
    /// The edges' operations dropped by a reduction after this epoch, as
    /// `(edge, label)`.
    pub dropped: Vec<(String, String)>,
}

/// CP-NAS's full-precision parent supernet ([`super::parent`]): the
/// current supernet with binarization off, its weights (trained on the same
/// weight batches, with the child's α and β) and their optimizer.
pub struct Parent {
    /// The parent of the current supernet.
    pub graph: Graph,
    /// Its parameters (α and β copied from the child's).
    pub params: Params,
    /// Its weights' optimizer.
    pub optimizer: Optimizer,
}

/// The state of a search: the current supernet (smaller after reductions),
/// its parameters, both optimizers, what has been dropped and the history.
pub struct Search {
    /// The supernet as given.
    pub original: Graph,
    /// The supernet now.
    pub graph: Graph,
    /// Its parameters.
    pub params: Params,
    /// The weights' optimizer.
    pub weight_optimizer: Optimizer,
    /// α's and β's optimizer.
    pub arch_optimizer: Optimizer,
    /// Epochs done.
    pub epoch: usize,
    /// Per edge `choose`, the original indices of the alternatives left.
    pub alive: BTreeMap<String, Vec<usize>>,
    /// The reduction's scores per edge, by original index: BNAS's running
    /// selection likelihood S, or CP-NAS's last evaluation `e`.
    pub scores: BTreeMap<String, Vec<f32>>,
    /// CP-NAS's full-precision parent of the current supernet.
    pub parent: Option<Parent>,
    /// One record per epoch done.
    pub history: Vec<EpochRecord>,
    /// For a partial-channel supernet (PC-DARTS), the same space lowered at
    /// full width: the chosen architecture is derived on it.
    full_width: Option<Graph>,
    node_names: BTreeSet<String>,
    config: SearchConfig,
}

impl Search {
    /// A fresh search of `model` from `params`.
    ///
    /// # Errors
    ///
    /// [`SearchError::Space`] for a model without `choose`; an optimizer
    /// configuration error.
    pub fn new(model: &Graph, params: Params, config: SearchConfig) -> Result<Search, SearchError> {
        let space = SearchSpace::of(model)?;
        let alive = space
            .edges
            .iter()
            .map(|e| (e.choose.clone(), (0..e.ops.len()).collect()))
            .collect();
        let scores = space
            .edges
            .iter()
            .map(|e| (e.choose.clone(), vec![0.0; e.ops.len()]))
            .collect();
        let optimizer = |c: &OptimizerConfig| -> Result<Optimizer, OptimError> {
            let mut o = Optimizer::new(c.clone())?;
            o.threads = config.threads.max(1);
            Ok(o)
        };
        let weight_optimizer = optimizer(&config.weight_optimizer)?;
        let mut arch_optimizer = optimizer(&config.arch_optimizer)?;
        arch_optimizer.clip_latent = false;
        let parent = match config.mode {
            Mode::CpNas => {
                let (graph, params) = full_precision(model, &params)?;
                let optimizer = optimizer(&config.weight_optimizer)?;
                Some(Parent {
                    graph,
                    params,
                    optimizer,
                })
            }
            Mode::Darts | Mode::Bnas => None,
        };
        Ok(Search {
            original: model.clone(),
            graph: model.clone(),
            params,
            weight_optimizer,
            arch_optimizer,
            epoch: 0,
            alive,
            scores,
            parent,
            history: Vec::new(),
            full_width: None,
            node_names: space.node_names(),
            config,
        })
    }

    /// Derives the chosen architecture on `full`, the supernet's space
    /// lowered at full width (`LowerOptions::partial_channels = Some(1)`),
    /// instead of on the partial-channel supernet itself: PC-DARTS searches
    /// on a fraction of the channels but its result computes on all of them.
    ///
    /// # Errors
    ///
    /// [`SearchError::FullWidth`] if `full` does not have the same edges
    /// (names and operations) and nodes as the supernet as given.
    pub fn derive_on_full_width(mut self, full: Graph) -> Result<Search, SearchError> {
        let supernet = SearchSpace::with_nodes(&self.original, &self.node_names)?;
        let wide = SearchSpace::with_nodes(&full, &self.node_names)?;
        let shape = |s: &SearchSpace| {
            let edges: Vec<_> = s
                .edges
                .iter()
                .map(|e| (e.choose.clone(), e.ops.clone()))
                .collect();
            let nodes: Vec<_> = s
                .nodes
                .iter()
                .map(|n| (n.choose.clone(), n.edges.clone()))
                .collect();
            (edges, nodes)
        };
        if shape(&supernet) != shape(&wide) {
            let (a, b) = (shape(&supernet), shape(&wide));
            let first =
                a.0.iter()
                    .zip(&b.0)
                    .find(|(x, y)| x != y)
                    .map(|(x, y)| format!("edge `{}` {:?} vs `{}` {:?}", x.0, x.1, y.0, y.1))
                    .unwrap_or_else(|| {
                        format!(
                            "{} edges and {} nodes vs {} edges and {} nodes",
                            a.0.len(),
                            a.1.len(),
                            b.0.len(),
                            b.1.len()
                        )
                    });
            return Err(SearchError::FullWidth(first));
        }
        self.full_width = Some(full);
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// The search space of the current supernet (its searched nodes those
    /// of the original).
    pub fn space(&self) -> Result<SearchSpace, SearchError> {
        Ok(SearchSpace::with_nodes(&self.graph, &self.node_names)?)
    }

    /// The genotype of the current α and β.
    pub fn genotype(&self) -> Result<Genotype, SearchError> {
        Ok(Genotype::derive(&self.space()?, &self.params))
    }

    /// The chosen architecture: the current supernet discretised to its
    /// genotype, and the parameters of what is left (retrain them from
    /// scratch; DARTS does).
    ///
    /// A partial-channel search ([`derive_on_full_width`](Self::derive_on_full_width))
    /// discretises the full-width network, restricted to the operations
    /// left, with freshly initialised parameters (the supernet's are
    /// narrower).
    pub fn chosen(&self) -> Result<(Graph, Params, Genotype), SearchError> {
        let genotype = self.genotype()?;
        let (g, p) = match &self.full_width {
            None => discretize(&self.graph, &self.params, &genotype)?,
            Some(full) => {
                let init = Params::init(full, self.config.seed);
                let (reduced, p) = restrict(full, &init, &self.alive)?;
                discretize(&reduced, &p, &genotype)?
            }
        };
        Ok((g, p, genotype))
    }

    /// The genotype's lines, each node's edges named.
    pub fn genotype_lines(&self) -> Result<Vec<String>, SearchError> {
        let space = self.space()?;
        Ok(Genotype::derive(&space, &self.params).lines_with(&node_edges(&space)))
    }

    /// Splits the training data into the weight and the architecture half.
    pub fn split(&self, train: &Dataset) -> Result<(Dataset, Dataset), SearchError> {
        let (w, a) = data::split(train, 0.5, derive_seed(self.config.seed, 0, 0x5EA5C4));
        if w.len() < 2 || a.len() < 2 {
            return Err(SearchError::TooLittleData(train.len()));
        }
        Ok((w, a))
    }

    /// How the weight steps train (of the supernet, its parent and the
    /// networks a reduction samples).
    pub(super) fn trainer_config(&self) -> TrainerConfig {
        TrainerConfig {
            runner: self.config.runner,
            optimizer: self.config.weight_optimizer.clone(),
            smoothing: self.config.smoothing,
            quantization_loss: 0.0,
            projection_loss: 0.0,
            distribution_loss: 0.0,
            clip_latent: true,
            threads: self.config.threads.max(1),
        }
    }

    /// Runs one epoch on the two halves (and, in BNAS mode, the reduction
    /// due after it), and returns its record.
    ///
    /// # Errors
    ///
    /// A training, pass or optimizer error.
    pub fn run_epoch(
        &mut self,
        weight_half: &Dataset,
        arch_half: &Dataset,
        mut on_batch: impl FnMut(f32),
    ) -> Result<EpochRecord, SearchError> {
        let epoch = self.epoch;
        let arch_names = self.space()?.arch_params();
        let is_arch = |name: &str| arch_names.contains(name);
        let trainer_config = self.trainer_config();
        let mut trainer = Trainer::new(&self.graph, self.params.clone(), &trainer_config)?;
        std::mem::swap(trainer.optimizer_mut(), &mut self.weight_optimizer);
        let mut parent_trainer = match &mut self.parent {
            Some(parent) => {
                let mut t = Trainer::new(&parent.graph, parent.params.clone(), &trainer_config)?;
                std::mem::swap(t.optimizer_mut(), &mut parent.optimizer);
                Some(t)
            }
            None => None,
        };
        let kernel_loss = self.config.child_parent.kernel_loss;
        let lr_scale = self.config.schedule.factor(epoch);
        let train_arch = epoch >= self.config.warmup_epochs();
        let seed = self.config.seed;
        let weight_batches = Batches::new(weight_half.len(), self.config.batch, seed, epoch);
        let arch_batches = Batches::new(
            arch_half.len(),
            self.config.batch,
            derive_seed(seed, epoch as u64, 0xA4C4),
            epoch,
        );
        let arch_list: Vec<&[usize]> = arch_batches.iter().collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let (mut wsum, mut wn, mut asum, mut an) = (0.0f64, 0usize, 0.0f64, 0usize);
        let result = (|| -> Result<(), SearchError> {
            for (b, indices) in weight_batches.iter().enumerate() {
                data::fill(weight_half, indices, &mut x, &mut y);
                if let Some(parent) = &mut parent_trainer {
                    // The parent trains on the same batch with the child's
                    // α and β, and the child is pulled towards its kernels.
                    copy_params(trainer.params(), parent.params_mut(), &arch_names);
                    parent.step_subset(&x, &y, lr_scale, None, &|n| !is_arch(n))?;
                    trainer.set_kernel_targets(child_parent::kernel_targets(
                        parent.params(),
                        kernel_loss,
                    ));
                }
                let m = trainer.step_subset(&x, &y, lr_scale, None, &|n| !is_arch(n))?;
                wsum += f64::from(m.loss);
                wn += 1;
                on_batch(m.loss);
                if train_arch {
                    let indices = arch_list[b % arch_list.len()];
                    data::fill(arch_half, indices, &mut x, &mut y);
                    let m = trainer.step_subset(
                        &x,
                        &y,
                        1.0,
                        Some(&mut self.arch_optimizer),
                        &is_arch,
                    )?;
                    asum += f64::from(m.loss);
                    an += 1;
                }
            }
            Ok(())
        })();
        std::mem::swap(trainer.optimizer_mut(), &mut self.weight_optimizer);
        self.params = trainer.params().clone();
        if let (Some(parent), Some(mut t)) = (&mut self.parent, parent_trainer) {
            std::mem::swap(t.optimizer_mut(), &mut parent.optimizer);
            parent.params = t.params().clone();
            copy_params(&self.params, &mut parent.params, &arch_names);
        }
        result?;
        drop(trainer);
        let parent_val = match &self.parent {
            Some(parent) => Some(
                evaluate_on_engine(
                    &parent.graph,
                    &parent.params,
                    arch_half,
                    256,
                    self.config.threads,
                )?
                .accuracy() as f32,
            ),
            None => None,
        };
        let val = evaluate_on_engine(
            &self.graph,
            &self.params,
            arch_half,
            256,
            self.config.threads,
        )?;
        self.epoch += 1;
        let mut dropped = Vec::new();
        if self.reduction_due() {
            dropped = match self.config.mode {
                Mode::CpNas => child_parent::reduce(self, weight_half, arch_half)?,
                Mode::Darts | Mode::Bnas => reduction::reduce(self, weight_half, arch_half)?,
            };
        }
        let record = EpochRecord {
            epoch: self.epoch,
            weight_loss: (wsum / wn.max(1) as f64) as f32,
            arch_loss: (an > 0).then(|| (asum / an as f64) as f32),
            val_accuracy: val.accuracy() as f32,
            parent_val_accuracy: parent_val,
            alphas: self.alphas_in_original_indexing()?,
            ops_left: self.space()?.edges.iter().map(|e| e.ops.len()).collect(),
            genotype: self.genotype_lines()?,
            dropped,
        };
        self.history.push(record.clone());
        Ok(record)
    }

    /// Whether a BNAS reduction follows the epoch just finished.
    fn reduction_due(&self) -> bool {
        let warm = self.config.warmup_epochs();
        let every = self.config.reduction.every.max(1);
        self.config.mode != Mode::Darts
            && self.epoch > warm
            && (self.epoch - warm).is_multiple_of(every)
            && self.alive.values().any(|a| a.len() > 1)
    }

    /// Every architecture parameter, spread over the original indices.
    fn alphas_in_original_indexing(&self) -> Result<BTreeMap<String, Vec<f32>>, SearchError> {
        let space = self.space()?;
        let mut out = BTreeMap::new();
        for e in &space.edges {
            let Some(alive) = self.alive.get(&e.choose) else {
                continue;
            };
            let original = self.scores.get(&e.choose).map_or(alive.len(), |s| s.len());
            let mut full = vec![f32::NAN; original];
            if let Some(a) = self.params.get(&format!("{}.alpha", e.choose)) {
                for (&i, &v) in alive.iter().zip(&a.data) {
                    full[i] = v;
                }
            }
            out.insert(e.choose.clone(), full);
        }
        for n in &space.nodes {
            if let Some(a) = self.params.get(&format!("{}.alpha", n.choose)) {
                out.insert(n.choose.clone(), a.data.clone());
            }
        }
        Ok(out)
    }

    /// Drops the alternatives `drop` names (by `choose`, in the current
    /// graph's indexing) from the supernet, its parameters, the
    /// architecture optimizer's state and the bookkeeping.
    pub(crate) fn drop_ops(&mut self, drop: &BTreeMap<String, usize>) -> Result<(), SearchError> {
        let space = self.space()?;
        let mut keep = BTreeMap::new();
        for e in &space.edges {
            if let Some(&d) = drop.get(&e.choose) {
                keep.insert(
                    e.choose.clone(),
                    (0..e.ops.len()).filter(|&i| i != d).collect::<Vec<_>>(),
                );
            }
        }
        let (g, p) = restrict(&self.graph, &self.params, &keep)?;
        if let Some(parent) = &mut self.parent {
            (parent.graph, parent.params) = restrict(&parent.graph, &parent.params, &keep)?;
        }
        // α's Adam moments shrink with α.
        let mut state = self.arch_optimizer.state();
        for (name, _, data) in &mut state {
            let Some((param, _)) = name.rsplit_once('/') else {
                continue;
            };
            let Some(choose) = param.strip_suffix(".alpha") else {
                continue;
            };
            if let Some(&d) = drop.get(choose)
                && d < data.len()
            {
                data.remove(d);
            }
        }
        let state = state
            .into_iter()
            .map(|(n, _, d)| {
                let len = d.len();
                (n, vec![len], d)
            })
            .collect();
        let steps = self.arch_optimizer.param_steps();
        let count = self.arch_optimizer.step_count();
        self.arch_optimizer.load_state(state, &steps, count)?;
        for (choose, &d) in drop {
            if let Some(alive) = self.alive.get_mut(choose)
                && d < alive.len()
            {
                alive.remove(d);
            }
        }
        self.graph = g;
        self.params = p;
        Ok(())
    }

    /// The search's state as a checkpoint: the parameters of the current
    /// supernet, the weight optimizer's state as `optim/…`, the
    /// architecture optimizer's as `optim/arch:…`, a CP-NAS parent's
    /// parameters as `parent:…` and its optimizer's state as
    /// `optim/parent:…`, and in `extra` the alternatives left, the scores
    /// and the history (JSON).
    pub fn checkpoint(&self) -> Checkpoint {
        let mut optim = self.weight_optimizer.state();
        let mut optim_steps = self.weight_optimizer.param_steps();
        let mut append = |prefix: &str, o: &Optimizer| {
            let named = |n: String| format!("{prefix}{n}");
            optim.extend(o.state().into_iter().map(|(n, s, d)| (named(n), s, d)));
            optim_steps.extend(o.param_steps().into_iter().map(|(n, s)| (named(n), s)));
        };
        append(ARCH_PREFIX, &self.arch_optimizer);
        let mut params = self.params.clone();
        let mut extra = BTreeMap::new();
        if let Some(parent) = &self.parent {
            append(PARENT_PREFIX, &parent.optimizer);
            for (name, t) in &parent.params.tensors {
                params
                    .tensors
                    .insert(format!("{PARENT_PREFIX}{name}"), t.clone());
            }
            extra.insert(
                "nas.parent_steps".into(),
                parent.optimizer.step_count().to_string(),
            );
        }
        extra.insert("nas.alive".into(), json_string(&self.alive));
        extra.insert(
            "nas.scores".into(),
            serde_json::to_string(&self.scores).unwrap_or_default(),
        );
        extra.insert(
            "nas.history".into(),
            serde_json::Value::Array(self.history.iter().map(record_json).collect()).to_string(),
        );
        extra.insert(
            "nas.arch_steps".into(),
            self.arch_optimizer.step_count().to_string(),
        );
        Checkpoint {
            params,
            optim,
            optim_steps,
            epoch: self.epoch,
            batch: 0,
            step: self.weight_optimizer.step_count(),
            seed: self.config.seed,
            rng_state: 0,
            extra,
        }
    }

    /// Restores a state [`checkpoint`](Self::checkpoint) wrote (for the same
    /// model and configuration).
    ///
    /// # Errors
    ///
    /// [`SearchError::Checkpoint`] when it does not fit.
    pub fn restore(&mut self, c: &Checkpoint) -> Result<(), SearchError> {
        let bad = |m: &str| SearchError::Checkpoint(m.to_string());
        let alive: BTreeMap<String, Vec<usize>> = c
            .extra
            .get("nas.alive")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no readable `nas.alive` (was it written by `onebit search`?)"))?;
        let scores: BTreeMap<String, Vec<f32>> = c
            .extra
            .get("nas.scores")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no readable `nas.scores`"))?;
        let history: Vec<serde_json::Value> = c
            .extra
            .get("nas.history")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("no readable `nas.history`"))?;
        let arch_steps: u64 = c
            .extra
            .get("nas.arch_steps")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no readable `nas.arch_steps`"))?;
        if alive.keys().collect::<BTreeSet<_>>() != self.alive.keys().collect::<BTreeSet<_>>() {
            return Err(bad("its edges are not this model's"));
        }
        // Rebuild the reduced supernet from the original.
        let init = Params::init(&self.original, 0);
        let (graph, _) = restrict(&self.original, &init, &alive)?;
        let mut params = c.params.clone();
        let mut parent_params = Params {
            tensors: params
                .tensors
                .extract_if(.., |name, _| name.starts_with(PARENT_PREFIX))
                .map(|(name, t)| (name[PARENT_PREFIX.len()..].to_string(), t))
                .collect(),
            ..Params::default()
        };
        params
            .check(&graph)
            .map_err(|e| SearchError::Checkpoint(e.to_string()))?;
        let mut states: [Vec<_>; 3] = Default::default();
        for (n, s, d) in &c.optim {
            let (owner, n) = optimizer_of(n);
            states[owner].push((n.to_string(), s.clone(), d.clone()));
        }
        let mut steps: [Vec<_>; 3] = Default::default();
        for (n, s) in &c.optim_steps {
            let (owner, n) = optimizer_of(n);
            steps[owner].push((n.to_string(), *s));
        }
        let ([w, a, p], [ws, as_, ps]) = (states, steps);
        if let Some(parent) = &mut self.parent {
            let steps: u64 = c
                .extra
                .get("nas.parent_steps")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    bad("no readable `nas.parent_steps` (was it written by a cp-nas search?)")
                })?;
            let (full, full_init) = full_precision(&self.original, &init)?;
            let (parent_graph, _) = restrict(&full, &full_init, &alive)?;
            parent_params
                .check(&parent_graph)
                .map_err(|e| SearchError::Checkpoint(format!("the parent's parameters: {e}")))?;
            parent.optimizer.load_state(p, &ps, steps)?;
            parent.graph = parent_graph;
            parent.params = parent_params;
        } else if !parent_params.tensors.is_empty() {
            return Err(bad(
                "it holds a CP-NAS parent; resume it with --mode cp-nas",
            ));
        }
        self.weight_optimizer.load_state(w, &ws, c.step)?;
        self.arch_optimizer.load_state(a, &as_, arch_steps)?;
        self.graph = graph;
        self.params = params;
        self.alive = alive;
        self.scores = scores;
        self.epoch = c.epoch;
        self.history = history
            .iter()
            .map(record_from_json)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("an unreadable history record"))?;
        Ok(())
    }
}

/// Copies the values of the parameters `names` that both hold.
fn copy_params(from: &Params, to: &mut Params, names: &BTreeSet<String>) {
    for name in names {
        if let (Some(f), Some(t)) = (from.get(name), to.tensors.get_mut(name)) {
            t.data.clone_from(&f.data);
        }
    }
}

/// The prefix of the architecture optimizer's state in a checkpoint.
const ARCH_PREFIX: &str = "arch:";

/// The prefix of a CP-NAS parent's parameters and optimizer state in a
/// checkpoint.
const PARENT_PREFIX: &str = "parent:";

/// Which optimizer a checkpoint's optimizer entry belongs to (0 the
/// weights', 1 the architecture's, 2 the parent's) and its name there.
fn optimizer_of(name: &str) -> (usize, &str) {
    if let Some(rest) = name.strip_prefix(ARCH_PREFIX) {
        (1, rest)
    } else if let Some(rest) = name.strip_prefix(PARENT_PREFIX) {
        (2, rest)
    } else {
        (0, name)
    }
}

fn json_string(alive: &BTreeMap<String, Vec<usize>>) -> String {
    serde_json::to_string(alive).unwrap_or_default()
}

/// One record as JSON (NaN, a dropped alternative, as `null`).
pub fn record_json(r: &EpochRecord) -> serde_json::Value {
    let alphas: serde_json::Map<String, serde_json::Value> = r
        .alphas
        .iter()
        .map(|(k, v)| {
            let values = v
                .iter()
                .map(|&x| {
                    if x.is_finite() {
                        serde_json::json!(x)
                    } else {
                        serde_json::Value::Null
                    }
                })
                .collect();
            (k.clone(), serde_json::Value::Array(values))
        })
        .collect();
    serde_json::json!({
        "epoch": r.epoch,
        "weight_loss": r.weight_loss,
        "arch_loss": r.arch_loss,
        "val_accuracy": r.val_accuracy,
        "parent_val_accuracy": r.parent_val_accuracy,
        "ops_left": r.ops_left,
        "genotype": r.genotype,
        "dropped": r.dropped,
        "alpha": alphas,
    })
}

fn record_from_json(v: &serde_json::Value) -> Option<EpochRecord> {
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    let alphas = v
        .get("alpha")?
        .as_object()?
        .iter()
        .map(|(k, a)| {
            let values = a
                .as_array()?
                .iter()
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect();
            Some((k.clone(), values))
        })
        .collect::<Option<BTreeMap<_, _>>>()?;
    Some(EpochRecord {
        epoch: v.get("epoch")?.as_u64()? as usize,
        weight_loss: f("weight_loss")?,
        arch_loss: f("arch_loss"),
        val_accuracy: f("val_accuracy")?,
        parent_val_accuracy: f("parent_val_accuracy"),
        alphas,
        ops_left: serde_json::from_value(v.get("ops_left")?.clone()).ok()?,
        genotype: serde_json::from_value(v.get("genotype")?.clone()).ok()?,
        dropped: serde_json::from_value(v.get("dropped")?.clone()).ok()?,
    })
}

/// softmax(α) of one record's edge, over the alternatives left (NaN stays
/// NaN).
pub fn softmax_alive(alpha: &[f32]) -> Vec<f32> {
    let alive: Vec<f32> = alpha.iter().copied().filter(|a| !a.is_nan()).collect();
    let p = softmax(&alive);
    let mut it = p.into_iter();
    alpha
        .iter()
        .map(|a| {
            if a.is_nan() {
                f32::NAN
            } else {
                it.next().unwrap_or(f32::NAN)
            }
        })
        .collect()
}
