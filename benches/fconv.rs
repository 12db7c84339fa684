//! Same-run benchmark of the real-valued layers: the Bi-Real stem
//! (`benches/stem.bnn`: 7×7 conv2d 3→64, stride 2, pad 3, 224² input) on
//! each kernel path, against
//! * the machine's f32 FMA peak, measured in the same rounds by a loop of
//!   12 independent `vfmadd231ps zmm` chains (the limit of one core), and
//! * the `gemm` crate on the same shape as an explicit GEMM over the im2col
//!   matrix (M=64, N=12544, K=147, both orientations; the im2col itself not
//!   timed, so the crate gets the easier job),
//!
//! plus `examples/resnet18_bnn.bnn` whole on each path.
//!
//! Timing as in `benches/bconv.rs`: warm-up, calibration to ~20 ms per
//! sample, rounds that run one sample of every case in rotating order;
//! medians of per-call times and of per-round ratios. 1 thread throughout.
//!
//! `cargo bench --bench fconv` (env: `BENCH_ROUNDS`, default 15).

mod common;

use common::{case, gemm_nchw, gemm_nhwc, measure, median, median_ratio};

use onebit::codegen::Options;
use onebit::codegen::target::{KernelPath, Kernels};
use onebit::ir::Params;
use onebit::runtime::CompiledModel;
use onebit::util::rng::Rng;

/// Output channels, pixels and receptive field of the stem.
const M: usize = 64;
const N: usize = 112 * 112;
const K: usize = 147;
const MACS: f64 = (M * N * K) as f64;

/// Iterations of the peak loop per call (12 FMAs of 16 lanes each).
const PEAK_ITERS: u64 = 200_000;

/// `PEAK_ITERS` × 12 independent 512-bit FMAs: the single-core f32 peak.
#[cfg(target_arch = "x86_64")]
fn fma_peak_loop() {
    // SAFETY: only zmm0–zmm11, zmm30, zmm31 and the counter are touched,
    // all declared clobbered; the caller checked for AVX-512F.
    unsafe {
        std::arch::asm!(
            "vxorps zmm30, zmm30, zmm30",
            "vxorps zmm31, zmm31, zmm31",
            "2:",
            "vfmadd231ps zmm0, zmm30, zmm31",
            "vfmadd231ps zmm1, zmm30, zmm31",
            "vfmadd231ps zmm2, zmm30, zmm31",
            "vfmadd231ps zmm3, zmm30, zmm31",
            "vfmadd231ps zmm4, zmm30, zmm31",
            "vfmadd231ps zmm5, zmm30, zmm31",
            "vfmadd231ps zmm6, zmm30, zmm31",
            "vfmadd231ps zmm7, zmm30, zmm31",
            "vfmadd231ps zmm8, zmm30, zmm31",
            "vfmadd231ps zmm9, zmm30, zmm31",
            "vfmadd231ps zmm10, zmm30, zmm31",
            "vfmadd231ps zmm11, zmm30, zmm31",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) PEAK_ITERS => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
            out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm30") _, out("zmm31") _,
            options(nostack),
        );
    }
}

struct Model {
    model: CompiledModel,
    input: Vec<f32>,
    out: Vec<f32>,
    scratch: onebit::runtime::Scratch,
}

impl Model {
    fn new(source: &str, seed: u64, path: KernelPath) -> Model {
        let graph = onebit::parse(source).expect("model parses");
        let params = Params::init(&graph, seed);
        let model = onebit::compile(
            source,
            &params,
            &Options {
                threads: 1,
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

    /// The steps of kind `kind`.
    fn steps(&self, kind: &str) -> std::ops::Range<usize> {
        let idx: Vec<usize> = (0..self.model.layers().len())
            .filter(|&i| self.model.layers()[i].kind == kind)
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

fn main() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("fconv bench: needs AVX-512F (the peak loop and the avx512 path); skipping");
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let root = env!("CARGO_MANIFEST_DIR");
    let stem_src = std::fs::read_to_string(format!("{root}/benches/stem.bnn")).unwrap();
    let resnet_src = std::fs::read_to_string(format!("{root}/examples/resnet18_bnn.bnn")).unwrap();
    let paths = KernelPath::supported();

    let mut r = Rng::new(7);
    let mut vals = |n: usize| -> Vec<f32> { (0..n).map(|_| r.uniform(1.0)).collect() };
    let a = vals(M * K);
    let b = vals(N * K);
    let mut bt = vec![0f32; K * N];
    for p in 0..N {
        for k in 0..K {
            bt[k * N + p] = b[p * K + k];
        }
    }
    let mut c1 = vec![0f32; M * N];
    let mut c2 = vec![0f32; M * N];

    let mut names: Vec<String> = vec![
        "f32 FMA peak loop (12 zmm chains)".into(),
        "gemm crate, im2col GEMM, nhwc".into(),
        "gemm crate, im2col GEMM, nchw".into(),
    ];
    let mut models = Vec::new();
    for &path in &paths {
        models.push((
            Model::new(&stem_src, 3, path),
            Model::new(&resnet_src, 3, path),
        ));
        for n in [
            "stem conv step",
            "stem model (I/O conversion, pad, conv)",
            "resnet18_bnn",
        ] {
            names.push(format!("[{}] {n}", path.name()));
        }
    }
    let conv = models[0].0.steps("conv");
    let t = {
        let cells: Vec<(
            std::cell::RefCell<&mut Model>,
            std::cell::RefCell<&mut Model>,
        )> = models
            .iter_mut()
            .map(|(s, n)| (std::cell::RefCell::new(s), std::cell::RefCell::new(n)))
            .collect();
        let mut cases = vec![
            case(fma_peak_loop),
            case(|| gemm_nhwc(M, N, K, &a, &b, &mut c1)),
            case(|| gemm_nchw(M, N, K, &a, &bt, &mut c2)),
        ];
        for (stem, net) in &cells {
            let c = conv.clone();
            cases.push(case(move || stem.borrow_mut().run(c.clone())));
            cases.push(case(move || stem.borrow_mut().run(0..usize::MAX)));
            cases.push(case(move || net.borrow_mut().run(0..usize::MAX)));
        }
        measure(&mut cases, rounds, 0.02, 0.15, 3)
    };
    let med: Vec<f64> = t.iter().map(|v| median(v)).collect();
    let peak_macs = (PEAK_ITERS * 12 * 16) as f64;
    let peak = peak_macs / med[0];
    // Per round: this case's GMAC/s over the peak loop's in the same round.
    let frac = |i: usize| -> f64 {
        let r: Vec<f64> = t[i]
            .iter()
            .zip(&t[0])
            .map(|(ti, tp)| (MACS / ti) / (peak_macs / tp))
            .collect();
        median(&r)
    };
    println!(
        "onebit fconv benchmark: {rounds} rounds, 1 thread, kernel paths {}; \
         the machine is shared, so read the same-run ratios",
        paths
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "stem steps: {}",
        models[0]
            .0
            .model
            .layers()
            .iter()
            .map(|l| format!("{} ({} units)", l.kind, l.units))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("| case | median µs | min µs | GMAC/s | of f32 peak (same round) | vs gemm nhwc |");
    println!("|---|---|---|---|---|---|");
    for (i, n) in names.iter().enumerate() {
        let min = t[i].iter().copied().fold(f64::INFINITY, f64::min);
        let resnet = i >= 3 && (i - 3) % 3 == 2;
        let (gmacs, of_peak, vs) = if i == 0 {
            (format!("{:.1}", peak / 1e9), "1".into(), "".into())
        } else if resnet {
            ("".into(), "".into(), "".into())
        } else {
            (
                format!("{:.1}", MACS / med[i] / 1e9),
                format!("{:.0}%", 100.0 * frac(i)),
                format!("{:.2}×", median_ratio(&t[1], &t[i])),
            )
        };
        println!(
            "| {n} | {:.1} | {:.1} | {gmacs} | {of_peak} | {vs} |",
            med[i] * 1e6,
            min * 1e6
        );
    }
    if paths.len() > 1 {
        let (p, q) = (3, 3 + 3 * (paths.len() - 1));
        println!();
        println!(
            "[{}] vs [{}], same-run: stem conv step {:.2}×, resnet18_bnn {:.2}×",
            paths[paths.len() - 1].name(),
            paths[0].name(),
            median_ratio(&t[p], &t[q]),
            median_ratio(&t[p + 2], &t[q + 2])
        );
    }
}
