//! The verifier: checks that a graph is a well-formed, well-typed model.
//!
//! The builder already types nodes as they are added; the verifier re-derives
//! everything from scratch, so it catches passes that rewire or retype nodes
//! wrongly. Later stages take a [`Verified`] token as proof that it ran.

use super::graph::{Graph, NodeId, is_valid_name};
use super::ops::{Op, TypeError};
use super::types::DType;

/// What is wrong with a graph.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VerifyError {
    /// The graph has a cycle through these nodes.
    #[error("cycle through {}", .0.join(", "))]
    Cycle(Vec<String>),
    /// The model declares no output.
    #[error("model `{0}` has no output; add `output NAME`")]
    NoOutputs(String),
    /// The model declares no input.
    #[error("model `{0}` has no input; declare one with `input NAME: f32[...]`")]
    NoInputs(String),
    /// An output refers to a removed node.
    #[error("an output refers to a node that is not in the graph")]
    DanglingOutput,
    /// A node name the text format cannot write.
    #[error(
        "node name `{0}` is not a valid name (dot-separated identifiers or numbers, not a keyword)"
    )]
    BadName(String),
    /// The input list and the input nodes disagree.
    #[error("node `{0}`: {1}")]
    BadInput(String, &'static str),
    /// A node's op does not fit its operands.
    #[error("node `{node}`: {error}")]
    Type {
        /// The node's name.
        node: String,
        /// Why.
        error: TypeError,
    },
    /// A training node's operands are not laid out as its op requires.
    #[error("node `{node}`: {message}")]
    Training {
        /// The node's name.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// A node's stored type differs from the one its operands give.
    #[error("node `{node}` is typed {stored} but its op and operands give {inferred}")]
    StaleType {
        /// The node's name.
        node: String,
        /// Its recorded type.
        stored: String,
        /// The type re-derived from its operands.
        inferred: String,
    },
}

/// Proof that a graph passed [`verify`]. Holding one borrows the graph, so it
/// cannot change in between.
#[derive(Clone, Copy, Debug)]
pub struct Verified<'g> {
    graph: &'g Graph,
}

impl<'g> Verified<'g> {
    /// The verified graph.
    pub fn graph(&self) -> &'g Graph {
        self.graph
    }
}

/// Verifies `graph`: acyclic, inputs are declared f32 inputs, at least one
/// output, every node typed as its op and operands require.
pub fn verify(graph: &Graph) -> Result<Verified<'_>, VerifyError> {
    if graph.inputs().is_empty() {
        return Err(VerifyError::NoInputs(graph.name.clone()));
    }
    if graph.outputs().is_empty() {
        return Err(VerifyError::NoOutputs(graph.name.clone()));
    }
    if graph.outputs().iter().any(|&o| graph.get(o).is_none()) {
        return Err(VerifyError::DanglingOutput);
    }
    let order = graph.topo_order().map_err(|cycle| {
        VerifyError::Cycle(
            cycle
                .into_iter()
                .map(|id| graph.node(id).name.clone())
                .collect(),
        )
    })?;
    for id in order {
        verify_node(graph, id)?;
    }
    Ok(Verified { graph })
}

fn verify_node(graph: &Graph, id: NodeId) -> Result<(), VerifyError> {
    let node = graph.node(id);
    if !is_valid_name(&node.name) {
        return Err(VerifyError::BadName(node.name.clone()));
    }
    let declared_input = graph.inputs().contains(&id);
    if let Op::Input = node.op {
        if !declared_input {
            return Err(VerifyError::BadInput(
                node.name.clone(),
                "an input node missing from the model's input list",
            ));
        }
        if node.ty.dtype != DType::F32 {
            return Err(VerifyError::BadInput(
                node.name.clone(),
                "model inputs must be f32",
            ));
        }
        if !graph.operands(id).is_empty() {
            return Err(VerifyError::BadInput(
                node.name.clone(),
                "an input node has operands",
            ));
        }
        return Ok(());
    }
    if declared_input {
        return Err(VerifyError::BadInput(
            node.name.clone(),
            "listed as a model input but is not an input node",
        ));
    }
    let inferred = node
        .op
        .infer_type(&graph.operand_types(id))
        .map_err(|error| VerifyError::Type {
            node: node.name.clone(),
            error,
        })?;
    if inferred != node.ty {
        return Err(VerifyError::StaleType {
            node: node.name.clone(),
            stored: node.ty.to_string(),
            inferred: inferred.to_string(),
        });
    }
    verify_training_operands(graph, id)
}

/// A `grad` node reads its forward node and then exactly that node's
/// operands, and repeats its op; a `running_stat` reads a batchnorm and its
/// operand. (The typing rule sees only types; these are facts about edges.)
fn verify_training_operands(graph: &Graph, id: NodeId) -> Result<(), VerifyError> {
    let node = graph.node(id);
    let operands = graph.operands(id);
    let bad = |message: String| {
        Err(VerifyError::Training {
            node: node.name.clone(),
            message,
        })
    };
    match &node.op {
        Op::Grad(g) => {
            let of = graph.node(operands[0]);
            if of.op != *g.of {
                return bad(format!(
                    "differentiates `{}` but its first operand `{}` is a `{}`",
                    g.of.name(),
                    of.name,
                    of.op.name()
                ));
            }
            let forward = graph.operands(operands[0]);
            if operands.len() < 1 + forward.len() || operands[1..=forward.len()] != forward[..] {
                return bad(format!(
                    "its operands after `{}` must be the operands of `{}`",
                    of.name, of.name
                ));
            }
            Ok(())
        }
        Op::QuantizationLoss(q) => {
            let layer = graph.node(operands[0]);
            if layer.op != *q.of || graph.operands(operands[0]) != operands[1..] {
                return bad(format!(
                    "`quantization_loss` must read a binary layer and that layer's operand, and repeat the layer's op; found `{}`, a `{}`",
                    layer.name,
                    layer.op.name()
                ));
            }
            Ok(())
        }
        Op::RunningStat(_) => {
            let bn = graph.node(operands[0]);
            if !matches!(bn.op, Op::BatchNorm(_)) || graph.operands(operands[0]) != operands[1..] {
                return bad(format!(
                    "`running_stat` must read a batchnorm and that batchnorm's operand, found `{}`",
                    bn.name
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
