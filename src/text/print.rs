//! The IR printer: a graph as a `.bnn` model file.
//!
//! The output is both the debugging view and the snapshot format, and it is a
//! valid input: parsing it gives back the same graph (same names, ops,
//! operands and types). Each node is one binding, in the deterministic
//! topological order of [`Graph::topo_order`], with its type as a comment.
//! Attributes at their default values are left out.

use std::fmt::Write as _;

use crate::ir::graph::{Graph, NodeId};
use crate::ir::ops::{
    BinaryOutput, ConvGeometry, Op, PadValue, Pair, Scale, SignGrad, Stats, WeightForm, WeightKind,
    Wrt,
};

/// Prints `graph` as a model file.
pub fn print(graph: &Graph) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_graph(&mut out, graph);
    out
}

fn write_graph(out: &mut String, graph: &Graph) -> std::fmt::Result {
    writeln!(out, "model {} {{", graph.name)?;
    for &id in graph.inputs() {
        let n = graph.node(id);
        match graph.input_normalization(&n.name) {
            Some(m) => writeln!(
                out,
                "  input {}: {} normalize(mean={}, std={})",
                n.name,
                n.ty,
                float(m.mean),
                float(m.std)
            )?,
            None => writeln!(out, "  input {}: {}", n.name, n.ty)?,
        }
    }
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| graph.node_ids().collect());
    for id in order {
        let node = graph.node(id);
        if let Op::Input = node.op {
            continue;
        }
        writeln!(out, "  {} = {}  # {}", node.name, call(graph, id), node.ty)?;
    }
    let outputs: Vec<&str> = graph
        .outputs()
        .iter()
        .map(|&o| graph.node(o).name.as_str())
        .collect();
    if !outputs.is_empty() {
        writeln!(out, "  output {}", outputs.join(", "))?;
    }
    writeln!(out, "}}")
}

fn pair(p: Pair) -> String {
    if p[0] == p[1] {
        p[0].to_string()
    } else {
        format!("({}, {})", p[0], p[1])
    }
}

/// A float literal that reads back as the same f32 and never as an integer.
fn float(x: f32) -> String {
    let s = format!("{x:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn geometry(args: &mut Vec<String>, g: &ConvGeometry) {
    args.push(g.out_channels.to_string());
    args.push(format!("kernel={}", pair(g.kernel)));
    if g.stride != [1, 1] {
        args.push(format!("stride={}", pair(g.stride)));
    }
    if g.pad != [0, 0] {
        args.push(format!("pad={}", pair(g.pad)));
    }
    if g.dilation != [1, 1] {
        args.push(format!("dilation={}", pair(g.dilation)));
    }
    if g.groups != 1 {
        args.push(format!("groups={}", g.groups));
    }
}

fn binary_form(args: &mut Vec<String>, output: BinaryOutput, weights: WeightForm) {
    if output != BinaryOutput::Dot {
        args.push(format!("output={}", output.name()));
    }
    if weights == WeightForm::Packed {
        args.push("weights=packed".into());
    }
}

fn real_layer_weights(args: &mut Vec<String>, weights: WeightKind, scale: Scale) {
    if weights != WeightKind::Real {
        args.push(format!("weights={}", weights.name()));
    }
    scale_word(args, scale);
}

fn projection_word(args: &mut Vec<String>, projection: bool) {
    if projection {
        args.push("projection=true".into());
    }
}

fn scale_word(args: &mut Vec<String>, scale: Scale) {
    if scale.is_scaled() {
        args.push(format!("scale={}", scale.name()));
    }
}

/// The right-hand side of node `id`'s binding.
fn call(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    let operands: Vec<String> = graph
        .operands(id)
        .iter()
        .map(|&o| graph.node(o).name.clone())
        .collect();
    let mut args = operands.clone();
    match &node.op {
        Op::Choose => return format!("choose {{ {} }}", operands.join(", ")),
        Op::Grad(g) => {
            // The forward node's operands are implied by the forward node.
            let mut args = vec![operands[0].clone()];
            if !g.of.kind().is_loss() {
                args.push(operands[operands.len() - 1].clone());
            }
            args.push(match g.wrt {
                Wrt::Operand(i) => format!("wrt={i}"),
                Wrt::Param(role) => format!("wrt={}", role.name()),
            });
            return format!("grad({})", args.join(", "));
        }
        Op::RunningStat(a) => {
            // The batchnorm's operand is implied by the batchnorm.
            let mut args = vec![operands[0].clone(), format!("stat={}", a.stat.name())];
            if a.momentum != 0.1 {
                args.push(format!("momentum={}", float(a.momentum)));
            }
            return format!("running_stat({})", args.join(", "));
        }
        Op::QuantizationLoss(a) => {
            // The layer's operand is implied by the layer.
            let args = [operands[0].clone(), format!("weight={}", float(a.weight))];
            return format!("quantization_loss({})", args.join(", "));
        }
        Op::DistributionLoss(a) => args.push(format!("weight={}", float(a.weight))),
        Op::CrossEntropy(a) => {
            if a.smoothing != 0.0 {
                args.push(format!("smoothing={}", float(a.smoothing)));
            }
        }
        Op::Sign(a) => {
            if a.grad != SignGrad::Ste {
                args.push(format!("grad={}", a.grad.name()));
            }
        }
        Op::Conv2d(a) => {
            geometry(&mut args, &a.geometry);
            if !a.bias {
                args.push("bias=false".into());
            }
            real_layer_weights(&mut args, a.weights, a.scale);
            projection_word(&mut args, a.projection);
        }
        Op::BConv2d(a) => {
            geometry(&mut args, &a.geometry);
            if a.pad_value == PadValue::One {
                args.push("pad_value=1".into());
            }
            scale_word(&mut args, a.scale);
            binary_form(&mut args, a.output, a.weights);
            projection_word(&mut args, a.projection);
        }
        Op::Dense(a) => {
            args.push(a.out_features.to_string());
            if !a.bias {
                args.push("bias=false".into());
            }
            real_layer_weights(&mut args, a.weights, a.scale);
            projection_word(&mut args, a.projection);
        }
        Op::BDense(a) => {
            args.push(a.out_features.to_string());
            scale_word(&mut args, a.scale);
            binary_form(&mut args, a.output, a.weights);
            projection_word(&mut args, a.projection);
        }
        Op::BatchNorm(a) => {
            if a.eps != 1e-5 {
                args.push(format!("eps={}", float(a.eps)));
            }
            if a.stats != Stats::Running {
                args.push(format!("stats={}", a.stats.name()));
            }
        }
        Op::HardTanh(a) => {
            if a.min != -1.0 {
                args.push(format!("min={}", float(a.min)));
            }
            if a.max != 1.0 {
                args.push(format!("max={}", float(a.max)));
            }
        }
        Op::SliceChannels(a) => {
            args.push(a.start.to_string());
            args.push(a.count.to_string());
        }
        Op::ShuffleChannels(a) => args.push(a.groups.to_string()),
        Op::MaxPool(p) | Op::AvgPool(p) => {
            args.push(pair(p.kernel));
            if p.stride != p.kernel {
                args.push(format!("stride={}", pair(p.stride)));
            }
            if p.pad != [0, 0] {
                args.push(format!("pad={}", pair(p.pad)));
            }
        }
        Op::Input
        | Op::Relu
        | Op::PRelu
        | Op::Shift
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Add
        | Op::Concat
        | Op::Zero
        | Op::Identity
        | Op::Threshold
        | Op::Affine => {}
    }
    format!("{}({})", node.op.name(), args.join(", "))
}
