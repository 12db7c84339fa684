//! Differential tests: the JIT against the interpreter on every example model.

#[path = "jit_common/mod.rs"]
mod common;

use onebit::Options;
use onebit::ir::Params;

fn check_example(file: &str, batch: usize) {
    let src =
        std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let graph = onebit::parse(&src).unwrap();
    let params = Params::init(&graph, 11);
    check_graph(file, &graph, &params, batch);
}

/// The JIT on every kernel path and thread count against the interpreter.
fn check_graph(file: &str, graph: &onebit::ir::Graph, params: &Params, batch: usize) {
    for (path, popcount) in common::variants() {
        for threads in [1, 2] {
            let options = Options {
                popcount,
                threads,
                ..Options::default()
            };
            let what = format!("{file} {path:?} {popcount:?} threads={threads}");
            let seen = common::check(&what, graph, params, batch, 5, &options, path, true);
            eprintln!("{what}: {seen:?}");
        }
    }
}

#[test]
fn mlp_digits() {
    check_example("mlp_digits.bnn", 3);
}

#[test]
fn digits_cnn() {
    check_example("digits_cnn.bnn", 3);
}

#[test]
fn bireal_block() {
    check_example("bireal_block.bnn", 2);
}

#[test]
fn tiny_search() {
    check_example("tiny_search.bnn", 3);
}

#[test]
fn resnet18_bnn() {
    let src = std::fs::read_to_string(format!(
        "{}/examples/resnet18_bnn.bnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let graph = onebit::parse(&src).unwrap();
    let params = Params::init(&graph, 3);
    for path in common::paths() {
        let options = Options {
            threads: 2,
            ..Options::default()
        };
        let what = format!("resnet18_bnn {path:?}");
        let seen = common::check(&what, &graph, &params, 1, 9, &options, path, true);
        eprintln!("{what}: {seen:?}");
    }
}

#[test]
fn fashion_mlp() {
    check_example("fashion_mlp.bnn", 3);
}

#[test]
fn fashion_cnn() {
    check_example("fashion_cnn.bnn", 2);
}

/// `scale=learned`, with factors a learned α can take (negative, zero): the
/// real layer computes with `α·sign(W)`, the binary ones fold it into
/// thresholds and affine epilogues.
#[test]
fn learned_scales() {
    let src = std::fs::read_to_string(format!(
        "{}/tests/in/learned_scales.bnn",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let graph = onebit::parse(&src).unwrap();
    let mut params = Params::init(&graph, 11);
    for layer in ["c1", "c2", "c3", "d"] {
        let scale = params.tensors.get_mut(&format!("{layer}.scale")).unwrap();
        for (o, a) in scale.data.iter_mut().enumerate() {
            *a = match o % 5 {
                0 => -*a,
                1 => 0.0,
                _ => *a * (1.0 + o as f32 / 8.0),
            };
        }
    }
    check_graph("learned_scales.bnn", &graph, &params, 3);
}

/// A sum with two users, its `sign` and a shortcut (Bi-Real's residual
/// block): the add step packs the signs beside the f32 sum, in one pass,
/// and there is no separate sign step; every path gives the interpreter's
/// values and bits, on channel counts that end mid-word.
#[test]
fn a_sum_feeding_a_sign_and_a_shortcut() {
    for c in [64, 70, 3] {
        let src = format!(
            "model res {{ input x: f32[{c}, 5, 5]
              a = add(x, bconv2d(sign(x), {c}, kernel=3, pad=1, scale=channel))
              b = add(a, bconv2d(sign(a), {c}, kernel=3, pad=1, scale=channel))
              output b }}"
        );
        let graph = onebit::parse(&src).unwrap();
        let params = Params::init(&graph, 3);
        let model = onebit::CompiledModel::compile(
            onebit::verify(&graph).unwrap(),
            &params,
            &Options::default(),
        )
        .unwrap();
        let kinds: Vec<(&str, &str)> = model
            .layers()
            .iter()
            .map(|l| (l.node.as_str(), l.kind))
            .collect();
        assert!(kinds.contains(&("a", "elementwise→bits")), "{kinds:?}");
        assert_eq!(
            kinds
                .iter()
                .filter(|(_, k)| k.starts_with("elementwise"))
                .count(),
            3,
            "one sign step (of x) and the two adds: {kinds:?}"
        );
        check_graph(&src, &graph, &params, 2);
    }
}
