//! What a plan is made of: a value's storage ([`Tensor`]), the epilogues of
//! binary layers, and the kernel steps ([`Step`]) the code generator emits
//! one by one.

use super::*;

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
