//! Optimizers over named `f32` parameter buffers: Adam (and AdamW), SGD with
//! momentum, and Bop for binary weights.
//!
//! The training loop hands [`Optimizer::step`] one [`ParamSlot`] per
//! parameter: its name, its values, its gradient and its [`ParamKind`]. The
//! optimizer keeps its state (moments, step counts) by name, so the slots may
//! be rebuilt for every step and the state can be saved in a checkpoint
//! ([`Optimizer::state`], [`Optimizer::load_state`]).
//!
//! Binary layers keep **latent** real weights whose sign the forward pass uses
//! (BinaryConnect, Courbariaux et al. 2015). With Adam or SGD they are
//! updated like any parameter, without weight decay, and clipped to [−1, 1]
//! afterwards (unless [`Optimizer::clip_latent`] is off), as larq and
//! BinaryNet do: a latent weight far from 0 could never flip again.
//!
//! **Bop** (Helwegen et al., "Latent weights do not exist", NeurIPS 2019)
//! treats binary weights as ±1 only: `m ← m + γ(g − m)` (an exponential moving
//! average of the gradient), then `w ← −w` where `w·m > τ`, i.e. where
//! `|m| > τ` and the gradient has pushed consistently against the sign of `w`
//! (larq's formulation). With Bop, `LatentBinary` values are set to
//! `sign(value)` (+1 for 0) at every step before the update, so the first step
//! binarises latent weights and the values stay exactly ±1 afterwards.
//! Real-valued parameters go to Bop's `real` optimizer (larq's
//! `CaseOptimizer`, usually `Adam(0.01)`).
//!
//! **Learning-rate scaling.** `step(slots, lr_scale)` multiplies every learning
//! rate by `lr_scale` (the schedule's factor). For Bop it multiplies `γ` too:
//! `γ` is Bop's adaptivity rate, the quantity the paper decays (×0.1 every 100
//! epochs in §5.2); `τ` stays fixed.
//!
//! **Threads.** A parameter of more than [`PARALLEL_THRESHOLD`] elements is
//! updated by up to [`Optimizer::threads`] threads (on the caller's rayon
//! pool), each on a contiguous range. Every update is elementwise, so the result is
//! bit-identical to the single-threaded one.

use std::collections::BTreeMap;

mod adam;
mod bop;
mod pieces;
mod sgd;
#[cfg(test)]
mod tests;

use adam::{AdamStep, adam};
use bop::bop;
use sgd::sgd;

/// Parameters larger than this many elements are updated on several threads.
pub const PARALLEL_THRESHOLD: usize = 1 << 16;

/// How a parameter is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// A real-valued parameter (first and last layers, batchnorm, biases).
    Real,
    /// The latent real weight of a binary layer (its sign is used forward).
    LatentBinary,
    /// Not trained (e.g. batchnorm running statistics).
    Frozen,
}

/// One parameter for one step.
#[derive(Debug)]
pub struct ParamSlot<'a> {
    /// The parameter's full name, e.g. `c1.weight`.
    pub name: &'a str,
    /// Its values, updated in place.
    pub value: &'a mut [f32],
    /// The gradient of the loss with respect to `value` (same length).
    pub grad: &'a [f32],
    /// How it is trained.
    pub kind: ParamKind,
}

/// An optimizer and its hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// Adam (Kingma & Ba 2015), with PyTorch's bias correction.
    Adam {
        /// Learning rate (PyTorch default 1e-3).
        lr: f32,
        /// First-moment decay (0.9).
        beta1: f32,
        /// Second-moment decay (0.999).
        beta2: f32,
        /// Added to the denominator (1e-8).
        eps: f32,
        /// Weight decay for `Real` parameters (0).
        weight_decay: f32,
        /// `false`: L2, `weight_decay · w` added to the gradient (PyTorch
        /// `Adam`); `true`: decoupled, `w ← w − lr · weight_decay · w` before
        /// the Adam update (PyTorch `AdamW`).
        decoupled: bool,
    },
    /// Stochastic gradient descent (PyTorch `SGD`, no dampening).
    Sgd {
        /// Learning rate (PyTorch default 1e-3).
        lr: f32,
        /// Momentum (0 for none).
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay for `Real` parameters.
        weight_decay: f32,
    },
    /// Bop for `LatentBinary` parameters; `real` for `Real` ones.
    Bop {
        /// Adaptivity rate γ (larq default 1e-4).
        gamma: f32,
        /// Threshold τ (larq default 1e-8).
        tau: f32,
        /// The optimizer of the real-valued parameters (Adam or SGD).
        real: Box<OptimizerConfig>,
    },
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8.
    pub fn adam() -> OptimizerConfig {
        OptimizerConfig::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        }
    }

    /// AdamW with PyTorch's defaults: as [`adam`](Self::adam) with decoupled
    /// weight decay 0.01.
    pub fn adamw() -> OptimizerConfig {
        OptimizerConfig::Adam {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: true,
        }
    }

    /// Plain SGD with learning rate `lr`.
    pub fn sgd(lr: f32) -> OptimizerConfig {
        OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// Bop with larq's defaults (γ = 1e-4, τ = 1e-8) and Adam(lr 1e-2) for the
    /// real-valued parameters.
    pub fn bop() -> OptimizerConfig {
        let OptimizerConfig::Adam {
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
            ..
        } = OptimizerConfig::adam()
        else {
            unreachable!()
        };
        OptimizerConfig::Bop {
            gamma: 1e-4,
            tau: 1e-8,
            real: Box::new(OptimizerConfig::Adam {
                lr: 1e-2,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            }),
        }
    }

    /// Checks the hyperparameters.
    fn validate(&self) -> Result<(), OptimError> {
        let bad = |what: &str, v: f32, range: &str| {
            Err(OptimError::Config(format!(
                "{what} is {v}, expected {range}"
            )))
        };
        match *self {
            OptimizerConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                if !(lr >= 0.0 && lr.is_finite()) {
                    return bad("Adam lr", lr, "a finite number >= 0");
                }
                if !(0.0..1.0).contains(&beta1) {
                    return bad("Adam beta1", beta1, "a number in [0, 1)");
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("Adam beta2", beta2, "a number in [0, 1)");
                }
                if !(eps > 0.0 && eps.is_finite()) {
                    return bad("Adam eps", eps, "a finite number > 0");
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad("Adam weight_decay", weight_decay, "a finite number >= 0");
                }
            }
            OptimizerConfig::Sgd {
                lr,
                momentum,
                nesterov,
                weight_decay,
            } => {
                if !(lr >= 0.0 && lr.is_finite()) {
                    return bad("SGD lr", lr, "a finite number >= 0");
                }
                if !(0.0..1.0).contains(&momentum) {
                    return bad("SGD momentum", momentum, "a number in [0, 1)");
                }
                if nesterov && momentum == 0.0 {
                    return Err(OptimError::Config(
                        "SGD nesterov needs a momentum > 0".to_string(),
                    ));
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return bad("SGD weight_decay", weight_decay, "a finite number >= 0");
                }
            }
            OptimizerConfig::Bop {
                gamma,
                tau,
                ref real,
            } => {
                if !(0.0..=1.0).contains(&gamma) {
                    return bad("Bop gamma", gamma, "a number in [0, 1]");
                }
                if !(tau >= 0.0 && tau.is_finite()) {
                    return bad("Bop tau", tau, "a finite number >= 0");
                }
                if matches!(**real, OptimizerConfig::Bop { .. }) {
                    return Err(OptimError::Config(
                        "Bop's optimizer for real-valued parameters must be Adam or SGD, not Bop"
                            .to_string(),
                    ));
                }
                real.validate()?;
            }
        }
        Ok(())
    }
}

/// What can go wrong configuring or stepping an optimizer, or loading its state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter is out of range.
    #[error("invalid optimizer configuration: {0}")]
    Config(String),
    /// A slot's gradient does not match its values, or its saved state.
    #[error("parameter {name}: {message}")]
    Shape {
        /// The parameter.
        name: String,
        /// What does not match.
        message: String,
    },
    /// Saved state that cannot belong to this optimizer.
    #[error("optimizer state: {0}")]
    State(String),
}

/// Per-parameter state.
#[derive(Clone, Debug, Default, PartialEq)]
struct ParamState {
    /// Adam's first moment, SGD's momentum buffer, or Bop's gradient average;
    /// empty when unused (plain SGD).
    m: Vec<f32>,
    /// Adam's second moment; empty otherwise.
    v: Vec<f32>,
    /// Updates applied to this parameter (Adam's bias correction).
    step: u64,
    /// The shape the state was saved with, for export (flat when created here).
    shape: Option<Vec<usize>>,
}

/// An optimizer with its state; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The hyperparameters.
    pub config: OptimizerConfig,
    /// Clip `LatentBinary` parameters to [−1, 1] after an Adam or SGD update
    /// (default `true`; Bop keeps them at ±1 instead).
    pub clip_latent: bool,
    /// Threads for large parameters (default: the machine's parallelism).
    pub threads: usize,
    steps: u64,
    state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    /// A fresh optimizer.
    ///
    /// # Errors
    ///
    /// [`OptimError::Config`] for a hyperparameter out of range (a negative
    /// learning rate, a beta outside [0, 1), Bop inside Bop, ...).
    pub fn new(config: OptimizerConfig) -> Result<Optimizer, OptimError> {
        config.validate()?;
        Ok(Optimizer {
            config,
            clip_latent: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            steps: 0,
            state: BTreeMap::new(),
        })
    }

    /// How many times [`step`](Self::step) has run (including steps restored
    /// by [`load_state`](Self::load_state)).
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// Applies one update to every slot, with every learning rate (and Bop's
    /// γ) multiplied by `lr_scale`. `Frozen` slots are left alone.
    ///
    /// # Errors
    ///
    /// [`OptimError::Shape`] if a slot's gradient is not as long as its values,
    /// or its length differs from the state kept under its name. Slots are
    /// checked before any is updated, so an error changes nothing.
    pub fn step(&mut self, slots: &mut [ParamSlot], lr_scale: f32) -> Result<(), OptimError> {
        for slot in slots.iter() {
            if slot.kind == ParamKind::Frozen {
                continue;
            }
            if slot.grad.len() != slot.value.len() {
                return Err(OptimError::Shape {
                    name: slot.name.to_string(),
                    message: format!(
                        "gradient has {} elements, the parameter {}",
                        slot.grad.len(),
                        slot.value.len()
                    ),
                });
            }
            if let Some(s) = self.state.get(slot.name) {
                let n = slot.value.len();
                if (!s.m.is_empty() && s.m.len() != n) || (!s.v.is_empty() && s.v.len() != n) {
                    return Err(OptimError::Shape {
                        name: slot.name.to_string(),
                        message: format!(
                            "the parameter has {n} elements, its optimizer state {}",
                            s.m.len().max(s.v.len())
                        ),
                    });
                }
            }
        }
        let threads = self.threads.max(1);
        for slot in slots.iter_mut() {
            let (config, wd_applies, clip) = match (&self.config, slot.kind) {
                (_, ParamKind::Frozen) => continue,
                (OptimizerConfig::Bop { gamma, tau, .. }, ParamKind::LatentBinary) => {
                    let state = self.state.entry(slot.name.to_string()).or_default();
                    bop(slot, state, gamma * lr_scale, *tau, threads);
                    continue;
                }
                (OptimizerConfig::Bop { real, .. }, ParamKind::Real) => (&**real, true, false),
                (config, ParamKind::Real) => (config, true, false),
                (config, ParamKind::LatentBinary) => (config, false, self.clip_latent),
            };
            let state = self.state.entry(slot.name.to_string()).or_default();
            match *config {
                OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled,
                } => {
                    let wd = if wd_applies { weight_decay } else { 0.0 };
                    let h = AdamStep::new(
                        lr * lr_scale,
                        beta1,
                        beta2,
                        eps,
                        wd,
                        decoupled,
                        state.step + 1,
                    );
                    adam(slot, state, &h, clip, threads);
                }
                OptimizerConfig::Sgd {
                    lr,
                    momentum,
                    nesterov,
                    weight_decay,
                } => {
                    let wd = if wd_applies { weight_decay } else { 0.0 };
                    sgd(
                        slot,
                        state,
                        lr * lr_scale,
                        momentum,
                        nesterov,
                        wd,
                        clip,
                        threads,
                    );
                }
                // Excluded by `validate`: Bop's `real` is never Bop.
                OptimizerConfig::Bop { .. } => continue,
            }
            state.step += 1;
        }
        self.steps += 1;
        Ok(())
    }

    /// The state tensors, for a checkpoint: `NAME/m` and `NAME/v` (whichever
    /// the optimizer uses), each flat (`[len]`) unless loaded with another
    /// shape, in name order. Per-parameter step counts are in
    /// [`param_steps`](Self::param_steps).
    pub fn state(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        for (name, s) in &self.state {
            for (suffix, data) in [("m", &s.m), ("v", &s.v)] {
                if data.is_empty() {
                    continue;
                }
                let shape = match &s.shape {
                    Some(shape) if shape.iter().product::<usize>() == data.len() => shape.clone(),
                    _ => vec![data.len()],
                };
                out.push((format!("{name}/{suffix}"), shape, data.clone()));
            }
        }
        out
    }

    /// Updates applied to each parameter, in name order.
    pub fn param_steps(&self) -> Vec<(String, u64)> {
        self.state
            .iter()
            .map(|(n, s)| (n.clone(), s.step))
            .collect()
    }

    /// Replaces the state with one exported by [`state`](Self::state),
    /// [`param_steps`](Self::param_steps) and [`step_count`](Self::step_count).
    ///
    /// # Errors
    ///
    /// [`OptimError::State`] for a tensor name without `/m` or `/v`, a shape
    /// that does not match its data, `m` and `v` of different lengths, a
    /// tensor of this optimizer's kind missing (Adam needs both; Bop's
    /// binary parameters only `m`), or a step count for no tensor. The current
    /// state is kept on error.
    pub fn load_state(
        &mut self,
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
        param_steps: &[(String, u64)],
        step_count: u64,
    ) -> Result<(), OptimError> {
        let mut state: BTreeMap<String, ParamState> = BTreeMap::new();
        for (full, shape, data) in tensors {
            let Some((name, suffix)) = full.rsplit_once('/') else {
                return Err(OptimError::State(format!(
                    "tensor '{full}' is not named PARAM/m or PARAM/v"
                )));
            };
            if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(data.len()) {
                return Err(OptimError::State(format!(
                    "tensor '{full}' has shape {shape:?} but {} values",
                    data.len()
                )));
            }
            let s = state.entry(name.to_string()).or_default();
            match suffix {
                "m" if s.m.is_empty() => s.m = data,
                "v" if s.v.is_empty() => s.v = data,
                "m" | "v" => {
                    return Err(OptimError::State(format!("tensor '{full}' appears twice")));
                }
                _ => {
                    return Err(OptimError::State(format!(
                        "tensor '{full}' is not named PARAM/m or PARAM/v"
                    )));
                }
            }
            s.shape = Some(shape);
        }
        for (name, s) in &state {
            if !s.m.is_empty() && !s.v.is_empty() && s.m.len() != s.v.len() {
                return Err(OptimError::State(format!(
                    "{name}/m has {} values but {name}/v has {}",
                    s.m.len(),
                    s.v.len()
                )));
            }
            let adam = matches!(self.config, OptimizerConfig::Adam { .. })
                || matches!(&self.config, OptimizerConfig::Bop { real, .. }
                    if matches!(**real, OptimizerConfig::Adam { .. }) && !s.v.is_empty());
            if adam && (s.m.is_empty() != s.v.is_empty()) {
                return Err(OptimError::State(format!(
                    "{name}: Adam needs both {name}/m and {name}/v"
                )));
            }
        }
        for (name, step) in param_steps {
            match state.get_mut(name) {
                Some(s) => s.step = *step,
                // Plain SGD keeps no tensors, only the count.
                None if matches!(
                    self.config,
                    OptimizerConfig::Sgd { momentum, .. } if momentum == 0.0
                ) || matches!(&self.config, OptimizerConfig::Bop { real, .. }
                    if matches!(**real, OptimizerConfig::Sgd { momentum, .. } if momentum == 0.0)) =>
                {
                    state.insert(
                        name.clone(),
                        ParamState {
                            step: *step,
                            ..ParamState::default()
                        },
                    );
                }
                None => {
                    return Err(OptimError::State(format!(
                        "a step count for '{name}', which has no state tensors"
                    )));
                }
            }
        }
        self.state = state;
        self.steps = step_count;
        Ok(())
    }
}
