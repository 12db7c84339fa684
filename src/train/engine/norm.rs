//! Batch normalisation on batch statistics, its gradients, and the
//! running-statistic updates.
//!
//! The forward pass computes each channel's batch mean and biased variance
//! once (two passes, accumulated in f64 like the interpreter, so the
//! statistics round to the same f32 values) and keeps them in the
//! batchnorm's cache for its `grad` and `running_stat` nodes. The three
//! `grad` nodes of a batchnorm (γ, β, input) all need `Σ dy` and `Σ dy·x̂`;
//! the first one to run computes both, the others reuse them. Elementwise
//! work is split over samples; the statistics over channel blocks.

use super::par::Par;

/// What one batchnorm node keeps between its forward step and its
/// gradients, within a run.
#[derive(Clone, Debug, Default)]
pub(super) struct BnCache {
    /// Per-channel mean and divisor `sqrt(σ² + eps)` used by the forward.
    pub mean: Vec<f32>,
    /// See `mean`.
    pub std: Vec<f32>,
    /// The batch mean and biased variance in f64 (for `running_stat`).
    pub mean64: Vec<f64>,
    /// See `mean64`.
    pub var64: Vec<f64>,
    /// Whether `mean64`/`var64` hold this run's batch statistics.
    pub moments: bool,
    /// `(dy value, Σ dy, Σ dy·x̂)`, once a gradient step computed them.
    pub sums: Option<(usize, Vec<f64>, Vec<f64>)>,
}

/// `Σ v` in f64 with eight independent accumulators (so it vectorises; the
/// reassociation changes the f64 result by a few ulps, far below f32's).
fn sum64(v: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f(x);
        }
    }
    let mut total: f64 = acc.iter().sum();
    for &x in rest {
        total += f(x);
    }
    total
}

/// The batch mean and biased variance of each channel of `x` (`[N, C, inner]`),
/// two passes in f64.
pub(super) fn moments(par: Par, x: &[f32], c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len().checked_div(c * inner).unwrap_or(0);
    let m = (n * inner) as f64;
    if inner == 1 {
        // `[N, C]`: accumulate whole rows, one accumulator per channel.
        let mut sum = vec![0.0f64; c];
        for row in x.chunks_exact(c.max(1)) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += v as f64;
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
        let mut sq = vec![0.0f64; c];
        for row in x.chunks_exact(c.max(1)) {
            for ((s, &v), &mu) in sq.iter_mut().zip(row).zip(&mean) {
                let d = v as f64 - mu;
                *s += d * d;
            }
        }
        return (mean, sq.iter().map(|s| s / m).collect());
    }
    let stats = par.map(c, x.len(), |ch| {
        let plane = |s: usize| &x[(s * c + ch) * inner..][..inner];
        let sum: f64 = (0..n).map(|s| sum64(plane(s), |v| v as f64)).sum();
        let mean = sum / m;
        let sq: f64 = (0..n)
            .map(|s| {
                sum64(plane(s), |v| {
                    let d = v as f64 - mean;
                    d * d
                })
            })
            .sum();
        (mean, sq / m)
    });
    stats.into_iter().unzip()
}

/// `y = γ_c · (x − μ_c) / std_c + β_c`, the interpreter's order of operations.
#[allow(clippy::too_many_arguments)]
pub(super) fn normalise(
    par: Par,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    std: &[f32],
    inner: usize,
    y: &mut [f32],
) {
    let c = gamma.len();
    let sample = c * inner;
    par.rows(y, sample, x.len(), |s0, ys| {
        let xs = &x[s0 * sample..][..ys.len()];
        if inner == 1 {
            for (yr, xr) in ys.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
                for (((((d, &v), &g), &b), &mu), &sd) in yr
                    .iter_mut()
                    .zip(xr)
                    .zip(gamma)
                    .zip(beta)
                    .zip(mean)
                    .zip(std)
                {
                    *d = g * (v - mu) / sd + b;
                }
            }
            return;
        }
        for (i, (yp, xp)) in ys
            .chunks_exact_mut(inner)
            .zip(xs.chunks_exact(inner))
            .enumerate()
        {
            let ch = i % c;
            let (g, b, mu, sd) = (gamma[ch], beta[ch], mean[ch], std[ch]);
            for (d, &v) in yp.iter_mut().zip(xp) {
                *d = g * (v - mu) / sd + b;
            }
        }
    });
}

/// `(Σ dy, Σ dy·x̂)` per channel, `x̂ = (x − μ)/std`, in f64.
pub(super) fn grad_sums(
    par: Par,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    std: &[f32],
    inner: usize,
) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    let n = x.len().checked_div(c * inner).unwrap_or(0);
    let inv: Vec<f64> = std.iter().map(|&s| 1.0 / s as f64).collect();
    let mu: Vec<f64> = mean.iter().map(|&m| m as f64).collect();
    if inner == 1 {
        let (mut db, mut dg) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (xr, dr) in x.chunks_exact(c.max(1)).zip(dy.chunks_exact(c.max(1))) {
            for (((((b, g), &v), &d), &m), &iv) in db
                .iter_mut()
                .zip(dg.iter_mut())
                .zip(xr)
                .zip(dr)
                .zip(&mu)
                .zip(&inv)
            {
                let d = d as f64;
                *b += d;
                *g += d * ((v as f64 - m) * iv);
            }
        }
        return (db, dg);
    }
    let sums = par.map(c, x.len() * 2, |ch| {
        let (m, iv) = (mu[ch], inv[ch]);
        let (mut db, mut dg) = (0.0f64, 0.0f64);
        for smp in 0..n {
            let base = (smp * c + ch) * inner;
            let (xp, dp) = (&x[base..base + inner], &dy[base..base + inner]);
            let (mut b8, mut g8) = ([0.0f64; 8], [0.0f64; 8]);
            let mut i = 0;
            while i + 8 <= inner {
                for l in 0..8 {
                    let d = dp[i + l] as f64;
                    b8[l] += d;
                    g8[l] += d * ((xp[i + l] as f64 - m) * iv);
                }
                i += 8;
            }
            for j in i..inner {
                let d = dp[j] as f64;
                db += d;
                dg += d * ((xp[j] as f64 - m) * iv);
            }
            db += b8.iter().sum::<f64>();
            dg += g8.iter().sum::<f64>();
        }
        (db, dg)
    });
    sums.into_iter().unzip()
}

/// The input gradient: `γ/s · dy` on running statistics, and on batch
/// statistics `γ/s · (dy − Σdy/M − x̂·Σdy·x̂/M)`, in f64.
#[allow(clippy::too_many_arguments)]
pub(super) fn input_grad(
    par: Par,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    std: &[f32],
    sums: Option<(&[f64], &[f64])>,
    inner: usize,
    dx: &mut [f32],
) {
    let c = gamma.len();
    let m = x.len().checked_div(c).unwrap_or(0) as f64;
    let scale: Vec<f64> = (0..c).map(|ch| gamma[ch] as f64 / std[ch] as f64).collect();
    let inv: Vec<f64> = std.iter().map(|&s| 1.0 / s as f64).collect();
    let mu: Vec<f64> = mean.iter().map(|&v| v as f64).collect();
    let (mb, mg): (Vec<f64>, Vec<f64>) = match sums {
        Some((db, dg)) => (
            db.iter().map(|&v| v / m).collect(),
            dg.iter().map(|&v| v / m).collect(),
        ),
        None => (vec![0.0; c], vec![0.0; c]),
    };
    let sample = c * inner;
    // In f64, as the interpreter: the bracket cancels almost completely
    // where the batch statistics nearly determine the values (tiny
    // variance), and γ/s then amplifies whatever rounding is left.
    par.rows(dx, sample, dx.len() * 4, |s0, ds| {
        let xs = &x[s0 * sample..][..ds.len()];
        let dys = &dy[s0 * sample..][..ds.len()];
        if inner == 1 {
            for ((dr, xr), gr) in ds
                .chunks_exact_mut(c)
                .zip(xs.chunks_exact(c))
                .zip(dys.chunks_exact(c))
            {
                for ((((((d, &v), &gy), &k), &mu), &iv), (&b, &g)) in dr
                    .iter_mut()
                    .zip(xr)
                    .zip(gr)
                    .zip(&scale)
                    .zip(&mu)
                    .zip(&inv)
                    .zip(mb.iter().zip(&mg))
                {
                    let xh = (v as f64 - mu) * iv;
                    *d = (k * (gy as f64 - b - xh * g)) as f32;
                }
            }
            return;
        }
        for (i, ((dp, xp), gp)) in ds
            .chunks_exact_mut(inner)
            .zip(xs.chunks_exact(inner))
            .zip(dys.chunks_exact(inner))
            .enumerate()
        {
            let ch = i % c;
            let (k, m0, iv, b, g) = (scale[ch], mu[ch], inv[ch], mb[ch], mg[ch]);
            for ((d, &v), &gy) in dp.iter_mut().zip(xp).zip(gp) {
                let xh = (v as f64 - m0) * iv;
                *d = (k * (gy as f64 - b - xh * g)) as f32;
            }
        }
    });
}
