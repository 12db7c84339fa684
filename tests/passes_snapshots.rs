//! Snapshots of the printed IR after each pass of the default pipeline, for
//! every model in `examples/` and `tests/in/`, and the pass report.
//!
//! The printed IR is a valid model file, so each snapshot reads as the model
//! after the pass. Passes that change nothing are listed without a listing.
//! Parameters come from `passes_common::stress_params` with a fixed seed, so
//! the value-dependent decisions (which `binary_maxpool` cases fire, which
//! channels are constant) are deterministic. Regenerate with
//! `INSTA_UPDATE=always cargo test --release --test passes_snapshots`, then
//! review every change.

mod passes_common;

use std::fmt::Write as _;

use onebit::ir::Op;
use onebit::passes::{Changed, PassOptions, PassSelection, optimize};
use onebit::text::print;

fn pipeline_document(path: &std::path::Path, selection: &str) -> String {
    let mut graph = passes_common::parse(path);
    let mut params =
        passes_common::stress_params(&graph, 1, passes_common::Gamma::PositiveUnlessNeg);
    let mut doc = format!("# input\n{}", print(&graph));
    let mut after: Vec<(String, String)> = Vec::new();
    let selection = PassSelection::parse(selection).unwrap();
    let report = optimize(
        &mut graph,
        &mut params,
        &selection,
        &PassOptions::default(),
        |pass, g| after.push((pass.to_string(), print(g))),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for ((pass, text), (_, changed)) in after.iter().zip(&report.passes) {
        match changed {
            Changed::Yes => write!(doc, "\n# after {pass}\n{text}").unwrap(),
            Changed::No => write!(doc, "\n# after {pass}: no change\n").unwrap(),
        }
    }
    write!(doc, "\n# report\n{report}\n").unwrap();
    doc
}

#[test]
fn printed_ir_after_each_pass() {
    for path in passes_common::model_files() {
        let dir = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let doc = pipeline_document(&path, "default");
        insta::with_settings!({ description => format!("{dir}/{stem}.bnn"), omit_expression => true }, {
            insta::assert_snapshot!(format!("{dir}__{stem}"), doc);
        });
    }
}

#[test]
fn select_cells_then_default_on_the_search_example() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny_search.bnn");
    let doc = pipeline_document(&path, "select_cells,default");
    insta::with_settings!({ omit_expression => true }, {
        insta::assert_snapshot!("select_cells__tiny_search", doc);
    });
}

/// The default pipeline on ResNet-18 leaves nothing real between two binary
/// convolutions except the real shortcuts: each `add` and the `sign` that
/// packs its output (and, on the downsampling shortcuts, which are real
/// paths from one add to the next, their pool and 1×1 conv).
#[test]
fn resnet18_has_no_real_op_between_binary_convolutions_but_the_shortcuts() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/resnet18_bnn.bnn");
    let mut graph = passes_common::parse(&path);
    let mut params =
        passes_common::stress_params(&graph, 1, passes_common::Gamma::PositiveUnlessNeg);
    let report = optimize(
        &mut graph,
        &mut params,
        &PassSelection::default_pipeline(),
        &PassOptions::default(),
        |_, _| {},
    )
    .unwrap();
    // Every binary conv writes its folded epilogue and reads packed weights,
    // and its only user is the shortcut add.
    let mut binary = 0;
    for id in graph.node_ids() {
        let node = graph.node(id);
        let Op::BConv2d(a) = &node.op else { continue };
        binary += 1;
        assert_eq!(
            a.output,
            onebit::ir::ops::BinaryOutput::Affine,
            "{}",
            node.name
        );
        assert_eq!(
            a.weights,
            onebit::ir::ops::WeightForm::Packed,
            "{}",
            node.name
        );
        let users = graph.users(id);
        assert_eq!(users.len(), 1, "{}", node.name);
        assert_eq!(graph.node(users[0]).op, Op::Add, "{}", node.name);
        // Its operand is the sign of the previous add (or of the stem's pool).
        let s = graph.operands(id)[0];
        assert!(matches!(graph.node(s).op, Op::Sign(_)), "{}", node.name);
    }
    assert_eq!(binary, 16);
    // Between two binary convolutions: only add, sign, and the real
    // downsampling shortcuts (avgpool, conv2d with its folded batchnorm).
    for l in report.real_between_binary() {
        assert!(
            ["add", "sign", "avgpool", "conv2d"].contains(&l.op.as_str()),
            "{} ({}) is real between binary layers",
            l.name,
            l.op
        );
        if l.op == "conv2d" || l.op == "avgpool" {
            assert!(l.name.contains("downsample"), "{}", l.name);
        }
    }
    assert!(!report.layers.iter().any(|l| l.op == "batchnorm"));
}

/// The closing figures for ResNet-18, before and after the default pipeline:
/// `cargo test --release --test passes_snapshots resnet18_figures -- --nocapture`.
#[test]
fn resnet18_figures() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/resnet18_bnn.bnn");
    let mut graph = passes_common::parse(&path);
    let mut params =
        passes_common::stress_params(&graph, 1, passes_common::Gamma::PositiveUnlessNeg);
    let mut figures = Vec::new();
    for selection in ["none", "default"] {
        let report = optimize(
            &mut graph,
            &mut params,
            &PassSelection::parse(selection).unwrap(),
            &PassOptions::default(),
            |_, _| {},
        )
        .unwrap();
        let ops = graph.len() - graph.inputs().len();
        let f32_param_bytes: usize = params.tensors.values().map(|t| 4 * t.data.len()).sum();
        let packed_param_bytes: usize = params.packed.values().map(|p| 8 * p.words.len()).sum();
        eprintln!(
            "{selection:>7}: {ops} ops, {} binary MACs, {} real MACs, model {} B packed vs {} B float32 ({:.1}x), params in store {} B f32 + {} B packed, activation arena {} B/sample in {} slots (live peak {} B, {} B without reuse)",
            report.binary_macs,
            report.real_macs,
            report.packed_bytes,
            report.float_bytes,
            report.float_bytes as f64 / report.packed_bytes as f64,
            f32_param_bytes,
            packed_param_bytes,
            report.memory.arena_bytes(),
            report.memory.slots.len(),
            report.memory.live_peak_bytes(),
            report.memory.unshared_bytes(),
        );
        figures.push(ops);
    }
    assert!(figures[1] < figures[0]);
}
