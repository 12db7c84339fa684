//! The closed set of operations, their typed attributes and their typing rules.
//!
//! Every op is one variant of [`Op`]; attributes live in a struct per op family.
//! Matches over `Op` are exhaustive throughout the crate, so adding an op fails
//! to compile until the parser, printer, verifier, interpreter and every later
//! stage handle it. `ir-spec/ops.md` gives the exact semantics of each op.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::types::{DType, Shape, TensorType};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// No scaling: the output is the ±1 dot product.
    None,
    /// XNOR-Net: output channel `o` is multiplied by `mean |W_o|` of its latent weights.
    Channel,
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

/// Attributes of `conv2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conv2d {
    /// Kernel geometry.
    pub geometry: ConvGeometry,
    /// Whether the layer adds a learned bias (default true).
    pub bias: bool,
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
}

impl BDense {
    /// A binary dense layer as models write it: latent weights, `output=dot`.
    pub fn new(out_features: usize, scale: Scale) -> BDense {
        BDense {
            out_features,
            scale,
            output: BinaryOutput::Dot,
            weights: WeightForm::Latent,
        }
    }
}

/// Attributes of `batchnorm`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Added to the variance before the square root (default 1e-5).
    pub eps: f32,
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
    Sign,
    /// Inference batch normalisation over the channel axis.
    #[serde(rename = "batchnorm")]
    BatchNorm(BatchNorm),
    /// `max(x, 0)`.
    Relu,
    /// `x` if `x >= 0`, else `a_c·x`, with one learned slope per channel.
    #[serde(rename = "prelu")]
    PRelu,
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
}

impl OpKind {
    /// Every op kind, in the order of `ir-spec/ops.md`.
    pub const ALL: [OpKind; 21] = [
        OpKind::Input,
        OpKind::Conv2d,
        OpKind::BConv2d,
        OpKind::Dense,
        OpKind::BDense,
        OpKind::Sign,
        OpKind::BatchNorm,
        OpKind::Relu,
        OpKind::PRelu,
        OpKind::HardTanh,
        OpKind::MaxPool,
        OpKind::AvgPool,
        OpKind::GlobalAvgPool,
        OpKind::Flatten,
        OpKind::Add,
        OpKind::Concat,
        OpKind::Zero,
        OpKind::Identity,
        OpKind::Choose,
        OpKind::Threshold,
        OpKind::Affine,
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
            OpKind::HardTanh => "hardtanh",
            OpKind::MaxPool => "maxpool",
            OpKind::AvgPool => "avgpool",
            OpKind::GlobalAvgPool => "global_avgpool",
            OpKind::Flatten => "flatten",
            OpKind::Add => "add",
            OpKind::Concat => "concat",
            OpKind::Zero => "zero",
            OpKind::Identity => "identity",
            OpKind::Choose => "choose",
            OpKind::Threshold => "threshold",
            OpKind::Affine => "affine",
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
            _ => Arity::Exactly(1),
        }
    }

    /// Whether the op computes with binary weights (a binary layer).
    pub fn is_binary_layer(self) -> bool {
        matches!(self, OpKind::BConv2d | OpKind::BDense)
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
            Op::Sign => OpKind::Sign,
            Op::BatchNorm(_) => OpKind::BatchNorm,
            Op::Relu => OpKind::Relu,
            Op::PRelu => OpKind::PRelu,
            Op::HardTanh(_) => OpKind::HardTanh,
            Op::MaxPool(_) => OpKind::MaxPool,
            Op::AvgPool(_) => OpKind::AvgPool,
            Op::GlobalAvgPool => OpKind::GlobalAvgPool,
            Op::Flatten => OpKind::Flatten,
            Op::Add => OpKind::Add,
            Op::Concat => OpKind::Concat,
            Op::Zero => OpKind::Zero,
            Op::Identity => OpKind::Identity,
            Op::Choose => OpKind::Choose,
            Op::Threshold => OpKind::Threshold,
            Op::Affine => OpKind::Affine,
        }
    }

    /// The op's name in the text format.
    pub fn name(&self) -> &'static str {
        self.kind().name()
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
    if scale == Scale::Channel && output != BinaryOutput::Dot {
        return Err(TypeError::Attribute {
            op,
            message: format!(
                "`scale=channel` needs `output=dot`; with `output={}` fold the scale into its parameters",
                output.name()
            ),
        });
    }
    if scale == Scale::Channel && weights == WeightForm::Packed {
        return Err(TypeError::Attribute {
            op,
            message: "`scale=channel` needs the latent weights, not `weights=packed`".into(),
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
        let ty = match self {
            Op::Input => {
                return Err(TypeError::Attribute {
                    op: kind,
                    message: "an input's type is declared, not inferred".into(),
                });
            }
            Op::Conv2d(a) => conv_out(kind, &a.geometry, inputs[0])?,
            Op::BConv2d(a) => {
                need_bits(kind, inputs[0])?;
                binary_form(kind, a.scale, a.output, a.weights)?;
                let mut ty = conv_out(kind, &a.geometry, inputs[0])?;
                ty.dtype = binary_dtype(a.output);
                ty
            }
            Op::Dense(a) => dense_out(kind, a.out_features, inputs[0])?,
            Op::BDense(a) => {
                need_bits(kind, inputs[0])?;
                binary_form(kind, a.scale, a.output, a.weights)?;
                let mut ty = dense_out(kind, a.out_features, inputs[0])?;
                ty.dtype = binary_dtype(a.output);
                ty
            }
            Op::Sign => TensorType {
                dtype: DType::Bit,
                shape: inputs[0].shape.clone(),
            },
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
                }
            }
            Op::PRelu => {
                need_channels(kind, inputs[0])?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
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
                }
            }
            Op::Threshold => {
                need_channels(kind, inputs[0])?;
                TensorType {
                    dtype: DType::Bit,
                    shape: inputs[0].shape.clone(),
                }
            }
            Op::Affine => {
                need_channels(kind, inputs[0])?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                }
            }
            Op::Relu | Op::Zero => TensorType {
                dtype: DType::F32,
                shape: inputs[0].shape.clone(),
            },
            Op::Identity => inputs[0].clone(),
            Op::MaxPool(p) => {
                // The max of ±1 values is ±1: pooling bits gives bits.
                TensorType {
                    dtype: inputs[0].dtype,
                    shape: pool_out(kind, p, inputs[0])?,
                }
            }
            Op::AvgPool(p) => TensorType {
                dtype: DType::F32,
                shape: pool_out(kind, p, inputs[0])?,
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
                }
            }
            Op::Choose => {
                all_same_shape(kind, inputs)?;
                TensorType {
                    dtype: DType::F32,
                    shape: inputs[0].shape.clone(),
                }
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
