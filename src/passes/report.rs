//! The report of an optimisation run: what each layer became, what was fused
//! into it, why real-valued work remains between binary layers, and the
//! totals (MACs, model size, activation memory).
//!
//! `onebit check MODEL --passes default` prints it ([`PassReport`]'s
//! `Display`). A node is *between binary layers* when a binary layer is among
//! its ancestors and another among its descendants: that is where real work
//! costs the most, since the values must be unpacked and repacked around it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use super::plan_memory::{MemoryPlan, plan};
use super::{Changed, PassLog};
use crate::ir::graph::{Graph, NodeId};
use crate::ir::ops::{BinaryOutput, Op, WeightForm};
use crate::ir::summary::{Summary, thousands};
use crate::ir::types::DType;

/// How a node computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// A binary layer (xor-popcount).
    Binary,
    /// Moves or pools bits only (maxpool, flatten, concat, identity on bits).
    Bits,
    /// Real-valued arithmetic (including binarizing a real value).
    Real,
}

impl Runs {
    fn word(self) -> &'static str {
        match self {
            Runs::Binary => "binary",
            Runs::Bits => "bits",
            Runs::Real => "real",
        }
    }
}

/// One node of the final graph.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// The node's name.
    pub name: String,
    /// The op, with a binary layer's output and weight forms (`bconv2d
    /// threshold packed`).
    pub op: String,
    /// The result type.
    pub output: String,
    /// How it computes.
    pub runs: Runs,
    /// The ops fused into it, in order.
    pub fused: Vec<String>,
    /// Whether it is a real op between two binary layers.
    pub between_binary: bool,
    /// Why it is as it is: the passes' notes, or for a real op between binary
    /// layers without one, what keeps it real.
    pub why: Vec<String>,
}

/// What [`optimize`](super::optimize) did, and the resulting model's totals.
#[derive(Clone, Debug, PartialEq)]
pub struct PassReport {
    /// The model's name.
    pub model: String,
    /// The passes that ran, in order, and whether each changed the graph.
    pub passes: Vec<(&'static str, Changed)>,
    /// Every node except the inputs, in topological order.
    pub layers: Vec<LayerReport>,
    /// Binary MACs per sample.
    pub binary_macs: u64,
    /// Real MACs per sample.
    pub real_macs: u64,
    /// Parameter bytes, binary weights at one bit.
    pub packed_bytes: u64,
    /// Parameter bytes, everything as float32.
    pub float_bytes: u64,
    /// The activation memory plan.
    pub memory: MemoryPlan,
}

fn op_label(graph: &Graph, id: NodeId) -> String {
    let (output, weights) = match &graph.node(id).op {
        Op::BConv2d(a) => (a.output, a.weights),
        Op::BDense(a) => (a.output, a.weights),
        op => return op.name().to_string(),
    };
    let mut s = graph.node(id).op.name().to_string();
    if output != BinaryOutput::Dot {
        s += &format!(" {}", output.name());
    }
    if weights == WeightForm::Packed {
        s += " packed";
    }
    s
}

fn runs(graph: &Graph, id: NodeId) -> Runs {
    let node = graph.node(id);
    if node.op.kind().is_binary_layer() {
        return Runs::Binary;
    }
    let bits_in = graph
        .operand_types(id)
        .iter()
        .all(|t| t.dtype == DType::Bit);
    if bits_in && node.ty.dtype == DType::Bit {
        Runs::Bits
    } else {
        Runs::Real
    }
}

/// What keeps a real node between binary layers real, when no pass said.
fn default_reason(graph: &Graph, id: NodeId) -> String {
    let node = graph.node(id);
    let operand = |i: usize| {
        graph
            .operands(id)
            .get(i)
            .map(|&o| format!("{} `{}`", graph.node(o).op.name(), graph.node(o).name))
            .unwrap_or_default()
    };
    match node.op {
        Op::Add => "real shortcut: adds f32 values (bits cannot carry a sum)".into(),
        Op::Sign(_) => format!("binarizes the real output of {}", operand(0)),
        Op::Threshold => format!(
            "binarizes the real output of {} (no layer to fuse into)",
            operand(0)
        ),
        Op::Concat => "concatenates real values".into(),
        _ => format!("`{}` has no binary form", node.op.name()),
    }
}

/// Nodes reachable from `start` along `next`, excluding `start`.
fn reach(start: NodeId, next: &dyn Fn(NodeId) -> Vec<NodeId>) -> HashSet<NodeId> {
    let mut seen = HashSet::new();
    let mut stack = next(start);
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(next(n));
        }
    }
    seen
}

impl PassReport {
    /// The report for `graph` after the passes `passes`, from their log.
    pub fn new(graph: &Graph, log: &PassLog, passes: Vec<(&'static str, Changed)>) -> PassReport {
        let order = graph
            .topo_order()
            .unwrap_or_else(|_| graph.node_ids().collect());
        let binary: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|&id| graph.node(id).op.kind().is_binary_layer())
            .collect();
        // Nodes with a binary ancestor, and with a binary descendant.
        let mut below: HashSet<NodeId> = HashSet::new();
        let mut above: HashSet<NodeId> = HashSet::new();
        for &b in &binary {
            below.extend(reach(b, &|n| graph.users(n)));
            above.extend(reach(b, &|n| graph.operands(n)));
        }
        let layers = order
            .iter()
            .copied()
            .filter(|&id| graph.node(id).op != Op::Input)
            .map(|id| {
                let node = graph.node(id);
                let r = runs(graph, id);
                let between_binary = r == Runs::Real && below.contains(&id) && above.contains(&id);
                let mut why: Vec<String> = log
                    .notes
                    .get(&node.name)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                if between_binary && why.is_empty() {
                    why.push(default_reason(graph, id));
                }
                LayerReport {
                    name: node.name.clone(),
                    op: op_label(graph, id),
                    output: node.ty.to_string(),
                    runs: r,
                    fused: log.fused.get(&node.name).cloned().unwrap_or_default(),
                    between_binary,
                    why,
                }
            })
            .collect();
        let summary = Summary::new(graph);
        let total = |f: &dyn Fn(&crate::ir::summary::Row) -> u64| -> u64 {
            summary.rows.iter().map(f).sum()
        };
        PassReport {
            model: graph.name.clone(),
            passes,
            layers,
            binary_macs: total(&|r| r.binary_macs),
            real_macs: total(&|r| r.real_macs),
            packed_bytes: summary.packed_bytes(),
            float_bytes: summary.float_bytes(),
            memory: log.memory.clone().unwrap_or_else(|| plan(graph)),
        }
    }

    /// The real nodes left between binary layers.
    pub fn real_between_binary(&self) -> impl Iterator<Item = &LayerReport> {
        self.layers.iter().filter(|l| l.between_binary)
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let passes: Vec<String> = self
            .passes
            .iter()
            .map(|(p, c)| match c {
                Changed::Yes => p.to_string(),
                Changed::No => format!("{p} (no change)"),
            })
            .collect();
        writeln!(f, "model {}", self.model)?;
        if passes.is_empty() {
            writeln!(f, "passes: none")?;
        } else {
            writeln!(f, "passes: {}", passes.join(", "))?;
        }
        let widths = self.layers.iter().fold([5, 2, 6], |w, l| {
            [
                w[0].max(l.name.chars().count()),
                w[1].max(l.op.chars().count()),
                w[2].max(l.output.chars().count()),
            ]
        });
        let [a, b, c] = widths;
        writeln!(
            f,
            "{:<a$}  {:<b$}  {:<c$}  {:<6}  fused / why",
            "layer", "op", "output", "runs"
        )?;
        writeln!(f, "{}", "-".repeat(a + b + c + 6 + 20))?;
        for l in &self.layers {
            let mut notes: Vec<String> = Vec::new();
            if !l.fused.is_empty() {
                notes.push(format!("fused: {}", l.fused.join(", ")));
            }
            for w in &l.why {
                notes.push(if l.between_binary {
                    format!("real between binary layers: {w}")
                } else {
                    w.clone()
                });
            }
            let line = format!(
                "{:<a$}  {:<b$}  {:<c$}  {:<6}  {}",
                l.name,
                l.op,
                l.output,
                l.runs.word(),
                notes.join("; ")
            );
            writeln!(f, "{}", line.trim_end())?;
        }
        writeln!(f)?;
        let macs = self.binary_macs + self.real_macs;
        let share = if macs == 0 {
            0.0
        } else {
            100.0 * self.binary_macs as f64 / macs as f64
        };
        writeln!(
            f,
            "MACs per sample: {} binary, {} real ({share:.1}% binary)",
            thousands(self.binary_macs),
            thousands(self.real_macs)
        )?;
        let ratio = if self.packed_bytes == 0 {
            0.0
        } else {
            self.float_bytes as f64 / self.packed_bytes as f64
        };
        writeln!(
            f,
            "model size: {} bytes packed, {} bytes as float32 ({ratio:.1}x smaller)",
            thousands(self.packed_bytes),
            thousands(self.float_bytes)
        )?;
        let real: BTreeMap<&str, usize> =
            self.real_between_binary()
                .fold(BTreeMap::new(), |mut m, l| {
                    *m.entry(l.op.as_str()).or_default() += 1;
                    m
                });
        let real: Vec<String> = real.iter().map(|(op, n)| format!("{n} {op}")).collect();
        writeln!(
            f,
            "real ops between binary layers: {}",
            if real.is_empty() {
                "none".into()
            } else {
                real.join(", ")
            }
        )?;
        write!(f, "peak activation memory: {}", self.memory)?;
        Ok(())
    }
}
