//! `eliminate_dead_nodes`: remove nodes that no output depends on, and
//! renumber.
//!
//! **Pattern.** A node from which no model output can be reached. Model inputs
//! are never removed: they are the model's signature.
//!
//! **Rewrite.** The node and its parameters go away. The graph is then rebuilt
//! in its deterministic topological order (inputs first, then, among ready
//! nodes, the earliest in the previous order), so node ids are dense and the
//! printed IR is stable: it changes only where the graph changed. The rebuild
//! happens even when nothing is removed.
//!
//! **Soundness.** The interpreter computes outputs from the values their
//! operands transitively need; a node outside that set contributes nothing to
//! any output, and no op has side effects.

use std::collections::HashSet;

use super::patch::Patch;
use super::{Changed, PassCx, PassError};
use crate::ir::graph::{Graph, NodeId};

/// The nodes some model output depends on (inputs included, always).
pub fn live_nodes(graph: &Graph) -> HashSet<NodeId> {
    let mut live: HashSet<NodeId> = graph.inputs().iter().copied().collect();
    let mut stack: Vec<NodeId> = graph.outputs().to_vec();
    while let Some(id) = stack.pop() {
        if live.insert(id) {
            stack.extend(graph.operands(id));
        }
    }
    live
}

/// Removes the dead nodes of `graph` (and their parameters); rebuilds it.
/// Returns whether anything was removed.
pub fn remove_dead(graph: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
    let live = live_nodes(graph);
    let mut patch = Patch::new();
    let mut removed = false;
    for id in graph.node_ids() {
        if !live.contains(&id) {
            patch.remove(id);
            removed = true;
        }
    }
    cx.apply(patch, graph)?;
    Ok(removed)
}

/// Runs the pass.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    Ok(Changed::from(remove_dead(graph, cx)?))
}
