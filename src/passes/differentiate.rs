//! `differentiate`: a model and a loss to a training-step graph.
//!
//! **Pattern.** A verified, unfolded model (every binary layer `output=dot`
//! with latent weights) whose logits output is an f32 vector `[K]`.
//!
//! **Rewrite.** A new graph, in the same IR, that computes one training step:
//! 1. the forward pass in training mode: every node copied under its own name
//!    (so parameters keep their names), batchnorms switched to `stats=batch`;
//! 2. a new input `target: f32[K]` (a distribution over the classes: one-hot,
//!    or anything else that sums to 1) and `loss = cross_entropy(logits,
//!    target)`;
//! 3. reverse-mode accumulation over the nodes that lie between a trainable
//!    parameter and the loss, latest first: each node's gradient `NODE.grad`
//!    (the sum of its users' contributions when it has several), one `grad`
//!    node per operand that needs a gradient, one per trainable parameter
//!    (`NODE.weight.grad`, `NODE.bias.grad`, `NODE.alpha.grad`,
//!    `NODE.scale.grad`, `NODE.projection.grad`), and for
//!    every batchnorm the next running statistics (`NODE.running_mean.next`,
//!    `NODE.running_var.next`).
//!
//! Outputs, in order: `loss`, the model's outputs, the parameter gradients
//! in parameter order, the running statistics.
//!
//! **Why it is sound.** Reverse-mode differentiation of a DAG: the gradient
//! of the loss with respect to a value is the sum over its uses of the
//! vector-Jacobian product of each user (the chain rule, with the sum rule at
//! fan-out), and a node's contribution is computed only after every user's
//! gradient is complete, which reverse topological order guarantees. Each
//! `grad` node's rule, estimators included (the straight-through estimators
//! of `sign` and of latent weights stand in for derivatives that are zero
//! almost everywhere), is stated in `ir-spec/training.md`, and the
//! interpreter's rules are checked against finite differences. Values that no
//! parameter influences (the model's inputs and what only they feed) get no
//! gradient: nothing would consume it.

use std::collections::{HashMap, HashSet};

use crate::ir::graph::{Graph, GraphError, NodeId};
use crate::ir::ops::{
    BatchNorm, CrossEntropy, DistributionLoss, Grad, Op, ParamRole, QuantizationLoss, RunningStat,
    Statistic, Stats, Wrt,
};
use crate::ir::types::DType;
use crate::ir::verify::{VerifyError, verify};

/// The name of the target input a training graph adds.
pub const TARGET: &str = "target";
/// The name of the loss node.
pub const LOSS: &str = "loss";

/// What to train for.
#[derive(Clone, Debug, PartialEq)]
pub struct LossSpec {
    /// The output that holds the logits; `None` for the model's first output.
    pub logits: Option<String>,
    /// Label smoothing of the cross-entropy, in `[0, 1)`.
    pub smoothing: f32,
    /// The weight `λ` of the weight quantization loss (Zheng et al. 2019),
    /// one `quantization_loss` term per layer with latent binary weights
    /// and no projection;
    /// 0 for none.
    pub quantization: f32,
    /// The weight `λ` of PCNN's projection loss (Gu et al. 2019), one term
    /// per layer with `projection=true`: `NODE.projection_loss`, a
    /// `quantization_loss` of weight `λ/2` (the book's `(λ/2)·Σ‖Ĉ − P∘W‖²`).
    /// Projected layers take this term instead of `quantization`'s; 0 for
    /// none.
    pub projection: f32,
    /// The weight `λ` of the distribution loss (Ding et al. 2019), one
    /// `distribution_loss` term per distinct input of a `sign` that depends
    /// on a parameter; 0 for none.
    pub distribution: f32,
}

impl Default for LossSpec {
    fn default() -> LossSpec {
        LossSpec {
            logits: None,
            smoothing: 0.0,
            quantization: 0.0,
            projection: 0.0,
            distribution: 0.0,
        }
    }
}

/// The name of the cross-entropy node when the loss has other terms.
pub const CROSS_ENTROPY: &str = "loss.cross_entropy";

/// A training-step graph and where its parts are.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// The graph: inputs are the model's, then `target`.
    pub graph: Graph,
    /// The loss node (a scalar for the batch): the cross-entropy, or the sum
    /// of the cross-entropy and the extra terms.
    pub loss: NodeId,
    /// The extra loss terms (each a weighted scalar for the batch), by node
    /// name; empty without `LossSpec::quantization`, `::projection` and
    /// `::distribution`.
    pub terms: Vec<(String, NodeId)>,
    /// The logits node.
    pub logits: NodeId,
    /// The gradient of each trainable parameter, by parameter name.
    pub gradients: Vec<(String, NodeId)>,
    /// The next value of each running statistic, by parameter name.
    pub running: Vec<(String, NodeId)>,
}

/// Why a model cannot be differentiated.
#[derive(Debug, thiserror::Error)]
pub enum DifferentiateError {
    /// The model does not verify.
    #[error("the model is invalid: {0}")]
    Invalid(Box<VerifyError>),
    /// The logits output named does not exist.
    #[error("the model has no output `{0}` to train")]
    NoSuchOutput(String),
    /// The logits are not an f32 vector.
    #[error("the logits `{name}` are {found}; training needs f32 logits of rank 1, [K]")]
    Logits {
        /// The output's name.
        name: String,
        /// Its type.
        found: String,
    },
    /// A node that training cannot handle.
    #[error("`{node}` is a `{op}`{why}; train the model as written, before the passes fold it")]
    NotTrainable {
        /// The node.
        node: String,
        /// Its op.
        op: &'static str,
        /// More detail, empty or starting with ", ".
        why: &'static str,
    },
    /// A name the training graph needs is taken by a node of the model.
    #[error("the model already has a node named `{0}`, which the training graph needs")]
    NameTaken(String),
    /// A loss term's weight is not a finite number `>= 0`.
    #[error("the weight of the {term} loss must be a finite number >= 0, found {found}")]
    TermWeight {
        /// Which term.
        term: &'static str,
        /// The weight given.
        found: f32,
    },
    /// A projection loss was asked for, but no layer has a projection.
    #[error(
        "the projection loss needs a layer with `projection=true` (a binary layer with latent weights)"
    )]
    NoProjection,
    /// A node could not be added: a bug in this pass.
    #[error("internal error while building the training graph: {0}")]
    Internal(String),
}

impl From<GraphError> for DifferentiateError {
    fn from(e: GraphError) -> DifferentiateError {
        match e {
            GraphError::DuplicateName(n) => DifferentiateError::NameTaken(n),
            other => DifferentiateError::Internal(other.to_string()),
        }
    }
}

/// Builds the training-step graph of `model` (see the module doc).
pub fn differentiate(model: &Graph, spec: &LossSpec) -> Result<TrainingGraph, DifferentiateError> {
    verify(model).map_err(|e| DifferentiateError::Invalid(Box::new(e)))?;
    let logits = match &spec.logits {
        None => model.outputs()[0],
        Some(name) => model
            .find(name)
            .filter(|id| model.outputs().contains(id))
            .ok_or_else(|| DifferentiateError::NoSuchOutput(name.clone()))?,
    };
    let logits_ty = &model.node(logits).ty;
    if logits_ty.dtype != DType::F32 || logits_ty.dims().len() != 1 {
        return Err(DifferentiateError::Logits {
            name: model.node(logits).name.clone(),
            found: logits_ty.to_string(),
        });
    }
    let order = model
        .topo_order()
        .map_err(|_| DifferentiateError::Internal("the verified model has a cycle".into()))?;
    check_trainable(model, &order)?;

    // 1. The forward pass in training mode.
    let mut g = Graph::new(model.name.clone());
    for (input, n) in model.input_normalizations() {
        g.set_input_normalization(input, Some(*n));
    }
    let mut new_id: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in &order {
        let node = model.node(id);
        let copied = match &node.op {
            Op::Input => g.add_input(node.name.clone(), node.ty.clone())?,
            op => {
                let op = match op {
                    Op::BatchNorm(a) => Op::BatchNorm(BatchNorm {
                        stats: Stats::Batch,
                        ..*a
                    }),
                    other => other.clone(),
                };
                let operands: Vec<NodeId> = model.operands(id).iter().map(|o| new_id[o]).collect();
                g.add_node(node.name.clone(), op, &operands)?
            }
        };
        new_id.insert(id, copied);
    }

    // 2. The loss: the cross-entropy, plus the weighted terms if any.
    let needs_grad = influenced_by_parameters(model, &order);
    for (term, found) in [
        ("quantization", spec.quantization),
        ("projection", spec.projection),
        ("distribution", spec.distribution),
    ] {
        if !(found.is_finite() && found >= 0.0) {
            return Err(DifferentiateError::TermWeight { term, found });
        }
    }
    // The layers a weight term regularises, with the term's name and weight:
    // PCNN's projection loss on projected layers, the quantization loss on
    // the others.
    let term_of = |op: &Op| {
        if !op.has_latent_binary_weights() {
            None
        } else if op.projection() {
            (spec.projection > 0.0).then_some(("projection_loss", spec.projection / 2.0))
        } else {
            (spec.quantization > 0.0).then_some(("quantization_loss", spec.quantization))
        }
    };
    let quantized: Vec<(NodeId, &str, f32)> = order
        .iter()
        .filter_map(|&id| term_of(&model.node(id).op).map(|(name, w)| (id, name, w)))
        .collect();
    if spec.projection > 0.0 && !order.iter().any(|&id| model.node(id).op.projection()) {
        return Err(DifferentiateError::NoProjection);
    }
    let distributed = if spec.distribution > 0.0 {
        pre_sign_values(model, &order, &needs_grad)
    } else {
        Vec::new()
    };
    let has_terms = !quantized.is_empty() || !distributed.is_empty();
    let target = g.add_input(TARGET, logits_ty.clone())?;
    let cross_entropy = g.add_node(
        if has_terms { CROSS_ENTROPY } else { LOSS },
        Op::CrossEntropy(CrossEntropy {
            smoothing: spec.smoothing,
        }),
        &[new_id[&logits], target],
    )?;
    let mut terms = Vec::new();
    for &(layer, term, weight) in &quantized {
        let name = format!("{}.{term}", model.node(layer).name);
        let fwd = new_id[&layer];
        let id = g.add_node(
            name.clone(),
            Op::QuantizationLoss(QuantizationLoss {
                weight,
                of: Box::new(g.node(fwd).op.clone()),
            }),
            &[fwd, g.operands(fwd)[0]],
        )?;
        terms.push((name, id));
    }
    for &(sign, x) in &distributed {
        let name = format!("{}.distribution_loss", model.node(sign).name);
        let id = g.add_node(
            name.clone(),
            Op::DistributionLoss(DistributionLoss {
                weight: spec.distribution,
            }),
            &[new_id[&x]],
        )?;
        terms.push((name, id));
    }
    let loss = if has_terms {
        let mut parts = vec![cross_entropy];
        parts.extend(terms.iter().map(|t| t.1));
        g.add_node(LOSS, Op::Add, &parts)?
    } else {
        cross_entropy
    };

    // 3. Reverse mode over the nodes between a parameter and the loss.
    let mut on_path = reaches(model, logits);
    for &(_, x) in &distributed {
        on_path.extend(reaches(model, x));
    }
    let active = |id: NodeId| on_path.contains(&id) && needs_grad.contains(&id);
    // How many contributions each value's gradient sums, to name them.
    let mut expected: HashMap<NodeId, usize> = HashMap::new();
    for &u in order.iter().filter(|&&u| active(u)) {
        for (slot, x) in model.operands(u).into_iter().enumerate() {
            if needs_grad.contains(&x) && passes_gradient(&model.node(u).op, slot) {
                *expected.entry(x).or_default() += 1;
            }
        }
    }
    for &(_, x) in &distributed {
        *expected.entry(x).or_default() += 1;
    }
    let grad_name = |x: NodeId, k: usize| {
        let name = &model.node(x).name;
        if expected.get(&x).copied().unwrap_or(0) > 1 {
            format!("{name}.grad.{k}")
        } else {
            format!("{name}.grad")
        }
    };
    let mut contributions: HashMap<NodeId, Vec<NodeId>> = HashMap::new();
    let seed = g.add_node(
        grad_name(logits, 0),
        Op::Grad(Grad {
            of: Box::new(g.node(cross_entropy).op.clone()),
            wrt: Wrt::Operand(0),
        }),
        &grad_operands(&g, cross_entropy, None),
    )?;
    contributions.insert(logits, vec![seed]);
    // Each loss term's gradient, like the cross-entropy's, is a seed: the
    // total loss is their sum, so d loss / d term = 1.
    for (&(_, x), (_, term)) in distributed.iter().zip(&terms[quantized.len()..]) {
        let k = contributions.get(&x).map_or(0, Vec::len);
        let id = g.add_node(
            grad_name(x, k),
            Op::Grad(Grad {
                of: Box::new(g.node(*term).op.clone()),
                wrt: Wrt::Operand(0),
            }),
            &grad_operands(&g, *term, None),
        )?;
        contributions.entry(x).or_default().push(id);
    }

    let mut gradients = Vec::new();
    let mut running = Vec::new();
    for &u in order.iter().rev().filter(|&&u| active(u)) {
        let Some(parts) = contributions.remove(&u) else {
            continue;
        };
        let name = model.node(u).name.clone();
        let dy = if parts.len() == 1 {
            parts[0]
        } else {
            g.add_node(format!("{name}.grad"), Op::Add, &parts)?
        };
        let fwd = new_id[&u];
        let op = g.node(fwd).op.clone();
        let operand_types = model.operand_types(u);
        for role in ParamRole::ALL {
            if op.trainable_param(&operand_types, role).is_some() {
                let param = format!("{name}.{}", role.name());
                // A regularised weight's (and learned scale's) gradient has
                // a second part, the quantization loss's, added below.
                let also_regularised = matches!(
                    role,
                    ParamRole::Weight | ParamRole::Scale | ParamRole::Projection
                ) && quantized.iter().any(|q| q.0 == u);
                let id = g.add_node(
                    if also_regularised {
                        format!("{param}.grad.0")
                    } else {
                        format!("{param}.grad")
                    },
                    Op::Grad(Grad {
                        of: Box::new(op.clone()),
                        wrt: Wrt::Param(role),
                    }),
                    &grad_operands(&g, fwd, Some(dy)),
                )?;
                gradients.push((param, id));
            }
        }
        if let Op::BatchNorm(_) = op {
            for stat in [Statistic::Mean, Statistic::Var] {
                let param = format!("{name}.{}", stat.param());
                let id = g.add_node(
                    format!("{param}.next"),
                    Op::RunningStat(RunningStat {
                        stat,
                        momentum: 0.1,
                    }),
                    &[fwd, g.operands(fwd)[0]],
                )?;
                running.push((param, id));
            }
        }
        for (slot, x) in model.operands(u).into_iter().enumerate() {
            if !needs_grad.contains(&x) || !passes_gradient(&op, slot) {
                continue;
            }
            let k = contributions.get(&x).map_or(0, Vec::len);
            let part = match op {
                // The sum and the identity pass their gradient on unchanged.
                Op::Add | Op::Identity => dy,
                _ => g.add_node(
                    grad_name(x, k),
                    Op::Grad(Grad {
                        of: Box::new(op.clone()),
                        wrt: Wrt::Operand(slot),
                    }),
                    &grad_operands(&g, fwd, Some(dy)),
                )?,
            };
            contributions.entry(x).or_default().push(part);
        }
    }

    // The quantization loss's part of each regularised weight's (and learned
    // scale's) gradient, summed with the part through the layer's value when
    // there is one.
    for (&(layer, _, _), (_, term)) in quantized.iter().zip(&terms) {
        let term_op = g.node(*term).op.clone();
        let roles: Vec<ParamRole> = [ParamRole::Weight, ParamRole::Scale, ParamRole::Projection]
            .into_iter()
            .filter(|&r| {
                term_op
                    .trainable_param(&g.operand_types(*term), r)
                    .is_some()
            })
            .collect();
        for role in roles {
            let param = format!("{}.{}", model.node(layer).name, role.name());
            let through_value = gradients.iter().position(|(p, _)| *p == param);
            let part = g.add_node(
                if through_value.is_some() {
                    format!("{param}.grad.1")
                } else {
                    format!("{param}.grad")
                },
                Op::Grad(Grad {
                    of: Box::new(term_op.clone()),
                    wrt: Wrt::Param(role),
                }),
                &grad_operands(&g, *term, None),
            )?;
            match through_value {
                Some(i) => {
                    let sum =
                        g.add_node(format!("{param}.grad"), Op::Add, &[gradients[i].1, part])?;
                    gradients[i].1 = sum;
                }
                None => gradients.push((param, part)),
            }
        }
    }

    // Parameter order, as `graph_params` lists them.
    let param_order: HashMap<String, usize> = crate::ir::params::graph_params(model)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p.name, i))
        .collect();
    gradients.sort_by_key(|(p, _)| param_order.get(p).copied().unwrap_or(usize::MAX));
    running.sort_by_key(|(p, _)| param_order.get(p).copied().unwrap_or(usize::MAX));

    let mut outputs = vec![loss];
    outputs.extend(model.outputs().iter().map(|o| new_id[o]));
    outputs.extend(gradients.iter().map(|(_, id)| *id));
    outputs.extend(running.iter().map(|(_, id)| *id));
    g.set_outputs(outputs);
    verify(&g).map_err(|e| DifferentiateError::Internal(e.to_string()))?;
    Ok(TrainingGraph {
        logits: new_id[&logits],
        graph: g,
        loss,
        terms,
        gradients,
        running,
    })
}

/// The operands of a `grad` node of `fwd`: the node, its operands, `dy`.
fn grad_operands(g: &Graph, fwd: NodeId, dy: Option<NodeId>) -> Vec<NodeId> {
    let mut v = vec![fwd];
    v.extend(g.operands(fwd));
    v.extend(dy);
    v
}

/// The distinct inputs of `sign` nodes that depend on a parameter, each with
/// the first `sign` that reads it: the values a distribution loss shapes.
/// (A `sign` of a model input has nothing to train.)
fn pre_sign_values(
    model: &Graph,
    order: &[NodeId],
    needs_grad: &HashSet<NodeId>,
) -> Vec<(NodeId, NodeId)> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for &id in order {
        if let Op::Sign(_) = model.node(id).op {
            let x = model.operands(id)[0];
            if needs_grad.contains(&x) && seen.insert(x) {
                found.push((id, x));
            }
        }
    }
    found
}

/// Whether `op` passes a (possibly nonzero) gradient to operand `slot`.
fn passes_gradient(op: &Op, slot: usize) -> bool {
    !matches!(op, Op::Zero) && op.differentiable_operand(slot)
}

/// Refuses what training does not handle: folded forms, packed weights.
fn check_trainable(model: &Graph, order: &[NodeId]) -> Result<(), DifferentiateError> {
    for &id in order {
        let node = model.node(id);
        let refuse = |why: &'static str| {
            Err(DifferentiateError::NotTrainable {
                node: node.name.clone(),
                op: node.op.name(),
                why,
            })
        };
        match &node.op {
            Op::Threshold | Op::Affine => return refuse(", a folded form"),
            Op::BConv2d(_) | Op::BDense(_) if !node.op.differentiable_operand(0) => {
                return refuse(" with folded output or packed weights");
            }
            op if op.is_training() => return refuse(", already a training op"),
            _ => {}
        }
    }
    Ok(())
}

/// The nodes from which `target` can be reached (itself included).
fn reaches(model: &Graph, target: NodeId) -> HashSet<NodeId> {
    let mut seen = HashSet::from([target]);
    let mut stack = vec![target];
    while let Some(id) = stack.pop() {
        for o in model.operands(id) {
            if seen.insert(o) {
                stack.push(o);
            }
        }
    }
    seen
}

/// The nodes whose value depends on a trainable parameter (a `zero` depends
/// on nothing).
fn influenced_by_parameters(model: &Graph, order: &[NodeId]) -> HashSet<NodeId> {
    let mut set = HashSet::new();
    for &id in order {
        if let Op::Zero = model.node(id).op {
            continue;
        }
        let types = model.operand_types(id);
        let own = ParamRole::ALL
            .into_iter()
            .any(|r| model.node(id).op.trainable_param(&types, r).is_some());
        if own || model.operands(id).iter().any(|o| set.contains(o)) {
            set.insert(id);
        }
    }
    set
}
