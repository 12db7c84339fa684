//! The `onebit` command line.
//!
//! Exit status: 0 on success, 1 for a bad model or bad data, 2 for bad usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[path = "onebit/engine.rs"]
mod engine;
#[path = "onebit/train.rs"]
mod train;

use onebit::io::{npy, weights};
use onebit::ir::{Graph, Params, Tensor, dot, interp, json, summary::Summary};
use onebit::passes::{self, PassOptions, PassReport, PassSelection};

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
        #[arg(long, default_value_t = 1)]
        top_k: usize,
        /// Print the training-step graph (`differentiate`) instead: the
        /// forward pass in training mode, the loss and every gradient.
        #[arg(long, conflicts_with_all = ["passes", "print_after"])]
        train: bool,
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
        /// One .npy file per model input, in declaration order.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// One .npy file per model output, in declaration order.
        #[arg(short, long, num_args = 1..)]
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
        /// Threads for the JIT engine.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Time a model: per-layer and whole-model latency of the JIT, its
    /// compile time, and the interpreter on the same batch.
    Bench {
        /// The model file (.bnn).
        model: PathBuf,
        #[command(flatten)]
        weights: WeightsArgs,
        /// Threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Batch size.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Skip the interpreter (slow on large models).
        #[arg(long)]
        no_interp: bool,
        /// Passes to run before compiling.
        #[arg(long, default_value = "default")]
        passes: String,
    },
    /// Train a model on a data set: the training step is derived by the
    /// `differentiate` pass; the weights, a checkpoint per epoch, metrics and
    /// curves are written; the last line is the test accuracy of the
    /// JIT-compiled model.
    Train(train::TrainArgs),
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
        /// Passes to run before compiling.
        #[arg(long, default_value = "default")]
        passes: String,
    },
}

/// Where the parameters come from.
#[derive(clap::Args)]
struct WeightsArgs {
    /// The weights (safetensors); default: freshly initialised from --seed
    /// (the passes then fold placeholder values, but the structure is the same).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed of the initialisation when no weights are given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl WeightsArgs {
    fn load(&self, graph: &Graph) -> Result<Params, Failure> {
        match &self.weights {
            Some(path) => Ok(weights::load(graph, path)?),
            None => Ok(Params::init(graph, self.seed)),
        }
    }
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
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    // A panic is a bug in onebit; say so plainly instead of a Rust backtrace note.
    std::panic::set_hook(Box::new(|info| {
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
    let bytes = std::fs::read(path)
        .map_err(|e| Failure(format!("error: cannot read {}: {e}", path.display())))?;
    onebit::text::parse(&path.display().to_string(), &bytes).map_err(Failure::from)
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Train(args) => train::train(args)?,
        Command::Eval(args) => train::eval(args)?,
        Command::Check {
            model,
            weights,
            passes,
        } => {
            let mut graph = load_model(&model)?;
            match passes {
                None => println!("{}", Summary::new(&graph)),
                Some(selection) => {
                    let mut params = weights.load(&graph)?;
                    let report = optimize(&mut graph, &mut params, &selection, 1, |_, _| {})?;
                    println!("{}\n", Summary::new(&graph));
                    println!("{report}");
                }
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
        } => {
            let mut graph = load_model(&model)?;
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
            if passes != "none" || print_after.is_some() {
                let mut params = weights.load(&graph)?;
                optimize(&mut graph, &mut params, &passes, top_k, |name, g| {
                    if print_after
                        .as_deref()
                        .is_some_and(|p| p == "all" || p == name)
                    {
                        print!("# after {name}\n{}", show(g));
                    }
                })?;
            }
            if print_after.is_none() {
                print!("{}", show(&graph));
            }
        }
        Command::Init {
            model,
            output,
            seed,
        } => {
            let graph = load_model(&model)?;
            let params = Params::init(&graph, seed);
            weights::save(&params, &graph.name, &output)?;
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
        } => {
            let mut graph = load_model(&model)?;
            let mut params = match (weights_path, seed) {
                (Some(path), _) => weights::load(&graph, &path)?,
                (None, Some(seed)) => Params::init(&graph, seed),
                (None, None) => {
                    return Err(Failure("error: give --weights FILE or --seed N".into()));
                }
            };
            let selection = passes.unwrap_or_else(|| match engine {
                Engine::Jit => "default".into(),
                Engine::Interp => "none".into(),
            });
            optimize(&mut graph, &mut params, &selection, 1, |_, _| {})?;
            if input.len() != graph.inputs().len() {
                return Err(Failure(format!(
                    "error: model `{}` has {} input{}, but {} --input file{} given",
                    graph.name,
                    graph.inputs().len(),
                    if graph.inputs().len() == 1 { "" } else { "s" },
                    input.len(),
                    if input.len() == 1 { " was" } else { "s were" },
                )));
            }
            if !output.is_empty() && output.len() != graph.outputs().len() {
                return Err(Failure(format!(
                    "error: model `{}` has {} outputs, but {} -o files were given",
                    graph.name,
                    graph.outputs().len(),
                    output.len()
                )));
            }
            let mut tensors = Vec::new();
            for path in &input {
                let a = npy::read_file(path)?;
                tensors.push(Tensor {
                    shape: a.shape,
                    data: a.data,
                });
            }
            let results = match engine {
                Engine::Interp => interp::run(&graph, &params, &tensors)
                    .map_err(|e| Failure(format!("error: {e}")))?,
                Engine::Jit => engine::run_jit(&graph, &params, &tensors, threads)?,
            };
            if let Some(path) = labels {
                report_accuracy(&path, &results[0])?;
            }
            if output.is_empty() {
                for (&id, t) in graph.outputs().iter().zip(&results) {
                    print_tensor(&graph.node(id).name, t);
                }
            }
            for (path, t) in output.iter().zip(&results) {
                npy::write_file(path, &t.shape, &t.data)?;
            }
        }
        Command::Bench {
            model,
            weights,
            threads,
            batch,
            no_interp,
            passes,
        } => {
            let mut graph = load_model(&model)?;
            let mut params = weights.load(&graph)?;
            optimize(&mut graph, &mut params, &passes, 1, |_, _| {})?;
            engine::bench(&graph, &params, threads, batch, !no_interp)?;
        }
        Command::Compile {
            model,
            weights,
            output,
            header,
            emit,
            passes,
        } => {
            let mut graph = load_model(&model)?;
            let mut params = weights.load(&graph)?;
            optimize(&mut graph, &mut params, &passes, 1, |_, _| {})?;
            engine::compile(
                &graph,
                &params,
                output.as_deref(),
                header.as_deref(),
                emit.is_some(),
            )?;
        }
    }
    Ok(())
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

fn report_accuracy(path: &Path, output: &Tensor) -> Result<(), Failure> {
    let labels = npy::read_file(path)?;
    let n = output.shape.first().copied().unwrap_or(0);
    if labels.data.len() != n {
        return Err(Failure(format!(
            "error: {} holds {} labels, but the batch has {n} samples",
            path.display(),
            labels.data.len()
        )));
    }
    let predicted = argmax_rows(output);
    let correct = predicted
        .iter()
        .zip(&labels.data)
        .filter(|&(&p, &l)| p as f32 == l)
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
