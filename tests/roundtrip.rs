//! The printer and the parser are inverses: `parse(print(g))` is `g` again.
//!
//! Checked over every example model and over random valid graphs built through
//! the builder API (random DAGs over every op, with random attributes, dotted
//! node names, several inputs and outputs). A graph that prints to text that
//! does not parse back to the same graph is a printer (or parser) bug.

use std::path::Path;

use onebit::ir::ops::{
    BConv2d, BDense, BatchNorm, BinaryOutput, Conv2d, ConvGeometry, Dense, HardTanh, PadValue,
    Pool, Scale, ShuffleChannels, SliceChannels, WeightForm,
};
use onebit::ir::{DType, Graph, NodeId, Op, OpKind as Kind, TensorType};
use proptest::prelude::*;
use proptest::sample::Index;

/// Prints `g`, parses the text back and checks that it is the same graph and
/// prints the same again; and the same through JSON.
fn assert_round_trips(g: &Graph) -> Result<(), TestCaseError> {
    let text = onebit::text::print(g);
    let parsed = onebit::text::parse("roundtrip.bnn", text.as_bytes()).map_err(|e| {
        TestCaseError::fail(format!("the printed graph does not parse:\n{text}\n{e}"))
    })?;
    parsed
        .same_as(g)
        .map_err(|d| TestCaseError::fail(format!("{d}\nin\n{text}")))?;
    prop_assert_eq!(&onebit::text::print(&parsed), &text);
    // The JSON view rebuilds the same graph too.
    let json = onebit::ir::json::to_json(g);
    let from_json = onebit::ir::json::from_json(&json)
        .map_err(|e| TestCaseError::fail(format!("the JSON does not load: {e}\n{json}")))?;
    from_json
        .same_as(g)
        .map_err(|d| TestCaseError::fail(format!("JSON: {d}\nin\n{text}")))?;
    Ok(())
}

#[test]
fn every_example_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "bnn") {
            continue;
        }
        let name = path.display().to_string();
        let g = onebit::text::parse(&name, &std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = assert_round_trips(&g) {
            panic!("{name}: {e}");
        }
        count += 1;
    }
    assert!(
        count >= 2,
        "found only {count} examples in {}",
        dir.display()
    );
}

/// Name segments: plain words, op names, keywords (valid after the first
/// segment, and as the first of a dotted name) and numbers.
const SEGMENTS: [&str; 14] = [
    "a", "b", "x1", "conv", "relu", "sign", "s_2", "input", "choose", "model", "0", "1", "17", "_t",
];

/// A node name: one to three segments joined by dots, not starting with a
/// number and not a bare keyword.
fn node_name() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&SEGMENTS[..]), 1..=3).prop_map(|segs| {
        let mut name = segs.join(".");
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert(0, 'n');
        }
        if onebit::text::parser::KEYWORDS.contains(&name.as_str()) {
            name.push('_');
        }
        name
    })
}

/// A finite f32 of any magnitude and sign (normal, subnormal or zero). The IR
/// accepts infinite `hardtanh` bounds, but the text format has no literal for
/// them, so they are left out.
fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
        -4.0f32..4.0,
        Just(-1.0f32),
        Just(1.0f32),
    ]
}

/// Attribute values, drawn once per step and used by whichever op it adds.
#[derive(Clone, Debug)]
struct Attrs {
    out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    pad_value: bool,
    channel_scale: bool,
    /// Binary layers: 0 `output=dot`, 1 `affine`, 2 `threshold`.
    output: u8,
    packed: bool,
    /// PCNN's projection, on binary layers with latent weights and
    /// `output=dot`.
    projection: bool,
    bias: bool,
    eps: f32,
    bounds: (f32, f32),
}

fn attrs() -> impl Strategy<Value = Attrs> {
    let pair = |lo: usize, hi: usize| [lo..=hi, lo..=hi];
    (
        (1usize..=8, pair(1, 3), pair(1, 2), pair(0, 1), pair(1, 2)),
        (1usize..=2, any::<bool>(), any::<bool>(), any::<bool>()),
        prop_oneof![Just(1e-5f32), finite_f32().prop_map(f32::abs)],
        (finite_f32(), finite_f32()),
        (0u8..3, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (out, kernel, stride, pad, dilation),
                (groups, pad_value, channel_scale, bias),
                eps,
                (a, b),
                (output, packed, projection),
            )| Attrs {
                output,
                packed,
                projection,
                out,
                kernel,
                stride,
                pad,
                dilation,
                groups,
                pad_value,
                channel_scale,
                bias,
                eps,
                bounds: (a.min(b), a.max(b)),
            },
        )
}

/// The ops a step may add: every op but `input`.
fn kinds() -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        // Training graphs come from `differentiate` (tests/train_graph.rs).
        .filter(|&k| k != Kind::Input && !k.is_training())
        .collect()
}

/// One attempted `add_node`.
#[derive(Clone, Debug)]
struct Step {
    kind: Kind,
    name: String,
    /// Picks the first operand, then up to two more among the compatible nodes.
    operands: (Index, Vec<Index>),
    attrs: Attrs,
}

/// A recipe for a random graph.
#[derive(Clone, Debug)]
struct Recipe {
    model: &'static str,
    inputs: Vec<(String, Vec<usize>)>,
    steps: Vec<Step>,
    outputs: Vec<Index>,
}

fn input_shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        3 => (1usize..=4, 1usize..=6, 1usize..=6).prop_map(|(c, h, w)| vec![c, h, w]),
        1 => (1usize..=16).prop_map(|k| vec![k]),
    ]
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let step = (
        prop::sample::select(kinds()),
        node_name(),
        (any::<Index>(), prop::collection::vec(any::<Index>(), 0..=2)),
        attrs(),
    )
        .prop_map(|(kind, name, operands, attrs)| Step {
            kind,
            name,
            operands,
            attrs,
        });
    (
        prop::sample::select(&["m", "net", "tiny_search", "Model2"][..]),
        prop::collection::vec((node_name(), input_shape()), 1..=3),
        prop::collection::vec(step, 0..=14),
        prop::collection::vec(any::<Index>(), 1..=3),
    )
        .prop_map(|(model, inputs, steps, outputs)| Recipe {
            model,
            inputs,
            steps,
            outputs,
        })
}

fn geometry(a: &Attrs) -> ConvGeometry {
    ConvGeometry {
        out_channels: a.out * a.groups,
        kernel: a.kernel,
        stride: a.stride,
        pad: a.pad,
        dilation: a.dilation,
        groups: a.groups,
    }
}

fn op(kind: Kind, a: &Attrs) -> Op {
    let output = [
        BinaryOutput::Dot,
        BinaryOutput::Affine,
        BinaryOutput::Threshold,
    ][usize::from(a.output)];
    let weights = if a.packed {
        WeightForm::Packed
    } else {
        WeightForm::Latent
    };
    // The XNOR-Net scale belongs to latent weights with `output=dot`.
    let scale = if a.channel_scale && output == BinaryOutput::Dot && !a.packed {
        Scale::Channel
    } else {
        Scale::None
    };
    let projection = a.projection && output == BinaryOutput::Dot && !a.packed;
    let pool = Pool {
        kernel: a.kernel,
        stride: a.stride,
        // At most half the kernel, as pooling requires.
        pad: [a.pad[0].min(a.kernel[0] / 2), a.pad[1].min(a.kernel[1] / 2)],
    };
    match kind {
        Kind::Conv2d => Op::Conv2d(Conv2d::new(geometry(a), a.bias)),
        Kind::BConv2d => Op::BConv2d(BConv2d {
            geometry: geometry(a),
            pad_value: if a.pad_value {
                PadValue::One
            } else {
                PadValue::Zero
            },
            scale,
            output,
            weights,
            projection,
        }),
        Kind::Dense => Op::Dense(Dense::new(a.out, a.bias)),
        Kind::BDense => Op::BDense(BDense {
            out_features: a.out,
            scale,
            output,
            weights,
            projection,
        }),
        Kind::Sign => Op::sign(),
        Kind::BatchNorm => Op::BatchNorm(BatchNorm::new(a.eps)),
        Kind::Relu => Op::Relu,
        Kind::PRelu => Op::PRelu,
        Kind::Shift => Op::Shift,
        Kind::HardTanh => Op::HardTanh(HardTanh {
            min: a.bounds.0,
            max: a.bounds.1,
        }),
        Kind::MaxPool => Op::MaxPool(pool),
        Kind::AvgPool => Op::AvgPool(pool),
        Kind::GlobalAvgPool => Op::GlobalAvgPool,
        Kind::Flatten => Op::Flatten,
        Kind::Add => Op::Add,
        Kind::Concat => Op::Concat,
        // Small enough that a channel axis of the inputs often fits them.
        Kind::SliceChannels => Op::SliceChannels(SliceChannels {
            start: a.pad[0],
            count: a.groups,
        }),
        Kind::ShuffleChannels => Op::ShuffleChannels(ShuffleChannels { groups: a.groups }),
        Kind::Zero => Op::Zero,
        Kind::Identity => Op::Identity,
        Kind::Choose => Op::Choose,
        Kind::Threshold => Op::Threshold,
        Kind::Affine => Op::Affine,
        Kind::Input
        | Kind::CrossEntropy
        | Kind::RunningStat
        | Kind::Grad
        | Kind::QuantizationLoss
        | Kind::DistributionLoss => {
            unreachable!("recipes add neither inputs nor training ops: see `kinds`")
        }
    }
}

/// Whether a node of type `t` suits the first operand of `kind`: pick among
/// those so that most steps type-check.
fn suits(kind: Kind, t: &TensorType) -> bool {
    let rank = t.dims().len();
    match kind {
        Kind::BConv2d => t.dtype == DType::Bit && rank == 3,
        Kind::BDense => t.dtype == DType::Bit && rank == 1,
        Kind::Dense => rank == 1,
        Kind::Conv2d | Kind::MaxPool | Kind::AvgPool | Kind::GlobalAvgPool => rank == 3,
        _ => true,
    }
}

/// Builds the graph a recipe describes, skipping steps that do not type-check
/// or reuse a name. Inputs come first, as the parser adds them: `same_as`
/// compares topological orders, and `Graph::topo_order` places an input added
/// after other nodes later than the parsed graph does.
fn build(r: &Recipe) -> Graph {
    let mut g = Graph::new(r.model);
    let mut nodes: Vec<NodeId> = Vec::new();
    for (name, dims) in &r.inputs {
        if let Ok(id) = g.add_input(name, TensorType::f32(dims.clone())) {
            nodes.push(id);
        }
    }
    for step in &r.steps {
        let ty = |id: NodeId| g.node(id).ty.clone();
        let firsts: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|&n| suits(step.kind, &ty(n)))
            .collect();
        if firsts.is_empty() {
            continue;
        }
        let first = *step.operands.0.get(&firsts);
        let mut operands = vec![first];
        // Further operands for the variadic ops, among nodes that fit the first.
        let fits = |n: NodeId| -> bool {
            let (a, b) = (ty(first), ty(n));
            match step.kind {
                Kind::Add | Kind::Choose => a.shape == b.shape,
                Kind::Concat => a.dims().len() == b.dims().len() && a.dims()[1..] == b.dims()[1..],
                _ => false,
            }
        };
        let others: Vec<NodeId> = nodes.iter().copied().filter(|&n| fits(n)).collect();
        if !others.is_empty() {
            operands.extend(step.operands.1.iter().map(|i| *i.get(&others)));
        }
        if let Ok(id) = g.add_node(&step.name, op(step.kind, &step.attrs), &operands) {
            nodes.push(id);
        }
    }
    let mut outputs: Vec<NodeId> = Vec::new();
    for i in &r.outputs {
        let o = *i.get(&nodes);
        if !outputs.contains(&o) {
            outputs.push(o);
        }
    }
    g.set_outputs(outputs);
    g
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_graphs_round_trip(r in recipe()) {
        let g = build(&r);
        onebit::ir::verify(&g).map_err(|e| TestCaseError::fail(format!("the builder made an invalid graph: {e}")))?;
        assert_round_trips(&g)?;
    }
}

/// The generator is not vacuous: it makes graphs of some size, using every op
/// and dotted names.
#[test]
fn random_graphs_cover_every_op() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let graphs: Vec<Graph> = (0..200)
        .map(|_| build(&recipe().new_tree(&mut runner).unwrap().current()))
        .collect();
    let big = graphs.iter().filter(|g| g.len() >= 8).count();
    assert!(big >= 40, "only {big} of 200 graphs have 8 nodes or more");
    let nodes = || {
        graphs
            .iter()
            .flat_map(|g| g.node_ids().map(move |id| g.node(id)))
    };
    for kind in onebit::ir::OpKind::ALL
        .into_iter()
        .filter(|k| !k.is_training())
    {
        assert!(
            nodes().any(|n| n.op.kind() == kind),
            "no random graph has a `{kind}` node"
        );
    }
    assert!(nodes().any(|n| n.name.matches('.').count() >= 2));
    assert!(nodes().any(|n| n.name.starts_with("input.")));
    assert!(
        graphs
            .iter()
            .any(|g| g.inputs().len() >= 2 && g.outputs().len() >= 2)
    );
}
