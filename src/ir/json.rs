//! The graph as JSON, for tools: `onebit ir MODEL --format json`.
//!
//! The document lists nodes in the printer's topological order, each with its
//! op and attributes (serde's view of [`Op`]), operands by name and type:
//!
//! ```json
//! { "model": "m", "inputs": ["x"], "outputs": ["y"],
//!   "nodes": [ { "name": "y", "op": "sign", "operands": ["x"], "type": { "dtype": "bit", "shape": [16] } } ] }
//! ```
//!
//! [`from_json`] rebuilds the graph through the builder, so every node is
//! re-typed and a malformed document is an error, never a wrong graph.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::graph::{Graph, InputNormalization, NodeId};
use super::ops::Op;
use super::types::TensorType;

#[derive(Serialize, Deserialize)]
struct GraphDoc {
    model: String,
    inputs: Vec<String>,
    /// Declared input normalisation, by input name (absent when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    normalize: BTreeMap<String, InputNormalization>,
    outputs: Vec<String>,
    nodes: Vec<NodeDoc>,
}

#[derive(Serialize, Deserialize)]
struct NodeDoc {
    name: String,
    #[serde(flatten)]
    op: Op,
    operands: Vec<String>,
    #[serde(rename = "type")]
    ty: TensorType,
}

/// The graph as pretty-printed JSON.
pub fn to_json(graph: &Graph) -> String {
    let name = |id: NodeId| graph.node(id).name.clone();
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| graph.node_ids().collect());
    let doc = GraphDoc {
        model: graph.name.clone(),
        inputs: graph.inputs().iter().map(|&i| name(i)).collect(),
        normalize: graph.input_normalizations().clone(),
        outputs: graph.outputs().iter().map(|&o| name(o)).collect(),
        nodes: order
            .into_iter()
            .map(|id| {
                let n = graph.node(id);
                NodeDoc {
                    name: n.name.clone(),
                    op: n.op.clone(),
                    operands: graph.operands(id).into_iter().map(name).collect(),
                    ty: n.ty.clone(),
                }
            })
            .collect(),
    };
    // Every field is a plain string, number or enum: serialisation cannot fail.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Rebuilds a graph from [`to_json`]'s format. Nodes must come after their
/// operands; each node's type is re-inferred and must match the recorded one.
pub fn from_json(text: &str) -> Result<Graph, String> {
    let doc: GraphDoc = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut graph = Graph::new(doc.model);
    for n in doc.nodes {
        let id = if let Op::Input = n.op {
            if !doc.inputs.contains(&n.name) {
                return Err(format!(
                    "node `{}` is an input but not listed in `inputs`",
                    n.name
                ));
            }
            graph
                .add_input(&n.name, n.ty.clone())
                .map_err(|e| e.to_string())?
        } else {
            let mut operands = Vec::new();
            for o in &n.operands {
                operands.push(
                    graph
                        .find(o)
                        .ok_or_else(|| format!("node `{}`: unknown operand `{o}`", n.name))?,
                );
            }
            graph
                .add_node(&n.name, n.op, &operands)
                .map_err(|e| format!("node `{}`: {e}", n.name))?
        };
        if graph.node(id).ty != n.ty {
            return Err(format!(
                "node `{}` is recorded as {} but is {}",
                n.name,
                n.ty,
                graph.node(id).ty
            ));
        }
    }
    let mut inputs = Vec::new();
    for i in &doc.inputs {
        inputs.push(
            graph
                .find(i)
                .ok_or_else(|| format!("unknown input `{i}`"))?,
        );
    }
    if inputs != graph.inputs() {
        return Err("`inputs` must list the input nodes in the order they appear".into());
    }
    for (input, n) in &doc.normalize {
        if !doc.inputs.contains(input) {
            return Err(format!(
                "`normalize` names `{input}`, which is not an input"
            ));
        }
        graph.set_input_normalization(input, Some(*n));
    }
    for o in &doc.outputs {
        let id = graph
            .find(o)
            .ok_or_else(|| format!("unknown output `{o}`"))?;
        graph.add_output(id);
    }
    Ok(graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::parse_str;

    #[test]
    fn round_trips() {
        let g = parse_str(
            "model m { input x: f32[2, 6, 6]\n c = bconv2d(sign(x), 4, kernel=(3, 2), pad=1, pad_value=1, scale=channel)\n h = hardtanh(c, min=-0.5)\n y = choose { h, zero(h) }\n output y, c }",
        )
        .unwrap();
        let json = to_json(&g);
        assert!(json.contains("\"op\": \"bconv2d\""), "{json}");
        let back = from_json(&json).unwrap();
        g.same_as(&back).unwrap();
    }

    #[test]
    fn rejects_retyped_nodes() {
        let g = parse_str("model m { input x: f32[4]\n y = sign(x)\n output y }").unwrap();
        let json = to_json(&g).replace("\"bit\"", "\"f32\"");
        assert!(
            from_json(&json)
                .unwrap_err()
                .contains("recorded as f32[4] but is bit[4]")
        );
    }
}
