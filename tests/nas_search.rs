//! Architecture search end to end: a tiny problem whose best operation is
//! known by construction is solved by both searches; a BNAS reduction round
//! drops exactly one operation per edge; a seeded one-thread search is
//! reproducible bit for bit; the chosen model re-parses, verifies, trains
//! with `onebit train` and compiles with the JIT and to an object file; a
//! search stopped and resumed ends where the uninterrupted one does; every
//! shipped search space round-trips; `select_cells`' explicit choices keep,
//! sum or refuse as specified.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use onebit::ir::Params;
use onebit::nas::child_parent::ChildParentConfig;
use onebit::nas::genotype::Genotype;
use onebit::nas::reduction::ReductionConfig;
use onebit::nas::search::{Mode, Search, SearchConfig};
use onebit::nas::space::SearchSpace;
use onebit::train::data::Dataset;
use onebit::train::optim::OptimizerConfig;
use onebit::train::schedule::{LrSchedule, Schedule};
use onebit::train::trainer::StepRunner;
use onebit::util::rng::Rng;

const ONEBIT: &str = env!("CARGO_BIN_EXE_onebit");

fn space_file(name: &str) -> String {
    format!("{}/examples/search/{name}.bnn", env!("CARGO_MANIFEST_DIR"))
}

fn parse(name: &str) -> onebit::ir::Graph {
    onebit::parse(&std::fs::read_to_string(space_file(name)).unwrap()).unwrap()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onebit-nas-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 2×2 images of normal noise in `channels` channels, labelled by the
/// position of channel 0's largest pixel: only the skip operation of
/// `tiny_pick` keeps that information.
fn argmax_images(n: usize, seed: u64, channels: usize) -> Dataset {
    let mut rng = Rng::new(seed);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..n {
        let v: Vec<f32> = (0..4 * channels).map(|_| rng.normal()).collect();
        let best = (0..4).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        images.extend_from_slice(&v);
        labels.push(best as u32);
    }
    Dataset {
        name: "argmax".into(),
        sample_shape: vec![channels, 2, 2],
        images,
        labels,
        classes: 4,
    }
}

fn config(mode: Mode, epochs: usize) -> SearchConfig {
    SearchConfig {
        mode,
        epochs,
        batch: 32,
        weight_optimizer: match OptimizerConfig::adam() {
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
                ..
            } => OptimizerConfig::Adam {
                lr: 0.01,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            },
            other => other,
        },
        schedule: LrSchedule::new(Schedule::Constant).with_total(epochs),
        arch_optimizer: match SearchConfig::darts_arch_optimizer() {
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
                ..
            } => OptimizerConfig::Adam {
                // Large, so that a few steps move α decisively.
                lr: 0.05,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            },
            other => other,
        },
        warmup_fraction: 0.3,
        smoothing: 0.0,
        threads: 1,
        runner: StepRunner::Engine,
        seed: 5,
        reduction: ReductionConfig::default(),
        child_parent: ChildParentConfig::default(),
    }
}

fn run(model: &onebit::ir::Graph, data: &Dataset, config: SearchConfig) -> Search {
    let epochs = config.epochs;
    let mut search = Search::new(model, Params::init(model, 1), config).unwrap();
    let (w, a) = search.split(data).unwrap();
    for _ in 0..epochs {
        search.run_epoch(&w, &a, |_| {}).unwrap();
    }
    search
}

#[test]
fn every_search_picks_the_only_informative_operation() {
    let model = parse("tiny_pick");
    let data = argmax_images(400, 3, 1);
    for mode in [Mode::Darts, Mode::Bnas, Mode::CpNas] {
        let search = run(&model, &data, config(mode, 10));
        // The warm-up's weight steps leave α and β alone (3 of 10 epochs);
        // the architecture steps then move them.
        for record in &search.history[..3] {
            assert!(record.arch_loss.is_none());
            assert!(record.alphas.values().flatten().all(|&a| a == 0.0));
        }
        assert!(search.history[3].arch_loss.is_some());
        let genotype = search.genotype().unwrap();
        for (edge, _, label) in &genotype.ops {
            assert_eq!(
                label, "skip",
                "{mode:?}: {edge} chose {label}; {:#?}",
                search.history
            );
        }
        if mode == Mode::Darts {
            // α of skip rose above every other operation's; at the start
            // all were 0 and the tie-break would pick the max-pool.
            for (edge, _, _) in &genotype.ops {
                let alpha = &search.params.get(&format!("{edge}.alpha")).unwrap().data;
                assert!(
                    alpha[3] > alpha[0] + 0.5
                        && alpha[3] > alpha[1] + 0.5
                        && alpha[3] > alpha[2] + 0.5,
                    "{edge}: α = {alpha:?}"
                );
            }
        }
        let (chosen, _, _) = search.chosen().unwrap();
        assert_eq!(
            onebit::text::print(&chosen).lines().nth(2).unwrap().trim(),
            "n = add(x, x)  # f32[1, 2, 2]"
        );
    }
}

#[test]
fn each_reduction_round_drops_exactly_one_operation_per_edge() {
    for mode in [Mode::Bnas, Mode::CpNas] {
        reduction_rounds_drop_one_operation_per_edge(mode);
    }
}

fn reduction_rounds_drop_one_operation_per_edge(mode: Mode) {
    let model = parse("tiny_cell");
    let data = small_digits();
    let mut c = config(mode, 6);
    c.arch_optimizer = SearchConfig::darts_arch_optimizer();
    c.reduction.finetune_batches = 1;
    let search = run(&model, &data, c);
    // 6 epochs, 1 of warm-up (30% rounded down): reductions after epochs
    // 2 to 5 (every epoch after the warm-up), none after the first.
    let space = SearchSpace::of(&model).unwrap();
    let mut previous: Vec<usize> = space.edges.iter().map(|e| e.ops.len()).collect();
    assert!(previous.iter().all(|&n| n == 5));
    for record in &search.history {
        let expected: Vec<usize> = if record.epoch >= 2 {
            previous
                .iter()
                .map(|&n| if n > 1 { n - 1 } else { 1 })
                .collect()
        } else {
            previous.clone()
        };
        assert_eq!(
            record.ops_left, expected,
            "{mode:?} after epoch {}",
            record.epoch
        );
        // Only CP-NAS trains (and so validates) a full-precision parent.
        assert_eq!(record.parent_val_accuracy.is_some(), mode == Mode::CpNas);
        assert_eq!(
            record.dropped.len(),
            previous.iter().filter(|&&n| n > 1).count() * usize::from(record.epoch >= 2)
        );
        previous = record.ops_left.clone();
    }
    assert!(previous.iter().all(|&n| n == 1), "{mode:?}: {previous:?}");
    // The last operation of every edge is not `zero`: discretisation has one.
    let genotype = search.genotype().unwrap();
    assert!(
        genotype.ops.iter().all(|(_, _, l)| l != "zero"),
        "{genotype:?}"
    );
    // Dropped operations are gone from the graph and the parameters.
    let edge = &search.space().unwrap().edges[0];
    assert_eq!(
        search
            .params
            .get(&format!("{}.alpha", edge.choose))
            .unwrap()
            .data
            .len(),
        1
    );
    search.params.clone().check(&search.graph).unwrap();
    if let Some(parent) = &search.parent {
        // The parent shrank with the child: the same edges, one op each.
        parent.params.clone().check(&parent.graph).unwrap();
        let parent_space = SearchSpace::of(&parent.graph).unwrap();
        assert!(parent_space.edges.iter().all(|e| e.ops.len() == 1));
        assert!(!onebit::nas::parent::has_binarization(&parent.graph));
    }
}

/// 320 of the embedded digits, normalised.
fn small_digits() -> Dataset {
    let mut all = onebit::train::data::digits();
    onebit::train::data::Normalize::digits()
        .apply(&mut all)
        .unwrap();
    let per = all.sample_len();
    all.images.truncate(320 * per);
    all.labels.truncate(320);
    all
}

#[test]
fn a_seeded_one_thread_search_is_reproducible_bit_for_bit() {
    let model = parse("tiny_cell");
    let data = small_digits();
    let mut c = config(Mode::Bnas, 3);
    c.reduction.finetune_batches = 1;
    let a = run(&model, &data, c.clone());
    let b = run(&model, &data, c);
    // (Debug, because NaN marks dropped alternatives and NaN != NaN.)
    assert_eq!(format!("{:?}", a.history), format!("{:?}", b.history));
    let names: Vec<&String> = a.params.tensors.keys().collect();
    assert_eq!(names, b.params.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &a.params.tensors {
        let u = &b.params.tensors[name];
        let same = t
            .data
            .iter()
            .zip(&u.data)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs");
    }
    assert_eq!(
        onebit::text::print(&a.chosen().unwrap().0),
        onebit::text::print(&b.chosen().unwrap().0)
    );
}

#[test]
fn a_random_genotype_discretises_to_a_plain_model() {
    // The shipped space searches on half the channels (PC-DARTS); at full
    // width it has the same edges and nodes.
    let supernet = parse("darts_cell");
    assert!(onebit::text::print(&supernet).contains("shuffle_channels"));
    let source = std::fs::read(space_file("darts_cell")).unwrap();
    let full = onebit::text::LowerOptions {
        partial_channels: Some(1),
    };
    let model = onebit::text::parse_with("darts_cell", &source, full).unwrap();
    let space = SearchSpace::of(&model).unwrap();
    assert_eq!(space, SearchSpace::of(&supernet).unwrap());
    assert_eq!(space.edges.len(), 42);
    assert_eq!(space.nodes.len(), 12);
    for e in &space.edges {
        let skip = if is_reduce(e) { "conv_1x1" } else { "skip" };
        let ops = [
            "zero",
            skip,
            "max_pool_3x3",
            "avg_pool_3x3",
            "sep_conv_3x3",
            "sep_conv_5x5",
            "dil_conv_3x3",
            "dil_conv_5x5",
        ];
        assert_eq!(e.ops, ops, "{}", e.choose);
    }
    let params = Params::init(&model, 1);
    let genotype = Genotype::random(&space, 9);
    let (g, p) = onebit::nas::genotype::discretize(&model, &params, &genotype).unwrap();
    let text = onebit::text::print(&g);
    assert!(!text.contains("= choose {"), "{text}");
    assert!(!text.contains("slice_channels"), "{text}");
    // 2 kept edges per node, 4 nodes per cell, 3 cells: 24 edges, so 12 adds.
    assert_eq!(text.matches(" = add(").count(), 12, "{text}");
    let reparsed = onebit::parse(&text).unwrap();
    reparsed.same_as(&g).unwrap();
    let mut p = p;
    p.check(&reparsed).unwrap();
}

/// `tiny_pick` with partial channels: each edge computes on channel 0 (the
/// informative one) and lets channel 1 bypass it.
const PARTIAL_PICK: &str = "
cell edge(x, c) partial(x, c, 2) {
  return choose { zero(x), maxpool(x, 3, stride=1, pad=1), avgpool(x, 3, stride=1, pad=1), x }
}
model partial_pick {
  input x: f32[2, 2, 2]
  n = choose { edge(x, 2), edge(x, 2) }
  y = dense(flatten(n), 4)
  output y
}
";

#[test]
fn a_partial_channel_search_picks_the_informative_operation_and_derives_at_full_width() {
    let lower = |k| {
        onebit::text::parse_with(
            "partial_pick",
            PARTIAL_PICK.as_bytes(),
            onebit::text::LowerOptions {
                partial_channels: k,
            },
        )
        .unwrap()
    };
    let (narrow, full) = (lower(None), lower(Some(1)));
    // The edge computes on one channel of two; the full-width network has
    // no slice left.
    let narrow_text = onebit::text::print(&narrow);
    assert!(
        narrow_text.contains("n.0.partial_in = slice_channels(x, 0, 1)  # f32[1, 2, 2]"),
        "{narrow_text}"
    );
    assert!(narrow_text.contains("n.0.partial = shuffle_channels(n.0.partial_concat, 2)"));
    assert!(!onebit::text::print(&full).contains("slice_channels"));
    // Both lowerings have the same edges and nodes.
    let (a, b) = (
        SearchSpace::of(&narrow).unwrap(),
        SearchSpace::of(&full).unwrap(),
    );
    assert_eq!((a.edges.len(), a.nodes.len()), (2, 1));
    assert_eq!(a, b);

    let data = argmax_images(400, 3, 2);
    let epochs = 10;
    let mut search = Search::new(
        &narrow,
        Params::init(&narrow, 1),
        config(Mode::Darts, epochs),
    )
    .unwrap()
    .derive_on_full_width(full.clone())
    .unwrap();
    let (w, h) = search.split(&data).unwrap();
    for _ in 0..epochs {
        search.run_epoch(&w, &h, |_| {}).unwrap();
    }
    let genotype = search.genotype().unwrap();
    for (edge, _, label) in &genotype.ops {
        assert_eq!(label, "skip", "{edge} chose {label}; {:#?}", search.history);
    }
    let (chosen, params, _) = search.chosen().unwrap();
    let text = onebit::text::print(&chosen);
    assert_eq!(
        text.lines().nth(2).unwrap().trim(),
        "n = add(x, x)  # f32[2, 2, 2]",
        "{text}"
    );
    let mut params = params;
    params.check(&chosen).unwrap();
    // A full-width graph of another space is refused.
    let other = parse("tiny_cell");
    let refused = Search::new(&narrow, Params::init(&narrow, 1), config(Mode::Darts, 1))
        .unwrap()
        .derive_on_full_width(other);
    assert!(refused.is_err());
}

/// A reduction cell's edge from one of its inputs (stride 2).
fn is_reduce(e: &onebit::nas::space::Edge) -> bool {
    e.node
        .as_ref()
        .is_some_and(|(_, k)| *k < 2 && e.choose.starts_with("cell1."))
}

fn onebit(args: &[&str]) -> Output {
    Command::new(ONEBIT).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn search_args<'a>(space: &'a str, out: &'a str, mode: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "search",
        space,
        "--data",
        "digits",
        "-o",
        out,
        "--epochs",
        "4",
        "--batch",
        "64",
        "--threads",
        "1",
        "--seed",
        "2",
        "--mode",
        mode,
        "--finetune-batches",
        "1",
        "--schedule",
        "constant",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn the_chosen_model_reparses_trains_and_compiles() {
    let dir = scratch("chosen");
    let space = space_file("tiny_cell");
    let out = dir.join("chosen.bnn");
    let (log, plot) = (dir.join("alpha.csv"), dir.join("alpha.png"));
    let stderr = ok(onebit(&search_args(
        &space,
        out.to_str().unwrap(),
        "bnas",
        &[
            "--log",
            log.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    )));
    assert!(stderr.contains("epoch 4/4"), "{stderr}");
    assert!(stderr.contains("ops left per edge"), "{stderr}");
    // A reduction's drops are summarised by operation, one line.
    assert!(stderr.contains("    dropped from 5 edges: "), "{stderr}");
    assert!(stderr.contains("cell0.n1 = "), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("= choose {"), "{text}");
    // The space searches on half the channels; the architecture is full width.
    assert!(!text.contains("slice_channels"), "{text}");
    let printed = |extra: &[&str]| {
        let mut args = vec!["ir", space.as_str()];
        args.extend_from_slice(extra);
        let out = onebit(&args);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(printed(&[]).contains("cell0.n0.0.partial = shuffle_channels("));
    assert!(!printed(&["--partial-channels", "1"]).contains("slice_channels"));
    assert!(
        text.contains("cell0.p0 = batchnorm(cell0.p0.conv2d)  # f32[4, 8, 8]"),
        "{text}"
    );
    let graph = onebit::parse(&text).unwrap();
    onebit::ir::verify::verify(&graph).unwrap();
    assert_eq!(onebit::text::print(&graph), text);
    // The log has a row per alternative left per epoch; the plot is a PNG.
    let csv = std::fs::read_to_string(&log).unwrap();
    assert!(csv.starts_with("epoch,choose,alternative,op,alpha,softmax\n"));
    assert!(csv.lines().any(|l| l.starts_with("4,cell0.n1.2.choose,")));
    assert_eq!(&std::fs::read(&plot).unwrap()[1..4], b"PNG");
    // It trains, and compiles with the JIT and to an object.
    let weights = dir.join("w.safetensors");
    let trained = onebit(&[
        "train",
        out.to_str().unwrap(),
        "--data",
        "digits",
        "-o",
        weights.to_str().unwrap(),
        "--epochs",
        "2",
        "--threads",
        "1",
    ]);
    assert!(trained.status.success(), "{trained:?}");
    let stdout = String::from_utf8_lossy(&trained.stdout);
    assert!(stdout.contains("test accuracy"), "{stdout}");
    let params = onebit::io::weights::load(&graph, &weights).unwrap();
    let compiled = onebit::compile(&text, &params, &onebit::Options::default()).unwrap();
    let x: Vec<f32> = (0..2 * 64).map(|i| (i % 7) as f32 / 3.0 - 1.0).collect();
    assert_eq!(compiled.run(&x, 2).unwrap().len(), 20);
    let object = dir.join("chosen.o");
    ok(onebit(&[
        "compile",
        out.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "-o",
        object.to_str().unwrap(),
    ]));
    assert!(std::fs::metadata(&object).unwrap().len() > 0);
}

#[test]
fn a_resumed_search_ends_where_the_uninterrupted_one_does() {
    for mode in ["bnas", "cp-nas"] {
        resumed_search_ends_where_the_uninterrupted_one_does(mode);
    }
}

fn resumed_search_ends_where_the_uninterrupted_one_does(mode: &str) {
    let dir = scratch(&format!("resume-{mode}"));
    let space = space_file("tiny_cell");
    let whole = dir.join("whole.bnn");
    let whole_log = dir.join("whole.jsonl");
    let whole_err = ok(onebit(&search_args(
        &space,
        whole.to_str().unwrap(),
        mode,
        &["--log", whole_log.to_str().unwrap()],
    )));
    assert!(whole_err.contains(&format!("mode {mode}")), "{whole_err}");
    assert_eq!(
        whole_err.contains("(parent "),
        mode == "cp-nas",
        "{whole_err}"
    );
    let part = dir.join("part.bnn");
    let part_log = dir.join("part.jsonl");
    let ckpt = dir.join("part.ckpt");
    let stopped = ok(onebit(&search_args(
        &space,
        part.to_str().unwrap(),
        mode,
        &["--checkpoint", ckpt.to_str().unwrap(), "--stop-after", "2"],
    )));
    assert!(stopped.contains("stopped after epoch 2"), "{stopped}");
    assert!(!part.exists());
    if mode == "cp-nas" {
        // The parent's state is in the checkpoint; another mode refuses it.
        let other = dir.join("other.bnn");
        let refused = onebit(&search_args(
            &space,
            other.to_str().unwrap(),
            "bnas",
            &["--resume", ckpt.to_str().unwrap()],
        ));
        assert_eq!(refused.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("resume it with --mode cp-nas"),
            "{refused:?}"
        );
    }
    ok(onebit(&search_args(
        &space,
        part.to_str().unwrap(),
        mode,
        &[
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--resume",
            ckpt.to_str().unwrap(),
            "--log",
            part_log.to_str().unwrap(),
        ],
    )));
    assert_eq!(
        std::fs::read_to_string(&whole).unwrap(),
        std::fs::read_to_string(&part).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(&whole_log).unwrap(),
        std::fs::read_to_string(&part_log).unwrap()
    );
    let a = onebit::train::checkpoint::load(&PathBuf::from(format!("{}.ckpt", whole.display())))
        .unwrap();
    let b = onebit::train::checkpoint::load(&ckpt).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.optim, b.optim);
}

#[test]
fn unsupported_and_bad_options_are_clear_errors() {
    let dir = scratch("errors");
    let space = space_file("tiny_pick");
    let out = dir.join("o.bnn");
    let o = out.to_str().unwrap();
    let log = onebit(&[
        "search", &space, "--data", "digits", "-o", o, "--log", "a.txt",
    ]);
    assert!(String::from_utf8_lossy(&log.stderr).contains("must end in .csv or .jsonl"));
    let plain = format!("{}/examples/digits_cnn.bnn", env!("CARGO_MANIFEST_DIR"));
    let none = onebit(&["search", &plain, "--data", "digits", "-o", o]);
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("has no `choose`"),
        "{none:?}"
    );
    assert!(!Path::new(o).exists());
}

#[test]
fn every_search_space_parses_verifies_and_round_trips() {
    let dir = format!("{}/examples/search", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bnn"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for path in files {
        let graph = onebit::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        onebit::ir::verify::verify(&graph).unwrap();
        let printed = onebit::text::print(&graph);
        let again = onebit::parse(&printed).unwrap();
        again.same_as(&graph).unwrap();
        assert_eq!(onebit::text::print(&again), printed, "{}", path.display());
        let space = SearchSpace::of(&graph).unwrap();
        assert!(!space.edges.is_empty(), "{}", path.display());
    }
    // The digits and Fashion-MNIST spaces: 14 edges and 4 nodes per cell.
    let fashion = parse("darts_cell_fashion");
    let space = SearchSpace::of(&fashion).unwrap();
    assert_eq!((space.edges.len(), space.nodes.len()), (5 * 14, 5 * 4));
}

#[test]
fn select_cells_explicit_choices_keep_sum_or_refuse() {
    use onebit::passes::{CellChoice, ChoiceForm, PassOptions, PassSelection, optimize};
    let model = parse("tiny_pick");
    let params = Params::init(&model, 1);
    let run = |choices: Vec<(&str, Vec<usize>, ChoiceForm)>| {
        let (mut g, mut p) = (model.clone(), params.clone());
        let options = PassOptions {
            choices: choices
                .into_iter()
                .map(|(n, keep, form)| (n.to_string(), CellChoice { keep, form }))
                .collect(),
            ..PassOptions::default()
        };
        optimize(
            &mut g,
            &mut p,
            &PassSelection::parse("select_cells").unwrap(),
            &options,
            |_, _| {},
        )
        .map(|_| (onebit::text::print(&g), p))
    };
    // A one-alternative choose survives in the form `Choose`, with its α.
    let (text, p) = run(vec![
        ("n.0.choose", vec![3], ChoiceForm::Choose),
        ("n.1.choose", vec![1, 3], ChoiceForm::Choose),
        ("n", vec![0, 1], ChoiceForm::Choose),
    ])
    .unwrap();
    assert!(text.contains("n.0.choose = choose { x }"), "{text}");
    assert!(
        text.contains("n.1.choose = choose { n.1.choose.1, x }"),
        "{text}"
    );
    assert_eq!(p.get("n.0.choose.alpha").unwrap().data.len(), 1);
    assert_eq!(p.get("n.1.choose.alpha").unwrap().data.len(), 2);
    // `Sum` of two is `add`, and its α is gone.
    let (text, p) = run(vec![
        ("n.0.choose", vec![0, 1, 2, 3], ChoiceForm::Choose),
        ("n.1.choose", vec![0, 1, 2, 3], ChoiceForm::Choose),
        ("n", vec![0, 1], ChoiceForm::Sum),
    ])
    .unwrap();
    assert!(text.contains("n = add(n.0.choose, n.1.choose)"), "{text}");
    assert!(p.get("n.alpha").is_none());
    // A list that does not fit is an error naming the choose.
    for bad in [vec![], vec![2, 1], vec![4], vec![1, 1]] {
        let err = run(vec![("n.0.choose", bad.clone(), ChoiceForm::Sum)]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("`n.0.choose`"), "{bad:?}: {message}");
    }
}

#[test]
fn a_search_fraction_searches_on_a_stratified_subset() {
    let dir = scratch("fraction");
    let space = space_file("tiny_cell");
    let out = dir.join("o.bnn");
    let o = out.to_str().unwrap();
    let bad = onebit(&[
        "search",
        &space,
        "--data",
        "digits",
        "-o",
        o,
        "--search-fraction",
        "0",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected a fraction in (0, 1], found `0`"),
        "{bad:?}"
    );
    let samples = |stderr: &str| -> usize {
        let line = stderr.lines().find(|l| l.starts_with("searching")).unwrap();
        let (_, tail) = line.split_once(": ").unwrap();
        let words: Vec<&str> = tail.split_whitespace().collect();
        words[0].parse::<usize>().unwrap() + words[3].parse::<usize>().unwrap()
    };
    let all = ok(onebit(&search_args(
        &space,
        o,
        "darts",
        &["--stop-after", "1"],
    )));
    let half = ok(onebit(&search_args(
        &space,
        o,
        "darts",
        &["--stop-after", "1", "--search-fraction", "0.25"],
    )));
    assert!(half.contains("digits/train (25%)"), "{half}");
    let (n, m) = (samples(&all), samples(&half));
    // Stratified: a quarter of every class, rounded per class.
    assert!(m.abs_diff(n / 4) <= 10, "{m} of {n}");
}
