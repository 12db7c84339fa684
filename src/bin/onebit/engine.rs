//! The JIT side of the command line: `run --engine jit`, `bench`, `compile`.

use std::time::{Duration, Instant};

use onebit::codegen::target::Kernels;
use onebit::codegen::{self, Options};
use onebit::ir::{Graph, Params, Tensor, interp};

use super::Failure;

/// Runs `graph` with the JIT; outputs shaped `[N, ...]`.
pub fn run_jit(
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
    threads: usize,
    kernels: Kernels,
) -> Result<Vec<Tensor>, Failure> {
    let batch = inputs
        .first()
        .and_then(|t| t.shape.first().copied())
        .unwrap_or(0);
    for (t, &id) in inputs.iter().zip(graph.inputs()) {
        let dims = graph.node(id).ty.dims();
        if t.shape.len() != dims.len() + 1 || t.shape[1..] != *dims || t.shape[0] != batch {
            return Err(Failure(format!(
                "error: input `{}` must be [{batch}, {}], found {:?}",
                graph.node(id).name,
                dims.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                t.shape
            )));
        }
    }
    let model = onebit::compile_graph(
        graph,
        params,
        &Options {
            threads,
            kernels,
            ..Options::default()
        },
    )
    .map_err(|e| Failure(format!("error: {e}")))?;
    let refs: Vec<&[f32]> = inputs.iter().map(|t| t.data.as_slice()).collect();
    let outs = model
        .run_many(&refs, batch)
        .map_err(|e| Failure(format!("error: {e}")))?;
    Ok(outs
        .into_iter()
        .zip(model.output_dims())
        .map(|(data, dims)| {
            let mut shape = vec![batch];
            shape.extend(dims);
            Tensor { shape, data }
        })
        .collect())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Prints the benchmark table.
pub fn bench(
    graph: &Graph,
    params: &Params,
    threads: usize,
    batch: usize,
    with_interp: bool,
    kernels: Kernels,
) -> Result<(), Failure> {
    let err = |e: onebit::Error| Failure(format!("error: {e}"));
    let start = Instant::now();
    let model = onebit::compile_graph(
        graph,
        params,
        &Options {
            threads,
            kernels,
            ..Options::default()
        },
    )
    .map_err(err)?;
    let compile = start.elapsed();
    let inputs: Vec<Vec<f32>> = graph
        .inputs()
        .iter()
        .map(|&i| {
            let n = batch * graph.node(i).ty.shape.elements();
            let mut r = onebit::util::rng::Rng::new(1);
            (0..n).map(|_| r.uniform(1.0)).collect()
        })
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<Vec<f32>> = model
        .output_dims()
        .iter()
        .map(|d| vec![0.0; batch * d.iter().product::<usize>()])
        .collect();
    let mut scratch = model.scratch();
    let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
    // Warm up, then time whole runs for ~1 s (at least 5).
    let run_err = |e: onebit::RunError| Failure(format!("error: {e}"));
    for _ in 0..3 {
        model
            .run_into(&refs, &mut out_refs, batch, &mut scratch)
            .map_err(run_err)?;
    }
    let mut runs = Vec::new();
    let t0 = Instant::now();
    while runs.len() < 5 || (t0.elapsed() < Duration::from_secs(1) && runs.len() < 10_000) {
        let s = Instant::now();
        model
            .run_into(&refs, &mut out_refs, batch, &mut scratch)
            .map_err(run_err)?;
        runs.push(s.elapsed());
    }
    let whole = median(runs);
    let mut per: Vec<Vec<Duration>> = vec![Vec::new(); model.layers().len()];
    let t0 = Instant::now();
    let mut reps = 0;
    while reps < 5 || (t0.elapsed() < Duration::from_millis(700) && reps < 5_000) {
        let times = model
            .profile(&refs, &mut out_refs, batch, &mut scratch)
            .map_err(run_err)?;
        for (p, t) in per.iter_mut().zip(times) {
            p.push(t);
        }
        reps += 1;
    }
    let path =
        codegen::target::KernelPath::resolve(kernels, &codegen::target::HostFeatures::detect())
            .map_or("?", |p| p.name());
    println!(
        "model `{}`: batch {batch}, {} thread{}, {path} kernels",
        graph.name,
        model.threads(),
        if model.threads() == 1 { "" } else { "s" }
    );
    let peaks = codegen::kernels::wide::peak::measure();
    let cores = model.threads() as f64;
    match peaks {
        Some(p) => println!(
            "peaks of this machine (measured, per core): f32 {:.1} GMAC/s, binary {:.0} GMAC/s; \
             fractions below are of {} core{}",
            p.f32_macs / 1e9,
            p.binary_macs / 1e9,
            model.threads(),
            if model.threads() == 1 { "" } else { "s" }
        ),
        None => println!("peaks: not measured (the peak loops need AVX-512)"),
    }
    println!();
    println!("| # | node | kernel | units | median µs | GMAC/s | of peak |");
    println!("|---|---|---|---|---|---|---|");
    let mut totals = [(0u64, 0.0f64); 2]; // (MACs, seconds): binary, real
    for (i, (layer, t)) in model.layers().iter().zip(per).enumerate() {
        let t = median(t);
        // The layer's MACs belong to its convolution step (dense layers are
        // 1×1 convolutions), not to the padding or packing steps beside it.
        let (binary, real) = match graph.find(&layer.node) {
            Some(id) if layer.kind.contains("conv") => onebit::ir::summary::node_macs(graph, id),
            _ => (0, 0),
        };
        let (macs, peak, kind) = if binary >= real {
            (binary, peaks.map(|p| p.binary_macs), 0)
        } else {
            (real, peaks.map(|p| p.f32_macs), 1)
        };
        let macs = macs * batch as u64;
        let (rate, fraction) = if macs > 0 && t > Duration::ZERO {
            totals[kind].0 += macs;
            totals[kind].1 += t.as_secs_f64();
            let rate = macs as f64 / t.as_secs_f64();
            (
                format!("{:.1}", rate / 1e9),
                peak.map_or("–".into(), |p| {
                    format!("{:.0}%", 100.0 * rate / (p * cores))
                }),
            )
        } else {
            ("".into(), "".into())
        };
        println!(
            "| {i} | {} | {} | {} | {} | {rate} | {fraction} |",
            layer.node,
            layer.kind,
            layer.units,
            us(t)
        );
    }
    println!();
    for ((macs, secs), (what, peak)) in totals.iter().zip([
        ("binary layers", peaks.map(|p| p.binary_macs)),
        ("real layers", peaks.map(|p| p.f32_macs)),
    ]) {
        if *macs > 0 && *secs > 0.0 {
            let rate = *macs as f64 / secs;
            println!(
                "{what}: {:.2} GMAC in {:.1} µs, {:.1} GMAC/s{}",
                *macs as f64 / 1e9,
                secs * 1e6,
                rate / 1e9,
                peak.map_or(String::new(), |p| format!(
                    " ({:.0}% of peak)",
                    100.0 * rate / (p * cores)
                ))
            );
        }
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| JIT compile | {:.1} ms |", compile.as_secs_f64() * 1e3);
    println!("| JIT whole model (median) | {} µs |", us(whole));
    println!(
        "| JIT per sample | {} µs |",
        us(whole / batch.max(1) as u32)
    );
    if with_interp {
        let tensors: Vec<Tensor> = graph
            .inputs()
            .iter()
            .zip(&inputs)
            .map(|(&i, d)| {
                let mut shape = vec![batch];
                shape.extend(graph.node(i).ty.dims());
                Tensor {
                    shape,
                    data: d.clone(),
                }
            })
            .collect();
        let mut times = Vec::new();
        let t0 = Instant::now();
        while times.len() < 3 && (times.is_empty() || t0.elapsed() < Duration::from_secs(5)) {
            let s = Instant::now();
            interp::run(graph, params, &tensors).map_err(|e| Failure(format!("error: {e}")))?;
            times.push(s.elapsed());
        }
        let it = median(times);
        println!("| interpreter whole model | {} µs |", us(it));
        println!(
            "| speed-up over the interpreter | {:.1}× |",
            it.as_secs_f64() / whole.as_secs_f64()
        );
    }
    Ok(())
}

/// `onebit compile`: the object file's bytes and the C header, printing the
/// Cranelift IR with `clif`. The caller writes the files.
pub fn compile(
    graph: &Graph,
    params: &Params,
    clif: bool,
    kernels: Kernels,
    target: codegen::target::TargetCpu,
) -> Result<(Vec<u8>, String), Failure> {
    let verified = onebit::verify(graph).map_err(|e| Failure(format!("error: {e}")))?;
    let options = Options {
        emit_clif: clif,
        kernels,
        target,
        ..Options::default()
    };
    let (bytes, lowered) = codegen::object::compile(verified, params, &options)
        .map_err(|e| Failure(format!("error: {e}")))?;
    eprintln!(
        "`{}` for target CPU {}: {} kernels",
        graph.name,
        options.target.name(),
        lowered.path.name()
    );
    if clif {
        print!("{}", lowered.clif);
    }
    Ok((bytes, codegen::object::header(&graph.name, &lowered)))
}
