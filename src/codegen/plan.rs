//! From a verified graph to a list of kernel steps over a planned arena.
//!
//! Storage (per sample) is channels-last: an `f32[C, d1, ..., dk]` value is
//! stored `[d1, ..., dk, C]`, and a `bit[C, d1, ..., dk]` value as
//! `[d1, ..., dk, ⌈C/64⌉]` little-endian words (bit 1 = −1, tail bits zero),
//! the layout of `ir-spec/ops.md`. Model inputs and outputs are converted
//! from and to the C order of the API by the first and last steps.
//!
//! Fusions made here, each only when the intermediate value has a single
//! user and is not a model output:
//! - `sign` of an elementwise op packs bits in that op's kernel;
//! - `batchnorm` of a binary layer becomes the layer's epilogue, evaluated
//!   in the interpreter's order, so results are bit-identical;
//! - `sign` of such an epilogue becomes an integer threshold on the popcount:
//!   the epilogue is evaluated at compile time on every possible dot product
//!   `-K..=K` and the layer emits bits when the `+1` set is a half-line;
//! - on the `avx512` path, `batchnorm`, `affine` and `prelu` of a real
//!   layer join its FMA kernel's epilogue, and a `sign` of it packs bits
//!   there (`plan/fuse_real.rs`).
//!
//! The step vocabulary (values' storage, epilogues, the kernels' steps) is
//! in `plan/steps.rs`; the steps of single layers (elementwise, binary and
//! real convolutions, pools) are planned in `plan/layers.rs`.
//!
//! Buffers are assigned arena offsets by a linear scan over the steps: a
//! buffer lives from the step that writes it to its last reader, and a step's
//! outputs never overlap its inputs.

use std::collections::HashMap;

use crate::ir::ops::{
    BinaryOutput, ConvGeometry, Op, PadValue, Pool as PoolAttrs, Scale, WeightForm,
};
use crate::ir::{DType, Graph, NodeId, Params, Verified, interp};

use super::CodegenError;

mod fuse_glue;
mod fuse_real;
mod layers;
mod steps;
pub use fuse_real::Post;
pub use steps::*;

/// Index of a buffer in [`Plan::bufs`].
pub type BufId = usize;

/// A planned model: steps, buffers and their arena offsets.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The steps in execution order, each with the graph node it comes from.
    pub steps: Vec<(String, Step)>,
    /// Byte size of each buffer.
    pub bufs: Vec<usize>,
    /// Arena offset of each buffer.
    pub offsets: Vec<usize>,
    /// Arena size in bytes (per sample).
    pub arena_bytes: usize,
    /// Per-sample element counts of the inputs, in order.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Per-sample dims of the outputs, in order.
    pub outputs: Vec<(String, Vec<usize>)>,
}

/// Knobs of the planner.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Fuse batchnorm and sign into producers.
    pub fuse: bool,
    /// Force the scalar popcount path.
    pub scalar_popcount: bool,
    /// The binary layers run on the machine-code kernels of this
    /// instruction set (`kernels::wide`), with its register tiles.
    pub wide: Option<crate::codegen::kernels::wide::Isa>,
    /// The real-valued layers run on the AVX-512 FMA micro-kernel
    /// (`kernels::wide::fconv`).
    pub fma: bool,
}

struct Planner<'g> {
    graph: &'g Graph,
    params: &'g Params,
    opts: PlanOptions,
    steps: Vec<(String, Step)>,
    bufs: Vec<usize>,
    values: HashMap<NodeId, Tensor>,
    /// The step that produced a node's value (for fusion).
    producer: HashMap<NodeId, usize>,
    unpacked: HashMap<NodeId, Tensor>,
    /// Flattens left as their operand's channels-last buffer, `[positions,
    /// channels]` (`fuse_glue::try_flatten_free`).
    flat: HashMap<NodeId, [usize; 2]>,
}

fn param<'p>(params: &'p Params, name: &str, shape: &[usize]) -> Result<&'p [f32], CodegenError> {
    let t = params.get(name).ok_or_else(|| CodegenError::Param {
        name: name.to_string(),
        message: format!("missing, expected f32{shape:?}"),
    })?;
    if t.shape != shape || t.data.len() != shape.iter().product::<usize>() {
        return Err(CodegenError::Param {
            name: name.to_string(),
            message: format!("expected f32{shape:?}, found {:?}", t.shape),
        });
    }
    Ok(&t.data)
}

/// The exact integer threshold equivalent to `eval(o, d) >= 0` over
/// `d ∈ -k..=k`, if the `+1` set is a half-line for every channel.
pub fn exact_threshold(
    eval: impl Fn(usize, i32) -> f32,
    o: usize,
    k: i32,
) -> Option<(Vec<i32>, Vec<i32>)> {
    let mut dirs = Vec::with_capacity(o);
    let mut ts = Vec::with_capacity(o);
    for ch in 0..o {
        let plus: Vec<bool> = (-k..=k).map(|d| eval(ch, d) >= 0.0).collect();
        let first = plus.iter().position(|&p| p);
        let (dir, t) = match first {
            None => (1, k + 1),
            Some(f) => {
                let last = plus.iter().rposition(|&p| p).unwrap_or(f);
                if plus[f..=last].iter().any(|&p| !p) {
                    return None;
                }
                let (lo, hi) = (f as i32 - k, last as i32 - k);
                if hi == k {
                    (1, lo)
                } else if lo == -k {
                    (-1, -hi)
                } else {
                    return None;
                }
            }
        };
        dirs.push(dir);
        ts.push(t);
    }
    Some((dirs, ts))
}

/// Whether `plus` is plain `sign` (`y >= 0`) on every one of `channels`
/// channels: only then can an elementwise producer pack its own output.
/// (Checking channel 0 alone fused a `threshold` whose other channels have
/// other thresholds; found by `fuzz/`'s jit target.)
fn sign_only(plus: &dyn Fn(usize, f32) -> bool, channels: usize) -> bool {
    (0..channels.max(1)).all(|c| {
        plus(c, 0.0) && plus(c, -0.0) && !plus(c, -1e-30) && plus(c, 1e-30) && !plus(c, f32::NAN)
    })
}

impl<'g> Planner<'g> {
    /// The sign bits (`true` = −1) and the epilogue of a binary layer.
    fn binary_params(
        &self,
        name: &str,
        form: WeightForm,
        scale: Scale,
        output: BinaryOutput,
        shape: &[usize],
    ) -> Result<(Vec<bool>, Epilogue), CodegenError> {
        let p =
            |suffix: &str, shape: &[usize]| param(self.params, &format!("{name}.{suffix}"), shape);
        let wname = format!("{name}.weight");
        let neg: Vec<bool> = match form {
            WeightForm::Latent => p("weight", shape)?.iter().map(|&v| !(v >= 0.0)).collect(),
            WeightForm::Packed => {
                let bits = self
                    .params
                    .packed
                    .get(&wname)
                    .ok_or_else(|| CodegenError::Param {
                        name: wname.clone(),
                        message: format!("missing packed weights, expected {shape:?}"),
                    })?;
                if bits.shape != shape {
                    return Err(CodegenError::Param {
                        name: wname,
                        message: format!("expected packed {shape:?}, found {:?}", bits.shape),
                    });
                }
                bits.signs()
                    .ok_or_else(|| CodegenError::Param {
                        name: wname.clone(),
                        message: "packed words do not match the shape".into(),
                    })?
                    .iter()
                    .map(|&v| v < 0.0)
                    .collect()
            }
        };
        let o = [shape[0]];
        let epi = match output {
            BinaryOutput::Dot => Epilogue::Dot {
                alpha: if scale.is_scaled() {
                    interp::scale_factors(scale, p("weight", shape)?, shape[0], || p("scale", &o))?
                } else {
                    None
                },
            },
            BinaryOutput::Affine => Epilogue::Affine {
                mul: p("multiplier", &o)?.to_vec(),
                bias: p("bias", &o)?.to_vec(),
            },
            BinaryOutput::Threshold => {
                let t = p("threshold", &o)?;
                let d = p("direction", &o)?;
                let k = (neg.len() / shape[0].max(1)) as i32;
                let (dir, t) = exact_threshold(
                    |c, dot| if d[c] * dot as f32 >= t[c] { 1.0 } else { -1.0 },
                    shape[0],
                    k,
                )
                .ok_or_else(|| CodegenError::Param {
                    name: format!("{name}.direction"),
                    message: "directions must be ±1".into(),
                })?;
                Epilogue::Threshold { dir, t }
            }
        };
        Ok((neg, epi))
    }

    fn buf(&mut self, bytes: usize) -> BufId {
        self.bufs.push(bytes.div_ceil(64) * 64);
        self.bufs.len() - 1
    }

    fn tensor(&mut self, dtype: DType, dims: &[usize]) -> Tensor {
        let c = dims.first().copied().unwrap_or(1);
        let pos = dims.iter().skip(1).product::<usize>();
        let mut t = Tensor {
            dtype,
            c,
            pos,
            buf: 0,
        };
        t.buf = self.buf(t.bytes());
        t
    }

    fn push(&mut self, node: &str, step: Step) -> usize {
        self.steps.push((node.to_string(), step));
        self.steps.len() - 1
    }

    fn fusable(&self, id: NodeId) -> bool {
        self.opts.fuse
            && self.graph.users(id).len() == 1
            && !self.graph.outputs().contains(&id)
            && self.graph.operands(self.graph.users(id)[0]).len() == 1
    }

    /// The operand as f32 (unpacking bits once per node).
    fn as_f32(&mut self, id: NodeId) -> Tensor {
        let t = self.values[&id].clone();
        if t.dtype == DType::F32 {
            return t;
        }
        if let Some(u) = self.unpacked.get(&id) {
            return u.clone();
        }
        let mut u = t.clone();
        u.dtype = DType::F32;
        u.buf = self.buf(u.bytes());
        let name = self.graph.node(id).name.clone();
        self.push(&name, Step::Unpack { src: t, dst: u.buf });
        self.unpacked.insert(id, u.clone());
        u
    }

    fn pad_step(
        &mut self,
        name: &str,
        src: &Tensor,
        hw: [usize; 2],
        pad: [usize; 2],
        regroup: (usize, usize, usize),
    ) -> BufId {
        let (hp, wp) = (hw[0] + 2 * pad[0], hw[1] + 2 * pad[1]);
        let per_pixel = match src.dtype {
            DType::F32 => 4 * src.c,
            DType::Bit => 8 * regroup.0 * regroup.2,
        };
        let dst = self.buf(hp * wp * per_pixel);
        self.push(
            name,
            Step::Pad {
                src: src.clone(),
                dst,
                hw,
                pad,
                regroup,
            },
        );
        dst
    }

    fn node(&mut self, id: NodeId) -> Result<(), CodegenError> {
        let graph = self.graph;
        let node = graph.node(id);
        let name = node.name.clone();
        let operands = graph.operands(id);
        let dims = node.ty.dims().to_vec();
        let p =
            |suffix: &str, shape: &[usize]| param(self.params, &format!("{name}.{suffix}"), shape);
        let in_dims = |k: usize| graph.node(operands[k]).ty.dims().to_vec();
        let training = || CodegenError::Training {
            node: name.clone(),
            op: node.op.name(),
        };
        if node.op.is_training() {
            return Err(training());
        }
        match &node.op {
            Op::CrossEntropy(_)
            | Op::RunningStat(_)
            | Op::Grad(_)
            | Op::QuantizationLoss(_)
            | Op::DistributionLoss(_) => return Err(training()),
            Op::Input => {
                let io = graph
                    .inputs()
                    .iter()
                    .position(|&i| i == id)
                    .ok_or_else(|| {
                        CodegenError::Internal(format!("input `{name}` not declared"))
                    })?;
                let dst = self.tensor(DType::F32, &dims);
                // Four channels fill the transposer's vectors; fewer (an RGB
                // image) go row by row.
                let rows = match dims[..] {
                    [c, h, w] if c < 4 => Some(PaddedRows {
                        hw: [h, w],
                        pad: [0, 0],
                    }),
                    _ => None,
                };
                let s = self.push(
                    &name,
                    Step::Input {
                        io,
                        dst: dst.clone(),
                        rows,
                    },
                );
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::BConv2d(a) => {
                let g = a.geometry;
                let d = in_dims(0);
                let shape = [g.out_channels, d[0] / g.groups, g.kernel[0], g.kernel[1]];
                let (neg, epi) = self.binary_params(&name, a.weights, a.scale, a.output, &shape)?;
                self.binconv(id, &name, g, a.pad_value, neg, epi, &dims)?;
            }
            Op::BDense(a) => {
                let k = in_dims(0)[0];
                let shape = [a.out_features, k];
                let (neg, epi) = self.binary_params(&name, a.weights, a.scale, a.output, &shape)?;
                let neg = self.stored_order(operands[0], neg, a.out_features);
                let g = ConvGeometry {
                    out_channels: a.out_features,
                    kernel: [1, 1],
                    stride: [1, 1],
                    pad: [0, 0],
                    dilation: [1, 1],
                    groups: 1,
                };
                self.binconv(id, &name, g, PadValue::One, neg, epi, &dims)?;
            }
            Op::Threshold => {
                let c = [dims[0]];
                let t = p("threshold", &c)?.to_vec();
                let dir = p("direction", &c)?.to_vec();
                let x = operands[0];
                let (tt, dd) = (t.clone(), dir.clone());
                let plus = move |o: usize, y: f32| dd[o] * y >= tt[o];
                if self.fusable(x) && self.try_fuse_sign(x, id, &plus) {
                    return Ok(());
                }
                let src = self.as_f32(x);
                let dst = self.tensor(DType::Bit, &dims);
                let s = self.push(
                    &name,
                    Step::Elementwise {
                        srcs: vec![src.buf],
                        dst: dst.buf,
                        pos: src.pos,
                        c: src.c,
                        op: EwOp::Threshold(dir, t),
                        pack: true,
                        keep: None,
                        padded: None,
                    },
                );
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::Affine => {
                let c = [dims[0]];
                let m = p("multiplier", &c)?.to_vec();
                let b = p("bias", &c)?.to_vec();
                let post = Post::Affine {
                    mul: m.clone(),
                    bias: b.clone(),
                };
                if !self.try_fuse_real_post(operands[0], id, &post) {
                    self.elementwise(id, &name, &operands, EwOp::Affine(m, b), &dims)
                }
            }
            Op::Conv2d(a) => {
                let d = in_dims(0);
                let g = a.geometry;
                let w = p(
                    "weight",
                    &[g.out_channels, d[0] / g.groups, g.kernel[0], g.kernel[1]],
                )?;
                let alpha = interp::scale_factors(a.scale, w, g.out_channels, || {
                    p("scale", &[g.out_channels])
                })?;
                let w = interp::layer_weights(a.weights, alpha.as_deref(), w, g.out_channels)
                    .into_owned();
                let bias = if a.bias {
                    Some(p("bias", &[g.out_channels])?.to_vec())
                } else {
                    None
                };
                self.floatconv(id, &name, g, w, bias, &dims)?;
            }
            Op::Dense(a) => {
                let k = in_dims(0)[0];
                let w = p("weight", &[a.out_features, k])?;
                let alpha = interp::scale_factors(a.scale, w, a.out_features, || {
                    p("scale", &[a.out_features])
                })?;
                let w = interp::layer_weights(a.weights, alpha.as_deref(), w, a.out_features)
                    .into_owned();
                let w = self.stored_order(operands[0], w, a.out_features);
                let bias = if a.bias {
                    Some(p("bias", &[a.out_features])?.to_vec())
                } else {
                    None
                };
                let g = ConvGeometry {
                    out_channels: a.out_features,
                    kernel: [1, 1],
                    stride: [1, 1],
                    pad: [0, 0],
                    dilation: [1, 1],
                    groups: 1,
                };
                self.floatconv(id, &name, g, w, bias, &dims)?;
            }
            Op::Sign(_) => {
                let x = operands[0];
                let t = self.values[&x].clone();
                if t.dtype == DType::Bit {
                    self.values.insert(id, t);
                    return Ok(());
                }
                if self.fusable(x)
                    && (self.try_fuse_real_sign(x, id)
                        || self.try_fuse_sign(x, id, &|_, y| y >= 0.0))
                {
                    return Ok(());
                }
                if self.try_pack_beside(x, id) {
                    return Ok(());
                }
                let dst = self.tensor(DType::Bit, &dims);
                let s = self.push(
                    &name,
                    Step::Elementwise {
                        srcs: vec![t.buf],
                        dst: dst.buf,
                        pos: t.pos,
                        c: t.c,
                        op: EwOp::Copy,
                        pack: true,
                        keep: None,
                        padded: None,
                    },
                );
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::BatchNorm(a) => {
                let c = [dims[0]];
                let gamma = p("weight", &c)?.to_vec();
                let beta = p("bias", &c)?.to_vec();
                let mean = p("running_mean", &c)?.to_vec();
                let var = p("running_var", &c)?;
                let std: Vec<f32> = var
                    .iter()
                    .map(|&v| interp::batchnorm_std(v, a.eps))
                    .collect();
                let x = operands[0];
                if self.fusable(x)
                    && let Some(&s) = self.producer.get(&x)
                    && let Step::BinConv(b) = &mut self.steps[s].1
                    && let Epilogue::Dot { alpha } = &b.epi
                {
                    b.epi = Epilogue::BatchNorm {
                        alpha: alpha.clone(),
                        gamma,
                        mean,
                        std,
                        beta,
                    };
                    let t = self.values[&x].clone();
                    self.producer.insert(id, s);
                    self.values.insert(id, t);
                    return Ok(());
                }
                let post = Post::BatchNorm {
                    gamma: gamma.clone(),
                    mean: mean.clone(),
                    std: std.clone(),
                    beta: beta.clone(),
                };
                if self.try_fuse_real_post(x, id, &post) {
                    return Ok(());
                }
                self.elementwise(
                    id,
                    &name,
                    &operands,
                    EwOp::BatchNorm {
                        gamma,
                        mean,
                        std,
                        beta,
                    },
                    &dims,
                );
            }
            Op::Relu => self.elementwise(id, &name, &operands, EwOp::Relu, &dims),
            Op::PRelu => {
                let a = p("weight", &[dims[0]])?.to_vec();
                if !self.try_fuse_real_post(operands[0], id, &Post::PRelu(a.clone())) {
                    self.elementwise(id, &name, &operands, EwOp::PRelu(a), &dims)
                }
            }
            Op::Shift => {
                // `x + b` is `1·x + b` exactly.
                let b = p("bias", &[dims[0]])?.to_vec();
                let m = vec![1.0; b.len()];
                self.elementwise(id, &name, &operands, EwOp::Affine(m, b), &dims)
            }
            Op::HardTanh(h) => {
                self.elementwise(id, &name, &operands, EwOp::HardTanh(h.min, h.max), &dims)
            }
            Op::Add => {
                if !self.try_fuse_residual(id, &operands) {
                    self.elementwise(id, &name, &operands, EwOp::Add, &dims);
                }
            }
            Op::Zero => {
                // The operand is not read.
                let dst = self.tensor(DType::F32, &dims);
                let s = self.push(
                    &name,
                    Step::Elementwise {
                        srcs: vec![],
                        dst: dst.buf,
                        pos: dst.pos,
                        c: dst.c,
                        op: EwOp::Zero,
                        pack: false,
                        keep: None,
                        padded: None,
                    },
                );
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::Choose => {
                let alpha = p("alpha", &[operands.len()])?;
                let m = alpha.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = alpha.iter().map(|&a| (a - m).exp()).collect();
                let total: f32 = e.iter().sum();
                let w = e.iter().map(|&ei| ei / total).collect();
                self.elementwise(id, &name, &operands, EwOp::Choose(w), &dims)
            }
            Op::Identity => {
                let t = self.values[&operands[0]].clone();
                self.values.insert(id, t);
            }
            Op::MaxPool(pa) | Op::AvgPool(pa) => {
                let max = matches!(node.op, Op::MaxPool(_));
                self.pool(id, &name, operands[0], *pa, max, &dims)?;
            }
            Op::GlobalAvgPool => {
                let src = self.as_f32(operands[0]);
                let dst = self.tensor(DType::F32, &dims);
                let s = self.push(&name, Step::GlobalAvgPool { src, dst: dst.buf });
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::Flatten => {
                let src = self.values[&operands[0]].clone();
                if src.pos == 1 {
                    self.values.insert(id, src);
                    return Ok(());
                }
                if self.try_flatten_free(id, operands[0]) {
                    return Ok(());
                }
                let dst = self.tensor(src.dtype, &dims);
                let s = self.push(&name, Step::Flatten { src, dst: dst.buf });
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::SliceChannels(_) | Op::ShuffleChannels(_) => {
                let src = if node.ty.dtype == DType::Bit {
                    self.values[&operands[0]].clone()
                } else {
                    self.as_f32(operands[0])
                };
                let map = node
                    .op
                    .channel_sources(src.c)
                    .expect("the op picks channels");
                let dst = self.tensor(node.ty.dtype, &dims);
                let s = self.push(
                    &name,
                    Step::GatherChannels {
                        src,
                        map,
                        dst: dst.clone(),
                    },
                );
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
            Op::Concat => {
                let srcs: Vec<Tensor> = if node.ty.dtype == DType::Bit {
                    operands.iter().map(|o| self.values[o].clone()).collect()
                } else {
                    operands.iter().map(|&o| self.as_f32(o)).collect()
                };
                let dst = self.tensor(node.ty.dtype, &dims);
                let s = self.push(
                    &name,
                    Step::Concat {
                        srcs,
                        dst: dst.clone(),
                    },
                );
                self.producer.insert(id, s);
                self.values.insert(id, dst);
            }
        }
        Ok(())
    }
}

/// Plans `graph` (verified) with `params`.
pub fn plan(
    verified: Verified<'_>,
    params: &Params,
    opts: PlanOptions,
) -> Result<Plan, CodegenError> {
    let graph = verified.graph();
    let order = graph
        .topo_order()
        .map_err(|_| CodegenError::Internal("the verified graph has a cycle".into()))?;
    let mut p = Planner {
        graph,
        params,
        opts,
        steps: Vec::new(),
        bufs: Vec::new(),
        values: HashMap::new(),
        producer: HashMap::new(),
        unpacked: HashMap::new(),
        flat: HashMap::new(),
    };
    for id in order {
        p.node(id)?;
    }
    let mut outputs = Vec::new();
    for (io, &o) in graph.outputs().iter().enumerate() {
        let src = p.values[&o].clone();
        let node = graph.node(o);
        outputs.push((node.name.clone(), node.ty.dims().to_vec()));
        p.push(
            &node.name.clone(),
            Step::Output {
                io: graph.inputs().len() + io,
                src,
            },
        );
    }
    let inputs = graph
        .inputs()
        .iter()
        .map(|&i| (graph.node(i).name.clone(), graph.node(i).ty.dims().to_vec()))
        .collect();
    let (offsets, arena_bytes) = allocate(&p.steps, &p.bufs);
    Ok(Plan {
        steps: p.steps,
        bufs: p.bufs,
        offsets,
        arena_bytes,
        inputs,
        outputs,
    })
}

/// Linear-scan arena allocation, first fit, 64-byte aligned.
fn allocate(steps: &[(String, Step)], bufs: &[usize]) -> (Vec<usize>, usize) {
    let n = bufs.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    for (i, (_, s)) in steps.iter().enumerate() {
        for b in s.writes().into_iter().chain(s.reads()) {
            first[b] = first[b].min(i);
            last[b] = last[b].max(i);
        }
    }
    let mut offsets = vec![0usize; n];
    let mut live: Vec<(usize, usize, BufId)> = Vec::new(); // (offset, size, buf)
    let mut top = 0usize;
    for (i, (_, s)) in steps.iter().enumerate() {
        let mut writes = s.writes();
        writes.dedup();
        for b in writes {
            if first[b] != i {
                continue;
            }
            live.sort_unstable();
            let size = bufs[b].max(64);
            let mut at = 0usize;
            for &(off, sz, _) in &live {
                if off >= at + size {
                    break;
                }
                at = at.max(off + sz);
            }
            offsets[b] = at;
            top = top.max(at + size);
            live.push((at, size, b));
        }
        live.retain(|&(_, _, b)| last[b] > i);
    }
    (offsets, top.max(64))
}
