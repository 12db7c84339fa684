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
pub use fuse_real::Post;

/// Index of a buffer in [`Plan::bufs`].
pub type BufId = usize;

/// A value's storage.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Channels (the first IR axis).
    pub c: usize,
    /// Positions: the product of the other axes (1 for rank 1).
    pub pos: usize,
    /// The buffer.
    pub buf: BufId,
}

impl Tensor {
    /// 64-bit words per position of a bit tensor.
    pub fn cw(&self) -> usize {
        self.c.div_ceil(64)
    }
    /// Bytes of one sample.
    pub fn bytes(&self) -> usize {
        match self.dtype {
            DType::F32 => 4 * self.c * self.pos,
            DType::Bit => 8 * self.cw() * self.pos,
        }
    }
}

/// How a binary layer turns its integer dot products into outputs.
#[derive(Clone, Debug)]
pub enum Epilogue {
    /// `f32` output `α_o · dot` (α = 1 without a scale).
    Dot {
        /// Per-channel scale.
        alpha: Option<Vec<f32>>,
    },
    /// `f32` output: the dot (times α) followed by a folded batchnorm,
    /// `γ·(y − μ)/std + β` in the interpreter's order.
    BatchNorm {
        /// Per-channel scale before the batchnorm.
        alpha: Option<Vec<f32>>,
        /// γ.
        gamma: Vec<f32>,
        /// μ.
        mean: Vec<f32>,
        /// `sqrt(σ² + ε)`.
        std: Vec<f32>,
        /// β.
        beta: Vec<f32>,
    },
    /// `f32` output `m_o · dot + b_o`.
    Affine {
        /// Multipliers.
        mul: Vec<f32>,
        /// Biases.
        bias: Vec<f32>,
    },
    /// Bit output: bit 0 (+1) iff `dir_o · dot ≥ t_o`, integers.
    Threshold {
        /// ±1.
        dir: Vec<i32>,
        /// Integer thresholds.
        t: Vec<i32>,
    },
}

impl Epilogue {
    /// The `f32` value the interpreter computes for dot product `d` of
    /// channel `o` (for the f32 epilogues).
    pub fn eval(&self, o: usize, d: i32) -> f32 {
        let s = d as f32;
        match self {
            Epilogue::Dot { alpha } => alpha.as_ref().map_or(s, |a| s * a[o]),
            Epilogue::BatchNorm {
                alpha,
                gamma,
                mean,
                std,
                beta,
            } => {
                let y = alpha.as_ref().map_or(s, |a| s * a[o]);
                interp::batchnorm_with_std(y, gamma[o], beta[o], mean[o], std[o])
            }
            Epilogue::Affine { mul, bias } => interp::affine_value(s, mul[o], bias[o]),
            Epilogue::Threshold { dir, t } => {
                if dir[o] * d >= t[o] {
                    1.0
                } else {
                    -1.0
                }
            }
        }
    }

    /// Whether the output is bits.
    pub fn bits(&self) -> bool {
        matches!(self, Epilogue::Threshold { .. })
    }
}

/// A binary convolution (bdense is the 1×1 case).
#[derive(Clone, Debug)]
pub struct BinConv {
    /// The prepared (padded, regrouped) input.
    pub src: BufId,
    /// Prepared input width.
    pub wp: usize,
    /// Words per prepared pixel (`groups · cwg`).
    pub xw: usize,
    /// Groups.
    pub groups: usize,
    /// Input channels per group.
    pub cg: usize,
    /// Words per group per pixel.
    pub cwg: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel, stride, dilation as (h, w).
    pub k: [usize; 2],
    /// Stride.
    pub s: [usize; 2],
    /// Dilation.
    pub d: [usize; 2],
    /// Output size.
    pub out: [usize; 2],
    /// `sign(W) = −1`, `[O][Cg][kh][kw]`.
    pub neg: Vec<bool>,
    /// Zero padding `(ph, pw, h, w)` needing border corrections.
    pub zero_pad: Option<[usize; 4]>,
    /// Output conversion.
    pub epi: Epilogue,
    /// Output buffer.
    pub dst: BufId,
    /// Pixels per register tile.
    pub nr: usize,
    /// Force the scalar popcount path.
    pub scalar: bool,
    /// The machine-code kernel's register tile, on the `avx2` and `avx512`
    /// paths (`nr` is then its pixel count).
    pub wide: Option<crate::codegen::kernels::wide::Tile>,
    /// A residual added to the f32 results in the kernel's epilogue
    /// (`add(shortcut, this)` fused, see `Planner::try_fuse_residual`): a
    /// buffer of the output's layout.
    pub residual: Option<BufId>,
}

/// A real-valued convolution (dense is the 1×1 case).
#[derive(Clone, Debug)]
pub struct FloatConv {
    /// The prepared (zero-padded) input, channels-last.
    pub src: BufId,
    /// Prepared input width.
    pub wp: usize,
    /// Input channels.
    pub c: usize,
    /// Groups.
    pub groups: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel.
    pub k: [usize; 2],
    /// Stride.
    pub s: [usize; 2],
    /// Dilation.
    pub d: [usize; 2],
    /// Output size.
    pub out: [usize; 2],
    /// Weights `[O][C/G][kh][kw]`.
    pub w: Vec<f32>,
    /// Bias.
    pub bias: Option<Vec<f32>>,
    /// Output buffer.
    pub dst: BufId,
    /// Pixels per register tile.
    pub nr: usize,
    /// The FMA micro-kernel's register tile, on the `avx512` path
    /// (`kernels::wide::fconv`); `None`: the portable kernel
    /// (`kernels::float`), bit-identical to the interpreter.
    pub fma: Option<crate::codegen::kernels::wide::fconv::FTile>,
    /// Per-channel ops fused into the FMA kernel's epilogue, in order
    /// (`plan::fuse_real`; empty without `fma`).
    pub post: Vec<Post>,
    /// A `sign` fused into the FMA kernel: `dst` holds packed bits.
    pub bits: bool,
}

/// An elementwise op over channels-last tensors of one shape.
#[derive(Clone, Debug)]
pub enum EwOp {
    /// Copy (used with packing for a plain `sign`).
    Copy,
    /// `γ·(x − μ)/std + β`.
    BatchNorm {
        /// γ.
        gamma: Vec<f32>,
        /// μ.
        mean: Vec<f32>,
        /// std.
        std: Vec<f32>,
        /// β.
        beta: Vec<f32>,
    },
    /// `x ≥ 0 ? x : a_c·x`.
    PRelu(Vec<f32>),
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, lo), hi)`.
    HardTanh(f32, f32),
    /// Sum of all operands, left to right.
    Add,
    /// `Σ w_i x_i` from 0, left to right.
    Choose(Vec<f32>),
    /// Zeros.
    Zero,
    /// `m_c·x + b_c`.
    Affine(Vec<f32>, Vec<f32>),
    /// Bits: +1 iff `dir_c · x ≥ t_c` (output packed).
    Threshold(Vec<f32>, Vec<f32>),
}

/// Pooling kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// f32 max.
    Max,
    /// f32 average over `kh·kw`.
    Avg,
    /// Max of ±1 bits: AND.
    MaxBits,
}

/// One kernel step.
#[derive(Clone, Debug)]
pub enum Step {
    /// Model input `io` (C order) to channels-last.
    Input {
        /// Index in the io table.
        io: usize,
        /// Destination.
        dst: Tensor,
        /// Image inputs with few channels are converted row by row instead
        /// of in blocks of four channels, optionally straight into the
        /// zero-padded buffer of the convolution that reads them.
        rows: Option<PaddedRows>,
    },
    /// A value to model output `io` (C order, bits as ±1.0).
    Output {
        /// Index in the io table.
        io: usize,
        /// Source.
        src: Tensor,
    },
    /// Copies into a zero-padded (and for grouped bits, regrouped)
    /// buffer: f32 zeros, or zero words (+1) for bits, which the binary
    /// layers correct for where their padding value is 0.
    Pad {
        /// Source.
        src: Tensor,
        /// Destination buffer.
        dst: BufId,
        /// Spatial size `(h, w)` of the source.
        hw: [usize; 2],
        /// Padding.
        pad: [usize; 2],
        /// Bit sources: `(groups, cg, cwg)`.
        regroup: (usize, usize, usize),
    },
    /// Binary convolution.
    BinConv(BinConv),
    /// Real convolution.
    FloatConv(FloatConv),
    /// Elementwise op; `pack` writes bits (sign of the result).
    Elementwise {
        /// Operands (f32, same shape).
        srcs: Vec<BufId>,
        /// Destination.
        dst: BufId,
        /// Positions.
        pos: usize,
        /// Channels.
        c: usize,
        /// The op.
        op: EwOp,
        /// Pack the sign of the result into bits.
        pack: bool,
        /// With `pack`, the f32 result is stored here as well, for the
        /// users of the value other than its `sign` (a residual shortcut).
        keep: Option<BufId>,
        /// With `pack`, the bits are written into a zero-padded buffer
        /// (`plan::fuse_glue::try_pack_padded`), one row per work unit.
        padded: Option<PaddedRows>,
    },
    /// Bits to ±1.0.
    Unpack {
        /// Source.
        src: Tensor,
        /// Destination buffer (f32).
        dst: BufId,
    },
    /// Pooling, the windows clipped to the input (no padded copy).
    Pool {
        /// Source.
        src: BufId,
        /// Input height and width.
        hw: [usize; 2],
        /// Padding.
        pad: [usize; 2],
        /// Channels.
        c: usize,
        /// Kind.
        kind: PoolKind,
        /// Kernel.
        k: [usize; 2],
        /// Stride.
        s: [usize; 2],
        /// Output size.
        out: [usize; 2],
        /// Destination.
        dst: BufId,
    },
    /// Mean over positions.
    GlobalAvgPool {
        /// Source (f32).
        src: Tensor,
        /// Destination.
        dst: BufId,
    },
    /// Channels-last to C order (flatten of a multi-position value).
    Flatten {
        /// Source.
        src: Tensor,
        /// Destination.
        dst: BufId,
    },
    /// Channel concatenation.
    Concat {
        /// Operands (all bits or all f32).
        srcs: Vec<Tensor>,
        /// Destination.
        dst: Tensor,
    },
    /// A channel slice or shuffle: destination channel `j` is source
    /// channel `map[j]` at every position.
    GatherChannels {
        /// Source (bits or f32, as the destination).
        src: Tensor,
        /// The source channel of each destination channel.
        map: Vec<usize>,
        /// Destination.
        dst: Tensor,
    },
}

impl Step {
    /// A short name for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Input { .. } => "input",
            Step::Output { .. } => "output",
            Step::Pad { .. } => "pad",
            Step::BinConv(b) => match (b.epi.bits(), b.residual.is_some()) {
                (true, _) => "bconv→bits",
                (false, true) => "bconv+add",
                (false, false) => "bconv",
            },
            Step::FloatConv(_) => "conv",
            Step::Elementwise { pack: true, .. } => "elementwise→bits",
            Step::Elementwise { .. } => "elementwise",
            Step::Unpack { .. } => "unpack",
            Step::Pool { .. } => "pool",
            Step::GlobalAvgPool { .. } => "global_avgpool",
            Step::Flatten { .. } => "flatten",
            Step::Concat { .. } => "concat",
            Step::GatherChannels { .. } => "channels",
        }
    }

    /// Buffers read.
    pub fn reads(&self) -> Vec<BufId> {
        match self {
            Step::Input { .. } => vec![],
            Step::Output { src, .. }
            | Step::Pad { src, .. }
            | Step::Unpack { src, .. }
            | Step::GlobalAvgPool { src, .. }
            | Step::Flatten { src, .. }
            | Step::GatherChannels { src, .. } => vec![src.buf],
            Step::BinConv(b) => std::iter::once(b.src).chain(b.residual).collect(),
            Step::FloatConv(f) => vec![f.src],
            Step::Elementwise { srcs, .. } => srcs.clone(),
            Step::Pool { src, .. } => vec![*src],
            Step::Concat { srcs, .. } => srcs.iter().map(|t| t.buf).collect(),
        }
    }

    /// Buffers written.
    pub fn writes(&self) -> Vec<BufId> {
        match self {
            Step::Input { dst, .. }
            | Step::Concat { dst, .. }
            | Step::GatherChannels { dst, .. } => vec![dst.buf],
            Step::Output { .. } => vec![],
            Step::Pad { dst, .. }
            | Step::Unpack { dst, .. }
            | Step::GlobalAvgPool { dst, .. }
            | Step::Flatten { dst, .. }
            | Step::Pool { dst, .. } => vec![*dst],
            Step::Elementwise { dst, keep, .. } => std::iter::once(*dst).chain(*keep).collect(),
            Step::BinConv(b) => vec![b.dst],
            Step::FloatConv(f) => vec![f.dst],
        }
    }
}

/// Positions written row by row into a zero-padded buffer (an image
/// input's conversion, or packed signs for the binary layer that reads
/// them padded): the spatial size and the padding around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PaddedRows {
    /// Height and width of the unpadded positions.
    pub hw: [usize; 2],
    /// Zero padding written around them, `(ph, pw)`.
    pub pad: [usize; 2],
}

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

    fn elementwise(
        &mut self,
        id: NodeId,
        name: &str,
        operands: &[NodeId],
        op: EwOp,
        dims: &[usize],
    ) {
        let srcs: Vec<BufId> = operands.iter().map(|&o| self.as_f32(o).buf).collect();
        let dst = self.tensor(DType::F32, dims);
        let s = self.push(
            name,
            Step::Elementwise {
                srcs,
                dst: dst.buf,
                pos: dst.pos,
                c: dst.c,
                op,
                pack: false,
                keep: None,
                padded: None,
            },
        );
        self.producer.insert(id, s);
        self.values.insert(id, dst);
    }

    #[allow(clippy::too_many_arguments)]
    fn binconv(
        &mut self,
        id: NodeId,
        name: &str,
        g: ConvGeometry,
        pad_value: PadValue,
        neg: Vec<bool>,
        epi: Epilogue,
        dims: &[usize],
    ) -> Result<(), CodegenError> {
        let x = self.graph.operands(id)[0];
        let src = self.values[&x].clone();
        let (c, h, wd) = match self.graph.node(x).ty.dims() {
            [c, h, w] => (*c, *h, *w),
            [k] => (*k, 1, 1),
            _ => {
                return Err(CodegenError::Internal(format!(
                    "`{name}`: bad operand rank"
                )));
            }
        };
        let groups = g.groups;
        let cg = c / groups;
        let cwg = cg.div_ceil(64);
        let aligned = groups == 1 || cg.is_multiple_of(64);
        let needs_prep = g.pad != [0, 0] || !aligned;
        let prepared = if needs_prep
            && !(g.pad != [0, 0] && self.try_pack_padded(x, [h, wd], g.pad, aligned))
        {
            self.pad_step(name, &src, [h, wd], g.pad, (groups, cg, cwg))
        } else {
            src.buf
        };
        let (oh, ow) = (
            dims.get(1).copied().unwrap_or(1),
            dims.get(2).copied().unwrap_or(1),
        );
        let pixels = oh * ow;
        let o = g.out_channels;
        let wide = self.opts.wide.map(|isa| {
            crate::codegen::kernels::wide::Tile::choose(isa, (o / groups).div_ceil(16), pixels)
        });
        let nr = match wide {
            Some(t) => t.nr,
            None if pixels >= 2 => 2,
            None => 1,
        };
        let bits_out = epi.bits();
        let dst_t = self.tensor(if bits_out { DType::Bit } else { DType::F32 }, dims);
        let px_bytes = if bits_out { 8 * o.div_ceil(64) } else { 4 * o };
        self.bufs[dst_t.buf] = (px_bytes * pixels.div_ceil(nr) * nr).div_ceil(64) * 64;
        let zero_pad =
            (pad_value == PadValue::Zero && g.pad != [0, 0]).then_some([g.pad[0], g.pad[1], h, wd]);
        let step = BinConv {
            src: prepared,
            wp: wd + 2 * g.pad[1],
            xw: groups * cwg,
            groups,
            cg,
            cwg,
            o,
            k: g.kernel,
            s: g.stride,
            d: g.dilation,
            out: [oh, ow],
            neg,
            zero_pad,
            epi,
            dst: dst_t.buf,
            nr,
            scalar: self.opts.scalar_popcount,
            wide,
            residual: None,
        };
        let s = self.push(name, Step::BinConv(step));
        self.producer.insert(id, s);
        self.values.insert(id, dst_t);
        Ok(())
    }

    fn floatconv(
        &mut self,
        id: NodeId,
        name: &str,
        g: ConvGeometry,
        w: Vec<f32>,
        bias: Option<Vec<f32>>,
        dims: &[usize],
    ) -> Result<(), CodegenError> {
        let x = self.graph.operands(id)[0];
        let src = self.as_f32(x);
        let (c, h, wd) = match self.graph.node(x).ty.dims() {
            [c, h, w] => (*c, *h, *w),
            [k] => (*k, 1, 1),
            _ => {
                return Err(CodegenError::Internal(format!(
                    "`{name}`: bad operand rank"
                )));
            }
        };
        let prepared = if g.pad == [0, 0] || self.try_pad_input(x, g.pad) {
            src.buf
        } else {
            self.pad_step(name, &src, [h, wd], g.pad, (1, 0, 0))
        };
        let (oh, ow) = (
            dims.get(1).copied().unwrap_or(1),
            dims.get(2).copied().unwrap_or(1),
        );
        let pixels = oh * ow;
        let nr = if pixels >= 2 { 2 } else { 1 };
        let fma = self.opts.fma.then(|| {
            crate::codegen::kernels::wide::fconv::FTile::choose(
                (g.out_channels / g.groups).div_ceil(16),
                ow,
            )
        });
        let dst = self.tensor(DType::F32, dims);
        self.bufs[dst.buf] = (4 * g.out_channels * pixels.div_ceil(nr) * nr).div_ceil(64) * 64;
        let step = FloatConv {
            src: prepared,
            wp: wd + 2 * g.pad[1],
            c,
            groups: g.groups,
            o: g.out_channels,
            k: g.kernel,
            s: g.stride,
            d: g.dilation,
            out: [oh, ow],
            w,
            bias,
            dst: dst.buf,
            nr,
            fma,
            post: Vec::new(),
            bits: false,
        };
        let s = self.push(name, Step::FloatConv(step));
        self.producer.insert(id, s);
        self.values.insert(id, dst);
        Ok(())
    }

    fn pool(
        &mut self,
        id: NodeId,
        name: &str,
        x: NodeId,
        pa: PoolAttrs,
        max: bool,
        dims: &[usize],
    ) -> Result<(), CodegenError> {
        let raw = self.values[&x].clone();
        let bits = max && raw.dtype == DType::Bit;
        let src = if bits { raw } else { self.as_f32(x) };
        let [c, h, wd] = *self.graph.node(x).ty.dims() else {
            return Err(CodegenError::Internal(format!(
                "`{name}`: bad operand rank"
            )));
        };
        let dst = self.tensor(if bits { DType::Bit } else { DType::F32 }, dims);
        let s = self.push(
            name,
            Step::Pool {
                src: src.buf,
                hw: [h, wd],
                pad: pa.pad,
                c,
                kind: if bits {
                    PoolKind::MaxBits
                } else if max {
                    PoolKind::Max
                } else {
                    PoolKind::Avg
                },
                k: pa.kernel,
                s: pa.stride,
                out: [dims[1], dims[2]],
                dst: dst.buf,
            },
        );
        self.producer.insert(id, s);
        self.values.insert(id, dst);
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
