//! `StepEngine` against the reference interpreter, the oracle.
//!
//! Every output of every training graph (loss, logits, parameter gradients,
//! running statistics) is compared elementwise:
//! `|a − b| <= 1e-4·max(|a|, |b|) + floor`, where `floor = 1e-5·scale` and
//! `scale` is the largest magnitude in the interpreter's tensor. The floor
//! covers entries that are small only because their sum cancels: the engine
//! sums products in the GEMM's blocked order in f32 (the interpreter in
//! writing order, weight gradients in f64), so an entry's rounding error is
//! about `k·2^-24` times the magnitude of its summed terms (`k` a few units
//! for blocked sums of at most a few thousand terms), and those terms are
//! never larger than the tensor's largest entries by more than the width
//! of the sum, which keeps `1e-5·scale` above that error with a margin.
//! Bit-valued outputs must be equal exactly.

use std::collections::HashMap;

#[path = "train_common/mod.rs"]
mod common;

use common::Weights;
use onebit::ir::ops::Wrt;
use onebit::ir::types::Extent;
use onebit::ir::{DType, Graph, NodeId, Op, Params, Tensor, interp};
use onebit::passes::differentiate::{LossSpec, differentiate};
use onebit::text::parse_str;
use onebit::train::engine::{EngineOptions, StepEngine};
use proptest::prelude::*;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/examples/{name}.bnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example exists")
}

fn random_params(graph: &Graph, seed: u64) -> Params {
    common::random_params(graph, seed, Weights::Spread)
}

fn random_inputs(graph: &Graph, n: usize, seed: u64) -> Vec<Tensor> {
    common::random_inputs(graph, n, seed)
}

/// The worst `error / allowed` over the tensor (at most 1 passes).
fn worst(a: &Tensor, b: &Tensor, exact: bool, floor: f64) -> f64 {
    assert_eq!(a.shape, b.shape);
    assert_eq!(a.data.len(), b.data.len());
    let scale = b.data.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let floor = floor.max(1e-5 * scale);
    let mut w = 0.0f64;
    for (&x, &y) in a.data.iter().zip(&b.data) {
        let (x, y) = (x as f64, y as f64);
        if x.is_nan() && y.is_nan() {
            continue;
        }
        let err = (x - y).abs();
        let allowed = if exact {
            0.0
        } else {
            1e-4 * x.abs().max(y.abs()) + floor
        };
        let r = if err == 0.0 {
            0.0
        } else if allowed == 0.0 {
            f64::INFINITY
        } else {
            err / allowed
        };
        w = w.max(r);
    }
    w
}

/// For a parameter gradient, `1e-5·` a bound on the magnitude of the terms
/// each entry sums: `max_c Σ_{n,·} |dy[n, c, ·]|` (every entry of channel
/// `c` sums `dy` of that channel, times an operand value) times the largest
/// operand value (for batchnorm's γ, `x̂`, at most `√M` in magnitude).
/// Zero for other outputs. At least `1e-6·` the largest gradient flowing
/// through the graph (see below).
fn term_floor(graph: &Graph, all: &HashMap<NodeId, Tensor>, id: NodeId) -> f64 {
    // A parameter gradient with several parts (the part through the layer
    // and a loss term's): the largest floor of its parts.
    if let Op::Add = graph.node(id).op {
        return graph
            .operands(id)
            .into_iter()
            .map(|o| term_floor(graph, all, o))
            .fold(0.0, f64::max);
    }
    let Op::Grad(g) = &graph.node(id).op else {
        return 0.0;
    };
    if g.of.kind().is_loss() {
        // A loss term's gradient is a direct function of its operands.
        return 0.0;
    }
    if !matches!(g.wrt, Wrt::Param(_)) {
        return 0.0;
    }
    let operands = graph.operands(id);
    let dy = &all[operands.last().unwrap()];
    let (n, c) = (dy.shape[0], dy.shape.get(1).copied().unwrap_or(1));
    let inner: usize = dy.shape.iter().skip(2).product();
    let s = if matches!(*g.of, Op::Choose) {
        dy.data.iter().map(|v| v.abs() as f64).sum::<f64>()
    } else {
        (0..c)
            .map(|ch| {
                (0..n)
                    .map(|smp| {
                        dy.data[(smp * c + ch) * inner..][..inner]
                            .iter()
                            .map(|v| v.abs() as f64)
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
    };
    let x = match *g.of {
        Op::BatchNorm(_) => ((n * inner) as f64).sqrt(),
        _ => operands[1..operands.len() - 1]
            .iter()
            .flat_map(|o| all[o].data.iter())
            .fold(1.0f64, |m, v| m.max(v.abs() as f64)),
    };
    // Gradients that vanish in exact arithmetic (a batch of one through a
    // batchnorm after global pooling; a batchnorm over two values) are
    // rounding noise in both engines, of the order of f32's epsilon times
    // the gradients flowing into them and the gains of the layers between:
    // they are only checked against 1e-6 of the largest gradient.
    let flowing = graph
        .node_ids()
        .filter(|&i| {
            matches!(graph.node(i).op, Op::Grad(_)) && graph.node(i).ty.extent == Extent::Sample
        })
        .flat_map(|i| all[&i].data.iter())
        .fold(0.0f64, |m, v| m.max(v.abs() as f64));
    (1e-5 * s * x).max(1e-6 * flowing)
}

/// Runs the engine and the interpreter; panics with the first output that
/// differs. Returns the worst ratio seen.
fn check(what: &str, graph: &Graph, params: &Params, inputs: &[Tensor], threads: usize) -> f64 {
    let all = interp::run_all(graph, params, inputs).unwrap();
    let expected: Vec<Tensor> = graph.outputs().iter().map(|o| all[o].clone()).collect();
    let mut engine = StepEngine::new(graph, &EngineOptions { threads }).unwrap();
    let got = engine.run(params, inputs).unwrap();
    assert_eq!(got.len(), expected.len());
    let mut overall = 0.0f64;
    let mut bad = Vec::new();
    for ((g, e), &o) in got.iter().zip(&expected).zip(graph.outputs()) {
        let node = graph.node(o);
        let exact = node.ty.dtype == DType::Bit;
        let w = worst(g, e, exact, term_floor(graph, &all, o));
        if w > 1.0 {
            bad.push(format!(
                "output `{}` (worst error {w:.3} of allowed)\n  engine {:?}\n  interp {:?}",
                node.name,
                &g.data[..g.data.len().min(6)],
                &e.data[..e.data.len().min(6)]
            ));
        }
        overall = overall.max(w);
    }
    assert!(
        bad.is_empty(),
        "{what}, threads {threads}: {}",
        bad.join("\n")
    );
    overall
}

/// The training graph of `source` checked at batches 1, 3 and 16 and
/// threads 1 and 2.
fn check_training(what: &str, source: &str, batches: &[usize], seed: u64) {
    let spec = LossSpec {
        smoothing: 0.1,
        ..LossSpec::default()
    };
    check_training_with(what, source, &spec, batches, seed);
}

/// As [`check_training`], with the loss `spec`.
fn check_training_with(what: &str, source: &str, spec: &LossSpec, batches: &[usize], seed: u64) {
    let model = parse_str(source).unwrap();
    let train = differentiate(&model, spec).unwrap();
    let params = random_params(&model, seed);
    let mut worst_seen = 0.0f64;
    for &n in batches {
        let inputs = random_inputs(&train.graph, n, seed + n as u64);
        for threads in [1, 2] {
            worst_seen = worst_seen.max(check(
                &format!("{what} at batch {n}"),
                &train.graph,
                &params,
                &inputs,
                threads,
            ));
        }
    }
    eprintln!("{what}: worst error {worst_seen:.4} of the allowed");
}

const BATCHES: [usize; 3] = [1, 3, 16];

#[test]
fn digits_cnn_training_step_matches_the_interpreter() {
    check_training("digits_cnn", &example("digits_cnn"), &BATCHES, 1);
}

#[test]
fn mlp_digits_training_step_matches_the_interpreter() {
    check_training("mlp_digits", &example("mlp_digits"), &BATCHES, 2);
}

#[test]
fn tiny_search_training_step_matches_the_interpreter() {
    check_training("tiny_search", &example("tiny_search"), &BATCHES, 3);
}

#[test]
fn bireal_block_training_step_matches_the_interpreter() {
    check_training("bireal_block", &example("bireal_block"), &BATCHES, 4);
}

#[test]
fn fashion_models_training_steps_match_the_interpreter() {
    check_training(
        "react_shifts",
        &std::fs::read_to_string(format!(
            "{}/tests/in/react_shifts.bnn",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
        &[1, 3],
        8,
    );
    // Binary weights over a real input (`weights=binary`) in the MLP.
    check_training("fashion_mlp", &example("fashion_mlp"), &[1, 5], 5);
    check_training("fashion_cnn", &example("fashion_cnn"), &[2], 6);
    check_training(
        "binary conv2d",
        "model m { input x: f32[3, 6, 6]  c = conv2d(x, 4, kernel=3, pad=1, weights=binary, scale=channel)
                   y = dense(flatten(batchnorm(c)), 5)  output y }",
        &[1, 4],
        7,
    );
}

/// The extra loss terms: the weight quantization loss on every kind of
/// layer with binary weights and the distribution loss on every sign's
/// input, on the examples and on a model with every binary layer kind.
#[test]
fn loss_terms_match_the_interpreter() {
    let spec = LossSpec {
        smoothing: 0.1,
        quantization: 0.01,
        distribution: 0.5,
        ..LossSpec::default()
    };
    check_training_with(
        "digits_cnn + terms",
        &example("digits_cnn"),
        &spec,
        &[1, 16],
        11,
    );
    check_training_with(
        "fashion_mlp + terms",
        &example("fashion_mlp"),
        &spec,
        &[1, 5],
        12,
    );
    check_training_with(
        "every binary layer + terms",
        "model m { input x: f32[2, 6, 6]
                   c = conv2d(x, 4, kernel=3, pad=1, weights=binary, scale=channel)
                   s = sign(batchnorm(c))
                   b = bconv2d(s, 6, kernel=3, stride=2, pad_value=1)
                   t = sign(batchnorm(b))
                   d = bdense(flatten(t), 8, scale=channel)
                   u = sign(d)
                   e = dense(flatten(batchnorm(c)), 8, weights=binary)
                   y = dense(add(bdense(u, 8), e), 5)
                   output y }",
        &spec,
        &[1, 3, 16],
        13,
    );
    check_training_with(
        "learned scales + terms",
        "model m { input x: f32[2, 6, 6]
                   c = conv2d(x, 4, kernel=3, pad=1, weights=binary, scale=learned)
                   b = bconv2d(sign(c), 6, kernel=3, stride=2, scale=learned)
                   y = dense(flatten(b), 5)
                   output y }",
        &spec,
        &[1, 3, 16],
        14,
    );
}

/// PCNN's projections on every kind of layer with latent binary weights,
/// with the projection loss beside an unprojected layer's quantization
/// loss, and the shipped example.
#[test]
fn projections_match_the_interpreter() {
    let spec = LossSpec {
        smoothing: 0.1,
        quantization: 0.01,
        projection: 0.02,
        ..LossSpec::default()
    };
    check_training_with(
        "every projected layer + terms",
        "model m { input x: f32[2, 6, 6]
                   c = conv2d(x, 4, kernel=3, pad=1, weights=binary, scale=channel, projection=true)
                   s = sign(batchnorm(c))
                   b = bconv2d(s, 6, kernel=3, stride=2, pad_value=1, groups=2, scale=learned, projection=true)
                   t = sign(batchnorm(b))
                   d = bdense(flatten(t), 8, scale=channel, projection=true)
                   e = dense(flatten(batchnorm(c)), 8, weights=binary, projection=true)
                   y = dense(add(bdense(sign(d), 8), e), 5)
                   output y }",
        &spec,
        &[1, 3, 16],
        15,
    );
    check_training_with(
        "digits_pcnn + projection loss",
        &example("digits_pcnn"),
        &LossSpec {
            smoothing: 0.1,
            projection: 1e-3,
            ..LossSpec::default()
        },
        &[1, 16],
        16,
    );
}

#[test]
fn gradcheck_models_match_the_interpreter() {
    let models = [
        "model m {
           input x: f32[4, 7, 6]
           c = conv2d(x, 6, kernel=3, stride=2, pad=1, groups=2)
           b = batchnorm(c)
           a = prelu(b)
           d = conv2d(a, 4, kernel=(2, 3), dilation=(1, 2), pad=(1, 2))
           m = maxpool(d, 2, stride=1, pad=1)
           v = avgpool(m, 3, stride=2, pad=1)
           g = global_avgpool(v)
           y = dense(g, 5)
           output y
         }",
        "model m {
           input x: f32[2, 3, 3]
           f = flatten(x)
           h = dense(f, 8)
           a = hardtanh(h, min=-2.0, max=2.0)
           r = relu(dense(h, 8))
           s = add(a, r, h)
           k = choose { relu(s), identity(s), zero(s), dense(s, 8) }
           c = concat(k, a)
           n = batchnorm(c)
           y = dense(n, 6, bias=false)
           z = batchnorm(y)
           output z
         }",
        // Depthwise convolutions (the engine's direct path): stride 1 and 2,
        // dilation, padding, binary weights and a bias; then one with two
        // filters per channel (groups = C < O, the GEMM path).
        "model m {
           input x: f32[4, 7, 6]
           a = conv2d(x, 4, kernel=3, pad=1, groups=4)
           b = conv2d(a, 4, kernel=(3, 5), stride=2, pad=(1, 2), groups=4, bias=false, weights=binary, scale=channel)
           c = conv2d(relu(b), 4, kernel=3, pad=2, dilation=2, groups=4, bias=false)
           d = conv2d(c, 8, kernel=3, pad=1, groups=4)
           y = dense(flatten(batchnorm(d)), 4)
           output y
         }",
        "model m {
           input x: f32[6, 4, 4]
           a = conv2d(slice_channels(x, 0, 2), 2, kernel=3, pad=1)
           s = shuffle_channels(concat(a, slice_channels(x, 2, 4)), 3)
           t = shuffle_channels(slice_channels(s, 1, 4), 2)
           y = dense(flatten(batchnorm(t)), 4)
           output y
         }",
        "model m {
           input x: f32[3, 5, 5]
           a = conv2d(x, 4, kernel=3, pad=1)
           b = conv2d(x, 2, kernel=1, bias=false)
           c = concat(batchnorm(a), b)
           y = dense(flatten(c), 4)
           output y
         }",
        "model m { input x: f32[12]  h = dense(x, 16)  s = sign(h, grad=approx)  y = dense(s, 5)  output y }",
        "model m { input x: f32[12]  h = dense(x, 16)  s = sign(h, grad=swish)  y = bdense(s, 5, scale=channel)  output y }",
        "model m { input x: f32[2, 6, 6]  h = conv2d(x, 4, kernel=1)  s = sign(h)
           c = bconv2d(s, 5, kernel=3, pad=1, scale=channel)  y = dense(flatten(batchnorm(c)), 3)  output y }",
        "model m { input x: f32[2, 6, 6]  h = conv2d(x, 4, kernel=1)  s = sign(h)
           c = bconv2d(s, 5, kernel=(3, 2), stride=2)  y = dense(flatten(batchnorm(c)), 3)  output y }",
        "model m { input x: f32[2, 6, 6]  h = conv2d(x, 4, kernel=1)  s = sign(h)
           c = bconv2d(s, 4, kernel=3, pad=1, groups=2, scale=channel)  y = dense(flatten(batchnorm(c)), 3)  output y }",
        // Learned scales, with no batchnorm after them to cancel α.
        "model m { input x: f32[2, 6, 6]  s = sign(conv2d(x, 4, kernel=1))
           c = bconv2d(s, 5, kernel=3, pad=1, pad_value=1, scale=learned)  y = dense(flatten(c), 3)  output y }",
        "model m { input x: f32[3, 5, 5]  c = conv2d(x, 4, kernel=3, pad=1, weights=binary, scale=learned)
           d = bdense(sign(flatten(c)), 6, scale=learned)  y = dense(d, 3)  output y }",
        "model m { input x: f32[12]  d = dense(x, 7, weights=binary, scale=learned)  y = dense(d, 3)  output y }",
    ];
    for (i, source) in models.iter().enumerate() {
        check_training(
            &format!("gradcheck model {i}"),
            source,
            &BATCHES,
            10 + i as u64,
        );
    }
}

/// Plain models: inference graphs as written, and after the default passes
/// (thresholds, affine epilogues, packed weights).
#[test]
fn inference_models_match_the_interpreter() {
    for name in ["digits_cnn", "mlp_digits", "tiny_search", "bireal_block"] {
        let mut graph = parse_str(&example(name)).unwrap();
        let mut params = random_params(&graph, 5);
        let inputs = random_inputs(&graph, 3, 6);
        for threads in [1, 2] {
            check(name, &graph, &params, &inputs, threads);
        }
        onebit::optimize(&mut graph, &mut params).unwrap();
        for threads in [1, 2] {
            check(
                &format!("{name} optimized"),
                &graph,
                &params,
                &inputs,
                threads,
            );
        }
    }
}

#[test]
fn runs_are_deterministic_and_thread_counts_agree() {
    let model = parse_str(&example("digits_cnn")).unwrap();
    let train = differentiate(&model, &LossSpec::default()).unwrap();
    let params = random_params(&model, 7);
    let inputs = random_inputs(&train.graph, 64, 8);
    let mut one = StepEngine::new(&train.graph, &EngineOptions { threads: 1 }).unwrap();
    let mut two = StepEngine::new(&train.graph, &EngineOptions { threads: 2 }).unwrap();
    let a = two.run(&params, &inputs).unwrap();
    // Another batch size in between must not disturb the buffers.
    let small = random_inputs(&train.graph, 5, 9);
    two.run(&params, &small).unwrap();
    let b = two.run(&params, &inputs).unwrap();
    assert_eq!(a, b, "two runs on the same inputs are identical");
    let c = one.run(&params, &inputs).unwrap();
    for (x, y) in a.iter().zip(&c) {
        assert!(
            worst(x, y, false, 0.0) <= 1.0,
            "1 and 2 threads agree to rounding"
        );
    }
}

#[test]
fn bad_inputs_and_params_are_errors() {
    let model = parse_str(&example("mlp_digits")).unwrap();
    let train = differentiate(&model, &LossSpec::default()).unwrap();
    let params = random_params(&model, 1);
    let mut engine = StepEngine::new(&train.graph, &EngineOptions { threads: 2 }).unwrap();
    let inputs = random_inputs(&train.graph, 4, 2);
    assert!(engine.run(&params, &inputs[..1]).is_err());
    let mut wrong = inputs.clone();
    wrong[1].shape = vec![3, 10];
    assert!(engine.run(&params, &wrong).is_err());
    let mut missing = params.clone();
    missing.tensors.remove("fc2.weight");
    let err = engine.run(&missing, &inputs).unwrap_err();
    assert!(err.to_string().contains("fc2.weight"), "{err}");
    assert!(engine.run(&params, &inputs).is_ok());
    // An empty batch is not an error: empty outputs, as the interpreter.
    let empty = random_inputs(&train.graph, 0, 3);
    check("mlp_digits at batch 0", &train.graph, &params, &empty, 2);
}

/// A random small model: a chain of layers drawn from `ops` (with skip
/// connections through `add`), then a classifier.
fn random_model(ops: &[u8], c: usize, hw: usize, classes: usize) -> String {
    let mut lines = vec![format!("input x: f32[{c}, {hw}, {hw}]")];
    let (mut cur, mut ch, mut size) = ("x".to_string(), c, hw);
    for (i, &op) in ops.iter().enumerate() {
        let name = format!("l{i}");
        let line = match op % 9 {
            0 => {
                ch = 2 + (op as usize / 9) % 4;
                format!("{name} = conv2d({cur}, {ch}, kernel=3, pad=1)")
            }
            1 => format!("{name} = batchnorm({cur})"),
            2 => format!("{name} = relu({cur})"),
            3 => {
                ch = 2 + (op as usize / 9) % 4;
                format!(
                    "{name} = bconv2d(sign({cur}), {ch}, kernel=3, pad=1, pad_value=1, scale=channel)"
                )
            }
            4 if size >= 2 => {
                size /= 2;
                format!("{name} = maxpool({cur}, 2)")
            }
            5 => format!("{name} = avgpool({cur}, 3, stride=1, pad=1)"),
            6 => format!("{name} = prelu({cur})"),
            7 => format!("{name} = add({cur}, hardtanh({cur}))"),
            _ => format!("{name} = conv2d({cur}, {ch}, kernel=1, bias=false)"),
        };
        lines.push(line);
        cur = name;
    }
    lines.push(format!("f = flatten({cur})"));
    lines.push("h = dense(f, 6)".into());
    lines.push(format!("y = bdense(sign(batchnorm(h)), {classes})"));
    lines.push("z = batchnorm(y)".into());
    lines.push("output z".into());
    format!("model r {{\n  {}\n}}", lines.join("\n  "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn random_training_graphs_match_the_interpreter(
        ops in proptest::collection::vec(0u8..36, 1..5),
        c in 1usize..4,
        hw in 2usize..6,
        // At least 3 samples: the classifier's batchnorm normalises over the
        // batch alone, and over one or two values its output hardly depends
        // on its input, so its gradient amplifies the last-bit differences
        // of the GEMM before it without bound (it would compare noise).
        n in 3usize..7,
        threads in 1usize..3,
        seed in 0u64..1000,
    ) {
        let source = random_model(&ops, c, hw, 4);
        let model = parse_str(&source).unwrap();
        let train = differentiate(&model, &LossSpec::default()).unwrap();
        let params = random_params(&model, seed);
        let inputs = random_inputs(&train.graph, n, seed + 1);
        check(&source, &train.graph, &params, &inputs, threads);
    }
}

#[test]
fn the_engine_is_send() {
    fn send<T: Send>() {}
    send::<StepEngine>();
}

/// `bdense` runs forward on XNOR-popcount, `bconv2d` on an f32 GEMM of ±1
/// values. Either way their integer dot products must equal the
/// interpreter's exactly (no scale, so no rounding at all), whatever the
/// padding, stride, dilation, groups or channel count (here over 64).
#[test]
fn binary_dot_products_are_exact() {
    let sources = [
        "model m { input x: f32[130]  y = bdense(sign(x), 33)  output y }",
        "model m { input x: f32[70, 6, 5]  y = bconv2d(sign(x), 9, kernel=3, pad=1, pad_value=1)  output y }",
        "model m { input x: f32[3, 9, 8]  y = bconv2d(sign(x), 4, kernel=(3, 2), stride=2, dilation=(2, 1), pad=(2, 1), pad_value=1)  output y }",
        "model m { input x: f32[5, 7, 7]  y = bconv2d(sign(x), 6, kernel=3, stride=(1, 2))  output y }",
        "model m { input x: f32[4, 6, 6]  y = bconv2d(sign(x), 6, kernel=3, pad=1)  output y }",
        "model m { input x: f32[4, 6, 6]  y = bconv2d(sign(x), 6, kernel=3, pad=1, pad_value=1, groups=2)  output y }",
    ];
    for source in sources {
        let graph = parse_str(source).unwrap();
        let params = random_params(&graph, 3);
        for n in [1, 7, 40] {
            let inputs = random_inputs(&graph, n, 4);
            let expected = interp::run(&graph, &params, &inputs).unwrap();
            for threads in [1, 2] {
                let mut engine = StepEngine::new(&graph, &EngineOptions { threads }).unwrap();
                assert_eq!(engine.run(&params, &inputs).unwrap(), expected, "{source}");
            }
        }
    }
}
