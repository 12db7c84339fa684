//! The JIT against the interpreter on small random valid graphs.
//!
//! The fuzzer's bytes are the choice stream of the generator of
//! `tests/jit_random.rs` (ops, geometry, operands, options): each byte picks
//! one alternative, so libFuzzer's mutations explore graph shapes while every
//! graph stays valid. Parameter values come from a seed taken from the bytes.
//! Both engines must accept the same parameters and agree: bits and exact
//! integers exactly, f32 within 1e-5 relative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onebit::ir::{DType, Graph, Params, Tensor, interp};
use onebit::util::rng::Rng;
use onebit::{CompiledModel, Options, Popcount};

/// Choices read from the fuzzer's bytes (zeros once they run out).
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn below(&mut self, n: usize) -> usize {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b as usize % n.max(1)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
    fn coin(&mut self) -> bool {
        self.below(2) == 1
    }
}

#[derive(Clone)]
struct Val {
    name: String,
    bits: bool,
    exact: bool,
}

fn candidate(r: &mut Choices, x: &Val, vals: &[Val]) -> (String, bool) {
    let n = &x.name;
    let other = vals[r.below(vals.len())].name.clone();
    let k = r.pick(&[1usize, 1, 2, 3, 3]);
    let s = r.pick(&[1usize, 1, 1, 2]);
    let p = if r.coin() { k / 2 } else { 0 };
    let d = r.pick(&[1usize, 1, 1, 2]);
    let g = r.pick(&[1usize, 1, 1, 2]);
    let o = r.pick(&[1usize, 3, 4, 8, 16, 17, 33]);
    let out = r.pick(&["dot", "dot", "affine", "threshold"]);
    let w = if r.coin() { "latent" } else { "packed" };
    let scale = if r.coin() { "none" } else { "channel" };
    let dot_exact = out == "dot" && scale == "none";
    match r.below(22) {
        0 => (
            format!(
                "conv2d({n}, {o}, kernel={k}, stride={s}, pad={p}, dilation={d}, groups={g}, bias={})",
                r.coin()
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
        4 => (format!("dense({n}, {o}, bias={})", r.coin()), false),
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

/// Grows a model of up to 6 ops; returns its source, graph and whether the
/// output compares exactly.
fn grow(r: &mut Choices) -> (String, Graph, bool) {
    let input = if r.below(4) == 0 {
        format!("f32[{}]", r.pick(&[1usize, 5, 63, 64, 65, 130]))
    } else {
        let c = r.pick(&[1usize, 2, 3, 4, 8, 33, 64, 65]);
        format!("f32[{c}, {}, {}]", 1 + r.below(7), 1 + r.below(7))
    };
    let len = 1 + r.below(6);
    let mut vals = vec![Val {
        name: "x".into(),
        bits: false,
        exact: false,
    }];
    let mut lines = Vec::new();
    let mut tries = 0;
    while lines.len() < len && tries < 20 * len {
        tries += 1;
        let x = if r.below(4) == 0 {
            vals[r.below(vals.len())].clone()
        } else {
            vals[vals.len() - 1].clone()
        };
        let (expr, exact) = candidate(r, &x, &vals);
        let name = format!("v{}", lines.len());
        lines.push(format!("  {name} = {expr}"));
        let Some(g) = checks(&source(&lines, &input, &name)) else {
            lines.pop();
            continue;
        };
        let bits = g.node(g.find(&name).expect("new node")).ty.dtype == DType::Bit;
        vals.push(Val {
            name,
            bits,
            exact: exact || bits,
        });
    }
    let last = vals.last().expect("the input at least").clone();
    let src = source(&lines, &input, &last.name);
    let g = checks(&src).expect("grown model verifies");
    (src, g, last.exact || last.bits)
}

/// Random parameter values with the spread of `tests/jit_random.rs`.
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
                "multiplier" | "alpha" => r.uniform(2.0),
                "threshold" => match i % 9 {
                    7 => f32::INFINITY,
                    8 => f32::NEG_INFINITY,
                    _ => (r.uniform(6.0) * 2.0).round() / 2.0,
                },
                "direction" => {
                    if r.below(2) == 1 {
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

fuzz_target!(|data: &[u8]| {
    let seed = data.iter().fold(0u64, |h, &b| h.rotate_left(5) ^ b as u64);
    let mut r = Choices(data);
    let options = Options {
        popcount: if r.coin() {
            Popcount::Scalar
        } else {
            Popcount::Auto
        },
        fuse: r.below(4) != 0,
        threads: 1 + r.below(2),
        ..Options::default()
    };
    let batch = 1 + r.below(2);
    let (src, graph, exact) = grow(&mut r);
    let p = params(&graph, seed);
    let mut data_rng = Rng::new(seed);
    let inputs: Vec<Tensor> = graph
        .inputs()
        .iter()
        .map(|&i| {
            let dims = graph.node(i).ty.dims().to_vec();
            let n = batch * dims.iter().product::<usize>();
            let mut shape = vec![batch];
            shape.extend(dims);
            let data = (0..n)
                .map(|k| {
                    if k % 17 == 3 {
                        0.0
                    } else {
                        data_rng.uniform(2.0)
                    }
                })
                .collect();
            Tensor { shape, data }
        })
        .collect();
    let expected = interp::run(&graph, &p, &inputs).expect("interpreter");
    let verified = onebit::ir::verify(&graph).expect("verified");
    let model = CompiledModel::compile(verified, &p, &options).expect("compile");
    let refs: Vec<&[f32]> = inputs.iter().map(|t| t.data.as_slice()).collect();
    let got = model.run_many(&refs, batch).expect("run");
    for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
        let e = &e.data;
        assert_eq!(g.len(), e.len(), "output {k} length\n{src}");
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(e).enumerate() {
            let ok = if exact {
                a == b || (a.is_nan() && b.is_nan())
            } else {
                (a - b).abs() <= 1e-5 * b.abs().max(1e-2 * scale).max(1e-6)
                    || (a.is_nan() && b.is_nan())
            };
            assert!(
                ok,
                "{options:?}, batch {batch}\n{src}\noutput {k}[{i}]: jit {a} vs interp {b}"
            );
        }
    }
});
