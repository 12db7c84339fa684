//! The typing rules: [`Op::infer_type`] gives the type of an op's result
//! from its operands' types, or the [`TypeError`] that says why they do not
//! fit (ir-spec/ops.md states each rule).

use super::*;

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
                if a.groups == 0 || !c.is_multiple_of(a.groups) {
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
