//! Training-mode evaluation: batchnorm on batch statistics, the loss, the
//! running-statistic updates, and one vector-Jacobian product per forward op
//! for `grad` nodes (`ir-spec/training.md` gives each rule).
//!
//! Like the rest of the interpreter this is the oracle, so every rule is the
//! textbook formula written out as loops. Reductions over the batch (weight
//! gradients, batch statistics, the loss) accumulate in f64 and round once:
//! the oracle should be closer to the exact value than any engine tested
//! against it, whatever order that engine sums in.

use super::loss_terms::LatentBinary;
use super::{
    InterpError, batchnorm_std, batchnorm_with_std, conv_weight_shape, copy_from_padded,
    copy_into_padded, dims4, layer_alpha, layer_projection, layer_weights, out_size, param,
    projected,
};
use crate::ir::ops::{
    BatchNorm, Conv2d, ConvGeometry, CrossEntropy, Dense, Grad, Op, PadValue, ParamRole, Pool,
    RunningStat, SignGrad, Statistic, Stats, WeightKind, Wrt,
};
use crate::ir::params::{Params, Tensor};

/// SwishSign's β (BNN+, larq's default).
const SWISH_BETA: f32 = 5.0;

/// `M = N·H·W…`: how many values each channel of `x` (`[N, C, …]`) has.
fn per_channel_count(x: &Tensor) -> usize {
    x.shape[0] * x.shape[2..].iter().product::<usize>()
}

/// Visits every element of `x` (`[N, C, …]`) as `(channel, flat index)`.
fn for_each_channel(x: &Tensor, mut f: impl FnMut(usize, usize)) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    for s in 0..n {
        for ch in 0..c {
            let base = (s * c + ch) * inner;
            for i in base..base + inner {
                f(ch, i);
            }
        }
    }
}

/// The batch mean and biased variance of every channel of `x`, in f64.
fn batch_moments(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let c = x.shape[1];
    let m = per_channel_count(x) as f64;
    let mut sum = vec![0.0f64; c];
    for_each_channel(x, |ch, i| sum[ch] += x.data[i] as f64);
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let mut sq = vec![0.0f64; c];
    for_each_channel(x, |ch, i| {
        let d = x.data[i] as f64 - mean[ch];
        sq[ch] += d * d;
    });
    let var = sq.iter().map(|s| s / m).collect();
    (mean, var)
}

/// The per-channel mean and divisor `sqrt(σ² + eps)` a batchnorm normalises
/// with: its running statistics, or the batch's (biased variance).
fn normalisation(
    params: &Params,
    node: &str,
    a: &BatchNorm,
    x: &Tensor,
) -> Result<(Vec<f32>, Vec<f32>), InterpError> {
    let c = [x.shape[1]];
    Ok(match a.stats {
        Stats::Running => {
            let mean = param(params, &format!("{node}.running_mean"), &c)?.to_vec();
            let var = param(params, &format!("{node}.running_var"), &c)?;
            let std = var.iter().map(|&v| batchnorm_std(v, a.eps)).collect();
            (mean, std)
        }
        Stats::Batch => {
            let (mean, var) = batch_moments(x);
            let std = var
                .iter()
                .map(|&v| batchnorm_std(v as f32, a.eps))
                .collect();
            (mean.iter().map(|&m| m as f32).collect(), std)
        }
    })
}

/// `batchnorm(x, stats=batch)`: `γ_c · (x − μ_c) / sqrt(σ²_c + eps) + β_c`
/// with `μ_c` and the biased `σ²_c` of the batch, over the batch and spatial
/// axes.
pub(super) fn batchnorm_batch(
    params: &Params,
    node: &str,
    a: &BatchNorm,
    x: &Tensor,
) -> Result<Tensor, InterpError> {
    let c = [x.shape[1]];
    let gamma = param(params, &format!("{node}.weight"), &c)?;
    let beta = param(params, &format!("{node}.bias"), &c)?;
    let (mean, std) = normalisation(params, node, a, x)?;
    let mut y = x.clone();
    for_each_channel(x, |ch, i| {
        y.data[i] = batchnorm_with_std(x.data[i], gamma[ch], beta[ch], mean[ch], std[ch]);
    });
    Ok(y)
}

/// `running_stat`: `(1 − m)·old + m·batch`, the batch statistic being the
/// mean, or the unbiased variance `σ²·M/(M − 1)` (the biased one when
/// `M = 1`), as PyTorch updates `running_mean` and `running_var`.
pub(super) fn running_stat(
    params: &Params,
    bn: &str,
    a: &RunningStat,
    x: &Tensor,
) -> Result<Tensor, InterpError> {
    let c = x.shape[1];
    let old = param(params, &format!("{bn}.{}", a.stat.param()), &[c])?;
    let (mean, var) = batch_moments(x);
    let m = per_channel_count(x) as f64;
    let batch: Vec<f64> = match a.stat {
        Statistic::Mean => mean,
        Statistic::Var if m > 1.0 => var.iter().map(|v| v * m / (m - 1.0)).collect(),
        Statistic::Var => var,
    };
    let momentum = a.momentum as f64;
    let data = old
        .iter()
        .zip(&batch)
        .map(|(&o, &b)| ((1.0 - momentum) * o as f64 + momentum * b) as f32)
        .collect();
    Ok(Tensor {
        shape: vec![c],
        data,
    })
}

/// The target `t` with label smoothing: `(1 − ε)·t + ε/K`.
fn smoothed(t: &[f32], smoothing: f32) -> Vec<f64> {
    let k = t.len() as f64;
    let e = smoothing as f64;
    t.iter().map(|&v| (1.0 - e) * v as f64 + e / k).collect()
}

/// `log Σ_k exp(z_k)`, shifted by the max for stability.
fn log_sum_exp(z: &[f32]) -> f64 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// `cross_entropy`: `(1/N) Σ_n −Σ_k t'_nk · log softmax(z_n)_k`, with `t'`
/// the smoothed target. A scalar for the batch.
pub(super) fn cross_entropy(z: &Tensor, t: &Tensor, a: &CrossEntropy) -> Tensor {
    let (n, k) = (z.shape[0], z.shape[1]);
    let mut total = 0.0f64;
    for s in 0..n {
        let zs = &z.data[s * k..][..k];
        let ts = smoothed(&t.data[s * k..][..k], a.smoothing);
        let lse = log_sum_exp(zs);
        total -= zs
            .iter()
            .zip(&ts)
            .map(|(&zv, &tv)| tv * (zv as f64 - lse))
            .sum::<f64>();
    }
    Tensor {
        shape: Vec::new(),
        data: vec![(total / n.max(1) as f64) as f32],
    }
}

/// Evaluates a `grad` node. `x` holds the forward node's value, the forward
/// node's operands, and (unless the forward node is the loss) the upstream
/// gradient `dy`; `of` is the forward node's name, under which its
/// parameters are stored.
pub(super) fn grad(
    params: &Params,
    of: &str,
    g: &Grad,
    x: &[&Tensor],
) -> Result<Tensor, InterpError> {
    let p = |suffix: &str, shape: &[usize]| param(params, &format!("{of}.{suffix}"), shape);
    let forward = &x[1..x.len() - usize::from(!g.of.kind().is_loss())];
    let dy = x[x.len() - 1];
    let channels = forward[0].shape.get(1).copied().unwrap_or(0);
    Ok(match (&*g.of, g.wrt) {
        (Op::CrossEntropy(a), Wrt::Operand(0)) => cross_entropy_grad(forward[0], forward[1], a),
        (Op::QuantizationLoss(a), Wrt::Param(ParamRole::Weight)) => {
            let channels = forward[1].shape.get(1).copied().unwrap_or(0);
            super::loss_terms::quantization_loss_grad(params, of, a, channels)?
        }
        (Op::QuantizationLoss(a), Wrt::Param(ParamRole::Scale)) => {
            let channels = forward[1].shape.get(1).copied().unwrap_or(0);
            super::loss_terms::quantization_loss_scale_grad(params, of, a, channels)?
        }
        (Op::QuantizationLoss(a), Wrt::Param(ParamRole::Projection)) => {
            let channels = forward[1].shape.get(1).copied().unwrap_or(0);
            super::loss_terms::quantization_loss_projection_grad(params, of, a, channels)?
        }
        (Op::DistributionLoss(a), Wrt::Operand(0)) => {
            super::loss_terms::distribution_loss_grad(forward[0], a)
        }

        (Op::Conv2d(a), Wrt::Operand(0)) => {
            let w = p("weight", &conv_weight_shape(&a.geometry, channels))?;
            let out = a.geometry.out_channels;
            let alpha = layer_alpha(params, of, a.scale, w, out)?;
            let v = projected(w, layer_projection(params, of, &g.of, channels)?);
            let w = layer_weights(a.weights, alpha.as_deref(), &v, out);
            convolve_transpose(dy, &a.geometry, &w, dims4(forward[0]))
        }
        (Op::Conv2d(a), Wrt::Param(ParamRole::Weight)) if a.weights == WeightKind::Real => {
            conv_weight_grad(forward[0], dy, &a.geometry, 0.0)
        }
        (Op::Dense(a), Wrt::Param(ParamRole::Weight)) if a.weights == WeightKind::Real => {
            outer_sum(dy, forward[0])
        }
        (Op::Conv2d(_) | Op::BConv2d(_) | Op::Dense(_) | Op::BDense(_), Wrt::Param(role))
            if matches!(role, ParamRole::Weight | ParamRole::Projection) =>
        {
            let latent = LatentBinary::of(params, of, &g.of, channels, || {
                format!("`{}` has no latent binary weights", g.of.name())
            })?;
            let sg = latent.sign_grad(&g.of, forward[0], dy)?;
            match role {
                ParamRole::Weight => latent.weight_ste(sg),
                _ => latent.projection_ste(&sg),
            }
        }
        (
            Op::Conv2d(_) | Op::BConv2d(_) | Op::Dense(_) | Op::BDense(_),
            Wrt::Param(ParamRole::Scale),
        ) => {
            let latent = LatentBinary::of(params, of, &g.of, channels, || {
                format!("`{}` has no latent binary weights", g.of.name())
            })?;
            channel_dot(dy, &latent.unscaled_dot(&g.of, forward[0]))
        }
        (Op::Conv2d(_), Wrt::Param(ParamRole::Bias))
        | (Op::Dense(_), Wrt::Param(ParamRole::Bias)) => channel_sums(dy),
        (Op::BConv2d(a), Wrt::Operand(0)) => {
            let latent = LatentBinary::of(params, of, &g.of, channels, || {
                format!("`{}` has no latent binary weights", g.of.name())
            })?;
            let dy = scaled(dy, latent.alpha.clone());
            convolve_transpose(&dy, &a.geometry, &latent.signs, dims4(forward[0]))
        }
        (Op::Dense(a), Wrt::Operand(0)) => {
            let w = p("weight", &[a.out_features, channels])?;
            let alpha = layer_alpha(params, of, a.scale, w, a.out_features)?;
            let v = projected(w, layer_projection(params, of, &g.of, channels)?);
            let w = layer_weights(a.weights, alpha.as_deref(), &v, a.out_features);
            matvec_transpose(dy, &w, channels)
        }
        (Op::BDense(_), Wrt::Operand(0)) => {
            let latent = LatentBinary::of(params, of, &g.of, channels, || {
                format!("`{}` has no latent binary weights", g.of.name())
            })?;
            let dy = scaled(dy, latent.alpha.clone());
            matvec_transpose(&dy, &latent.signs, channels)
        }

        (Op::Sign(a), Wrt::Operand(0)) => zip(dy, forward[0], |d, v| d * sign_grad(a.grad, v)),
        (Op::BatchNorm(a), wrt) => batchnorm_grad(params, of, a, forward[0], dy, wrt)?,
        (Op::Relu, Wrt::Operand(0)) => zip(dy, forward[0], |d, v| if v > 0.0 { d } else { 0.0 }),
        (Op::PRelu, Wrt::Operand(0)) => {
            let slope = p("weight", &[channels])?;
            let mut dx = dy.clone();
            for_each_channel(dy, |c, i| {
                if forward[0].data[i] < 0.0 {
                    dx.data[i] = dy.data[i] * slope[c];
                }
            });
            dx
        }
        (Op::PRelu, Wrt::Param(ParamRole::Weight)) => {
            let mut sum = vec![0.0f64; channels];
            for_each_channel(dy, |c, i| {
                let v = forward[0].data[i];
                if v < 0.0 {
                    sum[c] += dy.data[i] as f64 * v as f64;
                }
            });
            rounded(vec![channels], &sum)
        }
        (Op::Shift, Wrt::Operand(0)) => Tensor {
            shape: forward[0].shape.clone(),
            data: dy.data.clone(),
        },
        (Op::Shift, Wrt::Param(ParamRole::Bias)) => channel_sums(dy),
        (Op::HardTanh(a), Wrt::Operand(0)) => {
            zip(
                dy,
                forward[0],
                |d, v| {
                    if a.min < v && v < a.max { d } else { 0.0 }
                },
            )
        }
        (Op::MaxPool(pool), Wrt::Operand(0)) => maxpool_grad(forward[0], dy, pool),
        (Op::AvgPool(pool), Wrt::Operand(0)) => avgpool_grad(forward[0], dy, pool),
        (Op::GlobalAvgPool, Wrt::Operand(0)) => {
            let [n, c, h, w] = dims4(forward[0]);
            let area = (h * w) as f32;
            let mut dx = vec![0.0f32; n * c * h * w];
            for plane in 0..n * c {
                dx[plane * h * w..][..h * w].fill(dy.data[plane] / area);
            }
            Tensor {
                shape: forward[0].shape.clone(),
                data: dx,
            }
        }
        (Op::Flatten | Op::Identity | Op::Add, Wrt::Operand(_)) => Tensor {
            shape: forward[0].shape.clone(),
            data: dy.data.clone(),
        },
        (Op::Zero, Wrt::Operand(_)) => Tensor {
            shape: forward[0].shape.clone(),
            data: vec![0.0; dy.data.len()],
        },
        (Op::Concat, Wrt::Operand(k)) => concat_grad(forward, dy, k),
        (Op::SliceChannels(_) | Op::ShuffleChannels(_), Wrt::Operand(0)) => {
            let x = forward[0];
            let channels = x.shape[1];
            let map =
                g.of.channel_sources(channels)
                    .expect("the op picks channels");
            scatter_channels(x, dy, &map)
        }
        (Op::Choose, wrt) => {
            let alpha = p("alpha", &[forward.len()])?;
            choose_grad(forward, dy, alpha, wrt)
        }
        (op, wrt) => {
            // The typing rule admits no other pair; report rather than panic.
            return Err(InterpError::Verify(Box::new(
                crate::ir::verify::VerifyError::Training {
                    node: of.to_string(),
                    message: format!("`{}` has no gradient with respect to {wrt:?}", op.name()),
                },
            )));
        }
    })
}

/// `f(dy, x)` elementwise.
fn zip(dy: &Tensor, x: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: dy
            .data
            .iter()
            .zip(&x.data)
            .map(|(&d, &v)| f(d, v))
            .collect(),
    }
}

/// f64 sums rounded to an f32 tensor of `shape`.
fn rounded(shape: Vec<usize>, sums: &[f64]) -> Tensor {
    Tensor {
        shape,
        data: sums.iter().map(|&v| v as f32).collect(),
    }
}

/// What `sign` passes back in place of its derivative at `x`.
fn sign_grad(estimator: SignGrad, x: f32) -> f32 {
    let inside = x.abs() <= 1.0;
    match estimator {
        SignGrad::Ste => f32::from(u8::from(inside)),
        SignGrad::Approx if inside => 2.0 - 2.0 * x.abs(),
        SignGrad::Approx => 0.0,
        SignGrad::Swish => {
            let b = SWISH_BETA;
            b * (2.0 - b * x * (b * x / 2.0).tanh()) / (1.0 + (b * x).cosh())
        }
    }
}

/// `dy` times the scale `α_o` of each output channel, or `dy` unchanged.
/// `scale=channel`'s α is held constant (larq's magnitude-aware sign stops
/// its gradient); `scale=learned`'s is a parameter with a gradient of its
/// own ([`channel_dot`]).
fn scaled(dy: &Tensor, alpha: Option<Vec<f32>>) -> Tensor {
    let mut d = dy.clone();
    if let Some(alpha) = alpha {
        for_each_channel(dy, |c, i| d.data[i] *= alpha[c]);
    }
    d
}

/// `Σ_{n, spatial} dy[n, o, …]·dot[n, o, …]`: the gradient of a learned
/// per-channel factor `α_o` of `y = α_o·dot` (in f64, rounded once).
fn channel_dot(dy: &Tensor, dot: &Tensor) -> Tensor {
    let c = dy.shape[1];
    let mut sum = vec![0.0f64; c];
    for_each_channel(dy, |ch, i| {
        sum[ch] += dy.data[i] as f64 * dot.data[i] as f64
    });
    rounded(vec![c], &sum)
}

impl LatentBinary<'_> {
    /// `G = ∂L/∂sign(V)`: the weight gradient of the layer's product with
    /// `α·dy` (`scale=channel`'s α held constant, as in [`scaled`]).
    fn sign_grad(&self, op: &Op, x: &Tensor, dy: &Tensor) -> Result<Tensor, InterpError> {
        let dy = scaled(dy, self.alpha.clone());
        Ok(match op {
            Op::Conv2d(a) => conv_weight_grad(x, &dy, &a.geometry, 0.0),
            Op::BConv2d(a) => conv_weight_grad(x, &dy, &a.geometry, pad_of(a.pad_value)),
            _ => outer_sum(&dy, x),
        })
    }

    /// The clipped straight-through estimator of a latent weight: `G` passes
    /// to `W` where `|V| <= 1` (BinaryConnect, on the value the sign reads),
    /// times `∂V/∂W = P` through a projection.
    fn weight_ste(&self, mut g: Tensor) -> Tensor {
        let k = self.k();
        for (i, gv) in g.data.iter_mut().enumerate() {
            *gv = if self.v[i].abs() > 1.0 {
                0.0
            } else {
                self.projection.map_or(*gv, |p| *gv * p[i % k])
            };
        }
        g
    }

    /// The projection's gradient by the same estimator (Gu et al. 2019,
    /// Eq. 3.55): `Σ_o G_ok·W_ok` over the weights where `|V_ok| <= 1`.
    fn projection_ste(&self, g: &Tensor) -> Tensor {
        let k = self.k();
        let mut sums = vec![0.0f64; k];
        for (i, &gv) in g.data.iter().enumerate() {
            if self.v[i].abs() <= 1.0 {
                sums[i % k] += gv as f64 * self.w[i] as f64;
            }
        }
        rounded(self.shape[1..].to_vec(), &sums)
    }

    /// The layer's dot products with `sign(V)`, unscaled: what a learned
    /// `α_o` multiplies.
    fn unscaled_dot(&self, op: &Op, x: &Tensor) -> Tensor {
        match op {
            Op::Conv2d(a) => super::conv2d(x, &Conv2d { bias: false, ..*a }, &self.signs, None),
            Op::BConv2d(a) => super::bconv2d(x, a, &self.signs),
            Op::Dense(a) => super::dense(x, &Dense { bias: false, ..*a }, &self.signs, None),
            _ => super::matvec(x, &self.signs, self.shape[0]),
        }
    }
}

fn pad_of(p: PadValue) -> f32 {
    match p {
        PadValue::Zero => 0.0,
        PadValue::One => 1.0,
    }
}

/// `Σ_{n, spatial} dy[n, o, …]`: the gradient of a per-channel bias.
fn channel_sums(dy: &Tensor) -> Tensor {
    let c = dy.shape[1];
    let mut sum = vec![0.0f64; c];
    for_each_channel(dy, |ch, i| sum[ch] += dy.data[i] as f64);
    rounded(vec![c], &sum)
}

/// The adjoint of the convolution sum: scatters each `w[o, c−c0, u, v] ·
/// dy[n, o, i, j]` back onto the padded input position it was read from,
/// then drops the padding (padded values are constants).
fn convolve_transpose(dy: &Tensor, g: &ConvGeometry, w: &[f32], x_dims: [usize; 4]) -> Tensor {
    let [n, c, h, wd] = x_dims;
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad;
    let [dh, dw] = g.dilation;
    let out = g.out_channels;
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let c_per_group = c / g.groups;
    let o_per_group = out / g.groups;
    let mut dx = vec![0.0f32; n * c * h * wd];
    let mut dxpad = vec![0.0f32; c * hp * wp];
    for s in 0..n {
        dxpad.fill(0.0);
        for o in 0..out {
            let c0 = (o / o_per_group) * c_per_group;
            let dyo = &dy.data[(s * out + o) * oh * ow..][..oh * ow];
            for cl in 0..c_per_group {
                let plane = &mut dxpad[(c0 + cl) * hp * wp..][..hp * wp];
                for u in 0..kh {
                    for v in 0..kw {
                        let wv = w[((o * c_per_group + cl) * kh + u) * kw + v];
                        for i in 0..oh {
                            for j in 0..ow {
                                plane[(i * sh + u * dh) * wp + j * sw + v * dw] +=
                                    wv * dyo[i * ow + j];
                            }
                        }
                    }
                }
            }
        }
        let sample = &mut dx[s * c * h * wd..][..c * h * wd];
        copy_from_padded(sample, &dxpad, [c, h, wd], g.pad);
    }
    Tensor {
        shape: vec![n, c, h, wd],
        data: dx,
    }
}

/// `dW[o, c−c0, u, v] = Σ_{n,i,j} dy[n,o,i,j] · xpad[n, c, i·sh + u·dh, j·sw + v·dw]`,
/// with padded positions holding `pad_value` (they are inputs of the sum too).
fn conv_weight_grad(x: &Tensor, dy: &Tensor, g: &ConvGeometry, pad_value: f32) -> Tensor {
    let [n, c, h, wd] = dims4(x);
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad;
    let [dh, dw] = g.dilation;
    let out = g.out_channels;
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let c_per_group = c / g.groups;
    let o_per_group = out / g.groups;
    let mut sums = vec![0.0f64; out * c_per_group * kh * kw];
    let mut xpad = vec![pad_value; c * hp * wp];
    for s in 0..n {
        let sample = &x.data[s * c * h * wd..][..c * h * wd];
        copy_into_padded(&mut xpad, sample, [c, h, wd], g.pad);
        for o in 0..out {
            let c0 = (o / o_per_group) * c_per_group;
            let dyo = &dy.data[(s * out + o) * oh * ow..][..oh * ow];
            for cl in 0..c_per_group {
                let plane = &xpad[(c0 + cl) * hp * wp..][..hp * wp];
                for u in 0..kh {
                    for v in 0..kw {
                        let mut acc = 0.0f64;
                        for i in 0..oh {
                            for j in 0..ow {
                                acc += dyo[i * ow + j] as f64
                                    * plane[(i * sh + u * dh) * wp + j * sw + v * dw] as f64;
                            }
                        }
                        sums[((o * c_per_group + cl) * kh + u) * kw + v] += acc;
                    }
                }
            }
        }
    }
    rounded(vec![out, c_per_group, kh, kw], &sums)
}

/// `dx[n, k] = Σ_o w[o, k] · dy[n, o]` for `w` `[O, K]`.
fn matvec_transpose(dy: &Tensor, w: &[f32], k: usize) -> Tensor {
    let (n, out) = (dy.shape[0], dy.shape[1]);
    let mut dx = vec![0.0f32; n * k];
    for s in 0..n {
        let row = &mut dx[s * k..][..k];
        for o in 0..out {
            let d = dy.data[s * out + o];
            for (r, &wv) in row.iter_mut().zip(&w[o * k..][..k]) {
                *r += wv * d;
            }
        }
    }
    Tensor {
        shape: vec![n, k],
        data: dx,
    }
}

/// `dW[o, k] = Σ_n dy[n, o] · x[n, k]`.
fn outer_sum(dy: &Tensor, x: &Tensor) -> Tensor {
    let (n, out) = (dy.shape[0], dy.shape[1]);
    let k = x.shape[1];
    let mut sums = vec![0.0f64; out * k];
    for s in 0..n {
        let xs = &x.data[s * k..][..k];
        for o in 0..out {
            let d = dy.data[s * out + o] as f64;
            for (acc, &xv) in sums[o * k..][..k].iter_mut().zip(xs) {
                *acc += d * xv as f64;
            }
        }
    }
    rounded(vec![out, k], &sums)
}

/// The gradients of a batchnorm. With `x̂ = (x − μ)/s`: `dβ = Σ dy`,
/// `dγ = Σ dy·x̂`; `dx = γ/s · dy` on running statistics, and on batch
/// statistics (which depend on `x`) `dx = γ/s · (dy − dβ/M − x̂·dγ/M)`.
fn batchnorm_grad(
    params: &Params,
    node: &str,
    a: &BatchNorm,
    x: &Tensor,
    dy: &Tensor,
    wrt: Wrt,
) -> Result<Tensor, InterpError> {
    let c = x.shape[1];
    let gamma = param(params, &format!("{node}.weight"), &[c])?;
    let (mean, std) = normalisation(params, node, a, x)?;
    let x_hat = |ch: usize, i: usize| (x.data[i] as f64 - mean[ch] as f64) / std[ch] as f64;
    let mut dbeta = vec![0.0f64; c];
    let mut dgamma = vec![0.0f64; c];
    for_each_channel(x, |ch, i| {
        dbeta[ch] += dy.data[i] as f64;
        dgamma[ch] += dy.data[i] as f64 * x_hat(ch, i);
    });
    Ok(match wrt {
        Wrt::Param(ParamRole::Bias) => rounded(vec![c], &dbeta),
        Wrt::Param(ParamRole::Weight) => rounded(vec![c], &dgamma),
        _ => {
            let m = per_channel_count(x) as f64;
            let mut dx = x.clone();
            for_each_channel(x, |ch, i| {
                let scale = gamma[ch] as f64 / std[ch] as f64;
                let d = dy.data[i] as f64;
                dx.data[i] = match a.stats {
                    Stats::Running => scale * d,
                    Stats::Batch => scale * (d - dbeta[ch] / m - x_hat(ch, i) * dgamma[ch] / m),
                } as f32;
            });
            dx
        }
    })
}

/// Routes each output's gradient to the input position the forward max
/// picked: the first in row-major window order holding the maximum.
fn maxpool_grad(x: &Tensor, dy: &Tensor, p: &Pool) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [ph, pw] = p.pad;
    let oh = out_size(h, kh, sh, ph, 1);
    let ow = out_size(w, kw, sw, pw, 1);
    let mut dx = vec![0.0f32; x.data.len()];
    for plane in 0..n * c {
        let xp = &x.data[plane * h * w..][..h * w];
        for i in 0..oh {
            let rows = (i * sh).saturating_sub(ph)..(i * sh + kh).saturating_sub(ph).min(h);
            for j in 0..ow {
                let cols = (j * sw).saturating_sub(pw)..(j * sw + kw).saturating_sub(pw).min(w);
                let mut best: Option<usize> = None;
                let mut m = f32::NEG_INFINITY;
                for r in rows.clone() {
                    for col in cols.clone() {
                        if xp[r * w + col] > m {
                            m = xp[r * w + col];
                            best = Some(r * w + col);
                        }
                    }
                }
                if let Some(b) = best {
                    dx[plane * h * w + b] += dy.data[(plane * oh + i) * ow + j];
                }
            }
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: dx,
    }
}

/// Spreads each output's gradient over its window's in-input positions,
/// divided by the whole window's area (padding counts in the divisor).
fn avgpool_grad(x: &Tensor, dy: &Tensor, p: &Pool) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [ph, pw] = p.pad;
    let oh = out_size(h, kh, sh, ph, 1);
    let ow = out_size(w, kw, sw, pw, 1);
    let area = (kh * kw) as f32;
    let mut dx = vec![0.0f32; x.data.len()];
    for plane in 0..n * c {
        for i in 0..oh {
            let rows = (i * sh).saturating_sub(ph)..(i * sh + kh).saturating_sub(ph).min(h);
            for j in 0..ow {
                let cols = (j * sw).saturating_sub(pw)..(j * sw + kw).saturating_sub(pw).min(w);
                let d = dy.data[(plane * oh + i) * ow + j] / area;
                for r in rows.clone() {
                    for col in cols.clone() {
                        dx[plane * h * w + r * w + col] += d;
                    }
                }
            }
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: dx,
    }
}

/// The gradient of a channel gather (`slice_channels`, `shuffle_channels`):
/// output channel `j`'s gradient is its source channel `map[j]`'s, every
/// channel no output took gets zero (the map is one-to-one).
fn scatter_channels(x: &Tensor, dy: &Tensor, map: &[usize]) -> Tensor {
    let n = x.shape[0];
    let channels = x.shape[1];
    let plane: usize = x.shape[2..].iter().product();
    let mut data = vec![0.0; x.data.len()];
    for s in 0..n {
        for (j, &to) in map.iter().enumerate() {
            let src = &dy.data[(s * map.len() + j) * plane..][..plane];
            data[(s * channels + to) * plane..][..plane].copy_from_slice(src);
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// The channels of `dy` that operand `k` of a concat contributed.
fn concat_grad(xs: &[&Tensor], dy: &Tensor, k: usize) -> Tensor {
    let n = dy.shape[0];
    let sizes: Vec<usize> = xs.iter().map(|x| x.shape[1..].iter().product()).collect();
    let total: usize = sizes.iter().sum();
    let offset: usize = sizes[..k].iter().sum();
    let mut data = Vec::with_capacity(n * sizes[k]);
    for s in 0..n {
        data.extend_from_slice(&dy.data[s * total + offset..][..sizes[k]]);
    }
    Tensor {
        shape: xs[k].shape.clone(),
        data,
    }
}

/// `choose` with `p = softmax(α)`: `dx_k = p_k·dy`, and
/// `dα_j = p_j·(⟨dy, x_j⟩ − Σ_i p_i·⟨dy, x_i⟩)`, `⟨·,·⟩` summing over the
/// batch and every element.
fn choose_grad(xs: &[&Tensor], dy: &Tensor, alpha: &[f32], wrt: Wrt) -> Tensor {
    let m = alpha.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = alpha.iter().map(|&a| (a - m).exp()).collect();
    let total: f32 = e.iter().sum();
    let p: Vec<f32> = e.iter().map(|&v| v / total).collect();
    match wrt {
        Wrt::Operand(k) => Tensor {
            shape: dy.shape.clone(),
            data: dy.data.iter().map(|&d| p[k] * d).collect(),
        },
        Wrt::Param(_) => {
            let inner: Vec<f64> = xs
                .iter()
                .map(|x| {
                    x.data
                        .iter()
                        .zip(&dy.data)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum()
                })
                .collect();
            let mixed: f64 = p.iter().zip(&inner).map(|(&pi, &v)| pi as f64 * v).sum();
            let sums: Vec<f64> = p
                .iter()
                .zip(&inner)
                .map(|(&pj, &v)| pj as f64 * (v - mixed))
                .collect();
            rounded(vec![xs.len()], &sums)
        }
    }
}

/// `d loss / d z_n = (softmax(z_n)·Σ_k t'_nk − t'_n) / N`.
fn cross_entropy_grad(z: &Tensor, t: &Tensor, a: &CrossEntropy) -> Tensor {
    let (n, k) = (z.shape[0], z.shape[1]);
    let mut dz = Vec::with_capacity(n * k);
    for s in 0..n {
        let zs = &z.data[s * k..][..k];
        let ts = smoothed(&t.data[s * k..][..k], a.smoothing);
        let lse = log_sum_exp(zs);
        let mass: f64 = ts.iter().sum();
        dz.extend(
            zs.iter()
                .zip(&ts)
                .map(|(&zv, &tv)| (((zv as f64 - lse).exp() * mass - tv) / n as f64) as f32),
        );
    }
    Tensor {
        shape: z.shape.clone(),
        data: dz,
    }
}
