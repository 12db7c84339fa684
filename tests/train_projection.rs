//! PCNN's learned projections (Gu et al. 2019) on layers with latent binary
//! weights (`projection=true`), through the reference interpreter:
//!
//! - the estimator through the projection: a projected layer's gradients
//!   against those of the real layer with weights `α_o·sign(P_k·W_ok)`
//!   (themselves checked by finite differences), by the chain rule with the
//!   clipped STE at `V = P∘W`;
//! - the projection loss against its formula written out here and its
//!   gradients against central differences of the term;
//! - `fold_projection` leaves every output bit-identical;
//! - a projection loss without a projected layer is an error.

use std::collections::HashMap;

#[path = "train_common/mod.rs"]
mod common;

use common::{Weights, gradients, loss};
use onebit::ir::{Graph, Params, Tensor, interp};
use onebit::passes::differentiate::{DifferentiateError, LossSpec, TrainingGraph, differentiate};
use onebit::passes::{PassOptions, PassSelection, optimize};
use onebit::text::{parse_str, print};
use onebit::util::rng::Rng;

fn node_values(
    train: &TrainingGraph,
    params: &Params,
    inputs: &[Tensor],
) -> HashMap<String, Tensor> {
    let vals = interp::run_all(&train.graph, params, inputs).unwrap();
    train
        .graph
        .node_ids()
        .map(|id| (train.graph.node(id).name.clone(), vals[&id].clone()))
        .collect()
}

/// Central differences of `f` in each of `indices` of `params[name]`,
/// against `analytic`.
fn check_fd(
    what: &str,
    params: &Params,
    name: &str,
    analytic: &[f32],
    indices: impl Iterator<Item = usize>,
    h: f32,
    f: &dyn Fn(&Params) -> f64,
) -> usize {
    let mut checked = 0;
    for i in indices {
        let at = |delta: f32| {
            let mut p = params.clone();
            p.tensors.get_mut(name).unwrap().data[i] += delta;
            f(&p)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        let an = analytic[i] as f64;
        assert!(
            (fd - an).abs() <= 2e-3 + 2e-2 * fd.abs().max(an.abs()),
            "{what}: {name}[{i}]: analytic {an}, finite differences {fd}"
        );
        checked += 1;
    }
    checked
}

/// `V_ok = P_k·W_ok` (the f32 product every engine takes the sign of) and
/// `α_o = mean|W_o|` of the latent weights (1 unless `scaled`), written out
/// here.
fn projected_and_alpha(w: &[f32], p: &[f32], out: usize, scaled: bool) -> (Vec<f32>, Vec<f32>) {
    let k = w.len() / out;
    assert_eq!(p.len(), k);
    let v = w.iter().enumerate().map(|(i, &x)| p[i % k] * x).collect();
    let alpha = (0..out)
        .map(|o| {
            if scaled {
                w[o * k..][..k].iter().map(|x| x.abs()).sum::<f32>() / k as f32
            } else {
                1.0
            }
        })
        .collect();
    (v, alpha)
}

fn sign(x: f32) -> f32 {
    if x >= 0.0 { 1.0 } else { -1.0 }
}

/// A projected layer `c` computes with `α_o·sign(V_ok)`: its real twin (the
/// same model with `c` a real layer of weights `α_o·sign(V_ok)`) gets the
/// same gradients everywhere else, and by the chain rule with the clipped
/// STE at `V` (`∂sign(V)/∂V ≈ 1[|V| <= 1]`, `α` held constant):
/// `∂L/∂W_ok = 1[|V_ok| <= 1]·α_o·P_k·g_ok` and
/// `∂L/∂P_k = Σ_o 1[|V_ok| <= 1]·α_o·W_ok·g_ok`, `g` the twin's weight
/// gradient.
#[test]
fn projected_layers_follow_the_estimator_through_the_projection() {
    let over_signs = |layer: &str, head: &str| {
        format!(
            "model m {{ input x: f32[2, 6, 6]  h = conv2d(x, 4, kernel=1)  s = sign(h)
               c = {layer}  y = {head}  output y }}"
        )
    };
    let over_reals = |layer: &str, head: &str| {
        format!("model m {{ input x: f32[2, 6, 6]  c = {layer}  y = {head}  output y }}")
    };
    let conv_head = "dense(flatten(batchnorm(c)), 3)";
    let dense_head = "dense(batchnorm(c), 3)";
    let cases = [
        (
            over_signs(
                "bconv2d(s, 5, kernel=3, pad=1, scale=channel, projection=true)",
                conv_head,
            ),
            over_signs("conv2d(s, 5, kernel=3, pad=1, bias=false)", conv_head),
            true,
        ),
        (
            over_signs(
                "bconv2d(s, 4, kernel=3, pad=1, groups=2, scale=channel, projection=true)",
                conv_head,
            ),
            over_signs(
                "conv2d(s, 4, kernel=3, pad=1, groups=2, bias=false)",
                conv_head,
            ),
            true,
        ),
        (
            over_signs("bdense(flatten(s), 6, projection=true)", dense_head),
            over_signs("dense(flatten(s), 6, bias=false)", dense_head),
            false,
        ),
        (
            over_reals(
                "conv2d(x, 4, kernel=3, weights=binary, scale=channel, projection=true)",
                conv_head,
            ),
            over_reals("conv2d(x, 4, kernel=3)", conv_head),
            true,
        ),
        (
            over_reals(
                "dense(flatten(x), 7, bias=false, weights=binary, projection=true)",
                dense_head,
            ),
            over_reals("dense(flatten(x), 7, bias=false)", dense_head),
            false,
        ),
    ];
    for (case, (binary, real, scaled)) in cases.iter().enumerate() {
        let bin = parse_str(binary).unwrap();
        let re = parse_str(real).unwrap();
        let train_bin = differentiate(&bin, &LossSpec::default()).unwrap();
        let train_re = differentiate(&re, &LossSpec::default()).unwrap();
        let seed = 50 + 10 * case as u64;
        let mut params = common::random_params(&bin, seed, Weights::Init);
        // Latent weights on both sides of the clip, before and after the
        // projection.
        let mut rng = Rng::new(seed + 1);
        for v in &mut params.tensors.get_mut("c.weight").unwrap().data {
            *v = rng.uniform(1.4);
        }
        let w = params.tensors["c.weight"].clone();
        let p = params.tensors["c.projection"].clone();
        assert!(p.data.iter().any(|&x| x < 0.0) && p.data.iter().any(|&x| x > 1.0));
        let out = w.shape[0];
        let k = w.data.len() / out;
        let (v, alpha) = projected_and_alpha(&w.data, &p.data, out, *scaled);
        let mut twin = params.clone();
        twin.tensors.remove("c.projection");
        for (i, x) in twin
            .tensors
            .get_mut("c.weight")
            .unwrap()
            .data
            .iter_mut()
            .enumerate()
        {
            *x = alpha[i / k] * sign(v[i]);
        }
        let inputs = common::random_inputs(&train_bin.graph, 4, seed + 2);

        // The twin's gradients, by finite differences downstream of any sign.
        let g_re = gradients(&train_re, &twin, &inputs);
        let downstream: Vec<&String> = g_re.keys().filter(|n| !n.starts_with("h.")).collect();
        let f = |ps: &Params| loss(&train_re, ps, &inputs);
        for name in downstream {
            let len = g_re[name].data.len();
            let step = (len / 6).max(1);
            check_fd(
                binary,
                &twin,
                name,
                &g_re[name].data,
                (0..len).step_by(step),
                5e-4,
                &f,
            );
        }

        let g_bin = gradients(&train_bin, &params, &inputs);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 + 1e-3 * a.abs().max(b.abs());
        let g = &g_re["c.weight"].data;
        let mut projection_want = vec![0.0f64; k];
        let mut passed = 0;
        for i in 0..w.data.len() {
            let mask = if v[i].abs() <= 1.0 { 1.0 } else { 0.0 };
            passed += mask as usize;
            let want = mask * alpha[i / k] * p.data[i % k] * g[i];
            let got = g_bin["c.weight"].data[i];
            assert!(close(got, want), "{binary}: c.weight[{i}] {got} vs {want}");
            projection_want[i % k] += (mask * alpha[i / k] * w.data[i] * g[i]) as f64;
        }
        assert!(
            passed > 0 && passed < w.data.len(),
            "{binary}: the clip is not exercised"
        );
        let got = &g_bin["c.projection"];
        assert_eq!(got.shape, p.shape);
        for (j, (&a, &b)) in got.data.iter().zip(&projection_want).enumerate() {
            assert!(close(a, b as f32), "{binary}: c.projection[{j}] {a} vs {b}");
        }
        for (name, gr) in &g_re {
            if name != "c.weight" {
                for (a, b) in gr.data.iter().zip(&g_bin[name].data) {
                    assert!(close(*a, *b), "{binary}: {name}: {a} vs {b}");
                }
            }
        }
    }
}

/// The projection loss, `(λ/2)·Σ_{o,k} (V_ok − α_o·sign(V_ok))²` per
/// projected layer (`α` the learned scale, `mean|W_o|` with `scale=channel`,
/// 1 without a scale), beside the quantization loss of an unprojected
/// layer: each term's value against the formula, its gradients in `W`, `P`
/// and a learned `α` against central differences of the term (where `α`
/// does not move with `W`), each gradient the sum of its two parts, and the
/// loss the sum of its terms.
#[test]
fn projection_loss_follows_its_definition_and_finite_differences() {
    let model = parse_str(
        "model m { input x: f32[2, 5, 5]
                   c = conv2d(x, 3, kernel=3, weights=binary, scale=learned, projection=true)
                   s = sign(batchnorm(c))
                   b = bconv2d(s, 4, kernel=2, pad=1, projection=true)
                   d = bdense(flatten(sign(batchnorm(b))), 6, scale=channel, projection=true)
                   u = dense(batchnorm(d), 5, weights=binary)
                   y = dense(u, 3)
                   output y }",
    )
    .unwrap();
    let (lambda, quantization) = (0.08f32, 0.05f32);
    let spec = LossSpec {
        projection: lambda,
        quantization,
        ..LossSpec::default()
    };
    let train = differentiate(&model, &spec).unwrap();
    let mut names: Vec<&str> = train.terms.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "b.projection_loss",
            "c.projection_loss",
            "d.projection_loss",
            "u.quantization_loss"
        ]
    );
    let mut params = common::random_params(&model, 71, Weights::Init);
    let mut rng = Rng::new(72);
    for layer in ["c", "b", "d", "u"] {
        for v in &mut params
            .tensors
            .get_mut(&format!("{layer}.weight"))
            .unwrap()
            .data
        {
            *v = rng.uniform(1.3);
        }
    }
    for v in &mut params.tensors.get_mut("c.scale").unwrap().data {
        *v = 0.3 + rng.next_f32();
    }
    let inputs = common::random_inputs(&train.graph, 4, 73);
    let values = node_values(&train, &params, &inputs);
    let mut terms = values["u.quantization_loss"].data[0];
    for layer in ["c", "b", "d"] {
        let term = format!("{layer}.projection_loss");
        let (w_name, p_name, a_name) = (
            format!("{layer}.weight"),
            format!("{layer}.projection"),
            format!("{layer}.scale"),
        );
        let w = &params.tensors[&w_name];
        let p = &params.tensors[&p_name];
        let out = w.shape[0];
        let k = w.data.len() / out;
        let (v, mut alpha) = projected_and_alpha(&w.data, &p.data, out, layer == "d");
        if layer == "c" {
            alpha = params.tensors[&a_name].data.clone();
        }
        let expected: f64 = v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let r = x as f64 - (alpha[i / k] * sign(x)) as f64;
                r * r
            })
            .sum::<f64>()
            * (lambda as f64 / 2.0);
        let value = values[&term].data[0];
        assert!(
            (value as f64 - expected).abs() <= 1e-5 * expected,
            "{term}: {value} vs {expected}"
        );
        terms += value;

        // The term's gradients against central differences of the term,
        // away from sign's jumps. With `scale=channel`, `α = mean|W|` moves
        // with `W` and the rule holds it constant (as PCNN does), so only
        // `P` is checked there.
        let of_term = |ps: &Params| {
            let id = train.graph.find(&term).unwrap();
            interp::run_all(&train.graph, ps, &inputs).unwrap()[&id].data[0] as f64
        };
        let h = 1e-3f32;
        let mut wrt = vec![p_name.clone()];
        if layer != "d" {
            wrt.push(w_name.clone());
        }
        if layer == "c" {
            wrt.push(a_name.clone());
        }
        for name in &wrt {
            let part = &values[&format!("{name}.grad.1")];
            let safe: Vec<usize> = (0..part.data.len())
                .filter(|&i| {
                    // A step in W_ok or P_k must not flip any sign(V).
                    if name == &w_name {
                        v[i].abs() > 2.0 * h * p.data[i % k].abs()
                    } else if name == &p_name {
                        (0..out).all(|o| v[o * k + i].abs() > 2.0 * h * w.data[o * k + i].abs())
                    } else {
                        true
                    }
                })
                .collect();
            let checked = check_fd(
                &term,
                &params,
                name,
                &part.data,
                safe.into_iter(),
                h,
                &of_term,
            );
            assert!(checked >= 3, "{term}: {checked} elements of {name} checked");

            let through = &values[&format!("{name}.grad.0")];
            let total = &values[&format!("{name}.grad")];
            for i in 0..total.data.len() {
                assert_eq!(total.data[i], through.data[i] + part.data[i], "{name}[{i}]");
            }
        }
    }
    let ce = values["loss.cross_entropy"].data[0];
    let total = loss(&train, &params, &inputs) as f32;
    assert!(
        (total - (ce + terms)).abs() <= 1e-6 * total.abs(),
        "loss {total} vs {ce} + {terms}"
    );
}

/// A model with all four projected layer kinds, each scale form among them.
const ALL_KINDS: &str = "model m { input x: f32[3, 6, 6]
    c = conv2d(x, 8, kernel=3, pad=1, weights=binary, scale=channel, projection=true)
    s = sign(batchnorm(c))
    b = bconv2d(s, 8, kernel=3, pad=1, pad_value=1, groups=2, scale=channel, projection=true)
    t = sign(batchnorm(maxpool(b, 2)))
    d = bdense(flatten(t), 16, projection=true)
    e = dense(batchnorm(d), 4, weights=binary, scale=learned, projection=true)
    output e }";

/// `fold_projection` alone: the same outputs, bit for bit (the folded
/// weights are the very products whose signs the layer took, and `α` moves
/// into a learned scale unchanged), and no projection left.
#[test]
fn fold_projection_leaves_every_output_bit_identical() {
    let model = parse_str(ALL_KINDS).unwrap();
    for seed in 0..4u64 {
        let mut params = common::random_params(&model, 80 + seed, Weights::Spread);
        let mut rng = Rng::new(90 + seed);
        for layer in ["c", "b", "d", "e"] {
            for v in &mut params
                .tensors
                .get_mut(&format!("{layer}.weight"))
                .unwrap()
                .data
            {
                *v = rng.uniform(1.4);
            }
        }
        let inputs = common::random_inputs(&model, 3, 100 + seed);
        let before = interp::run(&model, &params, &inputs).unwrap();

        let mut folded: Graph = model.clone();
        let mut folded_params = params.clone();
        optimize(
            &mut folded,
            &mut folded_params,
            &PassSelection::parse("fold_projection").unwrap(),
            &PassOptions::default(),
            |_, _| {},
        )
        .unwrap();
        let text = print(&folded);
        assert!(!text.contains("projection"), "{text}");
        assert_eq!(text.matches("scale=learned").count(), 3, "{text}");
        assert!(
            !folded_params
                .tensors
                .keys()
                .any(|n| n.ends_with(".projection"))
        );
        let after = interp::run(&folded, &folded_params, &inputs).unwrap();
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(a.shape, b.shape);
            for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
                assert_eq!(
                    x.to_bits(),
                    y.to_bits(),
                    "seed {seed}: output[{i}] {x} vs {y}"
                );
            }
        }
    }
}

/// A projection loss needs a projected layer to regularise.
#[test]
fn a_projection_loss_without_a_projection_is_an_error() {
    let model = parse_str("model m { input x: f32[6]  y = dense(x, 3, weights=binary)  output y }")
        .unwrap();
    let spec = LossSpec {
        projection: 0.1,
        ..LossSpec::default()
    };
    let err = differentiate(&model, &spec).unwrap_err();
    assert!(matches!(err, DifferentiateError::NoProjection), "{err}");
    assert!(err.to_string().contains("projection=true"), "{err}");
}
