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

/// The batch mean and biased variance of each channel of `x` (`[N, C, inner]`).
pub(super) fn moments(par: Par, x: &[f32], c: usize, inner: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len().checked_div(c * inner).unwrap_or(0);
    let m = (n * inner) as f64;
    let stats = par.map(c, x.len(), |ch| {
        let plane = |s: usize| &x[(s * c + ch) * inner..][..inner];
        let mut sum = 0.0f64;
        for s in 0..n {
            for &v in plane(s) {
                sum += v as f64;
            }
        }
        let mean = sum / m;
        let mut sq = 0.0f64;
        for s in 0..n {
            for &v in plane(s) {
                let d = v as f64 - mean;
                sq += d * d;
            }
        }
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
    super::elementwise::map_channels(par, x, gamma.len(), inner, y, |ch, v| {
        gamma[ch] * (v - mean[ch]) / std[ch] + beta[ch]
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
    let sums = par.map(c, x.len() * 2, |ch| {
        let (mu, s) = (mean[ch] as f64, std[ch] as f64);
        let (mut db, mut dg) = (0.0f64, 0.0f64);
        for smp in 0..n {
            let base = (smp * c + ch) * inner;
            for (&v, &d) in x[base..base + inner].iter().zip(&dy[base..base + inner]) {
                let d = d as f64;
                db += d;
                dg += d * ((v as f64 - mu) / s);
            }
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
        for (i, row) in ds.chunks_mut(inner.max(1)).enumerate() {
            let ch = i % c.max(1);
            let base = s0 * sample + i * inner;
            let (k, mu, sd, b, g) = (scale[ch], mean[ch] as f64, std[ch] as f64, mb[ch], mg[ch]);
            for ((d, &v), &gy) in row.iter_mut().zip(&x[base..]).zip(&dy[base..]) {
                let xh = (v as f64 - mu) / sd;
                *d = (k * (gy as f64 - b - xh * g)) as f32;
            }
        }
    });
}
