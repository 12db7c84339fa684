//! The independent check of the reference interpreter (`onebit::ir::interp`).
//!
//! `oracle/reference.rs` evaluates graphs from the op definitions alone, in a
//! different formulation from the interpreter's direct loops: binary layers as
//! XOR + popcount over LCE-packed `u64` words, real convolutions as im2col and
//! a matrix product, all real arithmetic in `f64`. Every interpreter result is
//! checked twice:
//!
//! - **end to end**: the oracle runs the graph from the inputs and its outputs
//!   must match the interpreter's;
//! - **op by op**: the oracle applies each node's op to the interpreter's own
//!   operand values, which pinpoints the first op that goes wrong.
//!
//! # Tolerance
//!
//! An element passes if `|interp − oracle| ≤ 1e-5 · max(m, |oracle|)`, where
//! `m ≥ |oracle|` is the element's *magnitude*, the scale of the rounding
//! error an f32 evaluation may make. Exact values (model inputs, bits,
//! popcount sums) have `m = |x|`. An op that sums terms gets
//! `m = √(local² + Σ (wᵢ·mᵢ)²)`: `local = Σ|wᵢ·xᵢ| + |b|` scales its own
//! rounding, and `wᵢ·mᵢ` is the error its operands carry in, as the op
//! weights them. Elementwise ops carry `m` through.
//!
//! - **Why `m` and not `|oracle|`.** The rounding error of an f32 sum of
//!   products, in any order, is bounded by `γ_n·Σ|terms|` (Higham, *Accuracy
//!   and Stability of Numerical Algorithms*, §3.1). A sum with cancellation
//!   has `|result| ≪ Σ|terms|`, so a correct f32 result can miss a purely
//!   relative `1e-5·|result|`. A fixed floor like `1e-5·max(1, |b|)` is
//!   arbitrary instead: it follows the units of the value, not its rounding,
//!   and is loose for values far below 1 (α ≈ 0.02, batchnorms of small γ).
//! - **Why root-sum-square.** Adding the carried magnitudes linearly (the
//!   computation redone on absolute values, Higham §3.3) is a sound worst
//!   case, but it compounds through every real reduction: on ResNet-18 it put
//!   `m/|v| ≈ 4·10⁴` at the logits, a 40 % tolerance that checks nothing.
//!   Rounding errors of different terms behave as independent and mean-zero,
//!   the model of probabilistic rounding-error analysis (Higham & Mary, "A
//!   New Approach to Probabilistic Rounding Error Analysis", SIAM J. Sci.
//!   Comput. 41(5), 2019), so they add in quadrature: `m/|v|` at the ResNet
//!   logits drops to ≈ 20, and the measured worst error is still only about
//!   0.02 of the tolerance there.
//! - **Why `1e-5` with an f64 oracle.** `1e-5` is about 170 units of f32
//!   rounding (`u = 2⁻²⁴`), while rounding errors of sums grow like `√n·u`:
//!   far below `1e-5` for the longest sums here (1000 terms in dense layers,
//!   α as a mean of up to 4608 weights). So the oracle does not need to
//!   mimic the interpreter's f32 summation order; the worst error measured
//!   over every example and seed is about 0.25 of the tolerance (op by op).
//! - **Binary layers.** Popcount sums are exact integers in any order. With
//!   `scale=channel` the magnitude is `α·(|s| + √K)`: α's own rounding (∝
//!   `α·|s|`) plus that of an engine that accumulates α-scaled terms, whose
//!   partial sums are typically `α·√K`.
//! - **Op by op vs end to end.** Op by op, the operands are the interpreter's
//!   own values, taken as exact, so `m` covers one op's rounding and the check
//!   is tight. End to end, `m` also carries the rounding of every earlier
//!   layer.
//!
//! `sign` is discontinuous: where its input is within the tolerance of zero,
//! either bit is correct, so end to end the oracle takes the interpreter's
//! bit there and reports how often it did (see `reference::evaluate`). Op by
//! op there is no such freedom: `sign` of the interpreter's own input must
//! match exactly.

#[path = "oracle/reference.rs"]
mod reference;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use onebit::ir::interp;
use onebit::ir::ops::{
    BConv2d, BDense, BatchNorm, BinaryOutput, Conv2d, ConvGeometry, Dense, HardTanh, PadValue,
    Pool, Scale, ShuffleChannels, SliceChannels, WeightForm, WeightKind,
};
use onebit::ir::{DType, Graph, NodeId, Op, Params, Tensor, TensorType};
use onebit::util::rng::Rng;

use reference::{Value, compare};

// ---------------------------------------------------------------------------
// Running a graph through both implementations
// ---------------------------------------------------------------------------

/// What a successful comparison saw.
#[derive(Debug, Default)]
struct Report {
    /// Largest `error / tolerance` over the end-to-end outputs.
    end_to_end: f64,
    /// Largest `error / tolerance` over every node, op by op.
    per_op: f64,
    /// Sign decisions taken from the interpreter (input within tolerance of 0).
    adopted: usize,
    /// Number of output elements compared end to end.
    elements: usize,
}

/// Runs `graph` through the interpreter and the oracle, end to end and op by op.
fn check_model(graph: &Graph, params: &Params, inputs: &[Tensor]) -> Result<Report, String> {
    let declared = interp::run(graph, params, inputs).map_err(|e| format!("interp::run: {e}"))?;
    if declared.len() != graph.outputs().len() {
        return Err(format!(
            "interp::run returned {} tensors for {} outputs",
            declared.len(),
            graph.outputs().len()
        ));
    }
    // The same graph with every node as an output: the interpreter's
    // intermediate values, for the op-by-op check and for sign ties.
    let order = graph.topo_order().map_err(|_| "cycle".to_string())?;
    let inner: Vec<NodeId> = order
        .into_iter()
        .filter(|&id| graph.node(id).op != Op::Input)
        .collect();
    let mut every = graph.clone();
    every.set_outputs(inner.clone());
    let values = interp::run(&every, params, inputs)
        .map_err(|e| format!("interp::run with every node as an output: {e}"))?;
    let mut seen: HashMap<NodeId, Tensor> = inner.into_iter().zip(values).collect();
    for (&id, t) in graph.inputs().iter().zip(inputs) {
        seen.insert(id, t.clone());
    }

    let mut problems = Vec::new();
    let per_op = reference::check_each_op(graph, params, &seen).unwrap_or_else(|e| {
        problems.push(format!("op by op: {e}"));
        f64::NAN
    });
    let mut report = Report {
        per_op,
        ..Report::default()
    };
    match reference::evaluate(graph, params, inputs, Some(&seen)) {
        Err(e) => problems.push(format!("oracle: {e}")),
        Ok(eval) => {
            report.adopted = eval.adopted;
            for (k, (&id, got)) in graph.outputs().iter().zip(&declared).enumerate() {
                let what = format!("end to end, output {k} `{}`", graph.node(id).name);
                let want = &eval.values[&id];
                report.elements += want.v.len();
                match compare(&what, got, want) {
                    Ok(w) => report.end_to_end = report.end_to_end.max(w),
                    Err(e) => problems.push(e),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems.join("\n"))
    }
}

/// Makes parameters that exercise every op: batchnorm statistics with `γ` of
/// both signs and `σ² ∈ (0.1, 2)`, random `choose` logits, random biases and
/// PReLU slopes of both signs. Latent weights keep their PyTorch init.
fn perturb(graph: &Graph, params: &mut Params, seed: u64) {
    let mut rng = Rng::new(seed);
    // The folded forms: multiplier and bias of both signs; thresholds that are
    // small integers (so they tie with integer dot products), reals, or ±inf
    // (constant channels); directions ±1.
    for (name, t) in params.tensors.iter_mut() {
        let suffix = name.rsplit('.').next().unwrap_or("");
        let real_input = graph
            .find(name.rsplit_once('.').map_or("", |(n, _)| n))
            .is_some_and(|id| graph.node(id).op == Op::Threshold);
        for x in &mut t.data {
            match suffix {
                "multiplier" => *x = rng.uniform(2.0),
                "direction" => *x = if rng.below(2) == 0 { 1.0 } else { -1.0 },
                "threshold" => {
                    *x = match rng.below(10) {
                        0 => f32::INFINITY,
                        1 => f32::NEG_INFINITY,
                        _ if real_input => rng.uniform(1.0),
                        _ => rng.below(21) as f32 - 10.0,
                    }
                }
                _ => {}
            }
        }
    }
    let mut fill = |node: &str, suffix: &str, f: &mut dyn FnMut(&mut Rng) -> f32| {
        let name = format!("{node}.{suffix}");
        let t = params
            .tensors
            .get_mut(&name)
            .unwrap_or_else(|| panic!("no parameter {name}"));
        for x in &mut t.data {
            *x = f(&mut rng);
        }
    };
    for id in graph.topo_order().expect("acyclic") {
        let node = graph.node(id);
        let name = node.name.as_str();
        match &node.op {
            Op::BatchNorm(_) => {
                fill(name, "weight", &mut |r| {
                    let magnitude = 0.5 + r.next_f32();
                    if r.below(2) == 0 {
                        magnitude
                    } else {
                        -magnitude
                    }
                });
                fill(name, "bias", &mut |r| r.uniform(0.5));
                fill(name, "running_mean", &mut |r| r.uniform(0.5));
                fill(name, "running_var", &mut |r| 0.1 + 1.9 * r.next_f32());
            }
            Op::Choose => fill(name, "alpha", &mut |r| r.normal()),
            Op::Conv2d(Conv2d { bias: true, .. }) | Op::Dense(Dense { bias: true, .. }) => {
                fill(name, "bias", &mut |r| r.uniform(0.5))
            }
            Op::PRelu => fill(name, "weight", &mut |r| r.uniform(0.5)),
            _ => {}
        }
    }
}

/// Random inputs uniform in `[−1, 1)`, batch `n`; bit inputs get ±1. With
/// `zeros`, about one element in 16 is `+0.0` or `−0.0` (both have sign +1).
fn random_inputs(graph: &Graph, n: usize, seed: u64, zeros: bool) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    graph
        .inputs()
        .iter()
        .map(|&id| {
            let ty = &graph.node(id).ty;
            let mut shape = vec![n];
            shape.extend_from_slice(ty.dims());
            let len = shape.iter().product();
            let data = (0..len)
                .map(|_| {
                    let x = rng.uniform(1.0);
                    match (ty.dtype, zeros && rng.below(16) == 0) {
                        (DType::Bit, _) => {
                            if x < 0.0 {
                                -1.0
                            } else {
                                1.0
                            }
                        }
                        (DType::F32, true) => {
                            if x < 0.0 {
                                -0.0
                            } else {
                                0.0
                            }
                        }
                        (DType::F32, false) => x,
                    }
                })
                .collect();
            Tensor { shape, data }
        })
        .collect()
}

/// Initialises, perturbs and checks one graph on a random batch.
fn check_random(graph: &Graph, batch: usize, seed: u64, zeros: bool) -> Result<Report, String> {
    let mut params = Params::init(graph, seed);
    perturb(graph, &mut params, seed ^ 0x5eed);
    let inputs = random_inputs(graph, batch, seed ^ 0x1d, zeros);
    check_model(graph, &params, &inputs)
}

/// Checks every `(label, graph)` case and fails with all disagreements.
fn check_cases(cases: Vec<(String, Graph)>, seed: u64) {
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    let mut worst: f64 = 0.0;
    for (i, (label, graph)) in cases.iter().enumerate() {
        match check_random(graph, 2, seed + i as u64, true) {
            Ok(r) => worst = worst.max(r.end_to_end).max(r.per_op),
            Err(e) => failures.push(format!("{label}:\n  {e}")),
        }
    }
    eprintln!(
        "{} cases, {} disagree; worst error/tolerance of the agreeing ones {worst:.3}",
        cases.len(),
        failures.len()
    );
    if !failures.is_empty() {
        let shown: Vec<&String> = failures.iter().take(8).collect();
        panic!(
            "{} of {} cases disagree with the oracle:\n{}",
            failures.len(),
            cases.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// Graph building
// ---------------------------------------------------------------------------

fn geometry(out: usize, kernel: [usize; 2]) -> ConvGeometry {
    ConvGeometry {
        out_channels: out,
        kernel,
        stride: [1, 1],
        pad: [0, 0],
        dilation: [1, 1],
        groups: 1,
    }
}

/// `input x: f32[dims]`, optionally `sign`, then `op`, as the output.
fn one_op(input: Vec<usize>, binarize: bool, op: Op) -> Graph {
    let mut g = Graph::new("case");
    let mut x = g.add_input("x", TensorType::f32(input)).unwrap();
    if binarize {
        x = g.add_node("s", Op::sign(), &[x]).unwrap();
    }
    let label = format!("{op:?}");
    let y = g
        .add_node("y", op, &[x])
        .unwrap_or_else(|e| panic!("test case {label} is ill-typed: {e}"));
    g.add_output(y);
    g
}

fn pool(kernel: [usize; 2], stride: [usize; 2], pad: [usize; 2]) -> Pool {
    Pool {
        kernel,
        stride,
        pad,
    }
}

// ---------------------------------------------------------------------------
// The oracle against hand-computed values and against plain loops
// ---------------------------------------------------------------------------

fn tensor(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
    assert_eq!(shape.iter().product::<usize>(), data.len());
    Tensor { shape, data }
}

fn value(shape: Vec<usize>, data: &[f64]) -> Value {
    Value::exact(shape, data.to_vec())
}

fn assert_values(got: &Value, want: &[f64]) {
    assert_eq!(got.v.len(), want.len(), "{got:?}");
    for (g, w) in got.v.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-7 * w.abs().max(1.0),
            "{:?} vs {want:?}",
            got.v
        );
    }
}

#[test]
fn oracle_bconv2d_by_hand() {
    // x = [[+ - +], [- - +], [+ + -]], one channel; W has a zero (sign +1).
    let x = value(vec![1, 1, 3, 3], &[1., -1., 1., -1., -1., 1., 1., 1., -1.]);
    let w = tensor(
        vec![1, 1, 3, 3],
        vec![0.5, -0.2, 0.1, -0.3, 0.4, 0.0, 0.2, -0.1, -0.6],
    );
    let conv = |pad_value, scale| {
        let geometry = ConvGeometry {
            pad: [1, 1],
            ..geometry(1, [3, 3])
        };
        let a = BConv2d {
            geometry,
            pad_value,
            scale,
            output: BinaryOutput::Dot,
            weights: WeightForm::Latent,
            projection: false,
        };
        reference::bconv2d(&x, &w, &a).unwrap()
    };
    let zero = conv(PadValue::Zero, Scale::None);
    // Corner: valid taps (1,1)(1,2)(2,1)(2,2) give 1 - 1 + 1 + 1; centre: 3 + 1 + 1.
    assert_eq!((zero.v[0], zero.v[4]), (2.0, 5.0));
    // +1 padding adds sign W at (0,0)(0,1)(0,2)(1,0)(2,0): + - + - + = 1.
    let one = conv(PadValue::One, Scale::None);
    assert_eq!((one.v[0], one.v[4]), (3.0, 5.0));
    // α = mean |W| over all nine latent weights = 2.4 / 9, also at the corner.
    let scaled = conv(PadValue::Zero, Scale::Channel);
    let alpha = 2.4 / 9.0;
    assert!((scaled.v[0] - 2.0 * alpha).abs() < 1e-7);
    assert!((scaled.v[4] - 5.0 * alpha).abs() < 1e-7);
}

#[test]
fn oracle_bconv2d_across_words_by_hand() {
    // 130 channels on a 1x1 image: x_c = +1 below 100, -1 from 100.
    let xs: Vec<f64> = (0..130).map(|c| if c < 100 { 1.0 } else { -1.0 }).collect();
    let x = value(vec![1, 130, 1, 1], &xs);
    // W_0: +1 below channel 10, -1 above; W_1: all +1 (groups=1 case).
    let mut wdata: Vec<f32> = (0..130).map(|c| if c < 10 { 0.5 } else { -0.5 }).collect();
    wdata.extend(std::iter::repeat_n(0.25, 130));
    let w = tensor(vec![2, 130, 1, 1], wdata);
    let a = |pad_value| BConv2d {
        geometry: ConvGeometry {
            pad: [1, 1],
            ..geometry(2, [1, 1])
        },
        pad_value,
        scale: Scale::None,
        output: BinaryOutput::Dot,
        weights: WeightForm::Latent,
        projection: false,
    };
    // Centre: 10 - 90 + 30 = -50 and 100 - 30 = 70. Padded positions: 0, or
    // Σ sign W = 10 - 120 = -110 and 130.
    let zero = reference::bconv2d(&x, &w, &a(PadValue::Zero)).unwrap();
    assert_values(
        &zero,
        &[
            0., 0., 0., 0., -50., 0., 0., 0., 0., 0., 0., 0., 0., 70., 0., 0., 0., 0.,
        ],
    );
    let one = reference::bconv2d(&x, &w, &a(PadValue::One)).unwrap();
    let mut want = vec![-110.0; 9];
    want[4] = -50.0;
    want.extend([130.0; 9]);
    want[13] = 70.0;
    assert_values(&one, &want);

    // groups=2: 65 channels per group, so both groups straddle a word.
    let w = tensor(
        vec![2, 65, 1, 1],
        (0..130)
            .map(|i| if (10..65).contains(&i) { -1.0 } else { 1.0 })
            .collect(),
    );
    let a = BConv2d {
        geometry: ConvGeometry {
            groups: 2,
            ..geometry(2, [1, 1])
        },
        pad_value: PadValue::Zero,
        scale: Scale::Channel,
        output: BinaryOutput::Dot,
        weights: WeightForm::Latent,
        projection: false,
    };
    // o=0 reads channels 0..65 (all +1): 10 - 55; o=1 reads 65..130: 35 - 30.
    assert_values(&reference::bconv2d(&x, &w, &a).unwrap(), &[-45.0, 5.0]);
}

#[test]
fn oracle_bdense_by_hand() {
    // K = 65: x = +1 except x_64 = -1.
    let xs: Vec<f64> = (0..65).map(|k| if k == 64 { -1.0 } else { 1.0 }).collect();
    let x = value(vec![1, 65], &xs);
    // W_0 = 1 everywhere; W_1,k = -k, so W_1,0 = -0.0, whose sign is +1.
    let mut wdata = vec![1.0f32; 65];
    wdata.extend((0..65).map(|k| -(k as f32)));
    let w = tensor(vec![2, 65], wdata);
    let none = reference::bdense(&x, &w, Scale::None).unwrap();
    // 64 - 1 = 63; 1 - (63 - 1) = -61.
    assert_values(&none, &[63.0, -61.0]);
    // α_1 = mean_k k = 32.
    let channel = reference::bdense(&x, &w, Scale::Channel).unwrap();
    assert_values(&channel, &[63.0, -61.0 * 32.0]);
}

#[test]
fn oracle_conv2d_by_hand() {
    // x = 1..9, kernel [[1 2 0] [0 0 0] [0 0 -1]], bias 0.5, pad 1.
    let x = value(vec![1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = tensor(vec![1, 1, 3, 3], vec![1., 2., 0., 0., 0., 0., 0., 0., -1.]);
    let b = tensor(vec![1], vec![0.5]);
    let g = ConvGeometry {
        pad: [1, 1],
        ..geometry(1, [3, 3])
    };
    let y = reference::conv2d(&x, &w, Some(&b), &g).unwrap();
    // y[i,j] = 0.5 + x[i-1,j-1] + 2 x[i-1,j] - x[i+1,j+1]; e.g. y[1,0] = 0.5 + 2 - 8.
    assert_values(&y, &[-4.5, -5.5, 0.5, -5.5, -3.5, 8.5, 8.5, 14.5, 17.5]);
    let y = reference::conv2d(
        &x,
        &w,
        Some(&b),
        &ConvGeometry {
            stride: [2, 2],
            ..g
        },
    )
    .unwrap();
    assert_values(&y, &[-4.5, 0.5, 8.5, 17.5]);
    // The magnitude at (0,0): local rounding scale |0.5| + |-1·5| = 5.5, and
    // the input's magnitude 5 carried through the weight -1, in quadrature.
    assert_eq!(y.m[0], (5.5f64 * 5.5 + 25.0).sqrt());

    // groups=2 with 1x1 kernels: y0 = 2 x0 + 1, y1 = -3 x1.
    let x = value(vec![1, 2, 1, 2], &[1., 2., 3., 4.]);
    let w = tensor(vec![2, 1, 1, 1], vec![2., -3.]);
    let b = tensor(vec![2], vec![1., 0.]);
    let g = ConvGeometry {
        groups: 2,
        ..geometry(2, [1, 1])
    };
    let y = reference::conv2d(&x, &w, Some(&b), &g).unwrap();
    assert_values(&y, &[3., 5., -9., -12.]);
}

#[test]
fn oracle_small_ops_by_hand() {
    let x = value(vec![1, 1, 2, 2], &[-1., -2., -3., -4.]);
    // Padding never wins a max, even over negative values.
    let max = reference::pool(&x, &pool([3, 3], [1, 1], [1, 1]), true).unwrap();
    assert_values(&max, &[-1.; 4]);
    // Padding counts as zeros, divisor kh·kw.
    let avg = reference::pool(&x, &pool([3, 3], [1, 1], [1, 1]), false).unwrap();
    assert_values(&avg, &[-10. / 9.; 4]);
    let avg = reference::pool(&x, &pool([2, 2], [1, 1], [1, 1]), false).unwrap();
    assert_values(
        &avg,
        &[-0.25, -0.75, -0.5, -1., -2.5, -1.5, -0.75, -1.75, -1.],
    );
    let g = reference::global_avgpool(&x).unwrap();
    assert_values(&g, &[-2.5]);

    // softmax([0, ln 3]) = [1/4, 3/4].
    let a = value(vec![1, 2], &[4., 8.]);
    let b = value(vec![1, 2], &[8., 4.]);
    let alpha = tensor(vec![2], vec![0.0, 3f32.ln()]);
    assert_values(&reference::choose(&[&a, &b], &alpha), &[7., 5.]);

    // Channel 0: γ = 2, β = 1, μ = 0.5, σ² = 3, eps = 1: (x - 0.5)·2/2 + 1.
    // Channel 1: γ = -1, β = 0, μ = 1, σ² = 3, eps = 1: -(x - 1)/2.
    let c = |a: f32, b: f32| tensor(vec![2], vec![a, b]);
    let stats = [&c(2., -1.), &c(1., 0.), &c(0.5, 1.), &c(3., 3.)];
    let bn = reference::batchnorm(&a, stats, 1.0);
    assert_values(&bn, &[4.5, -3.5]);

    let s = reference::sign(&value(vec![1, 4], &[0.0, -0.0, -1e-30, 2.0]));
    assert_values(&s, &[1., 1., -1., 1.]);
    let c2 = value(vec![2, 1], &[1., 2.]);
    let c3 = value(vec![2, 2], &[3., 4., 5., 6.]);
    assert_values(&reference::concat(&[&c2, &c3]), &[1., 3., 4., 2., 5., 6.]);
    let slope = tensor(vec![2], vec![0.5, -2.0]);
    let p = reference::prelu(&value(vec![1, 2, 2], &[-2., 3., -1., 4.]), &slope);
    assert_values(&p, &[-1., 3., 2., 4.]);
    let h = reference::hardtanh(&value(vec![1, 3], &[-2., 0.25, 2.]), -0.5, 0.75);
    assert_values(&h, &[-0.5, 0.25, 0.75]);
}

/// `Σ sign(W)·x` by direct loops over the ±1 definition, for cross-checking
/// the bit-domain convolution.
fn direct_bconv2d(x: &Value, w: &Tensor, a: &BConv2d) -> Vec<f64> {
    let g = &a.geometry;
    let &[n, c, h, wd] = &x.shape[..] else {
        panic!()
    };
    let [kh, kw] = g.kernel;
    let (cg, og) = (c / g.groups, g.out_channels / g.groups);
    let oh = (h + 2 * g.pad[0] - g.dilation[0] * (kh - 1) - 1) / g.stride[0] + 1;
    let ow = (wd + 2 * g.pad[1] - g.dilation[1] * (kw - 1) - 1) / g.stride[1] + 1;
    let mut out = Vec::new();
    for s in 0..n {
        for o in 0..g.out_channels {
            let wo = &w.data[o * cg * kh * kw..(o + 1) * cg * kh * kw];
            let alpha = wo.iter().map(|v| f64::from(v.abs())).sum::<f64>() / wo.len() as f64;
            for i in 0..oh {
                for j in 0..ow {
                    let mut y = 0.0;
                    for ci in 0..cg {
                        let ch = (o / og) * cg + ci;
                        for u in 0..kh {
                            for v in 0..kw {
                                let r = (i * g.stride[0] + u * g.dilation[0]) as isize
                                    - g.pad[0] as isize;
                                let q = (j * g.stride[1] + v * g.dilation[1]) as isize
                                    - g.pad[1] as isize;
                                let inside =
                                    r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < wd;
                                let xv = if inside {
                                    x.v[((s * c + ch) * h + r as usize) * wd + q as usize]
                                } else if a.pad_value == PadValue::One {
                                    1.0
                                } else {
                                    0.0
                                };
                                let wv = wo[(ci * kh + u) * kw + v];
                                y += if wv >= 0.0 { xv } else { -xv };
                            }
                        }
                    }
                    out.push(match a.scale {
                        Scale::None => y,
                        Scale::Channel => y * alpha,
                        Scale::Learned => unreachable!("the cases compute their scale"),
                    });
                }
            }
        }
    }
    out
}

/// The bconv2d cases of the interpreter tests: every channel count, both pad
/// values, both scales, every geometry, every image size.
fn bconv_cases() -> Vec<(String, Vec<usize>, BConv2d)> {
    let geometries: [(&str, ConvGeometry); 10] = [
        (
            "k3 p1",
            ConvGeometry {
                pad: [1, 1],
                ..geometry(5, [3, 3])
            },
        ),
        (
            "k3 s2 p1",
            ConvGeometry {
                stride: [2, 2],
                pad: [1, 1],
                ..geometry(4, [3, 3])
            },
        ),
        (
            "k3 s(2,3) p1",
            ConvGeometry {
                stride: [2, 3],
                pad: [1, 1],
                ..geometry(3, [3, 3])
            },
        ),
        (
            "k3 d(3,2) p(3,2)",
            ConvGeometry {
                dilation: [3, 2],
                pad: [3, 2],
                ..geometry(4, [3, 3])
            },
        ),
        (
            "k(2,3) p1",
            ConvGeometry {
                pad: [1, 1],
                ..geometry(2, [2, 3])
            },
        ),
        ("k1", geometry(6, [1, 1])),
        (
            "k1 p1",
            ConvGeometry {
                pad: [1, 1],
                ..geometry(3, [1, 1])
            },
        ),
        (
            "k5 p2",
            ConvGeometry {
                pad: [2, 2],
                ..geometry(2, [5, 5])
            },
        ),
        (
            "k3 p1 g2",
            ConvGeometry {
                pad: [1, 1],
                groups: 2,
                ..geometry(4, [3, 3])
            },
        ),
        (
            "k3 s2 p1 g4",
            ConvGeometry {
                stride: [2, 2],
                pad: [1, 1],
                groups: 4,
                ..geometry(8, [3, 3])
            },
        ),
    ];
    let mut cases = Vec::new();
    for c in [1, 3, 63, 64, 65, 130] {
        for (name, g) in geometries {
            if c % g.groups != 0 {
                continue;
            }
            for (h, w) in [(7, 7), (8, 5), (1, 1)] {
                for pad_value in [PadValue::Zero, PadValue::One] {
                    for scale in [Scale::None, Scale::Channel] {
                        cases.push((
                            format!("bconv2d C={c} {h}x{w} {name} {pad_value:?} {scale:?}"),
                            vec![c, h, w],
                            BConv2d {
                                geometry: g,
                                pad_value,
                                scale,
                                output: BinaryOutput::Dot,
                                weights: WeightForm::Latent,
                                projection: false,
                            },
                        ));
                    }
                }
            }
        }
    }
    cases
}

#[test]
fn oracle_bconv2d_matches_direct_loops() {
    let mut rng = Rng::new(42);
    for (label, dims, a) in bconv_cases() {
        let n = 2;
        let len = n * dims.iter().product::<usize>();
        let xs: Vec<f64> = (0..len)
            .map(|_| if rng.below(2) == 0 { -1.0 } else { 1.0 })
            .collect();
        let mut shape = vec![n];
        shape.extend(&dims);
        let x = value(shape, &xs);
        let g = &a.geometry;
        let wshape = vec![g.out_channels, dims[0] / g.groups, g.kernel[0], g.kernel[1]];
        let wlen = wshape.iter().product();
        let w = tensor(wshape, (0..wlen).map(|_| rng.uniform(1.0)).collect());
        let got = reference::bconv2d(&x, &w, &a).unwrap();
        let want = direct_bconv2d(&x, &w, &a);
        assert_eq!(got.v.len(), want.len(), "{label}");
        for (e, (g, w)) in got.v.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{label} at {e}: {g} vs {w}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The interpreter against the oracle
// ---------------------------------------------------------------------------

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn parse_file(path: &Path) -> Graph {
    let bytes = std::fs::read(path).unwrap();
    onebit::text::parse(&path.display().to_string(), &bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Inputs above this many elements per sample (ImageNet-sized models) run
/// at batch 1 with one seed; the others at batch 3 with three seeds.
const LARGE_INPUT: usize = 20_000;

/// An example's name, its per-seed reports or the first failure, and its time.
type Outcome = (String, Result<Vec<(u64, Report)>, String>, Duration);

#[test]
fn every_example_agrees_with_the_oracle() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bnn"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples/*.bnn");
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|path| {
                scope.spawn(move || {
                    let start = Instant::now();
                    let graph = parse_file(path);
                    let input_elements = graph
                        .inputs()
                        .iter()
                        .map(|&i| graph.node(i).ty.shape.elements())
                        .sum::<usize>();
                    let (batch, seeds) = if input_elements > LARGE_INPUT {
                        (1, 1..2)
                    } else {
                        (3, 1..4)
                    };
                    let result = seeds
                        .map(|seed| {
                            check_random(&graph, batch, seed, false)
                                .map(|r| (seed, r))
                                .map_err(|e| format!("seed {seed}, batch {batch}:\n  {e}"))
                        })
                        .collect::<Result<Vec<_>, String>>();
                    (result, start.elapsed())
                })
            })
            .collect();
        files
            .iter()
            .zip(handles)
            .map(|(path, h)| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                match h.join() {
                    Ok((result, time)) => (name, result, time),
                    Err(panic) => {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        (name, Err(format!("panicked: {msg}")), Duration::ZERO)
                    }
                }
            })
            .collect()
    });
    let mut failures = Vec::new();
    for (name, result, time) in outcomes {
        match result {
            Ok(reports) => {
                for (seed, r) in reports {
                    eprintln!(
                        "{name} seed {seed}: {} output values agree (worst error/tolerance \
                         {:.3} end to end, {:.3} op by op; {} sign ties taken from the \
                         interpreter) [{:.2?}]",
                        r.elements, r.end_to_end, r.per_op, r.adopted, time
                    );
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bconv2d_agrees_with_the_oracle() {
    let mut cases: Vec<(String, Graph)> = bconv_cases()
        .into_iter()
        .map(|(label, dims, a)| (label, one_op(dims, true, Op::BConv2d(a))))
        .collect();
    // Bits that reach the convolution through maxpool, concat and identity.
    let mut g = Graph::new("bits_paths");
    let a = g.add_input("a", TensorType::f32(vec![40, 6, 6])).unwrap();
    let b = g.add_input("b", TensorType::f32(vec![40, 3, 3])).unwrap();
    let sa = g.add_node("sa", Op::sign(), &[a]).unwrap();
    let sb = g.add_node("sb", Op::sign(), &[b]).unwrap();
    let pooled = pool([3, 3], [2, 2], [1, 1]);
    let pa = g.add_node("pa", Op::MaxPool(pooled), &[sa]).unwrap();
    let ib = g.add_node("ib", Op::Identity, &[sb]).unwrap();
    let cat = g.add_node("cat", Op::Concat, &[pa, ib]).unwrap();
    let conv = BConv2d {
        geometry: ConvGeometry {
            pad: [1, 1],
            groups: 2,
            ..geometry(6, [3, 3])
        },
        pad_value: PadValue::One,
        scale: Scale::Channel,
        output: BinaryOutput::Dot,
        weights: WeightForm::Latent,
        projection: false,
    };
    let y = g.add_node("y", Op::BConv2d(conv), &[cat]).unwrap();
    g.add_output(y);
    g.add_output(cat);
    cases.push(("bconv2d(concat(maxpool(bits), identity(bits)))".into(), g));
    check_cases(cases, 100);
}

#[test]
fn folded_forms_agree_with_the_oracle() {
    let mut cases = Vec::new();
    let forms = [
        (BinaryOutput::Affine, WeightForm::Latent),
        (BinaryOutput::Affine, WeightForm::Packed),
        (BinaryOutput::Threshold, WeightForm::Latent),
        (BinaryOutput::Threshold, WeightForm::Packed),
        (BinaryOutput::Dot, WeightForm::Packed),
    ];
    for (output, weights) in forms {
        for (c, groups, pad_value) in [
            (3, 1, PadValue::Zero),
            (65, 1, PadValue::One),
            (130, 2, PadValue::Zero),
        ] {
            let op = Op::BConv2d(BConv2d {
                geometry: ConvGeometry {
                    pad: [1, 1],
                    groups,
                    ..geometry(4, [3, 3])
                },
                pad_value,
                scale: Scale::None,
                output,
                weights,
                projection: false,
            });
            let label = format!("bconv2d C={c} {pad_value:?} {output:?} {weights:?}");
            cases.push((label, one_op(vec![c, 5, 4], true, op)));
        }
        for k in [63, 65, 129] {
            let op = Op::BDense(BDense {
                out_features: 5,
                scale: Scale::None,
                output,
                weights,
                projection: false,
            });
            cases.push((
                format!("bdense K={k} {output:?} {weights:?}"),
                one_op(vec![k], true, op),
            ));
        }
    }
    for op in [Op::Threshold, Op::Affine] {
        cases.push((
            format!("{op:?} [5,3,3]"),
            one_op(vec![5, 3, 3], false, op.clone()),
        ));
        cases.push((format!("{op:?} [7]"), one_op(vec![7], false, op.clone())));
        cases.push((format!("{op:?} of bits"), one_op(vec![6, 2, 2], true, op)));
    }
    check_cases(cases, 300);
}

#[test]
fn bdense_agrees_with_the_oracle() {
    let mut cases = Vec::new();
    for k in [1, 63, 64, 65, 127, 128, 129, 1000] {
        for scale in [Scale::None, Scale::Channel] {
            let op = Op::BDense(BDense {
                out_features: 7,
                scale,
                output: BinaryOutput::Dot,
                weights: WeightForm::Latent,
                projection: false,
            });
            cases.push((format!("bdense K={k} {scale:?}"), one_op(vec![k], true, op)));
        }
    }
    // Bits through flatten: K = 5·3·2 = 30 in C order.
    let mut g = Graph::new("flat");
    let x = g.add_input("x", TensorType::f32(vec![5, 3, 2])).unwrap();
    let s = g.add_node("s", Op::sign(), &[x]).unwrap();
    let f = g.add_node("f", Op::Flatten, &[s]).unwrap();
    let op = Op::BDense(BDense {
        out_features: 3,
        scale: Scale::Channel,
        output: BinaryOutput::Dot,
        weights: WeightForm::Latent,
        projection: false,
    });
    let y = g.add_node("y", op, &[f]).unwrap();
    g.add_output(y);
    cases.push(("bdense(flatten(sign [5,3,2]))".into(), g));
    check_cases(cases, 200);
}

#[test]
fn conv2d_and_dense_agree_with_the_oracle() {
    let mut cases = Vec::new();
    let convs: [(&str, usize, usize, ConvGeometry); 9] = [
        (
            "k3 p1",
            3,
            1,
            ConvGeometry {
                pad: [1, 1],
                ..geometry(5, [3, 3])
            },
        ),
        (
            "k3 s2",
            4,
            1,
            ConvGeometry {
                stride: [2, 2],
                ..geometry(6, [3, 3])
            },
        ),
        (
            "k3 s(2,3) p(1,2)",
            2,
            1,
            ConvGeometry {
                stride: [2, 3],
                pad: [1, 2],
                ..geometry(3, [3, 3])
            },
        ),
        (
            "k3 d(3,2) p2",
            3,
            1,
            ConvGeometry {
                dilation: [3, 2],
                pad: [2, 2],
                ..geometry(2, [3, 3])
            },
        ),
        (
            "k(1,3) g2",
            4,
            2,
            ConvGeometry {
                pad: [0, 1],
                groups: 2,
                ..geometry(6, [1, 3])
            },
        ),
        (
            "k3 p1 g4",
            8,
            4,
            ConvGeometry {
                pad: [1, 1],
                groups: 4,
                ..geometry(8, [3, 3])
            },
        ),
        (
            "depthwise k3 p1",
            6,
            6,
            ConvGeometry {
                pad: [1, 1],
                groups: 6,
                ..geometry(6, [3, 3])
            },
        ),
        (
            "k7 s2 p3",
            3,
            1,
            ConvGeometry {
                stride: [2, 2],
                pad: [3, 3],
                ..geometry(8, [7, 7])
            },
        ),
        // Corner windows lie wholly in the padding: bias only.
        (
            "k1 s2 p1",
            2,
            1,
            ConvGeometry {
                stride: [2, 2],
                pad: [1, 1],
                ..geometry(3, [1, 1])
            },
        ),
    ];
    for (name, c, groups, geometry) in convs {
        assert_eq!(geometry.groups, groups);
        for (h, w) in [(7, 7), (8, 5), (9, 12)] {
            for bias in [true, false] {
                let op = Op::Conv2d(Conv2d::new(geometry, bias));
                // Bits read as ±1 in a real convolution.
                let binarize = h == 8 && !bias;
                let label = format!("conv2d C={c} {h}x{w} {name} bias={bias} bits={binarize}");
                cases.push((label, one_op(vec![c, h, w], binarize, op)));
                let scale = if bias { Scale::Channel } else { Scale::None };
                let op = Op::Conv2d(Conv2d {
                    weights: WeightKind::Binary,
                    scale,
                    ..Conv2d::new(geometry, bias)
                });
                let label = format!("conv2d C={c} {h}x{w} {name} weights=binary scale={scale:?}");
                cases.push((label, one_op(vec![c, h, w], false, op)));
            }
        }
    }
    for k in [1, 17, 64, 1000] {
        for bias in [true, false] {
            let op = Op::Dense(Dense::new(9, bias));
            for binarize in [false, true] {
                let label = format!("dense K={k} bias={bias} bits={binarize}");
                cases.push((label, one_op(vec![k], binarize, op.clone())));
            }
            // Binary weights over a real input (BinaryNet's first layer).
            for scale in [Scale::None, Scale::Channel] {
                let op = Op::Dense(Dense {
                    weights: WeightKind::Binary,
                    scale,
                    ..Dense::new(9, bias)
                });
                let label = format!("dense K={k} bias={bias} weights=binary scale={scale:?}");
                cases.push((label, one_op(vec![k], false, op)));
            }
        }
    }
    check_cases(cases, 300);
}

#[test]
fn pools_agree_with_the_oracle() {
    let mut cases = Vec::new();
    let pools = [
        ("k2", pool([2, 2], [2, 2], [0, 0])),
        ("k3 s2 p1", pool([3, 3], [2, 2], [1, 1])),
        ("k3 s1 p1", pool([3, 3], [1, 1], [1, 1])),
        ("k(3,2) s(1,2) p(1,1)", pool([3, 2], [1, 2], [1, 1])),
        ("k(2,3) s(2,1) p(0,1)", pool([2, 3], [2, 1], [0, 1])),
    ];
    for (name, p) in pools {
        for (h, w) in [(7, 7), (8, 5), (4, 6)] {
            for (kind, op) in [("maxpool", Op::MaxPool(p)), ("avgpool", Op::AvgPool(p))] {
                for binarize in [false, true] {
                    let label = format!("{kind} {name} {h}x{w} bits={binarize}");
                    cases.push((label, one_op(vec![3, h, w], binarize, op.clone())));
                }
            }
        }
    }
    for binarize in [false, true] {
        let label = format!("global_avgpool bits={binarize}");
        cases.push((label, one_op(vec![4, 5, 3], binarize, Op::GlobalAvgPool)));
    }
    check_cases(cases, 400);
}

#[test]
fn elementwise_and_structural_ops_agree_with_the_oracle() {
    let mut cases = Vec::new();
    let unary = [
        ("sign", Op::sign()),
        ("batchnorm", Op::BatchNorm(BatchNorm::new(1e-5))),
        ("batchnorm eps=0.1", Op::BatchNorm(BatchNorm::new(0.1))),
        ("relu", Op::Relu),
        ("prelu", Op::PRelu),
        ("shift", Op::Shift),
        (
            "hardtanh",
            Op::HardTanh(HardTanh {
                min: -1.0,
                max: 1.0,
            }),
        ),
        (
            "hardtanh(-0.5, 0.25)",
            Op::HardTanh(HardTanh {
                min: -0.5,
                max: 0.25,
            }),
        ),
        ("flatten", Op::Flatten),
        ("zero", Op::Zero),
        ("identity", Op::Identity),
    ];
    for (name, op) in unary {
        for dims in [vec![3, 4, 5], vec![6], vec![2, 7]] {
            for binarize in [false, true] {
                let label = format!("{name} {dims:?} bits={binarize}");
                cases.push((label, one_op(dims.clone(), binarize, op.clone())));
            }
        }
    }
    // Channel slices and shuffles, of reals and of bits.
    for dims in [vec![6, 2, 3], vec![6], vec![4, 5]] {
        let ops = [
            Op::SliceChannels(SliceChannels { start: 1, count: 3 }),
            Op::SliceChannels(SliceChannels {
                start: 0,
                count: dims[0],
            }),
            Op::ShuffleChannels(ShuffleChannels { groups: 2 }),
            Op::ShuffleChannels(ShuffleChannels { groups: dims[0] }),
        ];
        for op in ops {
            for binarize in [false, true] {
                let label = format!("{op:?} {dims:?} bits={binarize}");
                cases.push((label, one_op(dims.clone(), binarize, op.clone())));
            }
        }
    }
    // add of three, concat of bits and reals, concat of bits only, choose.
    for dims in [vec![3, 4, 5], vec![6]] {
        let mut g = Graph::new("multi");
        let a = g.add_input("a", TensorType::f32(dims.clone())).unwrap();
        let mut b_dims = dims.clone();
        b_dims[0] = 2;
        let b = g.add_input("b", TensorType::f32(b_dims)).unwrap();
        let sa = g.add_node("sa", Op::sign(), &[a]).unwrap();
        let sb = g.add_node("sb", Op::sign(), &[b]).unwrap();
        let r = g.add_node("r", Op::Relu, &[a]).unwrap();
        let sum = g.add_node("sum", Op::Add, &[a, sa, r]).unwrap();
        let mixed = g.add_node("mixed", Op::Concat, &[sb, a, sa]).unwrap();
        let bits = g.add_node("bits", Op::Concat, &[sa, sb]).unwrap();
        let z = g.add_node("z", Op::Zero, &[a]).unwrap();
        let ch = g.add_node("ch", Op::Choose, &[a, r, sa, z]).unwrap();
        let one = g.add_node("one", Op::Choose, &[sum]).unwrap();
        for o in [sum, mixed, bits, ch, one] {
            g.add_output(o);
        }
        cases.push((format!("add/concat/choose {dims:?}"), g));
    }
    check_cases(cases, 500);
}

#[test]
fn spec_corner_cases_agree_with_the_oracle() {
    // sign(NaN) = -1, sign(±0) = +1, zero(NaN) = 0; eps = 0; min = max;
    // softmax logits large enough to overflow a naive exp in f32.
    let mut g = Graph::new("corners");
    let x = g.add_input("x", TensorType::f32(vec![2, 4])).unwrap();
    let s = g.add_node("s", Op::sign(), &[x]).unwrap();
    let z = g.add_node("z", Op::Zero, &[x]).unwrap();
    let r = g.add_node("r", Op::Relu, &[s]).unwrap();
    let bn = g
        .add_node("bn", Op::BatchNorm(BatchNorm::new(0.0)), &[s])
        .unwrap();
    let clamp = HardTanh { min: 0.3, max: 0.3 };
    let h = g.add_node("h", Op::HardTanh(clamp), &[bn]).unwrap();
    let c = g.add_node("c", Op::Choose, &[s, z, bn]).unwrap();
    for o in [s, z, r, bn, h, c] {
        g.add_output(o);
    }
    let mut params = Params::init(&g, 1);
    perturb(&g, &mut params, 2);
    params.tensors.get_mut("c.alpha").unwrap().data = vec![100.0, 95.0, -50.0];
    let nan = f32::NAN;
    let data = vec![
        nan, -0.0, 0.0, -1e-30, 1.0, -2.0, nan, 3.5, 0.0, -0.0, 1e-30, -7.0, nan, nan, -1.0, 2.0,
    ];
    let inputs = [tensor(vec![2, 2, 4], data)];
    check_model(&g, &params, &inputs).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------
// The command line, end to end
// ---------------------------------------------------------------------------

fn onebit(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_onebit"))
        .args(args)
        .output()
        .expect("run onebit");
    assert!(
        out.status.success(),
        "onebit {:?} failed ({}):\n{}{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_init_then_run_agrees_with_the_oracle() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("oracle-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = examples_dir().join("digits_cnn.bnn");
    let graph = parse_file(&model);
    let (w, x, y) = (
        dir.join("w.safetensors"),
        dir.join("x.npy"),
        dir.join("y.npy"),
    );

    onebit(&[
        "init".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        w.as_os_str(),
        "--seed".as_ref(),
        "3".as_ref(),
    ]);
    let mut params = onebit::io::weights::load(&graph, &w).unwrap();
    assert_eq!(params, Params::init(&graph, 3), "init writes Params::init");

    let n = 5;
    let mut shape = vec![n];
    shape.extend_from_slice(graph.node(graph.inputs()[0]).ty.dims());
    let mut rng = Rng::new(77);
    let data: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.uniform(1.0))
        .collect();
    onebit::io::npy::write_file(&x, &shape, &data).unwrap();
    let inputs = [Tensor {
        shape: shape.clone(),
        data,
    }];

    // Once with the file `init` wrote, once with perturbed weights saved
    // through the weights writer.
    for round in 0..2 {
        if round == 1 {
            perturb(&graph, &mut params, 9);
            onebit::io::weights::save(&params, &graph.name, &w).unwrap();
        }
        onebit(&[
            "run".as_ref(),
            model.as_os_str(),
            "--weights".as_ref(),
            w.as_os_str(),
            "--input".as_ref(),
            x.as_os_str(),
            "-o".as_ref(),
            y.as_os_str(),
        ]);
        let got = onebit::io::npy::read_file(&y).unwrap();
        let got = Tensor {
            shape: got.shape,
            data: got.data,
        };
        let params = onebit::io::weights::load(&graph, &w).unwrap();
        // Sign ties, if any, resolve by the interpreter in process.
        let mut every = graph.clone();
        let inner: Vec<NodeId> = graph
            .node_ids()
            .filter(|&i| graph.node(i).op != Op::Input)
            .collect();
        every.set_outputs(inner.clone());
        let values = interp::run(&every, &params, &inputs).unwrap();
        let ties: HashMap<NodeId, Tensor> = inner.into_iter().zip(values).collect();
        let eval = reference::evaluate(&graph, &params, &inputs, Some(&ties)).unwrap();
        let out = graph.outputs()[0];
        compare(
            &format!("onebit run, round {round}"),
            &got,
            &eval.values[&out],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
