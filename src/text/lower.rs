//! Lowering: a syntax tree to a typed IR graph.
//!
//! Lowering is an evaluator. Each binding is evaluated on first use (so bindings
//! may appear in any order, and a binding that depends on itself is reported as
//! a cycle), each op call becomes one node whose type is inferred on the spot,
//! and each cell call instantiates the cell's body under a fresh name prefix.
//!
//! Bindings are visited in an order where each follows the bindings it names
//! (`evaluation_order`), so evaluation recurses only as deep as expressions
//! and cells nest, however the source orders its bindings. Nesting depth and
//! the total work are bounded ([`MAX_EVAL_DEPTH`], [`MAX_STEPS`]): cells that
//! call cells can describe graphs exponentially larger than the file, and such
//! a file is an error, not a hang.
//!
//! Node names are derived from the source, deterministically, because parameters
//! are found by them (`ir-spec/language.md`, "Node names"):
//! - a binding's node takes the binding's name: `c1`;
//! - a call nested in an argument of node `P` is `P.OP`, or `P.OP.k` when `P`
//!   has several arguments calling `OP` (k counts them from 0): `s1.batchnorm`,
//!   `b.edge.0`;
//! - alternative `i` of a `choose` named `P` is `P.i`: `a.choose.0`;
//! - inside an instance `I` of a cell, binding `t` is `I.t` and the returned
//!   expression is named like a nested call of `I`: `a.choose`.

use std::collections::HashMap;

use super::ast::{self, Arg, Expr, ExprKind, Ident, Literal, Span, Stmt};
use super::diagnostic::Diagnostic;
use crate::ir::graph::{Graph, GraphError, NodeId};
use crate::ir::ops::{
    BConv2d, BDense, BatchNorm, BinaryOutput, Conv2d, ConvGeometry, CrossEntropy, Dense,
    DistributionLoss, Grad, HardTanh, Op, OpKind, PadValue, Pair, ParamRole, Pool,
    QuantizationLoss, RunningStat, Scale, ShuffleChannels, Sign, SignGrad, SliceChannels,
    Statistic, Stats, TypeError, WeightForm, WeightKind, Wrt,
};
use crate::ir::types::{DType, MAX_ELEMENTS, TensorType};
use crate::util::closest;

/// Cells may instantiate other cells at most this deep.
const MAX_CELL_DEPTH: usize = 32;

/// Expressions, cell instances and bindings being evaluated may nest at most
/// this deep (each level is one stack frame of the evaluator).
pub const MAX_EVAL_DEPTH: usize = 128;

/// Lowering evaluates at most this many expressions, counting every cell
/// instance's body anew: far more than any real network, few enough to finish
/// in well under a second.
pub const MAX_STEPS: usize = 100_000;

mod args;
use args::{Args, child_names, suggest};
mod cells;
mod op_call;
mod order;
use order::{cycle_error, evaluation_order};
mod partial;

/// Choices that change how a file lowers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowerOptions {
    /// The ratio `K` of every cell with a `partial(x, c, K)` clause, in place
    /// of the `K` it declares; `Some(1)` lowers them at full width (the
    /// network an architecture search derives).
    pub partial_channels: Option<usize>,
}

/// Lowers a parsed file to a graph. The graph is well-typed by construction.
pub fn lower(file: &ast::File) -> Result<Graph, Diagnostic> {
    lower_with(file, LowerOptions::default())
}

/// [`lower`] with `options`.
pub fn lower_with(file: &ast::File, options: LowerOptions) -> Result<Graph, Diagnostic> {
    let mut model = None;
    let mut cells: HashMap<&str, &ast::Cell> = HashMap::new();
    for item in &file.items {
        match item {
            ast::Item::Model(m) => {
                if let Some(first) = model.replace(m) {
                    let first: &ast::Model = first;
                    return Err(Diagnostic::at(
                        m.name.span,
                        format!(
                            "a file holds one model, but `{}` is a second one",
                            m.name.name
                        ),
                        "second model",
                    )
                    .with_secondary(first.name.span, "first model"));
                }
            }
            ast::Item::Cell(c) => {
                if OpKind::callable(&c.name.name).is_some() {
                    return Err(Diagnostic::at(
                        c.name.span,
                        format!("a cell cannot be named `{}`: that is an op", c.name.name),
                        "choose another name",
                    ));
                }
                if let Some(first) = cells.insert(&c.name.name, c) {
                    return Err(Diagnostic::at(
                        c.name.span,
                        format!("the cell `{}` is defined twice", c.name.name),
                        "second definition",
                    )
                    .with_secondary(first.name.span, "first definition"));
                }
            }
        }
    }
    let Some(model) = model else {
        let mut d = Diagnostic::whole_file("the file defines no model");
        // The parser accepts no file without items, so there is a first cell.
        if let Some(ast::Item::Cell(c)) = file.items.first() {
            d = Diagnostic::at(c.name.span, d.message, "only cells are defined");
        }
        return Err(d.with_note("add the model that uses the cells: `model NAME { ... }`"));
    };
    let mut lowerer = Lowerer {
        cells,
        graph: Graph::new(&model.name.name),
        defined: HashMap::new(),
        cell_stack: Vec::new(),
        depth: 0,
        steps: 0,
        options,
    };
    lowerer.model(model)?;
    Ok(lowerer.graph)
}

/// What an expression evaluates to.
#[derive(Clone, Debug)]
enum Value {
    Tensor(NodeId),
    Int(i64),
    Float(f64),
    Pair(i64, i64),
}

impl Value {
    fn describe(&self, graph: &Graph) -> String {
        match self {
            Value::Tensor(id) => format!("a tensor of type {}", graph.node(*id).ty),
            Value::Int(v) => format!("the integer {v}"),
            Value::Float(v) => format!("the number {v:?}"),
            Value::Pair(a, b) => format!("the pair ({a}, {b})"),
        }
    }
}

enum State {
    Pending,
    Active,
    Done(Value),
}

struct Slot<'a> {
    binding: Option<&'a ast::Binding>,
    state: State,
}

/// The names visible in a model body or one cell instance.
struct Scope<'a> {
    /// Prepended to binding names to form node names: "" or "INSTANCE.".
    prefix: String,
    slots: HashMap<&'a str, Slot<'a>>,
    /// Bindings being evaluated, innermost last: the path of a cycle.
    active: Vec<&'a str>,
}

impl<'a> Scope<'a> {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().copied()
    }
}

struct Lowerer<'a> {
    cells: HashMap<&'a str, &'a ast::Cell>,
    graph: Graph,
    /// Where each node name was defined, for "first defined here".
    defined: HashMap<String, Span>,
    /// Cells being instantiated, innermost last, with the call that instantiates each.
    cell_stack: Vec<(&'a str, Span)>,
    /// How deeply `eval` is nested now.
    depth: usize,
    /// How many expressions have been evaluated.
    steps: usize,
    options: LowerOptions,
}

/// The words `bias=` takes.
const BOOL: [(&str, bool); 2] = [("true", true), ("false", false)];
/// The words `scale=` takes.
const SCALE: [(&str, Scale); 3] = [
    ("none", Scale::None),
    ("channel", Scale::Channel),
    ("learned", Scale::Learned),
];
/// The words `output=` takes (binary layers).
const OUTPUT: [(&str, BinaryOutput); 3] = [
    ("dot", BinaryOutput::Dot),
    ("affine", BinaryOutput::Affine),
    ("threshold", BinaryOutput::Threshold),
];
/// The words `weights=` takes (binary layers).
const WEIGHTS: [(&str, WeightForm); 2] = [
    ("latent", WeightForm::Latent),
    ("packed", WeightForm::Packed),
];

/// The words `weights=` takes (real-valued layers).
const WEIGHT_KIND: [(&str, WeightKind); 2] =
    [("real", WeightKind::Real), ("binary", WeightKind::Binary)];
/// The words `stats=` takes (batchnorm).
const STATS: [(&str, Stats); 2] = [("running", Stats::Running), ("batch", Stats::Batch)];
/// The words `grad=` takes (sign).
const SIGN_GRAD: [(&str, SignGrad); 3] = [
    ("ste", SignGrad::Ste),
    ("approx", SignGrad::Approx),
    ("swish", SignGrad::Swish),
];
/// The words `stat=` takes (running_stat).
const STATISTIC: [(&str, Statistic); 2] = [("mean", Statistic::Mean), ("var", Statistic::Var)];
/// The keywords of the training ops whose values are words, never bindings
/// (`wrt=` also takes an operand index).
const TRAINING_WORD_KEYWORDS: [&str; 4] = ["stats", "grad", "stat", "wrt"];

impl<'a> Lowerer<'a> {
    fn model(&mut self, model: &'a ast::Model) -> Result<(), Diagnostic> {
        let mut scope = Scope {
            prefix: String::new(),
            slots: HashMap::new(),
            active: Vec::new(),
        };
        let mut outputs: Vec<&Ident> = Vec::new();
        let mut bindings = Vec::new();
        for stmt in &model.body {
            match stmt {
                Stmt::Input(decl) => {
                    let ty = self.input_type(decl)?;
                    self.define(&decl.name)?;
                    let id = self
                        .graph
                        .add_input(&decl.name.name, ty)
                        .map_err(|e| self.graph_error(e, decl.name.span))?;
                    if let Some(clause) = &decl.normalize {
                        let n = input_normalization(clause)?;
                        self.graph.set_input_normalization(&decl.name.name, Some(n));
                    }
                    scope.slots.insert(
                        &decl.name.name,
                        Slot {
                            binding: None,
                            state: State::Done(Value::Tensor(id)),
                        },
                    );
                }
                Stmt::Output(names) => {
                    // The same tensor may be returned twice: a graph whose
                    // outputs alias (`y = x  output x, y`) prints that way.
                    outputs.extend(names);
                }
                Stmt::Binding(b) => bindings.push(b),
            }
        }
        for b in &bindings {
            self.declare(&mut scope, b)?;
        }
        for k in evaluation_order(&bindings)? {
            let b = bindings[k];
            self.binding_value(&mut scope, &b.name.name, b.name.span)?;
        }
        if self.graph.inputs().is_empty() {
            return Err(Diagnostic::at(
                model.name.span,
                format!("model `{}` has no input", model.name.name),
                "declared here",
            )
            .with_note("declare one with `input NAME: f32[C, H, W]`"));
        }
        if outputs.is_empty() {
            return Err(Diagnostic::at(
                model.name.span,
                format!("model `{}` has no output", model.name.name),
                "declared here",
            )
            .with_note("add `output NAME` naming the result"));
        }
        for name in outputs {
            match self.binding_value(&mut scope, &name.name, name.span)? {
                Value::Tensor(id) => self.graph.add_output(id),
                other => {
                    return Err(Diagnostic::at(
                        name.span,
                        format!(
                            "an output must be a tensor, but `{}` is {}",
                            name.name,
                            other.describe(&self.graph)
                        ),
                        "not a tensor",
                    ));
                }
            }
        }
        Ok(())
    }

    fn input_type(&self, decl: &ast::InputDecl) -> Result<TensorType, Diagnostic> {
        match DType::from_name(&decl.dtype.name) {
            Some(DType::F32) => {}
            Some(DType::Bit) => {
                return Err(Diagnostic::at(
                    decl.dtype.span,
                    "model inputs are f32",
                    "expected `f32`",
                )
                .with_note("binarize inside the model with `sign(...)`"));
            }
            None => {
                return Err(Diagnostic::at(
                    decl.dtype.span,
                    format!("unknown element type `{}`", decl.dtype.name),
                    "expected `f32`",
                ));
            }
        }
        let mut dims = Vec::new();
        let mut total: u64 = 1;
        for &(lit, span) in &decl.dims {
            let d = match lit {
                Literal::Int(v) if v >= 1 => v as u64,
                Literal::Int(v) => {
                    return Err(Diagnostic::at(
                        span,
                        format!("a dimension must be at least 1, found {v}"),
                        "expected a positive integer",
                    ));
                }
                Literal::Float(v) => {
                    return Err(Diagnostic::at(
                        span,
                        format!("a dimension must be an integer, found {v}"),
                        "expected a positive integer",
                    ));
                }
            };
            total = total.saturating_mul(d);
            if total > MAX_ELEMENTS {
                return Err(Diagnostic::at(
                    span,
                    "the input has more than 2^32 elements per sample",
                    "too large",
                ));
            }
            dims.push(d as usize);
        }
        Ok(TensorType::f32(dims))
    }

    /// Records a node name defined by the source, rejecting duplicates.
    fn define(&mut self, name: &Ident) -> Result<(), Diagnostic> {
        if let Some(&first) = self.defined.get(&name.name) {
            return Err(Diagnostic::at(
                name.span,
                format!("`{}` is defined twice", name.name),
                "second definition",
            )
            .with_secondary(first, "first definition"));
        }
        self.defined.insert(name.name.clone(), name.span);
        Ok(())
    }

    fn declare(&mut self, scope: &mut Scope<'a>, b: &'a ast::Binding) -> Result<(), Diagnostic> {
        if let Some(slot) = scope.slots.get(b.name.name.as_str()) {
            let first = slot.binding.map(|f| f.name.span).or_else(|| {
                self.defined
                    .get(&format!("{}{}", scope.prefix, b.name.name))
                    .copied()
            });
            let mut d = Diagnostic::at(
                b.name.span,
                format!("`{}` is defined twice", b.name.name),
                "second definition",
            );
            if let Some(first) = first {
                d = d.with_secondary(first, "first definition");
            }
            return Err(d);
        }
        scope.slots.insert(
            &b.name.name,
            Slot {
                binding: Some(b),
                state: State::Pending,
            },
        );
        Ok(())
    }

    /// The value of name `name` in `scope`, evaluating its binding if needed.
    fn binding_value(
        &mut self,
        scope: &mut Scope<'a>,
        name: &str,
        used_at: Span,
    ) -> Result<Value, Diagnostic> {
        let Some(slot) = scope.slots.get_mut(name) else {
            let d = Diagnostic::at(used_at, format!("unknown name `{name}`"), "not defined");
            if scope.prefix.is_empty() && self.graph.inputs().is_empty() {
                return Err(d.with_note(format!(
                    "the model declares no input; declare it with `input {name}: f32[C, H, W]`"
                )));
            }
            let d = match closest(name, scope.names()) {
                Some(s) => Diagnostic::at(
                    used_at,
                    format!("unknown name `{name}`"),
                    format!("not defined; did you mean `{s}`?"),
                ),
                None => d,
            };
            return Err(match self.cell_stack.last() {
                Some((cell, _)) => d.with_note(format!(
                    "a cell sees only its parameters and its own bindings; pass `{name}` to `{cell}` as an argument"
                )),
                None => d,
            });
        };
        match &slot.state {
            State::Done(v) => return Ok(v.clone()),
            State::Active => {
                let start = scope.active.iter().position(|&a| a == name).unwrap_or(0);
                let mut path: Vec<&str> = scope.active[start..].to_vec();
                path.push(name);
                return Err(cycle_error(used_at, name, &path));
            }
            State::Pending => {}
        }
        slot.state = State::Active;
        let Some(binding) = slot.binding else {
            return Err(Diagnostic::at(
                used_at,
                format!("`{name}` has no value"),
                "here",
            ));
        };
        scope.active.push(&binding.name.name);
        let node_name = format!("{}{}", scope.prefix, binding.name.name);
        let value = self.eval(scope, &binding.value, &node_name, Some(&binding.name))?;
        scope.active.pop();
        if let Some(slot) = scope.slots.get_mut(name) {
            slot.state = State::Done(value.clone());
        }
        Ok(value)
    }

    /// Evaluates `expr`. A node it creates is named `name`; `binding` is the
    /// source name when `expr` is a binding's whole right-hand side.
    ///
    /// Every recursion of the evaluator passes through here, so this is where
    /// depth and work are bounded. The arms live in functions of their own to
    /// keep this frame, which is on the stack once per level, small.
    fn eval(
        &mut self,
        scope: &mut Scope<'a>,
        expr: &'a Expr,
        name: &str,
        binding: Option<&Ident>,
    ) -> Result<Value, Diagnostic> {
        if self.depth >= MAX_EVAL_DEPTH || self.steps >= MAX_STEPS {
            return Err(self.too_big(scope, expr));
        }
        self.depth += 1;
        self.steps += 1;
        let value = match &expr.kind {
            ExprKind::Name(n) => self.binding_value(scope, n, expr.span),
            ExprKind::Literal(Literal::Int(v)) => Ok(Value::Int(*v)),
            ExprKind::Literal(Literal::Float(v)) => Ok(Value::Float(*v)),
            ExprKind::Pair(a, b) => self.pair_value(scope, a, b, name),
            ExprKind::Choose(alts) => self.choose(scope, expr, alts, name, binding),
            ExprKind::Call { callee, args } => match self.cells.get(callee.name.as_str()) {
                Some(&cell) => self.instantiate(scope, cell, callee, expr.span, args, name),
                None => self.op_call(scope, callee, args, name, binding),
            },
        };
        self.depth -= 1;
        value
    }

    /// The error for running out of depth or steps at `expr`.
    #[cold]
    #[inline(never)]
    fn too_big(&self, scope: &Scope<'a>, expr: &Expr) -> Diagnostic {
        let mut d = if self.steps >= MAX_STEPS {
            Diagnostic::at(
                expr.span,
                format!(
                    "the model is too large: lowering it evaluates more than {MAX_STEPS} expressions"
                ),
                "the limit is reached here",
            )
            .with_note("each call of a cell expands its whole body again; a cell that calls other cells several times multiplies their size")
        } else {
            Diagnostic::at(
                expr.span,
                format!(
                    "expressions, cells and bindings nest more than {MAX_EVAL_DEPTH} levels deep"
                ),
                "the limit is reached here",
            )
        };
        if let Some(&(_, outer)) = self.cell_stack.first() {
            d = d.with_secondary(outer, "while expanding this cell");
        }
        if let [.., last] = scope.active[..] {
            d = d.with_note(format!("while evaluating the binding `{last}`"));
        }
        d
    }

    /// `(a, b)`: a pair of integers.
    fn pair_value(
        &mut self,
        scope: &mut Scope<'a>,
        a: &'a Expr,
        b: &'a Expr,
        name: &str,
    ) -> Result<Value, Diagnostic> {
        let mut element = |this: &mut Self, e: &'a Expr| {
            let found = match &e.kind {
                // Not evaluated: see `number`.
                ExprKind::Call { callee, .. } if !this.cells.contains_key(callee.name.as_str()) => {
                    format!("a call of `{}`", callee.name)
                }
                ExprKind::Choose(_) => "a `choose`".to_string(),
                _ => match this.eval(scope, e, name, None)? {
                    Value::Int(v) => return Ok(v),
                    other => other.describe(&this.graph),
                },
            };
            Err(Diagnostic::at(
                e.span,
                format!("the elements of a pair must be integers, found {found}"),
                "expected an integer",
            ))
        };
        let a = element(self, a)?;
        let b = element(self, b)?;
        Ok(Value::Pair(a, b))
    }

    /// `choose { alt, ... }`: one node over the alternatives.
    fn choose(
        &mut self,
        scope: &mut Scope<'a>,
        expr: &'a Expr,
        alts: &'a [Expr],
        name: &str,
        binding: Option<&Ident>,
    ) -> Result<Value, Diagnostic> {
        let mut operands = Vec::new();
        for (i, alt) in alts.iter().enumerate() {
            let v = self.eval(scope, alt, &format!("{name}.{i}"), None)?;
            operands.push((
                self.expect_tensor(v, alt.span, &format!("alternative {i} of `choose`"))?,
                alt.span,
            ));
        }
        let callee = Ident {
            name: "choose".into(),
            span: Span::new(expr.span.start, expr.span.start + "choose".len()),
        };
        self.add_node(name, binding, Op::Choose, &operands, &callee)
    }

    /// `callee(args)` where `callee` is not a cell: an op node.
    fn op_call(
        &mut self,
        scope: &mut Scope<'a>,
        callee: &'a Ident,
        args: &'a [Arg],
        name: &str,
        binding: Option<&Ident>,
    ) -> Result<Value, Diagnostic> {
        let Some(kind) = OpKind::callable(&callee.name) else {
            return Err(self.unknown_op(callee));
        };
        let mut args = Args::new(callee, args, name)?;
        let (op, operands) = self.build_op(scope, kind, &mut args)?;
        args.finish()?;
        self.add_node(name, binding, op, &operands, callee)
    }

    fn unknown_op(&self, callee: &Ident) -> Diagnostic {
        let mut candidates: Vec<&str> = OpKind::ALL
            .iter()
            .filter(|k| OpKind::callable(k.name()).is_some())
            .map(|k| k.name())
            .chain(self.cells.keys().copied())
            .collect();
        candidates.sort_unstable();
        let label = match suggest(&callee.name, &candidates) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "not an op or cell".to_string(),
        };
        Diagnostic::at(callee.span, format!("unknown op `{}`", callee.name), label)
            .with_note("ops are listed in ir-spec/ops.md; cells must be defined in the same file")
    }

    fn expect_tensor(&self, v: Value, span: Span, what: &str) -> Result<NodeId, Diagnostic> {
        match v {
            Value::Tensor(id) => Ok(id),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "{what} must be a tensor, found {}",
                    other.describe(&self.graph)
                ),
                "expected a tensor",
            )),
        }
    }

    fn add_node(
        &mut self,
        name: &str,
        binding: Option<&Ident>,
        op: Op,
        operands: &[(NodeId, Span)],
        callee: &Ident,
    ) -> Result<Value, Diagnostic> {
        let ids: Vec<NodeId> = operands.iter().map(|o| o.0).collect();
        let name_span = binding.map_or(callee.span, |b| b.span);
        match self.graph.add_node(name, op, &ids) {
            Ok(id) => {
                self.defined.entry(name.to_string()).or_insert(name_span);
                Ok(Value::Tensor(id))
            }
            Err(GraphError::DuplicateName(n)) => {
                let mut d = Diagnostic::at(
                    name_span,
                    format!("the node name `{n}` is taken"),
                    if binding.is_some() {
                        "defined again here"
                    } else {
                        "this call would be named the same"
                    },
                );
                if let Some(&first) = self.defined.get(&n) {
                    d = d.with_secondary(first, "first defined here");
                }
                Err(d.with_note(
                    "nested calls are named PARENT.OP; see \"Node names\" in ir-spec/language.md",
                ))
            }
            Err(GraphError::Type(e)) => Err(self.type_error(e, operands, callee)),
            Err(e @ GraphError::UnknownNode(_)) => {
                Err(Diagnostic::at(callee.span, e.to_string(), "here"))
            }
        }
    }

    fn type_error(&self, e: TypeError, operands: &[(NodeId, Span)], callee: &Ident) -> Diagnostic {
        let ty = |i: usize| self.graph.node(operands[i].0).ty.to_string();
        let mut d = match (&e, e.operand()) {
            (TypeError::Mismatch { first, .. }, Some(i)) if i < operands.len() => {
                Diagnostic::at(operands[i].1, e.to_string(), format!("this is {}", ty(i)))
                    .with_secondary(operands[*first].1, format!("this is {}", ty(*first)))
            }
            (_, Some(i)) if i < operands.len() => {
                Diagnostic::at(operands[i].1, e.to_string(), format!("this is {}", ty(i)))
            }
            _ => {
                let d = Diagnostic::at(
                    callee.span,
                    e.to_string(),
                    format!("in this `{}`", callee.name),
                );
                // Window and channel attributes are checked against the input's
                // shape: show it.
                let windowed = matches!(
                    e,
                    TypeError::Attribute {
                        op: OpKind::Conv2d | OpKind::BConv2d | OpKind::MaxPool | OpKind::AvgPool,
                        ..
                    } | TypeError::TooLarge { .. }
                );
                match operands.first() {
                    Some(&(_, span)) if windowed => {
                        d.with_secondary(span, format!("this is {}", ty(0)))
                    }
                    _ => d,
                }
            }
        };
        if let TypeError::NeedsBits { .. } = e {
            d = d.with_note("binary layers take ±1 inputs: only `sign` makes bits");
        }
        d
    }

    fn graph_error(&self, e: GraphError, span: Span) -> Diagnostic {
        Diagnostic::at(span, e.to_string(), "here")
    }
}

/// The `normalize(mean=M, std=S)` clause of an input declaration: keyword
/// numbers only, `mean` finite (default 0), `std` finite and not zero
/// (default 1).
fn input_normalization(clause: &ast::Expr) -> Result<crate::ir::InputNormalization, Diagnostic> {
    let ExprKind::Call { args, .. } = &clause.kind else {
        return Err(Diagnostic::at(
            clause.span,
            "expected `normalize(mean=M, std=S)`",
            "here",
        ));
    };
    let mut n = crate::ir::InputNormalization {
        mean: 0.0,
        std: 1.0,
    };
    let mut seen: Vec<&str> = Vec::new();
    for arg in args {
        let Some(key) = &arg.keyword else {
            return Err(Diagnostic::at(
                arg.value.span,
                "`normalize` takes keyword arguments: `normalize(mean=M, std=S)`",
                "expected `mean=` or `std=`",
            ));
        };
        if seen.contains(&key.name.as_str()) {
            return Err(Diagnostic::at(
                key.span,
                format!("`{}` is given twice", key.name),
                "second value",
            ));
        }
        let value = match arg.value.kind {
            ExprKind::Literal(Literal::Int(v)) => v as f64,
            ExprKind::Literal(Literal::Float(v)) => v,
            _ => {
                return Err(Diagnostic::at(
                    arg.value.span,
                    format!("`{}` of `normalize` needs a number", key.name),
                    "expected a number",
                ));
            }
        };
        let v = value as f32;
        let bad = |what: &str| {
            Diagnostic::at(
                arg.value.span,
                format!(
                    "`{}` of `normalize` must be {what}, found {value}",
                    key.name
                ),
                "out of range",
            )
        };
        match key.name.as_str() {
            "mean" if v.is_finite() => n.mean = v,
            "mean" => return Err(bad("a finite number")),
            "std" if v.is_finite() && v != 0.0 => n.std = v,
            "std" => return Err(bad("a finite number other than 0")),
            other => {
                return Err(Diagnostic::at(
                    key.span,
                    format!("`normalize` has no parameter `{other}`"),
                    "expected `mean` or `std`",
                ));
            }
        }
        seen.push(&key.name);
    }
    Ok(n)
}
