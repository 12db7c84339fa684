//! The reference interpreter: the oracle every other engine is tested against.
//!
//! It runs a verified [`Graph`] on a batch of `N` samples, one plain function
//! per op, each commented with the formula it computes (`ir-spec/ops.md` gives
//! the same semantics in prose). Clarity comes first; speed second, through
//! loop order only: convolutions accumulate whole output rows
//! (`y[o][i][·] += w · xpad[c][i·sh + u·dh][· · sw + v·dw]`) with the weight
//! loops outside the pixel loops, so the inner loop is contiguous.
//!
//! Conventions:
//! - every runtime tensor is `[N, ...per-sample dims]` in C order, the
//!   per-sample dims being the node's type in the IR;
//! - bit tensors are held as `±1.0` f32 values;
//! - binary layers use `sign(w)` of their latent weights, with
//!   `sign(w) = +1` if `w >= 0` else `−1`. Their sums of `±1` (and `0` or `+1`
//!   padding) products are exact integers in f32 up to 2^24 terms, so a
//!   xor-popcount engine can match them bit for bit; only the optional
//!   scale (`scale=channel|learned`) rounds.
//! - sums run in the order the formulas are written (left to right over the
//!   reduced indices), in f32, without fused multiply-adds.
//!
//! Before computing anything, [`run`] and [`run_all`] verify the graph and
//! check the inputs and every parameter, so a bad call returns an
//! [`InterpError`] instead of panicking.
//!
//! This file holds the driver (checks, evaluation order, one dispatch per
//! op); the ops live by family: `layers` (convolutions, dense layers, their
//! binary forms, scales and folded epilogues), `elementwise` (per-element
//! and per-channel ops, and those that combine or reshape tensors), `pool`,
//! `loss_terms`, and `backward` (the `grad` rules of training graphs).

use std::collections::HashMap;

mod backward;
mod elementwise;
mod layers;
pub mod loss_terms;
mod pool;
#[cfg(test)]
mod tests;

pub use elementwise::{batchnorm_std, batchnorm_value, batchnorm_with_std};
pub use layers::{
    affine_value, channel_scales, layer_weights, projected, scale_factors, threshold_value,
};
pub(crate) use layers::{layer_alpha, layer_projection};

use elementwise::*;
use layers::*;
use pool::*;

use super::graph::{Graph, Node, NodeId};
use super::ops::{BConv2d, Conv2d, ConvGeometry, Op, Stats};
use super::params::{Params, Tensor};
use super::types::Extent;
use super::verify::{VerifyError, verify};

/// Why the interpreter cannot run a graph on the given inputs and parameters.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InterpError {
    /// The graph does not verify. A cycle is reported here, as
    /// [`VerifyError::Cycle`]. (Boxed: a `VerifyError` is large.)
    #[error("the graph is invalid: {0}")]
    Verify(Box<VerifyError>),
    /// A threshold direction is not ±1.
    #[error("parameter `{name}` must hold ±1, but channel {channel} is {value}")]
    BadDirection {
        /// The parameter.
        name: String,
        /// The offending channel.
        channel: usize,
        /// Its value.
        value: f32,
    },
    /// Another problem with a parameter's values.
    #[error("{0}")]
    Param(super::param_check::ParamError),
    /// The caller passed the wrong number of input arrays.
    #[error("model `{model}` takes {expected} input{}, found {found}", plural(*.expected))]
    InputCount {
        /// The model's name.
        model: String,
        /// How many inputs the graph declares.
        expected: usize,
        /// How many arrays were passed.
        found: usize,
    },
    /// An input array's shape is not `[N, ...declared dims]`.
    #[error("input `{name}` must be {}, found {found:?}", batched(.expected))]
    InputShape {
        /// The input's name.
        name: String,
        /// The declared per-sample dims (without the batch dimension).
        expected: Vec<usize>,
        /// The array's full shape.
        found: Vec<usize>,
    },
    /// Two inputs disagree on the batch size.
    #[error(
        "input `{name}` has batch size {found}, but input `{first}` has {expected}; all inputs share one batch size"
    )]
    BatchSize {
        /// The odd input.
        name: String,
        /// Its batch size.
        found: usize,
        /// The first input, which sets the batch size.
        first: String,
        /// The first input's batch size.
        expected: usize,
    },
    /// An input array holds a different number of values than its shape says.
    #[error("input `{name}` is shaped {shape:?} but holds {len} values")]
    InputData {
        /// The input's name.
        name: String,
        /// The array's shape.
        shape: Vec<usize>,
        /// How many values it holds.
        len: usize,
    },
    /// A parameter the graph needs is absent.
    #[error("missing parameter `{name}`: expected f32{expected:?}")]
    MissingParam {
        /// The parameter's full name (`NODE.weight`).
        name: String,
        /// The shape it should have.
        expected: Vec<usize>,
    },
    /// A parameter has the wrong shape.
    #[error("parameter `{name}` must be {expected:?}, found {found:?}")]
    ParamShape {
        /// The parameter's full name.
        name: String,
        /// The shape it should have.
        expected: Vec<usize>,
        /// The shape it has.
        found: Vec<usize>,
    },
    /// A parameter holds a different number of values than its shape says.
    #[error("parameter `{name}` is shaped {shape:?} but holds {len} values")]
    ParamData {
        /// The parameter's full name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// How many values it holds.
        len: usize,
    },
    /// A convolution's padded input (one sample) would not fit in memory;
    /// only absurd padding and dilation attributes do that.
    #[error("node `{node}`: the padded input of the convolution would not fit in memory")]
    PaddingTooLarge {
        /// The convolution node.
        node: String,
    },
    /// The batch is too large to hold some node's value in memory.
    #[error("batch size {batch} is too large: the value of node `{node}` would not fit in memory")]
    TooLarge {
        /// The node.
        node: String,
        /// The batch size.
        batch: usize,
    },
}

impl From<VerifyError> for InterpError {
    fn from(e: VerifyError) -> InterpError {
        InterpError::Verify(Box::new(e))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Formats per-sample dims with the batch dimension in front: `[N, 1, 8, 8]`.
fn batched(dims: &[usize]) -> String {
    let mut s = String::from("[N");
    for d in dims {
        s.push_str(&format!(", {d}"));
    }
    s.push(']');
    s
}

/// Runs `graph` on a batch; inputs in the graph's input order, each shaped
/// `[N, ...per-sample dims]`; returns the outputs in output order, each
/// `[N, ...dims]`, bits written as ±1.0.
///
/// Intermediate values are dropped as soon as their last user has run.
pub fn run(graph: &Graph, params: &Params, inputs: &[Tensor]) -> Result<Vec<Tensor>, InterpError> {
    let values = evaluate(graph, params, inputs, Keep::Outputs)?;
    Ok(graph.outputs().iter().map(|o| values[o].clone()).collect())
}

/// Same as [`run`], but returns the value of every node of the graph, keyed by
/// id (for pass tests and debugging). Each value is `[N, ...the node's dims]`;
/// input nodes map to copies of the caller's arrays.
pub fn run_all(
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
) -> Result<HashMap<NodeId, Tensor>, InterpError> {
    evaluate(graph, params, inputs, Keep::All)
}

/// Which values [`evaluate`] returns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Only the outputs' (intermediates are freed after their last use).
    Outputs,
    /// Every node's.
    All,
}

/// Checks everything, then evaluates the nodes in topological order.
fn evaluate(
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
    keep: Keep,
) -> Result<HashMap<NodeId, Tensor>, InterpError> {
    verify(graph)?;
    let batch = check_inputs(graph, inputs)?;
    check_params(graph, params)?;
    // `verify` succeeded, so there is no cycle; map the error anyway rather
    // than unwrap.
    let order = graph.topo_order().map_err(|cycle| {
        VerifyError::Cycle(
            cycle
                .iter()
                .map(|&id| graph.node(id).name.clone())
                .collect(),
        )
    })?;
    for &id in &order {
        let node = graph.node(id);
        let too_large = || InterpError::TooLarge {
            node: node.name.clone(),
            batch,
        };
        let elements = node
            .ty
            .shape
            .elements()
            .checked_mul(batch)
            .ok_or_else(too_large)?;
        if !fits_in_memory(elements) {
            return Err(too_large());
        }
        if let Op::Conv2d(Conv2d { geometry, .. }) | Op::BConv2d(BConv2d { geometry, .. }) =
            &node.op
        {
            let padded = padded_elements(graph.operand_types(id)[0].dims(), geometry);
            if !padded.is_some_and(fits_in_memory) {
                return Err(InterpError::PaddingTooLarge {
                    node: node.name.clone(),
                });
            }
        }
    }

    // For `Keep::Outputs`: the position in `order` of each node's last user.
    let mut last_use: HashMap<NodeId, usize> = HashMap::new();
    for (pos, &id) in order.iter().enumerate() {
        for o in graph.operands(id) {
            last_use.insert(o, pos);
        }
    }

    let mut values: HashMap<NodeId, Tensor> = HashMap::with_capacity(order.len());
    for (pos, &id) in order.iter().enumerate() {
        let node = graph.node(id);
        let operand_ids = graph.operands(id);
        let value = {
            // Topological order puts every operand before its users, and an
            // operand is freed only after its last user (below).
            let operands: Vec<&Tensor> = operand_ids.iter().map(|o| &values[o]).collect();
            eval_node(graph, params, inputs, id, node, &operands)?
        };
        match node.ty.extent {
            Extent::Sample => {
                debug_assert_eq!(value.shape[0], batch);
                debug_assert_eq!(&value.shape[1..], node.ty.dims(), "node `{}`", node.name);
            }
            Extent::Batch => debug_assert_eq!(value.shape, node.ty.dims(), "node `{}`", node.name),
        }
        debug_assert_eq!(value.data.len(), value.shape.iter().product::<usize>());
        values.insert(id, value);
        if keep == Keep::Outputs {
            for o in operand_ids {
                if last_use.get(&o) == Some(&pos) && !graph.outputs().contains(&o) {
                    values.remove(&o);
                }
            }
            if !last_use.contains_key(&id) && !graph.outputs().contains(&id) {
                values.remove(&id);
            }
        }
    }
    Ok(values)
}

/// Whether `elements` f32 values can be allocated at all.
fn fits_in_memory(elements: usize) -> bool {
    elements <= isize::MAX as usize / size_of::<f32>()
}

/// `C·(H + 2ph)·(W + 2pw)`: the size of the padded sample [`convolve`]
/// builds, if it does not overflow. `dims` is the operand's `[C, H, W]`.
fn padded_elements(dims: &[usize], g: &ConvGeometry) -> Option<usize> {
    let &[c, h, w] = dims else { return None };
    let hp = g.pad[0].checked_mul(2)?.checked_add(h)?;
    let wp = g.pad[1].checked_mul(2)?.checked_add(w)?;
    c.checked_mul(hp)?.checked_mul(wp)
}

/// Checks the input arrays against the graph's declared inputs; returns the
/// batch size.
fn check_inputs(graph: &Graph, inputs: &[Tensor]) -> Result<usize, InterpError> {
    let declared = graph.inputs();
    if inputs.len() != declared.len() {
        return Err(InterpError::InputCount {
            model: graph.name.clone(),
            expected: declared.len(),
            found: inputs.len(),
        });
    }
    let mut batch: Option<(usize, &str)> = None;
    for (&id, t) in declared.iter().zip(inputs) {
        let node = graph.node(id);
        let dims = node.ty.dims();
        let (n, rest) = match t.shape.split_first() {
            Some((&n, rest)) if rest == dims => (n, rest),
            _ => {
                return Err(InterpError::InputShape {
                    name: node.name.clone(),
                    expected: dims.to_vec(),
                    found: t.shape.clone(),
                });
            }
        };
        match batch {
            None => batch = Some((n, &node.name)),
            Some((expected, first)) if expected != n => {
                return Err(InterpError::BatchSize {
                    name: node.name.clone(),
                    found: n,
                    first: first.to_string(),
                    expected,
                });
            }
            Some(_) => {}
        }
        // The per-sample part matches a verified type, so it is at most
        // 2^32 elements; the product with `n` may still overflow.
        let elements = rest.iter().product::<usize>().checked_mul(n);
        if elements != Some(t.data.len()) {
            return Err(InterpError::InputData {
                name: node.name.clone(),
                shape: t.shape.clone(),
                len: t.data.len(),
            });
        }
    }
    // `verify` guarantees at least one input.
    Ok(batch.map_or(0, |(n, _)| n))
}

/// Checks, before any work, that every parameter of the graph is present with
/// the right shape and length. (The op functions check again as they fetch,
/// through the same [`param`] function, against shapes they derive themselves.)
/// The validation every engine shares ([`super::param_check`]).
fn check_params(graph: &Graph, params: &Params) -> Result<(), InterpError> {
    use super::param_check::{ParamError, validate};
    validate(graph, params).map_err(|e| match e {
        ParamError::Missing { name, expected } => InterpError::MissingParam { name, expected },
        ParamError::Shape {
            name,
            expected,
            found,
        } => InterpError::ParamShape {
            name,
            expected,
            found,
        },
        ParamError::Data { name, shape, len } => InterpError::ParamData { name, shape, len },
        ParamError::Direction {
            name,
            channel,
            value,
        } => InterpError::BadDirection {
            name,
            channel,
            value,
        },
        other => InterpError::Param(other),
    })
}

/// The parameter `name`, checked to have shape `expected` and matching data.
fn param<'p>(params: &'p Params, name: &str, expected: &[usize]) -> Result<&'p [f32], InterpError> {
    let t = params.get(name).ok_or_else(|| InterpError::MissingParam {
        name: name.to_string(),
        expected: expected.to_vec(),
    })?;
    if t.shape != expected {
        return Err(InterpError::ParamShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: t.shape.clone(),
        });
    }
    if t.data.len() != expected.iter().product::<usize>() {
        return Err(InterpError::ParamData {
            name: name.to_string(),
            shape: t.shape.clone(),
            len: t.data.len(),
        });
    }
    Ok(&t.data)
}

/// The per-sample dims of a runtime tensor (its shape without the batch axis).
fn sample_dims(t: &Tensor) -> &[usize] {
    &t.shape[1..]
}

/// Evaluates one node on its operands' values.
fn eval_node(
    graph: &Graph,
    params: &Params,
    inputs: &[Tensor],
    id: NodeId,
    node: &Node,
    x: &[&Tensor],
) -> Result<Tensor, InterpError> {
    let p =
        |suffix: &str, shape: &[usize]| param(params, &format!("{}.{suffix}", node.name), shape);
    // Per-sample channel count of the first operand (the axis that
    // batchnorm, prelu and concat work along; dense's K).
    let channels = || sample_dims(x[0]).first().copied().unwrap_or(0);
    Ok(match &node.op {
        Op::Input => {
            // `verify` checked that every input node is listed as an input,
            // and `check_inputs` that `inputs` matches that list.
            let k = graph
                .inputs()
                .iter()
                .position(|&i| i == id)
                .expect("verified: input nodes are declared inputs");
            inputs[k].clone()
        }
        Op::Conv2d(a) => {
            let w = p("weight", &conv_weight_shape(&a.geometry, channels()))?;
            let out = a.geometry.out_channels;
            let alpha = layer_alpha(params, &node.name, a.scale, w, out)?;
            let projection = layer_projection(params, &node.name, &node.op, channels())?;
            let v = projected(w, projection);
            let w = &layer_weights(a.weights, alpha.as_deref(), &v, out);
            let b = if a.bias {
                Some(p("bias", &[a.geometry.out_channels])?)
            } else {
                None
            };
            conv2d(x[0], a, w, b)
        }
        Op::BConv2d(a) => {
            let shape = conv_weight_shape(&a.geometry, channels());
            let projection = layer_projection(params, &node.name, &node.op, channels())?;
            let signs = binary_weights(params, &node.name, a.weights, &shape, projection)?;
            let dot = bconv2d(x[0], a, &signs);
            binary_output(params, node, a.output, a.scale, dot, &shape)?
        }
        Op::Dense(a) => {
            let w = p("weight", &[a.out_features, channels()])?;
            let out = a.out_features;
            let alpha = layer_alpha(params, &node.name, a.scale, w, out)?;
            let projection = layer_projection(params, &node.name, &node.op, channels())?;
            let v = projected(w, projection);
            let w = &layer_weights(a.weights, alpha.as_deref(), &v, out);
            let b = if a.bias {
                Some(p("bias", &[a.out_features])?)
            } else {
                None
            };
            dense(x[0], a, w, b)
        }
        Op::BDense(a) => {
            let shape = [a.out_features, channels()];
            let projection = layer_projection(params, &node.name, &node.op, channels())?;
            let signs = binary_weights(params, &node.name, a.weights, &shape, projection)?;
            let dot = matvec(x[0], &signs, a.out_features);
            binary_output(params, node, a.output, a.scale, dot, &shape)?
        }
        Op::Threshold => {
            let c = [channels()];
            threshold(
                x[0],
                p("threshold", &c)?,
                direction(p("direction", &c)?, &node.name)?,
            )
        }
        Op::Affine => {
            let c = [channels()];
            affine(x[0], p("multiplier", &c)?, p("bias", &c)?)
        }
        Op::Sign(_) => sign(x[0]),
        Op::BatchNorm(a) if a.stats == Stats::Batch => {
            backward::batchnorm_batch(params, &node.name, a, x[0])?
        }
        Op::CrossEntropy(a) => backward::cross_entropy(x[0], x[1], a),
        Op::RunningStat(a) => {
            let bn = &graph.node(graph.operands(id)[0]).name;
            backward::running_stat(params, bn, a, x[1])?
        }
        Op::Grad(g) => {
            // The node whose parameters the rule reads: the forward node,
            // or for a quantization loss the layer it regularises.
            let mut of = graph.operands(id)[0];
            if let Op::QuantizationLoss(_) = *g.of {
                of = graph.operands(of)[0];
            }
            backward::grad(params, &graph.node(of).name, g, x)?
        }
        Op::QuantizationLoss(a) => {
            let layer = &graph.node(graph.operands(id)[0]).name;
            let channels = sample_dims(x[1]).first().copied().unwrap_or(0);
            loss_terms::quantization_loss(params, layer, a, channels)?
        }
        Op::DistributionLoss(a) => loss_terms::distribution_loss(x[0], a),
        Op::BatchNorm(a) => {
            let c = [channels()];
            let bn = BatchNormParams {
                gamma: p("weight", &c)?,
                beta: p("bias", &c)?,
                mean: p("running_mean", &c)?,
                var: p("running_var", &c)?,
            };
            batchnorm(x[0], a, &bn)
        }
        Op::Relu => relu(x[0]),
        Op::PRelu => prelu(x[0], p("weight", &[channels()])?),
        Op::Shift => shift(x[0], p("bias", &[channels()])?),
        Op::HardTanh(a) => hardtanh(x[0], a),
        Op::MaxPool(a) => maxpool(x[0], a),
        Op::AvgPool(a) => avgpool(x[0], a),
        Op::GlobalAvgPool => global_avgpool(x[0]),
        Op::Flatten => flatten(x[0]),
        Op::Add => add(x),
        Op::Concat => concat(x),
        Op::SliceChannels(_) | Op::ShuffleChannels(_) => {
            let map = node
                .op
                .channel_sources(channels())
                .expect("the op picks channels");
            gather_channels(x[0], &map)
        }
        Op::Zero => zero(x[0]),
        Op::Identity => x[0].clone(),
        Op::Choose => choose(x, p("alpha", &[x.len()])?),
    })
}
