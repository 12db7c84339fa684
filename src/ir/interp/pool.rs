//! Pooling: max and average windows, global average.

use super::layers::{dims4, out_size};
use crate::ir::ops::Pool;
use crate::ir::params::Tensor;

/// `maxpool`: `y[n,c,i,j] = max_{u<kh, v<kw} x[n, c, i·sh + u − ph, j·sw + v − pw]`
/// over the positions inside the input: padding is `−∞` and never wins
/// (PyTorch). A NaN never wins either (comparisons with it are false).
pub(super) fn maxpool(x: &Tensor, p: &Pool) -> Tensor {
    pool(x, p, |window| {
        let mut m = f32::NEG_INFINITY;
        for v in window {
            if v > m {
                m = v;
            }
        }
        m
    })
}

/// `avgpool`: `y[n,c,i,j] = (Σ_{u<kh, v<kw} xpad[n, c, i·sh + u − ph, j·sw + v − pw]) / (kh·kw)`
/// with zero padding counted in the divisor (PyTorch `count_include_pad=True`).
pub(super) fn avgpool(x: &Tensor, p: &Pool) -> Tensor {
    let area = (p.kernel[0] * p.kernel[1]) as f32;
    pool(x, p, |window| {
        let mut sum = 0.0f32;
        for v in window {
            sum += v;
        }
        sum / area
    })
}

/// Applies `reduce` to the values of each pooling window that lie inside the
/// input, visited row by row.
pub(super) fn pool(
    x: &Tensor,
    p: &Pool,
    reduce: impl Fn(&mut dyn Iterator<Item = f32>) -> f32,
) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [ph, pw] = p.pad;
    let oh = out_size(h, kh, sh, ph, 1);
    let ow = out_size(w, kw, sw, pw, 1);
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let xp = &x.data[plane * h * w..][..h * w];
        for i in 0..oh {
            // Input rows i·sh − ph .. i·sh − ph + kh, clipped to the input.
            let rows = (i * sh).saturating_sub(ph)..(i * sh + kh).saturating_sub(ph).min(h);
            for j in 0..ow {
                let cols = (j * sw).saturating_sub(pw)..(j * sw + kw).saturating_sub(pw).min(w);
                let mut window = rows
                    .clone()
                    .flat_map(|r| cols.clone().map(move |col| xp[r * w + col]));
                y.push(reduce(&mut window));
            }
        }
    }
    Tensor {
        shape: vec![n, c, oh, ow],
        data: y,
    }
}

/// `global_avgpool`: `y[n,c] = (Σ_{i,j} x[n,c,i,j]) / (H·W)`.
pub(super) fn global_avgpool(x: &Tensor) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let area = h * w;
    let data = (0..n * c)
        .map(|plane| {
            let sum: f32 = x.data[plane * area..][..area].iter().sum();
            sum / area as f32
        })
        .collect();
    Tensor {
        shape: vec![n, c],
        data,
    }
}
