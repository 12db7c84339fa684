//! The convolution grid, in the style of Larq Compute Engine's kernel tests:
//! every value of every axis (batch, input size, channels in and out, kernel,
//! stride, dilation, padding and its value, groups, scale, output form,
//! popcount path) appears in some case; cases sample the cross product
//! deterministically. Each case compares the JIT with the interpreter.

#[path = "jit_common/mod.rs"]
mod common;

use onebit::ir::Params;
use onebit::{Options, Popcount};

const BATCH: [usize; 2] = [1, 3];
const SIZES: [(usize, usize); 3] = [(7, 7), (8, 5), (1, 1)];
const CIN: [usize; 9] = [1, 3, 4, 63, 64, 65, 96, 130, 256];
const COUT: [usize; 4] = [1, 3, 8, 64];
const KERNELS: [(usize, usize); 4] = [(1, 1), (3, 3), (2, 3), (5, 5)];
const STRIDES: [(usize, usize); 3] = [(1, 1), (2, 2), (2, 3)];
const DILATIONS: [(usize, usize); 2] = [(1, 1), (3, 2)];
const GROUPS: [usize; 3] = [1, 2, 4];
/// Output forms: plain dot, dot with scale, batchnorm folded (f32),
/// batchnorm + sign folded (bits), sign folded (bits), `output=affine`,
/// `output=threshold`, and thresholds with `weights=packed`.
const FORMS: [&str; 8] = [
    "dot",
    "scale",
    "bn",
    "bn_sign",
    "sign",
    "affine",
    "threshold",
    "packed",
];

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    size: (usize, usize),
    cin: usize,
    cout: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    pad_value: usize,
    pad: bool,
    groups: usize,
    form: &'static str,
    scalar: bool,
}

fn source(c: &Case) -> String {
    let (h, w) = c.size;
    let (kh, kw) = c.kernel;
    let pad = if c.pad { (kh / 2, kw / 2) } else { (0, 0) };
    let scale = match c.form {
        "scale" => ", scale=channel",
        "affine" => ", output=affine",
        "threshold" => ", output=threshold",
        "packed" => ", output=threshold, weights=packed",
        _ => "",
    };
    let conv = format!(
        "bconv2d(sign(x), {}, kernel=({kh}, {kw}), stride=({}, {}), pad=({}, {}), dilation=({}, {}), groups={}, pad_value={}{scale})",
        c.cout,
        c.stride.0,
        c.stride.1,
        pad.0,
        pad.1,
        c.dilation.0,
        c.dilation.1,
        c.groups,
        c.pad_value
    );
    let body = match c.form {
        "bn" => format!("y = batchnorm({conv})"),
        "bn_sign" => format!("y = sign(batchnorm({conv}))"),
        "sign" => format!("y = sign({conv})"),
        _ => format!("y = {conv}"),
    };
    format!(
        "model grid {{ input x: f32[{}, {h}, {w}]\n {body}\n output y }}",
        c.cin
    )
}

fn valid(c: &Case) -> bool {
    let (h, w) = c.size;
    let pad = if c.pad {
        (c.kernel.0 / 2, c.kernel.1 / 2)
    } else {
        (0, 0)
    };
    c.cin.is_multiple_of(c.groups)
        && c.cout.is_multiple_of(c.groups)
        && c.dilation.0 * (c.kernel.0 - 1) < h + 2 * pad.0
        && c.dilation.1 * (c.kernel.1 - 1) < w + 2 * pad.1
}

/// Batchnorm parameters with spread, so thresholds land inside the range.
fn params(graph: &onebit::ir::Graph, seed: u64) -> Params {
    let mut p = Params::init(graph, seed);
    for (name, t) in p.tensors.iter_mut() {
        let mut r = onebit::util::rng::Rng::new(seed ^ name.len() as u64);
        if name.ends_with("running_mean") {
            t.data.iter_mut().for_each(|v| *v = r.uniform(4.0).round());
        } else if name.ends_with("running_var") {
            t.data.iter_mut().for_each(|v| *v = 0.5 + r.uniform(0.4));
        } else if name.ends_with(".weight") && t.shape.len() == 1 {
            // γ of both signs: thresholds in both directions.
            t.data.iter_mut().for_each(|v| *v = r.uniform(2.0));
        } else if name.ends_with(".bias") && t.shape.len() == 1 {
            t.data.iter_mut().for_each(|v| *v = r.uniform(1.0));
        } else if name.ends_with(".multiplier") {
            t.data.iter_mut().for_each(|v| *v = r.uniform(2.0));
        } else if name.ends_with(".threshold") {
            // Integers, half-integers and the infinities of constant channels.
            t.data.iter_mut().enumerate().for_each(|(i, v)| {
                *v = match i % 7 {
                    5 => f32::INFINITY,
                    6 => f32::NEG_INFINITY,
                    k => (r.uniform(6.0) * 2.0).round() / 2.0 + k as f32 - 2.0,
                }
            });
        } else if name.ends_with(".direction") {
            t.data
                .iter_mut()
                .for_each(|v| *v = if r.uniform(1.0) < 0.0 { -1.0 } else { 1.0 });
        }
    }
    p
}

fn run_case(c: &Case, seed: u64) {
    let src = source(c);
    let graph = onebit::parse(&src).unwrap_or_else(|e| panic!("{src}\n{e}"));
    let p = params(&graph, seed);
    let options = Options {
        popcount: if c.scalar {
            Popcount::Scalar
        } else {
            Popcount::Auto
        },
        ..Options::default()
    };
    for path in common::paths() {
        let (got, expected) = common::both(&graph, &p, c.batch, seed, &common::on(path, &options));
        common::assert_match(&format!("{path:?} {c:?}\n{src}"), &got, &expected, true);
    }
}

#[test]
fn conv_grid() {
    let mut cases = 0;
    let mut i = 0u64;
    // Every axis cycles with a different prime stride through its values, so
    // each value of each axis is met many times in different company.
    while cases < 400 {
        let pick = |n: usize, p: u64| ((i * p + i / 7) % n as u64) as usize;
        let c = Case {
            batch: BATCH[pick(2, 1)],
            size: SIZES[pick(3, 5)],
            cin: CIN[pick(9, 7)],
            cout: COUT[pick(4, 11)],
            kernel: KERNELS[pick(4, 13)],
            stride: STRIDES[pick(3, 17)],
            dilation: DILATIONS[pick(2, 19)],
            pad_value: pick(2, 23),
            pad: pick(2, 29) == 1,
            groups: GROUPS[pick(3, 31)],
            form: FORMS[pick(8, 37)],
            scalar: pick(2, 41) == 1,
        };
        i += 1;
        if !valid(&c) {
            continue;
        }
        run_case(&c, i);
        cases += 1;
    }
}

#[test]
fn grouped_odd_channels_bits() {
    // Groups whose channel slices are not word-aligned, with bit outputs
    // whose per-group blocks straddle words.
    for (cin, cout, groups) in [
        (130, 64, 2),
        (96, 8, 4),
        (12, 36, 4),
        (256, 64, 4),
        (6, 20, 2),
    ] {
        for form in ["bn_sign", "dot"] {
            let c = Case {
                batch: 2,
                size: (5, 4),
                cin,
                cout,
                kernel: (3, 3),
                stride: (1, 1),
                dilation: (1, 1),
                pad_value: 0,
                pad: true,
                groups,
                form,
                scalar: false,
            };
            run_case(&c, 99);
        }
    }
}

#[test]
fn bdense_k_values() {
    for k in [1, 63, 64, 65, 127, 128, 129, 1000] {
        for (o, form, scalar) in [
            (10, "dot", false),
            (33, "scale", true),
            (64, "bn_sign", false),
            (7, "bn", true),
        ] {
            let body = match form {
                "dot" => "bdense(sign(x), O)".to_string(),
                "scale" => "bdense(sign(x), O, scale=channel)".to_string(),
                "bn" => "batchnorm(bdense(sign(x), O))".to_string(),
                _ => "sign(batchnorm(bdense(sign(x), O)))".to_string(),
            }
            .replace('O', &o.to_string());
            let src = format!("model d {{ input x: f32[{k}]\n y = {body}\n output y }}");
            let graph = onebit::parse(&src).unwrap();
            let p = params(&graph, k as u64);
            let options = Options {
                popcount: if scalar {
                    Popcount::Scalar
                } else {
                    Popcount::Auto
                },
                ..Options::default()
            };
            for path in common::paths() {
                let options = common::on(path, &options);
                let (got, expected) = common::both(&graph, &p, 3, k as u64, &options);
                common::assert_match(&format!("{path:?} {src}"), &got, &expected, true);
            }
        }
    }
}

#[test]
fn standalone_threshold_and_affine() {
    for (c, form) in [
        (3, "threshold"),
        (64, "threshold"),
        (70, "affine"),
        (8, "affine"),
    ] {
        let src = format!(
            "model t {{ input x: f32[{c}, 5, 3]\n y = {form}(conv2d(x, {c}, kernel=3, pad=1))\n output y }}"
        );
        let graph = onebit::parse(&src).unwrap();
        let p = params(&graph, c as u64);
        for path in common::paths() {
            let what = format!("{path:?} {src}");
            common::check(&what, &graph, &p, 2, 3, &Options::default(), path, true);
        }
    }
}

/// The register tiles of the avx512 kernel at their edges: several m-tiles
/// and a narrower last one (80, 144, 200 channels), pixel counts that leave
/// a partial last tile, single pixels (dense), grouped layers, and every
/// epilogue (fused bits, popcounts + f32, zero-padding corrections, bits
/// that straddle words). Compared with the interpreter on every path.
#[test]
fn wide_tile_edges() {
    let mut seed = 500;
    for (cin, cout, groups, size) in [
        (64, 80, 1, (5, 7)),
        (96, 144, 1, (3, 5)),
        (32, 200, 1, (1, 1)),
        (128, 16, 1, (9, 4)),
        (64, 96, 2, (4, 4)),
        (64, 80, 2, (3, 3)),
        (512, 64, 1, (2, 3)),
    ] {
        for (form, pad_value) in [("bn_sign", 1), ("bn_sign", 0), ("dot", 1), ("bn", 0)] {
            let c = Case {
                batch: 2,
                size,
                cin,
                cout,
                kernel: if size == (1, 1) { (1, 1) } else { (3, 3) },
                stride: (1, 1),
                dilation: (1, 1),
                pad_value,
                pad: true,
                groups,
                form,
                scalar: false,
            };
            seed += 1;
            run_case(&c, seed);
        }
    }
    for o in [1, 17, 128, 130, 200] {
        let src = format!(
            "model d {{ input x: f32[300]\n y = sign(batchnorm(bdense(sign(x), {o})))\n output y }}"
        );
        let graph = onebit::parse(&src).unwrap();
        let p = params(&graph, o as u64);
        for path in common::paths() {
            let options = common::on(path, &Options::default());
            let (got, expected) = common::both(&graph, &p, 1, o as u64, &options);
            common::assert_match(&format!("{path:?} {src}"), &got, &expected, true);
        }
    }
}
