//! The execution plan: the graph flattened once into a list of steps in
//! topological order, views resolved, liveness computed, and (per batch
//! size) a static assignment of values to reusable buffers.
//!
//! Values are numbered by their position in the order. A *view* (`flatten`,
//! `identity`, and the `grad` of `flatten`/`identity`/`add`, which pass the
//! upstream gradient through unchanged) computes nothing: it shares its
//! source's storage, so its source stays alive until the view's last use.
//! Buffers are assigned by a linear scan over the order, best fit from a
//! free list, and a buffer returns to the free list right after the step
//! that uses its value last (never before that step has written its own
//! output, so an op never reads and writes one buffer). The assignment
//! depends only on the batch size, so it is made once per batch size and
//! every later run of that size allocates nothing but its returned outputs.

use std::collections::HashMap;

use crate::ir::graph::{Graph, NodeId};
use crate::ir::ops::{ConvGeometry, Op, Scale, WeightForm, WeightKind, Wrt};
use crate::ir::params::{ParamSpec, graph_params};
use crate::ir::types::Extent;
use crate::ir::verify::{VerifyError, verify};

use super::EngineError;

/// One node of the graph, with everything its kernel needs resolved.
#[derive(Clone, Debug)]
pub(super) struct Step {
    /// The node's name (parameters are `NAME.weight` and so on).
    pub name: String,
    /// The op.
    pub op: Op,
    /// Operand value indices, in slot order.
    pub operands: Vec<usize>,
    /// Per-sample dims of each operand (whole dims for batch-extent ones).
    pub operand_dims: Vec<Vec<usize>>,
    /// Per-sample dims of the result, or its whole dims for batch extent.
    pub dims: Vec<usize>,
    /// Per sample or per batch.
    pub extent: Extent,
    /// For a view: the value whose storage it shares.
    pub view_of: Option<usize>,
    /// For `grad` and `running_stat`: the name of the forward (or batchnorm) node.
    pub of_name: String,
    /// Index into the engine's binary-weight or batchnorm caches, if the
    /// step (or the forward node it differentiates) has one.
    pub cache: Option<usize>,
    /// For `input`: its position among the graph's inputs.
    pub input: Option<usize>,
}

impl Step {
    /// Elements of the result for `batch` samples, if that fits in memory.
    pub fn elements(&self, batch: usize) -> Option<usize> {
        let per: usize = self.dims.iter().product();
        match self.extent {
            Extent::Sample => per
                .checked_mul(batch)
                .filter(|&n| n <= isize::MAX as usize / 4),
            Extent::Batch => Some(per),
        }
    }
}

/// A layer with binary weights (`bconv2d`, `bdense`, and `conv2d`/`dense`
/// with `weights=binary`) whose `sign(W)` (and XNOR scale) the engine
/// prepares once per run.
#[derive(Clone, Debug)]
pub(super) struct BinaryLayer {
    /// The layer's name.
    pub name: String,
    /// Output channels.
    pub out: usize,
    /// The weight shape.
    pub shape: Vec<usize>,
    /// Whether the weights are packed bits.
    pub packed: bool,
    /// The output scale.
    pub scale: Scale,
    /// Whether the forward pass runs the XNOR kernel on packed signs
    /// (`bdense`), so the signs are packed too.
    pub xnor: bool,
    /// The shape of PCNN's projection `NODE.projection` with
    /// `projection=true`: the layer takes the signs of `P∘W`.
    pub projection: Option<Vec<usize>>,
}

/// The whole plan.
#[derive(Debug)]
pub(super) struct Plan {
    /// The model's name.
    pub model: String,
    /// The steps, in topological order.
    pub steps: Vec<Step>,
    /// The output value indices.
    pub outputs: Vec<usize>,
    /// The value whose storage each value uses (itself unless a view).
    pub root: Vec<usize>,
    /// Per root: the position of its last use (`usize::MAX` for outputs).
    pub last_use: Vec<usize>,
    /// Binary layers, in cache order.
    pub binary: Vec<BinaryLayer>,
    /// Batchnorm nodes (name, channels), in cache order.
    pub batchnorms: Vec<(String, usize)>,
    /// Every parameter of the graph, checked before a run.
    pub params: Vec<ParamSpec>,
    /// The inputs' names and per-sample dims.
    pub inputs: Vec<(String, Vec<usize>)>,
}

/// The layer with binary weights `op` (named `name`, over `channels` input
/// channels), if it is one.
fn binary_layer(name: &str, op: &Op, channels: usize) -> Option<BinaryLayer> {
    let conv_shape = |g: &ConvGeometry| {
        vec![
            g.out_channels,
            channels / g.groups.max(1),
            g.kernel[0],
            g.kernel[1],
        ]
    };
    let (out, shape, packed, scale, xnor) = match op {
        Op::BConv2d(a) => {
            let g = &a.geometry;
            let packed = a.weights == WeightForm::Packed;
            (g.out_channels, conv_shape(g), packed, a.scale, false)
        }
        Op::BDense(a) => {
            let packed = a.weights == WeightForm::Packed;
            let shape = vec![a.out_features, channels];
            (a.out_features, shape, packed, a.scale, true)
        }
        Op::Conv2d(a) if a.weights == WeightKind::Binary => {
            let g = &a.geometry;
            (g.out_channels, conv_shape(g), false, a.scale, false)
        }
        Op::Dense(a) if a.weights == WeightKind::Binary => {
            let shape = vec![a.out_features, channels];
            (a.out_features, shape, false, a.scale, false)
        }
        _ => return None,
    };
    Some(BinaryLayer {
        name: name.to_string(),
        out,
        shape,
        packed,
        scale,
        xnor,
        projection: op.projection_shape(channels),
    })
}

/// Whether a node computes nothing and shares an operand's storage; returns
/// the operand slot it shares.
fn view_slot(op: &Op, operands: usize) -> Option<usize> {
    match op {
        Op::Flatten | Op::Identity => Some(0),
        Op::Grad(g) => match (&*g.of, g.wrt) {
            (Op::Flatten | Op::Identity | Op::Add, Wrt::Operand(_)) => Some(operands - 1),
            _ => None,
        },
        _ => None,
    }
}

impl Plan {
    /// Verifies `graph` and plans it.
    pub fn new(graph: &Graph) -> Result<Plan, EngineError> {
        verify(graph).map_err(|e| EngineError::Verify(Box::new(e)))?;
        let order = graph.topo_order().map_err(|cycle| {
            EngineError::Verify(Box::new(VerifyError::Cycle(
                cycle.iter().map(|&i| graph.node(i).name.clone()).collect(),
            )))
        })?;
        let position: HashMap<NodeId, usize> =
            order.iter().enumerate().map(|(p, &id)| (id, p)).collect();
        let mut binary: Vec<BinaryLayer> = Vec::new();
        let mut binary_index: HashMap<String, usize> = HashMap::new();
        let mut batchnorms: Vec<(String, usize)> = Vec::new();
        let mut bn_index: HashMap<String, usize> = HashMap::new();
        let mut steps = Vec::with_capacity(order.len());
        for &id in &order {
            let node = graph.node(id);
            let operand_ids = graph.operands(id);
            let operands: Vec<usize> = operand_ids.iter().map(|o| position[o]).collect();
            let operand_dims: Vec<Vec<usize>> = operand_ids
                .iter()
                .map(|&o| graph.node(o).ty.dims().to_vec())
                .collect();
            // The node that owns the parameters and caches this step uses.
            let (owner, owner_op, owner_in) = match &node.op {
                Op::Grad(_) | Op::RunningStat(_) | Op::QuantizationLoss(_) => {
                    // A quantization loss (and its gradient) reads the
                    // parameters and binary-weight cache of its layer.
                    let mut f = operand_ids[0];
                    if let Op::QuantizationLoss(_) = graph.node(f).op {
                        f = graph.operands(f)[0];
                    }
                    let fo = graph.operands(f);
                    (
                        graph.node(f).name.clone(),
                        graph.node(f).op.clone(),
                        fo.first().map(|&x| graph.node(x).ty.dims().to_vec()),
                    )
                }
                op => (node.name.clone(), op.clone(), operand_dims.first().cloned()),
            };
            let channels = owner_in
                .as_ref()
                .and_then(|d| d.first().copied())
                .unwrap_or(0);
            let cache = match binary_layer(&owner, &owner_op, channels) {
                Some(layer) => Some(*binary_index.entry(owner.clone()).or_insert_with(|| {
                    binary.push(layer);
                    binary.len() - 1
                })),
                None => match &owner_op {
                    Op::BatchNorm(_) => Some(*bn_index.entry(owner.clone()).or_insert_with(|| {
                        batchnorms.push((owner.clone(), channels));
                        batchnorms.len() - 1
                    })),
                    _ => None,
                },
            };
            let view_of = view_slot(&node.op, operands.len()).map(|s| operands[s]);
            let input = match node.op {
                Op::Input => graph.inputs().iter().position(|&i| i == id),
                _ => None,
            };
            steps.push(Step {
                name: node.name.clone(),
                op: node.op.clone(),
                operands,
                operand_dims,
                dims: node.ty.dims().to_vec(),
                extent: node.ty.extent,
                view_of,
                of_name: owner,
                cache,
                input,
            });
        }
        let mut root: Vec<usize> = (0..steps.len()).collect();
        for (p, s) in steps.iter().enumerate() {
            if let Some(v) = s.view_of {
                root[p] = root[v];
            }
        }
        let mut last_use: Vec<usize> = (0..steps.len()).collect();
        for (p, s) in steps.iter().enumerate() {
            for &o in &s.operands {
                last_use[root[o]] = last_use[root[o]].max(p);
            }
        }
        let outputs: Vec<usize> = graph.outputs().iter().map(|o| position[o]).collect();
        for &o in &outputs {
            last_use[root[o]] = usize::MAX;
        }
        let inputs = graph
            .inputs()
            .iter()
            .map(|&i| (graph.node(i).name.clone(), graph.node(i).ty.dims().to_vec()))
            .collect();
        Ok(Plan {
            model: graph.name.clone(),
            steps,
            outputs,
            root,
            last_use,
            binary,
            batchnorms,
            params: graph_params(graph),
            inputs,
        })
    }

    /// Assigns buffers for `batch` samples: where each value lives, and the
    /// size of each buffer.
    pub fn assign(&self, batch: usize) -> Result<(Vec<Loc>, Vec<usize>), EngineError> {
        let mut loc: Vec<Loc> = Vec::with_capacity(self.steps.len());
        let mut sizes: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for (p, s) in self.steps.iter().enumerate() {
            let here = if let Some(k) = s.input {
                Loc::Input(k)
            } else if let Some(v) = s.view_of {
                loc[v]
            } else {
                let need = s.elements(batch).ok_or_else(|| EngineError::TooLarge {
                    node: s.name.clone(),
                    batch,
                })?;
                // Best fit: the smallest free buffer that is large enough,
                // else the largest, grown.
                let fit = free
                    .iter()
                    .enumerate()
                    .filter(|&(_, &b)| sizes[b] >= need)
                    .min_by_key(|&(_, &b)| sizes[b])
                    .or_else(|| free.iter().enumerate().max_by_key(|&(_, &b)| sizes[b]))
                    .map(|(i, _)| i);
                let b = match fit {
                    Some(i) => free.swap_remove(i),
                    None => {
                        sizes.push(0);
                        sizes.len() - 1
                    }
                };
                sizes[b] = sizes[b].max(need);
                Loc::Buf(b)
            };
            loc.push(here);
            // Release what dies here: operands used for the last time, and
            // the value itself if nothing uses it.
            let mut dying: Vec<usize> = s.operands.iter().map(|&o| self.root[o]).collect();
            dying.push(self.root[p]);
            dying.sort_unstable();
            dying.dedup();
            for r in dying {
                if self.last_use[r] == p
                    && let Loc::Buf(b) = loc[r]
                {
                    free.push(b);
                }
            }
        }
        Ok((loc, sizes))
    }
}

/// Where a value lives during a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loc {
    /// In the caller's input array `k`.
    Input(usize),
    /// In engine buffer `b`.
    Buf(usize),
}
