//! The `onebit` command line.
//!
//! Exit status: 0 on success, 1 for a bad model or bad data, 2 for bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[path = "onebit/args.rs"]
mod args;
#[path = "onebit/engine.rs"]
mod engine;
#[path = "onebit/output.rs"]
mod output;
#[path = "onebit/search.rs"]
mod search;
#[path = "onebit/train.rs"]
mod train;

use onebit::io::{npy, weights};
use onebit::ir::{Graph, Params, Tensor, dot, interp, json, summary::Summary};
use onebit::passes::{self, PassOptions, PassReport, PassSelection};

use args::LimitArgs;
use output::Outputs;

/// onebit: a compiler toolchain for 1-bit (binarized) neural networks.
///
/// Models are written in the .bnn language (see ir-spec/language.md); weights
/// are safetensors files with PyTorch's parameter names; data are .npy arrays.
#[derive(Parser)]
#[command(
    name = "onebit",
    version,
    about,
    long_about,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a model and print a per-layer summary: output shapes, binary and
    /// real parameters and MACs, memory, and the model size packed vs float32.
    ///
    /// With --passes, the passes run first and a report follows: per layer
    /// whether it runs binary, what was fused into it, and why a real-valued
    /// layer between binary layers was not folded.
    Check {
        /// The model file (.bnn).
        model: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        /// Passes to run first: `default`, `none`, or `name,name,...`.
        #[arg(long)]
        passes: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Print a model's IR: as text (a valid .bnn file with one op per line),
    /// JSON, or Graphviz DOT.
    Ir {
        /// The model file (.bnn).
        model: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        weights: WeightsArgs,
        /// Passes to run first: `default`, `none`, or `name,name,...`
        /// (`select_cells` finalises a searched architecture).
        #[arg(long, default_value = "none")]
        passes: String,
        /// Print the IR after this pass (or `all`), not only at the end.
        #[arg(long)]
        print_after: Option<String>,
        /// `select_cells`: keep the k best alternatives of each `choose`.
        #[arg(long, default_value_t = 1, value_parser = args::positive)]
        top_k: usize,
        /// Print the training-step graph (`differentiate`) instead: the
        /// forward pass in training mode, the loss and every gradient.
        #[arg(long, conflicts_with_all = ["passes", "print_after", "save_weights"])]
        train: bool,
        /// Also write the parameters of the printed model (packed weights,
        /// folded thresholds, the chosen alternatives of a search) to this
        /// safetensors file, so that it runs from files.
        #[arg(long, value_name = "W.safetensors")]
        save_weights: Option<PathBuf>,
        /// Lower every cell declared `partial(x, c, K)` with this K instead
        /// (1: the full-width network a search derives).
        #[arg(long, value_parser = args::positive)]
        partial_channels: Option<usize>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Write freshly initialised parameters (PyTorch's defaults) to a
    /// safetensors file.
    Init {
        /// The model file (.bnn).
        model: PathBuf,
        /// Where to write the weights.
        #[arg(short, long)]
        output: PathBuf,
        /// Seed of the random initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run a model on a batch: inputs and outputs are .npy f32 arrays shaped
    /// [N, ...]; without -o, the outputs are printed.
    Run {
        /// The model file (.bnn).
        model: PathBuf,
        /// The weights (safetensors), e.g. from `onebit init`.
        #[arg(long, required_unless_present = "seed", conflicts_with = "seed")]
        weights: Option<PathBuf>,
        /// Use freshly initialised weights from this seed instead of a file.
        #[arg(long)]
        seed: Option<u64>,
        /// A .npy file for a model input; repeat once per input, in
        /// declaration order (one value per option, so that a following
        /// model path is never taken for an input).
        #[arg(long, required = true, action = clap::ArgAction::Append)]
        input: Vec<PathBuf>,
        /// A .npy file for a model output; repeat once per output, in
        /// declaration order.
        #[arg(short, long, action = clap::ArgAction::Append)]
        output: Vec<PathBuf>,
        /// Labels (.npy, one integer class per sample): print the accuracy of
        /// the first output's argmax.
        #[arg(long)]
        labels: Option<PathBuf>,
        /// The execution engine.
        #[arg(long, value_enum, default_value_t = Engine::Jit)]
        engine: Engine,
        /// Passes to run first: `default`, `none`, or `name,name,...`
        /// [default: `default` with the JIT, `none` with the interpreter].
        #[arg(long)]
        passes: Option<String>,
        /// Threads for the JIT engine (1 to 256).
        #[arg(long, default_value_t = 1, value_parser = args::threads)]
        threads: usize,
        /// Kernel path of the binary layers: `auto` (`ONEBIT_KERNELS`, else
        /// the best this CPU runs), `portable` (Cranelift), `avx2` or `avx512`.
        #[arg(long, default_value = "auto", value_parser = args::kernels)]
        kernels: onebit::codegen::target::Kernels,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Time a model: per-layer and whole-model latency of the JIT, its
    /// compile time, and the interpreter on the same batch.
    Bench {
        /// The model file (.bnn).
        model: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        /// Threads (1 to 256).
        #[arg(long, default_value_t = 1, value_parser = args::threads)]
        threads: usize,
        /// Batch size.
        #[arg(long, default_value_t = 1, value_parser = args::positive)]
        batch: usize,
        /// Skip the interpreter (slow on large models).
        #[arg(long)]
        no_interp: bool,
        /// Kernel path of the binary layers: `auto` (`ONEBIT_KERNELS`, else
        /// the best this CPU runs), `portable` (Cranelift), `avx2` or `avx512`.
        #[arg(long, default_value = "auto", value_parser = args::kernels)]
        kernels: onebit::codegen::target::Kernels,
        /// Passes to run before compiling.
        #[arg(long, default_value = "default")]
        passes: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Train a model on a data set: the training step is derived by the
    /// `differentiate` pass; the weights, a checkpoint per epoch, metrics and
    /// curves are written; the last line is the test accuracy of the
    /// JIT-compiled model.
    Train(train::TrainArgs),
    /// Architecture search: train a supernet (`choose` edges and nodes)
    /// with first-order DARTS or BNAS's operation-space reduction, and write
    /// the chosen architecture as a plain model file.
    Search(search::SearchArgs),
    /// Accuracy and confusion matrix of a trained model on the held-out
    /// split `train` used (or the training part, or all), on the JIT.
    Eval(train::EvalArgs),
    /// Compile a model ahead of time to a relocatable object file (and C header).
    Compile {
        /// The model file (.bnn).
        model: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        /// The object file to write.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also write a C header declaring NAME_run and NAME_scratch_bytes.
        #[arg(long)]
        header: Option<PathBuf>,
        /// Print the Cranelift IR instead of (or besides) writing the object.
        #[arg(long, value_enum)]
        emit: Option<Emit>,
        /// Kernel path of the binary layers: `auto` (`ONEBIT_KERNELS`, else
        /// the best the target CPU runs), `portable` (Cranelift), `avx2` or `avx512`.
        #[arg(long, default_value = "auto", value_parser = args::kernels)]
        kernels: onebit::codegen::target::Kernels,
        /// The CPU the object runs on: `host`, or a Cranelift x86-64 preset
        /// (`x86-64`, `x86-64-v2`, `x86-64-v3`, `haswell`, `skylake-avx512`,
        /// `icelake-server`, `znver4`, ...); it bounds both Cranelift's
        /// instructions and the kernel path.
        #[arg(long, default_value = "host", value_parser = args::target_cpu)]
        target_cpu: onebit::codegen::target::TargetCpu,
        /// Passes to run before compiling.
        #[arg(long, default_value = "default")]
        passes: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Where the parameters come from.
#[derive(clap::Args)]
struct WeightsArgs {
    /// The weights (safetensors); default: freshly initialised from --seed
    /// (the passes then fold placeholder values, but the structure is the same).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed of the initialisation when no weights are given [default: 0;
    /// `compile` requires --weights or an explicit --seed].
    #[arg(long, conflicts_with = "weights")]
    seed: Option<u64>,
}

impl WeightsArgs {
    fn load(&self, graph: &Graph) -> Result<Params, Failure> {
        match &self.weights {
            Some(path) => load_weights(graph, path),
            None => Ok(Params::init(graph, self.seed.unwrap_or(0))),
        }
    }
}

/// Loads and checks a weight file, noting any dtype conversion on stderr.
fn load_weights(graph: &Graph, path: &Path) -> Result<Params, Failure> {
    let (params, notes) = weights::load_with_notes(graph, path)?;
    for line in notes.render(path) {
        eprintln!("{line}");
    }
    Ok(params)
}

/// Runs the passes `selection` names, calling `after` after each.
fn optimize(
    graph: &mut Graph,
    params: &mut Params,
    selection: &str,
    top_k: usize,
    after: impl FnMut(&str, &Graph),
) -> Result<PassReport, Failure> {
    let selection =
        PassSelection::parse(selection).map_err(|e| Failure(format!("error: --passes: {e}")))?;
    let options = PassOptions {
        top_k,
        ..PassOptions::default()
    };
    passes::optimize(graph, params, &selection, &options, after)
        .map_err(|e| Failure(format!("error: {e}")))
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// Cranelift IR text.
    Clif,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// The textual IR (parses back to the same graph).
    Text,
    /// JSON for tools.
    Json,
    /// Graphviz DOT.
    Dot,
}

#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// The reference interpreter (plain Rust; the oracle).
    Interp,
    /// Native code compiled by Cranelift.
    Jit,
}

/// A failure with a message for the user; the exit status is 1.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(format!("error: {e}"))
    }
}

fn main() -> ExitCode {
    // A panic is a bug in onebit; say so plainly instead of a Rust backtrace note.
    std::panic::set_hook(Box::new(|info| {
        // `println!` panics when stdout is a closed pipe (`onebit … | head`);
        // the reader has what it wanted, so end quietly, with the status a
        // process killed by SIGPIPE has.
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("os error 32") {
            std::process::exit(141);
        }
        eprintln!(
            "onebit: internal error: {info}\nThis is a bug in onebit; please report it with the input that caused it."
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    }
}

fn load_model(path: &Path) -> Result<Graph, Failure> {
    load_model_with(path, onebit::text::LowerOptions::default())
}

fn load_model_with(path: &Path, options: onebit::text::LowerOptions) -> Result<Graph, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure(format!("error: cannot read {}: {e}", path.display())))?;
    // A rendered diagnostic starts with its own `error:`.
    onebit::text::parse_with(&path.display().to_string(), &bytes, options)
        .map_err(|e| Failure(e.to_string()))
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Train(args) => train::train(args)?,
        Command::Search(args) => search::search(args)?,
        Command::Eval(args) => train::eval(args)?,
        Command::Check {
            model,
            weights,
            passes,
            limits,
        } => {
            let mut graph = load_model(&model)?;
            check_limits(&graph, 1, &limits)?;
            // Given weights are always loaded and checked against the model.
            let mut params = match (&weights.weights, &passes) {
                (Some(path), _) => Some(load_weights(&graph, path)?),
                (None, Some(_)) => Some(weights.load(&graph)?),
                (None, None) => None,
            };
            match (passes, params.as_mut()) {
                (Some(selection), Some(params)) => {
                    let report = optimize(&mut graph, params, &selection, 1, |_, _| {})?;
                    println!("{}\n", Summary::new(&graph));
                    println!("{report}");
                }
                _ => println!("{}", Summary::new(&graph)),
            }
        }
        Command::Ir {
            model,
            format,
            weights,
            passes,
            print_after,
            top_k,
            train,
            save_weights,
            partial_channels,
            limits,
        } => {
            let mut outputs = Outputs::reading(
                std::iter::once((model.as_path(), "model"))
                    .chain(weights.weights.as_deref().map(|w| (w, "weights"))),
            );
            if let Some(path) = &save_weights {
                outputs.claim(path, "--save-weights")?;
            }
            let lowering = onebit::text::LowerOptions { partial_channels };
            let mut graph = load_model_with(&model, lowering)?;
            check_limits(&graph, 1, &limits)?;
            if train {
                graph = onebit::passes::differentiate::differentiate(&graph, &Default::default())
                    .map_err(|e| Failure(format!("error: {e}")))?
                    .graph;
            }
            let show = |graph: &Graph| match format {
                Format::Text => onebit::text::print(graph),
                Format::Json => json::to_json(graph) + "\n",
                Format::Dot => dot::to_dot(graph),
            };
            if let Some(pass) = &print_after
                && pass != "all"
                && passes::pass(pass).is_none()
            {
                return Err(Failure(format!(
                    "error: --print-after: there is no pass `{pass}`"
                )));
            }
            let mut params = None;
            if passes != "none"
                || print_after.is_some()
                || save_weights.is_some()
                || weights.weights.is_some()
            {
                let mut p = weights.load(&graph)?;
                optimize(&mut graph, &mut p, &passes, top_k, |name, g| {
                    if print_after
                        .as_deref()
                        .is_some_and(|p| p == "all" || p == name)
                    {
                        print!("# after {name}\n{}", show(g));
                    }
                })?;
                params = Some(p);
            }
            if print_after.is_none() {
                print!("{}", show(&graph));
            }
            if let (Some(path), Some(params)) = (&save_weights, params) {
                let bytes = weights::encode_for(&graph, &params)
                    .map_err(|e| Failure(format!("error: cannot write {}: {e}", path.display())))?;
                outputs.write(path, &bytes)?;
                outputs.commit()?;
            }
        }
        Command::Init {
            model,
            output,
            seed,
            limits,
        } => {
            let mut outputs = Outputs::reading([(model.as_path(), "model")]);
            outputs.claim(&output, "-o")?;
            let graph = load_model(&model)?;
            check_limits(&graph, 1, &limits)?;
            let params = Params::init(&graph, seed);
            let bytes = weights::encode(&params, &graph.name)
                .map_err(|e| Failure(format!("error: cannot write {}: {e}", output.display())))?;
            outputs.write(&output, &bytes)?;
            outputs.commit()?;
            let count: usize = params.tensors.values().map(|t| t.data.len()).sum();
            eprintln!(
                "wrote {} parameters in {} tensors to {}",
                count,
                params.tensors.len(),
                output.display()
            );
        }
        Command::Run {
            model,
            weights: weights_path,
            seed,
            input,
            output,
            labels,
            engine,
            passes,
            threads,
            kernels,
            limits,
        } => {
            let mut outputs = Outputs::reading(
                std::iter::once((model.as_path(), "model"))
                    .chain(weights_path.as_deref().map(|w| (w, "weights")))
                    .chain(input.iter().map(|i| (i.as_path(), "--input")))
                    .chain(labels.as_deref().map(|l| (l, "--labels"))),
            );
            for path in &output {
                outputs.claim(path, "-o")?;
            }
            let mut graph = load_model(&model)?;
            check_limits(&graph, 1, &limits)?;
            if input.len() != graph.inputs().len() {
                return Err(Failure(format!(
                    "error: model `{}` has {}, but {} --input file{} given",
                    graph.name,
                    count(graph.inputs().len(), "input"),
                    input.len(),
                    if input.len() == 1 { " was" } else { "s were" },
                )));
            }
            if !output.is_empty() && output.len() != graph.outputs().len() {
                return Err(Failure(format!(
                    "error: model `{}` has {}, but {} -o file{} given",
                    graph.name,
                    count(graph.outputs().len(), "output"),
                    output.len(),
                    if output.len() == 1 { " was" } else { "s were" },
                )));
            }
            let mut params = match (weights_path, seed) {
                (Some(path), _) => load_weights(&graph, &path)?,
                (None, Some(seed)) => Params::init(&graph, seed),
                (None, None) => {
                    return Err(Failure("error: give --weights FILE or --seed N".into()));
                }
            };
            let mut tensors = Vec::new();
            for (path, &id) in input.iter().zip(graph.inputs()) {
                let a = npy::read_file(path)?;
                let dims = graph.node(id).ty.dims();
                if a.shape.len() != dims.len() + 1 || a.shape[1..] != *dims {
                    return Err(Failure(format!(
                        "error: {}: input `{}` must be [N, {}], found {:?}",
                        path.display(),
                        graph.node(id).name,
                        dims.iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        a.shape
                    )));
                }
                tensors.push(Tensor {
                    shape: a.shape,
                    data: a.data,
                });
            }
            let batch = tensors.first().map_or(0, |t| t.shape[0]);
            check_limits(&graph, batch.max(1), &limits)?;
            let labels = match &labels {
                Some(path) => {
                    let first = graph.outputs()[0];
                    Some(read_labels(
                        path,
                        batch,
                        graph.node(first).ty.shape.elements(),
                    )?)
                }
                None => None,
            };
            let selection = passes.unwrap_or_else(|| match engine {
                Engine::Jit => "default".into(),
                Engine::Interp => "none".into(),
            });
            optimize(&mut graph, &mut params, &selection, 1, |_, _| {})?;
            let results = match engine {
                Engine::Interp => interp::run(&graph, &params, &tensors)
                    .map_err(|e| Failure(format!("error: {e}")))?,
                Engine::Jit => engine::run_jit(&graph, &params, &tensors, threads, kernels)?,
            };
            if let Some(labels) = labels {
                report_accuracy(&labels, &results[0])?;
            }
            if output.is_empty() {
                for (&id, t) in graph.outputs().iter().zip(&results) {
                    print_tensor(&graph.node(id).name, t);
                }
            }
            for (path, t) in output.iter().zip(&results) {
                outputs.write(path, &npy::write(&t.shape, &t.data))?;
            }
            outputs.commit()?;
        }
        Command::Bench {
            model,
            weights,
            threads,
            batch,
            no_interp,
            kernels,
            passes,
            limits,
        } => {
            let mut graph = load_model(&model)?;
            check_limits(&graph, batch, &limits)?;
            let mut params = weights.load(&graph)?;
            optimize(&mut graph, &mut params, &passes, 1, |_, _| {})?;
            engine::bench(&graph, &params, threads, batch, !no_interp, kernels)?;
        }
        Command::Compile {
            model,
            weights,
            output,
            header,
            emit,
            kernels,
            target_cpu,
            passes,
            limits,
        } => {
            let mut outputs = Outputs::reading(
                std::iter::once((model.as_path(), "model"))
                    .chain(weights.weights.as_deref().map(|w| (w, "weights"))),
            );
            if let Some(path) = &output {
                outputs.claim(path, "-o")?;
            }
            if let Some(path) = &header {
                outputs.claim(path, "--header")?;
            }
            if output.is_none() && emit.is_none() {
                return Err(Failure("error: give -o FILE.o (or --emit clif)".into()));
            }
            if weights.weights.is_none() && weights.seed.is_none() {
                return Err(Failure(
                    "error: compile embeds the weights in the object: give --weights FILE, or --seed N for freshly initialised ones".into(),
                ));
            }
            let mut graph = load_model(&model)?;
            check_limits(&graph, 1, &limits)?;
            let mut params = weights.load(&graph)?;
            optimize(&mut graph, &mut params, &passes, 1, |_, _| {})?;
            let (object, header_text) =
                engine::compile(&graph, &params, emit.is_some(), kernels, target_cpu)?;
            if let Some(path) = &output {
                outputs.write(path, &object)?;
            }
            if let Some(path) = &header {
                outputs.write(path, header_text.as_bytes())?;
            }
            outputs.commit()?;
        }
    }
    Ok(())
}

/// Refuses a model that needs more than the limits allow for `batch`.
fn check_limits(graph: &Graph, batch: usize, limits: &LimitArgs) -> Result<(), Failure> {
    onebit::ir::limits::check(graph, batch, &limits.limits())
        .map(|_| ())
        .map_err(|e| Failure(format!("error: {e}")))
}

/// `3 inputs`, `1 output`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The index of the largest value of each row of a [N, K] tensor.
fn argmax_rows(t: &Tensor) -> Vec<usize> {
    let k = t.shape.iter().skip(1).product::<usize>().max(1);
    t.data
        .chunks(k)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
        })
        .collect()
}

/// Reads a labels file: shape `[N]` for a batch of `N`, one whole-number
/// class per sample, each at least 0.
fn read_labels(path: &Path, batch: usize, classes: usize) -> Result<Vec<usize>, Failure> {
    let labels = npy::read_file(path)?;
    let bad = |why: String| Failure(format!("error: {}: {why}", path.display()));
    if labels.shape.len() != 1 {
        return Err(bad(format!(
            "labels must be shaped [N], one class per sample, found {:?}",
            labels.shape
        )));
    }
    if labels.data.len() != batch {
        return Err(bad(format!(
            "holds {} labels, but the batch has {batch} samples",
            labels.data.len()
        )));
    }
    labels
        .data
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l.is_finite() && l >= 0.0 && l.fract() == 0.0 && (l as f64) < classes as f64 {
                Ok(l as usize)
            } else {
                Err(bad(format!(
                    "label {i} is {l}; labels are whole-number classes from 0 to {} (the first output has {classes} values per sample)",
                    classes.saturating_sub(1)
                )))
            }
        })
        .collect()
}

fn report_accuracy(labels: &[usize], output: &Tensor) -> Result<(), Failure> {
    let n = output.shape.first().copied().unwrap_or(0);
    let predicted = argmax_rows(output);
    let correct = predicted
        .iter()
        .zip(labels)
        .filter(|&(&p, &l)| p == l)
        .count();
    println!(
        "accuracy: {correct}/{n} = {:.2}%",
        100.0 * correct as f64 / n.max(1) as f64
    );
    Ok(())
}

fn print_tensor(name: &str, t: &Tensor) {
    const ROWS: usize = 8;
    println!("{name}: {:?}", t.shape);
    let n = t.shape.first().copied().unwrap_or(0);
    let k = t.shape.iter().skip(1).product::<usize>();
    for (i, row) in t.data.chunks(k.max(1)).take(ROWS).enumerate() {
        let shown: Vec<String> = row.iter().take(10).map(|v| format!("{v:.4}")).collect();
        let more = if row.len() > 10 { ", ..." } else { "" };
        println!("  [{i}] [{}{more}]", shown.join(", "));
    }
    if n > ROWS {
        println!("  ... {} more", n - ROWS);
    }
    if t.shape.len() == 2 && n > 0 {
        let classes: Vec<String> = argmax_rows(t)
            .iter()
            .take(32)
            .map(usize::to_string)
            .collect();
        println!(
            "  argmax: {}{}",
            classes.join(" "),
            if n > 32 { " ..." } else { "" }
        );
    }
}
