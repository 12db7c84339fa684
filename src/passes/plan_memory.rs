//! `plan_memory`: liveness analysis and arena slots for the activations.
//!
//! **What it computes.** Every node's value (inputs and outputs included)
//! needs a buffer of `TensorType::bytes_per_sample` bytes per sample: 4 per
//! f32 element, bit tensors packed along channels into 64-bit words. In the
//! deterministic topological order (the order the interpreter and the code
//! generator run), a value is *live* from the step that computes it to the
//! step of its last user (model outputs: to the end). Two values whose live
//! intervals are disjoint can share memory.
//!
//! **Algorithm.** Greedy by size, first fit: values sorted by size
//! (largest first; ties in topological order) are placed, one by one, in the
//! first slot none of whose values is live at the same time, or in a new
//! slot. A slot's size is its first (largest) value's. The arena is the sum
//! of the slot sizes. The lower bound any assignment must meet, the largest
//! total size live at one step, is reported next to it.
//!
//! **Soundness.** The pass changes neither the graph nor the parameters; the
//! plan is advice for an engine, stored in the pass log and the report.
//! Aliasing (`flatten`, `identity` reusing their operand's buffer) and
//! in-place ops are not exploited.

use std::collections::HashMap;
use std::fmt;

use super::{Changed, PassCx, PassError};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::summary::thousands;

/// One planned buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The node whose value it holds.
    pub node: String,
    /// Bytes per sample.
    pub bytes: u64,
    /// First and last step (topological position) at which it is live.
    pub live: (usize, usize),
    /// The arena slot.
    pub slot: usize,
}

/// The activation memory plan of a graph (per sample).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Slot sizes in bytes; slot `i` starts at the sum of the sizes before it.
    pub slots: Vec<u64>,
    /// Every node's buffer, in topological order.
    pub buffers: Vec<Buffer>,
}

impl MemoryPlan {
    /// Bytes per sample of the arena: the sum of the slot sizes.
    pub fn arena_bytes(&self) -> u64 {
        self.slots.iter().sum()
    }

    /// Bytes per sample without reuse: every value its own buffer.
    pub fn unshared_bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.bytes).sum()
    }

    /// The largest total size of the values live at one step: the least any
    /// arena can need.
    pub fn live_peak_bytes(&self) -> u64 {
        let steps = self.buffers.iter().map(|b| b.live.1 + 1).max().unwrap_or(0);
        (0..steps)
            .map(|t| {
                self.buffers
                    .iter()
                    .filter(|b| b.live.0 <= t && t <= b.live.1)
                    .map(|b| b.bytes)
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes per sample in {} slots (live peak {}, {} without reuse)",
            thousands(self.arena_bytes()),
            self.slots.len(),
            thousands(self.live_peak_bytes()),
            thousands(self.unshared_bytes())
        )
    }
}

/// Plans the activation memory of `graph`.
pub fn plan(graph: &Graph) -> MemoryPlan {
    let order = graph
        .topo_order()
        .unwrap_or_else(|_| graph.node_ids().collect());
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let end = order.len().saturating_sub(1);
    let mut buffers: Vec<Buffer> = order
        .iter()
        .map(|&id| {
            let start = pos[&id];
            let mut last = graph
                .users(id)
                .iter()
                .map(|u| pos[u])
                .max()
                .unwrap_or(start);
            if graph.outputs().contains(&id) {
                last = end;
            }
            Buffer {
                node: graph.node(id).name.clone(),
                bytes: graph.node(id).ty.bytes_per_sample(),
                live: (start, last),
                slot: usize::MAX,
            }
        })
        .collect();
    let mut by_size: Vec<usize> = (0..buffers.len()).collect();
    by_size.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].bytes), buffers[i].live.0));
    let mut slots: Vec<u64> = Vec::new();
    let mut members: Vec<Vec<(usize, usize)>> = Vec::new();
    for i in by_size {
        let (a, b) = buffers[i].live;
        let free = members
            .iter()
            .position(|m| m.iter().all(|&(s, e)| e < a || b < s));
        let slot = free.unwrap_or_else(|| {
            slots.push(buffers[i].bytes);
            members.push(Vec::new());
            slots.len() - 1
        });
        members[slot].push((a, b));
        buffers[i].slot = slot;
    }
    MemoryPlan { slots, buffers }
}

/// Runs the pass: records the plan in the log; the graph is unchanged.
pub fn run(graph: &mut Graph, cx: &mut PassCx) -> Result<Changed, PassError> {
    cx.log.memory = Some(plan(graph));
    Ok(Changed::No)
}
