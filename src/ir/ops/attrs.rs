//! The typed attributes of the ops: one struct per op family, with the
//! enums their fields take. Defaults are those of ir-spec/ops.md.

use serde::{Deserialize, Serialize};

use super::{Op, Pair};

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
