//! The extra loss terms (`quantization_loss`, `distribution_loss`) and their
//! gradients: the interpreter's rules (`src/ir/interp/loss_terms.rs`) as
//! passes over the engine's prepared binary weights and the activations.

use super::norm;
use super::par::Par;
use crate::ir::interp::loss_terms::{DISTRIBUTION_EPS, distribution_terms};

/// `λ·Σ (V − α·sign(V))²`, with `values` the latent weights `V = W` (or
/// `P∘W` through a projection) and `scaled` the layer's prepared
/// `α·sign(V)` (`sign(V)` without a scale). Summed per output row in f64.
pub(super) fn quantization_loss(
    par: Par,
    values: &[f32],
    scaled: &[f32],
    out: usize,
    weight: f32,
) -> f32 {
    let k = values.len() / out.max(1);
    let rows = par.map(out, values.len(), |o| {
        let (w, s) = (&values[o * k..][..k], &scaled[o * k..][..k]);
        w.iter()
            .zip(s)
            .map(|(&w, &s)| {
                let d = (w - s) as f64;
                d * d
            })
            .sum::<f64>()
    });
    (weight as f64 * rows.iter().sum::<f64>()) as f32
}

/// `2λ·(V − α·sign(V))·∂V/∂W`, the gradient of [`quantization_loss`] with
/// respect to `W`: `∂V/∂W` is 1, or `P_k` through a projection
/// (`projection`, `[K]`; empty for none).
pub(super) fn quantization_grad(
    par: Par,
    values: &[f32],
    scaled: &[f32],
    projection: &[f32],
    weight: f32,
    dw: &mut [f32],
) {
    let k = projection.len().max(1);
    par.rows(dw, k, values.len(), |row, d| {
        let at = row * k;
        for (j, g) in d.iter_mut().enumerate() {
            let i = at + j;
            let r = 2.0 * weight * (values[i] - scaled[i]);
            *g = if projection.is_empty() {
                r
            } else {
                r * projection[i % k]
            };
        }
    });
}

/// `−2λ·Σ_k (V_ok − α_o·s_ok)·s_ok` per output row, in f64: the gradient of
/// [`quantization_loss`] with respect to a learned scale `α_o`, with `scaled`
/// the prepared `α·sign(V)` and `signs` the prepared `sign(V)`.
pub(super) fn quantization_scale_grad(
    values: &[f32],
    scaled: &[f32],
    signs: &[f32],
    out: usize,
    weight: f32,
) -> Vec<f64> {
    let k = values.len() / out.max(1);
    (0..out)
        .map(|o| {
            let rows = values[o * k..][..k]
                .iter()
                .zip(&scaled[o * k..][..k])
                .zip(&signs[o * k..][..k]);
            let sum: f64 = rows
                .map(|((&w, &a), &s)| (w as f64 - a as f64) * s as f64)
                .sum();
            -2.0 * weight as f64 * sum
        })
        .collect()
}

/// `2λ·Σ_o (V_ok − α_o·s_ok)·W_ok` per weight position `k`, in f64: the
/// gradient of [`quantization_loss`] with respect to the projection `P` of a
/// projected layer, with `projected` the prepared `V = P∘W`.
pub(super) fn quantization_projection_grad(
    latent: &[f32],
    projected: &[f32],
    scaled: &[f32],
    out: usize,
    weight: f32,
) -> Vec<f64> {
    let k = (latent.len() / out.max(1)).max(1);
    let mut sums = vec![0.0f64; k];
    for (i, ((&w, &v), &a)) in latent.iter().zip(projected).zip(scaled).enumerate() {
        sums[i % k] += (v as f64 - a as f64) * w as f64;
    }
    sums.iter().map(|s| 2.0 * weight as f64 * s).collect()
}

/// Per channel of `x` (`[N, C, inner]`): `μ_c` and `σ_c = √(var_c + ε)`.
fn mean_and_std(par: Par, x: &[f32], c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let (mean, var) = norm::moments(par, x, c, inner);
    let std = var.iter().map(|v| (v + DISTRIBUTION_EPS).sqrt()).collect();
    (mean, std)
}

/// `λ·(1/C)·Σ_c terms(μ_c, σ_c)`.
pub(super) fn distribution_loss(par: Par, x: &[f32], c: usize, inner: usize, weight: f32) -> f32 {
    let (mean, std) = mean_and_std(par, x, c, inner);
    let total: f64 = mean
        .iter()
        .zip(&std)
        .map(|(&m, &s)| distribution_terms(m, s).0)
        .sum();
    (weight as f64 * total / c.max(1) as f64) as f32
}

/// `dx = (λ/C)·(∂L/∂μ_c / M + ∂L/∂σ_c·(x − μ_c)/(M·σ_c))`, `M = N·inner`.
pub(super) fn distribution_grad(
    par: Par,
    x: &[f32],
    c: usize,
    inner: usize,
    weight: f32,
    dx: &mut [f32],
) {
    let (mean, std) = mean_and_std(par, x, c, inner);
    let m = x.len() / c.max(1);
    let scale = weight as f64 / c.max(1) as f64 / m.max(1) as f64;
    // Per channel: dx = a_c + b_c·(x − μ_c), in f32.
    let mut a = vec![0.0f32; c];
    let mut b = vec![0.0f32; c];
    let mut mu = vec![0.0f32; c];
    for ch in 0..c {
        let (_, d_mu, d_sigma) = distribution_terms(mean[ch], std[ch]);
        a[ch] = (scale * d_mu) as f32;
        b[ch] = (scale * d_sigma / std[ch]) as f32;
        mu[ch] = mean[ch] as f32;
    }
    let sample = c * inner;
    par.rows(dx, sample.max(1), x.len(), |s0, d| {
        let xs = &x[s0 * sample..][..d.len()];
        for (i, (dp, xp)) in d
            .chunks_exact_mut(inner.max(1))
            .zip(xs.chunks_exact(inner.max(1)))
            .enumerate()
        {
            let ch = i % c;
            for (g, &v) in dp.iter_mut().zip(xp) {
                *g = a[ch] + b[ch] * (v - mu[ch]);
            }
        }
    });
}
