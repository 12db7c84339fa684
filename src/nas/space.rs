//! The search space of a model: which `choose` nodes are searchable edges,
//! which are searched nodes, and which parameters are architecture
//! parameters.
//!
//! A **searched node** is a `choose` whose alternatives are all `choose`s:
//! its alternatives are its incoming **edges**, and its `NAME.alpha` holds
//! the edge-normalisation weights β of PC-DARTS (`x_j = Σ_i softmax(β)_i ·
//! edge_i`). Every other `choose` is an **edge**, a mixed operation whose
//! `NAME.alpha` holds the operation weights α. An edge may stand alone (no
//! searched node reads it): then the model sums or uses it as written, and
//! only its operation is searched. See `ir-spec/search.md`.
//!
//! A partial-channel edge (a cell with `partial(x, c, K)`, PC-DARTS) reaches
//! its node as `shuffle_channels(concat(EDGE, bypass))`; the wrapper is seen
//! through, so the edges and nodes are those of the full-width lowering.

use std::collections::BTreeSet;

use crate::ir::graph::{Graph, NodeId};
use crate::ir::ops::Op;

/// The edge `choose` that the value `id` carries: `id` itself if it is a
/// `choose`, or the `choose` inside a partial-channel wrapper
/// (`shuffle_channels(concat(choose, bypass))`).
fn edge_choose(graph: &Graph, id: NodeId) -> Option<NodeId> {
    let is_choose = |id| graph.node(id).op == Op::Choose;
    if is_choose(id) {
        return Some(id);
    }
    let Op::ShuffleChannels(_) = graph.node(id).op else {
        return None;
    };
    let joined = *graph.operands(id).first()?;
    if graph.node(joined).op != Op::Concat {
        return None;
    }
    let inner = *graph.operands(joined).first()?;
    is_choose(inner).then_some(inner)
}

/// One searchable edge: a `choose` over operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The `choose` node's name; its α is `NAME.alpha`.
    pub choose: String,
    /// A short label per alternative (`zero`, `skip`, `max_pool_3x3`,
    /// `sep_conv_3x3`, ...), for genotypes and logs.
    pub ops: Vec<String>,
    /// Which alternatives are the `zero` op.
    pub zero: Vec<bool>,
    /// The searched node this edge enters, and its index among the node's
    /// edges.
    pub node: Option<(String, usize)>,
}

/// One searched node: a `choose` over edges, with edge weights β.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchNode {
    /// The `choose` node's name; its β is `NAME.alpha`.
    pub choose: String,
    /// Its incoming edges (indices into [`SearchSpace::edges`]), in operand
    /// order.
    pub edges: Vec<usize>,
}

/// The edges and nodes of a model, in the graph's topological order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchSpace {
    /// The searchable edges.
    pub edges: Vec<Edge>,
    /// The searched nodes.
    pub nodes: Vec<SearchNode>,
}

/// Why a model is not a search space.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// The model has no `choose`.
    #[error("model `{0}` has no `choose`: there is nothing to search")]
    NoChoose(String),
    /// The graph has a cycle (it did not verify).
    #[error("model `{0}` is not acyclic")]
    Cyclic(String),
}

impl SearchSpace {
    /// The search space of `graph`.
    ///
    /// # Errors
    ///
    /// [`SpaceError::NoChoose`] for a model without `choose`.
    pub fn of(graph: &Graph) -> Result<SearchSpace, SpaceError> {
        let is_choose = |id| graph.node(id).op == Op::Choose;
        let nodes: BTreeSet<String> = graph
            .node_ids()
            .filter(|&id| {
                is_choose(id) && {
                    let operands = graph.operands(id);
                    !operands.is_empty()
                        && operands.iter().all(|&o| edge_choose(graph, o).is_some())
                }
            })
            .map(|id| graph.node(id).name.clone())
            .collect();
        SearchSpace::with_nodes(graph, &nodes)
    }

    /// The search space of `graph` whose searched nodes are the chooses
    /// `nodes` names: those of the supernet as written, once a reduction
    /// has left an edge whose only operation is a skip from a node (a choose
    /// of one choose, which [`of`](Self::of) would take for a node).
    ///
    /// # Errors
    ///
    /// [`SpaceError::NoChoose`] for a model without `choose`.
    pub fn with_nodes(graph: &Graph, nodes: &BTreeSet<String>) -> Result<SearchSpace, SpaceError> {
        let order = graph
            .topo_order()
            .map_err(|_| SpaceError::Cyclic(graph.name.clone()))?;
        let is_choose = |id| graph.node(id).op == Op::Choose;
        let is_node = |id| is_choose(id) && nodes.contains(&graph.node(id).name);
        let mut edges = Vec::new();
        let mut edge_index = std::collections::HashMap::new();
        for &id in &order {
            if !is_choose(id) || is_node(id) {
                continue;
            }
            let name = graph.node(id).name.clone();
            let operands = graph.operands(id);
            edge_index.insert(id, edges.len());
            edges.push(Edge {
                ops: operands
                    .iter()
                    .map(|&o| op_label(graph, &name, o))
                    .collect(),
                zero: operands
                    .iter()
                    .map(|&o| graph.node(o).op == Op::Zero)
                    .collect(),
                choose: name,
                node: None,
            });
        }
        let mut nodes = Vec::new();
        for &id in &order {
            if !is_node(id) {
                continue;
            }
            let name = graph.node(id).name.clone();
            let mut list = Vec::new();
            for (k, o) in graph.operands(id).into_iter().enumerate() {
                // A node of nodes (a `choose` of searched nodes) is not a
                // PC-DARTS node; its operands are left as they are.
                let Some(&e) = edge_choose(graph, o).and_then(|c| edge_index.get(&c)) else {
                    continue;
                };
                if edges[e].node.is_none() {
                    edges[e].node = Some((name.clone(), k));
                }
                list.push(e);
            }
            nodes.push(SearchNode {
                choose: name,
                edges: list,
            });
        }
        if edges.is_empty() && nodes.is_empty() {
            return Err(SpaceError::NoChoose(graph.name.clone()));
        }
        Ok(SearchSpace { edges, nodes })
    }

    /// The names of the architecture parameters: every edge's α and every
    /// node's β (both stored as the choose's `NAME.alpha`).
    pub fn arch_params(&self) -> BTreeSet<String> {
        self.edges
            .iter()
            .map(|e| format!("{}.alpha", e.choose))
            .chain(self.nodes.iter().map(|n| format!("{}.alpha", n.choose)))
            .collect()
    }

    /// The names of the searched nodes.
    pub fn node_names(&self) -> BTreeSet<String> {
        self.nodes.iter().map(|n| n.choose.clone()).collect()
    }

    /// The edge named `choose`.
    pub fn edge(&self, choose: &str) -> Option<&Edge> {
        self.edges.iter().find(|e| e.choose == choose)
    }
}

/// A short name for alternative `alt` of the edge `choose`: `zero`, the
/// pool, `skip` (a node from outside the alternative, i.e. the edge's input,
/// or an `identity`), or the first
/// convolution inside the alternative (`sep_conv_3x3` for a depthwise one,
/// `dil_conv_3x3` for a dilated one, `conv_3x3` otherwise, `bconv_...` for
/// `bconv2d`).
pub fn op_label(graph: &Graph, choose: &str, alt: crate::ir::graph::NodeId) -> String {
    let node = graph.node(alt);
    let inside = |name: &str| name.starts_with(&format!("{choose}.")) || name == choose;
    match &node.op {
        Op::Zero => return "zero".into(),
        Op::Identity => return "skip".into(),
        // A pool may be bound outside the choose (shared with `zero`).
        Op::MaxPool(p) => return format!("max_pool_{}x{}", p.kernel[0], p.kernel[1]),
        Op::AvgPool(p) => return format!("avg_pool_{}x{}", p.kernel[0], p.kernel[1]),
        _ if !inside(&node.name) => return "skip".into(),
        _ => {}
    }
    // The first convolution upstream of the alternative, inside it.
    let mut stack = vec![alt];
    let mut seen = BTreeSet::new();
    let mut first = None;
    while let Some(id) = stack.pop() {
        if !seen.insert(id) || !inside(&graph.node(id).name) {
            continue;
        }
        let conv = match &graph.node(id).op {
            Op::Conv2d(c) => Some(("", c.geometry)),
            Op::BConv2d(c) => Some(("b", c.geometry)),
            _ => None,
        };
        if let Some(c) = conv {
            // The earliest in the graph's numbering is the first conv.
            if first
                .as_ref()
                .is_none_or(|(f, _): &(crate::ir::graph::NodeId, _)| id < *f)
            {
                first = Some((id, c));
            }
        }
        stack.extend(graph.operands(id));
    }
    match first {
        Some((_, (b, g))) => {
            let kind = if g.dilation[0] > 1 || g.dilation[1] > 1 {
                "dil_conv"
            } else if g.groups > 1 {
                "sep_conv"
            } else {
                "conv"
            };
            format!("{b}{kind}_{}x{}", g.kernel[0], g.kernel[1])
        }
        None => node.op.name().to_string(),
    }
}
