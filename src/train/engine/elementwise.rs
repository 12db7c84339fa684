//! Elementwise and per-channel ops, forward and backward.
//!
//! Each is one pass over contiguous memory, written as a plain loop over
//! slices the compiler vectorises, and split over the threads in contiguous
//! element (or sample) ranges when large enough. Arithmetic is the
//! interpreter's, operation for operation, so these ops add no rounding
//! difference of their own; the per-channel reductions (bias, PReLU slope and
//! `choose` weights) accumulate in f64 like the interpreter's.

use super::par::Par;
use crate::ir::ops::SignGrad;

/// SwishSign's β, as the interpreter uses it.
const SWISH_BETA: f32 = 5.0;

/// `y[i] = f(x[i])`.
pub(super) fn map(par: Par, x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    par.rows(y, 1, x.len(), |i0, ys| {
        for (d, &v) in ys.iter_mut().zip(&x[i0..]) {
            *d = f(v);
        }
    });
}

/// `y[i] = f(a[i], b[i])`.
pub(super) fn zip(
    par: Par,
    a: &[f32],
    b: &[f32],
    y: &mut [f32],
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) {
    par.rows(y, 1, a.len(), |i0, ys| {
        for ((d, &u), &v) in ys.iter_mut().zip(&a[i0..]).zip(&b[i0..]) {
            *d = f(u, v);
        }
    });
}

/// `y[n, c, ·] = f(c, x[n, c, ·])` over `[N, C, inner]` values.
pub(super) fn map_channels(
    par: Par,
    x: &[f32],
    c: usize,
    inner: usize,
    y: &mut [f32],
    f: impl Fn(usize, f32) -> f32 + Sync + Send,
) {
    let sample = c * inner;
    par.rows(y, sample, x.len(), |s0, ys| {
        for (i, row) in ys.chunks_mut(inner.max(1)).enumerate() {
            let ch = i % c.max(1);
            let src = &x[s0 * sample + i * inner..][..row.len()];
            for (d, &v) in row.iter_mut().zip(src) {
                *d = f(ch, v);
            }
        }
    });
}

/// `sign`: `+1` if `x >= 0`, else `−1` (NaN gives `−1`).
pub(super) fn sign_of(v: f32) -> f32 {
    if v >= 0.0 { 1.0 } else { -1.0 }
}

/// What `sign` passes back in place of its derivative at `x` (the
/// interpreter's formulas).
pub(super) fn sign_grad(estimator: SignGrad, x: f32) -> f32 {
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

/// `dx = dy · sign_grad(x)`, one loop per estimator (so each vectorises).
pub(super) fn sign_backward(par: Par, estimator: SignGrad, dy: &[f32], x: &[f32], dx: &mut [f32]) {
    match estimator {
        SignGrad::Ste => zip(par, dy, x, dx, |d, v| if v.abs() <= 1.0 { d } else { 0.0 }),
        SignGrad::Approx => zip(par, dy, x, dx, |d, v| {
            if v.abs() <= 1.0 {
                d * (2.0 - 2.0 * v.abs())
            } else {
                0.0
            }
        }),
        SignGrad::Swish => zip(par, dy, x, dx, |d, v| d * sign_grad(SignGrad::Swish, v)),
    }
}

/// `y = x_0 + x_1 + …`, left to right.
pub(super) fn add(par: Par, xs: &[&[f32]], y: &mut [f32]) {
    par.rows(y, 1, y.len() * xs.len(), |i0, ys| {
        let n = ys.len();
        ys.copy_from_slice(&xs[0][i0..i0 + n]);
        for x in &xs[1..] {
            for (d, &v) in ys.iter_mut().zip(&x[i0..i0 + n]) {
                *d += v;
            }
        }
    });
}

/// `concat` along the channel axis: per sample, each operand's sample in turn.
pub(super) fn concat(par: Par, xs: &[&[f32]], sizes: &[usize], y: &mut [f32]) {
    let total: usize = sizes.iter().sum();
    par.rows(y, total, y.len(), |s0, ys| {
        for (sl, row) in ys.chunks_mut(total.max(1)).enumerate() {
            let mut off = 0;
            for (x, &size) in xs.iter().zip(sizes) {
                row[off..off + size].copy_from_slice(&x[(s0 + sl) * size..][..size]);
                off += size;
            }
        }
    });
}

/// The gradient of operand `k` of a concat: its channels of `dy`.
pub(super) fn concat_grad(dy: &[f32], sizes: &[usize], k: usize, dx: &mut [f32]) {
    let total: usize = sizes.iter().sum();
    let offset: usize = sizes[..k].iter().sum();
    let size = sizes[k];
    for (s, row) in dx.chunks_mut(size.max(1)).enumerate() {
        row.copy_from_slice(&dy[s * total + offset..][..size]);
    }
}

/// `slice_channels` and `shuffle_channels`: output channel `j` of each
/// sample is input channel `map[j]`, planes of `plane` values.
pub(super) fn gather_channels(
    par: Par,
    x: &[f32],
    map: &[usize],
    channels: usize,
    plane: usize,
    y: &mut [f32],
) {
    let row = map.len() * plane;
    par.rows(y, row, y.len(), |s0, ys| {
        for (sl, out) in ys.chunks_mut(row.max(1)).enumerate() {
            let sample = &x[(s0 + sl) * channels * plane..][..channels * plane];
            for (dst, &src) in out.chunks_mut(plane.max(1)).zip(map) {
                dst.copy_from_slice(&sample[src * plane..][..plane]);
            }
        }
    });
}

/// The gradient of a channel gather: each output channel's gradient goes
/// back to its source channel (`map` is one-to-one, so nothing is summed);
/// channels no output took get zero.
pub(super) fn scatter_channels(
    dy: &[f32],
    map: &[usize],
    channels: usize,
    plane: usize,
    dx: &mut [f32],
) {
    dx.fill(0.0);
    let row = map.len() * plane;
    for (s, d) in dy.chunks(row.max(1)).enumerate() {
        let sample = &mut dx[s * channels * plane..][..channels * plane];
        for (src, &to) in d.chunks(plane.max(1)).zip(map) {
            sample[to * plane..][..plane].copy_from_slice(src);
        }
    }
}

/// `softmax(α)` as the interpreter computes it.
pub(super) fn softmax(alpha: &[f32]) -> Vec<f32> {
    let m = alpha.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = alpha.iter().map(|&a| (a - m).exp()).collect();
    let total: f32 = e.iter().sum();
    e.iter().map(|&v| v / total).collect()
}

/// `choose`: `y = Σ_i softmax(α)_i · x_i`, from zero, left to right.
pub(super) fn choose(par: Par, xs: &[&[f32]], alpha: &[f32], y: &mut [f32]) {
    let p = softmax(alpha);
    par.rows(y, 1, y.len() * xs.len(), |i0, ys| {
        let n = ys.len();
        ys.fill(0.0);
        for (x, &w) in xs.iter().zip(&p) {
            for (d, &v) in ys.iter_mut().zip(&x[i0..i0 + n]) {
                *d += w * v;
            }
        }
    });
}

/// `dα_j = p_j·(⟨dy, x_j⟩ − Σ_i p_i·⟨dy, x_i⟩)` with f64 inner products.
pub(super) fn choose_alpha_grad(par: Par, xs: &[&[f32]], dy: &[f32], alpha: &[f32]) -> Vec<f32> {
    let p = softmax(alpha);
    let inner: Vec<f64> = par.map(xs.len(), dy.len() * xs.len(), |j| {
        xs[j]
            .iter()
            .zip(dy)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
    });
    let mixed: f64 = p.iter().zip(&inner).map(|(&pi, &v)| pi as f64 * v).sum();
    p.iter()
        .zip(&inner)
        .map(|(&pj, &v)| (pj as f64 * (v - mixed)) as f32)
        .collect()
}

/// `Σ_{n, spatial} v[n, c, ·]` per channel, in f64 (bias gradients).
pub(super) fn channel_sums(v: &[f32], c: usize, inner: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; c];
    if inner == 1 {
        for row in v.chunks(c.max(1)) {
            for (s, &x) in sum.iter_mut().zip(row) {
                *s += x as f64;
            }
        }
    } else {
        for (i, plane) in v.chunks(inner.max(1)).enumerate() {
            sum[i % c] += plane.iter().map(|&x| x as f64).sum::<f64>();
        }
    }
    sum
}

/// `Σ dy·dot` per channel of `[N, C, inner]` values, in f64: the gradient of
/// a learned per-channel scale of `y = α_c·dot`.
pub(super) fn channel_dots(dy: &[f32], dot: &[f32], c: usize, inner: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; c];
    for (i, (dp, vp)) in dy
        .chunks(inner.max(1))
        .zip(dot.chunks(inner.max(1)))
        .enumerate()
    {
        sum[i % c.max(1)] += dp
            .iter()
            .zip(vp)
            .map(|(&d, &v)| d as f64 * v as f64)
            .sum::<f64>();
    }
    sum
}

/// The PReLU slope gradient `Σ dy·x` over the negative `x`, per channel, f64.
pub(super) fn prelu_slope_grad(x: &[f32], dy: &[f32], c: usize, inner: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; c];
    for (i, (xp, dp)) in x
        .chunks(inner.max(1))
        .zip(dy.chunks(inner.max(1)))
        .enumerate()
    {
        let mut acc = 0.0f64;
        for (&v, &d) in xp.iter().zip(dp) {
            if v < 0.0 {
                acc += d as f64 * v as f64;
            }
        }
        sum[i % c] += acc;
    }
    sum
}

/// `dx[n, c, ·] = dy` where `x >= 0`, else `slope_c · dy`.
pub(super) fn prelu_input_grad(
    par: Par,
    x: &[f32],
    dy: &[f32],
    slope: &[f32],
    inner: usize,
    dx: &mut [f32],
) {
    let c = slope.len();
    let sample = c * inner;
    par.rows(dx, sample, dx.len(), |s0, ds| {
        for (i, row) in ds.chunks_mut(inner.max(1)).enumerate() {
            let ch = i % c.max(1);
            let base = s0 * sample + i * inner;
            for ((d, &v), &g) in row.iter_mut().zip(&x[base..]).zip(&dy[base..]) {
                *d = if v < 0.0 { g * slope[ch] } else { g };
            }
        }
    });
}
