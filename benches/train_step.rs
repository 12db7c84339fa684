//! Same-run benchmark of one training step (forward + backward, the graph
//! `differentiate` builds) on `StepEngine` with 1 and 2 threads against the
//! reference interpreter, for `examples/digits_cnn.bnn` at batch 64 and a
//! Fashion-MNIST-sized binarized MLP (784→256→256→10, `sign` activations,
//! `bdense` hidden layers, batchnorm) at batch 100.
//!
//! Timing is `benches/common`'s: every case is warmed up, calibrated to
//! ~20 ms per sample, then measured in rounds, each round running one sample
//! of every case in rotating order so slow phases of a shared machine hit
//! all cases alike; reported are medians of per-call times and ratios as
//! medians of per-round ratios. The interpreter, ~1000× slower, runs a few
//! calls per round. GFLOP/s counts 2·MACs forward and 4·MACs backward of the
//! dense and convolution layers (6·MACs per sample in all). A last profiled
//! pass prints where the engine's time goes per kind of step.
//!
//! The architecture-search case runs the supernet of
//! `examples/search/darts_cell.bnn` with its partial channels (K = 2), the
//! same supernet at full width, and a discretised network of the space (a
//! seeded random genotype, at full width), all at batch 64 on 2 threads:
//! the overhead of searching is the supernet's step over the discretised
//! one's.
//!
//! `cargo bench --bench train_step` (env: `BENCH_ROUNDS`, default 11;
//! `BENCH_ONLY=digits|mlp|supernet`). On a shared machine the median includes other
//! processes' load; the best round, and the CPU time of the single-threaded
//! engine per step, show what the code reaches unhindered.

mod common;

use common::{case, measure, median, median_ratio};

use onebit::ir::{Graph, Op, Params, Tensor, interp};
use onebit::passes::differentiate::{LossSpec, differentiate};
use onebit::text::parse_str;
use onebit::train::engine::{EngineOptions, StepEngine};
use onebit::util::rng::Rng;

const MLP: &str = "model fashion_mlp {
  input x: f32[784]
  fc1 = dense(x, 256, bias=false)
  bn1 = batchnorm(fc1)
  fc2 = bdense(sign(bn1), 256)
  bn2 = batchnorm(fc2)
  fc3 = bdense(sign(bn2), 10)
  logits = batchnorm(fc3)
  output logits
}";

/// CPU time this process's threads have been on a core, in seconds
/// (`/proc/self/task/*/schedstat`, first field, in ns); `None` off Linux.
fn cpu_seconds() -> Option<f64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total as f64 * 1e-9)
}

/// Seconds of CPU per call of `f` over `calls` calls: with one thread, the
/// time the step itself takes on a core, whatever else the machine runs.
fn cpu_per_call(calls: usize, mut f: impl FnMut()) -> Option<f64> {
    f();
    let c0 = cpu_seconds()?;
    for _ in 0..calls {
        f();
    }
    Some((cpu_seconds()? - c0) / calls as f64)
}

/// MACs per sample of the dense and convolution layers of `model`.
fn macs_per_sample(model: &Graph) -> u64 {
    model
        .node_ids()
        .map(|id| {
            let node = model.node(id);
            let out: u64 = node.ty.dims().iter().product::<usize>() as u64;
            let xin = model.operand_types(id);
            match &node.op {
                Op::Dense(_) | Op::BDense(_) => out * xin[0].dims()[0] as u64,
                Op::Conv2d(a) => {
                    let g = &a.geometry;
                    out * (xin[0].dims()[0] / g.groups * g.kernel[0] * g.kernel[1]) as u64
                }
                Op::BConv2d(a) => {
                    let g = &a.geometry;
                    out * (xin[0].dims()[0] / g.groups * g.kernel[0] * g.kernel[1]) as u64
                }
                _ => 0,
            }
        })
        .sum()
}

fn inputs(graph: &Graph, n: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    graph
        .inputs()
        .iter()
        .map(|&id| {
            let dims = graph.node(id).ty.dims().to_vec();
            let per: usize = dims.iter().product();
            let data: Vec<f32> = if graph.node(id).name == "target" {
                (0..n)
                    .flat_map(|_| {
                        let k = rng.below(per);
                        (0..per).map(move |j| if j == k { 1.0 } else { 0.0 })
                    })
                    .collect()
            } else {
                (0..n * per).map(|_| rng.uniform(1.0)).collect()
            };
            let mut shape = vec![n];
            shape.extend(dims);
            Tensor { shape, data }
        })
        .collect()
}

fn bench(name: &str, source: &str, batch: usize, rounds: usize) {
    let model = parse_str(source).expect("model parses");
    let train = differentiate(&model, &LossSpec::default()).expect("differentiates");
    let params = Params::init(&model, 1);
    let x = inputs(&train.graph, batch, 2);
    let mut one = StepEngine::new(&train.graph, &EngineOptions { threads: 1 }).unwrap();
    let mut two = StepEngine::new(&train.graph, &EngineOptions { threads: 2 }).unwrap();
    let mut cases = vec![
        case(|| {
            one.run(&params, &x).unwrap();
        }),
        case(|| {
            two.run(&params, &x).unwrap();
        }),
    ];
    let t = measure(&mut cases, rounds, 0.02, 0.2, 1);
    drop(cases);
    // The interpreter: a few calls, alongside one engine case for the ratio.
    let mut icases = vec![
        case(|| {
            interp::run(&train.graph, &params, &x).unwrap();
        }),
        case(|| {
            two.run(&params, &x).unwrap();
        }),
    ];
    let ti = measure(&mut icases, 3.min(rounds), 0.0, 0.0, 1);
    drop(icases);

    let macs = macs_per_sample(&model) * batch as u64;
    let flop = 6.0 * macs as f64;
    println!(
        "\n{name} (batch {batch}, {:.1} MMAC forward, {:.1} MFLOP per step counting 2·fwd + 4·bwd)",
        macs as f64 / 1e6,
        flop / 1e6
    );
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    for (label, v) in [
        ("engine, 1 thread ", &t[0]),
        ("engine, 2 threads", &t[1]),
        ("interpreter      ", &ti[0]),
    ] {
        let (m, best) = (median(v), min(v));
        println!(
            "  {label}  {:9.3} ms/step (best round {:.3})  {:8.0} samples/s  {:6.1} GFLOP/s (best {:.1})",
            m * 1e3,
            best * 1e3,
            batch as f64 / m,
            flop / m / 1e9,
            flop / best / 1e9
        );
    }
    if let Some(cpu) = cpu_per_call(200, || {
        one.run(&params, &x).unwrap();
    }) {
        println!(
            "  engine, 1 thread, CPU time: {:.3} ms/step  {:8.0} samples/s  {:6.1} GFLOP/s",
            cpu * 1e3,
            batch as f64 / cpu,
            flop / cpu / 1e9
        );
    }
    println!(
        "  2 threads vs 1: {:.2}x faster; interpreter vs engine (2 threads): {:.0}x slower",
        median_ratio(&t[0], &t[1]),
        median_ratio(&ti[0], &ti[1])
    );

    print_profile("1 thread", &mut one, &params, &x, 14);
    print_profile("2 threads", &mut two, &params, &x, 14);
}

/// Prints where a profiled engine's time goes, per kind of step.
fn print_profile(label: &str, engine: &mut StepEngine, params: &Params, x: &[Tensor], rows: usize) {
    engine.set_profiling(true);
    let runs = 30;
    for _ in 0..runs {
        engine.run(params, x).unwrap();
    }
    let mut prof = engine.profile();
    prof.sort_by(|a, b| b.best_seconds.total_cmp(&a.best_seconds));
    let total: f64 = prof.iter().map(|p| p.seconds).sum();
    let best: f64 = prof.iter().map(|p| p.best_seconds).sum();
    println!(
        "  where the time goes ({label}; mean {:.3} ms/step in steps, sum of each step's best {:.3} ms):",
        total / runs as f64 * 1e3,
        best * 1e3
    );
    for p in prof.iter().take(rows) {
        println!(
            "    {:32} best {:8.1} µs/step {:5.1}%   mean {:8.1} µs/step",
            p.kind,
            p.best_seconds * 1e6,
            100.0 * p.best_seconds / best,
            p.seconds / runs as f64 * 1e6,
        );
    }
    engine.set_profiling(false);
}

fn bench_supernet(rounds: usize) {
    use onebit::nas::genotype::{Genotype, discretize};
    use onebit::nas::space::SearchSpace;
    use onebit::text::{LowerOptions, parse_with};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/search/darts_cell.bnn"
    );
    let source = std::fs::read(path).expect("example exists");
    let lower = |partial_channels| {
        parse_with(path, &source, LowerOptions { partial_channels }).expect("space parses")
    };
    let (narrow, full) = (lower(None), lower(Some(1)));
    let space = SearchSpace::of(&full).expect("a search space");
    let (chosen, _) = discretize(&full, &Params::init(&full, 1), &Genotype::random(&space, 1))
        .expect("discretises");
    let batch = 64;
    let mut setups: Vec<_> = [&narrow, &full, &chosen]
        .into_iter()
        .map(|model| {
            let train = differentiate(model, &LossSpec::default()).expect("differentiates");
            let params = Params::init(model, 1);
            let x = inputs(&train.graph, batch, 2);
            let engine = StepEngine::new(&train.graph, &EngineOptions { threads: 2 }).unwrap();
            (engine, params, x, macs_per_sample(model))
        })
        .collect();
    let t = {
        let mut cases: Vec<_> = setups
            .iter_mut()
            .map(|(engine, params, x, _)| {
                case(move || {
                    engine.run(params, x).unwrap();
                })
            })
            .collect();
        measure(&mut cases, rounds, 0.05, 0.3, 1)
    };
    println!(
        "
search: darts_cell.bnn at batch {batch}, 2 threads, one training step each"
    );
    let labels = [
        "supernet, partial channels K = 2",
        "supernet, full width (K = 1)    ",
        "discretised network (random)    ",
    ];
    for (k, label) in labels.iter().enumerate() {
        let m = median(&t[k]);
        println!(
            "  {label}  {:8.2} ms/step  {:7.0} samples/s  {:6.1} MMAC/sample forward",
            m * 1e3,
            batch as f64 / m,
            setups[k].3 as f64 / 1e6
        );
    }
    println!(
        "  overhead of searching (supernet / discretised): K = 2 {:.1}x, full width {:.1}x; K = 2 is {:.2}x faster than full width",
        median_ratio(&t[0], &t[2]),
        median_ratio(&t[1], &t[2]),
        median_ratio(&t[1], &t[0])
    );
    let (engine, params, x, _) = &mut setups[0];
    print_profile("supernet, K = 2", engine, params, x, 12);
    let (engine, params, x, _) = &mut setups[1];
    print_profile("supernet, full width", engine, params, x, 12);
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11);
    let digits = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/digits_cnn.bnn"
    ))
    .expect("example exists");
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "digits" {
        bench("digits_cnn", &digits, 64, rounds);
    }
    if only.is_empty() || only == "mlp" {
        bench("fashion MLP 784-256-256-10", MLP, 100, rounds);
    }
    if only.is_empty() || only == "supernet" {
        bench_supernet(rounds);
    }
}
