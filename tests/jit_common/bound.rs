//! The margin-aware oracle: the interpreter's value of every node together
//! with a bound on how far a conforming engine's value may lie from it.
//!
//! `ir-spec/codegen.md` ("Exactness") allows the real-valued layers
//! (`conv2d`, `dense`) of the `avx512` path to differ from the interpreter
//! by `2·γ_{K+1}·(Σ|w·x| + |b|)`, `γ_n = n·u/(1 − n·u)`, `u = 2⁻²⁴` (both the
//! engine's and the interpreter's sums lie within `γ_{K+1}·(Σ|w·x| + |b|)`
//! of the exact one), and every other op to compute exactly what the
//! interpreter computes on the same operands. This oracle propagates those
//! allowances through the graph in the interpreter's order, node by node,
//! in f64 from the interpreter's own values (`interp::run_all`):
//!
//! * a real layer adds its allowance to the propagated input error
//!   (`Σ|w|·E_x`); without `fma` (the portable path) a layer on exact
//!   inputs is exact (bound 0), so the portable tests stay exact;
//! * linear and Lipschitz ops carry the error (`|γ/σ|·E` for batchnorm,
//!   `max E` for max pooling, …) plus a few ulps of their own rounding
//!   wherever their input error is not zero (same formula, different
//!   operands, so different roundings);
//! * `sign` and `threshold` give a bit an error of 2 (either value allowed)
//!   exactly where the pre-sign value lies within its bound of the
//!   threshold, else 0 (the bit must match);
//! * a binary layer's dot product errs by at most `Σ E` of its input bits
//!   over the receptive field (each uncertain ±1 changes the dot by ≤ 2).
//!
//! A bound of 0 means bit-for-bit equality.

use std::collections::HashMap;

use onebit::ir::ops::{BinaryOutput, ConvGeometry, Op, Pool, Scale};
use onebit::ir::{Graph, NodeId, Params, Tensor, interp};

const U: f64 = 1.0 / 16_777_216.0;

fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// The interpreter's outputs and their allowed errors.
pub struct Bounded {
    /// Output values (as `interp::run`).
    pub values: Vec<Vec<f32>>,
    /// Allowed absolute error of each output value.
    pub bounds: Vec<Vec<f64>>,
    /// Pre-sign values that lay within their bound of the threshold (their
    /// bits were left free).
    pub free_bits: usize,
}

fn param<'p>(params: &'p Params, node: &str, field: &str) -> &'p [f32] {
    &params
        .get(&format!("{node}.{field}"))
        .unwrap_or_else(|| panic!("parameter {node}.{field}"))
        .data
}

/// `[N, C, H, W]` of a tensor, rank 2 as `[N, K, 1, 1]`.
fn nchw(t: &Tensor) -> [usize; 4] {
    match t.shape[..] {
        [n, c, h, w] => [n, c, h, w],
        [n, k] => [n, k, 1, 1],
        ref s => panic!("unexpected shape {s:?}"),
    }
}

/// Per output element of a convolution-shaped op: `f(out index, window)`
/// where the window lists `(input index or None for padding, tap)` and the
/// tap is `(input channel within group, u, v)`.
struct Window {
    x: [usize; 4],
    out: [usize; 4],
    g: ConvGeometry,
}

impl Window {
    fn new(x: [usize; 4], out_dims: &[usize], g: ConvGeometry) -> Window {
        let (oh, ow) = (
            out_dims.get(1).copied().unwrap_or(1),
            out_dims.get(2).copied().unwrap_or(1),
        );
        Window {
            x,
            out: [x[0], g.out_channels, oh, ow],
            g,
        }
    }

    /// Calls `f(out_flat, o, taps)` with `taps` = `(Some(x_flat) | None,
    /// weight index within [O][C/G][kh][kw])`.
    fn each(&self, mut f: impl FnMut(usize, usize, &[(Option<usize>, usize)])) {
        let [n, c, h, w] = self.x;
        let [_, o_n, oh, ow] = self.out;
        let g = &self.g;
        let (cg, og) = (c / g.groups, o_n / g.groups);
        let mut taps = Vec::new();
        for s in 0..n {
            for o in 0..o_n {
                let c0 = (o / og) * cg;
                for i in 0..oh {
                    for j in 0..ow {
                        taps.clear();
                        for cl in 0..cg {
                            for u in 0..g.kernel[0] {
                                for v in 0..g.kernel[1] {
                                    let r = (i * g.stride[0] + u * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let q = (j * g.stride[1] + v * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    let inside =
                                        r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w;
                                    let xi = inside.then(|| {
                                        ((s * c + c0 + cl) * h + r as usize) * w + q as usize
                                    });
                                    taps.push((
                                        xi,
                                        ((o * cg + cl) * g.kernel[0] + u) * g.kernel[1] + v,
                                    ));
                                }
                            }
                        }
                        f(((s * o_n + o) * oh + i) * ow + j, o, &taps);
                    }
                }
            }
        }
    }
}

fn dense_geometry(out: usize) -> ConvGeometry {
    ConvGeometry {
        out_channels: out,
        kernel: [1, 1],
        stride: [1, 1],
        pad: [0, 0],
        dilation: [1, 1],
        groups: 1,
    }
}

fn pool_geometry(c: usize, p: &Pool) -> ConvGeometry {
    ConvGeometry {
        out_channels: c,
        kernel: p.kernel,
        stride: p.stride,
        pad: p.pad,
        dilation: [1, 1],
        groups: c,
    }
}

/// Channel of flat index `i` of an `[N, C, ...]` tensor with `pos`
/// positions per channel.
fn channel(i: usize, c: usize, pos: usize) -> usize {
    (i / pos) % c
}

/// Runs the interpreter and propagates the allowed errors; `fma`: the real
/// layers may round differently (the `avx512` path).
pub fn reference(graph: &Graph, params: &Params, inputs: &[Tensor], fma: bool) -> Bounded {
    let values = interp::run_all(graph, params, inputs).expect("interpreter");
    let order = graph.topo_order().expect("acyclic");
    let mut err: HashMap<NodeId, Vec<f64>> = HashMap::new();
    let mut free_bits = 0;
    for id in order {
        let node = graph.node(id);
        let name = &node.name;
        let ops = graph.operands(id);
        let y = &values[&id];
        let xs: Vec<&Tensor> = ops.iter().map(|o| &values[o]).collect();
        let es: Vec<&Vec<f64>> = ops.iter().map(|o| &err[o]).collect();
        let len = y.data.len();
        let same = |f: &dyn Fn(usize, f64) -> f64| -> Vec<f64> {
            (0..len).map(|i| f(i, es[0][i])).collect()
        };
        let per_c = |i: usize| {
            let d = nchw(y);
            channel(i, d[1], d[2] * d[3])
        };
        let mut sign_like = |pre: &dyn Fn(usize) -> (f64, f64)| -> Vec<f64> {
            (0..len)
                .map(|i| {
                    let (margin, e) = pre(i);
                    if e > 0.0 && margin.abs() <= e {
                        free_bits += 1;
                        2.0
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let e: Vec<f64> = match &node.op {
            Op::Input | Op::Zero => vec![0.0; len],
            Op::Conv2d(_) | Op::Dense(_) => {
                let (g, kind, scale, bias, out) = match &node.op {
                    Op::Conv2d(a) => (
                        a.geometry,
                        a.weights,
                        a.scale,
                        a.bias,
                        a.geometry.out_channels,
                    ),
                    Op::Dense(a) => (
                        dense_geometry(a.out_features),
                        a.weights,
                        a.scale,
                        a.bias,
                        a.out_features,
                    ),
                    _ => unreachable!(),
                };
                let w = interp::layer_weights(kind, scale, param(params, name, "weight"), out);
                let b = bias.then(|| param(params, name, "bias"));
                let x = xs[0];
                let win = Window::new(nchw(x), node.ty.dims(), g);
                let k = (nchw(x)[1] / g.groups) * g.kernel[0] * g.kernel[1];
                let gm = gamma(k + 1);
                let mut e = vec![0.0; len];
                win.each(|yi, o, taps| {
                    let (mut carried, mut abs, mut input_err) = (0.0, 0.0, false);
                    for &(xi, wi) in taps {
                        if let Some(xi) = xi {
                            let wa = f64::from(w[wi].abs());
                            carried += wa * es[0][xi];
                            abs += wa * (f64::from(x.data[xi].abs()) + es[0][xi]);
                            input_err |= es[0][xi] > 0.0;
                        }
                    }
                    let ba = b.map_or(0.0, |b| f64::from(b[o].abs()));
                    let own = if fma || input_err {
                        2.0 * gm * (abs + ba)
                    } else {
                        0.0
                    };
                    e[yi] = carried * (1.0 + gm) + own;
                });
                e
            }
            Op::BConv2d(_) | Op::BDense(_) => {
                let (g, output, scale, out) = match &node.op {
                    Op::BConv2d(a) => (a.geometry, a.output, a.scale, a.geometry.out_channels),
                    Op::BDense(a) => (
                        dense_geometry(a.out_features),
                        a.output,
                        a.scale,
                        a.out_features,
                    ),
                    _ => unreachable!(),
                };
                let x = xs[0];
                let win = Window::new(nchw(x), node.ty.dims(), g);
                let mut dot_err = vec![0.0; len];
                win.each(|yi, _, taps| {
                    dot_err[yi] = taps
                        .iter()
                        .filter_map(|&(xi, _)| xi)
                        .map(|xi| es[0][xi])
                        .sum();
                });
                match output {
                    BinaryOutput::Dot if scale == Scale::Channel => {
                        let latent = param(params, name, "weight");
                        let alpha = interp::channel_scales(latent, out);
                        (0..len)
                            .map(|i| {
                                let (a, d) = (f64::from(alpha[per_c(i)]), dot_err[i]);
                                if d > 0.0 {
                                    a * d + 4.0 * U * (f64::from(y.data[i].abs()) + a * d)
                                } else {
                                    0.0
                                }
                            })
                            .collect()
                    }
                    BinaryOutput::Dot => dot_err,
                    BinaryOutput::Affine => {
                        let m = param(params, name, "multiplier");
                        let b = param(params, name, "bias");
                        (0..len)
                            .map(|i| {
                                let c = per_c(i);
                                let (m, b, d) =
                                    (f64::from(m[c].abs()), f64::from(b[c].abs()), dot_err[i]);
                                if d > 0.0 {
                                    m * d + 4.0 * U * (f64::from(y.data[i].abs()) + 2.0 * b + m * d)
                                } else {
                                    0.0
                                }
                            })
                            .collect()
                    }
                    // Conservative: any doubt about the dot frees the bit.
                    BinaryOutput::Threshold => sign_like(&|i| (0.0, dot_err[i])),
                }
            }
            Op::Sign(_) => sign_like(&|i| (f64::from(xs[0].data[i]), es[0][i])),
            Op::Threshold => {
                let t = param(params, name, "threshold");
                let d = param(params, name, "direction");
                sign_like(&|i| {
                    let c = per_c(i);
                    let m = f64::from(d[c]) * f64::from(xs[0].data[i]) - f64::from(t[c]);
                    (m, es[0][i])
                })
            }
            Op::BatchNorm(a) => {
                let gm = param(params, name, "weight");
                let beta = param(params, name, "bias");
                let mean = param(params, name, "running_mean");
                let var = param(params, name, "running_var");
                same(&|i, e| {
                    if e == 0.0 {
                        return 0.0;
                    }
                    let c = per_c(i);
                    let s = f64::from(interp::batchnorm_std(var[c], a.eps));
                    let k = f64::from(gm[c]).abs() / s;
                    let x = f64::from(xs[0].data[i].abs());
                    k * e * (1.0 + 8.0 * U)
                        + 8.0
                            * U
                            * (k * (x + f64::from(mean[c].abs()) + e) + f64::from(beta[c].abs()))
                })
            }
            Op::Affine => {
                let m = param(params, name, "multiplier");
                let b = param(params, name, "bias");
                same(&|i, e| {
                    if e == 0.0 {
                        return 0.0;
                    }
                    let c = per_c(i);
                    let m = f64::from(m[c].abs());
                    let x = f64::from(xs[0].data[i].abs());
                    m * e + 4.0 * U * (m * (x + e) + f64::from(b[c].abs()))
                })
            }
            Op::Shift => {
                let b = param(params, name, "bias");
                same(&|i, e| {
                    if e == 0.0 {
                        return 0.0;
                    }
                    let x = f64::from(xs[0].data[i].abs());
                    e + 4.0 * U * (x + e + f64::from(b[per_c(i)].abs()))
                })
            }
            Op::PRelu => {
                let a = param(params, name, "weight");
                same(&|i, e| {
                    if e == 0.0 {
                        return 0.0;
                    }
                    let a = f64::from(a[per_c(i)].abs());
                    let x = f64::from(xs[0].data[i].abs());
                    a.max(1.0) * e + 4.0 * U * a * (x + e)
                })
            }
            Op::Relu | Op::HardTanh(_) | Op::Identity | Op::Flatten => same(&|_, e| e),
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let x = xs[0];
                let d = nchw(x);
                let win = Window::new(d, node.ty.dims(), pool_geometry(d[1], p));
                let max = matches!(node.op, Op::MaxPool(_));
                let k = p.kernel[0] * p.kernel[1];
                let mut e = vec![0.0; len];
                win.each(|yi, _, taps| {
                    let inside = taps.iter().filter_map(|&(xi, _)| xi);
                    e[yi] = if max {
                        inside.map(|xi| es[0][xi]).fold(0.0, f64::max)
                    } else {
                        let (s, a) = inside.fold((0.0, 0.0), |(s, a), xi| {
                            (s + es[0][xi], a + f64::from(x.data[xi].abs()) + es[0][xi])
                        });
                        if s > 0.0 {
                            s / k as f64 + 2.0 * gamma(k + 1) * a / k as f64
                        } else {
                            0.0
                        }
                    };
                });
                e
            }
            Op::GlobalAvgPool => {
                let d = nchw(xs[0]);
                let pos = d[2] * d[3];
                (0..len)
                    .map(|i| {
                        let at = i * pos..(i + 1) * pos;
                        let s: f64 = es[0][at.clone()].iter().sum();
                        let a: f64 = at.map(|j| f64::from(xs[0].data[j].abs()) + es[0][j]).sum();
                        if s > 0.0 {
                            s / pos as f64 + 2.0 * gamma(pos + 1) * a / pos as f64
                        } else {
                            0.0
                        }
                    })
                    .collect()
            }
            Op::Concat => {
                let n = y.shape[0];
                let mut e = Vec::with_capacity(len);
                for s in 0..n {
                    for (x, ex) in xs.iter().zip(&es) {
                        let per = x.data.len() / n;
                        e.extend_from_slice(&ex[s * per..(s + 1) * per]);
                    }
                }
                e
            }
            Op::Add => (0..len)
                .map(|i| {
                    let s: f64 = es.iter().map(|e| e[i]).sum();
                    if s == 0.0 {
                        return 0.0;
                    }
                    let a: f64 = xs
                        .iter()
                        .zip(&es)
                        .map(|(x, e)| f64::from(x.data[i].abs()) + e[i])
                        .sum();
                    s + 2.0 * gamma(xs.len()) * a
                })
                .collect(),
            Op::Choose => {
                let alpha = param(params, name, "alpha");
                let m = alpha.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let ex: Vec<f32> = alpha.iter().map(|&a| (a - m).exp()).collect();
                let total: f32 = ex.iter().sum();
                let w: Vec<f64> = ex.iter().map(|&v| f64::from(v / total)).collect();
                (0..len)
                    .map(|i| {
                        let s: f64 = es.iter().zip(&w).map(|(e, w)| w * e[i]).sum();
                        if s == 0.0 {
                            return 0.0;
                        }
                        let a: f64 = xs
                            .iter()
                            .zip(&es)
                            .zip(&w)
                            .map(|((x, e), w)| w * (f64::from(x.data[i].abs()) + e[i]))
                            .sum();
                        s * (1.0 + 1e-6) + 2.0 * gamma(2 * xs.len() + 1) * a
                    })
                    .collect()
            }
            op => panic!("the bounded oracle does not know `{}`", op.name()),
        };
        err.insert(id, e);
    }
    let outs = graph.outputs();
    Bounded {
        values: outs.iter().map(|o| values[o].data.clone()).collect(),
        bounds: outs.iter().map(|o| err[o].clone()).collect(),
        free_bits,
    }
}

/// Asserts `|got − expected| ≤ bound` element by element (a bound of 0:
/// equal bits; NaN matches NaN). Returns the number of values with a
/// non-zero bound.
pub fn assert_within(what: &str, got: &[Vec<f32>], b: &Bounded) -> usize {
    assert_eq!(got.len(), b.values.len(), "{what}: output count");
    let mut loose = 0;
    for (k, ((g, e), bd)) in got.iter().zip(&b.values).zip(&b.bounds).enumerate() {
        assert_eq!(g.len(), e.len(), "{what}: output {k} length");
        for (i, ((&a, &r), &bound)) in g.iter().zip(e).zip(bd).enumerate() {
            let ok = if bound == 0.0 {
                a == r || (a.is_nan() && r.is_nan())
            } else {
                loose += 1;
                (f64::from(a) - f64::from(r)).abs() <= bound * (1.0 + 1e-9)
                    || (a.is_nan() && r.is_nan())
            };
            assert!(
                ok,
                "{what}: output {k}[{i}]: jit {a} vs interp {r}, allowed error {bound:e}"
            );
        }
    }
    loose
}
