//! Differential property test: random small graphs with random parameters,
//! the JIT against the interpreter (`onebit::ir::interp::run`).
//!
//! A case is a seed and a length; the graph is grown from the seed one op at
//! a time, as model text: each candidate line is kept only if the model
//! still parses and verifies, so every op meets operands of every dtype and
//! rank it accepts (bit and f32, rank 3 and rank 1), skip connections
//! (`add`, `concat`, `choose`) reach back to earlier values, and the binary
//! layers get random geometry, `pad_value`, `scale`, `output=dot|affine|
//! threshold` and `weights=latent|packed`. On `portable`, outputs must match
//! exactly where they are bits or exact integers (a binary layer's
//! `output=dot` without scale), and within 1e-5 relative (with a floor
//! scaled by the output's magnitude) otherwise; on `avx512` the same, on
//! the interpreter's run of the graph cut at its real-valued layers, each of
//! which must lie within the bound of `ir-spec/codegen.md` from the operand
//! it was computed from (`jit_common/bound.rs`).

#[path = "jit_common/mod.rs"]
mod common;

use onebit::ir::{Graph, Params};
use onebit::util::rng::Rng;
use onebit::{Options, Popcount};
use proptest::prelude::*;

/// A value of the model being grown.
#[derive(Clone, Debug)]
struct Val {
    name: String,
    bits: bool,
    /// Integer-valued or bits: compared exactly.
    exact: bool,
}

fn pick<'a, T>(r: &mut Rng, v: &'a [T]) -> &'a T {
    &v[r.below(v.len())]
}

fn coin(r: &mut Rng) -> bool {
    r.below(2) == 1
}

/// A candidate op on `x` (and possibly an earlier value); returns the
/// expression and whether its result is exact.
fn candidate(r: &mut Rng, x: &Val, vals: &[Val]) -> (String, bool) {
    let n = &x.name;
    let other = pick(r, vals).name.clone();
    let k = *pick(r, &[1usize, 1, 2, 3, 3]);
    let s = *pick(r, &[1usize, 1, 1, 2]);
    let p = if coin(r) { k / 2 } else { 0 };
    let d = *pick(r, &[1usize, 1, 1, 2]);
    let g = *pick(r, &[1usize, 1, 1, 2]);
    let o = *pick(r, &[1usize, 3, 4, 8, 16, 17, 33]);
    let out = *pick(r, &["dot", "dot", "affine", "threshold"]);
    let w = if coin(r) { "latent" } else { "packed" };
    let scale = if coin(r) { "none" } else { "channel" };
    let dot_exact = out == "dot" && scale == "none";
    // Bits mostly feed a binary layer (the kernels under test).
    let op = if x.bits && r.below(3) != 0 {
        *pick(r, &[1, 5])
    } else if !x.bits && r.below(3) == 0 {
        7
    } else {
        r.below(24)
    };
    match op {
        0 => (
            format!(
                "conv2d({n}, {o}, kernel={k}, stride={s}, pad={p}, dilation={d}, groups={g}, bias={})",
                coin(r)
            ),
            false,
        ),
        1..=3 => (
            format!(
                "bconv2d({n}, {o}, kernel={k}, stride={s}, pad={p}, dilation={d}, groups={g}, \
                 pad_value={}, scale={scale}, output={out}, weights={w})",
                r.below(2)
            ),
            dot_exact || out == "threshold",
        ),
        4 => (format!("dense({n}, {o}, bias={})", coin(r)), false),
        5 | 6 => (
            format!("bdense({n}, {o}, scale={scale}, output={out}, weights={w})"),
            dot_exact || out == "threshold",
        ),
        7 | 8 => (format!("sign({n})"), true),
        9 => (format!("batchnorm({n})"), false),
        10 => (format!("relu({n})"), x.exact),
        11 => (format!("prelu({n})"), false),
        12 => (format!("hardtanh({n}, min=-0.5, max=0.75)"), false),
        13 => (format!("maxpool({n}, {}, stride={s})", k.max(1)), x.exact),
        14 => (
            format!("avgpool({n}, {}, stride={s}, pad={p})", k.max(1)),
            false,
        ),
        15 => (format!("global_avgpool({n})"), false),
        16 => (format!("flatten({n})"), x.exact),
        17 => (format!("add({n}, {other})"), false),
        18 => (format!("concat({n}, {other})"), false),
        19 => match r.below(3) {
            0 => (format!("zero({n})"), true),
            1 => (format!("identity({n})"), x.exact),
            _ => (format!("choose {{ {n}, {other} }}"), false),
        },
        20 => (format!("threshold({n})"), true),
        22 => {
            let start = *pick(r, &[0usize, 0, 1, 3, 64]);
            let count = *pick(r, &[1usize, 2, 5, 8, 33, 64]);
            (format!("slice_channels({n}, {start}, {count})"), x.exact)
        }
        23 => {
            let groups = *pick(r, &[1usize, 2, 3, 4]);
            (format!("shuffle_channels({n}, {groups})"), x.exact)
        }
        _ => (format!("affine({n})"), false),
    }
}

fn source(lines: &[String], input: &str, out: &str) -> String {
    format!(
        "model rnd {{\n  input x: {input}\n{}\n  output {out}\n}}\n",
        lines.join("\n")
    )
}

fn checks(src: &str) -> Option<Graph> {
    let g = onebit::parse(src).ok()?;
    onebit::verify(&g).ok()?;
    Some(g)
}

/// Grows a model of about `len` ops from `seed`; returns its source, graph
/// and whether the output compares exactly.
fn grow(seed: u64, len: usize) -> (String, Graph, bool) {
    let mut r = Rng::new(seed);
    let input = if r.below(4) == 0 {
        let k = *pick(&mut r, &[1usize, 5, 63, 64, 65, 130]);
        format!("f32[{k}]")
    } else {
        let c = *pick(&mut r, &[1usize, 2, 3, 4, 8, 33, 64, 65]);
        let h = 1 + r.below(7);
        let w = 1 + r.below(7);
        format!("f32[{c}, {h}, {w}]")
    };
    let mut vals = vec![Val {
        name: "x".into(),
        bits: false,
        exact: false,
    }];
    let mut lines = Vec::new();
    let mut tries = 0;
    while lines.len() < len && tries < 40 * len {
        tries += 1;
        // Mostly extend the newest value, sometimes branch from an older one.
        let x = if r.below(4) == 0 {
            pick(&mut r, &vals).clone()
        } else {
            vals[vals.len() - 1].clone()
        };
        let (expr, exact) = candidate(&mut r, &x, &vals);
        let name = format!("v{}", lines.len());
        lines.push(format!("  {name} = {expr}"));
        let Some(g) = checks(&source(&lines, &input, &name)) else {
            lines.pop();
            continue;
        };
        let id = g.find(&name).expect("new node");
        let ty = &g.node(id).ty;
        let bits = ty.dtype == onebit::ir::DType::Bit;
        vals.push(Val {
            name,
            bits,
            exact: exact || bits,
        });
    }
    let last = vals.last().expect("the input at least");
    let src = source(&lines, &input, &last.name);
    let g = checks(&src).expect("grown model verifies");
    (src, g, last.exact || last.bits)
}

/// Random values for every parameter: latent weights from `Params::init`,
/// then batchnorm statistics, scales, thresholds (integers, halves and
/// infinities) and directions (±1) with spread.
fn params(graph: &Graph, seed: u64) -> Params {
    let mut p = Params::init(graph, seed);
    let mut r = Rng::new(seed ^ 0x5eed);
    for (name, t) in p.tensors.iter_mut() {
        let field = name.rsplit('.').next().unwrap_or("");
        let rank1 = t.shape.len() == 1;
        for (i, v) in t.data.iter_mut().enumerate() {
            *v = match field {
                "running_mean" => r.uniform(4.0).round() + r.uniform(0.3),
                "running_var" => 0.25 + r.uniform(1.0).abs(),
                "weight" if rank1 => r.uniform(2.0),
                "bias" if rank1 => r.uniform(1.0),
                "multiplier" => r.uniform(2.0),
                "alpha" => r.uniform(2.0),
                "threshold" => match i % 9 {
                    7 => f32::INFINITY,
                    8 => f32::NEG_INFINITY,
                    _ => (r.uniform(6.0) * 2.0).round() / 2.0,
                },
                "direction" => {
                    if coin(&mut r) {
                        -1.0
                    } else {
                        1.0
                    }
                }
                _ => *v,
            };
        }
    }
    p
}

fn run(seed: u64, len: usize) -> Result<(), TestCaseError> {
    let (src, graph, exact) = grow(seed, len);
    let p = params(&graph, seed);
    let mut r = Rng::new(seed ^ 0x0b17);
    let options = Options {
        popcount: if coin(&mut r) {
            Popcount::Scalar
        } else {
            Popcount::Auto
        },
        fuse: r.below(4) != 0,
        threads: 1 + r.below(2),
        ..Options::default()
    };
    let batch = 1 + r.below(2);
    for path in common::paths() {
        common::check(
            &format!("seed {seed}, {path:?}, {options:?}, batch {batch}\n{src}"),
            &graph,
            &p,
            batch,
            seed,
            &options,
            path,
            exact,
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 100,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn jit_matches_interpreter_on_random_graphs(seed in any::<u64>(), len in 1usize..9) {
        run(seed, len)?;
    }
}

/// The generator reaches every op it proposes (so the property above is
/// not vacuous for any of them).
#[test]
fn generator_covers_the_ops() {
    let mut seen = std::collections::BTreeSet::new();
    let mut binary = 0;
    for seed in 0..100 {
        let (src, _, _) = grow(seed, 6);
        binary += usize::from(src.contains("bconv2d(") || src.contains("bdense("));
    }
    // Most graphs of the property test contain a binary layer.
    assert!(binary >= 40, "{binary} of 100 graphs have a binary layer");
    for seed in 0..300 {
        let (src, _, _) = grow(seed, 6);
        for op in [
            "conv2d(",
            "bconv2d(",
            "dense(",
            "bdense(",
            "sign(",
            "batchnorm(",
            "relu(",
            "prelu(",
            "hardtanh(",
            "maxpool(",
            "avgpool(",
            "global_avgpool(",
            "flatten(",
            "add(",
            "concat(",
            "slice_channels(",
            "shuffle_channels(",
            "zero(",
            "identity(",
            "choose",
            "threshold(",
            "affine(",
            "output=threshold",
            "output=affine",
            "weights=packed",
        ] {
            if src.contains(op) {
                seen.insert(op);
            }
        }
    }
    assert_eq!(seen.len(), 25, "covered: {seen:?}");
}
