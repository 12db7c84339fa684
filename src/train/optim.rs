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
//! updated by up to [`Optimizer::threads`] threads (`std::thread::scope`), each
//! on a contiguous range. Every update is elementwise, so the result is
//! bit-identical to the single-threaded one.

use std::collections::BTreeMap;

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

/// Contiguous ranges covering `0..n`, one per thread (one range for small `n`).
fn ranges(n: usize, threads: usize) -> Vec<std::ops::Range<usize>> {
    if n == 0 {
        // One empty range, so that callers always run the update once.
        return std::iter::once(0..0).collect();
    }
    let t = if n > PARALLEL_THRESHOLD {
        threads.max(1)
    } else {
        1
    };
    let chunk = n.div_ceil(t);
    (0..n)
        .step_by(chunk)
        .map(|s| s..(s + chunk).min(n))
        .collect()
}

/// Splits `buf` at `ranges` (contiguous, from 0); an empty `buf` (unused
/// state) gives empty pieces.
fn split<'a>(mut buf: &'a mut [f32], ranges: &[std::ops::Range<usize>]) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        if buf.is_empty() {
            out.push(&mut [][..]);
            continue;
        }
        let (head, tail) = buf.split_at_mut(r.len());
        out.push(head);
        buf = tail;
    }
    out
}

/// Runs `f(w, g, m, v)` over matching pieces of the buffers, on several
/// threads when the parameter is large.
fn for_pieces(
    threads: usize,
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    f: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
) {
    let rs = ranges(w.len(), threads);
    if rs.len() <= 1 {
        f(w, g, m, v);
        return;
    }
    let ws = split(w, &rs);
    let ms = split(m, &rs);
    let vs = split(v, &rs);
    let f = &f;
    // On the current rayon pool (the caller's, or the global one): spawning
    // threads per parameter per step cost more than the update itself.
    rayon::scope(|scope| {
        for (((w, m), v), r) in ws.into_iter().zip(ms).zip(vs).zip(&rs) {
            let g = &g[r.clone()];
            scope.spawn(move |_| f(w, g, m, v));
        }
    });
}

/// Clips latent weights to [−1, 1] (BinaryConnect), keeping NaN as `clamp`
/// does, in a form the compiler vectorises.
#[inline(always)]
fn clip_latent(w: &mut [f32]) {
    for w in w {
        *w = if *w > 1.0 {
            1.0
        } else if *w < -1.0 {
            -1.0
        } else {
            *w
        };
    }
}

/// Runs `f` compiled for AVX-512 where the CPU has it. The update loops are
/// elementwise IEEE operations (no FMA contraction in Rust), so the wide
/// build computes the same bits as the baseline one, 16 lanes at a time.
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { avx512(f) };
        }
    }
    f()
}

/// Adam's coefficients for one step.
#[derive(Clone, Copy)]
struct AdamStep {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    wd: f32,
    decoupled: bool,
    /// `lr / (1 − beta1^t)`.
    step_size: f32,
    /// `sqrt(1 − beta2^t)`.
    bc2_sqrt: f32,
}

impl AdamStep {
    #[allow(clippy::too_many_arguments)]
    fn new(
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        wd: f32,
        decoupled: bool,
        t: u64,
    ) -> AdamStep {
        // In f64, as PyTorch computes the bias corrections in Python floats.
        let t = t.min(i32::MAX as u64) as i32;
        let bc1 = 1.0 - (beta1 as f64).powi(t);
        let bc2 = 1.0 - (beta2 as f64).powi(t);
        AdamStep {
            lr,
            beta1,
            beta2,
            eps,
            wd,
            decoupled,
            step_size: (lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }
}

/// PyTorch `Adam` / `AdamW` (`torch/optim/adam.py`, single-tensor path):
/// `g += wd·w` (L2) or `w *= 1 − lr·wd` (decoupled); `m ← β₁m + (1−β₁)g`;
/// `v ← β₂v + (1−β₂)g²`; `w ← w − (lr/(1−β₁ᵗ)) · m / (√v/√(1−β₂ᵗ) + ε)`.
fn adam(slot: &mut ParamSlot, state: &mut ParamState, h: &AdamStep, clip: bool, threads: usize) {
    let n = slot.value.len();
    if state.m.is_empty() {
        state.m = vec![0.0; n];
        state.v = vec![0.0; n];
    }
    for_pieces(
        threads,
        slot.value,
        slot.grad,
        &mut state.m,
        &mut state.v,
        |w, g, m, v| {
            let (l2, decay) = match (h.wd != 0.0, h.decoupled) {
                (false, _) => (0.0, 1.0),
                (true, false) => (h.wd, 1.0),
                (true, true) => (0.0, 1.0 - h.lr * h.wd),
            };
            let decoupled = h.wd != 0.0 && h.decoupled;
            let coupled = h.wd != 0.0 && !h.decoupled;
            let h = *h;
            wide(
                #[inline(always)]
                move || {
                    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        let mut gi = g;
                        if decoupled {
                            *w *= decay;
                        }
                        if coupled {
                            gi += l2 * *w;
                        }
                        *m = h.beta1 * *m + (1.0 - h.beta1) * gi;
                        *v = h.beta2 * *v + (1.0 - h.beta2) * gi * gi;
                        let denom = v.sqrt() / h.bc2_sqrt + h.eps;
                        *w -= h.step_size * *m / denom;
                    }
                    if clip {
                        clip_latent(w);
                    }
                },
            )
        },
    );
}

/// PyTorch `SGD` (dampening 0): `g += wd·w`; with momentum μ, `b ← g` on the
/// first step and `b ← μb + g` after, then `g ← g + μb` (Nesterov) or `g ← b`;
/// `w ← w − lr·g`.
#[allow(clippy::too_many_arguments)]
fn sgd(
    slot: &mut ParamSlot,
    state: &mut ParamState,
    lr: f32,
    momentum: f32,
    nesterov: bool,
    wd: f32,
    clip: bool,
    threads: usize,
) {
    let first = state.m.is_empty();
    if momentum != 0.0 && first {
        state.m = vec![0.0; slot.value.len()];
    }
    for_pieces(
        threads,
        slot.value,
        slot.grad,
        &mut state.m,
        &mut [],
        |w, g, b, _| {
            wide(
                #[inline(always)]
                move || {
                    if momentum == 0.0 {
                        for (w, &g) in w.iter_mut().zip(g) {
                            *w -= lr * (g + wd * *w);
                        }
                    } else {
                        for ((w, &g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
                            let mut gi = g + wd * *w;
                            *b = if first { gi } else { momentum * *b + gi };
                            gi = if nesterov { gi + momentum * *b } else { *b };
                            *w -= lr * gi;
                        }
                    }
                    if clip {
                        clip_latent(w);
                    }
                },
            )
        },
    );
}

/// Bop (larq `Bop`): `w ← sign(w)`; `m ← m + γ(g − m)`; `w ← −w` where `w·m > τ`.
fn bop(slot: &mut ParamSlot, state: &mut ParamState, gamma: f32, tau: f32, threads: usize) {
    if state.m.is_empty() {
        state.m = vec![0.0; slot.value.len()];
    }
    for_pieces(
        threads,
        slot.value,
        slot.grad,
        &mut state.m,
        &mut [],
        |w, g, m, _| {
            wide(
                #[inline(always)]
                move || {
                    for ((w, &g), m) in w.iter_mut().zip(g).zip(m.iter_mut()) {
                        let wi = if *w < 0.0 { -1.0 } else { 1.0 };
                        *m += gamma * (g - *m);
                        *w = if wi * *m > tau { -wi } else { wi };
                    }
                },
            )
        },
    );
    state.step += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot<'a>(
        name: &'a str,
        value: &'a mut [f32],
        grad: &'a [f32],
        kind: ParamKind,
    ) -> ParamSlot<'a> {
        ParamSlot {
            name,
            value,
            grad,
            kind,
        }
    }

    fn close(a: f32, b: f64) {
        assert!(
            (a as f64 - b).abs() <= 1e-6 * b.abs().max(1e-3),
            "{a} vs {b}"
        );
    }

    /// PyTorch's Adam written out in f64 for one scalar.
    fn adam_reference(w0: f64, grads: &[f64], lr: f64, wd: f64, decoupled: bool) -> Vec<f64> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        let (mut w, mut m, mut v) = (w0, 0.0, 0.0);
        let mut out = Vec::new();
        for (t, &g0) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let mut g = g0;
            if decoupled {
                w *= 1.0 - lr * wd;
            } else {
                g += wd * w;
            }
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mhat = m / (1.0 - b1.powi(t));
            let vhat = v / (1.0 - b2.powi(t));
            w -= lr * mhat / (vhat.sqrt() + eps);
            out.push(w);
        }
        out
    }

    #[test]
    fn adam_first_steps_match_pytorch() {
        // Step 1: m̂ = g and v̂ = g², so w moves by lr·g/(|g| + ε) ≈ lr·sign(g).
        let mut o = Optimizer::new(OptimizerConfig::adam()).unwrap();
        let mut w = [0.5f32, -0.25, 0.0];
        let grads = [[0.1f32, -2.0, 0.0], [0.3, 1.0, 0.5], [-0.2, 0.5, 0.5]];
        o.step(&mut [slot("a", &mut w, &grads[0], ParamKind::Real)], 1.0)
            .unwrap();
        close(w[0], 0.5 - 1e-3 * 0.1 / (0.1 + 1e-8));
        close(w[1], -0.25 + 1e-3 * 2.0 / (2.0 + 1e-8));
        assert_eq!(w[2], 0.0);
        for g in &grads[1..] {
            o.step(&mut [slot("a", &mut w, g, ParamKind::Real)], 1.0)
                .unwrap();
        }
        for (i, w0) in [0.5, -0.25, 0.0].into_iter().enumerate() {
            let gs: Vec<f64> = grads.iter().map(|g| g[i] as f64).collect();
            close(
                w[i],
                *adam_reference(w0, &gs, 1e-3, 0.0, false).last().unwrap(),
            );
        }
        // Step 2 for element 0, by hand: m = 0.9·0.01 + 0.1·0.3 = 0.039,
        // v = 0.999·1e-5 + 0.001·0.09 = 9.999e-5; m̂ = 0.039/0.19, v̂ = 9.999e-5/0.001999.
        let w1 = 0.5 - 1e-3 * 0.1 / (0.1 + 1e-8);
        let w2 = w1 - 1e-3 * (0.039 / 0.19) / ((9.999e-5f64 / 0.001999).sqrt() + 1e-8);
        close(
            *adam_reference(0.5, &[0.1, 0.3], 1e-3, 0.0, false)
                .last()
                .unwrap() as f32,
            w2,
        );
        assert_eq!(o.step_count(), 3);
        assert_eq!(o.param_steps(), vec![("a".to_string(), 3)]);
    }

    #[test]
    fn adam_weight_decay_coupled_and_decoupled_and_lr_scale() {
        for decoupled in [false, true] {
            let config = OptimizerConfig::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
                decoupled,
            };
            let mut o = Optimizer::new(config).unwrap();
            let mut w = [2.0f32];
            let mut latent = [0.5f32];
            let gs = [0.05f32, -0.02, 0.01, 0.3];
            for g in gs {
                o.step(
                    &mut [
                        slot("w", &mut w, &[g], ParamKind::Real),
                        slot("b", &mut latent, &[g], ParamKind::LatentBinary),
                    ],
                    0.5,
                )
                .unwrap();
            }
            let gs: Vec<f64> = gs.iter().map(|&g| g as f64).collect();
            // lr_scale 0.5 halves the rate; decay reaches Real params only.
            close(
                w[0],
                *adam_reference(2.0, &gs, 0.005, 0.1, decoupled)
                    .last()
                    .unwrap(),
            );
            close(
                latent[0],
                *adam_reference(0.5, &gs, 0.005, 0.0, false).last().unwrap(),
            );
        }
    }

    #[test]
    fn latent_weights_are_clipped_unless_disabled() {
        let mut o = Optimizer::new(OptimizerConfig::sgd(1.0)).unwrap();
        let mut w = [0.9f32, -0.9, 0.2];
        let mut r = [0.9f32];
        let g = [-1.0f32, 1.0, 0.1];
        o.step(
            &mut [
                slot("b", &mut w, &g, ParamKind::LatentBinary),
                slot("r", &mut r, &[-1.0], ParamKind::Real),
            ],
            1.0,
        )
        .unwrap();
        assert_eq!(w, [1.0, -1.0, 0.2f32 - 0.1f32]);
        assert_eq!(r, [0.9f32 + 1.0]);
        o.clip_latent = false;
        let mut w = [0.9f32];
        o.step(
            &mut [slot("c", &mut w, &[-1.0], ParamKind::LatentBinary)],
            1.0,
        )
        .unwrap();
        assert_eq!(w, [0.9f32 + 1.0]);
    }

    #[test]
    fn sgd_momentum_nesterov_and_decay_match_pytorch() {
        // By hand, lr 0.1, μ 0.9, wd 0.01, w0 = 1, g = 0.5 then 0.2:
        // step 1: g' = 0.51, b = 0.51; plain: w = 1 − 0.051 = 0.949;
        //         nesterov: g'' = 0.51 + 0.459 = 0.969, w = 0.9031.
        for (nesterov, expect1) in [(false, 0.949f64), (true, 0.9031)] {
            let mut o = Optimizer::new(OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov,
                weight_decay: 0.01,
            })
            .unwrap();
            let mut w = [1.0f32];
            o.step(&mut [slot("w", &mut w, &[0.5], ParamKind::Real)], 1.0)
                .unwrap();
            close(w[0], expect1);
            let w1 = expect1;
            o.step(&mut [slot("w", &mut w, &[0.2], ParamKind::Real)], 1.0)
                .unwrap();
            let g = 0.2 + 0.01 * w1;
            let b = 0.9 * 0.51 + g;
            let step = if nesterov { g + 0.9 * b } else { b };
            close(w[0], w1 - 0.1 * step);
        }
    }

    #[test]
    fn bop_flips_where_the_average_gradient_agrees_with_the_sign() {
        let mut o = Optimizer::new(OptimizerConfig::Bop {
            gamma: 0.5,
            tau: 0.1,
            real: Box::new(OptimizerConfig::sgd(0.1)),
        })
        .unwrap();
        // Latent values are binarised first (sign(0) = +1).
        let mut w = [0.3f32, -0.7, 0.0, 1.0, -1.0];
        // m = 0.5·g: 0.3 (w=+1: w·m = 0.3 > τ, flips), −0.3 (w=−1: 0.3, flips),
        // 0.1 (w=+1: 0.1, not > τ, stays), −0.4 (w=+1: −0.4, stays), −0.1 (w=−1: 0.1, stays).
        let g = [0.6f32, -0.6, 0.2, -0.8, -0.2];
        let mut r = [1.0f32];
        o.step(
            &mut [
                slot("b", &mut w, &g, ParamKind::LatentBinary),
                slot("r", &mut r, &[1.0], ParamKind::Real),
            ],
            1.0,
        )
        .unwrap();
        assert_eq!(w, [-1.0, 1.0, 1.0, 1.0, -1.0]);
        assert_eq!(r, [1.0f32 - 0.1]); // the real optimizer
        let m = &o.state()[0];
        assert_eq!(m.0, "b/m");
        assert_eq!(m.2, vec![0.3, -0.3, 0.1, -0.4, -0.1]);
        // Second step, g = 0 and lr_scale 0.5 (γ = 0.25): m shrinks by ¾:
        // 0.225 (w=−1: −0.225, stays), −0.225 (w=+1: stays), 0.075, −0.3, −0.075.
        o.step(
            &mut [slot("b", &mut w, &[0.0; 5], ParamKind::LatentBinary)],
            0.5,
        )
        .unwrap();
        assert_eq!(w, [-1.0, 1.0, 1.0, 1.0, -1.0]);
        let g = [-1.0f32, 1.0, 1.0, 0.0, 0.0];
        // γ = 0.5: m = (0.225 − 1)/2 = −0.3875 with w = −1: w·m > τ, flips to +1.
        o.step(&mut [slot("b", &mut w, &g, ParamKind::LatentBinary)], 1.0)
            .unwrap();
        assert_eq!(w, [1.0, -1.0, -1.0, 1.0, -1.0]);
    }

    #[test]
    fn frozen_params_and_bad_slots() {
        let mut o = Optimizer::new(OptimizerConfig::adam()).unwrap();
        let mut w = [1.0f32];
        o.step(&mut [slot("f", &mut w, &[5.0], ParamKind::Frozen)], 1.0)
            .unwrap();
        assert_eq!(w, [1.0]);
        assert!(o.state().is_empty());
        let mut a = [1.0f32, 2.0];
        let mut b = [1.0f32];
        let err = o
            .step(
                &mut [
                    slot("a", &mut a, &[1.0, 1.0], ParamKind::Real),
                    slot("b", &mut b, &[1.0, 1.0], ParamKind::Real),
                ],
                1.0,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter b: gradient has 2 elements, the parameter 1"
        );
        assert_eq!(a, [1.0, 2.0], "nothing changes on error");
        o.step(&mut [slot("b", &mut b, &[1.0], ParamKind::Real)], 1.0)
            .unwrap();
        let mut b2 = [1.0f32, 1.0];
        let err = o
            .step(&mut [slot("b", &mut b2, &[1.0, 1.0], ParamKind::Real)], 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("its optimizer state 1"), "{err}");
        for bad in [
            OptimizerConfig::Adam {
                lr: -1.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                decoupled: false,
            },
            OptimizerConfig::Adam {
                lr: 1.0,
                beta1: 1.0,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                decoupled: false,
            },
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.0,
                nesterov: true,
                weight_decay: 0.0,
            },
            OptimizerConfig::Bop {
                gamma: 1e-4,
                tau: 1e-8,
                real: Box::new(OptimizerConfig::bop()),
            },
        ] {
            assert!(matches!(Optimizer::new(bad), Err(OptimError::Config(_))));
        }
    }

    #[test]
    fn defaults_are_pytorchs_and_larqs() {
        assert_eq!(
            OptimizerConfig::adam(),
            OptimizerConfig::Adam {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                decoupled: false
            }
        );
        let OptimizerConfig::Bop { gamma, tau, real } = OptimizerConfig::bop() else {
            panic!()
        };
        assert_eq!((gamma, tau), (1e-4, 1e-8));
        assert!(matches!(*real, OptimizerConfig::Adam { lr, .. } if lr == 1e-2));
    }

    #[test]
    fn threads_do_not_change_results() {
        let n = 3 * PARALLEL_THRESHOLD + 17;
        let mut rng = crate::util::rng::Rng::new(3);
        let w0: Vec<f32> = (0..n).map(|_| rng.uniform(1.0)).collect();
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..n).map(|_| rng.uniform(0.1)).collect())
            .collect();
        for config in [
            OptimizerConfig::adam(),
            OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-4,
            },
            OptimizerConfig::Bop {
                gamma: 0.1,
                tau: 1e-3,
                real: Box::new(OptimizerConfig::adam()),
            },
        ] {
            let mut results = Vec::new();
            for threads in [1, 2, 4] {
                let mut o = Optimizer::new(config.clone()).unwrap();
                o.threads = threads;
                let (mut a, mut b) = (w0.clone(), w0.clone());
                for g in &grads {
                    o.step(
                        &mut [
                            slot("a", &mut a, g, ParamKind::Real),
                            slot("b", &mut b, g, ParamKind::LatentBinary),
                        ],
                        0.7,
                    )
                    .unwrap();
                }
                let bits: Vec<u32> = a.iter().chain(&b).map(|x| x.to_bits()).collect();
                let state: Vec<Vec<u32>> = o
                    .state()
                    .iter()
                    .map(|t| t.2.iter().map(|x| x.to_bits()).collect())
                    .collect();
                results.push((bits, state));
            }
            assert!(results.windows(2).all(|r| r[0] == r[1]), "{config:?}");
        }
        assert_eq!(ranges(n, 4).len(), 4);
        assert_eq!((ranges(10, 4).len(), ranges(10, 4)[0].clone()), (1, 0..10));
        assert_eq!((ranges(0, 4).len(), ranges(0, 4)[0].clone()), (1, 0..0));
    }

    #[test]
    fn state_round_trips_and_resumes_identically() {
        let config = OptimizerConfig::Bop {
            gamma: 0.1,
            tau: 1e-3,
            real: Box::new(OptimizerConfig::adam()),
        };
        let grads: Vec<[f32; 3]> = vec![
            [0.1, -0.2, 0.3],
            [0.2, 0.1, -0.5],
            [-0.3, 0.3, 0.1],
            [0.5, 0.5, 0.5],
        ];
        let run = |o: &mut Optimizer, w: &mut [f32; 3], b: &mut [f32; 3], gs: &[[f32; 3]]| {
            for g in gs {
                o.step(
                    &mut [
                        slot("w", w, g, ParamKind::Real),
                        slot("b", b, g, ParamKind::LatentBinary),
                    ],
                    1.0,
                )
                .unwrap();
            }
        };
        let mut full = Optimizer::new(config.clone()).unwrap();
        let (mut w, mut b) = ([0.1f32, 0.2, 0.3], [0.5f32, -0.5, 0.1]);
        run(&mut full, &mut w, &mut b, &grads);
        let mut first = Optimizer::new(config.clone()).unwrap();
        let (mut w2, mut b2) = ([0.1f32, 0.2, 0.3], [0.5f32, -0.5, 0.1]);
        run(&mut first, &mut w2, &mut b2, &grads[..2]);
        let mut resumed = Optimizer::new(config).unwrap();
        resumed
            .load_state(first.state(), &first.param_steps(), first.step_count())
            .unwrap();
        assert_eq!(resumed.state(), first.state());
        run(&mut resumed, &mut w2, &mut b2, &grads[2..]);
        assert_eq!((w, b), (w2, b2));
        assert_eq!(resumed.step_count(), 4);
        let names: Vec<String> = full.state().into_iter().map(|t| t.0).collect();
        assert_eq!(names, vec!["b/m", "w/m", "w/v"]);
        // Bad state is refused and the old state kept.
        let before = resumed.state();
        for (tensors, steps, needle) in [
            (
                vec![("w".to_string(), vec![1], vec![0.0])],
                vec![],
                "not named PARAM/m",
            ),
            (
                vec![("w/m".to_string(), vec![2], vec![0.0])],
                vec![],
                "shape [2] but 1 values",
            ),
            (
                vec![
                    ("w/m".to_string(), vec![1], vec![0.0]),
                    ("w/v".to_string(), vec![2], vec![0.0, 0.0]),
                ],
                vec![],
                "w/m has 1 values but w/v has 2",
            ),
            (vec![], vec![("x".to_string(), 3)], "a step count for 'x'"),
        ] {
            let err = resumed
                .load_state(tensors, &steps, 0)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert_eq!(resumed.state(), before);
        let mut adam = Optimizer::new(OptimizerConfig::adam()).unwrap();
        let err = adam
            .load_state(vec![("w/m".to_string(), vec![1], vec![0.0])], &[], 0)
            .unwrap_err();
        assert!(
            err.to_string().contains("Adam needs both w/m and w/v"),
            "{err}"
        );
    }
}
