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

/// Bi-Real's residual block, `add(shortcut, bconv2d(sign(shortcut)))`
/// whose sum feeds both the next `sign` and the next shortcut. With
/// `pad_value=1` on a machine-code path the add runs in the binary
/// kernel's epilogue (`bconv+add`); otherwise (zero padding, `portable`)
/// the add step packs the sum's signs beside it in one pass. Either way no
/// separate add is left where it could fuse, and every path gives the
/// interpreter's values and bits, on channel counts that end mid-word, with
/// groups whose last block is partial, and with a shortcut computed after
/// the binary layer (which cannot fuse).
#[test]
fn residual_sums_fuse_and_match_the_interpreter() {
    for (c, groups, pad_value) in [(64, 1, 1), (70, 2, 1), (3, 1, 1), (64, 1, 0), (70, 1, 0)] {
        let conv = |x: &str| {
            format!(
                "bconv2d(sign({x}), {c}, kernel=3, pad=1, pad_value={pad_value}, groups={groups}, scale=channel)"
            )
        };
        let src = format!(
            "model res {{ input x: f32[{c}, 5, 5]
              a = add(x, {})
              b = add(a, {})
              d = add({}, conv2d(b, {c}, kernel=1))
              output d }}",
            conv("x"),
            conv("a"),
            conv("b"),
        );
        let graph = onebit::parse(&src).unwrap();
        let params = Params::init(&graph, 3);
        for path in common::paths() {
            let options = common::on(path, &Options::default());
            let model =
                onebit::CompiledModel::compile(onebit::verify(&graph).unwrap(), &params, &options)
                    .unwrap();
            let kinds: Vec<&str> = model.layers().iter().map(|l| l.kind).collect();
            let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
            // Every sign is packed straight into its layer's padded input
            // (groups of 35 channels are regrouped by a padding step).
            if groups == 1 {
                assert_eq!(count("pad"), 0, "{path:?} {src}: {kinds:?}");
            }
            let wide = path != onebit::codegen::target::KernelPath::Portable;
            if wide && pad_value == 1 {
                // a and b fuse; d's shortcut comes after its binary layer.
                assert_eq!(count("bconv+add"), 2, "{path:?} {src}: {kinds:?}");
                assert_eq!(count("elementwise"), 1, "{path:?} {src}: {kinds:?}");
            } else {
                assert_eq!(count("bconv+add"), 0, "{path:?} {src}: {kinds:?}");
                // The signs of a and b are packed by their adds.
                assert_eq!(count("elementwise→bits"), 3, "{path:?} {src}: {kinds:?}");
            }
        }
        check_graph(&src, &graph, &params, 2);
    }
}

/// `flatten` before dense layers costs no step where the dense layers can
/// read the channels-last buffer with permuted weights: binary layers over
/// whole 64-channel words on every path, real ones on the FMA path only
/// (their sum is reordered); elsewhere, and where the flattened value has
/// another user, a flatten step remains.
#[test]
fn flatten_before_dense_layers_is_free_where_exact() {
    for (c, dense, extra_user, free_on) in [
        (64, "bdense(f, 10, scale=channel)", false, "every"),
        (128, "bdense(f, 24)", false, "every"),
        (32, "bdense(f, 10)", false, "none"),
        (64, "bdense(f, 10)", true, "none"),
        (24, "dense(f, 12, bias=true)", false, "fma"),
    ] {
        let body = if dense.starts_with("bdense") {
            "s = sign(x)\n f = flatten(s)".to_string()
        } else {
            "f = flatten(x)".to_string()
        };
        let outputs = if extra_user {
            "output y\n output f"
        } else {
            "output y"
        };
        let src =
            format!("model fl {{ input x: f32[{c}, 3, 2]\n {body}\n y = {dense}\n {outputs} }}");
        let graph = onebit::parse(&src).unwrap();
        let params = Params::init(&graph, 9);
        for path in common::paths() {
            let options = common::on(path, &Options::default());
            let model =
                onebit::CompiledModel::compile(onebit::verify(&graph).unwrap(), &params, &options)
                    .unwrap();
            let flattens = model
                .layers()
                .iter()
                .filter(|l| l.kind == "flatten")
                .count();
            let free = match free_on {
                "every" => true,
                "fma" => path.fma(),
                _ => false,
            };
            assert_eq!(flattens, usize::from(!free), "{path:?} {src}");
        }
        check_graph(&src, &graph, &params, 3);
    }
}
