//! The closed set of operations, their typed attributes and their typing rules.
//!
//! Every op is one variant of [`Op`]; attributes live in a struct per op family.
//! Matches over `Op` are exhaustive throughout the crate, so adding an op fails
//! to compile until the parser, printer, verifier, interpreter and every later
//! stage handle it. `ir-spec/ops.md` gives the exact semantics of each op.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::types::{DType, Extent, Shape, TensorType};

/// A `(height, width)` pair: kernel sizes, strides, paddings and dilations.
pub type Pair = [usize; 2];

/// What padded positions of a binary convolution hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PadValue {
    /// Padded positions are 0 and contribute nothing to the sum (`pad_value=0`).
    Zero,
    /// Padded positions are +1 (`pad_value=1`); free in the bit domain, where +1 is bit 0.
    One,
}

/// The output scaling of a binary layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// No scaling: the output is the ±1 dot product.
    #[default]
    None,
    /// XNOR-Net: output channel `o` is multiplied by `mean |W_o|` of its latent weights.
    Channel,
    /// A trainable per-channel factor, the parameter `NODE.scale` (`[O]`),
    /// initialised to `mean |W_o|` (XNOR-Net++'s learned α; Bulat and
    /// Tzimiropoulos 2019): the output channel `o` is multiplied by it.
    Learned,
}

impl Scale {
    /// The word of the text format.
    pub fn name(self) -> &'static str {
        match self {
            Scale::None => "none",
            Scale::Channel => "channel",
            Scale::Learned => "learned",
        }
    }

    /// Whether the layer multiplies its outputs by a per-channel factor.
    pub fn is_scaled(self) -> bool {
        self != Scale::None
    }
}

/// What a binary layer outputs, computed from its ±1 dot products `dot_o`
/// (exact integers: `K − 2·popcount(a XOR w)` in the bit domain).
///
/// Models are written with `Dot`; the passes fold a following XNOR-Net scale,
/// batchnorm and sign into `Affine` or `Threshold`, which the code generator
/// evaluates on the integer accumulator directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BinaryOutput {
    /// f32 `dot_o`, times `α_o` with `scale=channel` (`output=dot`, the default).
    #[default]
    Dot,
    /// f32 `multiplier_o · dot_o + bias_o` (`output=affine`; parameters
    /// `NAME.multiplier`, `NAME.bias`).
    Affine,
    /// bit: `+1` where `direction_o · dot_o >= threshold_o`, else `−1`
    /// (`output=threshold`; parameters `NAME.threshold`, `NAME.direction`).
    Threshold,
}

impl BinaryOutput {
    /// The word of the text format.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOutput::Dot => "dot",
            BinaryOutput::Affine => "affine",
            BinaryOutput::Threshold => "threshold",
        }
    }
}

/// How a binary layer's weights are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightForm {
    /// Real-valued latent weights; the layer uses their sign (`weights=latent`, the default).
    #[default]
    Latent,
    /// Packed sign bits (`weights=packed`), laid out for the kernels: see
    /// [`PackedBits`](super::params::PackedBits).
    Packed,
}

/// Geometry shared by `conv2d` and `bconv2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvGeometry {
    /// Number of output channels.
    pub out_channels: usize,
    /// Kernel `(kh, kw)`.
    pub kernel: Pair,
    /// Stride `(sh, sw)`, default 1.
    pub stride: Pair,
    /// Symmetric padding `(ph, pw)`, default 0.
    pub pad: Pair,
    /// Dilation `(dh, dw)`, default 1.
    pub dilation: Pair,
    /// Number of groups, default 1; divides both channel counts.
    pub groups: usize,
}

/// The weights of a real-valued layer (`conv2d`, `dense`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightKind {
    /// Real weights (`weights=real`, the default).
    #[default]
    Real,
    /// Binary weights over the real input: the layer computes with
    /// `α_o·sign(W)` of its latent weights `W` (`weights=binary`; BinaryNet's
    /// first layer, BNAS's search mode), `α_o = mean|W_o|` with
    /// `scale=channel`, else 1.
    Binary,
}

impl WeightKind {
    /// The word of the text format.
    pub fn name(self) -> &'static str {
        match self {
            WeightKind::Real => "real",
            WeightKind::Binary => "binary",
        }
    }
}

/// Attributes of `conv2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conv2d {
    /// Kernel geometry.
    pub geometry: ConvGeometry,
    /// Whether the layer adds a learned bias (default true).
    pub bias: bool,
    /// Real (default) or binary weights.
    #[serde(default)]
    pub weights: WeightKind,
    /// The XNOR-Net scale of binary weights (default none).
    #[serde(default)]
    pub scale: Scale,
    /// PCNN's learned projection of binary weights (default false).
    #[serde(default)]
    pub projection: bool,
}

impl Conv2d {
    /// A real-valued convolution.
    pub fn new(geometry: ConvGeometry, bias: bool) -> Conv2d {
        Conv2d {
            geometry,
            bias,
            weights: WeightKind::Real,
            scale: Scale::None,
            projection: false,
        }
    }
}

/// Attributes of `bconv2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BConv2d {
    /// Kernel geometry.
    pub geometry: ConvGeometry,
    /// What padded positions hold (default zero).
    pub pad_value: PadValue,
    /// Output scaling (default none).
    pub scale: Scale,
    /// What the layer outputs (default `dot`).
    pub output: BinaryOutput,
    /// How the weights are stored (default latent).
    pub weights: WeightForm,
    /// PCNN's learned projection of the latent weights (default false).
    #[serde(default)]
    pub projection: bool,
}

impl BConv2d {
    /// A binary convolution as models write it: latent weights, `output=dot`.
    pub fn new(geometry: ConvGeometry, pad_value: PadValue, scale: Scale) -> BConv2d {
        BConv2d {
            geometry,
            pad_value,
            scale,
            output: BinaryOutput::Dot,
            weights: WeightForm::Latent,
            projection: false,
        }
    }
}

/// Attributes of `dense`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dense {
    /// Number of output features.
    pub out_features: usize,
    /// Whether the layer adds a learned bias (default true).
    pub bias: bool,
    /// Real (default) or binary weights.
    #[serde(default)]
    pub weights: WeightKind,
    /// The XNOR-Net scale of binary weights (default none).
    #[serde(default)]
    pub scale: Scale,
    /// PCNN's learned projection of binary weights (default false).
    #[serde(default)]
    pub projection: bool,
}

impl Dense {
    /// A real-valued dense layer.
    pub fn new(out_features: usize, bias: bool) -> Dense {
        Dense {
            out_features,
            bias,
            weights: WeightKind::Real,
            scale: Scale::None,
            projection: false,
        }
    }
}

/// Attributes of `bdense`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BDense {
    /// Number of output features.
    pub out_features: usize,
    /// Output scaling (default none).
    pub scale: Scale,
    /// What the layer outputs (default `dot`).
    pub output: BinaryOutput,
    /// How the weights are stored (default latent).
    pub weights: WeightForm,
    /// PCNN's learned projection of the latent weights (default false).
    #[serde(default)]
    pub projection: bool,
}

impl BDense {
    /// A binary dense layer as models write it: latent weights, `output=dot`.
    pub fn new(out_features: usize, scale: Scale) -> BDense {
        BDense {
            out_features,
            scale,
            output: BinaryOutput::Dot,
            weights: WeightForm::Latent,
            projection: false,
        }
    }
}

/// Which statistics a `batchnorm` normalises with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stats {
    /// The running mean and variance (parameters): inference (the default).
    #[default]
    Running,
    /// The mean and biased variance of the batch, per channel over the batch
    /// and spatial axes (`stats=batch`): training mode. The running
    /// statistics are updated by `running_stat` nodes.
    Batch,
}

impl Stats {
    /// The word of the text format.
    pub fn name(self) -> &'static str {
        match self {
            Stats::Running => "running",
            Stats::Batch => "batch",
        }
    }
}

/// Attributes of `batchnorm`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Added to the variance before the square root (default 1e-5).
    pub eps: f32,
    /// Running (inference, the default) or batch (training) statistics.
    #[serde(default)]
    pub stats: Stats,
}

impl BatchNorm {
    /// An inference batchnorm (`stats=running`).
    pub fn new(eps: f32) -> BatchNorm {
        BatchNorm {
            eps,
            stats: Stats::Running,
        }
    }
}

/// What a `sign` passes back in place of its derivative, which is zero almost
/// everywhere (`ir-spec/training.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignGrad {
    /// The clipped straight-through estimator `1[|x| <= 1]` (BinaryNet,
    /// larq's `ste_sign`; `grad=ste`, the default).
    #[default]
    Ste,
    /// Bi-Real Net's ApproxSign `(2 − 2|x|)·1[|x| <= 1]` (`grad=approx`).
    Approx,
    /// BNN+'s SwishSign `β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))`, β = 5
    /// (`grad=swish`).
    Swish,
}

impl SignGrad {
    /// The word of the text format.
    pub fn name(self) -> &'static str {
        match self {
            SignGrad::Ste => "ste",
            SignGrad::Approx => "approx",
            SignGrad::Swish => "swish",
        }
    }
}

/// Attributes of `sign`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sign {
    /// The estimator used for its gradient when training (default `ste`).
    #[serde(default)]
    pub grad: SignGrad,
}

/// Attributes of `cross_entropy`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrossEntropy {
    /// Label smoothing `ε` in `[0, 1)`: the target `t` becomes
    /// `(1 − ε)·t + ε/K` (default 0).
    pub smoothing: f32,
}

/// Attributes of `quantization_loss`: a weighted loss term between a binary
/// layer's latent weights and their binarized, scaled form (Zheng et al. 2019).
///
/// Operands: the layer, then the layer's own operand (the printer leaves it
/// out and the parser adds it back, as for `running_stat`). The layer's op is
/// repeated here so that the typing rule can derive the weight's shape; the
/// verifier checks that it equals the layer's op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizationLoss {
    /// The term's weight `λ` in the total loss (finite, `>= 0`).
    pub weight: f32,
    /// The layer's op.
    pub of: Box<Op>,
}

/// Attributes of `distribution_loss`: a weighted loss term on the batch
/// distribution of pre-sign activations (Ding et al. 2019).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistributionLoss {
    /// The term's weight `λ` in the total loss (finite, `>= 0`).
    pub weight: f32,
}

/// The statistic a `running_stat` node updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    /// `NODE.running_mean`.
    Mean,
    /// `NODE.running_var` (updated with the unbiased batch variance).
    Var,
}

impl Statistic {
    /// The word of the text format.
    pub fn name(self) -> &'static str {
        match self {
            Statistic::Mean => "mean",
            Statistic::Var => "var",
        }
    }

    /// The batchnorm parameter the statistic updates.
    pub fn param(self) -> &'static str {
        match self {
            Statistic::Mean => "running_mean",
            Statistic::Var => "running_var",
        }
    }
}

/// Attributes of `running_stat`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunningStat {
    /// Which running statistic.
    pub stat: Statistic,
    /// The new value is `(1 − momentum)·old + momentum·batch` (PyTorch's
    /// convention; default 0.1).
    pub momentum: f32,
}

/// A trainable parameter of a node, as a `grad` node names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamRole {
    /// `NODE.weight`.
    Weight,
    /// `NODE.bias`.
    Bias,
    /// `NODE.alpha` (the architecture weights of `choose`).
    Alpha,
    /// `NODE.scale` (the learned per-channel factor of `scale=learned`).
    Scale,
    /// `NODE.projection` (PCNN's projection of `projection=true`).
    Projection,
}

impl ParamRole {
    /// The parameter's suffix, as in `NODE.weight`.
    pub fn name(self) -> &'static str {
        match self {
            ParamRole::Weight => "weight",
            ParamRole::Bias => "bias",
            ParamRole::Alpha => "alpha",
            ParamRole::Scale => "scale",
            ParamRole::Projection => "projection",
        }
    }

    /// Every role.
    pub const ALL: [ParamRole; 5] = [
        ParamRole::Weight,
        ParamRole::Bias,
        ParamRole::Alpha,
        ParamRole::Scale,
        ParamRole::Projection,
    ];
}

/// What a `grad` node differentiates the loss with respect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Wrt {
    /// The forward node's operand with this index (`wrt=0`).
    Operand(usize),
    /// One of the forward node's trainable parameters (`wrt=weight`).
    Param(ParamRole),
}

/// Attributes of `grad`: one vector-Jacobian product of a forward node.
///
/// Operands: the forward node, then the forward node's own operands (the
/// saved activations), then the gradient of the loss with respect to the
/// forward node's value (absent when the forward node is the loss). The
/// forward op is repeated here so that the typing rule sees it; the verifier
/// checks that it equals the forward node's op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grad {
    /// The forward node's op.
    pub of: Box<Op>,
    /// With respect to what.
    pub wrt: Wrt,
}

/// Attributes of `hardtanh`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardTanh {
    /// Lower clamp bound (default −1).
    pub min: f32,
    /// Upper clamp bound (default 1).
    pub max: f32,
}

/// Attributes of `maxpool` and `avgpool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pool {
    /// Window `(kh, kw)`.
    pub kernel: Pair,
    /// Stride `(sh, sw)`; defaults to the kernel.
    pub stride: Pair,
    /// Symmetric padding `(ph, pw)`, default 0, at most half the kernel.
    pub pad: Pair,
}

/// Attributes of `slice_channels`: the channels `start .. start + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SliceChannels {
    /// The first channel kept.
    pub start: usize,
    /// How many channels are kept (at least 1).
    pub count: usize,
}

/// Attributes of `shuffle_channels`: ShuffleNet's channel shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShuffleChannels {
    /// The number of groups `g`, a divisor of the channel count.
    pub groups: usize,
}

impl ShuffleChannels {
    /// The source channel of each output channel over `channels` channels:
    /// the channels viewed as `[g, C/g]`, transposed to `[C/g, g]`, so output
    /// channel `a·g + b` is input channel `b·(C/g) + a`.
    pub fn source_channels(self, channels: usize) -> Vec<usize> {
        let g = self.groups.max(1);
        let per = channels / g;
        (0..channels).map(|j| (j % g) * per + j / g).collect()
    }
}

/// An operation with its attributes. Operands are the node's incoming edges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A model input; its type is declared.
    Input,
    /// Real-valued 2-D convolution.
    Conv2d(Conv2d),
    /// Binary 2-D convolution: binary (sign of latent) weights, bit input.
    #[serde(rename = "bconv2d")]
    BConv2d(BConv2d),
    /// Real-valued fully connected layer.
    Dense(Dense),
    /// Binary fully connected layer: binary weights, bit input.
    #[serde(rename = "bdense")]
    BDense(BDense),
    /// `+1` if `x >= 0`, else `−1`; the only op that makes bits.
    Sign(Sign),
    /// Inference batch normalisation over the channel axis.
    #[serde(rename = "batchnorm")]
    BatchNorm(BatchNorm),
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x >= 0`, else `a_c·x`, with one learned slope per channel.
    #[serde(rename = "prelu")]
    PRelu,
    /// `x + b_c`, one learned shift per channel (ReActNet's learnable bias:
    /// RSign is `sign(shift(x))`, RPReLU `shift(prelu(shift(x)))`).
    Shift,
    /// `clamp(x, min, max)`.
    #[serde(rename = "hardtanh")]
    HardTanh(HardTanh),
    /// Max pooling (padding never wins).
    #[serde(rename = "maxpool")]
    MaxPool(Pool),
    /// Average pooling (padding counts as zeros in the divisor).
    #[serde(rename = "avgpool")]
    AvgPool(Pool),
    /// Mean over the spatial axes: `[C, H, W]` to `[C]`.
    #[serde(rename = "global_avgpool")]
    GlobalAvgPool,
    /// Reshape to one dimension, in C order.
    Flatten,
    /// Elementwise sum of two or more tensors of one shape.
    Add,
    /// Concatenation along the channel (first) axis.
    Concat,
    /// A contiguous range of channels.
    SliceChannels(SliceChannels),
    /// A permutation of the channels that interleaves `g` groups.
    ShuffleChannels(ShuffleChannels),
    /// Zeros of the operand's shape (the DARTS "none" op).
    Zero,
    /// The operand, unchanged.
    Identity,
    /// The DARTS mixed op: `Σ softmax(α)_i · x_i`.
    Choose,
    /// Per-channel comparison to bits: `+1` where `direction_c · x >= threshold_c`.
    Threshold,
    /// Per-channel multiply-add: `multiplier_c · x + bias_c`.
    Affine,
    /// Softmax cross-entropy of logits against target distributions, averaged
    /// over the batch (a training loss).
    CrossEntropy(CrossEntropy),
    /// The next value of a batchnorm's running statistic (training).
    RunningStat(RunningStat),
    /// A vector-Jacobian product of a forward node (training).
    Grad(Grad),
    /// `λ·Σ (W − α·sign(W))²` over a binary layer's latent weights (a
    /// training loss term).
    QuantizationLoss(QuantizationLoss),
    /// The distribution loss of Ding et al. 2019 on a pre-sign activation,
    /// over the batch (a training loss term).
    DistributionLoss(DistributionLoss),
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    /// Exactly this many.
    Exactly(usize),
    /// This many or more.
    AtLeast(usize),
}

impl Arity {
    /// Whether `n` operands are allowed.
    pub fn allows(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        match *self {
            Arity::Exactly(n) => write!(f, "{n} tensor operand{}", plural(n)),
            Arity::AtLeast(n) => write!(f, "at least {n} tensor operand{}", plural(n)),
        }
    }
}

/// The op name without attributes: what the text format calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// See [`Op::Input`].
    Input,
    /// See [`Op::Conv2d`].
    Conv2d,
    /// See [`Op::BConv2d`].
    BConv2d,
    /// See [`Op::Dense`].
    Dense,
    /// See [`Op::BDense`].
    BDense,
    /// See [`Op::Sign`].
    Sign,
    /// See [`Op::BatchNorm`].
    BatchNorm,
    /// See [`Op::Relu`].
    Relu,
    /// See [`Op::PRelu`].
    PRelu,
    /// See [`Op::Shift`].
    Shift,
    /// See [`Op::HardTanh`].
    HardTanh,
    /// See [`Op::MaxPool`].
    MaxPool,
    /// See [`Op::AvgPool`].
    AvgPool,
    /// See [`Op::GlobalAvgPool`].
    GlobalAvgPool,
    /// See [`Op::Flatten`].
    Flatten,
    /// See [`Op::Add`].
    Add,
    /// See [`Op::Concat`].
    Concat,
    /// See [`Op::SliceChannels`].
    SliceChannels,
    /// See [`Op::ShuffleChannels`].
    ShuffleChannels,
    /// See [`Op::Zero`].
    Zero,
    /// See [`Op::Identity`].
    Identity,
    /// See [`Op::Choose`].
    Choose,
    /// See [`Op::Threshold`].
    Threshold,
    /// See [`Op::Affine`].
    Affine,
    /// See [`Op::CrossEntropy`].
    CrossEntropy,
    /// See [`Op::RunningStat`].
    RunningStat,
    /// See [`Op::Grad`].
    Grad,
    /// See [`Op::QuantizationLoss`].
    QuantizationLoss,
    /// See [`Op::DistributionLoss`].
    DistributionLoss,
}

impl OpKind {
    /// Every op kind, in the order of `ir-spec/ops.md`.
    pub const ALL: [OpKind; 29] = [
        OpKind::Input,
        OpKind::Conv2d,
        OpKind::BConv2d,
        OpKind::Dense,
        OpKind::BDense,
        OpKind::Sign,
        OpKind::BatchNorm,
        OpKind::Relu,
        OpKind::PRelu,
        OpKind::Shift,
        OpKind::HardTanh,
        OpKind::MaxPool,
        OpKind::AvgPool,
        OpKind::GlobalAvgPool,
        OpKind::Flatten,
        OpKind::Add,
        OpKind::Concat,
        OpKind::SliceChannels,
        OpKind::ShuffleChannels,
        OpKind::Zero,
        OpKind::Identity,
        OpKind::Choose,
        OpKind::Threshold,
        OpKind::Affine,
        OpKind::CrossEntropy,
        OpKind::RunningStat,
        OpKind::Grad,
        OpKind::QuantizationLoss,
        OpKind::DistributionLoss,
    ];

    /// The name in the text format.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Input => "input",
            OpKind::Conv2d => "conv2d",
            OpKind::BConv2d => "bconv2d",
            OpKind::Dense => "dense",
            OpKind::BDense => "bdense",
            OpKind::Sign => "sign",
            OpKind::BatchNorm => "batchnorm",
            OpKind::Relu => "relu",
            OpKind::PRelu => "prelu",
            OpKind::Shift => "shift",
            OpKind::HardTanh => "hardtanh",
            OpKind::MaxPool => "maxpool",
            OpKind::AvgPool => "avgpool",
            OpKind::GlobalAvgPool => "global_avgpool",
            OpKind::Flatten => "flatten",
            OpKind::Add => "add",
            OpKind::Concat => "concat",
            OpKind::SliceChannels => "slice_channels",
            OpKind::ShuffleChannels => "shuffle_channels",
            OpKind::Zero => "zero",
            OpKind::Identity => "identity",
            OpKind::Choose => "choose",
            OpKind::Threshold => "threshold",
            OpKind::Affine => "affine",
            OpKind::CrossEntropy => "cross_entropy",
            OpKind::RunningStat => "running_stat",
            OpKind::Grad => "grad",
            OpKind::QuantizationLoss => "quantization_loss",
            OpKind::DistributionLoss => "distribution_loss",
        }
    }

    /// The kind called `name` in the text format, if any. `input` and `choose`
    /// have syntax of their own and are not callable.
    pub fn callable(name: &str) -> Option<OpKind> {
        OpKind::ALL
            .into_iter()
            .find(|k| k.name() == name && !matches!(k, OpKind::Input | OpKind::Choose))
    }

    /// How many tensor operands the op takes.
    pub fn arity(self) -> Arity {
        match self {
            OpKind::Input => Arity::Exactly(0),
            OpKind::Add => Arity::AtLeast(2),
            OpKind::Concat | OpKind::Choose => Arity::AtLeast(1),
            OpKind::CrossEntropy | OpKind::RunningStat | OpKind::QuantizationLoss => {
                Arity::Exactly(2)
            }
            OpKind::Grad => Arity::AtLeast(2),
            _ => Arity::Exactly(1),
        }
    }

    /// Whether the op computes with binary weights (a binary layer).
    pub fn is_binary_layer(self) -> bool {
        matches!(self, OpKind::BConv2d | OpKind::BDense)
    }

    /// Whether the op exists only in training graphs (`ir-spec/training.md`).
    pub fn is_training(self) -> bool {
        matches!(
            self,
            OpKind::CrossEntropy
                | OpKind::RunningStat
                | OpKind::Grad
                | OpKind::QuantizationLoss
                | OpKind::DistributionLoss
        )
    }

    /// Whether the op is a loss or a loss term: a scalar for the batch that
    /// the training loss sums, so a `grad` node of it takes no upstream
    /// gradient.
    pub fn is_loss(self) -> bool {
        matches!(
            self,
            OpKind::CrossEntropy | OpKind::QuantizationLoss | OpKind::DistributionLoss
        )
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Op {
    /// The op's kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Input => OpKind::Input,
            Op::Conv2d(_) => OpKind::Conv2d,
            Op::BConv2d(_) => OpKind::BConv2d,
            Op::Dense(_) => OpKind::Dense,
            Op::BDense(_) => OpKind::BDense,
            Op::Sign(_) => OpKind::Sign,
            Op::BatchNorm(_) => OpKind::BatchNorm,
            Op::Relu => OpKind::Relu,
            Op::PRelu => OpKind::PRelu,
            Op::Shift => OpKind::Shift,
            Op::HardTanh(_) => OpKind::HardTanh,
            Op::MaxPool(_) => OpKind::MaxPool,
            Op::AvgPool(_) => OpKind::AvgPool,
            Op::GlobalAvgPool => OpKind::GlobalAvgPool,
            Op::Flatten => OpKind::Flatten,
            Op::Add => OpKind::Add,
            Op::Concat => OpKind::Concat,
            Op::SliceChannels(_) => OpKind::SliceChannels,
            Op::ShuffleChannels(_) => OpKind::ShuffleChannels,
            Op::Zero => OpKind::Zero,
            Op::Identity => OpKind::Identity,
            Op::Choose => OpKind::Choose,
            Op::Threshold => OpKind::Threshold,
            Op::Affine => OpKind::Affine,
            Op::CrossEntropy(_) => OpKind::CrossEntropy,
            Op::RunningStat(_) => OpKind::RunningStat,
            Op::Grad(_) => OpKind::Grad,
            Op::QuantizationLoss(_) => OpKind::QuantizationLoss,
            Op::DistributionLoss(_) => OpKind::DistributionLoss,
        }
    }

    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// For the ops that only pick channels (`slice_channels`,
    /// `shuffle_channels`), the source channel of each output channel over an
    /// operand of `channels` channels: output channel `j` at every position is
    /// input channel `map[j]`. Every engine computes these ops, and their
    /// gradients (a scatter through the same map), from this one table.
    pub fn channel_sources(&self, channels: usize) -> Option<Vec<usize>> {
        match self {
            Op::SliceChannels(a) => Some((a.start..a.start + a.count).collect()),
            Op::ShuffleChannels(a) => Some(a.source_channels(channels)),
            _ => None,
        }
    }

    /// `sign` with the default gradient estimator.
    pub fn sign() -> Op {
        Op::Sign(Sign::default())
    }

    /// Whether the op belongs only to training graphs: a training op, or a
    /// batchnorm on batch statistics. Inference engines and passes refuse them.
    pub fn is_training(&self) -> bool {
        self.kind().is_training()
            || matches!(
                self,
                Op::BatchNorm(BatchNorm {
                    stats: Stats::Batch,
                    ..
                })
            )
    }

    /// Whether this is a layer with latent binary weights: `bconv2d` and
    /// `bdense` with `output=dot` and latent weights, `conv2d` and `dense`
    /// with `weights=binary`. These are the layers training binarizes (the
    /// clipped straight-through estimator), a quantization loss regularises
    /// and `projection=true` applies to.
    pub fn has_latent_binary_weights(&self) -> bool {
        let latent_dot =
            |output, weights| output == BinaryOutput::Dot && weights == WeightForm::Latent;
        match self {
            Op::BConv2d(a) => latent_dot(a.output, a.weights),
            Op::BDense(a) => latent_dot(a.output, a.weights),
            Op::Conv2d(a) => a.weights == WeightKind::Binary,
            Op::Dense(a) => a.weights == WeightKind::Binary,
            _ => false,
        }
    }

    /// Whether the layer binarizes its latent weights through PCNN's learned
    /// projection (`projection=true`): it computes with `α_o·sign(P_k·W_ok)`,
    /// `P` the parameter `NODE.projection`, shared by the output channels.
    pub fn projection(&self) -> bool {
        match self {
            Op::BConv2d(a) => a.projection,
            Op::BDense(a) => a.projection,
            Op::Conv2d(a) => a.projection,
            Op::Dense(a) => a.projection,
            _ => false,
        }
    }

    /// The shape of a projected layer's `NODE.projection` over `channels`
    /// input channels: its weight's shape without the output dimension,
    /// `[C/groups, kh, kw]` for convolutions and `[C]` for dense layers.
    pub fn projection_shape(&self, channels: usize) -> Option<Vec<usize>> {
        let conv = |g: &ConvGeometry| vec![channels / g.groups.max(1), g.kernel[0], g.kernel[1]];
        match self {
            Op::BConv2d(a) if a.projection => Some(conv(&a.geometry)),
            Op::Conv2d(a) if a.projection => Some(conv(&a.geometry)),
            Op::BDense(a) if a.projection => Some(vec![channels]),
            Op::Dense(a) if a.projection => Some(vec![channels]),
            _ => None,
        }
    }

    /// The shape of the trainable parameter `role` of this op applied to
    /// operands of types `inputs`, if it has one. Folded and packed binary
    /// layers have none: they are trained before folding.
    pub fn trainable_param(&self, inputs: &[&TensorType], role: ParamRole) -> Option<Vec<usize>> {
        let channels = inputs.first().and_then(|t| t.dims().first().copied())?;
        let conv_weight = |g: &ConvGeometry| {
            vec![
                g.out_channels,
                channels / g.groups.max(1),
                g.kernel[0],
                g.kernel[1],
            ]
        };
        let latent_dot = |output: BinaryOutput, weights: WeightForm| {
            output == BinaryOutput::Dot && weights == WeightForm::Latent
        };
        let learned = |scale: Scale, out: usize| (scale == Scale::Learned).then(|| vec![out]);
        if role == ParamRole::Projection {
            return match self {
                // The regularised layer's projection, as its weight below.
                Op::QuantizationLoss(q) => q.of.trainable_param(inputs.get(1..)?, role),
                _ if self.projection() => self.projection_shape(channels),
                _ => None,
            };
        }
        match (self, role) {
            (Op::Conv2d(a), ParamRole::Weight) => Some(conv_weight(&a.geometry)),
            (Op::Conv2d(a), ParamRole::Scale) => learned(a.scale, a.geometry.out_channels),
            (Op::Dense(a), ParamRole::Scale) => learned(a.scale, a.out_features),
            (Op::BConv2d(a), ParamRole::Scale) if latent_dot(a.output, a.weights) => {
                learned(a.scale, a.geometry.out_channels)
            }
            (Op::BDense(a), ParamRole::Scale) if latent_dot(a.output, a.weights) => {
                learned(a.scale, a.out_features)
            }
            (Op::Conv2d(a), ParamRole::Bias) if a.bias => Some(vec![a.geometry.out_channels]),
            (Op::BConv2d(a), ParamRole::Weight) if latent_dot(a.output, a.weights) => {
                Some(conv_weight(&a.geometry))
            }
            (Op::Dense(a), ParamRole::Weight) => Some(vec![a.out_features, channels]),
            (Op::Dense(a), ParamRole::Bias) if a.bias => Some(vec![a.out_features]),
            (Op::BDense(a), ParamRole::Weight) if latent_dot(a.output, a.weights) => {
                Some(vec![a.out_features, channels])
            }
            (Op::BatchNorm(_), ParamRole::Weight | ParamRole::Bias) => Some(vec![channels]),
            (Op::PRelu, ParamRole::Weight) => Some(vec![channels]),
            (Op::Shift, ParamRole::Bias) => Some(vec![channels]),
            (Op::Choose, ParamRole::Alpha) => Some(vec![inputs.len()]),
            // The regularised layer's weight (and learned scale): the term's operands are the
            // layer and the layer's operand.
            (Op::QuantizationLoss(q), ParamRole::Weight | ParamRole::Scale) => {
                q.of.trainable_param(inputs.get(1..)?, role)
            }
            _ => None,
        }
    }

    /// Whether a `grad` node can differentiate this op with respect to its
    /// operand `index`: every op of an unfolded model, except the target of a
    /// loss. Folded forms (`threshold`, `affine`, `output=` and
    /// `weights=packed` layers) are trained before folding.
    pub fn differentiable_operand(&self, index: usize) -> bool {
        match self {
            Op::Input | Op::Threshold | Op::Affine | Op::RunningStat(_) | Op::Grad(_) => false,
            Op::BConv2d(a) => a.output == BinaryOutput::Dot && a.weights == WeightForm::Latent,
            Op::BDense(a) => a.output == BinaryOutput::Dot && a.weights == WeightForm::Latent,
            Op::CrossEntropy(_) | Op::DistributionLoss(_) => index == 0,
            // A function of the layer's weights only: its gradient goes to
            // the weights (`wrt=weight`), not to the layer's value.
            Op::QuantizationLoss(_) => false,
            _ => true,
        }
    }
}

/// Why an op cannot be applied to its operands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// Wrong number of operands.
    #[error("`{op}` takes {expected}, found {found}")]
    Arity {
        /// The op.
        op: OpKind,
        /// What it takes.
        expected: Arity,
        /// How many it was given.
        found: usize,
    },
    /// A binary layer was given a real-valued input.
    #[error("`{op}` needs a bit input, found {found}; binarize it first: `{op}(sign(...), ...)`")]
    NeedsBits {
        /// The op.
        op: OpKind,
        /// The operand's type.
        found: TensorType,
    },
    /// An operand has the wrong rank.
    #[error("`{op}` expects {expected}, found {found}{hint}")]
    Rank {
        /// The op.
        op: OpKind,
        /// Describes the expected rank, e.g. "a [C, H, W] tensor".
        expected: &'static str,
        /// The operand's type.
        found: TensorType,
        /// Extra advice, empty or starting with "; ".
        hint: &'static str,
    },
    /// Operands that must agree in shape do not.
    #[error(
        "`{op}` operands must have the same {what}: operand {first} is {a}, operand {second} is {b}"
    )]
    Mismatch {
        /// The op.
        op: OpKind,
        /// "shape", or "shape except the channel axis".
        what: &'static str,
        /// Index of the first operand compared.
        first: usize,
        /// Its type.
        a: TensorType,
        /// Index of the odd operand.
        second: usize,
        /// Its type.
        b: TensorType,
    },
    /// An attribute is out of range or does not fit the operand's shape.
    #[error("`{op}`: {message}")]
    Attribute {
        /// The op.
        op: OpKind,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// A value reduced over the batch where a per-sample value is needed.
    #[error(
        "`{op}`: operand {operand} is {found}, a value for the whole batch; `{op}` needs a per-sample value"
    )]
    BatchOperand {
        /// The op.
        op: OpKind,
        /// Which operand.
        operand: usize,
        /// Its type.
        found: TensorType,
    },
    /// The result would be too large.
    #[error("`{op}`: the result {dims:?} has more than 2^32 elements per sample")]
    TooLarge {
        /// The op.
        op: OpKind,
        /// The offending dimensions.
        dims: Vec<usize>,
    },
}

impl TypeError {
    /// The operand the error is about, when it is about one operand.
    pub fn operand(&self) -> Option<usize> {
        match self {
            TypeError::NeedsBits { .. } | TypeError::Rank { .. } => Some(0),
            TypeError::Mismatch { second, .. } => Some(*second),
            TypeError::BatchOperand { operand, .. } => Some(*operand),
            _ => None,
        }
    }
}

/// One spatial output size of a window op, or an error naming the axis.
fn window_out(
    op: OpKind,
    axis: &str,
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Result<usize, TypeError> {
    let attr = |message: String| TypeError::Attribute { op, message };
    if kernel == 0 || stride == 0 || dilation == 0 {
        return Err(attr(format!(
            "kernel, stride and dilation must be at least 1 (found kernel {kernel}, stride {stride}, dilation {dilation} along {axis})"
        )));
    }
    let span = dilation
        .checked_mul(kernel - 1)
        .and_then(|s| s.checked_add(1))
        .ok_or_else(|| attr(format!("the kernel along {axis} is too large")))?;
    let padded = pad
        .checked_mul(2)
        .and_then(|p| p.checked_add(input))
        .ok_or_else(|| attr(format!("the padding along {axis} is too large")))?;
    if span > padded {
        return Err(attr(format!(
            "the window along {axis} spans {span} but the padded input has only {padded} (input {input}, pad {pad})"
        )));
    }
    Ok((padded - span) / stride + 1)
}

fn conv_out(op: OpKind, g: &ConvGeometry, input: &TensorType) -> Result<TensorType, TypeError> {
    let &[c, h, w] = input.dims() else {
        return Err(TypeError::Rank {
            op,
            expected: "a [C, H, W] tensor",
            found: input.clone(),
            hint: "",
        });
    };
    let attr = |message: String| TypeError::Attribute { op, message };
    if g.out_channels == 0 {
        return Err(attr("out_channels must be at least 1".into()));
    }
    if g.groups == 0 || c % g.groups != 0 || !g.out_channels.is_multiple_of(g.groups) {
        return Err(attr(format!(
            "groups={} must divide both the input channels ({c}) and out_channels ({})",
            g.groups, g.out_channels
        )));
    }
    let oh = window_out(
        op,
        "height",
        h,
        g.kernel[0],
        g.stride[0],
        g.pad[0],
        g.dilation[0],
    )?;
    let ow = window_out(
        op,
        "width",
        w,
        g.kernel[1],
        g.stride[1],
        g.pad[1],
        g.dilation[1],
    )?;
    Ok(TensorType::f32(vec![g.out_channels, oh, ow]))
}

fn pool_out(op: OpKind, p: &Pool, input: &TensorType) -> Result<Shape, TypeError> {
    let &[c, h, w] = input.dims() else {
        return Err(TypeError::Rank {
            op,
            expected: "a [C, H, W] tensor",
            found: input.clone(),
            hint: "",
        });
    };
    for (axis, k, pad) in [
        ("height", p.kernel[0], p.pad[0]),
        ("width", p.kernel[1], p.pad[1]),
    ] {
        if pad > k / 2 {
            return Err(TypeError::Attribute {
                op,
                message: format!(
                    "padding {pad} along {axis} is more than half the kernel ({k}); a window could lie wholly in the padding"
                ),
            });
        }
    }
    let oh = window_out(op, "height", h, p.kernel[0], p.stride[0], p.pad[0], 1)?;
    let ow = window_out(op, "width", w, p.kernel[1], p.stride[1], p.pad[1], 1)?;
    Ok(Shape(vec![c, oh, ow]))
}

fn dense_out(op: OpKind, out_features: usize, input: &TensorType) -> Result<TensorType, TypeError> {
    if input.dims().len() != 1 {
        return Err(TypeError::Rank {
            op,
            expected: "a rank-1 [K] tensor",
            found: input.clone(),
            hint: "; wrap it in `flatten(...)` or `global_avgpool(...)`",
        });
    }
    if out_features == 0 {
        return Err(TypeError::Attribute {
            op,
            message: "out_features must be at least 1".into(),
        });
    }
    Ok(TensorType::f32(vec![out_features]))
}

/// The result type of a binary layer with output form `output`.
fn binary_dtype(output: BinaryOutput) -> DType {
    match output {
        BinaryOutput::Dot | BinaryOutput::Affine => DType::F32,
        BinaryOutput::Threshold => DType::Bit,
    }
}

/// The XNOR-Net scale needs the latent weights and belongs to the `dot` form:
/// the passes fold it into the affine or threshold parameters.
fn binary_form(
    op: OpKind,
    scale: Scale,
    output: BinaryOutput,
    weights: WeightForm,
) -> Result<(), TypeError> {
    if scale.is_scaled() && output != BinaryOutput::Dot {
        return Err(TypeError::Attribute {
            op,
            message: format!(
                "`scale={}` needs `output=dot`; with `output={}` fold the scale into its parameters",
                scale.name(),
                output.name()
            ),
        });
    }
    match (scale, weights) {
        (Scale::Channel, WeightForm::Packed) => {
            return Err(TypeError::Attribute {
                op,
                message: "`scale=channel` needs the latent weights, not `weights=packed`".into(),
            });
        }
        // Packed layers come out of the passes, which fold every scale into
        // the epilogue first; one form per meaning keeps the engines simple.
        (Scale::Learned, WeightForm::Packed) => {
            return Err(TypeError::Attribute {
                op,
                message: "`scale=learned` with `weights=packed`: fold the scale into \
                          `output=affine` (its multiplier) before packing"
                    .into(),
            });
        }
        _ => {}
    }
    Ok(())
}

/// The XNOR-Net scale belongs to binary weights.
fn real_weights_form(op: OpKind, weights: WeightKind, scale: Scale) -> Result<(), TypeError> {
    if scale.is_scaled() && weights != WeightKind::Binary {
        return Err(TypeError::Attribute {
            op,
            message: format!("`scale={}` needs `weights=binary`", scale.name()),
        });
    }
    Ok(())
}

fn need_bits(op: OpKind, input: &TensorType) -> Result<(), TypeError> {
    if input.dtype == DType::Bit {
        Ok(())
    } else {
        Err(TypeError::NeedsBits {
            op,
            found: input.clone(),
        })
    }
}

fn need_channels(op: OpKind, input: &TensorType) -> Result<(), TypeError> {
    if input.dims().is_empty() {
        return Err(TypeError::Rank {
            op,
            expected: "a tensor with a channel axis",
            found: input.clone(),
            hint: "",
        });
    }
    Ok(())
}

fn all_same_shape(op: OpKind, inputs: &[&TensorType]) -> Result<(), TypeError> {
    let first = inputs[0];
    for (i, t) in inputs.iter().enumerate().skip(1) {
        if t.shape != first.shape {
            return Err(TypeError::Mismatch {
                op,
                what: "shape",
                first: 0,
                a: first.clone(),
                second: i,
                b: (*t).clone(),
            });
        }
    }
    Ok(())
}

impl Op {
    /// The type of the op's result, or why the operands do not fit.
    ///
    /// `Op::Input` has no operands and no rule: its type is declared.
    pub fn infer_type(&self, inputs: &[&TensorType]) -> Result<TensorType, TypeError> {
        let kind = self.kind();
        if !kind.arity().allows(inputs.len()) {
            return Err(TypeError::Arity {
                op: kind,
                expected: kind.arity(),
                found: inputs.len(),
            });
        }
        // Batch-extent values (losses, gradients of parameters) are results
        // only: nothing consumes them, except a `grad` node differentiating
        // the loss itself, and an `add` of batch values only (the total loss,
        // the sum of a parameter's gradients), which is a batch value too.
        if kind == OpKind::Add && inputs.iter().all(|t| t.extent == Extent::Batch) {
            all_same_shape(kind, inputs)?;
            return Ok(TensorType::batch_f32(inputs[0].dims().to_vec()));
        }
        let skip = usize::from(kind == OpKind::Grad);
        if let Some(operand) = inputs
            .iter()
            .skip(skip)
            .position(|t| t.extent == Extent::Batch)
            .map(|i| i + skip)
        {
            return Err(TypeError::BatchOperand {
                op: kind,
                operand,
                found: inputs[operand].clone(),
            });
        }
        if self.projection() && !self.has_latent_binary_weights() {
            return Err(TypeError::Attribute {
                op: kind,
                message: match self {
                    Op::Conv2d(_) | Op::Dense(_) => {
                        "`projection=true` needs `weights=binary`".into()
                    }
                    _ => "`projection=true` needs latent weights and `output=dot`: fold the \
                          projection (`fold_projection`) before the other passes"
                        .into(),
                },
            });
        }
        let ty = match self {
            Op::Input => {
                return Err(TypeError::Attribute {
                    op: kind,
                    message: "an input's type is declared, not inferred".into(),
                });
            }
            Op::Conv2d(a) => {
                real_weights_form(kind, a.weights, a.scale)?;
                conv_out(kind, &a.geometry, inputs[0])?
            }
            Op::BConv2d(a) => {
                need_bits(kind, inputs[0])?;
                binary_form(kind, a.scale, a.output, a.weights)?;
                let mut ty = conv_out(kind, &a.geometry, inputs[0])?;
                ty.dtype = binary_dtype(a.output);
                ty
            }
            Op::Dense(a) => {
                real_weights_form(kind, a.weights, a.scale)?;
                dense_out(kind, a.out_features, inputs[0])?
            }
            Op::BDense(a) => {
                need_bits(kind, inputs[0])?;
                binary_form(kind, a.scale, a.output, a.weights)?;
                let mut ty = dense_out(kind, a.out_features, inputs[0])?;
                ty.dtype = binary_dtype(a.output);
                ty
            }
            Op::Sign(_) => TensorType {
                dtype: DType::Bit,
                shape: inputs[0].shape.clone(),
                extent: Extent::Sample,
            },
            Op::CrossEntropy(a) => return cross_entropy_type(a, inputs),
            Op::RunningStat(a) => return running_stat_type(a, inputs),
            Op::Grad(g) => return grad_type(g, inputs),
            Op::QuantizationLoss(a) => return quantization_loss_type(a, inputs),
            Op::DistributionLoss(a) => {
                loss_weight(kind, a.weight)?;
                if inputs[0].dtype != DType::F32 {
                    return Err(attribute(
                        kind,
                        format!(
                            "the operand must be f32 (the input of a `sign`), found {}",
                            inputs[0]
                        ),
                    ));
                }
                need_channels(kind, inputs[0])?;
                TensorType::batch_f32(Vec::new())
            }
            Op::BatchNorm(a) => {
                need_channels(kind, inputs[0])?;
                if !(a.eps >= 0.0 && a.eps.is_finite()) {
                    return Err(TypeError::Attribute {
                        op: kind,
                        message: format!("eps must be a finite number >= 0, found {}", a.eps),
                    });
                }
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::PRelu | Op::Shift => {
                need_channels(kind, inputs[0])?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::HardTanh(a) => {
                if !(a.min.is_finite() && a.max.is_finite()) {
                    return Err(TypeError::Attribute {
                        op: kind,
                        message: format!("min ({}) and max ({}) must be finite", a.min, a.max),
                    });
                }
                if a.min > a.max {
                    return Err(TypeError::Attribute {
                        op: kind,
                        message: format!("min ({}) must not exceed max ({})", a.min, a.max),
                    });
                }
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::Threshold => {
                need_channels(kind, inputs[0])?;
                TensorType {
                    dtype: DType::Bit,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::Affine => {
                need_channels(kind, inputs[0])?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::Relu | Op::Zero => TensorType {
                dtype: DType::F32,
                shape: inputs[0].shape.clone(),
                extent: Extent::Sample,
            },
            Op::Identity => inputs[0].clone(),
            Op::MaxPool(p) => {
                // The max of ±1 values is ±1: pooling bits gives bits.
                TensorType {
                    dtype: inputs[0].dtype,
                    shape: pool_out(kind, p, inputs[0])?,
                    extent: Extent::Sample,
                }
            }
            Op::AvgPool(p) => TensorType {
                dtype: DType::F32,
                shape: pool_out(kind, p, inputs[0])?,
                extent: Extent::Sample,
            },
            Op::GlobalAvgPool => {
                let &[c, _, _] = inputs[0].dims() else {
                    return Err(TypeError::Rank {
                        op: kind,
                        expected: "a [C, H, W] tensor",
                        found: inputs[0].clone(),
                        hint: "",
                    });
                };
                TensorType::f32(vec![c])
            }
            Op::Flatten => TensorType::new(inputs[0].dtype, vec![inputs[0].shape.elements()]),
            Op::Add => {
                all_same_shape(kind, inputs)?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::Choose => {
                all_same_shape(kind, inputs)?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                    extent: Extent::Sample,
                }
            }
            Op::SliceChannels(a) => {
                need_channels(kind, inputs[0])?;
                let c = inputs[0].dims()[0];
                if a.count == 0 || a.start.checked_add(a.count).is_none_or(|end| end > c) {
                    return Err(attribute(
                        kind,
                        format!(
                            "channels {} .. {} are not within the operand's {c} channels",
                            a.start,
                            a.start.saturating_add(a.count)
                        ),
                    ));
                }
                let mut dims = inputs[0].dims().to_vec();
                dims[0] = a.count;
                TensorType::new(inputs[0].dtype, dims)
            }
            Op::ShuffleChannels(a) => {
                need_channels(kind, inputs[0])?;
                let c = inputs[0].dims()[0];
                if a.groups == 0 || c % a.groups != 0 {
                    return Err(attribute(
                        kind,
                        format!(
                            "{} groups do not divide the operand's {c} channels",
                            a.groups
                        ),
                    ));
                }
                TensorType::new(inputs[0].dtype, inputs[0].dims().to_vec())
            }
            Op::Concat => {
                let first = inputs[0];
                need_channels(kind, first)?;
                let mut channels = 0usize;
                for (i, t) in inputs.iter().enumerate() {
                    if t.dims().len() != first.dims().len() || t.dims()[1..] != first.dims()[1..] {
                        return Err(TypeError::Mismatch {
                            op: kind,
                            what: "shape except the channel axis",
                            first: 0,
                            a: first.clone(),
                            second: i,
                            b: (*t).clone(),
                        });
                    }
                    channels = channels.saturating_add(t.dims()[0]);
                }
                let dtype = if inputs.iter().all(|t| t.dtype == DType::Bit) {
                    DType::Bit
                } else {
                    DType::F32
                };
                let mut dims = first.dims().to_vec();
                dims[0] = channels;
                TensorType::new(dtype, dims)
            }
        };
        if ty.shape.checked_elements().is_none() {
            return Err(TypeError::TooLarge {
                op: kind,
                dims: ty.dims().to_vec(),
            });
        }
        Ok(ty)
    }
}

fn attribute(op: OpKind, message: String) -> TypeError {
    TypeError::Attribute { op, message }
}

/// `cross_entropy(logits, target)`: two f32 `[K]` vectors; one loss value
/// for the batch.
fn cross_entropy_type(a: &CrossEntropy, inputs: &[&TensorType]) -> Result<TensorType, TypeError> {
    let op = OpKind::CrossEntropy;
    if !(0.0..1.0).contains(&a.smoothing) {
        return Err(attribute(
            op,
            format!("smoothing must be in [0, 1), found {}", a.smoothing),
        ));
    }
    for (i, t) in inputs.iter().enumerate() {
        if t.dims().len() != 1 || t.dtype != DType::F32 {
            return Err(TypeError::Rank {
                op,
                expected: if i == 0 {
                    "f32 logits of rank 1, [K]"
                } else {
                    "an f32 target distribution of rank 1, [K]"
                },
                found: (*t).clone(),
                hint: "",
            });
        }
    }
    all_same_shape(op, inputs)?;
    Ok(TensorType::batch_f32(Vec::new()))
}

/// A loss term's weight must be a finite number `>= 0`.
fn loss_weight(op: OpKind, weight: f32) -> Result<(), TypeError> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(attribute(
            op,
            format!("weight must be a finite number >= 0, found {weight}"),
        ))
    }
}

/// `quantization_loss(layer, layer's operand)`: the layer must have latent
/// binary weights (`bconv2d`, `bdense` with `output=dot`, or `conv2d`/`dense`
/// with `weights=binary`), and its op, re-typed on the second operand, must
/// give the first operand's type. One loss value for the batch.
fn quantization_loss_type(
    a: &QuantizationLoss,
    inputs: &[&TensorType],
) -> Result<TensorType, TypeError> {
    let op = OpKind::QuantizationLoss;
    loss_weight(op, a.weight)?;
    if !a.of.has_latent_binary_weights() {
        return Err(attribute(
            op,
            format!(
                "needs a layer with latent binary weights (`bconv2d`, `bdense`, or `conv2d`/`dense` with `weights=binary`), found `{}`",
                a.of.name()
            ),
        ));
    }
    let value = a.of.infer_type(&inputs[1..])?;
    if value != *inputs[0] {
        return Err(attribute(
            op,
            format!(
                "the layer is {} but `{}` of its operand gives {value}",
                inputs[0],
                a.of.name()
            ),
        ));
    }
    Ok(TensorType::batch_f32(Vec::new()))
}

/// `running_stat(bn, x)`: the batchnorm node and its operand; `[C]` for the
/// batch. (The verifier checks that `bn` is a batchnorm of `x`.)
fn running_stat_type(a: &RunningStat, inputs: &[&TensorType]) -> Result<TensorType, TypeError> {
    let op = OpKind::RunningStat;
    if !(0.0..=1.0).contains(&a.momentum) {
        return Err(attribute(
            op,
            format!("momentum must be in [0, 1], found {}", a.momentum),
        ));
    }
    need_channels(op, inputs[1])?;
    Ok(TensorType::batch_f32(vec![inputs[1].dims()[0]]))
}

/// `grad(of, of's operands..., dy)`: re-types the forward op on its operands,
/// checks the upstream gradient, and gives the gradient's type: an operand's
/// shape per sample, or a parameter's shape for the batch.
fn grad_type(g: &Grad, inputs: &[&TensorType]) -> Result<TensorType, TypeError> {
    let op = OpKind::Grad;
    let has_dy = !g.of.kind().is_loss();
    let forward_operands = inputs.len() - 1 - usize::from(has_dy);
    if forward_operands == 0 || matches!(*g.of, Op::Input | Op::Grad(_) | Op::RunningStat(_)) {
        return Err(attribute(
            op,
            format!("`{}` nodes cannot be differentiated", g.of.name()),
        ));
    }
    let operands = &inputs[1..1 + forward_operands];
    let value = g.of.infer_type(operands)?;
    if value != *inputs[0] {
        return Err(attribute(
            op,
            format!(
                "the forward node is {} but `{}` of these operands gives {value}",
                inputs[0],
                g.of.name()
            ),
        ));
    }
    if has_dy {
        let dy = inputs[inputs.len() - 1];
        if dy.dtype != DType::F32 || dy.shape != value.shape {
            return Err(attribute(
                op,
                format!(
                    "the upstream gradient must be f32{} like the forward value, found {dy}",
                    value.shape
                ),
            ));
        }
    }
    match g.wrt {
        Wrt::Operand(i) => {
            if i >= forward_operands || !g.of.differentiable_operand(i) {
                return Err(attribute(
                    op,
                    format!(
                        "`{}` cannot be differentiated with respect to operand {i}",
                        g.of.name()
                    ),
                ));
            }
            Ok(TensorType::f32(operands[i].dims().to_vec()))
        }
        Wrt::Param(role) => match g.of.trainable_param(operands, role) {
            Some(shape) => Ok(TensorType::batch_f32(shape)),
            None => Err(attribute(
                op,
                format!(
                    "`{}` here has no trainable parameter `{}`",
                    g.of.name(),
                    role.name()
                ),
            )),
        },
    }
}
