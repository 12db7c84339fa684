//! Equivalence by execution: every pass, alone and as the default pipeline
//! step by step, on every model of `examples/` and `tests/in/`, run by the
//! reference interpreter before and after on stress parameters
//! (`passes_common::stress_params`: γ of both signs and exactly 0, σ² = 1e-6,
//! |β| up to 50, random α) and random inputs; plus threshold-boundary cases
//! in the style of FINN's `test_round_thresholds`.
//!
//! # What must agree, and how closely
//!
//! - **Bits exactly.** Every bit output must be equal: thresholds are found by
//!   evaluating the interpreter's own f32 formulas, so they are exact.
//! - **f32 exactly** after the passes that do no real arithmetic
//!   (`eliminate_identity`, `binary_maxpool`, `pack_weights`,
//!   `eliminate_dead_nodes`, `plan_memory`).
//! - **f32 within rounding** after `fold_batchnorm` and `fold_scale_and_bn`,
//!   which refold real arithmetic (`a·W`, `β − a·μ`, `output=affine`). An
//!   element passes if `|after − before| <= 2·1e-5·max(m, |before|)`, where
//!   `m` is the element's magnitude as the oracle of `tests/oracle.rs`
//!   computes it (`tests/oracle/reference.rs`): the scale of the terms the
//!   value is a sum of, carried through the network in quadrature. A relative
//!   bound alone would fail where terms cancel (a batchnorm with tiny σ² and
//!   `x ≈ μ` gives a small result from terms ~300 times larger); an absolute
//!   floor in the units of the terms does not. Each of `before` and `after`
//!   is within `1e-5·m` of the exact value (the oracle's measured bound),
//!   hence the factor 2.
//!
//! The printed IR after every pass must parse back to the same graph.
//! ResNet-18 runs at 32×32 instead of 224×224 (same graph otherwise) to keep
//! the test fast.

mod passes_common;

#[allow(dead_code)]
#[path = "oracle/reference.rs"]
mod reference;

use std::collections::HashMap;
use std::path::Path;

use onebit::ir::{DType, Graph, NodeId, Op, Params, Tensor, interp};
use onebit::passes::{PassOptions, PassSelection, optimize};
use onebit::text::{parse_str, print};
use passes_common::Gamma;

/// Passes that may change f32 values by rounding.
const APPROXIMATE: [&str; 2] = ["fold_batchnorm", "fold_scale_and_bn"];

fn load(path: &Path) -> Graph {
    let text = std::fs::read_to_string(path).unwrap();
    // ResNet-18 at 32×32: the same layers, 49 times fewer pixels.
    let text = text.replace("input x: f32[3, 224, 224]", "input x: f32[3, 32, 32]");
    parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference magnitudes of the outputs of `graph` (see the module doc).
fn magnitudes(graph: &Graph, params: &Params, inputs: &[Tensor]) -> Vec<reference::Value> {
    let order = graph.topo_order().unwrap();
    let inner: Vec<NodeId> = order
        .into_iter()
        .filter(|&id| graph.node(id).op != Op::Input)
        .collect();
    let mut every = graph.clone();
    every.set_outputs(inner.clone());
    let values = interp::run(&every, params, inputs).unwrap();
    let seen: HashMap<NodeId, Tensor> = inner.into_iter().zip(values).collect();
    let eval = reference::evaluate(graph, params, inputs, Some(&seen)).unwrap();
    graph
        .outputs()
        .iter()
        .map(|o| eval.values[o].clone())
        .collect()
}

/// The original model's outputs and their magnitudes.
struct Expected {
    outputs: Vec<Tensor>,
    magnitudes: Vec<reference::Value>,
}

/// Checks `after`'s outputs against the original's; `approximate` allows f32
/// rounding. Returns the number of f32 elements that differ at all.
fn compare(what: &str, graph: &Graph, got: &[Tensor], want: &Expected, approximate: bool) -> usize {
    assert_eq!(got.len(), want.outputs.len(), "{what}");
    let mut differ = 0;
    for (k, (g, w)) in got.iter().zip(&want.outputs).enumerate() {
        assert_eq!(g.shape, w.shape, "{what}: output {k}");
        let bits = graph.node(graph.outputs()[k]).ty.dtype == DType::Bit;
        for e in 0..w.data.len() {
            let (a, b) = (g.data[e], w.data[e]);
            if a == b {
                continue;
            }
            differ += 1;
            let m = want.magnitudes[k].m[e];
            let tol = 2.0 * reference::REL_TOL * m.max(f64::from(b).abs());
            assert!(
                approximate && !bits && (f64::from(a) - f64::from(b)).abs() <= tol,
                "{what}: output {k} element {e}: {a:e} after, {b:e} before (magnitude {m:e}, tolerance {tol:e}, bits {bits}, approximate {approximate})"
            );
        }
    }
    differ
}

fn run_passes(graph: &mut Graph, params: &mut Params, passes: &str) {
    let selection = PassSelection::parse(passes).unwrap();
    optimize(
        graph,
        params,
        &selection,
        &PassOptions::default(),
        |_, _| {},
    )
    .unwrap_or_else(|e| panic!("{passes}: {e}"));
    let reparsed = parse_str(&print(graph)).unwrap_or_else(|e| panic!("after {passes}: {e}"));
    reparsed
        .same_as(graph)
        .unwrap_or_else(|e| panic!("after {passes}, parse(print(g)) differs: {e}"));
}

fn check_model(path: &Path, seed: u64) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let graph = load(path);
    let params = passes_common::stress_params(&graph, seed, Gamma::Mixed);
    let inputs = passes_common::random_inputs(&graph, 2, seed ^ 0x1234);
    let want = Expected {
        outputs: interp::run(&graph, &params, &inputs).unwrap(),
        magnitudes: magnitudes(&graph, &params, &inputs),
    };
    let defaults: Vec<&str> = PassSelection::default_pipeline().names();
    // Each pass alone on the original model.
    for pass in &defaults {
        let (mut g, mut p) = (graph.clone(), params.clone());
        run_passes(&mut g, &mut p, pass);
        let got = interp::run(&g, &p, &inputs).unwrap();
        compare(
            &format!("{name}: {pass} alone"),
            &g,
            &got,
            &want,
            APPROXIMATE.contains(pass),
        );
    }
    // The default pipeline, checked after every step.
    let (mut g, mut p) = (graph.clone(), params.clone());
    let mut approximate = false;
    for pass in &defaults {
        run_passes(&mut g, &mut p, pass);
        approximate |= APPROXIMATE.contains(pass);
        let got = interp::run(&g, &p, &inputs).unwrap();
        compare(
            &format!("{name}: default up to {pass}"),
            &g,
            &got,
            &want,
            approximate,
        );
    }
}

#[test]
fn every_pass_preserves_every_model() {
    let files = passes_common::model_files();
    std::thread::scope(|s| {
        for path in &files {
            s.spawn(move || {
                for seed in 1..=2 {
                    check_model(path, seed);
                }
            });
        }
    });
}

/// `select_cells` is exact when the softmax is one-hot in f32.
#[test]
fn select_cells_is_exact_for_one_hot_logits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny_search.bnn");
    let graph = load(&path);
    let mut params = passes_common::stress_params(&graph, 3, Gamma::Mixed);
    for (k, (name, t)) in params.tensors.iter_mut().enumerate() {
        if name.ends_with(".alpha") {
            let best = k % t.data.len();
            for (i, a) in t.data.iter_mut().enumerate() {
                *a = if i == best { 100.0 } else { -100.0 };
            }
        }
    }
    let inputs = passes_common::random_inputs(&graph, 2, 9);
    let want = interp::run(&graph, &params, &inputs).unwrap();
    let (mut g, mut p) = (graph.clone(), params.clone());
    run_passes(&mut g, &mut p, "select_cells");
    assert!(
        g.node_ids().all(|id| g.node(id).op != Op::Choose),
        "{}",
        print(&g)
    );
    assert!(!print(&g).contains("choose {"));
    let got = interp::run(&g, &p, &inputs).unwrap();
    for (a, b) in got.iter().zip(&want) {
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!(x == y, "{x} vs {y}");
        }
    }
    // top_k = 2 keeps a smaller choose.
    let (mut g, mut p) = (graph.clone(), params.clone());
    let options = PassOptions {
        top_k: 2,
        ..PassOptions::default()
    };
    optimize(
        &mut g,
        &mut p,
        &PassSelection::parse("select_cells").unwrap(),
        &options,
        |_, _| {},
    )
    .unwrap();
    let text = print(&g);
    assert!(text.contains("choose {"), "{text}");
    let reparsed = parse_str(&text).unwrap();
    reparsed.same_as(&g).unwrap();
    for id in g.node_ids() {
        if g.node(id).op == Op::Choose {
            assert_eq!(g.operands(id).len(), 2);
        }
    }
}

// ---------------------------------------------------------------------------
// Threshold boundaries
// ---------------------------------------------------------------------------

/// Sets every batchnorm channel of `bn` so that its switching point lands
/// exactly on the dot product `target(c)`: `μ = α·d` (as the interpreter
/// rounds `d·α`), `β = 0`, so the batchnorm is exactly 0 there and
/// `sign(0) = +1`. Channel kinds cycle through γ > 0, γ < 0, γ = 0 with
/// β = 0 (always +1), γ = 0 with β < 0 (always −1), and σ² = 1e-6.
fn set_boundaries(params: &mut Params, bn: &str, alpha: &[f32], target: impl Fn(usize) -> i64) {
    let c = alpha.len();
    let mut set = |suffix: &str, f: &dyn Fn(usize) -> f32| {
        let t = params.tensors.get_mut(&format!("{bn}.{suffix}")).unwrap();
        assert_eq!(t.data.len(), c);
        for (i, x) in t.data.iter_mut().enumerate() {
            *x = f(i);
        }
    };
    set("weight", &|i| match i % 5 {
        0 => 1.5,
        1 => -0.75,
        2 | 3 => 0.0,
        _ => 2.0,
    });
    set("bias", &|i| if i % 5 == 3 { -1.0 } else { 0.0 });
    set("running_mean", &|i| target(i) as f32 * alpha[i]);
    set("running_var", &|i| if i % 5 == 4 { 1e-6 } else { 1.0 });
}

/// Runs the default pipeline and checks the bits on `inputs` exactly;
/// returns how many batchnorm values were exactly 0 (ties) before.
fn check_bits(graph: &Graph, params: &Params, inputs: &[Tensor], bn: &str) -> usize {
    let before = interp::run_all(graph, params, inputs).unwrap();
    let ties = before[&graph.find(bn).unwrap()]
        .data
        .iter()
        .filter(|&&v| v == 0.0)
        .count();
    let want = interp::run(graph, params, inputs).unwrap();
    let (mut g, mut p) = (graph.clone(), params.clone());
    run_passes(&mut g, &mut p, "default");
    assert!(print(&g).contains("output=threshold"), "{}", print(&g));
    let got = interp::run(&g, &p, inputs).unwrap();
    assert_eq!(got[0].data, want[0].data, "bits differ");
    ties
}

fn alphas(params: &Params, layer: &str, out: usize, scaled: bool) -> Vec<f32> {
    if !scaled {
        return vec![1.0; out];
    }
    let w = &params.tensors[&format!("{layer}.weight")].data;
    onebit::ir::interp::channel_scales(w, out)
}

/// bdense → batchnorm → sign, odd K: every achievable dot product of every
/// channel (from −K to K in steps of 2) is one sample, so each channel is
/// evaluated at its threshold and at every dot product around it.
#[test]
fn bdense_thresholds_are_exact_at_every_dot_product() {
    for (k, scale) in [(9, false), (9, true), (8, true), (33, true)] {
        let out = 10;
        let src = format!(
            "model m {{ input x: f32[{k}]  h = bdense(sign(x), {out}{})  bn = batchnorm(h)  y = sign(bn)  output y }}",
            if scale { ", scale=channel" } else { "" }
        );
        let graph = parse_str(&src).unwrap();
        let mut params = Params::init(&graph, k as u64);
        let alpha = alphas(&params, "h", out, scale);
        // Channel c switches at dot product −K + 2·(c mod (K+1)) … spread.
        let target = |c: usize| -(k as i64) + 2 * ((3 * c as i64) % (k as i64 + 1));
        set_boundaries(&mut params, "bn", &alpha, target);
        let w = params.tensors["h.weight"].data.clone();
        let mut data = Vec::new();
        let mut n = 0;
        for c in 0..out {
            for plus in 0..=k {
                // dot = plus − (k − plus): agree with the weights' signs on
                // the first `plus` inputs.
                for i in 0..k {
                    let s = if w[c * k + i] >= 0.0 { 1.0 } else { -1.0 };
                    data.push(if i < plus { s } else { -s });
                }
                n += 1;
            }
        }
        let inputs = vec![Tensor {
            shape: vec![n, k],
            data,
        }];
        let ties = check_bits(&graph, &params, &inputs, "bn");
        assert!(
            ties > 0,
            "K = {k}: no sample hit a batchnorm value of exactly 0"
        );
    }
}

/// bconv2d → batchnorm → sign with `pad_value` 0 and 1: with zero padding the
/// border sums have fewer terms (and the other parity), so the dot products
/// hit `τ`, `τ ± 1` and more; the fused thresholds must agree everywhere.
#[test]
fn bconv2d_thresholds_are_exact_with_zero_and_one_padding() {
    for pad_value in [0, 1] {
        for scale in [false, true] {
            let out = 10;
            let src = format!(
                "model m {{ input x: f32[3, 6, 5]  h = bconv2d(sign(x), {out}, kernel=3, pad=1, pad_value={pad_value}{})  bn = batchnorm(h)  y = sign(bn)  output y }}",
                if scale { ", scale=channel" } else { "" }
            );
            let graph = parse_str(&src).unwrap();
            let mut params = Params::init(&graph, 5);
            let alpha = alphas(&params, "h", out, scale);
            // Small targets, −4..=5, so random inputs tie often.
            set_boundaries(&mut params, "bn", &alpha, |c| c as i64 - 4);
            let inputs = passes_common::random_inputs(&graph, 64, 77);
            let ties = check_bits(&graph, &params, &inputs, "bn");
            assert!(ties > 0, "pad_value {pad_value}: no tie was hit");
        }
    }
}

// ---------------------------------------------------------------------------
// Output names
// ---------------------------------------------------------------------------

/// A layer that absorbs a chain ending in a model output takes the output's
/// name, and its parameters follow (the absorbed batchnorm's are dropped):
/// the optimized model has the same interface and the same values.
#[test]
fn a_fused_output_keeps_its_name_and_the_layer_its_parameters() {
    let cases = [
        (
            "model m { input x: f32[6]  d = dense(x, 4)  y = batchnorm(d)  output y }",
            &["y.weight", "y.bias"][..],
        ),
        (
            "model m { input x: f32[6]  d = bdense(sign(x), 4, scale=channel)  y = batchnorm(d)  output y }",
            &["y.weight", "y.multiplier", "y.bias"][..],
        ),
    ];
    for (src, want) in cases {
        let graph = parse_str(src).unwrap();
        let params = Params::init(&graph, 3);
        let inputs = passes_common::random_inputs(&graph, 8, 5);
        let before = interp::run(&graph, &params, &inputs).unwrap();
        let (mut g, mut p) = (graph.clone(), params.clone());
        let selection = PassSelection::default_pipeline();
        let report = optimize(
            &mut g,
            &mut p,
            &selection,
            &PassOptions::default(),
            |_, _| {},
        )
        .unwrap_or_else(|e| panic!("{src}: {e}"));
        let text = print(&g);
        assert!(text.contains("output y"), "{text}");
        assert!(g.find("d").is_none(), "{text}");
        let mut names: Vec<&str> = p
            .tensors
            .keys()
            .chain(p.packed.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{text}");
        let layer = report.layers.iter().find(|l| l.name == "y").unwrap();
        assert_eq!(layer.fused.last().unwrap(), "batchnorm `y`", "{report}");
        let after = interp::run(&g, &p, &inputs).unwrap();
        for (a, b) in after[0].data.iter().zip(&before[0].data) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{a} vs {b}: {text}"
            );
        }
    }
}
