//! Pooling, forward and backward, and the loss.
//!
//! Pools work plane by plane (`[N·C]` planes of `H×W`), split over the
//! threads in runs of whole planes; the windows are the interpreter's (max:
//! padding never wins, the first maximum in row-major order takes the
//! gradient; avg: padding counts in the divisor). The cross-entropy mirrors
//! the interpreter's f64 arithmetic per sample: it touches only `N·K` values.

use super::par::Par;
use crate::ir::ops::Pool;

/// A pooling window's sizes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Window {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
}

impl Window {
    /// The window of `p` from `[C, H, W]` to `[C, OH, OW]`.
    pub fn new(p: &Pool, x: &[usize], y: &[usize]) -> Window {
        Window {
            h: x[1],
            w: x[2],
            oh: y[1],
            ow: y[2],
            kh: p.kernel[0],
            kw: p.kernel[1],
            sh: p.stride[0],
            sw: p.stride[1],
            ph: p.pad[0],
            pw: p.pad[1],
        }
    }

    fn rows(&self, i: usize) -> std::ops::Range<usize> {
        (i * self.sh).saturating_sub(self.ph)
            ..(i * self.sh + self.kh).saturating_sub(self.ph).min(self.h)
    }

    fn cols(&self, j: usize) -> std::ops::Range<usize> {
        (j * self.sw).saturating_sub(self.pw)
            ..(j * self.sw + self.kw).saturating_sub(self.pw).min(self.w)
    }

    /// Whether every window lies inside the input (no padding): then the
    /// windows need no clipping.
    fn unpadded(&self) -> bool {
        self.ph == 0 && self.pw == 0
    }

    /// The first position of the maximum of the unpadded window `(i, j)`
    /// of plane `xp`, in row-major window order (a NaN never wins), and the
    /// maximum; `None` if every value is NaN or −∞.
    #[inline]
    fn argmax(&self, xp: &[f32], i: usize, j: usize) -> (Option<usize>, f32) {
        let mut m = f32::NEG_INFINITY;
        let mut best = None;
        for u in 0..self.kh {
            let r0 = (i * self.sh + u) * self.w + j * self.sw;
            for (v, &x) in xp[r0..r0 + self.kw].iter().enumerate() {
                if x > m {
                    m = x;
                    best = Some(r0 + v);
                }
            }
        }
        (best, m)
    }

    /// Whether this is the common 2×2 window with stride 2 and no padding:
    /// windows tile the input, so each input position has one window.
    fn tiles_2x2(&self) -> bool {
        self.unpadded() && self.kh == 2 && self.kw == 2 && self.sh == 2 && self.sw == 2
    }

    /// Max pooling forward.
    pub fn max(&self, par: Par, x: &[f32], y: &mut [f32]) {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        if self.tiles_2x2() {
            par.rows(y, ohw, x.len(), |p0, ys| {
                for (pl, yp) in ys.chunks_mut(ohw.max(1)).enumerate() {
                    let xp = &x[(p0 + pl) * hw..][..hw];
                    for (i, yr) in yp.chunks_exact_mut(self.ow).enumerate() {
                        let r0 = &xp[2 * i * self.w..][..2 * self.ow];
                        let r1 = &xp[(2 * i + 1) * self.w..][..2 * self.ow];
                        for ((d, a), b) in yr
                            .iter_mut()
                            .zip(r0.chunks_exact(2))
                            .zip(r1.chunks_exact(2))
                        {
                            // The window in row-major order; `>` as the
                            // interpreter (the first maximum, NaN never wins).
                            let mut m = f32::NEG_INFINITY;
                            for v in [a[0], a[1], b[0], b[1]] {
                                m = if v > m { v } else { m };
                            }
                            *d = m;
                        }
                    }
                }
            });
            return;
        }
        if self.unpadded() {
            par.rows(y, ohw, x.len(), |p0, ys| {
                for (pl, yp) in ys.chunks_mut(ohw.max(1)).enumerate() {
                    let xp = &x[(p0 + pl) * hw..][..hw];
                    for i in 0..self.oh {
                        for j in 0..self.ow {
                            yp[i * self.ow + j] = self.argmax(xp, i, j).1;
                        }
                    }
                }
            });
            return;
        }
        par.rows(y, ohw, x.len(), |p0, ys| {
            for (pl, yp) in ys.chunks_mut(ohw.max(1)).enumerate() {
                let xp = &x[(p0 + pl) * hw..][..hw];
                for i in 0..self.oh {
                    let rows = self.rows(i);
                    for j in 0..self.ow {
                        let mut m = f32::NEG_INFINITY;
                        for r in rows.clone() {
                            for &v in &xp[r * self.w..][self.cols(j)] {
                                if v > m {
                                    m = v;
                                }
                            }
                        }
                        yp[i * self.ow + j] = m;
                    }
                }
            }
        });
    }

    /// Average pooling forward (sum in row-major window order, then divide).
    pub fn avg(&self, par: Par, x: &[f32], y: &mut [f32]) {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        let area = (self.kh * self.kw) as f32;
        par.rows(y, ohw, x.len(), |p0, ys| {
            for (pl, yp) in ys.chunks_mut(ohw.max(1)).enumerate() {
                let xp = &x[(p0 + pl) * hw..][..hw];
                for i in 0..self.oh {
                    let rows = self.rows(i);
                    for j in 0..self.ow {
                        let mut sum = 0.0f32;
                        for r in rows.clone() {
                            for &v in &xp[r * self.w..][self.cols(j)] {
                                sum += v;
                            }
                        }
                        yp[i * self.ow + j] = sum / area;
                    }
                }
            }
        });
    }

    /// Max pooling backward: each output's gradient to its first maximum.
    pub fn max_grad(&self, par: Par, x: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        if self.tiles_2x2() {
            par.rows(dx, hw, x.len(), |p0, ds| {
                for (pl, dp) in ds.chunks_mut(hw.max(1)).enumerate() {
                    let xp = &x[(p0 + pl) * hw..][..hw];
                    let dyp = &dy[(p0 + pl) * ohw..][..ohw];
                    // Input rows and columns the windows do not cover (odd H
                    // or W) get 0; the windows write every position they cover.
                    if self.h % 2 == 1 || self.w % 2 == 1 {
                        dp.fill(0.0);
                    }
                    for (i, dyr) in dyp.chunks_exact(self.ow).enumerate() {
                        let (top, bottom) = dp[2 * i * self.w..][..2 * self.w].split_at_mut(self.w);
                        let x0 = &xp[2 * i * self.w..][..2 * self.ow];
                        let x1 = &xp[(2 * i + 1) * self.w..][..2 * self.ow];
                        for ((((d0, d1), a), b), &g) in top[..2 * self.ow]
                            .chunks_exact_mut(2)
                            .zip(bottom[..2 * self.ow].chunks_exact_mut(2))
                            .zip(x0.chunks_exact(2))
                            .zip(x1.chunks_exact(2))
                            .zip(dyr)
                        {
                            // The first maximum in row-major order (`>`, so
                            // a NaN never wins) takes the gradient.
                            let mut m = f32::NEG_INFINITY;
                            let mut best = 4;
                            for (k, v) in [a[0], a[1], b[0], b[1]].into_iter().enumerate() {
                                if v > m {
                                    m = v;
                                    best = k;
                                }
                            }
                            let pick = |k: usize| if best == k { g } else { 0.0 };
                            d0[0] = pick(0);
                            d0[1] = pick(1);
                            d1[0] = pick(2);
                            d1[1] = pick(3);
                        }
                    }
                }
            });
            return;
        }
        par.rows(dx, hw, x.len(), |p0, ds| {
            ds.fill(0.0);
            for (pl, dp) in ds.chunks_mut(hw.max(1)).enumerate() {
                let xp = &x[(p0 + pl) * hw..][..hw];
                let dyp = &dy[(p0 + pl) * ohw..][..ohw];
                if self.unpadded() {
                    for i in 0..self.oh {
                        for j in 0..self.ow {
                            if let (Some(b), _) = self.argmax(xp, i, j) {
                                dp[b] += dyp[i * self.ow + j];
                            }
                        }
                    }
                    continue;
                }
                for i in 0..self.oh {
                    let rows = self.rows(i);
                    for j in 0..self.ow {
                        let mut best: Option<usize> = None;
                        let mut m = f32::NEG_INFINITY;
                        for r in rows.clone() {
                            for col in self.cols(j) {
                                if xp[r * self.w + col] > m {
                                    m = xp[r * self.w + col];
                                    best = Some(r * self.w + col);
                                }
                            }
                        }
                        if let Some(b) = best {
                            dp[b] += dyp[i * self.ow + j];
                        }
                    }
                }
            }
        });
    }

    /// Average pooling backward: `dy / area` to every in-input position.
    pub fn avg_grad(&self, par: Par, dy: &[f32], dx: &mut [f32]) {
        let (hw, ohw) = (self.h * self.w, self.oh * self.ow);
        let area = (self.kh * self.kw) as f32;
        par.rows(dx, hw, dx.len(), |p0, ds| {
            ds.fill(0.0);
            for (pl, dp) in ds.chunks_mut(hw.max(1)).enumerate() {
                let dyp = &dy[(p0 + pl) * ohw..][..ohw];
                for i in 0..self.oh {
                    let rows = self.rows(i);
                    for j in 0..self.ow {
                        let d = dyp[i * self.ow + j] / area;
                        for r in rows.clone() {
                            for v in &mut dp[r * self.w..][self.cols(j)] {
                                *v += d;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// `global_avgpool`: the mean of each plane (f32 sum in order, then divide).
pub(super) fn global_avg(par: Par, x: &[f32], area: usize, y: &mut [f32]) {
    par.rows(y, 1, x.len(), |p0, ys| {
        for (i, d) in ys.iter_mut().enumerate() {
            let sum: f32 = x[(p0 + i) * area..][..area].iter().sum();
            *d = sum / area as f32;
        }
    });
}

/// The gradient of `global_avgpool`: `dy / area` over each plane.
pub(super) fn global_avg_grad(par: Par, dy: &[f32], area: usize, dx: &mut [f32]) {
    let a = area as f32;
    par.rows(dx, area, dx.len(), |p0, ds| {
        for (i, plane) in ds.chunks_mut(area.max(1)).enumerate() {
            plane.fill(dy[p0 + i] / a);
        }
    });
}

/// The smoothed target `(1 − ε)·t + ε/K`.
fn smoothed(t: &[f32], smoothing: f32) -> Vec<f64> {
    let k = t.len() as f64;
    let e = smoothing as f64;
    t.iter().map(|&v| (1.0 - e) * v as f64 + e / k).collect()
}

/// `log Σ exp(z)`, shifted by the max.
fn log_sum_exp(z: &[f32]) -> f64 {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

/// `cross_entropy`: the batch mean of `−Σ_k t'_k · log softmax(z)_k`.
pub(super) fn cross_entropy(z: &[f32], t: &[f32], k: usize, smoothing: f32) -> f32 {
    let n = z.len().checked_div(k).unwrap_or(0);
    let mut total = 0.0f64;
    for s in 0..n {
        let zs = &z[s * k..][..k];
        let ts = smoothed(&t[s * k..][..k], smoothing);
        let lse = log_sum_exp(zs);
        total -= zs
            .iter()
            .zip(&ts)
            .map(|(&zv, &tv)| tv * (zv as f64 - lse))
            .sum::<f64>();
    }
    (total / n.max(1) as f64) as f32
}

/// `d loss / d z = (softmax(z)·Σ t' − t') / N`.
pub(super) fn cross_entropy_grad(z: &[f32], t: &[f32], k: usize, smoothing: f32, dz: &mut [f32]) {
    let n = z.len().checked_div(k).unwrap_or(0);
    for s in 0..n {
        let zs = &z[s * k..][..k];
        let ts = smoothed(&t[s * k..][..k], smoothing);
        let lse = log_sum_exp(zs);
        let mass: f64 = ts.iter().sum();
        for ((d, &zv), &tv) in dz[s * k..][..k].iter_mut().zip(zs).zip(&ts) {
            *d = (((zv as f64 - lse).exp() * mass - tv) / n as f64) as f32;
        }
    }
}
