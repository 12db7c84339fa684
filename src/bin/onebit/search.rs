//! `onebit search`: architecture search over a supernet written in the model
//! language, ending with the chosen architecture as a plain `.bnn` file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use onebit::ir::Params;
use onebit::nas::child_parent::ChildParentConfig;
use onebit::nas::genotype::{Genotype, discretize};
use onebit::nas::plot::plot_alphas;
use onebit::nas::reduction::ReductionConfig;
use onebit::nas::search::{EpochRecord, Mode, Search, SearchConfig, record_json, softmax_alive};
use onebit::nas::space::SearchSpace;
use onebit::text::LowerOptions;
use onebit::train::checkpoint;
use onebit::train::schedule::{LrSchedule, Schedule};
use onebit::train::trainer::StepRunner;

use super::Failure;
use super::output::Outputs;
use super::train::{DataArgs, StepEngineArg, load_data, optimizer_config};

/// `--mode`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// First-order DARTS (PC-DARTS edge normalisation where the space has
    /// searched nodes).
    Darts,
    /// DARTS with BNAS's operation-space reduction.
    Bnas,
    /// DARTS with CP-NAS's child-parent reduction: a full-precision parent
    /// beside the binarized supernet.
    CpNas,
    /// No search: a uniformly random architecture of the space (seeded by
    /// --seed), the baseline a search must beat.
    Random,
}

/// `onebit search`.
#[derive(clap::Args)]
pub struct SearchArgs {
    /// The search space (.bnn with `choose`).
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the chosen architecture (.bnn).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Which search.
    #[arg(long, value_enum, default_value_t = ModeArg::Darts)]
    pub mode: ModeArg,
    /// Epochs.
    #[arg(long, default_value_t = 20, value_parser = super::args::positive)]
    pub epochs: usize,
    /// Batch size (weight and architecture batches alike).
    #[arg(long, default_value_t = 64, value_parser = super::args::positive)]
    pub batch: usize,
    /// The weights' learning rate [default: 1e-3 for adam, 0.01 for sgd and bop].
    #[arg(long)]
    pub lr: Option<f32>,
    /// The weights' optimizer: `adam`, `sgd` or `bop`.
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Bop's γ.
    #[arg(long, default_value_t = 1e-4)]
    pub bop_gamma: f32,
    /// Bop's τ.
    #[arg(long, default_value_t = 1e-8)]
    pub bop_tau: f32,
    /// Weight decay of the weights.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// The weights' schedule: `constant`, `step:EVERY:GAMMA`, `exp:GAMMA`, `cosine`.
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.0)]
    pub smoothing: f32,
    /// The architecture optimizer's (Adam, betas (0.5, 0.999)) learning rate.
    #[arg(long, default_value_t = 6e-4)]
    pub arch_lr: f32,
    /// The architecture optimizer's weight decay.
    #[arg(long, default_value_t = 1e-3)]
    pub arch_weight_decay: f32,
    /// The fraction of the epochs that trains only the weights.
    #[arg(long, default_value_t = 0.3)]
    pub warmup_fraction: f32,
    /// BNAS: epochs between reduction rounds, after the warm-up.
    #[arg(long, default_value_t = 1, value_parser = super::args::positive)]
    pub reduce_every: usize,
    /// BNAS: sampling rounds (T) per reduction.
    #[arg(long, default_value_t = 1, value_parser = super::args::positive)]
    pub rounds: usize,
    /// BNAS and CP-NAS: weight batches of fine-tuning per sampled network.
    #[arg(long, default_value_t = 4)]
    pub finetune_batches: usize,
    /// CP-NAS: β_P of the indicator z = A_C + β_P·(A_P − A_C); negative
    /// penalises the child's shortfall against its full-precision parent.
    #[arg(long, default_value_t = -1.0, allow_hyphen_values = true)]
    pub gap_weight: f32,
    /// CP-NAS: λ of the child-parent kernel loss pulling the binarized
    /// kernels towards the parent's (0: none).
    #[arg(long, default_value_t = 1e-3)]
    pub kernel_loss: f32,
    /// PC-DARTS's partial channels: the ratio K of every cell declared
    /// `partial(x, c, K)`, in place of the K it declares (1: search at full
    /// width). The chosen architecture is always derived at full width.
    #[arg(long, value_parser = super::args::positive)]
    pub partial_channels: Option<usize>,
    /// The fraction of the training data the search uses (a stratified
    /// subset, seeded by --seed), split 50/50 into weights and architecture.
    #[arg(long, default_value_t = 1.0, value_parser = fraction)]
    pub search_fraction: f32,
    /// Seed of the initialisation, the split, the batch order and sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads.
    #[arg(long, default_value_t = 2, value_parser = super::args::threads)]
    pub threads: usize,
    /// What runs the step.
    #[arg(long, value_enum, default_value_t = StepEngineArg::Engine)]
    pub step: StepEngineArg,
    /// Continue from this checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The checkpoint written after every epoch [default: OUTPUT.ckpt].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Stop after this many epochs in all (a checkpoint is written; resume
    /// with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// α and β per epoch: `.csv` (epoch, choose, alternative, op, alpha,
    /// softmax) or `.jsonl` (one record per epoch).
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// softmax(α) per edge over the epochs (PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the chosen model's parameters as inherited from the
    /// supernet (safetensors), e.g. to fine-tune rather than retrain.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub limits: super::args::LimitArgs,
}

/// A fraction in (0, 1].
fn fraction(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("expected a fraction in (0, 1], found `{text}`")),
    }
}

/// `onebit search`.
pub fn search(args: SearchArgs) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure(format!("error: {e}"));
    let mode = match args.mode {
        ModeArg::Darts => Mode::Darts,
        ModeArg::Bnas => Mode::Bnas,
        ModeArg::CpNas => Mode::CpNas,
        ModeArg::Random => Mode::Darts,
    };
    let checkpoint_path = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ckpt", args.output.display())));
    let data_files: Vec<&Path> = [
        Some(Path::new(&args.data.data)),
        args.data.labels.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|p| p.exists())
    .collect();
    let mut outputs = Outputs::reading(
        std::iter::once((args.model.as_path(), "model"))
            .chain(args.resume.as_deref().map(|p| (p, "checkpoint")))
            .chain(data_files.into_iter().map(|p| (p, "data"))),
    );
    outputs.claim(&args.output, "-o")?;
    if args.mode != ModeArg::Random {
        if args.resume.as_deref() != Some(checkpoint_path.as_path()) {
            outputs.claim(&checkpoint_path, "--checkpoint")?;
        }
        for (path, what) in [
            (&args.log, "--log"),
            (&args.plot, "--plot"),
            (&args.weights, "--weights"),
        ] {
            if let Some(path) = path {
                outputs.claim(path, what)?;
            }
        }
    }
    if let Some(path) = &args.log {
        let name = path.to_string_lossy();
        if !(name.ends_with(".csv") || name.ends_with(".jsonl")) {
            return Err(Failure(format!(
                "error: --log {}: the log must end in .csv or .jsonl",
                path.display()
            )));
        }
    }
    let lowered =
        |partial_channels| super::load_model_with(&args.model, LowerOptions { partial_channels });
    let model = lowered(args.partial_channels)?;
    super::check_limits(&model, args.batch.saturating_mul(3), &args.limits)?;
    let space = SearchSpace::of(&model).map_err(|e| fail(&e))?;
    let params = Params::init(&model, args.seed);
    // Cells with `partial(x, c, K)`: the search runs on the narrow supernet,
    // the architecture is derived on the full-width one.
    let full_width = lowered(Some(1))?;
    let partial = onebit::text::print(&full_width) != onebit::text::print(&model);

    if args.mode == ModeArg::Random {
        let genotype = Genotype::random(&space, args.seed);
        let init = Params::init(&full_width, args.seed);
        let (chosen, _) = discretize(&full_width, &init, &genotype).map_err(|e| fail(&e))?;
        eprintln!("random architecture (seed {}):", args.seed);
        for line in genotype.lines_with(&onebit::nas::genotype::node_edges(&space)) {
            eprintln!("  {line}");
        }
        outputs.write(&args.output, onebit::text::print(&chosen).as_bytes())?;
        outputs.commit()?;
        eprintln!("wrote {}", args.output.display());
        return Ok(());
    }

    let (mut train_set, _test_set) = load_data(&args.data, &model)?;
    if args.search_fraction < 1.0 {
        // A stratified subset, as PC-DARTS searches ImageNet on 12.5% of it.
        let seed = onebit::train::data::derive_seed(args.seed, 0, 0x5AB5E7);
        let name = format!("{} ({}%)", train_set.name, 100.0 * args.search_fraction);
        (_, train_set) = onebit::train::data::split(&train_set, args.search_fraction, seed);
        train_set.name = name;
    }
    let config = SearchConfig {
        mode,
        epochs: args.epochs,
        batch: args.batch,
        weight_optimizer: optimizer_config(
            &args.optimizer,
            args.lr,
            args.weight_decay,
            args.bop_gamma,
            args.bop_tau,
        )?,
        schedule: LrSchedule {
            schedule: args
                .schedule
                .parse::<Schedule>()
                .map_err(|e| Failure(format!("error: --schedule: {e}")))?,
            warmup: 0,
        }
        .with_total(args.epochs),
        arch_optimizer: match SearchConfig::darts_arch_optimizer() {
            onebit::train::optim::OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                decoupled,
                ..
            } => onebit::train::optim::OptimizerConfig::Adam {
                lr: args.arch_lr,
                beta1,
                beta2,
                eps,
                weight_decay: args.arch_weight_decay,
                decoupled,
            },
            other => other,
        },
        warmup_fraction: args.warmup_fraction,
        smoothing: args.smoothing,
        threads: args.threads,
        runner: match args.step {
            StepEngineArg::Engine => StepRunner::Engine,
            StepEngineArg::Interp => StepRunner::Interpreter,
        },
        seed: args.seed,
        reduction: ReductionConfig {
            every: args.reduce_every,
            rounds: args.rounds,
            finetune_batches: args.finetune_batches,
        },
        child_parent: ChildParentConfig {
            gap_weight: args.gap_weight,
            kernel_loss: args.kernel_loss,
        },
    };
    let mut search = Search::new(&model, params, config).map_err(|e| fail(&e))?;
    if partial {
        search = search
            .derive_on_full_width(full_width)
            .map_err(|e| fail(&e))?;
    }
    if let Some(path) = &args.resume {
        let c = checkpoint::load(path).map_err(|e| fail(&e))?;
        if c.seed != args.seed {
            return Err(Failure(format!(
                "error: {} was written by a search with --seed {}; resume with the same seed",
                path.display(),
                c.seed
            )));
        }
        search
            .restore(&c)
            .map_err(|e| Failure(format!("error: {}: {e}", path.display())))?;
    }
    let (weight_half, arch_half) = search.split(&train_set).map_err(|e| fail(&e))?;
    eprintln!(
        "searching `{}` ({} edges, {} nodes) on {}: {} weight / {} architecture samples, {} epochs ({} weights only), mode {}",
        model.name,
        space.edges.len(),
        space.nodes.len(),
        train_set.name,
        weight_half.len(),
        arch_half.len(),
        args.epochs,
        search.config().warmup_epochs(),
        mode.name()
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let started = Instant::now();
    let stop = args.stop_after.unwrap_or(args.epochs).min(args.epochs);
    while search.epoch < stop {
        let t = Instant::now();
        let record = search
            .run_epoch(&weight_half, &arch_half, |_| {})
            .map_err(|e| fail(&e))?;
        report_epoch(&record, args.epochs, t.elapsed().as_secs_f32());
        checkpoint::save(&checkpoint_path, &search.checkpoint()).map_err(|e| fail(&e))?;
        if interrupted.load(Ordering::SeqCst) && search.epoch < args.epochs {
            return Err(Failure(format!(
                "interrupted after epoch {}: checkpoint written to {}; continue with --resume {}",
                search.epoch,
                checkpoint_path.display(),
                checkpoint_path.display()
            )));
        }
    }
    if search.epoch < args.epochs {
        eprintln!(
            "stopped after epoch {} (--stop-after): checkpoint written to {}; continue with --resume {}",
            search.epoch,
            checkpoint_path.display(),
            checkpoint_path.display()
        );
        return Ok(());
    }
    let (chosen, inherited, genotype) = search.chosen().map_err(|e| fail(&e))?;
    let current = search.space().map_err(|e| fail(&e))?;
    eprintln!(
        "search took {:.1} s; genotype:",
        started.elapsed().as_secs_f32()
    );
    for line in genotype.lines_with(&onebit::nas::genotype::node_edges(&current)) {
        eprintln!("  {line}");
    }
    outputs.write(&args.output, onebit::text::print(&chosen).as_bytes())?;
    if let Some(path) = &args.weights {
        let bytes = onebit::io::weights::encode(&inherited, &chosen.name)
            .map_err(|e| Failure(format!("error: cannot write {}: {e}", path.display())))?;
        outputs.write(path, &bytes)?;
    }
    if let Some(path) = &args.log {
        let bytes = log_bytes(path, &space, &search.history)?;
        outputs.write(path, &bytes)?;
    }
    if let Some(path) = &args.plot {
        let staging = path.with_file_name(format!(
            ".{}.onebit-plot-{}.png",
            path.file_name()
                .map_or_else(|| "plot".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let drawn = plot_alphas(&staging, &space, &search.history).map_err(|e| fail(&e));
        let bytes = std::fs::read(&staging);
        let _ = std::fs::remove_file(&staging);
        drawn?;
        outputs.write(
            path,
            &bytes.map_err(|e| super::output::cannot_write(path, &e))?,
        )?;
    }
    outputs.commit()?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// One progress line per epoch, then the genotype and a summary of what a
/// reduction dropped.
fn report_epoch(r: &EpochRecord, epochs: usize, seconds: f32) {
    let left: Vec<String> = {
        let mut counts = std::collections::BTreeMap::new();
        for &n in &r.ops_left {
            *counts.entry(n).or_insert(0usize) += 1;
        }
        counts
            .iter()
            .rev()
            .map(|(ops, edges)| format!("{edges}×{ops}"))
            .collect()
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "epoch {}/{}  weight loss {:.4}  arch loss {}  val accuracy {:.2}%{}  ops left per edge {}  {:.1} s",
        r.epoch,
        epochs,
        r.weight_loss,
        r.arch_loss
            .map_or_else(|| "-".to_string(), |l| format!("{l:.4}")),
        100.0 * r.val_accuracy,
        r.parent_val_accuracy
            .map_or_else(String::new, |a| format!(" (parent {:.2}%)", 100.0 * a)),
        left.join(" "),
        seconds
    );
    for line in &r.genotype {
        let _ = writeln!(err, "    {line}");
    }
    if !r.dropped.is_empty() {
        // One line: which operations went, how often (the edges are in
        // --log's records).
        let mut counts = std::collections::BTreeMap::new();
        for (_, op) in &r.dropped {
            *counts.entry(op.as_str()).or_insert(0usize) += 1;
        }
        let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = counts.iter().map(|(op, n)| format!("{op} ×{n}")).collect();
        let _ = writeln!(
            err,
            "    dropped from {} edges: {}",
            r.dropped.len(),
            list.join(", ")
        );
    }
}

/// The α/β log: CSV (long form) or JSON lines.
fn log_bytes(
    path: &Path,
    space: &SearchSpace,
    history: &[EpochRecord],
) -> Result<Vec<u8>, Failure> {
    let name = path.to_string_lossy();
    let mut out = String::new();
    if name.ends_with(".jsonl") {
        for r in history {
            out.push_str(&record_json(r).to_string());
            out.push('\n');
        }
    } else if name.ends_with(".csv") {
        out.push_str("epoch,choose,alternative,op,alpha,softmax\n");
        for r in history {
            for (choose, alpha) in &r.alphas {
                let p = softmax_alive(alpha);
                let labels = space.edge(choose).map(|e| &e.ops);
                for (i, (&a, &s)) in alpha.iter().zip(&p).enumerate() {
                    if a.is_nan() {
                        continue;
                    }
                    let op = labels
                        .and_then(|l| l.get(i).cloned())
                        .unwrap_or_else(|| format!("edge{i}"));
                    out.push_str(&format!("{},{choose},{i},{op},{a},{s}\n", r.epoch));
                }
            }
        }
    } else {
        return Err(Failure(format!(
            "error: --log {}: the log must end in .csv or .jsonl",
            path.display()
        )));
    }
    Ok(out.into_bytes())
}
