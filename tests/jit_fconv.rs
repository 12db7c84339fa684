//! Real-valued layers (`conv2d`, `dense`, `weights=binary` over real
//! inputs) on every kernel path against the interpreter: exact on
//! `portable`, within the bound of `ir-spec/codegen.md` on `avx512`, where
//! they run on the FMA micro-kernel (`kernels::wide::fconv`).
//!
//! The cases cover the kernel's edges: every tile (4 × 6, 3 × 8, 2 × 14,
//! 1 × 28, 8 × 1), output rows that are a whole number of tiles and rows
//! with a tail, channel counts that give several m-tiles, a narrower last
//! one and a masked partial block (1, 16, 17, 40, 48, 64, 72, 100), groups, strides,
//! dilation, padding, bias, and what follows the layer (nothing, batchnorm,
//! sign, sign of batchnorm, threshold, prelu of batchnorm, affine).

#[path = "jit_common/mod.rs"]
mod common;

use onebit::Options;
use onebit::ir::Params;

fn params(graph: &onebit::ir::Graph, seed: u64) -> Params {
    common::spread_params(graph, seed)
}

fn run(src: &str, batch: usize, seed: u64) {
    let graph = onebit::parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
    let p = params(&graph, seed);
    for path in common::paths() {
        for threads in [1, 2] {
            let options = Options {
                threads,
                ..Options::default()
            };
            let what = format!("{path:?} threads={threads}: {src}");
            let seen = common::check(&what, &graph, &p, batch, seed, &options, path, true);
            if path.fma() {
                assert!(seen.real_values > 0, "{what}: {seen:?}");
                eprintln!("{what}: {seen:?}");
            }
        }
    }
}

/// What follows the layer: batchnorm, affine and prelu are fused into the
/// FMA kernel's epilogue on `avx512` (the checks compare with the unfused
/// model too), sign and threshold are separate steps.
const AFTER: [&str; 7] = [
    "",
    "batchnorm",
    "sign",
    "sign_bn",
    "threshold",
    "bn_prelu",
    "affine",
];

fn wrap(layer: &str, after: &str) -> String {
    match after {
        "" => layer.to_string(),
        "sign_bn" => format!("sign(batchnorm({layer}))"),
        "bn_prelu" => format!("prelu(batchnorm({layer}))"),
        f => format!("{f}({layer})"),
    }
}

#[test]
fn conv2d_tiles_and_tails() {
    let mut seed = 1;
    for (cin, cout, (h, w), k, s, pad, bias) in [
        (3, 64, (9, 60), 7, 2, 3, true), // the stem: 30 pixels = 5 tiles of 6
        (3, 64, (6, 28), 7, 2, 3, false), // rows of 14 pixels: 3 × 7, two tiles
        (3, 16, (5, 29), 3, 1, 1, true), // 1 × 28 tile and a 1-pixel tail
        (4, 17, (4, 15), 3, 1, 1, false), // 2 blocks, the last masked
        (8, 40, (3, 5), 1, 1, 0, true),  // narrower last m-tile, masked
        (16, 100, (2, 14), 3, 1, 1, true), // 7 blocks: 4 + 3, masked, tail 2
        (4, 48, (3, 19), 3, 1, 1, false), // 3 × 8 and a tail of 3
        (2, 72, (4, 13), 3, 1, 1, true), // 4 + 1 blocks, masked; tail 1
        (6, 34, (5, 5), 3, 2, 1, true),  // groups of 17: masked per group
        (1, 1, (3, 1), 1, 1, 0, false),  // one channel, one pixel a row
    ] {
        let g = if cin == 6 { 2 } else { 1 };
        for after in AFTER {
            let layer = format!(
                "conv2d(x, {cout}, kernel={k}, stride={s}, pad={pad}, groups={g}, bias={bias})"
            );
            let src = format!(
                "model c {{ input x: f32[{cin}, {h}, {w}]\n y = {}\n output y }}",
                wrap(&layer, after)
            );
            seed += 1;
            run(&src, 2, seed);
        }
    }
}

#[test]
fn conv2d_dilation_and_binary_weights() {
    let mut seed = 100;
    for (cin, cout, (h, w), extra) in [
        (5, 32, (9, 20), "kernel=3, dilation=2, pad=2"),
        (4, 24, (7, 16), "kernel=(3, 5), stride=(2, 1), pad=(1, 2)"),
        (
            8,
            48,
            (6, 17),
            "kernel=3, pad=1, weights=binary, scale=channel",
        ),
        (3, 16, (5, 5), "kernel=3, weights=binary"),
    ] {
        for after in ["", "sign_bn", "bn_prelu"] {
            let layer = format!("conv2d(x, {cout}, {extra})");
            let src = format!(
                "model c {{ input x: f32[{cin}, {h}, {w}]\n y = {}\n output y }}",
                wrap(&layer, after)
            );
            seed += 1;
            run(&src, 1, seed);
        }
    }
}

#[test]
fn dense_layers() {
    let mut seed = 200;
    for (k, o, extra) in [
        (1, 1, "bias=true"),
        (147, 64, "bias=false"),
        (512, 1000, "bias=true"),
        (300, 130, "bias=true"),
        (64, 17, "bias=false, weights=binary, scale=channel"),
        (33, 200, "bias=true, weights=binary"),
    ] {
        for after in AFTER {
            let layer = format!("dense(x, {o}, {extra})");
            let src = format!(
                "model d {{ input x: f32[{k}]\n y = {}\n output y }}",
                wrap(&layer, after)
            );
            seed += 1;
            run(&src, 3, seed);
        }
    }
}

/// A per-channel op after a fused sign acts on the bits, not on the layer's
/// f32 output: it must stay a step of its own (the random-graph test found
/// `affine(sign(dense(x)))` fused into the kernel before the sign).
#[test]
fn ops_after_a_fused_sign_stay_separate() {
    let mut seed = 300;
    for body in [
        "affine(sign(dense(x2, 17, bias=true)))",
        "prelu(sign(batchnorm(dense(x2, 40))))",
        "batchnorm(sign(conv2d(x, 20, kernel=3, pad=1)))",
    ] {
        let src = format!(
            "model s {{ input x: f32[3, 4, 5]\n x2 = flatten(x)\n y = {body}\n output y }}"
        );
        seed += 1;
        run(&src, 2, seed);
    }
}

/// Image inputs of 1–3 channels are converted row by row, and straight into
/// the zero-padded buffer of a real convolution that is their only user:
/// every padding (each axis on its own), widths that end mid-vector, and an
/// input with a second user (converted unpadded, padded by its own step),
/// on every path against the interpreter.
#[test]
fn padded_image_inputs_match_the_interpreter() {
    for c in 1..=3 {
        for (h, w) in [(5, 7), (6, 4), (1, 9)] {
            for pad in [(0, 0), (1, 2), (3, 3), (2, 0)] {
                for shared in [false, true] {
                    let kernel = (2 * pad.0 + 1, 2 * pad.1 + 1);
                    let conv = format!(
                        "conv2d(x, 5, kernel=({}, {}), pad=({}, {}))",
                        kernel.0, kernel.1, pad.0, pad.1
                    );
                    // Shared: a 1×1 conv reads the input too.
                    let body = if shared {
                        format!("z = conv2d(x, 5, kernel=1)\n y = add(z, {conv})")
                    } else {
                        format!("y = {conv}")
                    };
                    let src =
                        format!("model img {{ input x: f32[{c}, {h}, {w}]\n {body}\n output y }}");
                    let graph = onebit::parse(&src).unwrap_or_else(|e| panic!("{src}\n{e}"));
                    let params = Params::init(&graph, 2);
                    common::check_every_path(&src, &graph, &params, 2, 9);
                }
            }
        }
    }
}
