//! The margin-aware oracle of the `avx512` path, layer by layer.
//!
//! `ir-spec/codegen.md` ("Exactness") lets the real-valued layers
//! (`conv2d`, `dense`) of the `avx512` path round differently from the
//! interpreter, within a bound computed from their operands, and requires
//! every other op to compute exactly what the interpreter computes on the
//! same operands. Propagating the bound through a whole network through
//! `sign` would leave most bits of a deep one free (one bit within the bound
//! of zero makes its neighbours' dot products uncertain, and so on), so the
//! oracle cuts the graph at the real layers instead:
//!
//! 1. the model is compiled once as it is and once with every real layer's
//!    value added as an output (a *probe*; that stops the fusion of a
//!    following `batchnorm`, `affine` or `prelu` into the layer's kernel,
//!    which must not change a bit, so the two runs must give identical
//!    outputs);
//! 2. each probed value is checked against the exact sum (f64, from the
//!    interpreter's value of the layer's operand, see 3):
//!    `|y − Σ w·x − b| ≤ γ_{K+1}·(Σ|w·x| + |b|)`, `γ_n = n·u/(1 − n·u)`,
//!    `u = 2⁻²⁴`, the forward-error bound of an f32 sum in any order with or
//!    without FMA;
//! 3. the interpreter runs the *cut* graph, whose real layers are replaced
//!    by inputs fed with the probed values, and every model output must
//!    match it as on the portable path: bits and exact values identically.
//!
//! So a bit may differ from the uncut interpreter only through a real
//! layer's admissible rounding, and nothing downstream of the real layers
//! is compared with a tolerance it does not have on `portable`.

use std::collections::HashMap;

use onebit::Options;
use onebit::ir::ops::{ConvGeometry, Op};
use onebit::ir::{Graph, NodeId, Params, Tensor, interp};

const U: f64 = 1.0 / 16_777_216.0;

/// `γ_n = n·u / (1 − n·u)`.
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

/// What a check saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Real-layer values checked against their bound.
    pub real_values: usize,
    /// Of those, values that differ from the exact sum rounded once
    /// (evidence that the path under test does round differently).
    pub inexact: usize,
    /// Largest `|y − exact| / bound`.
    pub worst: f64,
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

/// The receptive fields of a convolution-shaped layer.
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

    /// Calls `f(output index, output channel, taps)` for every output value
    /// (C order), `taps` listing `(input index, weight index)` of the
    /// receptive field inside the input (padding is zero, so it adds
    /// nothing); weights are `[O][C/G][kh][kw]`.
    fn each(&self, mut f: impl FnMut(usize, usize, &[(usize, usize)])) {
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
                                    if r < 0 || q < 0 || r as usize >= h || q as usize >= w {
                                        continue;
                                    }
                                    let xi = ((s * c + c0 + cl) * h + r as usize) * w + q as usize;
                                    let wi = ((o * cg + cl) * g.kernel[0] + u) * g.kernel[1] + v;
                                    taps.push((xi, wi));
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

/// Checks the values `y` of the real layer `id` computed from its operand's
/// value `x` (both `[N, ...]` in C order) within the bound; records what it
/// saw.
fn check_real_layer(
    what: &str,
    graph: &Graph,
    params: &Params,
    id: NodeId,
    x: &Tensor,
    y: &[f32],
    seen: &mut Seen,
) {
    let node = graph.node(id);
    let name = &node.name;
    let dense = |out| ConvGeometry {
        out_channels: out,
        kernel: [1, 1],
        stride: [1, 1],
        pad: [0, 0],
        dilation: [1, 1],
        groups: 1,
    };
    let (g, kind, scale, bias) = match &node.op {
        Op::Conv2d(a) => (a.geometry, a.weights, a.scale, a.bias),
        Op::Dense(a) => (dense(a.out_features), a.weights, a.scale, a.bias),
        op => panic!("not a real layer: {}", op.name()),
    };
    let latent = param(params, name, "weight");
    let alpha = interp::scale_factors(scale, latent, g.out_channels, || {
        Ok::<_, ()>(param(params, name, "scale"))
    })
    .unwrap();
    let w = interp::layer_weights(kind, alpha.as_deref(), latent, g.out_channels);
    let b = bias.then(|| param(params, name, "bias"));
    let k = (nchw(x)[1] / g.groups) * g.kernel[0] * g.kernel[1];
    let gm = gamma(k + 1);
    let win = Window::new(nchw(x), node.ty.dims(), g);
    let mut count = 0;
    win.each(|yi, o, taps| {
        let (mut exact, mut abs) = (0.0f64, 0.0f64);
        for &(xi, wi) in taps {
            let p = f64::from(w[wi]) * f64::from(x.data[xi]);
            exact += p;
            abs += p.abs();
        }
        let bo = b.map_or(0.0, |b| f64::from(b[o]));
        exact += bo;
        abs += bo.abs();
        // f64 sums of ≤ 2^20 products of f32 are exact to ~2^-32
        // relative, far inside the margin added here.
        let bound = gm * abs * (1.0 + 1e-6) + 1e-300;
        let got = f64::from(y[yi]);
        let err = (got - exact).abs();
        assert!(
            err <= bound,
            "{what}: `{name}`[{yi}]: jit {got} vs exact {exact}: error {err:e} > bound {bound:e}"
        );
        seen.worst = seen.worst.max(err / bound);
        seen.inexact += usize::from(y[yi] != exact as f32);
        count += 1;
    });
    assert_eq!(count, y.len(), "{what}: `{name}` value count");
    seen.real_values += count;
}

/// The JIT's outputs on poisoned scratch ([`super::jit`]).
fn compile_run(
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
    options: &Options,
) -> Vec<Vec<f32>> {
    super::jit(graph, params, inputs, options)
}

fn same_bits(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
}

/// The JIT (compiled with `options`) against the cut interpreter (see the
/// module doc); `exact` as for [`super::assert_match`]. Returns the JIT's
/// outputs and what the check saw.
pub fn check_cut(
    what: &str,
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
    options: &Options,
    exact: bool,
) -> (Vec<Vec<f32>>, Seen) {
    let order = graph.topo_order().expect("acyclic");
    let real: Vec<NodeId> = order
        .into_iter()
        .filter(|&id| matches!(graph.node(id).op, Op::Conv2d(_) | Op::Dense(_)))
        .collect();
    let got = compile_run(graph, params, inputs, options);
    let n_out = graph.outputs().len();
    let mut seen = Seen::default();
    // 1. Probes: the real layers' values as extra outputs.
    let mut probed = graph.clone();
    for &r in &real {
        probed.add_output(r);
    }
    let with_probes = compile_run(&probed, params, inputs, options);
    assert!(
        same_bits(&got, &with_probes[..n_out]),
        "{what}: probing the real layers changed the outputs"
    );
    let probe: HashMap<NodeId, &Vec<f32>> = real
        .iter()
        .zip(&with_probes[n_out..])
        .map(|(&r, v)| (r, v))
        .collect();
    // 3. The cut graph: each real layer an input fed with its probe.
    let mut cut = graph.clone();
    let mut fed = inputs.to_vec();
    let mut replaced: HashMap<NodeId, NodeId> = HashMap::new();
    let batch = inputs[0].shape[0];
    for &r in &real {
        let node = graph.node(r);
        let input = cut
            .add_input(format!("{}.jit", node.name), node.ty.clone())
            .expect("fresh name");
        cut.replace_all_uses(r, input);
        cut.remove_node(r);
        replaced.insert(r, input);
        let mut shape = vec![batch];
        shape.extend_from_slice(node.ty.dims());
        fed.push(Tensor {
            shape,
            data: probe[&r].clone(),
        });
    }
    let values = interp::run_all(&cut, params, &fed)
        .unwrap_or_else(|e| panic!("{what}: interpreter on the cut graph: {e}"));
    // 2. Every real layer against its exact sum, from the operand value the
    //    JIT computed it from.
    for &r in &real {
        let op = graph.operands(r)[0];
        let x = &values[replaced.get(&op).unwrap_or(&op)];
        check_real_layer(what, graph, params, r, x, probe[&r], &mut seen);
    }
    let expected: Vec<Vec<f32>> = cut
        .outputs()
        .iter()
        .map(|o| values[o].data.clone())
        .collect();
    super::assert_match(what, &got, &expected, exact);
    (got, seen)
}
