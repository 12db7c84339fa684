//! The graph in Graphviz DOT: `onebit ir MODEL --format dot | dot -Tsvg`.
//!
//! Binary layers are drawn filled, bit-typed values as bold edges, so the
//! binary regions of a model stand out.

use std::fmt::Write as _;

use super::graph::Graph;
use super::types::DType;

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The graph as a DOT digraph.
pub fn to_dot(graph: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&graph.name));
    let _ = writeln!(
        out,
        "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| graph.node_ids().collect());
    for &id in &order {
        let n = graph.node(id);
        let style = if n.op.kind().is_binary_layer() {
            ", style=filled, fillcolor=\"#dbe9ff\""
        } else if graph.inputs().contains(&id) || graph.outputs().contains(&id) {
            ", peripheries=2"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{} [label=\"{}\\n{}\\n{}\"{style}];",
            id.index(),
            escape(&n.name),
            n.op.name(),
            n.ty
        );
    }
    for &id in &order {
        for (slot, o) in graph.operands(id).into_iter().enumerate() {
            let bold = if graph.node(o).ty.dtype == DType::Bit {
                ", style=bold"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{slot}\"{bold}];",
                o.index(),
                id.index()
            );
        }
    }
    out.push_str("}\n");
    out
}
