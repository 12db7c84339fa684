//! The layers: convolutions, dense layers and their binary forms, the XNOR
//! scale and the folded epilogues (`output=threshold|affine`).

use std::borrow::Cow;

use super::elementwise::{add_per_channel, map_per_channel, mul_per_channel};
use super::{InterpError, param};
use crate::ir::graph::Node;
use crate::ir::ops::{
    BConv2d, BinaryOutput, Conv2d, ConvGeometry, Dense, Op, PadValue, Scale, WeightForm, WeightKind,
};
use crate::ir::params::{Params, Tensor};

/// `[O, C/G, kh, kw]`: the weight shape of a convolution over `c` channels.
pub(super) fn conv_weight_shape(g: &ConvGeometry, c: usize) -> [usize; 4] {
    [g.out_channels, c / g.groups, g.kernel[0], g.kernel[1]]
}

/// The dims of a rank-4 runtime tensor `[N, C, H, W]`. Only called on
/// operands of ops whose typing rule requires `[C, H, W]` (checked by `verify`).
pub(super) fn dims4(t: &Tensor) -> [usize; 4] {
    t.shape
        .as_slice()
        .try_into()
        .expect("verified: the operand is [C, H, W]")
}

/// One spatial output size of a window op: `(H + 2p − d·(k−1) − 1)/s + 1`.
/// The verifier checked that the window fits, so nothing underflows.
pub(super) fn out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> usize {
    (input + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1
}

/// `sign(x) = +1` if `x >= 0`, else `−1`: so `sign(0) = sign(−0) = +1`, and
/// `sign(NaN) = −1` (NaN is not `>= 0`).
pub(super) fn sign_of(x: f32) -> f32 {
    if x >= 0.0 { 1.0 } else { -1.0 }
}

/// XNOR-Net channel scales: `α_o = (Σ_k |w[o, k]|) / K` over the `K` latent
/// weights of output `o` (`w` is `[O, K]` in C order), summed in f32 in order.
pub fn channel_scales(w: &[f32], out: usize) -> Vec<f32> {
    let k = w.len() / out;
    (0..out)
        .map(|o| {
            let sum: f32 = w[o * k..(o + 1) * k].iter().map(|v| v.abs()).sum();
            sum / k as f32
        })
        .collect()
}

/// The per-channel factor `α` of a layer's `scale=`: none, `mean|W_o|` of
/// the latent weights (`scale=channel`), or the layer's own parameter
/// `NODE.scale` (`scale=learned`), which `learned` fetches (so every engine
/// reports a missing parameter its own way). `w` is `[O, …]`.
pub fn scale_factors<'a, E>(
    scale: Scale,
    w: &[f32],
    out: usize,
    learned: impl FnOnce() -> Result<&'a [f32], E>,
) -> Result<Option<Vec<f32>>, E> {
    Ok(match scale {
        Scale::None => None,
        Scale::Channel => Some(channel_scales(w, out)),
        Scale::Learned => Some(learned()?.to_vec()),
    })
}

/// [`scale_factors`] with the interpreter's parameter lookup.
pub(crate) fn layer_alpha(
    params: &Params,
    node: &str,
    scale: Scale,
    w: &[f32],
    out: usize,
) -> Result<Option<Vec<f32>>, InterpError> {
    scale_factors(scale, w, out, || {
        param(params, &format!("{node}.scale"), &[out])
    })
}

/// The values whose signs a layer with latent binary weights computes with:
/// the latent weights `W` (`[O, K]` in C order) themselves, or with
/// `projection=true` PCNN's projected `V_ok = P_k·W_ok` (`P` is `[K]`,
/// shared by the output channels). The scale `α` still comes from `W`.
pub fn projected<'w>(w: &'w [f32], projection: Option<&[f32]>) -> Cow<'w, [f32]> {
    match projection {
        None => Cow::Borrowed(w),
        Some(p) => {
            let k = p.len().max(1);
            Cow::Owned(w.iter().enumerate().map(|(i, &v)| p[i % k] * v).collect())
        }
    }
}

/// A layer's `NODE.projection` (`[K]`, `K` the weights per output channel)
/// with `projection=true`, else `None`.
pub(crate) fn layer_projection<'p>(
    params: &'p Params,
    node: &str,
    op: &Op,
    channels: usize,
) -> Result<Option<&'p [f32]>, InterpError> {
    match op.projection_shape(channels) {
        Some(shape) => Ok(Some(param(params, &format!("{node}.projection"), &shape)?)),
        None => Ok(None),
    }
}

/// The weights a real-valued layer computes with: `W` itself, or for
/// `weights=binary` `α_o·sign(W)` (`α` from [`scale_factors`], 1 without a
/// scale). `α·(±1)` is exact, so every engine that multiplies by these
/// values computes the same products. `w` is `[O, …]`.
pub fn layer_weights<'w>(
    kind: WeightKind,
    alpha: Option<&[f32]>,
    w: &'w [f32],
    out: usize,
) -> Cow<'w, [f32]> {
    match kind {
        WeightKind::Real => Cow::Borrowed(w),
        WeightKind::Binary => {
            let k = w.len() / out.max(1);
            let alpha_of = |i: usize| alpha.map_or(1.0, |a| a[i / k.max(1)]);
            Cow::Owned(
                w.iter()
                    .enumerate()
                    .map(|(i, &v)| alpha_of(i) * sign_of(v))
                    .collect(),
            )
        }
    }
}

/// `y[j] += a · x[j·stride]` for every `j < y.len()`.
pub(super) fn axpy(y: &mut [f32], a: f32, x: &[f32], stride: usize) {
    if stride == 1 {
        for (yj, &xj) in y.iter_mut().zip(x) {
            *yj += a * xj;
        }
    } else {
        for (yj, &xj) in y.iter_mut().zip(x.iter().step_by(stride)) {
            *yj += a * xj;
        }
    }
}

/// The convolution sum shared by `conv2d` and `bconv2d`:
///
/// `y[n,o,i,j] = Σ_{c∈group(o), u<kh, v<kw} w[o, c−c0, u, v] · xpad[n, c, i·sh + u·dh, j·sw + v·dw]`
///
/// where `xpad` is `x` with `ph` rows and `pw` columns of `pad_value` on each
/// side, and output channel `o` is in group `g = o / (O/G)`, which reads the
/// input channels `c0 = g·C/G .. (g+1)·C/G`. `w` is `[O, C/G, kh, kw]`.
pub(super) fn convolve(x: &Tensor, g: &ConvGeometry, w: &[f32], pad_value: f32) -> Tensor {
    let [n, c, h, wd] = dims4(x);
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad;
    let [dh, dw] = g.dilation;
    let out = g.out_channels;
    let oh = out_size(h, kh, sh, ph, dh);
    let ow = out_size(wd, kw, sw, pw, dw);
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let c_per_group = c / g.groups;
    let o_per_group = out / g.groups;

    let mut y = vec![0.0f32; n * out * oh * ow];
    // One padded sample; the border keeps `pad_value`, the interior is
    // overwritten for each sample. (`evaluate` checked that its size fits.)
    let mut xpad = vec![pad_value; c * hp * wp];
    for s in 0..n {
        let sample = &x.data[s * c * h * wd..][..c * h * wd];
        copy_into_padded(&mut xpad, sample, [c, h, wd], g.pad);
        for o in 0..out {
            let c0 = (o / o_per_group) * c_per_group;
            let yo = &mut y[(s * out + o) * oh * ow..][..oh * ow];
            for cl in 0..c_per_group {
                let xc = &xpad[(c0 + cl) * hp * wp..][..hp * wp];
                for u in 0..kh {
                    for v in 0..kw {
                        let wv = w[((o * c_per_group + cl) * kh + u) * kw + v];
                        for i in 0..oh {
                            // Row i·sh + u·dh of xpad, from column v·dw; the
                            // output size formula keeps every read in bounds.
                            let xrow = &xc[(i * sh + u * dh) * wp + v * dw..];
                            axpy(&mut yo[i * ow..][..ow], wv, xrow, sw);
                        }
                    }
                }
            }
        }
    }
    Tensor {
        shape: vec![n, out, oh, ow],
        data: y,
    }
}

/// Copies one `[C, H, W]` sample into the interior of `xpad`, the sample
/// with `ph` rows and `pw` columns of border on each side; the border is left
/// as it is.
pub(super) fn copy_into_padded(
    xpad: &mut [f32],
    sample: &[f32],
    [c, h, w]: [usize; 3],
    [ph, pw]: [usize; 2],
) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    for ci in 0..c {
        for r in 0..h {
            let src = &sample[(ci * h + r) * w..][..w];
            xpad[(ci * hp + r + ph) * wp + pw..][..w].copy_from_slice(src);
        }
    }
}

/// The inverse of [`copy_into_padded`]: the interior of `xpad` into `sample`.
pub(super) fn copy_from_padded(
    sample: &mut [f32],
    xpad: &[f32],
    [c, h, w]: [usize; 3],
    [ph, pw]: [usize; 2],
) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    for ci in 0..c {
        for r in 0..h {
            let src = &xpad[(ci * hp + r + ph) * wp + pw..][..w];
            sample[(ci * h + r) * w..][..w].copy_from_slice(src);
        }
    }
}

/// `conv2d`: `y[n,o,i,j] = bias[o] + Σ_{c,u,v} W[o, c−c0, u, v] · xpad[n, c, i·sh + u·dh − ph, j·sw + v·dw − pw]`
/// (see [`convolve`]), zero padding; the bias only if `attrs.bias`.
pub(super) fn conv2d(x: &Tensor, a: &Conv2d, w: &[f32], bias: Option<&[f32]>) -> Tensor {
    let mut y = convolve(x, &a.geometry, w, 0.0);
    if let Some(b) = bias {
        add_per_channel(&mut y, b);
    }
    y
}

/// `bconv2d`'s ±1 dot products: the convolution sum of the ±1 weights
/// `signs` over a ±1 input, padded positions holding 0 (`PadValue::Zero`) or
/// +1 (`PadValue::One`); no bias. Every value is an exact integer.
pub(super) fn bconv2d(x: &Tensor, a: &BConv2d, signs: &[f32]) -> Tensor {
    let pad_value = match a.pad_value {
        PadValue::Zero => 0.0,
        PadValue::One => 1.0,
    };
    convolve(x, &a.geometry, signs, pad_value)
}

/// A binary layer's weights as ±1.0 in logical order: the signs of the latent
/// weights, or the unpacked bits of packed ones.
pub(super) fn binary_weights(
    params: &Params,
    node: &str,
    form: WeightForm,
    shape: &[usize],
    projection: Option<&[f32]>,
) -> Result<Vec<f32>, InterpError> {
    let name = format!("{node}.weight");
    match form {
        WeightForm::Latent => Ok(projected(param(params, &name, shape)?, projection)
            .iter()
            .map(|&v| sign_of(v))
            .collect()),
        WeightForm::Packed => {
            let bits = params
                .packed
                .get(&name)
                .ok_or_else(|| InterpError::MissingParam {
                    name: name.clone(),
                    expected: shape.to_vec(),
                })?;
            if bits.shape != shape {
                return Err(InterpError::ParamShape {
                    name,
                    expected: shape.to_vec(),
                    found: bits.shape.clone(),
                });
            }
            bits.signs().ok_or(InterpError::ParamData {
                name,
                shape: bits.shape.clone(),
                len: bits.words.len(),
            })
        }
    }
}

/// A binary layer's output from its dot products `dot` (`[N, O, ...]`):
/// `output=dot` scales by `α_o` of `scale=` ([`scale_factors`]);
/// `output=affine` computes `multiplier_o · dot + bias_o`; `output=threshold`
/// gives `+1` where `direction_o · dot >= threshold_o`, else `−1`.
pub(super) fn binary_output(
    params: &Params,
    node: &Node,
    output: BinaryOutput,
    scale: Scale,
    mut dot: Tensor,
    weight_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let p =
        |suffix: &str, shape: &[usize]| param(params, &format!("{}.{suffix}", node.name), shape);
    let out = [weight_shape[0]];
    Ok(match output {
        BinaryOutput::Dot => {
            if scale.is_scaled() {
                let w = p("weight", weight_shape)?;
                if let Some(alpha) = layer_alpha(params, &node.name, scale, w, out[0])? {
                    mul_per_channel(&mut dot, &alpha);
                }
            }
            dot
        }
        BinaryOutput::Affine => affine(&dot, p("multiplier", &out)?, p("bias", &out)?),
        BinaryOutput::Threshold => threshold(
            &dot,
            p("threshold", &out)?,
            direction(p("direction", &out)?, &node.name)?,
        ),
    })
}

/// Checks that every direction is ±1.
pub(super) fn direction<'p>(d: &'p [f32], node: &str) -> Result<&'p [f32], InterpError> {
    match d.iter().position(|&v| v != 1.0 && v != -1.0) {
        None => Ok(d),
        Some(c) => Err(InterpError::BadDirection {
            name: format!("{node}.direction"),
            channel: c,
            value: d[c],
        }),
    }
}

/// `threshold`: `+1` where `direction_c · x >= threshold_c`, else `−1`, per
/// channel `c` (the first per-sample axis).
pub(super) fn threshold(x: &Tensor, threshold: &[f32], direction: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| threshold_value(v, threshold[c], direction[c]))
}

/// `affine`: `multiplier_c · x + bias_c` per channel `c`.
pub(super) fn affine(x: &Tensor, multiplier: &[f32], bias: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| affine_value(v, multiplier[c], bias[c]))
}

/// One value of `threshold`. `direction · x` is exact (a sign flip), so the
/// comparison is exact too.
pub fn threshold_value(x: f32, threshold: f32, direction: f32) -> f32 {
    if direction * x >= threshold {
        1.0
    } else {
        -1.0
    }
}

/// One value of `affine`: `multiplier · x + bias`, rounded twice (no fused
/// multiply-add), as every engine must compute it to match.
pub fn affine_value(x: f32, multiplier: f32, bias: f32) -> f32 {
    multiplier * x + bias
}

/// `y[n,o] = Σ_k w[o,k] · x[n,k]` for `w` `[O, K]` and `x` `[N, K]`.
pub(super) fn matvec(x: &Tensor, w: &[f32], out: usize) -> Tensor {
    let n = x.shape[0];
    let k = x.shape[1];
    let mut y = vec![0.0f32; n * out];
    for s in 0..n {
        let xs = &x.data[s * k..][..k];
        for o in 0..out {
            let wo = &w[o * k..][..k];
            let mut acc = 0.0f32;
            for (&wk, &xk) in wo.iter().zip(xs) {
                acc += wk * xk;
            }
            y[s * out + o] = acc;
        }
    }
    Tensor {
        shape: vec![n, out],
        data: y,
    }
}

/// `dense`: `y[n,o] = bias[o] + Σ_k W[o,k] · x[n,k]`, `W` `[O, K]`; the bias
/// only if `attrs.bias`.
pub(super) fn dense(x: &Tensor, a: &Dense, w: &[f32], bias: Option<&[f32]>) -> Tensor {
    let mut y = matvec(x, w, a.out_features);
    if let Some(b) = bias {
        add_per_channel(&mut y, b);
    }
    y
}
