//! The training loop's core: a model's training step compiled once, then
//! called batch after batch.
//!
//! [`Trainer::new`] runs the `differentiate` pass on the model and plans the
//! training graph on an engine: the reference interpreter, or the compiled
//! step ([`super::engine`]) where it is available. [`Trainer::step`] runs the
//! graph on one batch, hands the gradients to the [`Optimizer`], and writes
//! the batch statistics into the running averages, so after any step
//! [`Trainer::params`] is a complete set of inference weights.
//!
//! Evaluation is the ordinary inference path: the default pass pipeline folds
//! batchnorm and the XNOR scales into integer thresholds and the JIT compiles
//! the folded model ([`evaluate`]), so the accuracy reported while training
//! is that of the code that will be deployed.
//!
//! ```
//! use onebit::train::data::{Normalize, digits, split};
//! use onebit::train::optim::OptimizerConfig;
//! use onebit::train::trainer::{Trainer, TrainerConfig};
//!
//! let model = onebit::parse(
//!     "model m { input x: f32[1, 8, 8]  h = dense(flatten(x), 32)
//!                s = sign(batchnorm(h))  y = batchnorm(bdense(s, 10))  output y }",
//! )?;
//! let mut data = digits();
//! Normalize::digits().apply(&mut data)?;
//! let (train, test) = split(&data, 0.2, 1);
//! let config = TrainerConfig { optimizer: OptimizerConfig::adam(), ..Default::default() };
//! let mut trainer = Trainer::new(&model, onebit::ir::Params::init(&model, 1), &config)?;
//! for epoch in 0..3 {
//!     for batch in onebit::train::data::Batches::new(train.len(), 64, 1, epoch).iter() {
//!         let (mut x, mut y) = (Vec::new(), Vec::new());
//!         onebit::train::data::fill(&train, batch, &mut x, &mut y);
//!         trainer.step(&x, &y, 1.0)?;
//!     }
//! }
//! let accuracy = onebit::train::trainer::evaluate(&model, trainer.params(), &test, 256, 1)?.accuracy();
//! assert!(accuracy > 0.5, "accuracy {accuracy}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;

use super::data::Dataset;
use super::engine::{EngineError, EngineOptions, StepEngine};
use super::kernel_loss::{KernelTargets, add_kernel_loss};
use super::optim::{OptimError, Optimizer, OptimizerConfig, ParamKind, ParamSlot};
use crate::ir::interp::{self, InterpError};
use crate::ir::params::graph_params;
use crate::ir::{Graph, Params, Tensor};
use crate::passes::differentiate::{DifferentiateError, LossSpec, TrainingGraph, differentiate};

/// What runs the training graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepRunner {
    /// The compiled step ([`super::engine::StepEngine`]), tested against the
    /// interpreter.
    #[default]
    Engine,
    /// The reference interpreter (slow; the oracle).
    Interpreter,
}

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainerConfig {
    /// What runs the training graph.
    pub runner: StepRunner,
    /// The optimizer (Adam, SGD or Bop with a real-valued optimizer).
    pub optimizer: OptimizerConfig,
    /// Label smoothing of the cross-entropy.
    pub smoothing: f32,
    /// The weight of the weight quantization loss added to the
    /// cross-entropy (`LossSpec::quantization`; 0: none).
    pub quantization_loss: f32,
    /// The weight of PCNN's projection loss over the layers with
    /// `projection=true` (`LossSpec::projection`; 0: none).
    pub projection_loss: f32,
    /// The weight of the distribution loss on pre-sign activations added to
    /// the cross-entropy (`LossSpec::distribution`; 0: none).
    pub distribution_loss: f32,
    /// Clip latent binary weights to [−1, 1] after each step (BinaryConnect).
    pub clip_latent: bool,
    /// Threads for the step and the optimizer.
    pub threads: usize,
}

impl Default for TrainerConfig {
    fn default() -> TrainerConfig {
        TrainerConfig {
            runner: StepRunner::Engine,
            optimizer: OptimizerConfig::adam(),
            smoothing: 0.0,
            quantization_loss: 0.0,
            projection_loss: 0.0,
            distribution_loss: 0.0,
            clip_latent: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Why training cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model cannot be differentiated.
    #[error("{0}")]
    Differentiate(#[from] DifferentiateError),
    /// The model has more than one input.
    #[error("training takes a model with one input, `{model}` has {found}")]
    Inputs {
        /// The model.
        model: String,
        /// How many it has.
        found: usize,
    },
    /// A batch does not fit the model.
    #[error(
        "a batch of {samples} samples has {values} values; the model's input takes {per} per sample"
    )]
    Batch {
        /// Samples (labels given).
        samples: usize,
        /// Values given.
        values: usize,
        /// Values per sample.
        per: usize,
    },
    /// A label is not one of the model's classes.
    #[error("label {label} is not a class of a model with {classes} logits")]
    Label {
        /// The label.
        label: u32,
        /// The number of logits.
        classes: usize,
    },
    /// The starting parameters do not fit the model.
    #[error("{0}")]
    Params(#[from] crate::ir::params::ParamsError),
    /// The training step failed on the interpreter.
    #[error("training step: {0}")]
    Step(#[from] InterpError),
    /// The training step failed on the engine.
    #[error("training step: {0}")]
    Engine(#[from] EngineError),
    /// The optimizer refused the update.
    #[error("{0}")]
    Optim(#[from] OptimError),
    /// Evaluation failed.
    #[error("evaluation: {0}")]
    Eval(#[from] crate::Error),
    /// The loss is not finite: training diverged.
    #[error("the loss is {0} at step {1}: training diverged (try a smaller --lr)")]
    Diverged(f32, u64),
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    /// The loss: the mean cross-entropy over the batch, plus the weighted
    /// extra terms when the configuration asks for them.
    pub loss: f32,
    /// Samples whose largest logit is their label's.
    pub correct: usize,
    /// Samples in the batch.
    pub count: usize,
}

/// A model's training step, its parameters and its optimizer.
pub struct Trainer {
    train: TrainingGraph,
    /// The compiled step, or `None` for the interpreter.
    engine: Option<StepEngine>,
    params: Params,
    optimizer: Optimizer,
    kinds: HashMap<String, ParamKind>,
    /// Where the logits are among the step's outputs.
    logits_output: usize,
    /// Where the gradients start among the step's outputs.
    first_gradient: usize,
    sample_len: usize,
    classes: usize,
    steps: u64,
    /// The step's inputs and outputs, kept so their buffers are reused.
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    /// CP-NAS's child-parent kernel loss, when set.
    kernel_targets: Option<KernelTargets>,
}

impl Trainer {
    /// Differentiates `model` and prepares its training step, starting from
    /// `params` (checked against the model).
    pub fn new(
        model: &Graph,
        params: Params,
        config: &TrainerConfig,
    ) -> Result<Trainer, TrainError> {
        if model.inputs().len() != 1 {
            return Err(TrainError::Inputs {
                model: model.name.clone(),
                found: model.inputs().len(),
            });
        }
        let train = differentiate(
            model,
            &LossSpec {
                logits: None,
                smoothing: config.smoothing,
                quantization: config.quantization_loss,
                projection: config.projection_loss,
                distribution: config.distribution_loss,
            },
        )?;
        let mut params = params;
        params.check(model)?;
        let mut optimizer = Optimizer::new(config.optimizer.clone())?;
        optimizer.clip_latent = config.clip_latent;
        optimizer.threads = config.threads.max(1);
        let kinds = graph_params(model)
            .into_iter()
            .map(|p| {
                let kind = if p.binary {
                    ParamKind::LatentBinary
                } else {
                    ParamKind::Real
                };
                (p.name, kind)
            })
            .collect();
        let outputs = train.graph.outputs();
        let logits_output = outputs.iter().position(|&o| o == train.logits).unwrap_or(1);
        let first_gradient = 1 + model.outputs().len();
        let input = model.node(model.inputs()[0]);
        let sample_len = input.ty.shape.elements();
        let classes = train.graph.node(train.logits).ty.shape.elements();
        let engine = match config.runner {
            StepRunner::Engine => Some(StepEngine::new(
                &train.graph,
                &EngineOptions {
                    threads: config.threads.max(1),
                },
            )?),
            StepRunner::Interpreter => None,
        };
        Ok(Trainer {
            engine,
            train,
            params,
            optimizer,
            kinds,
            logits_output,
            first_gradient,
            sample_len,
            classes,
            steps: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            kernel_targets: None,
        })
    }

    /// One training step on a batch: `x` holds the samples one after another,
    /// `labels` one class per sample. The learning rate is the optimizer's
    /// times `lr_scale` (the schedule's factor).
    pub fn step(
        &mut self,
        x: &[f32],
        labels: &[u32],
        lr_scale: f32,
    ) -> Result<StepMetrics, TrainError> {
        self.step_subset(x, labels, lr_scale, None, &|_| true)
    }

    /// [`step`](Self::step) that updates only the parameters `update`
    /// accepts, with `optimizer` (or the trainer's own for `None`): the
    /// alternating weight and architecture steps of a search, each with its
    /// own optimizer. The gradient of every parameter is still computed; the
    /// running statistics are updated as in `step`.
    pub fn step_subset(
        &mut self,
        x: &[f32],
        labels: &[u32],
        lr_scale: f32,
        optimizer: Option<&mut Optimizer>,
        update: &dyn Fn(&str) -> bool,
    ) -> Result<StepMetrics, TrainError> {
        let n = labels.len();
        if x.len() != n * self.sample_len || n == 0 {
            return Err(TrainError::Batch {
                samples: n,
                values: x.len(),
                per: self.sample_len,
            });
        }
        let g = &self.train.graph;
        self.inputs.resize_with(2, Tensor::default);
        let [sample, target] = &mut self.inputs[..] else {
            unreachable!("resized to two inputs above")
        };
        sample.shape.clear();
        sample.shape.push(n);
        sample
            .shape
            .extend_from_slice(g.node(g.inputs()[0]).ty.dims());
        sample.data.clear();
        sample.data.extend_from_slice(x);
        target.shape = vec![n, self.classes];
        one_hot_into(labels, self.classes, &mut target.data)?;
        match &mut self.engine {
            Some(engine) => engine.run_into(&self.params, &self.inputs, &mut self.outputs)?,
            None => self.outputs = interp::run(g, &self.params, &self.inputs)?,
        }
        self.steps += 1;
        let mut loss = self.outputs[0].data[0];
        if let Some(targets) = self.kernel_targets.take() {
            loss += self.kernel_loss_into_gradients(&targets, update);
            self.kernel_targets = Some(targets);
        }
        let outputs = &self.outputs;
        if !loss.is_finite() {
            return Err(TrainError::Diverged(loss, self.steps));
        }
        let correct = count_correct(&outputs[self.logits_output].data, labels, self.classes);

        let gradients = &outputs[self.first_gradient..][..self.train.gradients.len()];
        let mut values: Vec<(String, Vec<f32>)> = self
            .train
            .gradients
            .iter()
            .filter(|(name, _)| update(name))
            .map(|(name, _)| {
                let value = self
                    .params
                    .tensors
                    .get_mut(name)
                    .map(|t| std::mem::take(&mut t.data));
                (name.clone(), value.unwrap_or_default())
            })
            .collect();
        let mut slots: Vec<ParamSlot> = values
            .iter_mut()
            .zip(
                gradients
                    .iter()
                    .zip(&self.train.gradients)
                    .filter(|(_, (name, _))| update(name))
                    .map(|(g, _)| g),
            )
            .map(|((name, value), grad)| ParamSlot {
                name,
                value,
                grad: &grad.data,
                kind: self
                    .kinds
                    .get(name.as_str())
                    .copied()
                    .unwrap_or(ParamKind::Real),
            })
            .collect();
        let optimizer = match optimizer {
            Some(o) => o,
            None => &mut self.optimizer,
        };
        let updated = optimizer.step(&mut slots, lr_scale);
        drop(slots);
        for (name, value) in values {
            if let Some(t) = self.params.tensors.get_mut(&name) {
                t.data = value;
            }
        }
        updated?;
        let running = &outputs[self.first_gradient + self.train.gradients.len()..];
        for ((name, _), value) in self.train.running.iter().zip(running) {
            if let Some(t) = self.params.tensors.get_mut(name) {
                t.data.clone_from(&value.data);
            }
        }
        Ok(StepMetrics {
            loss,
            correct,
            count: n,
        })
    }

    /// Adds CP-NAS's child-parent kernel loss ([`super::kernel_loss`]) to
    /// every later step: each latent binary weight that `targets` has a
    /// kernel of the same size for is pulled towards it. `None` removes it.
    pub fn set_kernel_targets(&mut self, targets: Option<KernelTargets>) {
        self.kernel_targets = targets;
    }

    /// The kernel loss of the step just run, added to the gradients of the
    /// latent binary weights `update` accepts.
    fn kernel_loss_into_gradients(
        &mut self,
        targets: &KernelTargets,
        update: &dyn Fn(&str) -> bool,
    ) -> f32 {
        let mut loss = 0.0;
        let gradients = &mut self.outputs[self.first_gradient..][..self.train.gradients.len()];
        for ((name, _), grad) in self.train.gradients.iter().zip(gradients) {
            let binary = self.kinds.get(name.as_str()) == Some(&ParamKind::LatentBinary);
            let (Some(latent), Some(target)) = (self.params.get(name), targets.kernels.get(name))
            else {
                continue;
            };
            if binary && update(name) && target.len() == latent.data.len() {
                let rows = latent.shape.first().copied().unwrap_or(1);
                loss += add_kernel_loss(&latent.data, target, rows, targets.weight, &mut grad.data);
            }
        }
        loss
    }

    /// The current parameters: inference weights, running statistics included.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The parameters, to change some between steps (checked by the next
    /// step).
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// Replaces the parameters (a resumed run), checked by the next step.
    pub fn set_params(&mut self, params: Params) {
        self.params = params;
    }

    /// The optimizer (its state goes into checkpoints).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The optimizer, to restore its state.
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }

    /// The training-step graph.
    pub fn training_graph(&self) -> &TrainingGraph {
        &self.train
    }

    /// Steps run so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// `labels` as one-hot rows of `classes` values.
/// `labels` as one-hot rows of `classes` into `t`.
fn one_hot_into(labels: &[u32], classes: usize, t: &mut Vec<f32>) -> Result<(), TrainError> {
    t.clear();
    t.resize(labels.len() * classes, 0.0);
    for (row, &label) in labels.iter().enumerate() {
        if label as usize >= classes {
            return Err(TrainError::Label { label, classes });
        }
        t[row * classes + label as usize] = 1.0;
    }
    Ok(())
}

/// Samples whose first largest logit is at their label.
fn count_correct(logits: &[f32], labels: &[u32], classes: usize) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(s, &label)| predicted(&logits[s * classes..][..classes]) == label as usize)
        .count()
}

/// The index of the first largest value.
pub fn predicted(row: &[f32]) -> usize {
    let mut best = 0;
    for (k, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = k;
        }
    }
    best
}

/// Accuracy and confusion of a classifier on a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Samples classified correctly.
    pub correct: usize,
    /// Samples.
    pub total: usize,
    /// `confusion[label][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

impl Evaluation {
    /// `correct / total` (0 for no samples).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// Evaluates `model` with `params` on `data` the way it will be deployed:
/// the default pass pipeline, then the JIT, `batch` samples at a time on
/// `threads` threads. The first output is the logits.
pub fn evaluate(
    model: &Graph,
    params: &Params,
    data: &Dataset,
    batch: usize,
    threads: usize,
) -> Result<Evaluation, TrainError> {
    let mut graph = model.clone();
    let mut folded = params.clone();
    crate::optimize(&mut graph, &mut folded)?;
    let compiled = crate::compile_graph(
        &graph,
        &folded,
        &crate::Options {
            threads: threads.max(1),
            ..Default::default()
        },
    )?;
    let classes = model.node(model.outputs()[0]).ty.shape.elements();
    evaluate_with(data, batch, classes, |x, n| {
        Ok(compiled
            .run_many(&[x], n)
            .map_err(crate::Error::from)?
            .swap_remove(0))
    })
}

/// [`evaluate`] with the reference interpreter on the model as written (no
/// passes): the oracle for what the JIT reports.
pub fn evaluate_interpreted(
    model: &Graph,
    params: &Params,
    data: &Dataset,
    batch: usize,
) -> Result<Evaluation, TrainError> {
    let classes = model.node(model.outputs()[0]).ty.shape.elements();
    let dims = model.node(model.inputs()[0]).ty.dims().to_vec();
    evaluate_with(data, batch, classes, |x, n| {
        let mut shape = vec![n];
        shape.extend_from_slice(&dims);
        let out = interp::run(
            model,
            params,
            &[Tensor {
                shape,
                data: x.to_vec(),
            }],
        )?;
        Ok(out.into_iter().next().map(|t| t.data).unwrap_or_default())
    })
}

/// [`evaluate`] on the step engine, running the model as written (batch
/// normalisation on running statistics): the same arithmetic as the
/// interpreter up to f32 summation order, at GEMM speed, without the passes
/// and the compile. For monitoring during training; what is deployed is
/// measured by [`evaluate`].
pub fn evaluate_on_engine(
    model: &Graph,
    params: &Params,
    data: &Dataset,
    batch: usize,
    threads: usize,
) -> Result<Evaluation, TrainError> {
    let classes = model.node(model.outputs()[0]).ty.shape.elements();
    let dims = model.node(model.inputs()[0]).ty.dims().to_vec();
    let mut engine = StepEngine::new(
        model,
        &EngineOptions {
            threads: threads.max(1),
        },
    )?;
    let mut inputs = vec![Tensor::default()];
    let mut outputs = Vec::new();
    evaluate_with(data, batch, classes, |x, n| {
        let input = &mut inputs[0];
        input.shape.clear();
        input.shape.push(n);
        input.shape.extend_from_slice(&dims);
        input.data.clear();
        input.data.extend_from_slice(x);
        engine.run_into(params, &inputs, &mut outputs)?;
        Ok(std::mem::take(&mut outputs[0].data))
    })
}

fn evaluate_with(
    data: &Dataset,
    batch: usize,
    classes: usize,
    mut run: impl FnMut(&[f32], usize) -> Result<Vec<f32>, TrainError>,
) -> Result<Evaluation, TrainError> {
    let mut confusion = vec![vec![0usize; classes]; data.classes.max(classes)];
    let mut correct = 0;
    let per = data.sample_len();
    let batch = batch.max(1);
    for start in (0..data.len()).step_by(batch) {
        let n = batch.min(data.len() - start);
        let logits = run(&data.images[start * per..][..n * per], n)?;
        for s in 0..n {
            let label = data.labels[start + s] as usize;
            let p = predicted(&logits[s * classes..][..classes]);
            correct += usize::from(p == label);
            if let Some(row) = confusion.get_mut(label) {
                row[p] += 1;
            }
        }
    }
    Ok(Evaluation {
        correct,
        total: data.len(),
        confusion,
    })
}
