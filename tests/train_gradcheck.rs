//! Gradient checks of the training graph, through the reference interpreter.
//!
//! - Real-valued paths: every parameter gradient that `differentiate` emits
//!   is compared with central finite differences of the loss the same
//!   training graph computes.
//! - Binarized paths, whose derivative is zero almost everywhere, against the
//!   estimators' written definitions: each `grad=` rule of `sign`
//!   elementwise, and a binary layer's latent-weight gradient against the
//!   finite-difference gradient of the equivalent real layer with weights
//!   `α·sign(W)`, masked by `1[|W| <= 1]` (the clipped STE).

#[path = "train_common/mod.rs"]
mod common;

use common::{Weights, gradients, loss};
use onebit::ir::{Params, Tensor, interp};
use onebit::passes::differentiate::{LossSpec, TrainingGraph, differentiate};
use onebit::text::parse_str;
use onebit::util::rng::Rng;

fn random_params(graph: &onebit::ir::Graph, seed: u64) -> Params {
    common::random_params(graph, seed, Weights::Init)
}

fn batch(train: &TrainingGraph, n: usize, seed: u64) -> Vec<Tensor> {
    common::random_inputs(&train.graph, n, seed)
}

/// Compares the gradients of the parameters `only` lists (all when empty)
/// with central differences, on up to `per_param` elements of each.
fn finite_differences(
    train: &TrainingGraph,
    params: &Params,
    inputs: &[Tensor],
    per_param: usize,
    only: &[&str],
) {
    let mut grads = gradients(train, params, inputs);
    grads.retain(|name, _| only.is_empty() || only.contains(&name.as_str()));
    assert!(!grads.is_empty());
    // Small enough that no relu, max or clip switches branch between the two
    // evaluations (they would make the difference quotient meaningless),
    // large enough that f32 rounding of the loss stays well below tolerance.
    let h = 5e-4f32;
    let mut checked = 0;
    for (name, g) in &grads {
        let len = g.data.len();
        let step = (len / per_param).max(1);
        for i in (0..len).step_by(step).take(per_param) {
            let mut plus = params.clone();
            plus.tensors.get_mut(name).unwrap().data[i] += h;
            let mut minus = params.clone();
            minus.tensors.get_mut(name).unwrap().data[i] -= h;
            let fd = (loss(train, &plus, inputs) - loss(train, &minus, inputs)) / (2.0 * h as f64);
            let an = g.data[i] as f64;
            let tol = 2e-3 + 2e-2 * fd.abs().max(an.abs());
            assert!(
                (fd - an).abs() <= tol,
                "{name}[{i}]: analytic {an}, finite differences {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked >= grads.len());
}

fn check_real(source: &str, seed: u64, n: usize) {
    let model = parse_str(source).unwrap();
    let train = differentiate(
        &model,
        &LossSpec {
            smoothing: 0.1,
            ..LossSpec::default()
        },
    )
    .unwrap();
    let params = random_params(&model, seed);
    let inputs = batch(&train, n, seed + 1);
    finite_differences(&train, &params, &inputs, 8, &[]);
}

#[test]
fn convolutions_batchnorm_pools_and_prelu_match_finite_differences() {
    check_real(
        "model m {
           input x: f32[4, 7, 6]
           c = conv2d(x, 6, kernel=3, stride=2, pad=1, groups=2)
           b = batchnorm(c)
           a = shift(prelu(shift(b)))
           d = conv2d(a, 4, kernel=(2, 3), dilation=(1, 2), pad=(1, 2))
           m = maxpool(d, 2, stride=1, pad=1)
           v = avgpool(m, 3, stride=2, pad=1)
           g = global_avgpool(v)
           y = dense(g, 5)
           output y
         }",
        3,
        4,
    );
}

#[test]
fn dense_layers_and_graph_structure_match_finite_differences() {
    check_real(
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
        5,
        5,
    );
}

/// PC-DARTS's partial channel connection: a slice through an op, the rest
/// bypassing it, then a channel shuffle.
#[test]
fn channel_slices_and_shuffles_match_finite_differences() {
    check_real(
        "model m {
           input x: f32[6, 4, 4]
           a = conv2d(slice_channels(x, 0, 2), 2, kernel=3, pad=1)
           b = slice_channels(x, 2, 4)
           s = shuffle_channels(concat(a, b), 3)
           t = shuffle_channels(slice_channels(s, 1, 4), 2)
           y = dense(flatten(batchnorm(t)), 4)
           output y
         }",
        11,
        3,
    );
}

#[test]
fn batchnorm_on_images_and_concat_of_feature_maps() {
    check_real(
        "model m {
           input x: f32[3, 5, 5]
           a = conv2d(x, 4, kernel=3, pad=1)
           b = conv2d(x, 2, kernel=1, bias=false)
           c = concat(batchnorm(a), b)
           y = dense(flatten(c), 4)
           output y
         }",
        7,
        3,
    );
}

/// The `grad=` estimators, elementwise against their definitions.
#[test]
fn sign_estimators_follow_their_definitions() {
    let estimators: [(&str, fn(f32) -> f32); 3] = [
        ("ste", |x| if x.abs() <= 1.0 { 1.0 } else { 0.0 }),
        ("approx", |x| {
            if x.abs() <= 1.0 {
                2.0 - 2.0 * x.abs()
            } else {
                0.0
            }
        }),
        ("swish", |x| {
            let b = 5.0f32;
            b * (2.0 - b * x * (b * x / 2.0).tanh()) / (1.0 + (b * x).cosh())
        }),
    ];
    for (word, rule) in estimators {
        let source = format!(
            "model m {{ input x: f32[12]  h = dense(x, 16)  s = sign(h, grad={word})  y = dense(s, 5)  output y }}"
        );
        let model = parse_str(&source).unwrap();
        let train = differentiate(&model, &LossSpec::default()).unwrap();
        let params = random_params(&model, 11);
        let inputs = batch(&train, 6, 12);
        let vals = interp::run_all(&train.graph, &params, &inputs).unwrap();
        let value = |name: &str| &vals[&train.graph.find(name).unwrap()];
        let (h, ds, dh) = (value("h"), value("s.grad"), value("h.grad"));
        let mut inside = 0;
        for i in 0..h.data.len() {
            let expected = ds.data[i] * rule(h.data[i]);
            assert!(
                (dh.data[i] - expected).abs() <= 1e-6 * expected.abs().max(1e-3),
                "grad={word}: x = {}, dL/dy = {}, dL/dx = {} (expected {expected})",
                h.data[i],
                ds.data[i],
                dh.data[i]
            );
            inside += usize::from(h.data[i].abs() <= 1.0);
        }
        assert!(
            inside > 0 && inside < h.data.len(),
            "both sides of the clip are tested"
        );
    }
}

/// The real twin of a layer with binary latent weights `c.weight`: the
/// same parameters with `c.weight` replaced by `α_o·sign(W)` (`α_o` the mean
/// absolute latent weight of output `o` when `scaled`, else 1), written out
/// here independently of the library. Returns the twin's parameters, `α` and
/// the number of weights per output.
fn real_twin(params: &Params, scaled: bool) -> (Params, Vec<f32>, usize) {
    let latent = &params.tensors["c.weight"];
    let out = latent.shape[0];
    let k = latent.data.len() / out;
    let alpha: Vec<f32> = (0..out)
        .map(|o| {
            if scaled {
                latent.data[o * k..][..k]
                    .iter()
                    .map(|v| v.abs())
                    .sum::<f32>()
                    / k as f32
            } else {
                1.0
            }
        })
        .collect();
    let mut twin = params.clone();
    let w = &mut twin.tensors.get_mut("c.weight").unwrap().data;
    for (i, v) in w.iter_mut().enumerate() {
        *v = alpha[i / k] * if latent.data[i] >= 0.0 { 1.0 } else { -1.0 };
    }
    (twin, alpha, k)
}

/// A binary layer's gradients equal those of the real layer computing the
/// same function (weights `α·sign(W)` over the same ±1 input, zero padding),
/// the latent weights' masked by `1[|W| <= 1]`.
#[test]
fn binary_layers_follow_the_clipped_straight_through_estimator() {
    let cases = [
        (
            "bconv2d(s, 5, kernel=3, pad=1, scale=channel)",
            "conv2d(s, 5, kernel=3, pad=1, bias=false)",
        ),
        (
            "bconv2d(s, 5, kernel=(3, 2), stride=2)",
            "conv2d(s, 5, kernel=(3, 2), stride=2, bias=false)",
        ),
        (
            "bconv2d(s, 4, kernel=3, pad=1, groups=2, scale=channel)",
            "conv2d(s, 4, kernel=3, pad=1, groups=2, bias=false)",
        ),
    ];
    for (binary, real) in cases {
        let model = |layer: &str| {
            format!(
                "model m {{ input x: f32[2, 6, 6]  h = conv2d(x, 4, kernel=1)  s = sign(h)
                   c = {layer}  y = dense(flatten(batchnorm(c)), 3)  output y }}"
            )
        };
        let bin = parse_str(&model(binary)).unwrap();
        let re = parse_str(&model(real)).unwrap();
        let train_bin = differentiate(&bin, &LossSpec::default()).unwrap();
        let train_re = differentiate(&re, &LossSpec::default()).unwrap();
        let mut params = random_params(&bin, 21);
        // Latent weights on both sides of the clip.
        let mut rng = Rng::new(22);
        for v in &mut params.tensors.get_mut("c.weight").unwrap().data {
            *v = rng.uniform(1.4);
        }
        let scaled = binary.contains("scale=channel");
        let (real_params, alpha, k) = real_twin(&params, scaled);
        let latent = params.tensors["c.weight"].clone();
        let inputs = batch(&train_bin, 4, 23);

        // The real twin's weight gradient is itself checked by finite differences.
        // (Only downstream of the sign: finite differences cannot see through it.)
        finite_differences(
            &train_re,
            &real_params,
            &inputs,
            6,
            &["c.weight", "c.batchnorm.weight", "y.weight"],
        );
        let g_re = gradients(&train_re, &real_params, &inputs);
        let g_bin = gradients(&train_bin, &params, &inputs);
        let (gb, gr) = (&g_bin["c.weight"], &g_re["c.weight"]);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 + 1e-3 * a.abs().max(b.abs());
        for i in 0..gb.data.len() {
            let mask = if latent.data[i].abs() <= 1.0 {
                1.0
            } else {
                0.0
            };
            // The twin's dL/dV is Σ dy·s; through `α·sign(W)` with α held
            // constant, the latent weight gets α·Σ dy·s where |W| <= 1.
            let want = mask * alpha[i / k] * gr.data[i];
            assert!(
                close(gb.data[i], want),
                "{binary}: c.weight[{i}] {} vs {want}",
                gb.data[i]
            );
        }
        // Everything upstream of the layer gets the same gradient.
        for p in ["h.weight", "h.bias"] {
            for (a, b) in g_bin[p].data.iter().zip(&g_re[p].data) {
                assert!(close(*a, *b), "{binary}: {p}: {a} vs {b}");
            }
        }
    }
}

/// `weights=binary` over a real input: the gradients of the twin with real
/// weights `α·sign(W)`, the latent weights' masked by `1[|W| <= 1]` and
/// times α.
#[test]
fn binary_weights_over_real_inputs_follow_the_estimator() {
    for (binary, real, scaled) in [
        (
            "dense(x, 7, weights=binary, scale=channel)",
            "dense(x, 7)",
            true,
        ),
        (
            "dense(x, 7, bias=false, weights=binary)",
            "dense(x, 7, bias=false)",
            false,
        ),
    ] {
        let model = |layer: &str| {
            format!(
                "model m {{ input x: f32[12]  c = {layer}  y = dense(batchnorm(c), 3)  output y }}"
            )
        };
        let bin = parse_str(&model(binary)).unwrap();
        let re = parse_str(&model(real)).unwrap();
        let train_bin = differentiate(&bin, &LossSpec::default()).unwrap();
        let train_re = differentiate(&re, &LossSpec::default()).unwrap();
        let mut params = random_params(&bin, 31);
        let mut rng = Rng::new(32);
        for v in &mut params.tensors.get_mut("c.weight").unwrap().data {
            *v = rng.uniform(1.4);
        }
        let (real_params, alpha, k) = real_twin(&params, scaled);
        let latent = params.tensors["c.weight"].clone();
        let inputs = batch(&train_bin, 5, 33);
        finite_differences(&train_re, &real_params, &inputs, 8, &[]);
        let (g_bin, g_re) = (
            gradients(&train_bin, &params, &inputs),
            gradients(&train_re, &real_params, &inputs),
        );
        for i in 0..latent.data.len() {
            let mask = if latent.data[i].abs() <= 1.0 {
                1.0
            } else {
                0.0
            };
            let want = mask * alpha[i / k] * g_re["c.weight"].data[i];
            let got = g_bin["c.weight"].data[i];
            assert!(
                (got - want).abs() <= 1e-4 + 1e-3 * want.abs(),
                "{binary}: c.weight[{i}] {got} vs {want}"
            );
        }
        for (name, g) in &g_re {
            if name != "c.weight" {
                for (a, b) in g.data.iter().zip(&g_bin[name].data) {
                    assert!(
                        (a - b).abs() <= 1e-4 + 1e-3 * a.abs(),
                        "{binary}: {name}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// A node's value in a run of the training graph.
fn node_value(train: &TrainingGraph, params: &Params, inputs: &[Tensor], name: &str) -> Tensor {
    let id = train
        .graph
        .find(name)
        .unwrap_or_else(|| panic!("no node `{name}`"));
    interp::run_all(&train.graph, params, inputs).unwrap()[&id].clone()
}

/// `λ·Σ_{o,k} (W_ok − α_o·sign(W_ok))²` in f64, written out here.
fn quantization_term(w: &[f32], alpha: &[f64], lambda: f32) -> f64 {
    let k = w.len() / alpha.len();
    let sum: f64 = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = v as f64 - alpha[i / k] * if v >= 0.0 { 1.0 } else { -1.0 };
            d * d
        })
        .sum();
    sum * lambda as f64
}

/// The weight quantization loss: its value against the formula written out
/// here, its gradient against central differences of that value (a real
/// path: `α = mean|W|` moves with `W` too), each regularised weight's
/// gradient the sum of its two parts, and the loss the sum of its terms.
#[test]
fn quantization_loss_follows_its_definition_and_finite_differences() {
    let model = parse_str(
        "model m { input x: f32[2, 5, 5]
                   c = conv2d(x, 3, kernel=3, weights=binary, scale=channel)
                   s = sign(batchnorm(c))
                   b = bconv2d(s, 4, kernel=2, pad=1)
                   d = bdense(flatten(sign(batchnorm(b))), 6, scale=channel)
                   y = dense(batchnorm(d), 3)
                   output y }",
    )
    .unwrap();
    let lambda = 0.05f32;
    let spec = LossSpec {
        quantization: lambda,
        ..LossSpec::default()
    };
    let train = differentiate(&model, &spec).unwrap();
    let mut params = random_params(&model, 41);
    let mut rng = Rng::new(42);
    for layer in ["c", "b", "d"] {
        for v in &mut params
            .tensors
            .get_mut(&format!("{layer}.weight"))
            .unwrap()
            .data
        {
            *v = rng.uniform(1.3);
        }
    }
    let inputs = batch(&train, 4, 43);
    let mut terms = 0.0f32;
    for (layer, scaled) in [("c", true), ("b", false), ("d", true)] {
        let term = format!("{layer}.quantization_loss");
        let w = &params.tensors[&format!("{layer}.weight")];
        let out = w.shape[0];
        let k = w.data.len() / out;
        let alpha: Vec<f64> = (0..out)
            .map(|o| {
                let row = &w.data[o * k..][..k];
                if scaled {
                    row.iter().map(|v| v.abs() as f64).sum::<f64>() / k as f64
                } else {
                    1.0
                }
            })
            .collect();
        let expected = quantization_term(&w.data, &alpha, lambda);
        let value = node_value(&train, &params, &inputs, &term).data[0];
        assert!(
            (value as f64 - expected).abs() <= 1e-5 * expected,
            "{term}: {value} vs {expected}"
        );
        terms += value;

        // The term's own gradient, against central differences of the term.
        let part = node_value(&train, &params, &inputs, &format!("{layer}.weight.grad.1"));
        let h = 1e-3f32;
        let mut checked = 0;
        for i in (0..w.data.len()).step_by(3) {
            if w.data[i].abs() < 10.0 * h {
                continue; // the difference quotient would cross sign's jump
            }
            let at = |delta: f32| {
                let mut p = params.clone();
                p.tensors.get_mut(&format!("{layer}.weight")).unwrap().data[i] += delta;
                node_value(&train, &p, &inputs, &term).data[0] as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            let an = part.data[i] as f64;
            assert!(
                (fd - an).abs() <= 1e-3 + 1e-2 * fd.abs().max(an.abs()),
                "{layer}.weight[{i}]: analytic {an}, finite differences {fd}"
            );
            checked += 1;
        }
        assert!(checked > 5, "{layer}: {checked} weights checked");

        // The weight's gradient is the part through the layer plus the term's.
        let through = node_value(&train, &params, &inputs, &format!("{layer}.weight.grad.0"));
        let total = node_value(&train, &params, &inputs, &format!("{layer}.weight.grad"));
        for i in 0..total.data.len() {
            assert_eq!(
                total.data[i],
                through.data[i] + part.data[i],
                "{layer}[{i}]"
            );
        }
    }
    let ce = node_value(&train, &params, &inputs, "loss.cross_entropy").data[0];
    let total = loss(&train, &params, &inputs) as f32;
    assert!(
        (total - (ce + terms)).abs() <= 1e-6 * total.abs(),
        "loss {total} vs {ce} + {terms}"
    );
}

/// The distribution loss on a real path: the sign whose input it shapes
/// does not reach the logits, so every parameter gradient of the total
/// loss (cross-entropy plus the term) is checked against central
/// differences, and the term's value against the formula written out here
/// (Ding et al. 2019, the reference implementation's `distrloss_layer.py`),
/// with channels set up to exercise each of its three hinges.
#[test]
fn distribution_loss_follows_its_definition_and_finite_differences() {
    for (source, x_name, sign) in [
        (
            "model m { input x: f32[10]  h = dense(x, 9)  s = sign(h)
                       y = dense(relu(h), 4)  output y, s }",
            "h",
            "s",
        ),
        (
            "model m { input x: f32[2, 4, 4]  h = conv2d(x, 3, kernel=3, pad=1)
                       s = sign(h)  y = dense(global_avgpool(h), 4)  output y, s }",
            "h",
            "s",
        ),
    ] {
        let model = parse_str(source).unwrap();
        let lambda = 0.7f32;
        let spec = LossSpec {
            distribution: lambda,
            ..LossSpec::default()
        };
        let train = differentiate(&model, &spec).unwrap();
        let mut params = random_params(&model, 51);
        // Channel 0 wide (saturation: σ > 4), channel 1 off-centre
        // (degeneration: |μ| > σ), the rest narrow (gradient mismatch).
        let w = params.tensors.get_mut("h.weight").unwrap();
        let k = w.data.len() / w.shape[0];
        for v in &mut w.data[..k] {
            *v *= 20.0;
        }
        params.tensors.get_mut("h.bias").unwrap().data[1] = 3.0;
        let inputs = batch(&train, 6, 52);

        let h = node_value(&train, &params, &inputs, x_name);
        let (n, c) = (h.shape[0], h.shape[1]);
        let inner: usize = h.shape[2..].iter().product();
        let m = (n * inner) as f64;
        let mut expected = 0.0f64;
        let mut hinges = [0; 3];
        for ch in 0..c {
            let values: Vec<f64> = (0..n)
                .flat_map(|s| {
                    h.data[(s * c + ch) * inner..][..inner]
                        .iter()
                        .map(|&v| v as f64)
                })
                .collect();
            let mu = values.iter().sum::<f64>() / m;
            let var = values.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / m;
            let sigma = (var + 1e-10).sqrt();
            let mismatch = (2.0 - mu - sigma).min(2.0 + mu - sigma).max(0.0);
            let saturation = (sigma - 4.0).max(0.0);
            let degeneration = (mu * mu - sigma * sigma).max(0.0);
            for (count, v) in hinges.iter_mut().zip([mismatch, saturation, degeneration]) {
                *count += usize::from(v > 0.0);
            }
            expected += mismatch * mismatch + saturation * saturation + degeneration;
        }
        expected *= lambda as f64 / c as f64;
        assert!(
            hinges.iter().all(|&k| k > 0),
            "every hinge is active somewhere: {hinges:?}"
        );
        let value = node_value(
            &train,
            &params,
            &inputs,
            &format!("{sign}.distribution_loss"),
        );
        assert!(
            (value.data[0] as f64 - expected).abs() <= 1e-5 * expected,
            "{source}: {} vs {expected}",
            value.data[0]
        );
        finite_differences(&train, &params, &inputs, 8, &[]);
    }
}

/// `scale=learned`: `NODE.scale` starts at `mean|W_o|`, where the layer
/// computes what `scale=channel` computes; its gradient, smooth in α, matches
/// finite differences; the latent weights' gradient is the real twin's
/// (weights `α·sign(W)` with the learned α) masked by `1[|W| <= 1]`.
#[test]
fn learned_scales_start_at_the_channel_scale_and_match_finite_differences() {
    let cases = [
        (
            "f32[2, 6, 6]",
            "s = sign(conv2d(x, 4, kernel=1))  c = bconv2d(s, 5, kernel=3, pad=1, scale=learned)",
        ),
        (
            "f32[12]",
            "s = sign(dense(x, 9))  c = bdense(s, 6, scale=learned)",
        ),
        (
            "f32[3, 5, 5]",
            "c = conv2d(x, 4, kernel=3, pad=1, weights=binary, scale=learned)",
        ),
        ("f32[12]", "c = dense(x, 7, weights=binary, scale=learned)"),
    ];
    for (input, body) in cases {
        let model = |scale: &str| {
            format!(
                "model m {{ input x: {input}  {}  y = dense(flatten(c), 3)  output y }}",
                body.replace("scale=learned", scale)
            )
        };
        let learned = parse_str(&model("scale=learned")).unwrap();
        let channel = parse_str(&model("scale=channel")).unwrap();

        // Initialised to the channel scale, the two compute the same.
        let init = Params::init(&learned, 31);
        let mut init_channel = init.clone();
        init_channel.tensors.remove("c.scale");
        let x = common::random_inputs(&learned, 3, 32);
        assert_eq!(
            interp::run(&learned, &init, &x).unwrap(),
            interp::run(&channel, &init_channel, &x).unwrap(),
            "{body}"
        );
        let w = &init.tensors["c.weight"];
        let k = w.data.len() / w.shape[0];
        for (o, &a) in init.tensors["c.scale"].data.iter().enumerate() {
            let mean = w.data[o * k..][..k].iter().map(|v| v.abs()).sum::<f32>() / k as f32;
            assert_eq!(a, mean, "{body}: c.scale[{o}]");
        }

        // The scale's gradient against finite differences, away from init.
        let train = differentiate(&learned, &LossSpec::default()).unwrap();
        let mut params = random_params(&learned, 33);
        let mut rng = Rng::new(34);
        for v in &mut params.tensors.get_mut("c.scale").unwrap().data {
            *v = 0.2 + rng.uniform(0.5).abs();
        }
        for v in &mut params.tensors.get_mut("c.weight").unwrap().data {
            *v = rng.uniform(1.4);
        }
        let inputs = batch(&train, 4, 35);
        finite_differences(&train, &params, &inputs, 8, &["c.scale", "y.weight"]);

        // The latent weights: the twin with weights α·sign(W), masked.
        let alpha = params.tensors["c.scale"].data.clone();
        let real_src = model("scale=none")
            .replace(
                "bconv2d(s, 5, kernel=3, pad=1, scale=none)",
                "conv2d(s, 5, kernel=3, pad=1, bias=false)",
            )
            .replace("bdense(s, 6, scale=none)", "dense(s, 6, bias=false)")
            .replace(", weights=binary, scale=none", "");
        let real = parse_str(&real_src).unwrap();
        let mut twin = params.clone();
        twin.tensors.remove("c.scale");
        let latent = params.tensors["c.weight"].clone();
        for (i, v) in twin
            .tensors
            .get_mut("c.weight")
            .unwrap()
            .data
            .iter_mut()
            .enumerate()
        {
            *v = alpha[i / k] * if latent.data[i] >= 0.0 { 1.0 } else { -1.0 };
        }
        let train_re = differentiate(&real, &LossSpec::default()).unwrap();
        let g_re = gradients(&train_re, &twin, &inputs);
        let g_bin = gradients(&train, &params, &inputs);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 + 1e-3 * a.abs().max(b.abs());
        for (i, (&gb, &gr)) in g_bin["c.weight"]
            .data
            .iter()
            .zip(&g_re["c.weight"].data)
            .enumerate()
        {
            let mask = if latent.data[i].abs() <= 1.0 {
                1.0
            } else {
                0.0
            };
            let want = mask * alpha[i / k] * gr;
            assert!(close(gb, want), "{body}: c.weight[{i}] {gb} vs {want}");
        }
    }
}

/// The quantization loss of a layer with a learned scale: the term's value
/// with `α` the parameter, its gradient with respect to `NODE.scale` against
/// central differences of the term, and the scale's total gradient the sum
/// of its two parts.
#[test]
fn quantization_loss_of_a_learned_scale_matches_finite_differences() {
    let model = parse_str(
        "model m { input x: f32[2, 5, 5]
                   c = bconv2d(sign(x), 4, kernel=3, pad=1, scale=learned)
                   y = dense(flatten(c), 3)
                   output y }",
    )
    .unwrap();
    let lambda = 0.05f32;
    let spec = LossSpec {
        quantization: lambda,
        ..LossSpec::default()
    };
    let train = differentiate(&model, &spec).unwrap();
    let mut params = random_params(&model, 51);
    let mut rng = Rng::new(52);
    for v in &mut params.tensors.get_mut("c.scale").unwrap().data {
        *v = 0.1 + rng.uniform(0.6).abs();
    }
    let inputs = batch(&train, 3, 53);
    let w = params.tensors["c.weight"].clone();
    let alpha = params.tensors["c.scale"].data.clone();
    let alpha64: Vec<f64> = alpha.iter().map(|&a| a as f64).collect();
    let expected = quantization_term(&w.data, &alpha64, lambda);
    let value = node_value(&train, &params, &inputs, "c.quantization_loss").data[0];
    assert!(
        (value as f64 - expected).abs() <= 1e-5 * expected,
        "{value} vs {expected}"
    );

    let part = node_value(&train, &params, &inputs, "c.scale.grad.1");
    let h = 1e-3f32;
    for o in 0..alpha.len() {
        let at = |delta: f32| {
            let mut p = params.clone();
            p.tensors.get_mut("c.scale").unwrap().data[o] += delta;
            node_value(&train, &p, &inputs, "c.quantization_loss").data[0] as f64
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        let an = part.data[o] as f64;
        assert!(
            (fd - an).abs() <= 1e-3 + 1e-2 * fd.abs().max(an.abs()),
            "c.scale[{o}]: analytic {an}, finite differences {fd}"
        );
    }
    let through = node_value(&train, &params, &inputs, "c.scale.grad.0");
    let total = &gradients(&train, &params, &inputs)["c.scale"];
    for o in 0..alpha.len() {
        assert_eq!(
            total.data[o],
            through.data[o] + part.data[o],
            "c.scale[{o}]"
        );
    }
}
