//! An independent evaluator of onebit graphs, written from the op semantics
//! alone (the definitions in `ir-spec/ops.md`), without reading the
//! interpreter, and in a different formulation from it where a shared bug
//! would be likely:
//!
//! - binary layers run in the bit domain, as the JIT will: ±1 values are
//!   packed along channels into `u64` words with the Larq Compute Engine
//!   convention (bit 1 = −1, bit 0 = +1, little-endian, tail bits zero), and a
//!   dot product over `K` valid positions is `K − 2·popcount(a XOR w)`. `K` is
//!   counted per output position: a `pad_value=1` position holds +1 (bit 0) and
//!   counts, a `pad_value=0` position holds 0 and does not;
//! - real convolutions are im2col followed by a matrix product, dense layers a
//!   matrix product, all accumulated in `f64`;
//! - everything else is plain code over flat `[N, ...]` arrays.
//!
//! Every value carries, next to its `f64` elements, a *magnitude* `m ≥ |v|` per
//! element that scales the rounding error an f32 evaluation of the same
//! expression may make: `|v|` for exact values, and for a sum of terms
//! `√(local² + Σ (wᵢ·mᵢ)²)`, its own rounding scale `local = Σ|wᵢ·xᵢ| + |b|`
//! combined in quadrature with the magnitudes its operands carry in (see the
//! tolerance section of `tests/oracle.rs` for why). [`compare`] accepts
//! `|got − want| ≤ REL_TOL·max(m, |want|)`.
//!
//! `sign` is the one discontinuous op: when its input lies within the
//! tolerance of zero, a correct f32 implementation may land on either side.
//! [`evaluate`] then takes the interpreter's own bit for that element (if it
//! was given the interpreter's intermediate values) and counts the adoption;
//! everywhere else its bits are its own.

use std::collections::HashMap;

use onebit::ir::ops::{
    BConv2d, BinaryOutput, ConvGeometry, PadValue, Pool, Scale, WeightForm, WeightKind,
};
use onebit::ir::{Graph, NodeId, Op, Params, Tensor};

/// The relative tolerance of every comparison, applied to the magnitude `m`.
pub const REL_TOL: f64 = 1e-5;

/// A run-time value: `[N, ...]` elements in C order with their magnitudes.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Shape, batch first.
    pub shape: Vec<usize>,
    /// Elements.
    pub v: Vec<f64>,
    /// Magnitude of each element: an upper bound of `|v|` that also scales the
    /// rounding error an f32 evaluation may make.
    pub m: Vec<f64>,
}

impl Value {
    /// A value whose elements are exact: `m = |v|`.
    pub fn exact(shape: Vec<usize>, v: Vec<f64>) -> Value {
        let m = v.iter().map(|x| x.abs()).collect();
        Value { shape, v, m }
    }

    /// An f32 tensor read as exact values.
    pub fn from_tensor(t: &Tensor) -> Value {
        Value::exact(
            t.shape.clone(),
            t.data.iter().map(|&x| f64::from(x)).collect(),
        )
    }

    fn batch(&self) -> usize {
        self.shape[0]
    }

    fn sample_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    fn zeros(shape: Vec<usize>) -> Value {
        let len = shape.iter().product();
        Value {
            shape,
            v: vec![0.0; len],
            m: vec![0.0; len],
        }
    }
}

/// Whether `sign` of an element with value `x` and magnitude `m` may go either
/// way in a correct f32 implementation.
pub fn sign_is_ambiguous(x: f64, m: f64) -> bool {
    m > 0.0 && x.abs() <= REL_TOL * m
}

/// The tolerance for an element.
pub fn tolerance(v: f64, m: f64) -> f64 {
    REL_TOL * m.max(v.abs())
}

/// `[N, C, H, W]` of a rank-4 value.
fn dims4(x: &Value) -> Result<[usize; 4], String> {
    match x.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(format!(
            "expected an [N, C, H, W] value, found {:?}",
            x.shape
        )),
    }
}

/// One output length of a window op (floor mode).
fn window_len(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> usize {
    (input + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1
}

/// Position `o·stride + t·dilation − pad` in an input of length `len`, if inside.
fn tap(
    o: usize,
    t: usize,
    stride: usize,
    dilation: usize,
    pad: usize,
    len: usize,
) -> Option<usize> {
    (o * stride + t * dilation)
        .checked_sub(pad)
        .filter(|&p| p < len)
}

/// How [`matmul`] reads its f32 matrix.
#[derive(Clone, Copy, PartialEq)]
enum Entries {
    /// `a[i, k]`.
    Plain,
    /// `|a[i, k]|`.
    Abs,
    /// `a[i, k]²`.
    Squared,
}

/// The magnitude of a sum: its own rounding scale `local` (the sum of the
/// absolute values of its terms) combined in root-sum-square with the
/// magnitudes its terms carry in (`carried_sq`, the sum of their squares).
fn magnitude(local: f64, carried_sq: f64) -> f64 {
    (local * local + carried_sq).sqrt()
}

/// `c[i, q] += Σ_k a[i, k]·b[k, q]` for an `m×k` f32 matrix `a` (read as
/// `entries` says) and a `k×p` f64 matrix `b`, row-major.
fn matmul(a: &[f32], b: &[f64], (m, k, p): (usize, usize, usize), c: &mut [f64], entries: Entries) {
    assert_eq!(a.len(), m * k);
    assert_eq!(b.len(), k * p);
    assert_eq!(c.len(), m * p);
    for i in 0..m {
        let row = &mut c[i * p..(i + 1) * p];
        for kk in 0..k {
            let a = f64::from(a[i * k + kk]);
            let aik = match entries {
                Entries::Plain => a,
                Entries::Abs => a.abs(),
                Entries::Squared => a * a,
            };
            if aik == 0.0 {
                continue;
            }
            for (cv, bv) in row.iter_mut().zip(&b[kk * p..(kk + 1) * p]) {
                *cv += aik * bv;
            }
        }
    }
}

/// Real convolution: im2col per sample and group, then `W_g · col + bias`.
pub fn conv2d(
    x: &Value,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &ConvGeometry,
) -> Result<Value, String> {
    let [n, c, h, w] = dims4(x)?;
    let [kh, kw] = g.kernel;
    let (groups, o) = (g.groups, g.out_channels);
    let (cg, og) = (c / groups, o / groups);
    let oh = window_len(h, kh, g.stride[0], g.pad[0], g.dilation[0]);
    let ow = window_len(w, kw, g.stride[1], g.pad[1], g.dilation[1]);
    let (rows, p) = (cg * kh * kw, oh * ow);
    if weight.shape != [o, cg, kh, kw] {
        return Err(format!("conv2d weight has shape {:?}", weight.shape));
    }
    let mut out = Value::zeros(vec![n, o, oh, ow]);
    // The columns of x, |x| and m² (the rounding scale of each term and the
    // magnitude it carries in).
    let mut local = vec![0.0; n * o * p];
    let mut col = vec![0.0; rows * p];
    let mut col_abs = vec![0.0; rows * p];
    let mut col_m2 = vec![0.0; rows * p];
    for s in 0..n {
        for grp in 0..groups {
            for ci in 0..cg {
                let plane = ((s * c + grp * cg + ci) * h) * w;
                for u in 0..kh {
                    for v in 0..kw {
                        let row = (ci * kh + u) * kw + v;
                        for i in 0..oh {
                            let y = tap(i, u, g.stride[0], g.dilation[0], g.pad[0], h);
                            for j in 0..ow {
                                let xx = tap(j, v, g.stride[1], g.dilation[1], g.pad[1], w);
                                let at = row * p + i * ow + j;
                                let (a, m) = match (y, xx) {
                                    (Some(y), Some(xx)) => {
                                        (x.v[plane + y * w + xx], x.m[plane + y * w + xx])
                                    }
                                    _ => (0.0, 0.0),
                                };
                                (col[at], col_abs[at], col_m2[at]) = (a, a.abs(), m * m);
                            }
                        }
                    }
                }
            }
            let wg = &weight.data[grp * og * rows..(grp + 1) * og * rows];
            let block = (s * o + grp * og) * p..(s * o + (grp + 1) * og) * p;
            let dims = (og, rows, p);
            matmul(wg, &col, dims, &mut out.v[block.clone()], Entries::Plain);
            matmul(wg, &col_abs, dims, &mut local[block.clone()], Entries::Abs);
            matmul(wg, &col_m2, dims, &mut out.m[block], Entries::Squared);
        }
    }
    let elements = out.v.iter_mut().zip(&mut out.m).zip(&local);
    for (e, ((v, m), local)) in elements.enumerate() {
        let b = bias.map_or(0.0, |b| f64::from(b.data[(e / p) % o]));
        *v += b;
        *m = magnitude(local + b.abs(), *m);
    }
    Ok(out)
}

/// Packs ±1 values (`true` for −1) LCE-style into `words`: bit 1 for −1.
fn pack_into(values: impl Iterator<Item = bool>, words: &mut [u64]) {
    for (i, negative) in values.enumerate() {
        if negative {
            words[i / 64] |= 1 << (i % 64);
        }
    }
}

/// Checks that a bit operand holds only ±1.
fn check_bits(x: &Value, op: &str) -> Result<(), String> {
    match x.v.iter().position(|&b| b != 1.0 && b != -1.0) {
        Some(e) => Err(format!(
            "{op}: bit operand element {e} is {}, not ±1",
            x.v[e]
        )),
        None => Ok(()),
    }
}

/// `α_o = mean |W_o|` over the `per_out` latent weights of each output.
fn channel_scales(weight: &Tensor, outputs: usize) -> Vec<f64> {
    let per_out = weight.data.len() / outputs;
    weight
        .data
        .chunks(per_out)
        .map(|w| w.iter().map(|&x| f64::from(x).abs()).sum::<f64>() / per_out as f64)
        .collect()
}

/// The per-output factor of `scale=`: 1, `mean|W_o|`, or the learned
/// parameter `NODE.scale`.
fn scale_values(
    params: &Params,
    node: &str,
    scale: Scale,
    weight: &Tensor,
    outputs: usize,
) -> Result<Vec<f64>, String> {
    Ok(match scale {
        Scale::None => vec![1.0; outputs],
        Scale::Channel => channel_scales(weight, outputs),
        Scale::Learned => param(params, node, "scale")?
            .data
            .iter()
            .map(|&a| f64::from(a))
            .collect(),
    })
}

/// An exact dot product `dot` over `k` valid ±1 positions, scaled.
fn scaled(dot: i64, k: usize, scale: Scale, alpha: f64) -> (f64, f64) {
    match scale {
        Scale::None => (dot as f64, (dot as f64).abs()),
        // A learned α is a parameter, exact: only the one product rounds.
        Scale::Learned => (dot as f64 * alpha, (dot as f64 * alpha).abs()),
        // The popcount sum is exact; what rounds is α, a mean of K latent
        // weights (relative error ≈ √K·u, so ∝ α·|dot|), and, in an
        // implementation that accumulates α-scaled terms, the partial sums,
        // whose typical size is α·√K.
        Scale::Channel => (
            dot as f64 * alpha,
            alpha * ((dot as f64).abs() + (k as f64).sqrt()),
        ),
    }
}

/// Binary convolution in the bit domain: XOR + popcount over packed channels.
pub fn bconv2d(x: &Value, weight: &Tensor, a: &BConv2d) -> Result<Value, String> {
    let alpha = computed_scales(weight, a.geometry.out_channels, a.scale)?;
    bconv2d_scaled(x, weight, a, &alpha)
}

/// The factors of a scale computed from the weights alone (not `learned`).
fn computed_scales(weight: &Tensor, outputs: usize, scale: Scale) -> Result<Vec<f64>, String> {
    match scale {
        Scale::None => Ok(vec![1.0; outputs]),
        Scale::Channel => Ok(channel_scales(weight, outputs)),
        Scale::Learned => Err("`scale=learned` needs its parameter".into()),
    }
}

/// [`bconv2d`] with the per-output factors `alpha` of its `scale=`.
pub fn bconv2d_scaled(
    x: &Value,
    weight: &Tensor,
    a: &BConv2d,
    alpha: &[f64],
) -> Result<Value, String> {
    check_bits(x, "bconv2d")?;
    let g = &a.geometry;
    let [n, c, h, w] = dims4(x)?;
    let [kh, kw] = g.kernel;
    let (groups, o) = (g.groups, g.out_channels);
    let (cg, og) = (c / groups, o / groups);
    let words = cg.div_ceil(64);
    let oh = window_len(h, kh, g.stride[0], g.pad[0], g.dilation[0]);
    let ow = window_len(w, kw, g.stride[1], g.pad[1], g.dilation[1]);
    if weight.shape != [o, cg, kh, kw] {
        return Err(format!("bconv2d weight has shape {:?}", weight.shape));
    }
    // Activations: [N][G][H][W][words], channels of one group in one word run.
    let mut xp = vec![0u64; n * groups * h * w * words];
    for s in 0..n {
        for grp in 0..groups {
            for y in 0..h {
                for xx in 0..w {
                    let at = (((s * groups + grp) * h + y) * w + xx) * words;
                    let channel = |ci: usize| x.v[((s * c + grp * cg + ci) * h + y) * w + xx];
                    pack_into((0..cg).map(|ci| channel(ci) < 0.0), &mut xp[at..at + words]);
                }
            }
        }
    }
    // Weights: [O][kh][kw][words], the sign of each latent weight (w < 0 is −1).
    let mut wp = vec![0u64; o * kh * kw * words];
    for oo in 0..o {
        for u in 0..kh {
            for v in 0..kw {
                let at = ((oo * kh + u) * kw + v) * words;
                let latent = |ci: usize| weight.data[((oo * cg + ci) * kh + u) * kw + v];
                pack_into((0..cg).map(|ci| latent(ci) < 0.0), &mut wp[at..at + words]);
            }
        }
    }
    let mut out = Value::zeros(vec![n, o, oh, ow]);
    let mut e = 0;
    for s in 0..n {
        for (oo, &alpha_o) in alpha.iter().enumerate() {
            let grp = oo / og;
            for i in 0..oh {
                for j in 0..ow {
                    let (mut k, mut ones) = (0usize, 0u32);
                    for u in 0..kh {
                        let y = tap(i, u, g.stride[0], g.dilation[0], g.pad[0], h);
                        for v in 0..kw {
                            let xx = tap(j, v, g.stride[1], g.dilation[1], g.pad[1], w);
                            let wa = ((oo * kh + u) * kw + v) * words;
                            let wrow = &wp[wa..wa + words];
                            match (y, xx) {
                                (Some(y), Some(xx)) => {
                                    let xa = (((s * groups + grp) * h + y) * w + xx) * words;
                                    let xrow = &xp[xa..xa + words];
                                    k += cg;
                                    ones += xrow
                                        .iter()
                                        .zip(wrow)
                                        .map(|(a, b)| (a ^ b).count_ones())
                                        .sum::<u32>();
                                }
                                // +1 padding is bit 0: a XOR w = w.
                                _ if a.pad_value == PadValue::One => {
                                    k += cg;
                                    ones += wrow.iter().map(|b| b.count_ones()).sum::<u32>();
                                }
                                _ => {}
                            }
                        }
                    }
                    let dot = k as i64 - 2 * i64::from(ones);
                    (out.v[e], out.m[e]) = scaled(dot, k, a.scale, alpha_o);
                    e += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Real dense layer as the matrix product `W · Xᵀ` (`[O, K]·[K, N]`).
pub fn dense(x: &Value, weight: &Tensor, bias: Option<&Tensor>) -> Result<Value, String> {
    let (n, k) = (x.batch(), x.sample_len());
    let o = weight.shape[0];
    if weight.shape != [o, k] || x.shape.len() != 2 {
        return Err(format!(
            "dense weight {:?} does not fit input {:?}",
            weight.shape, x.shape
        ));
    }
    let transpose = |a: &[f64]| -> Vec<f64> {
        let mut t = vec![0.0; k * n];
        for s in 0..n {
            for kk in 0..k {
                t[kk * n + s] = a[s * k + kk];
            }
        }
        t
    };
    let abs: Vec<f64> = x.v.iter().map(|a| a.abs()).collect();
    let m2: Vec<f64> = x.m.iter().map(|m| m * m).collect();
    let mut ov = vec![0.0; o * n];
    let mut local = vec![0.0; o * n];
    let mut carried = vec![0.0; o * n];
    let dims = (o, k, n);
    matmul(
        &weight.data,
        &transpose(&x.v),
        dims,
        &mut ov,
        Entries::Plain,
    );
    matmul(
        &weight.data,
        &transpose(&abs),
        dims,
        &mut local,
        Entries::Abs,
    );
    matmul(
        &weight.data,
        &transpose(&m2),
        dims,
        &mut carried,
        Entries::Squared,
    );
    let mut out = Value::zeros(vec![n, o]);
    for s in 0..n {
        for oo in 0..o {
            let b = bias.map_or(0.0, |b| f64::from(b.data[oo]));
            out.v[s * o + oo] = ov[oo * n + s] + b;
            out.m[s * o + oo] = magnitude(local[oo * n + s] + b.abs(), carried[oo * n + s]);
        }
    }
    Ok(out)
}

/// Binary dense layer in the bit domain.
pub fn bdense(x: &Value, weight: &Tensor, scale: Scale) -> Result<Value, String> {
    let alpha = computed_scales(weight, weight.shape[0], scale)?;
    bdense_scaled(x, weight, scale, &alpha)
}

/// [`bdense`] with the per-output factors `alpha` of its `scale=`.
pub fn bdense_scaled(
    x: &Value,
    weight: &Tensor,
    scale: Scale,
    alpha: &[f64],
) -> Result<Value, String> {
    check_bits(x, "bdense")?;
    let (n, k) = (x.batch(), x.sample_len());
    let o = weight.shape[0];
    if weight.shape != [o, k] || x.shape.len() != 2 {
        return Err(format!(
            "bdense weight {:?} does not fit input {:?}",
            weight.shape, x.shape
        ));
    }
    let words = k.div_ceil(64);
    let mut xp = vec![0u64; n * words];
    for s in 0..n {
        let row = &x.v[s * k..(s + 1) * k];
        pack_into(
            row.iter().map(|&b| b < 0.0),
            &mut xp[s * words..(s + 1) * words],
        );
    }
    let mut wp = vec![0u64; o * words];
    for oo in 0..o {
        let row = &weight.data[oo * k..(oo + 1) * k];
        pack_into(
            row.iter().map(|&w| w < 0.0),
            &mut wp[oo * words..(oo + 1) * words],
        );
    }
    let mut out = Value::zeros(vec![n, o]);
    for s in 0..n {
        for oo in 0..o {
            let ones: u32 = xp[s * words..(s + 1) * words]
                .iter()
                .zip(&wp[oo * words..(oo + 1) * words])
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            let dot = k as i64 - 2 * i64::from(ones);
            (out.v[s * o + oo], out.m[s * o + oo]) = scaled(dot, k, scale, alpha[oo]);
        }
    }
    Ok(out)
}

/// `+1` if `x >= 0`, else `−1` (so `sign(−0.0) = +1`).
pub fn sign(x: &Value) -> Value {
    let v =
        x.v.iter()
            .map(|&a| if a >= 0.0 { 1.0 } else { -1.0 })
            .collect();
    Value::exact(x.shape.clone(), v)
}

/// The channel (first per-sample axis) of each flat element index.
fn channel_of(x: &Value) -> impl Fn(usize) -> usize + use<> {
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    move |e| (e / inner) % c
}

/// Inference batch normalisation over the first per-sample axis.
pub fn batchnorm(x: &Value, p: [&Tensor; 4], eps: f32) -> Value {
    let [gamma, beta, mean, var] = p.map(|t| &t.data);
    let ch = channel_of(x);
    let mut out = x.clone();
    for e in 0..x.v.len() {
        let c = ch(e);
        let (mu, b) = (f64::from(mean[c]), f64::from(beta[c]));
        let a = f64::from(gamma[c]) / (f64::from(var[c]) + f64::from(eps)).sqrt();
        out.v[e] = a * (x.v[e] - mu) + b;
        let local = a.abs() * (x.v[e].abs() + mu.abs()) + b.abs();
        out.m[e] = magnitude(local, (a * x.m[e]).powi(2));
    }
    out
}

/// `max(x, 0)`. A clearly negative input gives an exact zero.
pub fn relu(x: &Value) -> Value {
    let mut out = x.clone();
    for e in 0..x.v.len() {
        let (v, m) = (x.v[e], x.m[e]);
        if v <= 0.0 {
            out.v[e] = 0.0;
            out.m[e] = if v < -REL_TOL * m { 0.0 } else { m };
        }
    }
    out
}

/// `x` if `x >= 0`, else `a_c·x`.
pub fn prelu(x: &Value, slope: &Tensor) -> Value {
    let ch = channel_of(x);
    let mut out = x.clone();
    for e in 0..x.v.len() {
        let a = f64::from(slope.data[ch(e)]);
        let (v, m) = (x.v[e], x.m[e]);
        if v < 0.0 {
            out.v[e] = a * v;
            out.m[e] = a.abs() * m;
        }
        if v.abs() <= REL_TOL * m {
            // Either branch is right within rounding.
            out.m[e] = (1.0 + a.abs()) * m;
        }
    }
    out
}

/// `clamp(x, min, max)`. A clearly clamped input gives the bound exactly.
pub fn hardtanh(x: &Value, min: f32, max: f32) -> Value {
    let (lo, hi) = (f64::from(min), f64::from(max));
    let mut out = x.clone();
    for e in 0..x.v.len() {
        let (v, m) = (x.v[e], x.m[e]);
        let slack = REL_TOL * m;
        out.v[e] = v.clamp(lo, hi);
        out.m[e] = if v < lo - slack {
            lo.abs()
        } else if v > hi + slack {
            hi.abs()
        } else {
            m.max(out.v[e].abs())
        };
    }
    out
}

/// Max pooling (padding never wins) or average pooling (padding counts as
/// zeros, divisor `kh·kw`).
pub fn pool(x: &Value, p: &Pool, max: bool) -> Result<Value, String> {
    let [n, c, h, w] = dims4(x)?;
    let [kh, kw] = p.kernel;
    let oh = window_len(h, kh, p.stride[0], p.pad[0], 1);
    let ow = window_len(w, kw, p.stride[1], p.pad[1], 1);
    let mut out = Value::zeros(vec![n, c, oh, ow]);
    let mut e = 0;
    for plane in 0..n * c {
        let base = plane * h * w;
        for i in 0..oh {
            for j in 0..ow {
                let (mut best, mut best_m) = (f64::NEG_INFINITY, 0.0);
                let (mut sum, mut sum_abs, mut sum_m2) = (0.0, 0.0, 0.0);
                for u in 0..kh {
                    for v in 0..kw {
                        let (Some(y), Some(xx)) = (
                            tap(i, u, p.stride[0], 1, p.pad[0], h),
                            tap(j, v, p.stride[1], 1, p.pad[1], w),
                        ) else {
                            continue;
                        };
                        let (a, m) = (x.v[base + y * w + xx], x.m[base + y * w + xx]);
                        best = best.max(a);
                        // The max of near-equal values may be any of them.
                        best_m = f64::max(best_m, m);
                        sum += a;
                        sum_abs += a.abs();
                        sum_m2 += m * m;
                    }
                }
                if best == f64::NEG_INFINITY {
                    return Err("a pooling window lies wholly in the padding".into());
                }
                let area = (kh * kw) as f64;
                (out.v[e], out.m[e]) = if max {
                    (best, best_m)
                } else {
                    (sum / area, magnitude(sum_abs, sum_m2) / area)
                };
                e += 1;
            }
        }
    }
    Ok(out)
}

/// Mean over the spatial axes: `[N, C, H, W]` to `[N, C]`.
pub fn global_avgpool(x: &Value) -> Result<Value, String> {
    let [n, c, h, w] = dims4(x)?;
    let mut out = Value::zeros(vec![n, c]);
    for plane in 0..n * c {
        let r = plane * h * w..(plane + 1) * h * w;
        let area = (h * w) as f64;
        let local = x.v[r.clone()].iter().map(|a| a.abs()).sum::<f64>();
        let carried = x.m[r.clone()].iter().map(|m| m * m).sum::<f64>();
        out.v[plane] = x.v[r].iter().sum::<f64>() / area;
        out.m[plane] = magnitude(local, carried) / area;
    }
    Ok(out)
}

/// Elementwise sum.
pub fn add(args: &[&Value]) -> Value {
    let mut out = Value::zeros(args[0].shape.clone());
    for e in 0..out.v.len() {
        out.v[e] = args.iter().map(|x| x.v[e]).sum();
        let local = args.iter().map(|x| x.v[e].abs()).sum();
        out.m[e] = magnitude(local, args.iter().map(|x| x.m[e] * x.m[e]).sum());
    }
    out
}

/// Concatenation along the first per-sample axis.
pub fn concat(args: &[&Value]) -> Value {
    let n = args[0].batch();
    let mut shape = args[0].shape.clone();
    shape[1] = args.iter().map(|a| a.shape[1]).sum();
    let (mut v, mut m) = (Vec::new(), Vec::new());
    for s in 0..n {
        for a in args {
            let r = s * a.sample_len()..(s + 1) * a.sample_len();
            v.extend_from_slice(&a.v[r.clone()]);
            m.extend_from_slice(&a.m[r]);
        }
    }
    Value { shape, v, m }
}

/// The channels `start .. start + count` of every sample.
pub fn slice_channels(x: &Value, start: usize, count: usize) -> Value {
    let plane = x.sample_len() / x.shape[1];
    let mut shape = x.shape.clone();
    shape[1] = count;
    let (mut v, mut m) = (Vec::new(), Vec::new());
    for s in 0..x.batch() {
        let r = s * x.sample_len() + start * plane..s * x.sample_len() + (start + count) * plane;
        v.extend_from_slice(&x.v[r.clone()]);
        m.extend_from_slice(&x.m[r]);
    }
    Value { shape, v, m }
}

/// ShuffleNet's channel shuffle: each sample's channels as a `[g, C/g]`
/// matrix, transposed; input channel `b·(C/g) + a` lands at `a·g + b`.
pub fn shuffle_channels(x: &Value, groups: usize) -> Value {
    let channels = x.shape[1];
    let plane = x.sample_len() / channels;
    let per_group = channels / groups;
    let mut out = x.clone();
    for s in 0..x.batch() {
        for b in 0..groups {
            for a in 0..per_group {
                let from = s * x.sample_len() + (b * per_group + a) * plane;
                let to = s * x.sample_len() + (a * groups + b) * plane;
                out.v[to..to + plane].copy_from_slice(&x.v[from..from + plane]);
                out.m[to..to + plane].copy_from_slice(&x.m[from..from + plane]);
            }
        }
    }
    out
}

/// `Σ softmax(α)_i · x_i`.
pub fn choose(args: &[&Value], alpha: &Tensor) -> Value {
    let top = alpha
        .data
        .iter()
        .map(|&a| f64::from(a))
        .fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = alpha
        .data
        .iter()
        .map(|&a| (f64::from(a) - top).exp())
        .collect();
    let total: f64 = exp.iter().sum();
    let mut out = Value::zeros(args[0].shape.clone());
    for (x, e) in args.iter().zip(&exp) {
        let weight = e / total;
        for i in 0..out.v.len() {
            out.v[i] += weight * x.v[i];
            out.m[i] += weight * x.m[i];
        }
    }
    out
}

fn param<'p>(params: &'p Params, node: &str, suffix: &str) -> Result<&'p Tensor, String> {
    params
        .get(&format!("{node}.{suffix}"))
        .ok_or_else(|| format!("missing parameter {node}.{suffix}"))
}

/// A binary layer's weights as a tensor whose signs are the layer's ±1
/// weights: the latent weights, or ±1.0 decoded from the packed words.
///
/// The packed layout, from `ir-spec/ops.md`: `[O][kh][kw][⌈(C/G)/64⌉]` words
/// for a convolution (`[O][⌈K/64⌉]` for dense), input channel `c` at bit
/// `c % 64` of word `c / 64`, bit 1 meaning −1.
fn binary_weight(
    params: &Params,
    node: &str,
    form: WeightForm,
    _out: &[usize],
) -> Result<Tensor, String> {
    let name = format!("{node}.weight");
    match form {
        WeightForm::Latent => params
            .get(&name)
            .cloned()
            .ok_or_else(|| format!("missing parameter {name}")),
        WeightForm::Packed => {
            let bits = params
                .packed
                .get(&name)
                .ok_or_else(|| format!("missing packed parameter {name}"))?;
            let (o, cg, kh, kw) = match bits.shape[..] {
                [o, cg, kh, kw] => (o, cg, kh, kw),
                [o, k] => (o, k, 1, 1),
                _ => return Err(format!("{name}: packed shape {:?}", bits.shape)),
            };
            let words = cg.div_ceil(64);
            if bits.words.len() != o * kh * kw * words {
                return Err(format!(
                    "{name}: {} words for shape {:?}",
                    bits.words.len(),
                    bits.shape
                ));
            }
            let mut data = vec![0.0f32; o * cg * kh * kw];
            for oo in 0..o {
                for u in 0..kh {
                    for v in 0..kw {
                        for c in 0..cg {
                            let word = bits.words[((oo * kh + u) * kw + v) * words + c / 64];
                            let negative = word & (1u64 << (c % 64)) != 0;
                            data[((oo * cg + c) * kh + u) * kw + v] =
                                if negative { -1.0 } else { 1.0 };
                        }
                    }
                }
            }
            Ok(Tensor {
                shape: bits.shape.clone(),
                data,
            })
        }
    }
}

/// The per-channel index of each element of a value `[N, C, ...]`.
fn channel_index(x: &Value, e: usize) -> usize {
    let per_channel: usize = x.shape[2..].iter().product();
    (e / per_channel.max(1)) % x.shape[1]
}

/// A binary layer's output form applied to its dot products (`output=dot`
/// leaves them as they are).
fn epilogue(
    params: &Params,
    node: &str,
    output: BinaryOutput,
    dot: Value,
) -> Result<Value, String> {
    let p = |suffix: &str| param(params, node, suffix);
    Ok(match output {
        BinaryOutput::Dot => dot,
        BinaryOutput::Affine => affine(&dot, p("multiplier")?, p("bias")?),
        BinaryOutput::Threshold => threshold(&dot, p("threshold")?, p("direction")?)?,
    })
}

/// `+1` where `direction_c · x >= threshold_c`, else `−1`.
fn threshold(x: &Value, threshold: &Tensor, direction: &Tensor) -> Result<Value, String> {
    let mut v = Vec::with_capacity(x.v.len());
    for (e, &xe) in x.v.iter().enumerate() {
        let c = channel_index(x, e);
        let d = f64::from(direction.data[c]);
        if d != 1.0 && d != -1.0 {
            return Err(format!("direction {d} is not ±1"));
        }
        v.push(if d * xe >= f64::from(threshold.data[c]) {
            1.0
        } else {
            -1.0
        });
    }
    Ok(Value::exact(x.shape.clone(), v))
}

/// Whether `threshold` of an element may go either way in a correct f32
/// implementation: its input is within tolerance of the threshold.
pub fn threshold_is_ambiguous(x: f64, m: f64, threshold: f64, direction: f64) -> bool {
    threshold.is_finite()
        && m > 0.0
        && (direction * x - threshold).abs() <= REL_TOL * m.max(threshold.abs())
}

/// `multiplier_c · x + bias_c`.
fn affine(x: &Value, multiplier: &Tensor, bias: &Tensor) -> Value {
    let mut out = x.clone();
    for e in 0..x.v.len() {
        let c = channel_index(x, e);
        let (a, b) = (f64::from(multiplier.data[c]), f64::from(bias.data[c]));
        out.v[e] = a * x.v[e] + b;
        out.m[e] = (a * x.m[e]).abs() + b.abs();
    }
    out
}

/// `weights=binary`: each output row `o` of the latent weights becomes
/// `a_o · (±1)`, with `a_o` from [`scale_values`] (in f64, rounded once);
/// the sign of zero is +1.
fn real_layer_weight(w: &Tensor, kind: WeightKind, alpha: &[f64]) -> Tensor {
    if kind == WeightKind::Real {
        return w.clone();
    }
    let rows = w.shape[0];
    let per = w.data.len() / rows;
    let mut out = w.clone();
    for o in 0..rows {
        let row = &w.data[o * per..(o + 1) * per];
        let a = alpha[o] as f32;
        for (dst, &v) in out.data[o * per..(o + 1) * per].iter_mut().zip(row) {
            *dst = if v < 0.0 { -a } else { a };
        }
    }
    out
}

/// Applies the op of node `id` to operand values.
pub fn apply(graph: &Graph, params: &Params, id: NodeId, args: &[&Value]) -> Result<Value, String> {
    let node = graph.node(id);
    let p = |suffix: &str| param(params, &node.name, suffix);
    let x = args.first().copied();
    let x = || x.ok_or_else(|| format!("`{}` has no operand", node.name));
    Ok(match &node.op {
        Op::Input => return Err("an input is not computed".into()),
        // Training graphs are checked by finite differences (train_gradcheck.rs).
        Op::CrossEntropy(_)
        | Op::RunningStat(_)
        | Op::Grad(_)
        | Op::QuantizationLoss(_)
        | Op::DistributionLoss(_) => {
            return Err(format!("`{}` is a training op", node.op.name()));
        }
        Op::Conv2d(a) => {
            let bias = if a.bias { Some(p("bias")?) } else { None };
            let (w, o) = (p("weight")?, a.geometry.out_channels);
            let alpha = scale_values(params, &node.name, a.scale, w, o)?;
            let w = real_layer_weight(w, a.weights, &alpha);
            conv2d(x()?, &w, bias, &a.geometry)?
        }
        Op::BConv2d(a) => {
            let weight = binary_weight(params, &node.name, a.weights, &[a.geometry.out_channels])?;
            let o = a.geometry.out_channels;
            let alpha = scale_values(params, &node.name, a.scale, &weight, o)?;
            let dot = bconv2d_scaled(x()?, &weight, a, &alpha)?;
            epilogue(params, &node.name, a.output, dot)?
        }
        Op::Dense(a) => {
            let bias = if a.bias { Some(p("bias")?) } else { None };
            let w = p("weight")?;
            let alpha = scale_values(params, &node.name, a.scale, w, a.out_features)?;
            let w = real_layer_weight(w, a.weights, &alpha);
            dense(x()?, &w, bias)?
        }
        Op::BDense(a) => {
            let weight = binary_weight(params, &node.name, a.weights, &[a.out_features])?;
            let alpha = scale_values(params, &node.name, a.scale, &weight, a.out_features)?;
            let dot = bdense_scaled(x()?, &weight, a.scale, &alpha)?;
            epilogue(params, &node.name, a.output, dot)?
        }
        Op::Threshold => threshold(x()?, p("threshold")?, p("direction")?)?,
        Op::Affine => affine(x()?, p("multiplier")?, p("bias")?),
        Op::Sign(_) => sign(x()?),
        Op::BatchNorm(a) => {
            let stats = [
                p("weight")?,
                p("bias")?,
                p("running_mean")?,
                p("running_var")?,
            ];
            batchnorm(x()?, stats, a.eps)
        }
        Op::Relu => relu(x()?),
        Op::PRelu => prelu(x()?, p("weight")?),
        Op::Shift => {
            let b = p("bias")?;
            let x = x()?;
            let mut out = x.clone();
            for e in 0..x.v.len() {
                let bc = f64::from(b.data[channel_index(x, e)]);
                out.v[e] = x.v[e] + bc;
                out.m[e] = x.m[e] + bc.abs();
            }
            out
        }
        Op::HardTanh(a) => hardtanh(x()?, a.min, a.max),
        Op::MaxPool(a) => pool(x()?, a, true)?,
        Op::AvgPool(a) => pool(x()?, a, false)?,
        Op::GlobalAvgPool => global_avgpool(x()?)?,
        Op::Flatten => {
            let x = x()?;
            Value {
                shape: vec![x.batch(), x.sample_len()],
                ..x.clone()
            }
        }
        Op::Add => add(args),
        Op::Concat => concat(args),
        Op::SliceChannels(a) => slice_channels(x()?, a.start, a.count),
        Op::ShuffleChannels(a) => shuffle_channels(x()?, a.groups),
        Op::Zero => Value::zeros(x()?.shape.clone()),
        Op::Identity => x()?.clone(),
        Op::Choose => choose(args, p("alpha")?),
    })
}

/// Every node's value, and how many sign decisions were taken from the
/// interpreter because the oracle's input was within tolerance of zero.
#[derive(Debug)]
pub struct Evaluation {
    /// The value of every node.
    pub values: HashMap<NodeId, Value>,
    /// Ambiguous sign decisions resolved by the interpreter's bit.
    pub adopted: usize,
}

/// Evaluates the whole graph from its inputs. `ties`, the interpreter's value
/// of each `sign` node, resolves sign decisions that are ambiguous; without it
/// an ambiguous decision is an error.
pub fn evaluate(
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
    ties: Option<&HashMap<NodeId, Tensor>>,
) -> Result<Evaluation, String> {
    let order = graph
        .topo_order()
        .map_err(|cycle| format!("the graph has a cycle through {cycle:?}"))?;
    if inputs.len() != graph.inputs().len() {
        return Err(format!(
            "{} inputs for {} model inputs",
            inputs.len(),
            graph.inputs().len()
        ));
    }
    let mut values: HashMap<NodeId, Value> = HashMap::new();
    let mut adopted = 0;
    for id in order {
        let node = graph.node(id);
        let value = if node.op == Op::Input {
            let k = graph
                .inputs()
                .iter()
                .position(|&i| i == id)
                .ok_or_else(|| format!("input node `{}` is not a model input", node.name))?;
            Value::from_tensor(&inputs[k])
        } else {
            let operands = graph.operands(id);
            let args: Vec<&Value> = operands.iter().map(|o| &values[o]).collect();
            let mut out = apply(graph, params, id, &args)?;
            if matches!(node.op, Op::Sign(_) | Op::Threshold) {
                let x = args[0];
                let per_channel = |suffix: &str, e: usize| {
                    params
                        .get(&format!("{}.{suffix}", node.name))
                        .map_or(0.0, |t| f64::from(t.data[channel_index(x, e)]))
                };
                for e in 0..x.v.len() {
                    let ambiguous = match node.op {
                        Op::Threshold => threshold_is_ambiguous(
                            x.v[e],
                            x.m[e],
                            per_channel("threshold", e),
                            per_channel("direction", e),
                        ),
                        _ => sign_is_ambiguous(x.v[e], x.m[e]),
                    };
                    if !ambiguous {
                        continue;
                    }
                    let Some(theirs) = ties.and_then(|t| t.get(&id)) else {
                        return Err(format!(
                            "`{}`: sign input element {e} is {:e}, within the tolerance of \
                             zero (magnitude {:e}); choose another seed",
                            node.name, x.v[e], x.m[e]
                        ));
                    };
                    let b = f64::from(theirs.data[e]);
                    if b != 1.0 && b != -1.0 {
                        return Err(format!(
                            "`{}`: the interpreter's sign element {e} is {b}, not ±1",
                            node.name
                        ));
                    }
                    out.v[e] = b;
                    adopted += 1;
                }
            }
            out
        };
        if value.shape[1..] != *node.ty.dims() {
            return Err(format!(
                "oracle bug or bad input: `{}` is {:?}, its type says {}",
                node.name, value.shape, node.ty
            ));
        }
        values.insert(id, value);
    }
    Ok(Evaluation { values, adopted })
}

/// The multi-index of flat element `e` of `shape`.
fn index_of(mut e: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        idx[i] = e % d.max(1);
        e /= d.max(1);
    }
    idx
}

/// Checks `got` against `want` element by element. Returns the largest
/// `error / tolerance` seen (at most 1 on success).
pub fn compare(what: &str, got: &Tensor, want: &Value) -> Result<f64, String> {
    if got.shape != want.shape || got.data.len() != want.v.len() {
        return Err(format!(
            "{what}: the interpreter gives shape {:?} ({} values), the oracle {:?}",
            got.shape,
            got.data.len(),
            want.shape
        ));
    }
    let mut worst: f64 = 0.0;
    let mut bad = Vec::new();
    for e in 0..want.v.len() {
        let g = f64::from(got.data[e]);
        let tol = tolerance(want.v[e], want.m[e]);
        let err = (g - want.v[e]).abs();
        let ratio = if err == 0.0 { 0.0 } else { err / tol };
        if ratio.is_nan() || ratio > 1.0 || !g.is_finite() {
            bad.push(e);
        } else {
            worst = worst.max(ratio);
        }
    }
    if bad.is_empty() {
        return Ok(worst);
    }
    let mut msg = format!(
        "{what}: {} of {} elements disagree (shape {:?})",
        bad.len(),
        want.v.len(),
        want.shape
    );
    for &e in bad.iter().take(6) {
        msg += &format!(
            "\n    at {:?}: interpreter {:e}, oracle {:e} (magnitude {:e}, tolerance {:e})",
            index_of(e, &want.shape),
            got.data[e],
            want.v[e],
            want.m[e],
            tolerance(want.v[e], want.m[e])
        );
    }
    Err(msg)
}

/// Checks every node of the interpreter's run op by op: the oracle applies the
/// node's op to the interpreter's own operand values and compares the result
/// with the interpreter's value of the node. `seen` holds the interpreter's
/// value of every node (inputs included). Returns the largest
/// `error / tolerance`.
pub fn check_each_op(
    graph: &Graph,
    params: &Params,
    seen: &HashMap<NodeId, Tensor>,
) -> Result<f64, String> {
    let mut worst: f64 = 0.0;
    let order = graph.topo_order().map_err(|_| "cycle".to_string())?;
    for id in order {
        let node = graph.node(id);
        if node.op == Op::Input {
            continue;
        }
        let args: Vec<Value> = graph
            .operands(id)
            .iter()
            .map(|o| Value::from_tensor(&seen[o]))
            .collect();
        let args: Vec<&Value> = args.iter().collect();
        let want = apply(graph, params, id, &args)
            .map_err(|e| format!("`{}` on the interpreter's operands: {e}", node.name))?;
        let what = format!(
            "node `{}` ({}) on the interpreter's own operands",
            node.name,
            node.op.name()
        );
        worst = worst.max(compare(&what, &seen[&id], &want)?);
    }
    Ok(worst)
}
