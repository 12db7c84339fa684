//! `onebit train` and `onebit eval`: the training loop over a data set, and
//! the deployed model's accuracy on the same held-out split.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use onebit::io::weights;
use onebit::ir::{Graph, Params};
use onebit::train::checkpoint::{self, Checkpoint};
use onebit::train::data::{self, Augment, Batches, Dataset, LabelColumn, Normalize, derive_seed};
use onebit::train::metrics::{EpochMetrics, MetricsWriter, Progress, plot_curves, read_history};
use onebit::train::optim::OptimizerConfig;
use onebit::train::schedule::{LrSchedule, Schedule};
use onebit::train::trainer::{
    Evaluation, StepRunner, Trainer, TrainerConfig, evaluate, evaluate_interpreted,
    evaluate_on_engine,
};
use onebit::util::rng::Rng;

use super::Failure;
use super::output::Outputs;

/// The data set of a run, and how it is split and normalised.
#[derive(clap::Args, Clone)]
pub struct DataArgs {
    /// `digits` (embedded, 1,797 8×8 images), `fashion-mnist` (Debian's
    /// dataset-fashion-mnist, or --data-dir), or a file of images: IDX
    /// (raw or gzip) or .npy with --labels, or CSV (label last) [.gz].
    #[arg(long)]
    pub data: String,
    /// The directory holding the Fashion-MNIST files.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The labels file of an IDX or .npy image file.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// The shape of one CSV sample, e.g. `1,28,28` [default: the model's input].
    #[arg(long, value_delimiter = ',')]
    pub sample_shape: Vec<usize>,
    /// The held-out fraction, for data sets without a test set of their own.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f32,
    /// Seed of the stratified train/test split (the same for train and eval).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// Input normalisation: `none`, `digits` (0..16 to −1..1), `mnist`
    /// (0..255 to −1..1), `standardize` (per-channel mean and std of the
    /// training part) or `model` (the input's `normalize(mean=…, std=…)`
    /// clause) [default: `model` when the model declares one, else `digits`
    /// for digits, `mnist` for Fashion-MNIST, `none` for files].
    #[arg(long)]
    pub normalize: Option<String>,
}

/// Loads the data set and splits it: (train, test).
pub(crate) fn load_data(args: &DataArgs, model: &Graph) -> Result<(Dataset, Dataset), Failure> {
    let fail = |e: data::DataError| Failure(format!("error: {e}"));
    let (mut train, mut test, default_norm) = match args.data.as_str() {
        "digits" => {
            let all = data::digits();
            let (train, test) = data::split(&all, args.test_fraction, args.split_seed);
            (train, test, "digits")
        }
        "fashion-mnist" => {
            let (train, test) = data::fashion_mnist(args.data_dir.as_deref()).map_err(fail)?;
            (train, test, "mnist")
        }
        path => {
            let path = Path::new(path);
            let name = path.to_string_lossy();
            let all = if name.ends_with(".csv") || name.ends_with(".csv.gz") {
                let shape = if args.sample_shape.is_empty() {
                    model.node(model.inputs()[0]).ty.dims().to_vec()
                } else {
                    args.sample_shape.clone()
                };
                data::read_csv(path, LabelColumn::Last, &shape).map_err(fail)?
            } else {
                let labels = args.labels.as_deref().ok_or_else(|| {
                    Failure(format!(
                        "error: --data {}: give the labels file with --labels",
                        path.display()
                    ))
                })?;
                if name.ends_with(".npy") {
                    data::load_npy_pair(path, labels).map_err(fail)?
                } else {
                    data::load_idx_pair(path, labels, &name).map_err(fail)?
                }
            };
            let (train, test) = data::split(&all, args.test_fraction, args.split_seed);
            (train, test, "none")
        }
    };
    // The model's declared normalisation comes before the data set's
    // default; `--normalize` overrides both, and says so when it overrides
    // the model's.
    let input = model.node(model.inputs()[0]);
    let declared = model.input_normalization(&input.name);
    if let (Some(cli), Some(n)) = (args.normalize.as_deref(), declared) {
        eprintln!(
            "note: --normalize {cli} overrides the model's `normalize(mean={}, std={})` of input `{}`",
            n.mean, n.std, input.name
        );
    }
    let chosen = match (args.normalize.as_deref(), declared) {
        (None, Some(_)) => "model",
        (cli, _) => cli.unwrap_or(default_norm),
    };
    let normalize = match chosen {
        "model" => {
            let n = declared.ok_or_else(|| {
                Failure(format!(
                    "error: --normalize model: input `{}` of the model declares no `normalize(mean=…, std=…)`",
                    input.name
                ))
            })?;
            let channels = match train.sample_shape.as_slice() {
                [] | [_] => 1,
                [c, ..] => *c,
            };
            Normalize::Standardize {
                mean: vec![n.mean; channels],
                std: vec![n.std; channels],
            }
        }
        "none" => Normalize::None,
        "digits" => Normalize::digits(),
        "mnist" => Normalize::mnist(),
        "standardize" => Normalize::fit(&train),
        other => {
            return Err(Failure(format!(
                "error: --normalize: `{other}` is not one of none, digits, mnist, standardize, model"
            )));
        }
    };
    normalize.apply(&mut train).map_err(fail)?;
    normalize.apply(&mut test).map_err(fail)?;
    // Samples of the same size are taken in C order: 8×8 images feed an
    // `f32[64]` input as a flattened vector.
    if train.sample_len() != input.ty.shape.elements() {
        return Err(Failure(format!(
            "error: the {} samples are {:?}, but model input `{}` is {}",
            train.name, train.sample_shape, input.name, input.ty
        )));
    }
    for set in [&mut train, &mut test] {
        set.sample_shape = input.ty.dims().to_vec();
    }
    Ok((train, test))
}

/// `onebit train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// The model file (.bnn).
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the trained weights (safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Epochs.
    #[arg(long, default_value_t = 30, value_parser = super::args::positive)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64, value_parser = super::args::positive)]
    pub batch: usize,
    /// Learning rate (of the real-valued parameters with Bop) [default:
    /// 1e-3 for adam, 0.01 for sgd and bop].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Optimizer: `adam`, `sgd` (momentum 0.9) or `bop` (with Adam for the
    /// real-valued parameters).
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Bop's adaptivity rate γ (the schedule scales it like a learning rate).
    #[arg(long, default_value_t = 1e-4)]
    pub bop_gamma: f32,
    /// Bop's threshold τ.
    #[arg(long, default_value_t = 1e-8)]
    pub bop_tau: f32,
    /// Weight decay of the real-valued parameters.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Learning-rate schedule: `constant`, `step:EVERY:GAMMA`, `exp:GAMMA`,
    /// `cosine` or `cosine:MIN_FACTOR` (per epoch).
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Warm-up epochs.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.0)]
    pub smoothing: f32,
    /// Add the weight quantization loss λ·Σ‖W − α·sign(W)‖² over the layers
    /// with binary weights, with this weight λ (Zheng et al. 2019).
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub quantization_loss: f32,
    /// Add PCNN's projection loss (λ/2)·Σ‖α·sign(P∘W) − P∘W‖² over the
    /// layers with `projection=true`, with this weight λ (Gu et al. 2019).
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub projection_loss: f32,
    /// Add the distribution loss on every sign's input (Ding et al. 2019),
    /// with this weight.
    #[arg(long, default_value_t = 0.0, value_name = "W")]
    pub distribution_loss: f32,
    /// Random-crop padding for image data (0: none).
    #[arg(long, default_value_t = 0)]
    pub crop: usize,
    /// Random horizontal flips.
    #[arg(long)]
    pub flip: bool,
    /// Seed of the initialisation, the batch order and the augmentation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads.
    #[arg(long, default_value_t = 2, value_parser = super::args::threads)]
    pub threads: usize,
    /// What runs the training step: the compiled `engine`, or the reference
    /// `interp`reter (slow; the oracle).
    #[arg(long, value_enum, default_value_t = StepEngineArg::Engine)]
    pub step: StepEngineArg,
    /// Start from these weights instead of a fresh initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub limits: super::args::LimitArgs,
    /// Continue from this checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// The checkpoint written after every epoch [default: OUTPUT.ckpt].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Per-epoch metrics: `.csv` or `.jsonl`.
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Loss and accuracy curves (PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `--step`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StepEngineArg {
    /// The compiled training step.
    Engine,
    /// The reference interpreter.
    Interp,
}

fn optimizer(args: &TrainArgs) -> Result<OptimizerConfig, Failure> {
    optimizer_config(
        &args.optimizer,
        args.lr,
        args.weight_decay,
        args.bop_gamma,
        args.bop_tau,
    )
}

/// The optimizer `--optimizer NAME --lr … --weight-decay … --bop-gamma …
/// --bop-tau …` asks for (also `onebit search`'s weight optimizer).
pub(crate) fn optimizer_config(
    name: &str,
    lr: Option<f32>,
    weight_decay: f32,
    bop_gamma: f32,
    bop_tau: f32,
) -> Result<OptimizerConfig, Failure> {
    let adam = |lr: f32| match OptimizerConfig::adam() {
        OptimizerConfig::Adam {
            beta1,
            beta2,
            eps,
            decoupled,
            ..
        } => OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            decoupled,
        },
        other => other,
    };
    Ok(match name {
        "adam" => adam(lr.unwrap_or(1e-3)),
        "sgd" => OptimizerConfig::Sgd {
            lr: lr.unwrap_or(0.01),
            momentum: 0.9,
            nesterov: false,
            weight_decay,
        },
        "bop" => OptimizerConfig::Bop {
            gamma: bop_gamma,
            tau: bop_tau,
            real: Box::new(adam(lr.unwrap_or(0.01))),
        },
        other => {
            return Err(Failure(format!(
                "error: --optimizer: `{other}` is not one of adam, sgd, bop"
            )));
        }
    })
}

/// `onebit train`: trains, checkpoints every epoch, writes the weights and
/// ends with the test accuracy of the JIT-compiled model.
pub fn train(args: TrainArgs) -> Result<(), Failure> {
    let checkpoint_path = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ckpt", args.output.display())));
    // Outputs never replace an input or each other; the weights and the
    // plot are staged and renamed into place when training has succeeded.
    // (The checkpoint may be the file resumed from: it is rewritten
    // atomically after every epoch.)
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
            .chain(args.init.as_deref().map(|p| (p, "weights")))
            .chain(data_files.into_iter().map(|p| (p, "data"))),
    );
    outputs.claim(&args.output, "-o")?;
    if let Some(resume) = &args.resume {
        let mut resumed = Outputs::reading([(resume.as_path(), "checkpoint")]);
        resumed.claim(&args.output, "-o")?;
    }
    outputs.claim(&checkpoint_path, "--checkpoint")?;
    for (path, what) in [(&args.metrics, "--metrics"), (&args.plot, "--plot")] {
        if let Some(path) = path {
            outputs.claim(path, what)?;
        }
    }
    let model = super::load_model(&args.model)?;
    // The training graph holds about three values per model value (forward,
    // gradient, saved activations): check the model at three times the batch.
    super::check_limits(&model, args.batch.saturating_mul(3), &args.limits)?;
    let (train_set, test_set) = load_data(&args.data, &model)?;
    let schedule = LrSchedule {
        schedule: args
            .schedule
            .parse::<Schedule>()
            .map_err(|e| Failure(format!("error: --schedule: {e}")))?,
        warmup: args.warmup,
    }
    .with_total(args.epochs);
    let config = TrainerConfig {
        runner: match args.step {
            StepEngineArg::Engine => StepRunner::Engine,
            StepEngineArg::Interp => StepRunner::Interpreter,
        },
        optimizer: optimizer(&args)?,
        smoothing: args.smoothing,
        quantization_loss: args.quantization_loss,
        projection_loss: args.projection_loss,
        distribution_loss: args.distribution_loss,
        clip_latent: true,
        threads: args.threads.max(1),
    };
    let fail = |e: &dyn std::fmt::Display| Failure(format!("error: {e}"));
    let mut params = match &args.init {
        Some(path) => weights::load(&model, path)?,
        None => Params::init(&model, args.seed),
    };
    let (mut start_epoch, mut start_batch) = (0, 0);
    let resumed = match &args.resume {
        Some(path) => {
            let c = checkpoint::load(path).map_err(|e| fail(&e))?;
            if c.seed != args.seed {
                return Err(Failure(format!(
                    "error: {} was written by a run with --seed {}; resume with the same seed (the batch order depends on it)",
                    path.display(),
                    c.seed
                )));
            }
            params = c.params.clone();
            (start_epoch, start_batch) = (c.epoch, c.batch);
            Some(c)
        }
        None => None,
    };
    let mut trainer = Trainer::new(&model, params, &config)
        .map_err(|e| Failure(format!("error: {}: {e}", args.model.display())))?;
    if let Some(c) = &resumed {
        trainer
            .optimizer_mut()
            .load_state(c.optim.clone(), &c.optim_steps, c.step)
            .map_err(|e| fail(&e))?;
    }
    let mut writer = match &args.metrics {
        Some(path) => Some(MetricsWriter::open(path).map_err(|e| fail(&e))?),
        None => None,
    };
    let augment = Augment {
        crop_pad: args.crop,
        flip: args.flip,
    };
    let batches_per_epoch = train_set.len().div_ceil(args.batch);
    let mut progress = Progress::new(args.epochs, batches_per_epoch);
    progress.note(&format!(
        "training `{}` on {} ({} train / {} test samples), {} epochs of {} batches",
        model.name,
        train_set.name,
        train_set.len(),
        test_set.len(),
        args.epochs,
        batches_per_epoch
    ));
    // Ctrl-C finishes the batch under way, writes a checkpoint and stops.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        if ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).is_err() {
            progress
                .note("note: Ctrl-C cannot be caught here; checkpoints are written per epoch only");
        }
    }
    let mut history = match (&args.resume, &args.metrics) {
        (Some(_), Some(path)) if path.exists() => read_history(path)
            .map_err(|e| fail(&e))?
            .into_iter()
            .filter(|m| m.epoch <= start_epoch)
            .collect(),
        _ => Vec::new(),
    };
    let save_checkpoint = |trainer: &Trainer, epoch: usize, batch: usize| {
        let c = Checkpoint {
            params: trainer.params().clone(),
            optim: trainer.optimizer().state(),
            optim_steps: trainer.optimizer().param_steps(),
            epoch,
            batch,
            step: trainer.optimizer().step_count(),
            seed: args.seed,
            rng_state: 0,
            extra: [("model".to_string(), args.model.display().to_string())].into(),
        };
        checkpoint::save(&checkpoint_path, &c).map_err(|e| fail(&e))
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut last: Option<Evaluation> = None;
    for epoch in start_epoch..args.epochs {
        progress.start_epoch(epoch);
        let started = Instant::now();
        let lr_scale = schedule.factor(epoch);
        let batches = Batches::new(train_set.len(), args.batch, args.seed, epoch);
        // A run resumed in the middle of an epoch skips the batches done.
        let skip = if epoch == start_epoch { start_batch } else { 0 };
        for (b, indices) in batches.iter().enumerate().skip(skip) {
            data::fill(&train_set, indices, &mut x, &mut y);
            let mut rng = Rng::new(derive_seed(args.seed, epoch as u64, 1 + b as u64));
            augment.apply(&mut x, &train_set.sample_shape, &mut rng);
            let m = trainer.step(&x, &y, lr_scale).map_err(|e| fail(&e))?;
            progress.batch_done(m.loss, m.correct, m.count);
            if interrupted.load(Ordering::SeqCst) {
                save_checkpoint(&trainer, epoch, b + 1)?;
                return Err(Failure(format!(
                    "interrupted in epoch {} after batch {}: checkpoint written to {}; continue with --resume {}",
                    epoch + 1,
                    b + 1,
                    checkpoint_path.display(),
                    checkpoint_path.display()
                )));
            }
        }
        let train_seconds = started.elapsed().as_secs_f32();
        // The last epoch is measured as deployed (passes + JIT); the others
        // on the step engine, which skips the compile and runs the model's
        // real-valued layers at GEMM speed.
        let eval = if epoch + 1 == args.epochs {
            evaluate(&model, trainer.params(), &test_set, 256, args.threads)
        } else {
            evaluate_on_engine(&model, trainer.params(), &test_set, 256, args.threads)
        }
        .map_err(|e| fail(&e))?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: progress.epoch_loss(),
            train_accuracy: progress.epoch_accuracy(),
            test_loss: None,
            test_accuracy: Some(eval.accuracy() as f32),
            lr: base_lr(&config.optimizer) * lr_scale,
            seconds: started.elapsed().as_secs_f32(),
            samples_per_second: progress.epoch_samples() as f32 / train_seconds.max(1e-9),
        };
        progress.finish_epoch(&metrics);
        if let Some(w) = &mut writer {
            w.write(&metrics).map_err(|e| fail(&e))?;
        }
        history.push(metrics);
        last = Some(eval);
        save_checkpoint(&trainer, epoch + 1, 0)?;
    }
    let bytes = weights::encode(trainer.params(), &model.name).map_err(|e| {
        Failure(format!(
            "error: cannot write {}: {e}",
            args.output.display()
        ))
    })?;
    outputs.write(&args.output, &bytes)?;
    if let Some(path) = &args.plot {
        // The plot is drawn beside its destination, then staged like the weights.
        let staging = path.with_file_name(format!(
            ".{}.onebit-plot-{}.png",
            path.file_name()
                .map_or_else(|| "plot".into(), |n| n.to_string_lossy()),
            std::process::id()
        ));
        let drawn = plot_curves(&staging, &history).map_err(|e| fail(&e));
        let bytes = std::fs::read(&staging);
        let _ = std::fs::remove_file(&staging);
        drawn?;
        outputs.write(
            path,
            &bytes.map_err(|e| super::output::cannot_write(path, &e))?,
        )?;
    }
    outputs.commit()?;
    let eval = match last {
        Some(e) => e,
        None => evaluate(&model, trainer.params(), &test_set, 256, args.threads)
            .map_err(|e| fail(&e))?,
    };
    eprintln!("wrote {}", args.output.display());
    println!(
        "test accuracy {:.2}% ({}/{})",
        100.0 * eval.accuracy(),
        eval.correct,
        eval.total
    );
    Ok(())
}

pub(crate) fn base_lr(config: &OptimizerConfig) -> f32 {
    match config {
        OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr,
        OptimizerConfig::Bop { real, .. } => base_lr(real),
    }
}

/// Which part of the data `eval` uses.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Split {
    /// The held-out part (what `train` reports).
    Test,
    /// The training part.
    Train,
    /// Both.
    All,
}

/// The engine `eval` runs on.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EvalEngine {
    /// The default passes, then the JIT: the deployed model.
    Jit,
    /// The reference interpreter on the model as written.
    Interp,
}

/// `onebit eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// The model file (.bnn).
    pub model: PathBuf,
    /// The weights (safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Which samples.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    pub split: Split,
    /// The engine.
    #[arg(long, value_enum, default_value_t = EvalEngine::Jit)]
    pub engine: EvalEngine,
    /// Threads.
    #[arg(long, default_value_t = 2, value_parser = super::args::threads)]
    pub threads: usize,
    /// Print one JSON object: accuracy, correct, total, confusion.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub limits: super::args::LimitArgs,
}

/// `onebit eval`: accuracy and confusion matrix.
pub fn eval(args: EvalArgs) -> Result<(), Failure> {
    let model = super::load_model(&args.model)?;
    super::check_limits(&model, 256, &args.limits)?;
    let params = weights::load(&model, &args.weights)?;
    let (train_set, test_set) = load_data(&args.data, &model)?;
    let set = match args.split {
        Split::Test => test_set,
        Split::Train => train_set,
        Split::All => {
            let mut all = train_set;
            all.images.extend_from_slice(&test_set.images);
            all.labels.extend_from_slice(&test_set.labels);
            all
        }
    };
    let e = match args.engine {
        EvalEngine::Jit => evaluate(&model, &params, &set, 256, args.threads),
        EvalEngine::Interp => evaluate_interpreted(&model, &params, &set, 256),
    }
    .map_err(|e| Failure(format!("error: {e}")))?;
    if args.json {
        let value = serde_json::json!({
            "accuracy": e.accuracy(),
            "correct": e.correct,
            "total": e.total,
            "confusion": e.confusion,
        });
        println!("{value}");
        return Ok(());
    }
    println!(
        "accuracy {:.2}% ({}/{}) on {}",
        100.0 * e.accuracy(),
        e.correct,
        e.total,
        match args.split {
            Split::All => format!("all of {}", args.data.data),
            _ => set.name.clone(),
        }
    );
    println!("confusion (rows: label, columns: predicted)");
    for (label, row) in e.confusion.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:5}")).collect();
        println!("{label:>3} {}", cells.join(""));
    }
    Ok(())
}
