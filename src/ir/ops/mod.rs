//! The closed set of operations ([`Op`], [`OpKind`]), their typed attributes
//! (one struct per op family, in `attrs`) and their typing rules (in
//! `typing`: [`Op::infer_type`] and [`TypeError`]).
//!
//! Every op is one variant of [`Op`]; attributes live in a struct per op family.
//! Matches over `Op` are exhaustive throughout the crate, so adding an op fails
//! to compile until the parser, printer, verifier, interpreter and every later
//! stage handle it. `ir-spec/ops.md` gives the exact semantics of each op.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::types::{DType, Extent, Shape, TensorType};

mod attrs;
mod typing;
pub use attrs::*;
pub use typing::TypeError;

/// A `(height, width)` pair: kernel sizes, strides, paddings and dilations.
pub type Pair = [usize; 2];

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
