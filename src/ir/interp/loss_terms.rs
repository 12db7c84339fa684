//! The extra loss terms of a training graph and their gradients
//! (`ir-spec/training.md`, "Loss terms"): the weight quantization loss
//! (Zheng et al. 2019) and the distribution loss on pre-sign activations
//! (Ding et al. 2019). Each is a weighted scalar for the batch that the
//! training graph adds to the cross-entropy.
//!
//! As in the rest of the oracle, reductions accumulate in f64 and round once.

use super::{
    InterpError, conv_weight_shape, layer_alpha, layer_projection, param, projected, sign_of,
};
use crate::ir::ops::{DistributionLoss, Op, QuantizationLoss, Scale, WeightKind};
use crate::ir::params::{Params, Tensor};

/// The ε the distribution loss adds to the batch variance before the square
/// root (the reference implementation's 1e-10).
pub const DISTRIBUTION_EPS: f64 = 1e-10;

/// The weight shape and output scale of a layer with latent binary weights
/// over `channels` input channels; `None` for any other op (the typing rule
/// of `quantization_loss` admits no other).
pub fn binary_weight_shape(of: &Op, channels: usize) -> Option<(Vec<usize>, Scale)> {
    match of {
        Op::BConv2d(a) => Some((conv_weight_shape(&a.geometry, channels).to_vec(), a.scale)),
        Op::BDense(a) => Some((vec![a.out_features, channels], a.scale)),
        Op::Conv2d(a) if a.weights == WeightKind::Binary => {
            Some((conv_weight_shape(&a.geometry, channels).to_vec(), a.scale))
        }
        Op::Dense(a) if a.weights == WeightKind::Binary => {
            Some((vec![a.out_features, channels], a.scale))
        }
        _ => None,
    }
}

/// What the rules of a layer with latent binary weights read (its backward
/// rules and its quantization loss): the latent weights `W` (`[O, K]` in C
/// order) and their shape, PCNN's projection `P` (`[K]`) with
/// `projection=true`, the values `V = P∘W` (`W` itself without) whose signs
/// the layer computes with, those signs, and `α` from `scale=` (`None`
/// without a scale).
pub(super) struct LatentBinary<'p> {
    pub(super) w: &'p [f32],
    pub(super) shape: Vec<usize>,
    pub(super) projection: Option<&'p [f32]>,
    pub(super) v: Vec<f32>,
    pub(super) signs: Vec<f32>,
    pub(super) alpha: Option<Vec<f32>>,
}

impl<'p> LatentBinary<'p> {
    /// Reads the layer `node` (`op` over `channels` input channels); an op
    /// without latent binary weights is the error `not_binary()` describes.
    pub(super) fn of(
        params: &'p Params,
        node: &str,
        op: &Op,
        channels: usize,
        not_binary: impl FnOnce() -> String,
    ) -> Result<LatentBinary<'p>, InterpError> {
        let (shape, scale) = binary_weight_shape(op, channels).ok_or_else(|| {
            InterpError::Verify(Box::new(crate::ir::verify::VerifyError::Training {
                node: node.to_string(),
                message: not_binary(),
            }))
        })?;
        let w = param(params, &format!("{node}.weight"), &shape)?;
        let projection = layer_projection(params, node, op, channels)?;
        let v = projected(w, projection).into_owned();
        let signs = v.iter().map(|&x| sign_of(x)).collect();
        let alpha = layer_alpha(params, node, scale, w, shape[0])?;
        Ok(LatentBinary {
            w,
            shape,
            projection,
            v,
            signs,
            alpha,
        })
    }

    /// Weights per output channel.
    pub(super) fn k(&self) -> usize {
        (self.w.len() / self.shape[0].max(1)).max(1)
    }

    /// Per weight, in order: its output channel `o`, the residual
    /// `V_ok − α_o·s_ok` (in f64, from the f32 product the layer computes
    /// with; `α_o = 1` without a scale) and `s_ok = sign(V_ok)`.
    fn residuals(&self) -> impl Iterator<Item = (usize, f64, f32)> + '_ {
        let k = self.k();
        self.v
            .iter()
            .zip(&self.signs)
            .enumerate()
            .map(move |(i, (&v, &s))| {
                let a = self.alpha.as_ref().map_or(1.0, |a| a[i / k]);
                (i / k, v as f64 - (a * s) as f64, s)
            })
    }
}

/// The layer `layer` that a quantization loss reads.
fn quantized<'p>(
    params: &'p Params,
    layer: &str,
    a: &QuantizationLoss,
    channels: usize,
) -> Result<LatentBinary<'p>, InterpError> {
    LatentBinary::of(params, layer, &a.of, channels, || {
        format!(
            "`quantization_loss` of a `{}`, not a binary layer",
            a.of.name()
        )
    })
}

/// `quantization_loss`: `λ · Σ_{o,k} (V_ok − α_o·sign(V_ok))²`, the squared
/// distance between the latent weights (projected, `V = P∘W`, with
/// `projection=true`; `V = W` without) and the binarized, scaled weights the
/// layer computes with. On a projected layer this is PCNN's projection loss
/// (Gu et al. 2019, Eq. 3.42 with `η = 0`, its `λ` being `2λ` here).
/// `channels` is the layer's input channel count.
pub(super) fn quantization_loss(
    params: &Params,
    layer: &str,
    a: &QuantizationLoss,
    channels: usize,
) -> Result<Tensor, InterpError> {
    let q = quantized(params, layer, a, channels)?;
    let sum: f64 = q.residuals().map(|(_, d, _)| d * d).sum();
    Ok(Tensor {
        shape: Vec::new(),
        data: vec![(a.weight as f64 * sum) as f32],
    })
}

/// The gradient of `quantization_loss` with respect to the latent weights:
/// `2λ·(V − α·sign(V))·∂V/∂W`, i.e. `2λ·(W − α·sign(W))` without a
/// projection and `2λ·(P∘W − α·sign(P∘W))∘P` with one (PCNN's Eq. 3.52).
/// `sign` and `α` are held constant. Without a projection, and with
/// `α_o = mean|W_o|`, the term through `α` is `−2λ·Σ_j (W_oj −
/// α_o·s_oj)·s_oj · s_ok/K = −2λ·(Σ_j|W_oj| − K·α_o)·s_ok/K = 0`, so this is
/// the whole derivative wherever `sign` is constant; a learned α is a
/// parameter of its own ([`quantization_loss_scale_grad`]).
pub(super) fn quantization_loss_grad(
    params: &Params,
    layer: &str,
    a: &QuantizationLoss,
    channels: usize,
) -> Result<Tensor, InterpError> {
    let q = quantized(params, layer, a, channels)?;
    let lambda = a.weight as f64;
    let k = q.k();
    let data = q
        .residuals()
        .enumerate()
        .map(|(i, (_, d, _))| {
            let dv = q.projection.map_or(1.0, |p| p[i % k] as f64);
            (2.0 * lambda * d * dv) as f32
        })
        .collect();
    Ok(Tensor {
        shape: q.shape,
        data,
    })
}

/// The gradient of `quantization_loss` with respect to the projection of a
/// projected layer: `2λ·Σ_o (V_ok − α_o·s_ok)·W_ok` (PCNN's projection-loss
/// gradient of `P`, `sign` and `α` held constant).
pub(super) fn quantization_loss_projection_grad(
    params: &Params,
    layer: &str,
    a: &QuantizationLoss,
    channels: usize,
) -> Result<Tensor, InterpError> {
    let q = quantized(params, layer, a, channels)?;
    let k = q.k();
    let mut sums = vec![0.0f64; k];
    for (i, (_, d, _)) in q.residuals().enumerate() {
        sums[i % k] += d * q.w[i] as f64;
    }
    let lambda = a.weight as f64;
    Ok(Tensor {
        shape: q.shape[1..].to_vec(),
        data: sums.iter().map(|&v| (2.0 * lambda * v) as f32).collect(),
    })
}

/// The gradient of `quantization_loss` with respect to a learned scale
/// (`scale=learned`): `−2λ·Σ_k (V_ok − α_o·s_ok)·s_ok` per output channel.
pub(super) fn quantization_loss_scale_grad(
    params: &Params,
    layer: &str,
    a: &QuantizationLoss,
    channels: usize,
) -> Result<Tensor, InterpError> {
    let q = quantized(params, layer, a, channels)?;
    let mut sums = vec![0.0f64; q.shape[0]];
    for (o, d, s) in q.residuals() {
        sums[o] += d * s as f64;
    }
    let lambda = a.weight as f64;
    Ok(Tensor {
        shape: vec![sums.len()],
        data: sums.iter().map(|&v| (-2.0 * lambda * v) as f32).collect(),
    })
}

/// Per channel of `x` (`[N, C, …]`): the batch mean `μ_c`, the standard
/// deviation `σ_c = √(var_c + ε)` of the biased batch variance, and the
/// count `M` of values per channel.
fn channel_moments(x: &Tensor) -> (Vec<f64>, Vec<f64>, usize) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let m = n * inner;
    let mut sum = vec![0.0f64; c];
    let mut sq = vec![0.0f64; c];
    for_each(x, |ch, v| sum[ch] += v);
    let mean: Vec<f64> = sum.iter().map(|s| s / m.max(1) as f64).collect();
    for_each(x, |ch, v| sq[ch] += (v - mean[ch]) * (v - mean[ch]));
    let std = sq
        .iter()
        .map(|s| (s / m.max(1) as f64 + DISTRIBUTION_EPS).sqrt())
        .collect();
    (mean, std, m)
}

/// Visits every value of `x` (`[N, C, …]`) with its channel.
fn for_each(x: &Tensor, mut f: impl FnMut(usize, f64)) {
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    for s in 0..n {
        for ch in 0..c {
            for &v in &x.data[(s * c + ch) * inner..][..inner] {
                f(ch, v as f64);
            }
        }
    }
}

/// One channel's distribution loss and its partial derivatives with respect
/// to `μ` and `σ`: `relu(2 − |μ| − σ)²` (gradient mismatch: `min(2 − μ − σ,
/// 2 + μ − σ) = 2 − |μ| − σ`), `relu(σ − 4)²` (saturation) and
/// `relu(μ² − σ²)` (degeneration). At `μ = 0` the first term's `μ`-slope is
/// taken from `2 − μ − σ`.
pub fn distribution_terms(mu: f64, sigma: f64) -> (f64, f64, f64) {
    let (mut value, mut d_mu, mut d_sigma) = (0.0, 0.0, 0.0);
    let mismatch = 2.0 - mu.abs() - sigma;
    if mismatch > 0.0 {
        value += mismatch * mismatch;
        d_mu -= 2.0 * mismatch * if mu >= 0.0 { 1.0 } else { -1.0 };
        d_sigma -= 2.0 * mismatch;
    }
    let saturation = sigma - 4.0;
    if saturation > 0.0 {
        value += saturation * saturation;
        d_sigma += 2.0 * saturation;
    }
    let degeneration = mu * mu - sigma * sigma;
    if degeneration > 0.0 {
        value += degeneration;
        d_mu += 2.0 * mu;
        d_sigma -= 2.0 * sigma;
    }
    (value, d_mu, d_sigma)
}

/// `distribution_loss`: `λ · (1/C) Σ_c terms(μ_c, σ_c)` (see
/// [`distribution_terms`]), the statistics over the batch and spatial axes.
pub(super) fn distribution_loss(x: &Tensor, a: &DistributionLoss) -> Tensor {
    let (mean, std, _) = channel_moments(x);
    let c = mean.len();
    let total: f64 = mean
        .iter()
        .zip(&std)
        .map(|(&m, &s)| distribution_terms(m, s).0)
        .sum();
    Tensor {
        shape: Vec::new(),
        data: vec![(a.weight as f64 * total / c.max(1) as f64) as f32],
    }
}

/// The gradient of `distribution_loss` with respect to its operand:
/// `∂μ_c/∂x = 1/M` and `∂σ_c/∂x = (x − μ_c)/(M·σ_c)`, so
/// `dx = (λ/C)·(∂L/∂μ_c / M + ∂L/∂σ_c · (x − μ_c)/(M·σ_c))`.
pub(super) fn distribution_loss_grad(x: &Tensor, a: &DistributionLoss) -> Tensor {
    let (mean, std, m) = channel_moments(x);
    let (n, c) = (x.shape[0], x.shape[1]);
    let inner: usize = x.shape[2..].iter().product();
    let scale = a.weight as f64 / c.max(1) as f64 / m.max(1) as f64;
    let slopes: Vec<(f64, f64)> = mean
        .iter()
        .zip(&std)
        .map(|(&mu, &s)| {
            let (_, d_mu, d_sigma) = distribution_terms(mu, s);
            (d_mu, d_sigma / s)
        })
        .collect();
    let mut dx = vec![0.0f32; x.data.len()];
    for s in 0..n {
        for ch in 0..c {
            let base = (s * c + ch) * inner;
            let (d_mu, d_sigma_over_s) = slopes[ch];
            let plane = &x.data[base..][..inner];
            for (d, &v) in dx[base..][..inner].iter_mut().zip(plane) {
                let centred = v as f64 - mean[ch];
                *d = (scale * (d_mu + d_sigma_over_s * centred)) as f32;
            }
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data: dx,
    }
}
