//! Per-element and per-channel ops (sign, batchnorm, activations, shift) and
//! the ops that combine or reshape whole tensors (flatten, add, concat, zero,
//! choose).

use super::layers::sign_of;
use super::sample_dims;
use crate::ir::ops::{BatchNorm, HardTanh};
use crate::ir::params::Tensor;

/// One value of `batchnorm`, in the exact order of operations the
/// interpreter uses: `γ · (x − μ) / sqrt(σ² + eps) + β`. Passes that fold a
/// batchnorm into a threshold evaluate this to find the exact switching point.
pub fn batchnorm_value(x: f32, gamma: f32, beta: f32, mean: f32, var: f32, eps: f32) -> f32 {
    batchnorm_with_std(x, gamma, beta, mean, batchnorm_std(var, eps))
}

/// `sqrt(σ² + eps)`, the divisor of [`batchnorm_value`], for engines that
/// compute it once per channel.
pub fn batchnorm_std(var: f32, eps: f32) -> f32 {
    (var + eps).sqrt()
}

/// [`batchnorm_value`] with its divisor `std = batchnorm_std(σ², eps)` given.
pub fn batchnorm_with_std(x: f32, gamma: f32, beta: f32, mean: f32, std: f32) -> f32 {
    gamma * (x - mean) / std + beta
}

/// `sign`: `+1` if `x >= 0`, else `−1` (so `sign(0) = +1`; NaN gives `−1`).
pub(super) fn sign(x: &Tensor) -> Tensor {
    map(x, sign_of)
}

/// Batchnorm's four per-channel parameters.
pub(super) struct BatchNormParams<'p> {
    /// `γ` (`NODE.weight`).
    pub(super) gamma: &'p [f32],
    /// `β` (`NODE.bias`).
    pub(super) beta: &'p [f32],
    /// `μ` (`NODE.running_mean`).
    pub(super) mean: &'p [f32],
    /// `σ²` (`NODE.running_var`).
    pub(super) var: &'p [f32],
}

/// `batchnorm`: `y = γ_c · (x − μ_c) / sqrt(σ²_c + eps) + β_c`, `c` the index
/// along the first per-sample axis.
pub(super) fn batchnorm(x: &Tensor, a: &BatchNorm, p: &BatchNormParams) -> Tensor {
    map_per_channel(x, |c, v| {
        batchnorm_value(v, p.gamma[c], p.beta[c], p.mean[c], p.var[c], a.eps)
    })
}

/// `relu`: `x > 0 ? x : 0`, so a NaN and both zeros give `+0`.
pub(super) fn relu(x: &Tensor) -> Tensor {
    // Not `f32::max`, which leaves the sign of a zero result unspecified.
    map(x, |v| if v > 0.0 { v } else { 0.0 })
}

/// `prelu`: `x` if `x >= 0`, else `a_c · x`, `c` the index along the first
/// per-sample axis.
pub(super) fn prelu(x: &Tensor, slope: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| if v >= 0.0 { v } else { slope[c] * v })
}

/// `shift`: `x + b_c`, `c` the index along the first per-sample axis. (This
/// equals `affine` with multiplier 1 exactly, which is how the passes and
/// the JIT treat it.)
pub(super) fn shift(x: &Tensor, b: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| v + b[c])
}

/// `hardtanh`: `clamp(x, min, max)` as two comparisons, each giving the
/// bound on a tie or a NaN (ir-spec/ops.md); not `f32::clamp`, which panics
/// on a NaN bound, nor `f32::max`, which leaves the sign of a zero
/// unspecified.
pub(super) fn hardtanh(x: &Tensor, a: &HardTanh) -> Tensor {
    map(x, |v| {
        let low = if v > a.min { v } else { a.min };
        if low < a.max { low } else { a.max }
    })
}

/// `flatten`: `[N, d1, d2, …]` to `[N, d1·d2·…]`, data unchanged (C order).
pub(super) fn flatten(x: &Tensor) -> Tensor {
    Tensor {
        shape: vec![x.shape[0], sample_dims(x).iter().product()],
        data: x.data.clone(),
    }
}

/// `add`: `y = x_0 + x_1 + …`, elementwise, summed left to right.
pub(super) fn add(xs: &[&Tensor]) -> Tensor {
    let mut y = xs[0].clone();
    for x in &xs[1..] {
        for (yv, &xv) in y.data.iter_mut().zip(&x.data) {
            *yv += xv;
        }
    }
    y
}

/// `slice_channels` and `shuffle_channels`: output channel `j` of every
/// sample is input channel `map[j]` (`Op::channel_sources`), whole planes.
pub(super) fn gather_channels(x: &Tensor, map: &[usize]) -> Tensor {
    let n = x.shape[0];
    let c = sample_dims(x).first().copied().unwrap_or(0);
    let plane: usize = sample_dims(x)[1..].iter().product();
    let mut data = Vec::with_capacity(n * map.len() * plane);
    for s in 0..n {
        let sample = &x.data[s * c * plane..][..c * plane];
        for &src in map {
            data.extend_from_slice(&sample[src * plane..][..plane]);
        }
    }
    let mut shape = x.shape.clone();
    shape[1] = map.len();
    Tensor { shape, data }
}

/// `concat`: the operands joined along the channel (first per-sample) axis,
/// in operand order; in C order that is, per sample, one whole sample of each
/// operand after the other.
pub(super) fn concat(xs: &[&Tensor]) -> Tensor {
    let n = xs[0].shape[0];
    let mut shape = xs[0].shape.clone();
    shape[1] = xs.iter().map(|x| x.shape[1]).sum();
    let sizes: Vec<usize> = xs.iter().map(|x| sample_dims(x).iter().product()).collect();
    let mut data = Vec::with_capacity(n * sizes.iter().sum::<usize>());
    for s in 0..n {
        for (x, &size) in xs.iter().zip(&sizes) {
            data.extend_from_slice(&x.data[s * size..][..size]);
        }
    }
    Tensor { shape, data }
}

/// `zero`: zeros of the operand's shape.
pub(super) fn zero(x: &Tensor) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: vec![0.0; x.data.len()],
    }
}

/// `choose`: `y = Σ_i softmax(α)_i · x_i`, summed left to right, with
/// `softmax(α)_i = exp(α_i − m) / Σ_j exp(α_j − m)` and `m = max α` (stable).
pub(super) fn choose(xs: &[&Tensor], alpha: &[f32]) -> Tensor {
    let m = alpha.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = alpha.iter().map(|&a| (a - m).exp()).collect();
    let total: f32 = e.iter().sum();
    let mut y = zero(xs[0]);
    for (x, &ei) in xs.iter().zip(&e) {
        let weight = ei / total;
        for (yv, &xv) in y.data.iter_mut().zip(&x.data) {
            *yv += weight * xv;
        }
    }
    y
}

/// `f` applied to every element.
pub(super) fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

/// `f(c, x)` applied to every element, `c` its index along the first
/// per-sample (channel) axis. Works for `[N, C]` and `[N, C, …]`.
pub(super) fn map_per_channel(x: &Tensor, f: impl Fn(usize, f32) -> f32) -> Tensor {
    let n = x.shape[0];
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut data = Vec::with_capacity(x.data.len());
    for s in 0..n {
        for ch in 0..c {
            let base = (s * c + ch) * inner;
            data.extend(x.data[base..base + inner].iter().map(|&v| f(ch, v)));
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// `y[n,c,…] = b[c] + y[n,c,…]`.
pub(super) fn add_per_channel(y: &mut Tensor, b: &[f32]) {
    *y = map_per_channel(y, |c, v| b[c] + v);
}

/// `y[n,c,…] = y[n,c,…] · a[c]`.
pub(super) fn mul_per_channel(y: &mut Tensor, a: &[f32]) {
    *y = map_per_channel(y, |c, v| v * a[c]);
}
