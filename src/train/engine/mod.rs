//! A fast executor for training-step graphs (and plain models): the same
//! contract as the reference interpreter, [`crate::ir::interp::run`], on
//! GEMM kernels and both cores.
//!
//! **Why a separate engine.** The interpreter is the oracle: plain loops in
//! the order the formulas are written, f64 reductions, a fresh allocation per
//! value. A training step of the Fashion-MNIST MLP needs about 120 MFLOP, so
//! it has to run at GEMM speed to take well under a millisecond.
//!
//! **How.** [`StepEngine::new`] verifies the graph and flattens it once into
//! a `plan` of steps in topological order, with views (`flatten`,
//! `identity`, pass-through gradients) resolved and liveness computed. Per
//! batch size the plan assigns every value a reusable buffer (freed after its
//! last use), so repeated runs of one batch size allocate only the tensors
//! they return. Each run first checks the inputs and parameters, prepares
//! every binary layer's `sign(W)`, `α_o·sign(W_o)` and XNOR scale once, then
//! runs the steps on a rayon pool of [`EngineOptions::threads`] threads:
//! - the forward dot products of `bdense` and `bconv2d` as XNOR-popcount
//!   on the inference compiler's 512-bit micro-kernel
//!   (`codegen::kernels::wide::standalone`, the machine code compiled models
//!   run; `xnor`, `xnor_conv`: bit patches from per-pixel channel words),
//!   over signs packed by a Cranelift kernel compiled for the layer's row
//!   length (`packer`); scalar `popcnt` or the GEMM where the machine lacks
//!   AVX-512 (VPOPCNTDQ), and the GEMM for grouped or zero-padded `bconv2d`;
//! - dense and convolution products (forward, input and weight gradients)
//!   as f32 GEMMs (`gemm`, `conv`: im2col/col2im in cache-sized blocks of
//!   samples), split over samples or output channels;
//! - batchnorm on batch statistics with statistics cached for its gradients
//!   and running-statistic updates (`norm`);
//! - elementwise ops, pools and the loss as tight loops (`elementwise`,
//!   `pool`), split over samples or planes.
//!
//! **Why these kernels.** The f32 FMA peak of this machine's cores is
//! 16 MAC per cycle (57 GMAC/s per core measured: 512-bit FMAs issue at one
//! per cycle); the `gemm` crate reaches ~90% of it on the step's products
//! (98–105 GFLOP/s on the Fashion MLP's 100×784×256 and 256×100×784): an
//! AVX-512 12×32 register-block kernel of our own measured 83–102 GFLOP/s
//! on the same shapes in the same run, so the crate stays. Every product is
//! one GEMM call per thread on a contiguous block of output rows (never a
//! split reduction: results do not depend on scheduling). Binary forward
//! products run 512 per instruction on the XOR-popcount kernel: the digits
//! CNN's `bconv2d` forward went from 2.3 ms to 0.74 ms per batch of 64 with
//! it (best of a loaded run); its ±1 sums are exact either way.
//! Threads come from a rayon pool: disjoint output chunks are safe code,
//! and a chunk a descheduled thread has not started is taken by the other.
//!
//! **How close to the interpreter.** Forward ops other than the products use
//! the interpreter's arithmetic operation for operation; binary layers' dot
//! products are exact integers, so they match bit for bit. Real-valued
//! products and the weight gradients sum in a different order (and in f32),
//! so they agree to rounding: about 1e-6 relative to the magnitude of the
//! summed terms (`tests/train_engine.rs` checks 1e-4).

mod backward;
mod conv;
mod elementwise;
mod exec;
mod gemm;
mod loss_terms;
mod norm;
mod packer;
mod par;
mod plan;
mod pool;
mod xnor;
mod xnor_conv;

use crate::ir::graph::Graph;
use crate::ir::params::{Params, Tensor};
use crate::ir::types::Extent;
use crate::ir::verify::VerifyError;

use conv::Scratch;
use norm::BnCache;
use plan::{Loc, Plan};

/// How to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Threads to use (at least 1). Default: the available parallelism.
    pub threads: usize,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Why the engine cannot plan or run a graph.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The graph does not verify. (Boxed: a `VerifyError` is large.)
    #[error("the graph is invalid: {0}")]
    Verify(Box<VerifyError>),
    /// A node the engine does not run.
    #[error("node `{node}`: the engine does not support {what}")]
    Unsupported {
        /// The node.
        node: String,
        /// What is missing.
        what: String,
    },
    /// The caller passed the wrong number of input arrays.
    #[error("model `{model}` takes {expected} inputs, found {found}")]
    InputCount {
        /// The model's name.
        model: String,
        /// Declared inputs.
        expected: usize,
        /// Arrays passed.
        found: usize,
    },
    /// An input array is not `[N, ...declared dims]`, or holds a different
    /// number of values than its shape says.
    #[error(
        "input `{name}` must be [N, {expected:?}] with matching data, found shape {found:?} holding {len} values"
    )]
    InputShape {
        /// The input.
        name: String,
        /// Its declared per-sample dims.
        expected: Vec<usize>,
        /// The array's shape.
        found: Vec<usize>,
        /// How many values it holds.
        len: usize,
    },
    /// Two inputs disagree on the batch size.
    #[error("input `{name}` has batch size {found}, but the first input has {expected}")]
    BatchSize {
        /// The odd input.
        name: String,
        /// Its batch size.
        found: usize,
        /// The first input's.
        expected: usize,
    },
    /// A parameter is missing, misshapen, or holds the wrong number of values.
    #[error("parameter `{name}` must be f32{expected:?}: {problem}")]
    Param {
        /// The parameter's full name.
        name: String,
        /// The shape it should have.
        expected: Vec<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A threshold direction is not ±1.
    #[error("parameter `{name}` must hold ±1, but channel {channel} is {value}")]
    BadDirection {
        /// The parameter.
        name: String,
        /// The channel.
        channel: usize,
        /// Its value.
        value: f32,
    },
    /// The batch is too large to hold some value in memory.
    #[error("batch size {batch} is too large: the value of node `{node}` would not fit in memory")]
    TooLarge {
        /// The node.
        node: String,
        /// The batch size.
        batch: usize,
    },
    /// The thread pool could not be started.
    #[error("cannot start {threads} threads: {message}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// The system's reason.
        message: String,
    },
}

/// The parameter `name`, checked to be f32 of `shape`.
fn param<'p>(params: &'p Params, name: &str, shape: &[usize]) -> Result<&'p [f32], EngineError> {
    let bad = |problem: String| EngineError::Param {
        name: name.to_string(),
        expected: shape.to_vec(),
        problem,
    };
    let t = params
        .get(name)
        .ok_or_else(|| bad("it is missing".into()))?;
    if t.shape != shape {
        return Err(bad(format!("found {:?}", t.shape)));
    }
    if t.data.len() != shape.iter().product::<usize>() {
        return Err(bad(format!("it holds {} values", t.data.len())));
    }
    Ok(&t.data)
}

/// A binary layer's weights as the kernels use them, prepared once per run.
#[derive(Clone, Debug, Default)]
struct BinaryWeights {
    /// `sign(W)` as ±1.0, `[O, K]`.
    signs: Vec<f32>,
    /// `α_o·sign(W_o)` with `scale=channel`, else `sign(W)`: what the input
    /// gradient multiplies by.
    scaled: Vec<f32>,
    /// `α_o = mean |W_o|` (empty without `scale=channel`).
    alpha: Vec<f32>,
    /// `sign(W)` packed for the XNOR-popcount kernel (dense layers only).
    packed: Vec<u64>,
    /// `sign(W)` laid out for the layer's 512-bit kernel, if it has one.
    wide_bits: Option<std::sync::Arc<crate::codegen::kernels::wide::standalone::PackedRows>>,
    /// PCNN's projection `P` (`[K]`) with `projection=true`, else empty.
    projection: Vec<f32>,
    /// `V = P∘W`, whose signs the layer takes, with a projection; else empty.
    projected: Vec<f32>,
}

impl BinaryWeights {
    /// The values whose signs the layer takes: `P∘W` through a projection,
    /// else the latent weights themselves.
    fn values<'a>(&'a self, latent: &'a [f32]) -> &'a [f32] {
        if self.projection.is_empty() {
            latent
        } else {
            &self.projected
        }
    }
}

/// The buffers of one batch size.
#[derive(Debug)]
struct Arena {
    batch: usize,
    loc: Vec<Loc>,
    lens: Vec<usize>,
    bufs: Vec<Vec<f32>>,
}

/// How many batch sizes keep their buffers (a trainer alternates between
/// its batch size and the last partial batch).
const ARENAS: usize = 3;

/// A planned graph, ready to run repeatedly. `Send`: move it to the thread
/// that trains.
pub struct StepEngine {
    plan: Plan,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    arenas: Vec<Arena>,
    binary: Vec<BinaryWeights>,
    bn: Vec<BnCache>,
    scratch: Vec<Scratch>,
    bits: Vec<Vec<u64>>,
    /// Cranelift-compiled sign packing for the XNOR layers' row lengths.
    packer: Option<packer::Packer>,
    /// Per binary layer: its forward on the 512-bit kernel, where it takes
    /// that path.
    wide: Vec<Option<WideLayer>>,
    xnor_scratch: Vec<xnor_conv::XnorScratch>,
    /// Per step: seconds spent, runs, and the fastest run, while profiling.
    profile: Option<Vec<(f64, u64, f64)>>,
}

/// Time spent in one kind of step, from [`StepEngine::profile`].
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// The op, `grad(OP, wrt)` for gradients.
    pub kind: String,
    /// Total seconds over the profiled runs.
    pub seconds: f64,
    /// The sum over steps of this kind of each step's fastest run: what
    /// one run costs when nothing else competes for the core.
    pub best_seconds: f64,
    /// Steps of this kind run.
    pub calls: u64,
}

impl std::fmt::Debug for StepEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StepEngine({}: {} steps, {} threads)",
            self.plan.model,
            self.plan.steps.len(),
            self.threads
        )
    }
}

impl StepEngine {
    /// Plans `graph` (any verified graph: training graphs, and plain models too) once.
    pub fn new(graph: &Graph, options: &EngineOptions) -> Result<StepEngine, EngineError> {
        let plan = Plan::new(graph)?;
        let threads = options.threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("onebit-train-{i}"))
                    .build()
                    .map_err(|e| EngineError::Threads {
                        threads,
                        message: e.to_string(),
                    })?,
            )
        } else {
            None
        };
        let xnor_rows = plan.binary.iter().filter(|l| l.xnor).map(|l| l.shape[1]);
        let packer = packer::Packer::new(xnor_rows);
        let wide = wide_layers(&plan);
        Ok(StepEngine {
            packer,
            wide,
            xnor_scratch: (0..threads).map(|_| Default::default()).collect(),
            binary: vec![BinaryWeights::default(); plan.binary.len()],
            bn: vec![BnCache::default(); plan.batchnorms.len()],
            scratch: (0..threads).map(|_| Scratch::default()).collect(),
            bits: vec![Vec::new(); threads],
            plan,
            threads,
            pool,
            arenas: Vec::new(),
            profile: None,
        })
    }

    /// Starts (or, with `false`, stops and clears) timing every step.
    /// Timing costs a clock read per step.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![(0.0, 0, f64::INFINITY); self.plan.steps.len()]);
    }

    /// Where the profiled runs spent their time, by kind of step, most
    /// first. Empty unless profiling.
    pub fn profile(&self) -> Vec<OpTime> {
        let mut by_kind: Vec<OpTime> = Vec::new();
        let Some(p) = &self.profile else {
            return by_kind;
        };
        for (step, &(seconds, calls, best)) in self.plan.steps.iter().zip(p) {
            if calls == 0 {
                continue;
            }
            let kind = match &step.op {
                crate::ir::ops::Op::Grad(g) => {
                    let wrt = match g.wrt {
                        crate::ir::ops::Wrt::Operand(i) => format!("operand {i}"),
                        crate::ir::ops::Wrt::Param(r) => r.name().to_string(),
                    };
                    format!("grad({}, {wrt})", g.of.name())
                }
                op => op.name().to_string(),
            };
            match by_kind.iter_mut().find(|t| t.kind == kind) {
                Some(t) => {
                    t.seconds += seconds;
                    t.best_seconds += best;
                    t.calls += calls;
                }
                None => by_kind.push(OpTime {
                    kind,
                    seconds,
                    best_seconds: best,
                    calls,
                }),
            }
        }
        by_kind.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        by_kind
    }

    /// Same contract as `onebit::ir::interp::run(graph, params, inputs)`:
    /// inputs in graph input order, each `[N, ...dims]` f32; returns the
    /// outputs in output order, per-sample ones `[N, ...]`, batch-extent ones
    /// (loss, parameter gradients, running stats) without a batch axis; bits
    /// as ±1.0.
    pub fn run(&mut self, params: &Params, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let mut outputs = Vec::new();
        self.run_into(params, inputs, &mut outputs)?;
        Ok(outputs)
    }

    /// [`StepEngine::run`] into `outputs`, reusing their allocations: a
    /// training loop that keeps one `Vec` across steps allocates nothing
    /// per step (fresh multi-megabyte gradients would cost a page fault per
    /// 4 KiB every step).
    pub fn run_into(
        &mut self,
        params: &Params,
        inputs: &[Tensor],
        outputs: &mut Vec<Tensor>,
    ) -> Result<(), EngineError> {
        let batch = self.check_inputs(inputs)?;
        self.check_params(params)?;
        self.prepare_binary(params)?;
        for b in &mut self.bn {
            b.moments = false;
            b.sums = None;
        }
        let arena = self.arena(batch)?;
        let mut arena = self.arenas.swap_remove(arena);
        let result = {
            let cx = exec::Ctx {
                par: par::Par {
                    threads: self.threads,
                },
                batch,
                params,
                binary: &self.binary,
                packer: self.packer.as_ref(),
                wide: &self.wide,
            };
            let mut st = exec::State {
                bn: &mut self.bn,
                scratch: &mut self.scratch,
                bits: &mut self.bits,
                xnor_scratch: &mut self.xnor_scratch,
            };
            let plan = &self.plan;
            let profile = self.profile.as_deref_mut();
            match &self.pool {
                Some(pool) => {
                    pool.install(|| run_steps(plan, &cx, &mut st, &mut arena, inputs, profile))
                }
                None => run_steps(plan, &cx, &mut st, &mut arena, inputs, profile),
            }
        };
        if result.is_ok() {
            self.collect_into(&arena, inputs, outputs);
        }
        self.arenas.push(arena);
        result
    }

    /// Checks the inputs against the graph; returns the batch size.
    fn check_inputs(&self, inputs: &[Tensor]) -> Result<usize, EngineError> {
        let declared = &self.plan.inputs;
        if inputs.len() != declared.len() {
            return Err(EngineError::InputCount {
                model: self.plan.model.clone(),
                expected: declared.len(),
                found: inputs.len(),
            });
        }
        let mut batch = None;
        for ((name, dims), t) in declared.iter().zip(inputs) {
            let bad = || EngineError::InputShape {
                name: name.clone(),
                expected: dims.clone(),
                found: t.shape.clone(),
                len: t.data.len(),
            };
            let n = match t.shape.split_first() {
                Some((&n, rest)) if rest == dims.as_slice() => n,
                _ => return Err(bad()),
            };
            if dims.iter().product::<usize>().checked_mul(n) != Some(t.data.len()) {
                return Err(bad());
            }
            match batch {
                None => batch = Some(n),
                Some(b) if b != n => {
                    return Err(EngineError::BatchSize {
                        name: name.clone(),
                        found: n,
                        expected: b,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(batch.unwrap_or(0))
    }

    /// Checks that every parameter is present with its shape.
    fn check_params(&self, params: &Params) -> Result<(), EngineError> {
        for spec in &self.plan.params {
            if spec.packed {
                match params.packed.get(&spec.name) {
                    Some(bits) if bits.shape == spec.shape => {}
                    other => {
                        return Err(EngineError::Param {
                            name: spec.name.clone(),
                            expected: spec.shape.clone(),
                            problem: match other {
                                None => "the packed bits are missing".into(),
                                Some(b) => format!("the packed bits are {:?}", b.shape),
                            },
                        });
                    }
                }
            } else {
                param(params, &spec.name, &spec.shape)?;
            }
        }
        Ok(())
    }

    /// `sign(W)`, `α` and `α·sign(W)` of every binary layer.
    fn prepare_binary(&mut self, params: &Params) -> Result<(), EngineError> {
        for ((layer, bw), xc) in self
            .plan
            .binary
            .iter()
            .zip(&mut self.binary)
            .zip(&self.wide)
        {
            let name = format!("{}.weight", layer.name);
            let n: usize = layer.shape.iter().product();
            bw.signs.resize(n, 0.0);
            if layer.packed {
                let bits = params.packed.get(&name).and_then(|b| b.signs());
                match bits {
                    Some(s) if s.len() == n => bw.signs.copy_from_slice(&s),
                    _ => {
                        return Err(EngineError::Param {
                            name,
                            expected: layer.shape.clone(),
                            problem: "the packed bits do not unpack to that shape".into(),
                        });
                    }
                }
                bw.scaled.clone_from(&bw.signs);
                bw.alpha.clear();
                pack_dense(layer, bw, self.packer.as_ref());
                bw.wide_bits = xc
                    .as_ref()
                    .and_then(|l| l.pack(&bw.signs, &bw.packed))
                    .map(Into::into);
                continue;
            }
            let latent = param(params, &name, &layer.shape)?;
            bw.projection.clear();
            bw.projected.clear();
            if let Some(shape) = &layer.projection {
                let p = param(params, &format!("{}.projection", layer.name), shape)?;
                bw.projection.extend_from_slice(p);
                bw.projected
                    .extend(crate::ir::interp::projected(latent, Some(p)).iter());
            }
            let values = if bw.projection.is_empty() {
                latent
            } else {
                &bw.projected
            };
            for (s, &w) in bw.signs.iter_mut().zip(values) {
                *s = elementwise::sign_of(w);
            }
            bw.scaled.clone_from(&bw.signs);
            let learned = || param(params, &format!("{}.scale", layer.name), &[layer.out]);
            let alpha = crate::ir::interp::scale_factors(layer.scale, latent, layer.out, learned)?;
            if let Some(alpha) = alpha {
                bw.alpha = alpha;
                let k = n / layer.out.max(1);
                for (o, row) in bw.scaled.chunks_mut(k.max(1)).enumerate() {
                    for v in row {
                        *v *= bw.alpha[o];
                    }
                }
            } else {
                bw.alpha.clear();
            }
            pack_dense(layer, bw, self.packer.as_ref());
            bw.wide_bits = xc
                .as_ref()
                .and_then(|l| l.pack(&bw.signs, &bw.packed))
                .map(Into::into);
        }
        Ok(())
    }

    /// The arena for `batch`, made if needed; returns its index.
    fn arena(&mut self, batch: usize) -> Result<usize, EngineError> {
        if let Some(i) = self.arenas.iter().position(|a| a.batch == batch) {
            return Ok(i);
        }
        let (loc, sizes) = self.plan.assign(batch)?;
        let lens = self
            .plan
            .steps
            .iter()
            .map(|s| s.elements(batch).unwrap_or(0))
            .collect();
        if self.arenas.len() >= ARENAS {
            self.arenas.remove(0);
        }
        self.arenas.push(Arena {
            batch,
            loc,
            lens,
            bufs: sizes.into_iter().map(|n| vec![0.0; n]).collect(),
        });
        Ok(self.arenas.len() - 1)
    }

    /// Copies the outputs out of the arena into `outputs`' buffers.
    fn collect_into(&self, arena: &Arena, inputs: &[Tensor], outputs: &mut Vec<Tensor>) {
        outputs.resize_with(self.plan.outputs.len(), Tensor::default);
        for (&v, out) in self.plan.outputs.iter().zip(outputs) {
            let step = &self.plan.steps[v];
            out.data.clear();
            out.data.extend_from_slice(value(arena, inputs, v));
            out.shape.clear();
            if step.extent == Extent::Sample {
                out.shape.push(arena.batch);
            }
            out.shape.extend_from_slice(&step.dims);
        }
    }
}

/// A binary layer's forward pass on the inference compiler's 512-bit
/// XOR-popcount kernel.
enum WideLayer {
    /// `bconv2d` over bit patches.
    Conv(xnor_conv::XnorConv),
    /// `bdense` over packed rows.
    Dense(crate::codegen::kernels::wide::standalone::XorPopcount),
}

impl WideLayer {
    /// The weights laid out for the kernel, from `sign(W)` as ±1.0 and as
    /// packed rows (`bdense`).
    fn pack(
        &self,
        signs: &[f32],
        rows: &[u64],
    ) -> Option<crate::codegen::kernels::wide::standalone::PackedRows> {
        match self {
            WideLayer::Conv(c) => c.pack_weights(signs),
            WideLayer::Dense(k) => k.pack(rows).ok(),
        }
    }
}

/// The 512-bit kernel of every binary layer that can use one on this
/// machine, by the plan's binary-layer index.
fn wide_layers(plan: &Plan) -> Vec<Option<WideLayer>> {
    use crate::codegen::kernels::wide::standalone::XorPopcount;
    use crate::ir::ops::{Op, PadValue};
    let mut wide: Vec<Option<WideLayer>> = (0..plan.binary.len()).map(|_| None).collect();
    if !XorPopcount::available() {
        return wide;
    }
    for step in &plan.steps {
        let (Some(i), Some(x)) = (step.cache, step.operand_dims.first()) else {
            continue;
        };
        let Some(slot) = wide.get_mut(i) else {
            continue;
        };
        *slot = match &step.op {
            Op::BConv2d(a) => {
                let conv = conv::Conv::new(&a.geometry, x, &step.dims);
                xnor_conv::XnorConv::new(conv, a.pad_value == PadValue::One).map(WideLayer::Conv)
            }
            Op::BDense(a) if plan.binary[i].xnor => {
                XorPopcount::new(xnor::words(x.iter().product()), a.out_features)
                    .ok()
                    .map(WideLayer::Dense)
            }
            _ => continue,
        };
    }
    wide
}

/// Packs a `bdense` layer's `sign(W)` for the XNOR kernel.
fn pack_dense(layer: &plan::BinaryLayer, bw: &mut BinaryWeights, packer: Option<&packer::Packer>) {
    if !layer.xnor {
        return;
    }
    let k = layer.shape[1];
    bw.packed.resize(layer.out * xnor::words(k), 0);
    xnor::pack(packer, &bw.signs, k, &mut bw.packed);
}

/// The storage of value `v`.
fn value<'a>(arena: &'a Arena, inputs: &'a [Tensor], v: usize) -> &'a [f32] {
    match arena.loc[v] {
        Loc::Input(k) => &inputs[k].data,
        Loc::Buf(b) => &arena.bufs[b][..arena.lens[v]],
    }
}

/// Runs every step of `plan` in order.
fn run_steps(
    plan: &Plan,
    cx: &exec::Ctx,
    st: &mut exec::State,
    arena: &mut Arena,
    inputs: &[Tensor],
    mut profile: Option<&mut [(f64, u64, f64)]>,
) -> Result<(), EngineError> {
    for (pos, step) in plan.steps.iter().enumerate() {
        let Loc::Buf(b) = arena.loc[pos] else {
            continue;
        };
        if step.view_of.is_some() {
            continue;
        }
        // Take the output buffer out so the operands can be borrowed from
        // the others: the assignment never gives a step an operand's buffer.
        let mut out = std::mem::take(&mut arena.bufs[b]);
        let start = profile.as_ref().map(|_| std::time::Instant::now());
        let result = {
            let x: Vec<&[f32]> = step
                .operands
                .iter()
                .map(|&o| value(arena, inputs, o))
                .collect();
            exec::exec(cx, st, step, &x, &mut out[..arena.lens[pos]])
        };
        arena.bufs[b] = out;
        if let (Some(p), Some(t0)) = (profile.as_deref_mut(), start) {
            let t = t0.elapsed().as_secs_f64();
            p[pos].0 += t;
            p[pos].1 += 1;
            p[pos].2 = p[pos].2.min(t);
        }
        result?;
    }
    Ok(())
}
