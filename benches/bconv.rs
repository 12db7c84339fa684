//! Same-run benchmark of the issue-4 layer (`benches/bconv_s1.bnn`: 3×3
//! bconv2d 64→64 on 56×56, pad 1, batchnorm + sign folded to packed bits)
//! against the best f32 GEMM of the same shape (M=64, N=3136, K=576, the
//! `gemm` crate as the yardstick in `../shared/yardstick` uses it), plus
//! `examples/resnet18_bnn.bnn` and its JIT compile time.
//!
//! Timing follows the yardstick's `timing.rs`: every case is warmed up,
//! calibrated to ~20 ms per sample, then measured in rounds; each round runs
//! one sample of every case in rotating order, so slow phases of a shared
//! machine hit all cases alike. Reported: medians of per-call times, and
//! ratios as medians of per-round ratios.
//!
//! Every case runs on each kernel path the host supports (`portable`,
//! `avx512`). With `YARDSTICK=path/to/bnn-yardstick` (the binary of
//! `shared/yardstick`, built with its own `.cargo/config.toml`), its tuned
//! AVX-512 kernel is run on S1 before and after the rounds and compared.
//!
//! `cargo bench --bench bconv` (env: `BENCH_ROUNDS`, default 15;
//! `ONEBIT_OPT_LEVEL` as for the JIT).

mod common;

use common::{case, gemm_nchw, gemm_nhwc, measure, median, median_ratio};

use onebit::codegen::Options;
use onebit::codegen::target::{KernelPath, Kernels};
use onebit::ir::Params;
use onebit::runtime::CompiledModel;
use onebit::util::rng::Rng;

const M: usize = 64;
const N: usize = 3136;
const K: usize = 576;

/// Random batchnorm statistics (signed scales), so the folded thresholds
/// are non-trivial and point both ways.
fn randomize_batchnorm(graph: &onebit::ir::Graph, params: &mut Params, seed: u64) {
    let mut r = Rng::new(seed);
    for (name, t) in params.tensors.iter_mut() {
        let Some((node, field)) = name.rsplit_once('.') else {
            continue;
        };
        let is_bn = graph
            .find(node)
            .is_some_and(|id| matches!(graph.node(id).op, onebit::ir::Op::BatchNorm(_)));
        if !is_bn {
            continue;
        }
        for x in t.data.iter_mut() {
            *x = match field {
                "weight" => r.uniform(1.0) + 0.1f32.copysign(r.uniform(1.0)),
                "bias" => r.uniform(0.5),
                "running_mean" => r.uniform(20.0),
                _ => 0.5 + 4.0 * r.uniform(1.0).abs(),
            };
        }
    }
}

struct Model {
    model: CompiledModel,
    input: Vec<f32>,
    out: Vec<f32>,
    scratch: onebit::runtime::Scratch,
}

impl Model {
    fn new(source: &str, threads: usize, seed: u64, path: KernelPath) -> Model {
        let graph = onebit::parse(source).expect("model parses");
        let mut params = Params::init(&graph, seed);
        randomize_batchnorm(&graph, &mut params, seed + 1);
        let model = onebit::compile(
            source,
            &params,
            &Options {
                threads,
                kernels: Kernels::Force(path),
                ..Options::default()
            },
        )
        .expect("model compiles");
        let n: usize = graph
            .inputs()
            .iter()
            .map(|&i| graph.node(i).ty.shape.elements())
            .sum();
        let mut r = Rng::new(seed + 2);
        let input = (0..n).map(|_| r.uniform(1.0)).collect();
        let out = vec![0.0; model.output_dims()[0].iter().product()];
        let scratch = model.scratch();
        let mut m = Model {
            model,
            input,
            out,
            scratch,
        };
        m.run(0..usize::MAX);
        m
    }

    fn steps(&self, pred: impl Fn(&str) -> bool) -> std::ops::Range<usize> {
        let idx: Vec<usize> = (0..self.model.layers().len())
            .filter(|&i| pred(self.model.layers()[i].kind))
            .collect();
        idx[0]..idx[idx.len() - 1] + 1
    }

    fn run(&mut self, steps: std::ops::Range<usize>) {
        self.model
            .run_steps(
                &[&self.input],
                &mut [&mut self.out],
                1,
                &mut self.scratch,
                steps,
            )
            .expect("model runs");
    }
}

/// The yardstick's tuned AVX-512 kernel on S1, run now (same sitting):
/// `YARDSTICK=/path/to/bnn-yardstick`; returns (median µs, min µs).
fn yardstick_s1() -> Option<(f64, f64)> {
    let bin = std::env::var("YARDSTICK").ok()?;
    let out = std::process::Command::new(&bin)
        .args(["gemm", "--threads", "1", "--shapes", "S1"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("bin-avx512 "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    Some((*f.first()?, *f.get(1)?))
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let root = env!("CARGO_MANIFEST_DIR");
    let layer_src = std::fs::read_to_string(format!("{root}/benches/bconv_s1.bnn")).unwrap();
    let resnet_src = std::fs::read_to_string(format!("{root}/examples/resnet18_bnn.bnn")).unwrap();
    let opt = std::env::var("ONEBIT_OPT_LEVEL").unwrap_or_else(|_| "default".into());
    let paths = KernelPath::supported();

    // Compile times first, on an otherwise idle process.
    let mut compile: Vec<Vec<f64>> = Vec::new();
    for &path in &paths {
        let mut c = Vec::new();
        for i in 0..7 {
            let m = Model::new(&resnet_src, 1, 10 + i, path);
            c.push(m.model.compile_time().as_secs_f64());
        }
        compile.push(c);
    }

    // ±1 operands for the float GEMM.
    let mut r = Rng::new(7);
    let mut pm1 = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| if r.next_u64() & 1 == 1 { -1.0 } else { 1.0 })
            .collect()
    };
    let a = pm1(M * K);
    let b = pm1(N * K);
    let mut bt = vec![0f32; K * N];
    for p in 0..N {
        for k in 0..K {
            bt[k * N + p] = b[p * K + k];
        }
    }
    let mut c1 = vec![0f32; M * N];
    let mut c2 = vec![0f32; M * N];

    let mut names: Vec<String> = vec![
        "f32 GEMM nhwc (gemm, 1 thr)".into(),
        "f32 GEMM nchw (gemm, 1 thr)".into(),
    ];
    let mut models = Vec::new();
    for &path in &paths {
        let p = path.name();
        for (what, src, thr) in [
            ("layer", &layer_src, 1),
            ("layer", &layer_src, 2),
            ("resnet", &resnet_src, 1),
            ("resnet", &resnet_src, 2),
        ] {
            models.push((path, what, thr, Model::new(src, thr, 3, path)));
        }
        for n in [
            "JIT layer: pack+pad+bconv, 1 thr",
            "JIT layer: pack+pad+bconv, 2 thr",
            "JIT bconv step only, 1 thr",
            "JIT bconv step only, 2 thr",
            "JIT bconv_s1 model incl. f32 NCHW I/O, 1 thr",
            "JIT resnet18_bnn, 1 thr",
            "JIT resnet18_bnn, 2 thr",
        ] {
            names.push(format!("[{p}] {n}"));
        }
    }
    let kinds: Vec<String> = models[0]
        .3
        .model
        .layers()
        .iter()
        .map(|l| format!("{} ({} units)", l.kind, l.units))
        .collect();
    let packed = models[0].3.steps(|k| k != "input" && k != "output");
    let conv = models[0].3.steps(|k| k.starts_with("bconv"));
    let whole = 0..usize::MAX;
    let yard_before = yardstick_s1();
    let t = {
        let cells: Vec<std::cell::RefCell<&mut Model>> = models
            .iter_mut()
            .map(|m| std::cell::RefCell::new(&mut m.3))
            .collect();
        let mut cases = vec![
            case(|| gemm_nhwc(M, N, K, &a, &b, &mut c1)),
            case(|| gemm_nchw(M, N, K, &a, &bt, &mut c2)),
        ];
        for q in cells.chunks(4) {
            let [l1, l2, r1, r2] = q else { unreachable!() };
            let (pa, pc, w) = (packed.clone(), conv.clone(), whole.clone());
            let (pa2, pc2) = (packed.clone(), conv.clone());
            let (w1, w2) = (whole.clone(), whole.clone());
            cases.push(case(move || l1.borrow_mut().run(pa.clone())));
            cases.push(case(move || l2.borrow_mut().run(pa2.clone())));
            cases.push(case(move || l1.borrow_mut().run(pc.clone())));
            cases.push(case(move || l2.borrow_mut().run(pc2.clone())));
            cases.push(case(move || l1.borrow_mut().run(w.clone())));
            cases.push(case(move || r1.borrow_mut().run(w1.clone())));
            cases.push(case(move || r2.borrow_mut().run(w2.clone())));
        }
        measure(&mut cases, rounds, 0.02, 0.15, 3)
    };
    let yard_after = yardstick_s1();
    let med: Vec<f64> = t.iter().map(|v| median(v)).collect();
    let best = if med[0] <= med[1] { 0 } else { 1 };
    let us = |s: f64| format!("{:.1}", s * 1e6);
    let per = 7;
    let at = |p: usize, i: usize| 2 + p * per + i;

    println!(
        "onebit bconv benchmark: {rounds} rounds, same process, Cranelift opt_level={opt}, \
         host threads {}, kernel paths {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("bconv_s1 steps: {}", kinds.join(", "));
    println!();
    println!("| case | median µs | min µs | best f32 / case (same-run) | GMAC/s |");
    println!("|---|---|---|---|---|");
    for (i, n) in names.iter().enumerate() {
        let min = t[i].iter().copied().fold(f64::INFINITY, f64::min);
        let layer = i < 2 || (i - 2) % per < 5;
        let ratio = if layer {
            format!("{:.2}×", median_ratio(&t[best], &t[i]))
        } else {
            "".into()
        };
        let gmacs = if layer {
            format!("{:.0}", (M * N * K) as f64 / med[i] / 1e9)
        } else {
            "".into()
        };
        let mark = if i == best { " (best float)" } else { "" };
        println!(
            "| {n}{mark} | {} | {} | {ratio} | {gmacs} |",
            us(med[i]),
            us(min)
        );
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    for (p, path) in paths.iter().enumerate() {
        let n = path.name();
        println!(
            "| [{n}] layer 2-thread speed-up (pack+pad+bconv) | {:.2}× |",
            median_ratio(&t[at(p, 0)], &t[at(p, 1)])
        );
        println!(
            "| [{n}] bconv step 2-thread speed-up | {:.2}× |",
            median_ratio(&t[at(p, 2)], &t[at(p, 3)])
        );
        println!(
            "| [{n}] resnet18_bnn 2-thread speed-up | {:.2}× |",
            median_ratio(&t[at(p, 5)], &t[at(p, 6)])
        );
        println!(
            "| [{n}] packing+pad share of the layer (1 thr) | {:.0}% |",
            100.0 * (1.0 - median_ratio(&t[at(p, 2)], &t[at(p, 0)]))
        );
        let cs: Vec<String> = compile[p]
            .iter()
            .map(|s| format!("{:.0}", s * 1e3))
            .collect();
        println!(
            "| [{n}] resnet18_bnn JIT compile (median of 7) | {:.1} ms (all: {} ms) |",
            median(&compile[p]) * 1e3,
            cs.join(", ")
        );
        if p > 0 {
            println!(
                "| [{n}] vs [portable]: bconv step / resnet18_bnn (1 thr, same-run) | {:.2}× / {:.2}× |",
                median_ratio(&t[at(0, 2)], &t[at(p, 2)]),
                median_ratio(&t[at(0, 5)], &t[at(p, 5)])
            );
        }
    }
    match (yard_before, yard_after) {
        (Some(b), Some(a)) => {
            let last = paths.len() - 1;
            let step = med[at(last, 2)] * 1e6;
            let y = 0.5 * (b.0 + a.0);
            println!(
                "| yardstick tuned AVX-512 S1, run before / after the rounds | {:.1} / {:.1} µs median ({:.1} / {:.1} min) |",
                b.0, a.0, b.1, a.1
            );
            println!(
                "| [{}] bconv step / yardstick (medians; mean of before and after) | {:.2}× |",
                paths[last].name(),
                step / y
            );
        }
        _ => println!("| yardstick | not run (set YARDSTICK=path/to/bnn-yardstick) |"),
    }
}
