//! Gradients of the architecture parameters, α of the edges and β of the
//! searched nodes, against central finite differences of the loss, through
//! the reference interpreter and through the compiled step engine, on a tiny
//! DARTS cell (two nodes, five edges, binary-weight convolutions, pools,
//! skip and zero).

#[path = "train_common/mod.rs"]
mod common;

use common::Weights;
use onebit::ir::{Params, Tensor, interp};
use onebit::nas::space::SearchSpace;
use onebit::passes::differentiate::{LossSpec, TrainingGraph, differentiate};
use onebit::train::engine::{EngineOptions, StepEngine};

/// No `sign` of an activation: the loss is smooth in α and β (binary
/// weights are constants of the check), away from the rare ReLU or max-pool
/// tie that a step of `h` crosses.
const SPACE: &str = "
cell sep_conv(x, c) {
  dw = conv2d(x, c, kernel=3, pad=1, groups=c, bias=false, weights=binary, scale=channel)
  return batchnorm(conv2d(dw, c, kernel=1, bias=false, weights=binary, scale=channel))
}
cell op(x, c) {
  r = relu(x)
  return choose {
    zero(x),
    x,
    maxpool(x, 3, stride=1, pad=1),
    avgpool(x, 3, stride=1, pad=1),
    sep_conv(r, c),
    batchnorm(conv2d(r, c, kernel=3, pad=2, dilation=2, bias=false, weights=binary)),
  }
}
model grad_cell {
  input x: f32[1, 4, 4]
  stem = batchnorm(conv2d(x, 3, kernel=3, pad=1))
  p0 = batchnorm(conv2d(relu(stem), 3, kernel=1, bias=false))
  p1 = batchnorm(conv2d(relu(stem), 3, kernel=1, bias=false))
  n0 = choose { op(p0, 3), op(p1, 3) }
  n1 = choose { op(p0, 3), op(p1, 3), op(n0, 3) }
  y = dense(global_avgpool(concat(n0, n1)), 5)
  output y
}
";

/// [`SPACE`] with PC-DARTS's partial channels on every edge: 2 of 4
/// channels through the mixed operation, the rest bypassing it, then a
/// channel shuffle.
fn partial_space() -> String {
    SPACE
        .replace("cell op(x, c) {", "cell op(x, c) partial(x, c, 2) {")
        .replace("(stem), 3,", "(stem), 4,")
        .replace("(x, 3, kernel=3", "(x, 4, kernel=3")
        .replace(", 3)", ", 4)")
}

fn setup() -> (TrainingGraph, Params, Vec<Tensor>, Vec<String>) {
    setup_space(SPACE)
}

fn setup_space(source: &str) -> (TrainingGraph, Params, Vec<Tensor>, Vec<String>) {
    let model = onebit::parse(source).unwrap();
    let space = SearchSpace::of(&model).unwrap();
    assert_eq!((space.edges.len(), space.nodes.len()), (5, 2));
    let arch: Vec<String> = space.arch_params().into_iter().collect();
    let train = differentiate(&model, &LossSpec::default()).unwrap();
    let params = common::random_params(&model, 11, Weights::Spread);
    let inputs = common::random_inputs(&train.graph, 6, 12);
    (train, params, inputs, arch)
}

fn index_of(train: &TrainingGraph, name: &str) -> usize {
    train.gradients.iter().position(|(n, _)| n == name).unwrap()
}

/// Central differences of `loss` at every element of every architecture
/// parameter, against `analytic`.
fn check(
    what: &str,
    params: &Params,
    arch: &[String],
    analytic: &dyn Fn(&str) -> Vec<f32>,
    loss: &mut dyn FnMut(&Params) -> f64,
    h: f32,
    tolerance: f64,
) {
    let mut checked = 0;
    for name in arch {
        let g = analytic(name);
        assert_eq!(g.len(), params.get(name).unwrap().data.len(), "{name}");
        for (i, &an) in g.iter().enumerate() {
            let mut plus = params.clone();
            plus.tensors.get_mut(name).unwrap().data[i] += h;
            let mut minus = params.clone();
            minus.tensors.get_mut(name).unwrap().data[i] -= h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            let an = an as f64;
            let tol = tolerance + 2e-2 * fd.abs().max(an.abs());
            assert!(
                (fd - an).abs() <= tol,
                "{what}: {name}[{i}]: analytic {an}, finite differences {fd}"
            );
            checked += 1;
        }
    }
    // 5 edges of 6 operations, nodes of 2 and 3 edges.
    assert_eq!(checked, 5 * 6 + 2 + 3);
}

#[test]
fn alpha_and_beta_gradients_match_finite_differences_on_the_interpreter() {
    let (train, params, inputs, arch) = setup();
    let outputs = interp::run(&train.graph, &params, &inputs).unwrap();
    let first = outputs.len() - train.gradients.len() - train.running.len();
    let analytic = |name: &str| outputs[first + index_of(&train, name)].data.clone();
    let mut loss = |p: &Params| interp::run(&train.graph, p, &inputs).unwrap()[0].data[0] as f64;
    check(
        "interpreter",
        &params,
        &arch,
        &analytic,
        &mut loss,
        1e-3,
        1e-3,
    );
    // The gradients are not all zero: the check has something to check.
    let largest = arch
        .iter()
        .flat_map(|n| analytic(n))
        .fold(0.0f32, |m, g| m.max(g.abs()));
    assert!(largest > 1e-3, "largest |gradient| {largest}");
}

#[test]
fn partial_channel_gradients_match_finite_differences() {
    let source = partial_space();
    assert!(source.contains("conv2d(x, 4, kernel=3, pad=1)"), "{source}");
    assert!(
        source.contains("maxpool(x, 3, stride=1, pad=1)"),
        "{source}"
    );
    let (train, params, inputs, arch) = setup_space(&source);
    let text = onebit::text::print(&train.graph);
    assert!(text.contains("shuffle_channels") && text.contains("slice_channels"));
    for threads in [0, 2] {
        let outputs = if threads == 0 {
            interp::run(&train.graph, &params, &inputs).unwrap()
        } else {
            let mut engine = StepEngine::new(&train.graph, &EngineOptions { threads }).unwrap();
            engine.run(&params, &inputs).unwrap()
        };
        let first = outputs.len() - train.gradients.len() - train.running.len();
        let analytic = |name: &str| outputs[first + index_of(&train, name)].data.clone();
        let mut loss =
            |p: &Params| interp::run(&train.graph, p, &inputs).unwrap()[0].data[0] as f64;
        let what = if threads == 0 {
            "interpreter"
        } else {
            "engine"
        };
        check(what, &params, &arch, &analytic, &mut loss, 1e-3, 1e-3);
    }
}

#[test]
fn alpha_and_beta_gradients_match_on_the_compiled_step() {
    let (train, params, inputs, arch) = setup();
    let reference = interp::run(&train.graph, &params, &inputs).unwrap();
    let mut engine = StepEngine::new(&train.graph, &EngineOptions { threads: 2 }).unwrap();
    let outputs = engine.run(&params, &inputs).unwrap();
    let first = outputs.len() - train.gradients.len() - train.running.len();
    // The engine agrees with the interpreter up to f32 summation order...
    for name in &arch {
        let k = first + index_of(&train, name);
        for (a, b) in outputs[k].data.iter().zip(&reference[k].data) {
            assert!(
                (a - b).abs() <= 1e-4 + 1e-3 * b.abs(),
                "{name}: engine {a}, interpreter {b}"
            );
        }
    }
    // ...and with finite differences of its own loss.
    let analytic = |name: &str| outputs[first + index_of(&train, name)].data.clone();
    let mut loss = |p: &Params| engine.run(p, &inputs).unwrap()[0].data[0] as f64;
    check("engine", &params, &arch, &analytic, &mut loss, 1e-3, 1e-3);
}
