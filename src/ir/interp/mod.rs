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
//!   `Scale::Channel` factor is rounded.
//! - sums run in the order the formulas are written (left to right over the
//!   reduced indices), in f32, without fused multiply-adds.
//!
//! Before computing anything, [`run`] and [`run_all`] verify the graph and
//! check the inputs and every parameter, so a bad call returns an
//! [`InterpError`] instead of panicking.

use std::collections::HashMap;

mod backward;
pub mod loss_terms;

use super::graph::{Graph, Node, NodeId};
use super::ops::{
    BConv2d, BatchNorm, BinaryOutput, Conv2d, ConvGeometry, Dense, HardTanh, Op, PadValue, Pool,
    Scale, Stats, WeightForm, WeightKind,
};
use super::params::{Params, Tensor};
use super::types::Extent;
use super::verify::{VerifyError, verify};
use std::borrow::Cow;

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
            let w = &layer_weights(a.weights, alpha.as_deref(), w, out);
            let b = if a.bias {
                Some(p("bias", &[a.geometry.out_channels])?)
            } else {
                None
            };
            conv2d(x[0], a, w, b)
        }
        Op::BConv2d(a) => {
            let shape = conv_weight_shape(&a.geometry, channels());
            let signs = binary_weights(params, &node.name, a.weights, &shape)?;
            let dot = bconv2d(x[0], a, &signs);
            binary_output(params, node, a.output, a.scale, dot, &shape)?
        }
        Op::Dense(a) => {
            let w = p("weight", &[a.out_features, channels()])?;
            let out = a.out_features;
            let alpha = layer_alpha(params, &node.name, a.scale, w, out)?;
            let w = &layer_weights(a.weights, alpha.as_deref(), w, out);
            let b = if a.bias {
                Some(p("bias", &[a.out_features])?)
            } else {
                None
            };
            dense(x[0], a, w, b)
        }
        Op::BDense(a) => {
            let shape = [a.out_features, channels()];
            let signs = binary_weights(params, &node.name, a.weights, &shape)?;
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
        Op::Zero => zero(x[0]),
        Op::Identity => x[0].clone(),
        Op::Choose => choose(x, p("alpha", &[x.len()])?),
    })
}

/// `[O, C/G, kh, kw]`: the weight shape of a convolution over `c` channels.
fn conv_weight_shape(g: &ConvGeometry, c: usize) -> [usize; 4] {
    [g.out_channels, c / g.groups, g.kernel[0], g.kernel[1]]
}

/// The dims of a rank-4 runtime tensor `[N, C, H, W]`. Only called on
/// operands of ops whose typing rule requires `[C, H, W]` (checked by `verify`).
fn dims4(t: &Tensor) -> [usize; 4] {
    t.shape
        .as_slice()
        .try_into()
        .expect("verified: the operand is [C, H, W]")
}

/// One spatial output size of a window op: `(H + 2p − d·(k−1) − 1)/s + 1`.
/// The verifier checked that the window fits, so nothing underflows.
fn out_size(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> usize {
    (input + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1
}

/// `sign(x) = +1` if `x >= 0`, else `−1`: so `sign(0) = sign(−0) = +1`, and
/// `sign(NaN) = −1` (NaN is not `>= 0`).
fn sign_of(x: f32) -> f32 {
    if x >= 0.0 { 1.0 } else { -1.0 }
}

/// XNOR-Net channel scales: `α_o = (Σ_k |w[o, k]|) / K` over the `K` latent
/// weights of output `o` (`w` is `[O, K]` in C order), summed in f32 in order.
pub fn channel_scales(w: &[f32], out: usize) -> Vec<f32> {
    let k = w.len() / out;
    (0..out)
        .map(|o| {
            let sum: f32 = w[o * k..(o + 1) * k].iter().map(|v| v.abs()).sum();
            sum / k as f32
        })
        .collect()
}

/// The per-channel factor `α` of a layer's `scale=`: none, `mean|W_o|` of
/// the latent weights (`scale=channel`), or the layer's own parameter
/// `NODE.scale` (`scale=learned`), which `learned` fetches (so every engine
/// reports a missing parameter its own way). `w` is `[O, …]`.
pub fn scale_factors<'a, E>(
    scale: Scale,
    w: &[f32],
    out: usize,
    learned: impl FnOnce() -> Result<&'a [f32], E>,
) -> Result<Option<Vec<f32>>, E> {
    Ok(match scale {
        Scale::None => None,
        Scale::Channel => Some(channel_scales(w, out)),
        Scale::Learned => Some(learned()?.to_vec()),
    })
}

/// [`scale_factors`] with the interpreter's parameter lookup.
pub(crate) fn layer_alpha(
    params: &Params,
    node: &str,
    scale: Scale,
    w: &[f32],
    out: usize,
) -> Result<Option<Vec<f32>>, InterpError> {
    scale_factors(scale, w, out, || {
        param(params, &format!("{node}.scale"), &[out])
    })
}

/// The weights a real-valued layer computes with: `W` itself, or for
/// `weights=binary` `α_o·sign(W)` (`α` from [`scale_factors`], 1 without a
/// scale). `α·(±1)` is exact, so every engine that multiplies by these
/// values computes the same products. `w` is `[O, …]`.
pub fn layer_weights<'w>(
    kind: WeightKind,
    alpha: Option<&[f32]>,
    w: &'w [f32],
    out: usize,
) -> Cow<'w, [f32]> {
    match kind {
        WeightKind::Real => Cow::Borrowed(w),
        WeightKind::Binary => {
            let k = w.len() / out.max(1);
            let alpha_of = |i: usize| alpha.map_or(1.0, |a| a[i / k.max(1)]);
            Cow::Owned(
                w.iter()
                    .enumerate()
                    .map(|(i, &v)| alpha_of(i) * sign_of(v))
                    .collect(),
            )
        }
    }
}

/// `y[j] += a · x[j·stride]` for every `j < y.len()`.
fn axpy(y: &mut [f32], a: f32, x: &[f32], stride: usize) {
    if stride == 1 {
        for (yj, &xj) in y.iter_mut().zip(x) {
            *yj += a * xj;
        }
    } else {
        for (yj, &xj) in y.iter_mut().zip(x.iter().step_by(stride)) {
            *yj += a * xj;
        }
    }
}

/// The convolution sum shared by `conv2d` and `bconv2d`:
///
/// `y[n,o,i,j] = Σ_{c∈group(o), u<kh, v<kw} w[o, c−c0, u, v] · xpad[n, c, i·sh + u·dh, j·sw + v·dw]`
///
/// where `xpad` is `x` with `ph` rows and `pw` columns of `pad_value` on each
/// side, and output channel `o` is in group `g = o / (O/G)`, which reads the
/// input channels `c0 = g·C/G .. (g+1)·C/G`. `w` is `[O, C/G, kh, kw]`.
fn convolve(x: &Tensor, g: &ConvGeometry, w: &[f32], pad_value: f32) -> Tensor {
    let [n, c, h, wd] = dims4(x);
    let [kh, kw] = g.kernel;
    let [sh, sw] = g.stride;
    let [ph, pw] = g.pad;
    let [dh, dw] = g.dilation;
    let out = g.out_channels;
    let oh = out_size(h, kh, sh, ph, dh);
    let ow = out_size(wd, kw, sw, pw, dw);
    let (hp, wp) = (h + 2 * ph, wd + 2 * pw);
    let c_per_group = c / g.groups;
    let o_per_group = out / g.groups;

    let mut y = vec![0.0f32; n * out * oh * ow];
    // One padded sample; the border keeps `pad_value`, the interior is
    // overwritten for each sample. (`evaluate` checked that its size fits.)
    let mut xpad = vec![pad_value; c * hp * wp];
    for s in 0..n {
        let sample = &x.data[s * c * h * wd..][..c * h * wd];
        copy_into_padded(&mut xpad, sample, [c, h, wd], g.pad);
        for o in 0..out {
            let c0 = (o / o_per_group) * c_per_group;
            let yo = &mut y[(s * out + o) * oh * ow..][..oh * ow];
            for cl in 0..c_per_group {
                let xc = &xpad[(c0 + cl) * hp * wp..][..hp * wp];
                for u in 0..kh {
                    for v in 0..kw {
                        let wv = w[((o * c_per_group + cl) * kh + u) * kw + v];
                        for i in 0..oh {
                            // Row i·sh + u·dh of xpad, from column v·dw; the
                            // output size formula keeps every read in bounds.
                            let xrow = &xc[(i * sh + u * dh) * wp + v * dw..];
                            axpy(&mut yo[i * ow..][..ow], wv, xrow, sw);
                        }
                    }
                }
            }
        }
    }
    Tensor {
        shape: vec![n, out, oh, ow],
        data: y,
    }
}

/// Copies one `[C, H, W]` sample into the interior of `xpad`, the sample
/// with `ph` rows and `pw` columns of border on each side; the border is left
/// as it is.
fn copy_into_padded(xpad: &mut [f32], sample: &[f32], [c, h, w]: [usize; 3], [ph, pw]: [usize; 2]) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    for ci in 0..c {
        for r in 0..h {
            let src = &sample[(ci * h + r) * w..][..w];
            xpad[(ci * hp + r + ph) * wp + pw..][..w].copy_from_slice(src);
        }
    }
}

/// The inverse of [`copy_into_padded`]: the interior of `xpad` into `sample`.
fn copy_from_padded(sample: &mut [f32], xpad: &[f32], [c, h, w]: [usize; 3], [ph, pw]: [usize; 2]) {
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    for ci in 0..c {
        for r in 0..h {
            let src = &xpad[(ci * hp + r + ph) * wp + pw..][..w];
            sample[(ci * h + r) * w..][..w].copy_from_slice(src);
        }
    }
}

/// `conv2d`: `y[n,o,i,j] = bias[o] + Σ_{c,u,v} W[o, c−c0, u, v] · xpad[n, c, i·sh + u·dh − ph, j·sw + v·dw − pw]`
/// (see [`convolve`]), zero padding; the bias only if `attrs.bias`.
fn conv2d(x: &Tensor, a: &Conv2d, w: &[f32], bias: Option<&[f32]>) -> Tensor {
    let mut y = convolve(x, &a.geometry, w, 0.0);
    if let Some(b) = bias {
        add_per_channel(&mut y, b);
    }
    y
}

/// `bconv2d`'s ±1 dot products: the convolution sum of the ±1 weights
/// `signs` over a ±1 input, padded positions holding 0 (`PadValue::Zero`) or
/// +1 (`PadValue::One`); no bias. Every value is an exact integer.
fn bconv2d(x: &Tensor, a: &BConv2d, signs: &[f32]) -> Tensor {
    let pad_value = match a.pad_value {
        PadValue::Zero => 0.0,
        PadValue::One => 1.0,
    };
    convolve(x, &a.geometry, signs, pad_value)
}

/// A binary layer's weights as ±1.0 in logical order: the signs of the latent
/// weights, or the unpacked bits of packed ones.
fn binary_weights(
    params: &Params,
    node: &str,
    form: WeightForm,
    shape: &[usize],
) -> Result<Vec<f32>, InterpError> {
    let name = format!("{node}.weight");
    match form {
        WeightForm::Latent => Ok(param(params, &name, shape)?
            .iter()
            .map(|&v| sign_of(v))
            .collect()),
        WeightForm::Packed => {
            let bits = params
                .packed
                .get(&name)
                .ok_or_else(|| InterpError::MissingParam {
                    name: name.clone(),
                    expected: shape.to_vec(),
                })?;
            if bits.shape != shape {
                return Err(InterpError::ParamShape {
                    name,
                    expected: shape.to_vec(),
                    found: bits.shape.clone(),
                });
            }
            bits.signs().ok_or(InterpError::ParamData {
                name,
                shape: bits.shape.clone(),
                len: bits.words.len(),
            })
        }
    }
}

/// A binary layer's output from its dot products `dot` (`[N, O, ...]`):
/// `output=dot` scales by `α_o` of `scale=` ([`scale_factors`]);
/// `output=affine` computes `multiplier_o · dot + bias_o`; `output=threshold`
/// gives `+1` where `direction_o · dot >= threshold_o`, else `−1`.
fn binary_output(
    params: &Params,
    node: &Node,
    output: BinaryOutput,
    scale: Scale,
    mut dot: Tensor,
    weight_shape: &[usize],
) -> Result<Tensor, InterpError> {
    let p =
        |suffix: &str, shape: &[usize]| param(params, &format!("{}.{suffix}", node.name), shape);
    let out = [weight_shape[0]];
    Ok(match output {
        BinaryOutput::Dot => {
            if scale.is_scaled() {
                let w = p("weight", weight_shape)?;
                if let Some(alpha) = layer_alpha(params, &node.name, scale, w, out[0])? {
                    mul_per_channel(&mut dot, &alpha);
                }
            }
            dot
        }
        BinaryOutput::Affine => affine(&dot, p("multiplier", &out)?, p("bias", &out)?),
        BinaryOutput::Threshold => threshold(
            &dot,
            p("threshold", &out)?,
            direction(p("direction", &out)?, &node.name)?,
        ),
    })
}

/// Checks that every direction is ±1.
fn direction<'p>(d: &'p [f32], node: &str) -> Result<&'p [f32], InterpError> {
    match d.iter().position(|&v| v != 1.0 && v != -1.0) {
        None => Ok(d),
        Some(c) => Err(InterpError::BadDirection {
            name: format!("{node}.direction"),
            channel: c,
            value: d[c],
        }),
    }
}

/// `threshold`: `+1` where `direction_c · x >= threshold_c`, else `−1`, per
/// channel `c` (the first per-sample axis).
fn threshold(x: &Tensor, threshold: &[f32], direction: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| threshold_value(v, threshold[c], direction[c]))
}

/// `affine`: `multiplier_c · x + bias_c` per channel `c`.
fn affine(x: &Tensor, multiplier: &[f32], bias: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| affine_value(v, multiplier[c], bias[c]))
}

/// One value of `threshold`. `direction · x` is exact (a sign flip), so the
/// comparison is exact too.
pub fn threshold_value(x: f32, threshold: f32, direction: f32) -> f32 {
    if direction * x >= threshold {
        1.0
    } else {
        -1.0
    }
}

/// One value of `affine`: `multiplier · x + bias`, rounded twice (no fused
/// multiply-add), as every engine must compute it to match.
pub fn affine_value(x: f32, multiplier: f32, bias: f32) -> f32 {
    multiplier * x + bias
}

/// One value of `batchnorm`, in the exact order of operations the
/// interpreter uses: `γ · (x − μ) / sqrt(σ² + eps) + β`. Passes that fold a
/// batchnorm into a threshold evaluate this to find the exact switching point.
pub fn batchnorm_value(x: f32, gamma: f32, beta: f32, mean: f32, var: f32, eps: f32) -> f32 {
    batchnorm_with_std(x, gamma, beta, mean, batchnorm_std(var, eps))
}

/// `sqrt(σ² + eps)`, the divisor of [`batchnorm_value`], for engines that
/// compute it once per channel.
pub fn batchnorm_std(var: f32, eps: f32) -> f32 {
    (var + eps).sqrt()
}

/// [`batchnorm_value`] with its divisor `std = batchnorm_std(σ², eps)` given.
pub fn batchnorm_with_std(x: f32, gamma: f32, beta: f32, mean: f32, std: f32) -> f32 {
    gamma * (x - mean) / std + beta
}

/// `y[n,o] = Σ_k w[o,k] · x[n,k]` for `w` `[O, K]` and `x` `[N, K]`.
fn matvec(x: &Tensor, w: &[f32], out: usize) -> Tensor {
    let n = x.shape[0];
    let k = x.shape[1];
    let mut y = vec![0.0f32; n * out];
    for s in 0..n {
        let xs = &x.data[s * k..][..k];
        for o in 0..out {
            let wo = &w[o * k..][..k];
            let mut acc = 0.0f32;
            for (&wk, &xk) in wo.iter().zip(xs) {
                acc += wk * xk;
            }
            y[s * out + o] = acc;
        }
    }
    Tensor {
        shape: vec![n, out],
        data: y,
    }
}

/// `dense`: `y[n,o] = bias[o] + Σ_k W[o,k] · x[n,k]`, `W` `[O, K]`; the bias
/// only if `attrs.bias`.
fn dense(x: &Tensor, a: &Dense, w: &[f32], bias: Option<&[f32]>) -> Tensor {
    let mut y = matvec(x, w, a.out_features);
    if let Some(b) = bias {
        add_per_channel(&mut y, b);
    }
    y
}

/// `sign`: `+1` if `x >= 0`, else `−1` (so `sign(0) = +1`; NaN gives `−1`).
fn sign(x: &Tensor) -> Tensor {
    map(x, sign_of)
}

/// Batchnorm's four per-channel parameters.
struct BatchNormParams<'p> {
    /// `γ` (`NODE.weight`).
    gamma: &'p [f32],
    /// `β` (`NODE.bias`).
    beta: &'p [f32],
    /// `μ` (`NODE.running_mean`).
    mean: &'p [f32],
    /// `σ²` (`NODE.running_var`).
    var: &'p [f32],
}

/// `batchnorm`: `y = γ_c · (x − μ_c) / sqrt(σ²_c + eps) + β_c`, `c` the index
/// along the first per-sample axis.
fn batchnorm(x: &Tensor, a: &BatchNorm, p: &BatchNormParams) -> Tensor {
    map_per_channel(x, |c, v| {
        batchnorm_value(v, p.gamma[c], p.beta[c], p.mean[c], p.var[c], a.eps)
    })
}

/// `relu`: `max(x, 0)` (as `f32::max`, so NaN gives 0).
fn relu(x: &Tensor) -> Tensor {
    map(x, |v| v.max(0.0))
}

/// `prelu`: `x` if `x >= 0`, else `a_c · x`, `c` the index along the first
/// per-sample axis.
fn prelu(x: &Tensor, slope: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| if v >= 0.0 { v } else { slope[c] * v })
}

/// `shift`: `x + b_c`, `c` the index along the first per-sample axis. (This
/// equals `affine` with multiplier 1 exactly, which is how the passes and
/// the JIT treat it.)
fn shift(x: &Tensor, b: &[f32]) -> Tensor {
    map_per_channel(x, |c, v| v + b[c])
}

/// `hardtanh`: `clamp(x, min, max)`, written `min(max(x, min), max)`, which
/// cannot panic (the verifier ensures `min <= max`).
fn hardtanh(x: &Tensor, a: &HardTanh) -> Tensor {
    map(x, |v| v.max(a.min).min(a.max))
}

/// `maxpool`: `y[n,c,i,j] = max_{u<kh, v<kw} x[n, c, i·sh + u − ph, j·sw + v − pw]`
/// over the positions inside the input: padding is `−∞` and never wins
/// (PyTorch). A NaN never wins either (comparisons with it are false).
fn maxpool(x: &Tensor, p: &Pool) -> Tensor {
    pool(x, p, |window| {
        let mut m = f32::NEG_INFINITY;
        for v in window {
            if v > m {
                m = v;
            }
        }
        m
    })
}

/// `avgpool`: `y[n,c,i,j] = (Σ_{u<kh, v<kw} xpad[n, c, i·sh + u − ph, j·sw + v − pw]) / (kh·kw)`
/// with zero padding counted in the divisor (PyTorch `count_include_pad=True`).
fn avgpool(x: &Tensor, p: &Pool) -> Tensor {
    let area = (p.kernel[0] * p.kernel[1]) as f32;
    pool(x, p, |window| {
        let mut sum = 0.0f32;
        for v in window {
            sum += v;
        }
        sum / area
    })
}

/// Applies `reduce` to the values of each pooling window that lie inside the
/// input, visited row by row.
fn pool(x: &Tensor, p: &Pool, reduce: impl Fn(&mut dyn Iterator<Item = f32>) -> f32) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let [kh, kw] = p.kernel;
    let [sh, sw] = p.stride;
    let [ph, pw] = p.pad;
    let oh = out_size(h, kh, sh, ph, 1);
    let ow = out_size(w, kw, sw, pw, 1);
    let mut y = Vec::with_capacity(n * c * oh * ow);
    for plane in 0..n * c {
        let xp = &x.data[plane * h * w..][..h * w];
        for i in 0..oh {
            // Input rows i·sh − ph .. i·sh − ph + kh, clipped to the input.
            let rows = (i * sh).saturating_sub(ph)..(i * sh + kh).saturating_sub(ph).min(h);
            for j in 0..ow {
                let cols = (j * sw).saturating_sub(pw)..(j * sw + kw).saturating_sub(pw).min(w);
                let mut window = rows
                    .clone()
                    .flat_map(|r| cols.clone().map(move |col| xp[r * w + col]));
                y.push(reduce(&mut window));
            }
        }
    }
    Tensor {
        shape: vec![n, c, oh, ow],
        data: y,
    }
}

/// `global_avgpool`: `y[n,c] = (Σ_{i,j} x[n,c,i,j]) / (H·W)`.
fn global_avgpool(x: &Tensor) -> Tensor {
    let [n, c, h, w] = dims4(x);
    let area = h * w;
    let data = (0..n * c)
        .map(|plane| {
            let sum: f32 = x.data[plane * area..][..area].iter().sum();
            sum / area as f32
        })
        .collect();
    Tensor {
        shape: vec![n, c],
        data,
    }
}

/// `flatten`: `[N, d1, d2, …]` to `[N, d1·d2·…]`, data unchanged (C order).
fn flatten(x: &Tensor) -> Tensor {
    Tensor {
        shape: vec![x.shape[0], sample_dims(x).iter().product()],
        data: x.data.clone(),
    }
}

/// `add`: `y = x_0 + x_1 + …`, elementwise, summed left to right.
fn add(xs: &[&Tensor]) -> Tensor {
    let mut y = xs[0].clone();
    for x in &xs[1..] {
        for (yv, &xv) in y.data.iter_mut().zip(&x.data) {
            *yv += xv;
        }
    }
    y
}

/// `concat`: the operands joined along the channel (first per-sample) axis,
/// in operand order; in C order that is, per sample, one whole sample of each
/// operand after the other.
fn concat(xs: &[&Tensor]) -> Tensor {
    let n = xs[0].shape[0];
    let mut shape = xs[0].shape.clone();
    shape[1] = xs.iter().map(|x| x.shape[1]).sum();
    let sizes: Vec<usize> = xs.iter().map(|x| sample_dims(x).iter().product()).collect();
    let mut data = Vec::with_capacity(n * sizes.iter().sum::<usize>());
    for s in 0..n {
        for (x, &size) in xs.iter().zip(&sizes) {
            data.extend_from_slice(&x.data[s * size..][..size]);
        }
    }
    Tensor { shape, data }
}

/// `zero`: zeros of the operand's shape.
fn zero(x: &Tensor) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: vec![0.0; x.data.len()],
    }
}

/// `choose`: `y = Σ_i softmax(α)_i · x_i`, summed left to right, with
/// `softmax(α)_i = exp(α_i − m) / Σ_j exp(α_j − m)` and `m = max α` (stable).
fn choose(xs: &[&Tensor], alpha: &[f32]) -> Tensor {
    let m = alpha.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = alpha.iter().map(|&a| (a - m).exp()).collect();
    let total: f32 = e.iter().sum();
    let mut y = zero(xs[0]);
    for (x, &ei) in xs.iter().zip(&e) {
        let weight = ei / total;
        for (yv, &xv) in y.data.iter_mut().zip(&x.data) {
            *yv += weight * xv;
        }
    }
    y
}

/// `f` applied to every element.
fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    }
}

/// `f(c, x)` applied to every element, `c` its index along the first
/// per-sample (channel) axis. Works for `[N, C]` and `[N, C, …]`.
fn map_per_channel(x: &Tensor, f: impl Fn(usize, f32) -> f32) -> Tensor {
    let n = x.shape[0];
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut data = Vec::with_capacity(x.data.len());
    for s in 0..n {
        for ch in 0..c {
            let base = (s * c + ch) * inner;
            data.extend(x.data[base..base + inner].iter().map(|&v| f(ch, v)));
        }
    }
    Tensor {
        shape: x.shape.clone(),
        data,
    }
}

/// `y[n,c,…] = b[c] + y[n,c,…]`.
fn add_per_channel(y: &mut Tensor, b: &[f32]) {
    *y = map_per_channel(y, |c, v| b[c] + v);
}

/// `y[n,c,…] = y[n,c,…] · a[c]`.
fn mul_per_channel(y: &mut Tensor, a: &[f32]) {
    *y = map_per_channel(y, |c, v| v * a[c]);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ir::ops::BDense;
    use crate::ir::types::TensorType;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    fn params(list: &[(&str, &[usize], &[f32])]) -> Params {
        let mut tensors = BTreeMap::new();
        for &(name, shape, data) in list {
            tensors.insert(name.to_string(), t(shape, data));
        }
        Params {
            tensors,
            packed: Default::default(),
        }
    }

    fn geom(out: usize, k: Pair, s: Pair, p: Pair, d: Pair, groups: usize) -> ConvGeometry {
        ConvGeometry {
            out_channels: out,
            kernel: k,
            stride: s,
            pad: p,
            dilation: d,
            groups,
        }
    }

    type Pair = [usize; 2];

    /// A graph `x -> op -> output` over an f32 input of per-sample `dims`.
    fn single(op: Op, dims: &[usize]) -> Graph {
        let mut g = Graph::new("m");
        let x = g.add_input("x", TensorType::f32(dims.to_vec())).unwrap();
        let y = g.add_node("y", op, &[x]).unwrap();
        g.add_output(y);
        g
    }

    /// A graph `x -> sign -> op -> output`.
    fn binary(op: Op, dims: &[usize]) -> Graph {
        let mut g = Graph::new("m");
        let x = g.add_input("x", TensorType::f32(dims.to_vec())).unwrap();
        let s = g.add_node("s", Op::sign(), &[x]).unwrap();
        let y = g.add_node("y", op, &[s]).unwrap();
        g.add_output(y);
        g
    }

    fn run1(g: &Graph, p: &Params, x: Tensor) -> Tensor {
        run(g, p, &[x]).unwrap().remove(0)
    }

    fn assert_close(found: &[f32], expected: &[f32]) {
        assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
        for (f, e) in found.iter().zip(expected) {
            assert!(
                (f - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{found:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn conv2d_3x3_with_padding_and_bias() {
        let op = Op::Conv2d(Conv2d::new(
            geom(1, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            true,
        ));
        let g = single(op, &[1, 3, 3]);
        // W[0,0] = 1, W[1,1] = −1, W[2,2] = 2, so
        // y[i,j] = 0.5 + x[i−1,j−1] − x[i,j] + 2·x[i+1,j+1] (0 outside).
        #[rustfmt::skip]
        let w = [1.0, 0.0, 0.0,
                 0.0, -1.0, 0.0,
                 0.0, 0.0, 2.0];
        let p = params(&[("y.weight", &[1, 1, 3, 3], &w), ("y.bias", &[1], &[0.5])]);
        let x = t(
            &[1, 1, 3, 3],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        );
        let y = run1(&g, &p, x);
        assert_eq!(y.shape, [1, 1, 3, 3]);
        #[rustfmt::skip]
        let expected = [9.5, 10.5, -2.5,
                        12.5, 14.5, -3.5,
                        -6.5, -3.5, -3.5];
        assert_eq!(y.data, expected);
    }

    #[test]
    fn conv2d_groups_read_their_own_channels() {
        // O = 4, C = 4, G = 2: outputs 0, 1 read channels 0, 1; outputs 2, 3
        // read channels 2, 3.
        let op = Op::Conv2d(Conv2d::new(
            geom(4, [1, 1], [1, 1], [0, 0], [1, 1], 2),
            false,
        ));
        let g = single(op, &[4, 1, 1]);
        let w = [1.0, 10.0, 100.0, 1000.0, 1.0, 10.0, 100.0, 1000.0];
        let p = params(&[("y.weight", &[4, 2, 1, 1], &w)]);
        let y = run1(&g, &p, t(&[1, 4, 1, 1], &[1.0, 2.0, 3.0, 4.0]));
        assert_eq!(y.data, [21.0, 2100.0, 43.0, 4300.0]);
    }

    /// The 5x5 input `x[r, c] = 5r + c`.
    fn ramp() -> Tensor {
        t(
            &[1, 1, 5, 5],
            &(0..25).map(|v| v as f32).collect::<Vec<_>>(),
        )
    }

    fn ones_conv(kernel: Pair, stride: Pair, pad: Pair, dilation: Pair) -> (Graph, Params) {
        let op = Op::Conv2d(Conv2d::new(
            geom(1, kernel, stride, pad, dilation, 1),
            false,
        ));
        let w = vec![1.0; kernel[0] * kernel[1]];
        let p = params(&[("y.weight", &[1, 1, kernel[0], kernel[1]], &w)]);
        (single(op, &[1, 5, 5]), p)
    }

    #[test]
    fn conv2d_stride_2() {
        // (5 − 1 − 1)/2 + 1 = 2; y[i,j] = Σ x[2i..2i+2, 2j..2j+2].
        let (g, p) = ones_conv([2, 2], [2, 2], [0, 0], [1, 1]);
        let y = run1(&g, &p, ramp());
        assert_eq!(y.shape, [1, 1, 2, 2]);
        assert_eq!(y.data, [12.0, 20.0, 52.0, 60.0]);
    }

    #[test]
    fn conv2d_dilation_2() {
        // (5 − 2·1 − 1)/1 + 1 = 3; y[i,j] = x[i,j] + x[i,j+2] + x[i+2,j] + x[i+2,j+2]
        // = 20i + 4j + 24.
        let (g, p) = ones_conv([2, 2], [1, 1], [0, 0], [2, 2]);
        let y = run1(&g, &p, ramp());
        assert_eq!(y.shape, [1, 1, 3, 3]);
        assert_eq!(
            y.data,
            [24.0, 28.0, 32.0, 44.0, 48.0, 52.0, 64.0, 68.0, 72.0]
        );
    }

    #[test]
    fn conv2d_mixed_geometry_per_axis() {
        // Stride (2, 1), dilation (1, 2), pad (0, 1): 2 x 5 outputs,
        // y[i,j] = Σ_{u,v<2} x[2i + u, j + 2v − 1].
        let (g, p) = ones_conv([2, 2], [2, 1], [0, 1], [1, 2]);
        let y = run1(&g, &p, ramp());
        assert_eq!(y.shape, [1, 1, 2, 5]);
        assert_eq!(
            y.data,
            [7.0, 14.0, 18.0, 22.0, 11.0, 27.0, 54.0, 58.0, 62.0, 31.0]
        );
    }

    /// The convolution formula transcribed literally, one output at a time,
    /// with the padding decided per tap instead of through `xpad`.
    fn direct_conv(x: &Tensor, g: &ConvGeometry, w: &[f32], pad_value: f32) -> Vec<f32> {
        let [n, c, h, wd] = dims4(x);
        let (o_count, cg) = (g.out_channels, c / g.groups);
        let oh = (h + 2 * g.pad[0] - g.dilation[0] * (g.kernel[0] - 1) - 1) / g.stride[0] + 1;
        let ow = (wd + 2 * g.pad[1] - g.dilation[1] * (g.kernel[1] - 1) - 1) / g.stride[1] + 1;
        let mut y = Vec::new();
        for s in 0..n {
            for o in 0..o_count {
                let c0 = o / (o_count / g.groups) * cg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0.0f32;
                        for cl in 0..cg {
                            for u in 0..g.kernel[0] {
                                for v in 0..g.kernel[1] {
                                    let r = (i * g.stride[0] + u * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let q = (j * g.stride[1] + v * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    let inside = (0..h as isize).contains(&r)
                                        && (0..wd as isize).contains(&q);
                                    let xv = if inside {
                                        let (r, q) = (r as usize, q as usize);
                                        x.data[((s * c + c0 + cl) * h + r) * wd + q]
                                    } else {
                                        pad_value
                                    };
                                    let k = ((o * cg + cl) * g.kernel[0] + u) * g.kernel[1] + v;
                                    acc += w[k] * xv;
                                }
                            }
                        }
                        y.push(acc);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn convolve_matches_the_direct_formula() {
        let mut rng = crate::util::rng::Rng::new(42);
        let mut pick = |lo: usize, hi: usize| lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize;
        let mut tried = 0;
        while tried < 200 {
            let groups = pick(1, 3);
            let (c, o) = (groups * pick(1, 2), groups * pick(1, 2));
            let (h, wd) = (pick(1, 7), pick(1, 7));
            let g = geom(
                o,
                [pick(1, 3), pick(1, 3)],
                [pick(1, 3), pick(1, 3)],
                [pick(0, 2), pick(0, 2)],
                [pick(1, 2), pick(1, 2)],
                groups,
            );
            let span = |k: usize, d: usize| d * (k - 1) + 1;
            if span(g.kernel[0], g.dilation[0]) > h + 2 * g.pad[0]
                || span(g.kernel[1], g.dilation[1]) > wd + 2 * g.pad[1]
            {
                continue;
            }
            tried += 1;
            let n = pick(1, 2);
            let x: Vec<f32> = (0..n * c * h * wd).map(|k| (k % 7) as f32 - 3.0).collect();
            let w: Vec<f32> = (0..o * (c / groups) * g.kernel[0] * g.kernel[1])
                .map(|k| (k % 5) as f32 - 2.0)
                .collect();
            let x = t(&[n, c, h, wd], &x);
            for pad_value in [0.0, 1.0] {
                let y = convolve(&x, &g, &w, pad_value);
                // Small integers: both orders of summation are exact.
                assert_eq!(y.data, direct_conv(&x, &g, &w, pad_value), "{g:?}");
            }
        }
    }

    #[test]
    fn bconv2d_pad_value_adds_the_padded_weight_sum() {
        let make = |pad_value| {
            let op = Op::BConv2d(BConv2d {
                geometry: geom(1, [3, 3], [1, 1], [1, 1], [1, 1], 1),
                pad_value,
                scale: Scale::None,
                output: BinaryOutput::Dot,
                weights: WeightForm::Latent,
            });
            binary(op, &[1, 2, 2])
        };
        // Signs [[1, −1, −1], [−1, 1, −1], [1, −1, 1]] (0.0 gives +1).
        #[rustfmt::skip]
        let w = [0.5, -0.2, -0.1,
                 -0.3, 0.7, -0.4,
                 0.0, -0.6, 0.9];
        let p = params(&[("y.weight", &[1, 1, 3, 3], &w)]);
        // sign gives [[1, 1], [1, −1]].
        let x = t(&[1, 1, 2, 2], &[0.3, 0.0, 2.0, -0.5]);
        let zero = run1(&make(PadValue::Zero), &p, x.clone());
        let one = run1(&make(PadValue::One), &p, x);
        assert_eq!(zero.data, [-2.0, 2.0, 0.0, -2.0]);
        // Sums of the signs at the padded positions of each output:
        // (0,0): row 0 + column 0 below it = −1 + 0; (0,1): −1 + 0;
        // (1,0): row 2 + column 0 above it = 1 + 0; (1,1): 1 − 2.
        assert_eq!(one.data, [-3.0, 1.0, 1.0, -3.0]);
    }

    #[test]
    fn bconv2d_channel_scale() {
        let op = Op::BConv2d(BConv2d {
            geometry: geom(2, [1, 1], [1, 1], [0, 0], [1, 1], 1),
            pad_value: PadValue::Zero,
            scale: Scale::Channel,
            output: BinaryOutput::Dot,
            weights: WeightForm::Latent,
        });
        let g = binary(op, &[3, 1, 1]);
        // Signs [1, −1, 1] with α = 1.5/3 = 0.5; [−1, −1, 1] with α = 3.5/3.
        let w = [0.5, -0.25, 0.75, -2.0, -1.0, 0.5];
        let p = params(&[("y.weight", &[2, 3, 1, 1], &w)]);
        let x = t(&[2, 3, 1, 1], &[1.0, -1.0, -1.0, -1.0, 1.0, 1.0]);
        let y = run1(&g, &p, x);
        assert_eq!(y.shape, [2, 2, 1, 1]);
        let a1 = 3.5 / 3.0;
        assert_close(&y.data, &[0.5, -a1, -0.5, a1]);
    }

    #[test]
    fn bdense_with_and_without_scale() {
        let make = |scale| {
            binary(
                Op::BDense(BDense {
                    out_features: 2,
                    scale,
                    output: BinaryOutput::Dot,
                    weights: WeightForm::Latent,
                }),
                &[4],
            )
        };
        // Signs [1, −1, 1, −1] (α = 5/4) and [−1, 1, 1, 1] (α = 1/4).
        let w = [1.0, -3.0, 0.5, -0.5, -0.25, 0.25, 0.25, 0.25];
        let p = params(&[("y.weight", &[2, 4], &w)]);
        // sign gives [1, −1, 1, −1].
        let x = t(&[1, 4], &[2.0, -1.0, 0.0, -7.0]);
        assert_eq!(run1(&make(Scale::None), &p, x.clone()).data, [4.0, -2.0]);
        assert_eq!(run1(&make(Scale::Channel), &p, x).data, [5.0, -0.5]);
    }

    #[test]
    fn dense_with_bias() {
        let op = Op::Dense(Dense::new(2, true));
        let g = single(op, &[3]);
        let p = params(&[
            ("y.weight", &[2, 3], &[1.0, 2.0, 3.0, -1.0, 0.0, 0.5]),
            ("y.bias", &[2], &[10.0, -10.0]),
        ]);
        let y = run1(&g, &p, t(&[2, 3], &[1.0, 1.0, 1.0, 2.0, 0.0, -2.0]));
        assert_eq!(y.shape, [2, 2]);
        // [1 + 2 + 3 + 10, −1 + 0.5 − 10, 2 − 6 + 10, −2 − 1 − 10]
        assert_eq!(y.data, [16.0, -10.5, 6.0, -13.0]);
    }

    #[test]
    fn sign_of_zero_is_plus_one() {
        let g = single(Op::sign(), &[5]);
        let x = t(&[1, 5], &[0.0, -0.0, -1e-30, 3.0, f32::NAN]);
        assert_eq!(
            run1(&g, &Params::default(), x).data,
            [1.0, 1.0, -1.0, 1.0, -1.0]
        );
    }

    fn bn_params() -> Params {
        // With eps = 1: sqrt(σ² + eps) = [2, 0.5], so channel 0 maps x to
        // 2·(x − 3)/2 + 1 = x − 2 and channel 1 to 0.5·(x + 2)/0.5 − 1 = x + 1.
        params(&[
            ("y.weight", &[2], &[2.0, 0.5]),
            ("y.bias", &[2], &[1.0, -1.0]),
            ("y.running_mean", &[2], &[3.0, -2.0]),
            ("y.running_var", &[2], &[3.0, -0.75]),
        ])
    }

    #[test]
    fn batchnorm_rank_1_and_rank_3() {
        let op = Op::BatchNorm(BatchNorm::new(1.0));
        let g = single(op.clone(), &[2]);
        let y = run1(&g, &bn_params(), t(&[1, 2], &[5.0, 0.0]));
        assert_eq!(y.data, [3.0, 1.0]);

        let g = single(op, &[2, 1, 2]);
        let y = run1(&g, &bn_params(), t(&[1, 2, 1, 2], &[5.0, 3.0, 0.0, -2.0]));
        assert_eq!(y.data, [3.0, 1.0, 1.0, -1.0]);
    }

    #[test]
    fn maxpool_padding_never_wins() {
        let op = Op::MaxPool(Pool {
            kernel: [2, 2],
            stride: [1, 1],
            pad: [1, 1],
        });
        let g = single(op, &[1, 2, 2]);
        let x = t(&[1, 1, 2, 2], &[-1.0, -2.0, -3.0, -4.0]);
        let y = run1(&g, &Params::default(), x);
        assert_eq!(y.shape, [1, 1, 3, 3]);
        assert_eq!(
            y.data,
            [-1.0, -1.0, -2.0, -1.0, -1.0, -2.0, -3.0, -3.0, -4.0]
        );
    }

    #[test]
    fn avgpool_counts_padding() {
        let op = Op::AvgPool(Pool {
            kernel: [2, 2],
            stride: [1, 1],
            pad: [1, 1],
        });
        let g = single(op, &[1, 2, 2]);
        let x = t(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let y = run1(&g, &Params::default(), x);
        assert_eq!(y.data, [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]);
    }

    #[test]
    fn pooling_with_stride() {
        let op = Op::MaxPool(Pool {
            kernel: [2, 2],
            stride: [2, 2],
            pad: [0, 0],
        });
        let y = run1(&single(op, &[1, 5, 5]), &Params::default(), ramp());
        assert_eq!(y.data, [6.0, 8.0, 16.0, 18.0]);
    }

    #[test]
    fn choose_weights_by_softmax() {
        let mut g = Graph::new("m");
        let a = g.add_input("a", TensorType::f32(vec![2])).unwrap();
        let b = g.add_input("b", TensorType::f32(vec![2])).unwrap();
        let y = g.add_node("y", Op::Choose, &[a, b]).unwrap();
        g.add_output(y);
        // softmax([0, ln 3]) = [1/4, 3/4].
        let p = params(&[("y.alpha", &[2], &[0.0, 3f32.ln()])]);
        let out = run(&g, &p, &[t(&[1, 2], &[4.0, 8.0]), t(&[1, 2], &[8.0, 4.0])]).unwrap();
        assert_close(&out[0].data, &[7.0, 5.0]);
    }

    #[test]
    fn concat_joins_channels_per_sample() {
        let mut g = Graph::new("m");
        let a = g.add_input("a", TensorType::f32(vec![1, 1, 2])).unwrap();
        let b = g.add_input("b", TensorType::f32(vec![2, 1, 2])).unwrap();
        let y = g.add_node("y", Op::Concat, &[a, b]).unwrap();
        g.add_output(y);
        let a = t(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = t(&[2, 2, 1, 2], &[5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        let out = run(&g, &Params::default(), &[a, b]).unwrap();
        assert_eq!(out[0].shape, [2, 3, 1, 2]);
        assert_eq!(
            out[0].data,
            [
                1.0, 2.0, 5.0, 6.0, 7.0, 8.0, 3.0, 4.0, 9.0, 10.0, 11.0, 12.0
            ]
        );
    }

    #[test]
    fn elementwise_and_shape_ops() {
        // x: [2, 1, 2]; prelu, relu, hardtanh, add, zero, identity, global_avgpool, flatten.
        let mut g = Graph::new("m");
        let x = g.add_input("x", TensorType::f32(vec![2, 1, 2])).unwrap();
        let pr = g.add_node("pr", Op::PRelu, &[x]).unwrap();
        let re = g.add_node("re", Op::Relu, &[x]).unwrap();
        let ht = g
            .add_node(
                "ht",
                Op::HardTanh(HardTanh {
                    min: -1.0,
                    max: 0.5,
                }),
                &[x],
            )
            .unwrap();
        let z = g.add_node("z", Op::Zero, &[x]).unwrap();
        let id = g.add_node("id", Op::Identity, &[x]).unwrap();
        let sum = g.add_node("sum", Op::Add, &[pr, re, ht, z, id]).unwrap();
        let gap = g.add_node("gap", Op::GlobalAvgPool, &[sum]).unwrap();
        let fl = g.add_node("fl", Op::Flatten, &[x]).unwrap();
        g.add_output(gap);
        g.add_output(fl);
        g.add_output(re);
        let p = params(&[("pr.weight", &[2], &[0.5, 0.25])]);
        let x = t(&[1, 2, 1, 2], &[-2.0, 3.0, -4.0, 0.25]);
        let out = run(&g, &p, std::slice::from_ref(&x)).unwrap();
        // pr = [−1, 3, −1, 0.25], re = [0, 3, 0, 0.25], ht = [−1, 0.5, −1, 0.25],
        // sum = pr + re + ht + 0 + x = [−4, 9.5, −6, 1].
        assert_eq!(out[0].shape, [1, 2]);
        assert_eq!(out[0].data, [2.75, -2.5]);
        assert_eq!(out[1].shape, [1, 4]);
        assert_eq!(out[1].data, x.data);
        assert_eq!(out[2].data, [0.0, 3.0, 0.0, 0.25]);

        let all = run_all(&g, &p, &[x]).unwrap();
        assert_eq!(all.len(), g.len());
        assert_eq!(all[&sum].data, [-4.0, 9.5, -6.0, 1.0]);
        assert_eq!(all[&z].data, [0.0; 4]);
    }

    #[test]
    fn samples_are_independent() {
        // The same sample run alone and at position 1 of a batch of 3.
        let op = Op::Conv2d(Conv2d::new(
            geom(2, [3, 3], [2, 1], [1, 1], [1, 1], 1),
            true,
        ));
        let g = single(op, &[1, 5, 5]);
        let p = Params::init(&g, 7);
        let one = run1(&g, &p, ramp());
        let mut batch = vec![9.0; 25];
        batch.extend(&ramp().data);
        batch.extend(vec![-3.0; 25]);
        let three = run1(&g, &p, t(&[3, 1, 5, 5], &batch));
        let k = one.data.len();
        assert_eq!(three.data[k..2 * k], one.data[..]);
    }

    #[test]
    fn batch_size_zero_gives_empty_outputs() {
        let op = Op::Conv2d(Conv2d::new(
            geom(2, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            true,
        ));
        let g = single(op, &[1, 3, 3]);
        let p = Params::init(&g, 1);
        let y = run1(&g, &p, t(&[0, 1, 3, 3], &[]));
        assert_eq!(y.shape, [0, 2, 3, 3]);
        assert!(y.data.is_empty());
    }

    #[test]
    fn error_wrong_input_shape() {
        let g = single(Op::Relu, &[1, 8, 8]);
        let err = run(&g, &Params::default(), &[t(&[5, 64], &[0.0; 320])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `x` must be [N, 1, 8, 8], found [5, 64]"
        );
    }

    #[test]
    fn error_input_count_batch_and_data() {
        let mut g = Graph::new("m");
        let a = g.add_input("a", TensorType::f32(vec![2])).unwrap();
        let b = g.add_input("b", TensorType::f32(vec![2])).unwrap();
        let y = g.add_node("y", Op::Add, &[a, b]).unwrap();
        g.add_output(y);
        let p = Params::default();
        let err = run(&g, &p, &[t(&[1, 2], &[0.0; 2])]).unwrap_err();
        assert_eq!(err.to_string(), "model `m` takes 2 inputs, found 1");
        let err = run(&g, &p, &[t(&[1, 2], &[0.0; 2]), t(&[3, 2], &[0.0; 6])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `b` has batch size 3, but input `a` has 1; all inputs share one batch size"
        );
        let err = run(&g, &p, &[t(&[1, 2], &[0.0; 2]), t(&[1, 2], &[0.0; 3])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input `b` is shaped [1, 2] but holds 3 values"
        );
        let huge = t(&[usize::MAX, 2], &[]);
        assert!(matches!(
            run(&g, &p, &[huge.clone(), huge]),
            Err(InterpError::InputData { .. })
        ));
    }

    #[test]
    fn error_missing_and_misshapen_params() {
        let op = Op::Conv2d(Conv2d::new(
            geom(2, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            true,
        ));
        let g = single(op, &[1, 3, 3]);
        let x = t(&[1, 1, 3, 3], &[0.0; 9]);
        let p = params(&[("y.weight", &[2, 1, 3, 3], &[0.0; 18])]);
        let err = run(&g, &p, std::slice::from_ref(&x)).unwrap_err();
        assert_eq!(
            err,
            InterpError::MissingParam {
                name: "y.bias".into(),
                expected: vec![2],
            }
        );
        assert_eq!(
            err.to_string(),
            "missing parameter `y.bias`: expected f32[2]"
        );

        let p = params(&[
            ("y.weight", &[2, 1, 9], &[0.0; 18]),
            ("y.bias", &[2], &[0.0; 2]),
        ]);
        let err = run(&g, &p, std::slice::from_ref(&x)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameter `y.weight` must be [2, 1, 3, 3], found [2, 1, 9]"
        );

        let p = params(&[
            ("y.weight", &[2, 1, 3, 3], &[0.0; 17]),
            ("y.bias", &[2], &[0.0; 2]),
        ]);
        assert!(matches!(
            run(&g, &p, &[x]),
            Err(InterpError::ParamData { len: 17, .. })
        ));
    }

    #[test]
    fn error_instead_of_panic_on_absurd_sizes() {
        // Empty samples let the input claim any batch size; dense then makes
        // 4 values per sample, which overflows.
        let op = Op::Dense(Dense::new(4, false));
        let g = single(op, &[0]);
        let p = params(&[("y.weight", &[4, 0], &[])]);
        let err = run(&g, &p, &[t(&[usize::MAX / 2, 0], &[])]).unwrap_err();
        assert!(matches!(err, InterpError::TooLarge { .. }), "{err}");

        // A 1x1 output whose padded input would have 2^64 elements.
        let big = 1 << 31;
        let op = Op::Conv2d(Conv2d::new(
            geom(1, [3, 3], [1, 1], [big, big], [big, big], 1),
            false,
        ));
        let g = single(op, &[1, 1, 1]);
        assert_eq!(g.node(g.outputs()[0]).ty.dims(), [1, 1, 1]);
        let p = params(&[("y.weight", &[1, 1, 3, 3], &[0.0; 9])]);
        let err = run(&g, &p, &[t(&[1, 1, 1, 1], &[1.0])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node `y`: the padded input of the convolution would not fit in memory"
        );
    }

    #[test]
    fn error_cycle() {
        let mut g = Graph::new("m");
        let x = g.add_input("x", TensorType::f32(vec![2])).unwrap();
        let a = g.add_node("a", Op::Relu, &[x]).unwrap();
        let b = g.add_node("b", Op::Relu, &[a]).unwrap();
        g.add_output(b);
        // `a` now reads `b`, which reads `a`.
        g.replace_all_uses(x, b);
        let err = run(&g, &Params::default(), &[t(&[1, 2], &[0.0; 2])]).unwrap_err();
        assert!(
            matches!(&err, InterpError::Verify(e) if matches!(**e, VerifyError::Cycle(_))),
            "{err}"
        );
        assert_eq!(err.to_string(), "the graph is invalid: cycle through a, b");
    }
}
