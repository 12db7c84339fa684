//! The pooling grid: max and average pooling over f32 and max pooling over
//! bits, every kernel, stride and padding (up to half the kernel, on each
//! axis separately) over inputs whose borders clip the windows in every
//! way, on every kernel path, against the interpreter, exactly. The JIT
//! clips the windows instead of reading a padded copy, so this is the test
//! that skipping the padded taps changes no value.

#[path = "jit_common/mod.rs"]
mod common;

use onebit::Options;
use onebit::ir::Params;

const SIZES: [(usize, usize); 5] = [(1, 1), (2, 3), (4, 5), (7, 7), (9, 6)];
const CHANNELS: [usize; 6] = [1, 3, 4, 64, 65, 130];
const KERNELS: [(usize, usize); 5] = [(1, 1), (2, 2), (3, 3), (2, 3), (3, 2)];
const STRIDES: [(usize, usize); 4] = [(1, 1), (2, 2), (3, 2), (1, 3)];
/// `maxpool` and `avgpool` of f32, and `maxpool` of bits (after `sign`).
const KINDS: [&str; 3] = ["max", "avg", "max_bits"];

fn source(
    kind: &str,
    c: usize,
    (h, w): (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
) -> String {
    let attrs = format!(
        "({}, {}), stride=({}, {}), pad=({}, {})",
        k.0, k.1, s.0, s.1, p.0, p.1
    );
    let body = match kind {
        "max" => format!("maxpool(x, {attrs})"),
        "avg" => format!("avgpool(x, {attrs})"),
        _ => format!("maxpool(sign(x), {attrs})"),
    };
    format!("model pool {{ input x: f32[{c}, {h}, {w}]\n y = {body}\n output y }}")
}

#[test]
fn pooling_grid_matches_the_interpreter() {
    let mut cases = 0;
    let mut clipped = 0;
    for (i, &kind) in KINDS.iter().enumerate() {
        for (j, &size) in SIZES.iter().enumerate() {
            for (l, &k) in KERNELS.iter().enumerate() {
                for (m, &s) in STRIDES.iter().enumerate() {
                    // Every padding up to half the kernel on each axis.
                    for ph in 0..=k.0 / 2 {
                        for pw in 0..=k.1 / 2 {
                            if size.0 + 2 * ph < k.0 || size.1 + 2 * pw < k.1 {
                                continue;
                            }
                            let c = CHANNELS[(i + 2 * j + 3 * l + m + ph + pw) % CHANNELS.len()];
                            let src = source(kind, c, size, k, s, (ph, pw));
                            let graph =
                                onebit::parse(&src).unwrap_or_else(|e| panic!("{src}\n{e}"));
                            onebit::verify(&graph).unwrap_or_else(|e| panic!("{src}\n{e}"));
                            let params = Params::init(&graph, 1);
                            let batch = 1 + (j + l) % 2;
                            common::check_every_path(
                                &src,
                                &graph,
                                &params,
                                batch,
                                (i + j + l + m) as u64,
                            );
                            cases += 1;
                            clipped += usize::from(ph + pw > 0);
                        }
                    }
                }
            }
        }
    }
    assert!(
        cases > 300 && clipped > 150,
        "{cases} cases, {clipped} padded"
    );
}

/// NaN, ±0 and ±∞ through max pooling, relu and hardtanh: the JIT's max
/// (`x > y ? x : y`, one `maxps` on x64) keeps the interpreter's answer in
/// every tie and every NaN, bit for bit.
#[test]
fn max_ties_and_nans_match_the_interpreter() {
    let src = "model m { input x: f32[8, 5, 5]
      p = maxpool(x, 3, stride=1, pad=1)
      r = relu(x)
      t = hardtanh(x, min=-0.0, max=0.5)
      output p, r, t }";
    let graph = onebit::parse(src).unwrap();
    let params = Params::init(&graph, 1);
    let specials = [
        f32::NAN,
        -0.0,
        0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.0,
        1.0,
        -f32::NAN,
    ];
    let data: Vec<f32> = (0..2 * 8 * 25)
        .map(|i| specials[(i * 7 + i / 5) % specials.len()])
        .collect();
    let x = onebit::ir::Tensor {
        shape: vec![2, 8, 5, 5],
        data,
    };
    let expected: Vec<Vec<f32>> =
        onebit::ir::interp::run(&graph, &params, std::slice::from_ref(&x))
            .unwrap()
            .into_iter()
            .map(|t| t.data)
            .collect();
    for path in common::paths() {
        let got = common::jit(
            &graph,
            &params,
            std::slice::from_ref(&x),
            &common::on(path, &Options::default()),
        );
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            for (i, (a, b)) in g.iter().zip(e).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan(),
                    "{path:?}: output {k}[{i}]: jit {a:?} vs interp {b:?}"
                );
            }
        }
    }
}

/// Global average pooling: a unit per 16 channels with one sum chain per
/// vector, so channel counts below, at and past 16 with every tail (vector
/// and scalar), on 1 and 3 threads.
#[test]
fn global_average_pooling_matches_the_interpreter() {
    for c in [1, 3, 4, 7, 16, 21, 32, 45, 64] {
        for (h, w) in [(1, 1), (3, 5), (7, 7)] {
            let src = format!(
                "model g {{ input x: f32[{c}, {h}, {w}]\n y = global_avgpool(x)\n output y }}"
            );
            let graph = onebit::parse(&src).unwrap();
            let params = Params::init(&graph, 1);
            common::check_every_path(&src, &graph, &params, 2, c as u64);
            let options = Options {
                threads: 3,
                ..Options::default()
            };
            let (got, expected) = common::both(&graph, &params, 1, 5, &options);
            common::assert_match(&format!("threads=3: {src}"), &got, &expected, true);
        }
    }
}
