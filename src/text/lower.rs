//! Lowering: a syntax tree to a typed IR graph.
//!
//! Lowering is an evaluator. Each binding is evaluated on first use (so bindings
//! may appear in any order, and a binding that depends on itself is reported as
//! a cycle), each op call becomes one node whose type is inferred on the spot,
//! and each cell call instantiates the cell's body under a fresh name prefix.
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
    BConv2d, BDense, BatchNorm, Conv2d, ConvGeometry, Dense, HardTanh, Op, OpKind, PadValue, Pair,
    Pool, Scale, TypeError,
};
use crate::ir::types::{DType, MAX_ELEMENTS, TensorType};
use crate::util::closest;

/// Cells may instantiate other cells at most this deep.
const MAX_CELL_DEPTH: usize = 32;

/// Lowers a parsed file to a graph. The graph is well-typed by construction.
pub fn lower(file: &ast::File) -> Result<Graph, Diagnostic> {
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
        return Err(Diagnostic::whole_file("the file defines no model")
            .with_note("expected `model NAME { ... }`"));
    };
    let mut lowerer = Lowerer {
        cells,
        graph: Graph::new(&model.name.name),
        defined: HashMap::new(),
        cell_stack: Vec::new(),
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
            Value::Float(v) => format!("the number {v}"),
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
    /// Cells being instantiated, innermost last.
    cell_stack: Vec<&'a str>,
}

/// The arguments of one call, consumed parameter by parameter.
struct Args<'e> {
    callee: &'e Ident,
    call_span: Span,
    positional: Vec<(&'e Expr, String)>,
    next: usize,
    keywords: Vec<(&'e Ident, &'e Expr, String, bool)>,
    /// Parameters asked for so far, for "did you mean".
    asked: Vec<&'static str>,
}

/// The name a nested call or choose at argument `index` of node `parent` gets.
fn child_names(parent: &str, exprs: &[&Expr]) -> Vec<String> {
    let callee = |e: &Expr| match &e.kind {
        ExprKind::Call { callee, .. } => Some(callee.name.clone()),
        ExprKind::Choose(_) => Some("choose".to_string()),
        _ => None,
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in exprs {
        if let Some(c) = callee(e) {
            *counts.entry(c).or_default() += 1;
        }
    }
    exprs
        .iter()
        .map(|e| match callee(e) {
            None => format!("{parent}.?"),
            Some(c) if counts[&c] == 1 => format!("{parent}.{c}"),
            Some(c) => {
                let k = seen.entry(c.clone()).or_default();
                *k += 1;
                format!("{parent}.{c}.{}", *k - 1)
            }
        })
        .collect()
}

impl<'e> Args<'e> {
    fn new(
        callee: &'e Ident,
        call_span: Span,
        args: &'e [Arg],
        parent: &str,
    ) -> Result<Args<'e>, Diagnostic> {
        let exprs: Vec<&Expr> = args.iter().map(|a| &a.value).collect();
        let names = child_names(parent, &exprs);
        let mut positional = Vec::new();
        let mut keywords: Vec<(&Ident, &Expr, String, bool)> = Vec::new();
        for (arg, name) in args.iter().zip(names) {
            match &arg.keyword {
                None if !keywords.is_empty() => {
                    return Err(Diagnostic::at(
                        arg.value.span,
                        "a positional argument cannot follow a keyword argument",
                        "positional argument after keywords",
                    )
                    .with_secondary(keywords[0].0.span, "first keyword argument"));
                }
                None => positional.push((&arg.value, name)),
                Some(k) => {
                    if let Some(prev) = keywords.iter().find(|p| p.0.name == k.name) {
                        return Err(Diagnostic::at(
                            k.span,
                            format!("`{}` is given twice", k.name),
                            "second time",
                        )
                        .with_secondary(prev.0.span, "first time"));
                    }
                    keywords.push((k, &arg.value, name, false));
                }
            }
        }
        Ok(Args {
            callee,
            call_span,
            positional,
            next: 0,
            keywords,
            asked: Vec::new(),
        })
    }

    /// The argument for parameter `param`, positional first, then by keyword.
    fn take(&mut self, param: &'static str) -> Result<Option<(&'e Expr, String)>, Diagnostic> {
        self.asked.push(param);
        let keyword = self.keywords.iter_mut().find(|k| k.0.name == param);
        if self.next < self.positional.len() {
            let (e, n) = self.positional[self.next].clone();
            self.next += 1;
            if let Some(k) = keyword {
                return Err(Diagnostic::at(
                    k.0.span,
                    format!("`{param}` is given both by position and by keyword"),
                    "given again here",
                )
                .with_secondary(e.span, format!("`{param}` given by position")));
            }
            return Ok(Some((e, n)));
        }
        Ok(keyword.map(|k| {
            k.3 = true;
            (k.1, k.2.clone())
        }))
    }

    /// All remaining positional arguments (variadic ops).
    fn rest(&mut self) -> Vec<(&'e Expr, String)> {
        let rest = self.positional[self.next..].to_vec();
        self.next = self.positional.len();
        rest
    }

    fn missing(&self, param: &str, what: &str) -> Diagnostic {
        Diagnostic::at(
            self.callee.span,
            format!("`{}` is missing its `{param}` argument", self.callee.name),
            format!("needs `{param}` ({what})"),
        )
    }

    /// Fails on leftover positional arguments or unknown keywords.
    fn finish(&self) -> Result<(), Diagnostic> {
        if let Some((extra, _)) = self.positional.get(self.next) {
            return Err(Diagnostic::at(
                extra.span,
                format!(
                    "`{}` takes at most {} positional argument{}, found {}",
                    self.callee.name,
                    self.next,
                    if self.next == 1 { "" } else { "s" },
                    self.positional.len()
                ),
                "unexpected argument",
            )
            .with_note(format!(
                "`{}` takes: {}",
                self.callee.name,
                self.asked.join(", ")
            )));
        }
        if let Some(k) = self.keywords.iter().find(|k| !k.3) {
            let mut d = Diagnostic::at(
                k.0.span,
                format!("`{}` has no argument `{}`", self.callee.name, k.0.name),
                match closest(&k.0.name, self.asked.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "unknown argument".to_string(),
                },
            );
            d = d.with_note(format!(
                "`{}` takes: {}",
                self.callee.name,
                self.asked.join(", ")
            ));
            return Err(d);
        }
        Ok(())
    }
}

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
                    scope.slots.insert(
                        &decl.name.name,
                        Slot {
                            binding: None,
                            state: State::Done(Value::Tensor(id)),
                        },
                    );
                }
                Stmt::Output(names) => {
                    for n in names {
                        if let Some(prev) = outputs.iter().find(|p| p.name == n.name) {
                            return Err(Diagnostic::at(
                                n.span,
                                format!("`{}` is already an output", n.name),
                                "second time",
                            )
                            .with_secondary(prev.span, "first time"));
                        }
                        outputs.push(n);
                    }
                }
                Stmt::Binding(b) => bindings.push(b),
            }
        }
        for b in &bindings {
            self.declare(&mut scope, b)?;
        }
        for b in &bindings {
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
            let mut d = Diagnostic::at(used_at, format!("unknown name `{name}`"), "not defined");
            let suggestion = closest(name, scope.names()).map(str::to_string);
            if let Some(s) = suggestion {
                d.primary
                    .as_mut()
                    .map(|p| p.message = format!("did you mean `{s}`?"));
            }
            return Err(d);
        };
        match &slot.state {
            State::Done(v) => return Ok(v.clone()),
            State::Active => {
                let start = scope.active.iter().position(|&a| a == name).unwrap_or(0);
                let mut path: Vec<&str> = scope.active[start..].to_vec();
                path.push(name);
                return Err(Diagnostic::at(
                    used_at,
                    format!("cycle: `{name}` depends on itself"),
                    "used here before it has a value",
                )
                .with_note(format!("the cycle: {}", path.join(" -> "))));
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
    fn eval(
        &mut self,
        scope: &mut Scope<'a>,
        expr: &'a Expr,
        name: &str,
        binding: Option<&Ident>,
    ) -> Result<Value, Diagnostic> {
        match &expr.kind {
            ExprKind::Name(n) => self.binding_value(scope, n, expr.span),
            ExprKind::Literal(Literal::Int(v)) => Ok(Value::Int(*v)),
            ExprKind::Literal(Literal::Float(v)) => Ok(Value::Float(*v)),
            ExprKind::Pair(a, b) => {
                let mut element =
                    |this: &mut Self, e: &'a Expr| match this.eval(scope, e, name, None)? {
                        Value::Int(v) => Ok(v),
                        other => Err(Diagnostic::at(
                            e.span,
                            format!(
                                "the elements of a pair must be integers, found {}",
                                other.describe(&this.graph)
                            ),
                            "expected an integer",
                        )),
                    };
                let a = element(self, a)?;
                let b = element(self, b)?;
                Ok(Value::Pair(a, b))
            }
            ExprKind::Choose(alts) => {
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
                    span: Span::new(expr.span.start, expr.span.start + 6),
                };
                self.add_node(name, binding, Op::Choose, &operands, &callee)
            }
            ExprKind::Call { callee, args } => {
                if let Some(&cell) = self.cells.get(callee.name.as_str()) {
                    return self.instantiate(scope, cell, callee, expr.span, args, name);
                }
                let Some(kind) = OpKind::callable(&callee.name) else {
                    let candidates = OpKind::ALL
                        .iter()
                        .filter(|k| OpKind::callable(k.name()).is_some())
                        .map(|k| k.name())
                        .chain(self.cells.keys().copied());
                    let label = match closest(&callee.name, candidates) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "not an op or cell".to_string(),
                    };
                    return Err(Diagnostic::at(
                        callee.span,
                        format!("unknown op `{}`", callee.name),
                        label,
                    )
                    .with_note(
                        "ops are listed in ir-spec/ops.md; cells must be defined in the same file",
                    ));
                };
                let mut args = Args::new(callee, expr.span, args, name)?;
                let (op, operands) = self.build_op(scope, kind, &mut args)?;
                args.finish()?;
                self.add_node(name, binding, op, &operands, callee)
            }
        }
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
            _ => Diagnostic::at(
                callee.span,
                e.to_string(),
                format!("in this `{}`", callee.name),
            ),
        };
        if let TypeError::NeedsBits { .. } = e {
            d = d.with_note("binary layers take ±1 inputs: only `sign` makes bits");
        }
        d
    }

    fn graph_error(&self, e: GraphError, span: Span) -> Diagnostic {
        Diagnostic::at(span, e.to_string(), "here")
    }

    fn instantiate(
        &mut self,
        caller: &mut Scope<'a>,
        cell: &'a ast::Cell,
        callee: &'a Ident,
        call_span: Span,
        args: &'a [Arg],
        name: &str,
    ) -> Result<Value, Diagnostic> {
        if self.cell_stack.contains(&cell.name.name.as_str()) {
            return Err(Diagnostic::at(
                callee.span,
                format!("cell `{}` instantiates itself", cell.name.name),
                "recursive instantiation",
            )
            .with_note(format!(
                "the chain: {} -> {}",
                self.cell_stack.join(" -> "),
                cell.name.name
            )));
        }
        if self.cell_stack.len() >= MAX_CELL_DEPTH {
            return Err(Diagnostic::at(
                callee.span,
                format!("cells nest more than {MAX_CELL_DEPTH} deep"),
                "here",
            ));
        }
        let mut reader = Args::new(callee, call_span, args, name)?;
        let mut scope = Scope {
            prefix: format!("{name}."),
            slots: HashMap::new(),
            active: Vec::new(),
        };
        let mut params: Vec<(&Ident, Value)> = Vec::new();
        for p in &cell.params {
            // Cell parameter names are not 'static; look them up by leaking nothing:
            // match positional first, then the keyword of the same name.
            let arg = if reader.next < reader.positional.len() {
                reader.next += 1;
                Some(reader.positional[reader.next - 1].clone())
            } else {
                reader
                    .keywords
                    .iter_mut()
                    .find(|k| k.0.name == p.name)
                    .map(|k| {
                        k.3 = true;
                        (k.1, k.2.clone())
                    })
            };
            let Some((expr, child)) = arg else {
                return Err(Diagnostic::at(
                    callee.span,
                    format!(
                        "cell `{}` is missing its `{}` argument",
                        cell.name.name, p.name
                    ),
                    format!("needs `{}`", p.name),
                )
                .with_secondary(p.span, "parameter declared here"));
            };
            let v = self.eval(caller, expr, &child, None)?;
            params.push((p, v));
        }
        if let Some((extra, _)) = reader.positional.get(reader.next) {
            return Err(Diagnostic::at(
                extra.span,
                format!(
                    "cell `{}` takes {} argument{}, found {}",
                    cell.name.name,
                    cell.params.len(),
                    if cell.params.len() == 1 { "" } else { "s" },
                    reader.positional.len()
                ),
                "unexpected argument",
            )
            .with_secondary(cell.name.span, "cell defined here"));
        }
        if let Some(k) = reader.keywords.iter().find(|k| !k.3) {
            let label = match closest(&k.0.name, cell.params.iter().map(|p| p.name.as_str())) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "unknown parameter".into(),
            };
            return Err(Diagnostic::at(
                k.0.span,
                format!("cell `{}` has no parameter `{}`", cell.name.name, k.0.name),
                label,
            )
            .with_secondary(cell.name.span, "cell defined here"));
        }
        for (p, v) in params {
            if scope
                .slots
                .insert(
                    &p.name,
                    Slot {
                        binding: None,
                        state: State::Done(v),
                    },
                )
                .is_some()
            {
                return Err(Diagnostic::at(
                    p.span,
                    format!("cell parameter `{}` is declared twice", p.name),
                    "second time",
                ));
            }
        }
        for b in &cell.body {
            if scope
                .slots
                .get(b.name.name.as_str())
                .is_some_and(|s| s.binding.is_none())
            {
                return Err(Diagnostic::at(
                    b.name.span,
                    format!(
                        "`{}` is a parameter of cell `{}` and cannot be rebound",
                        b.name.name, cell.name.name
                    ),
                    "rebinding a parameter",
                ));
            }
            self.declare(&mut scope, b)?;
        }
        self.cell_stack.push(&cell.name.name);
        for b in &cell.body {
            self.binding_value(&mut scope, &b.name.name, b.name.span)?;
        }
        let ret_name = child_names(name, &[&cell.ret]).remove(0);
        let value = self.eval(&mut scope, &cell.ret, &ret_name, None);
        self.cell_stack.pop();
        value
    }

    fn tensor(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
    ) -> Result<(NodeId, Span), Diagnostic> {
        let Some((e, child)) = args.take(param)? else {
            return Err(args.missing(param, "a tensor"));
        };
        let v = self.eval(scope, e, &child, None)?;
        Ok((
            self.expect_tensor(v, e.span, &format!("`{param}`"))?,
            e.span,
        ))
    }

    fn number(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
    ) -> Result<Option<(Value, Span)>, Diagnostic> {
        let Some((e, child)) = args.take(param)? else {
            return Ok(None);
        };
        let v = self.eval(scope, e, &child, None)?;
        Ok(Some((v, e.span)))
    }

    fn int(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
        default: Option<usize>,
        min: usize,
    ) -> Result<usize, Diagnostic> {
        let Some((v, span)) = self.number(scope, args, param)? else {
            return default.ok_or_else(|| args.missing(param, "an integer"));
        };
        match v {
            Value::Int(i) if i >= min as i64 && i <= u32::MAX as i64 => Ok(i as usize),
            Value::Int(i) => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` must be an integer from {min} to {}, found {i}",
                    u32::MAX
                ),
                "out of range",
            )),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` needs an integer, found {}",
                    other.describe(&self.graph)
                ),
                "expected an integer",
            )),
        }
    }

    fn pair(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
        default: Option<Pair>,
        min: usize,
    ) -> Result<Pair, Diagnostic> {
        let Some((v, span)) = self.number(scope, args, param)? else {
            return default.ok_or_else(|| args.missing(param, "an integer or an (h, w) pair"));
        };
        let check = |x: i64| -> Result<usize, Diagnostic> {
            if x >= min as i64 && x <= u32::MAX as i64 {
                Ok(x as usize)
            } else {
                Err(Diagnostic::at(
                    span,
                    format!("`{param}` must be at least {min} (and below 2^32), found {x}"),
                    "out of range",
                ))
            }
        };
        match v {
            Value::Int(x) => {
                let x = check(x)?;
                Ok([x, x])
            }
            Value::Pair(h, w) => Ok([check(h)?, check(w)?]),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` needs an integer or an (h, w) pair of integers, found {}",
                    other.describe(&self.graph)
                ),
                "expected an integer or a pair",
            )),
        }
    }

    fn float(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
        param: &'static str,
        default: f32,
    ) -> Result<f32, Diagnostic> {
        let Some((v, span)) = self.number(scope, args, param)? else {
            return Ok(default);
        };
        match v {
            Value::Int(i) => Ok(i as f32),
            Value::Float(x) if (x as f32).is_finite() => Ok(x as f32),
            other => Err(Diagnostic::at(
                span,
                format!(
                    "`{param}` needs a number, found {}",
                    other.describe(&self.graph)
                ),
                "expected a number",
            )),
        }
    }

    /// A word attribute such as `scale=channel`: a bare name, not looked up.
    fn word<T: Copy>(
        &mut self,
        args: &mut Args<'a>,
        param: &'static str,
        choices: &[(&str, T)],
        default: T,
    ) -> Result<T, Diagnostic> {
        let Some((e, _)) = args.take(param)? else {
            return Ok(default);
        };
        let words: Vec<String> = choices.iter().map(|c| format!("`{}`", c.0)).collect();
        if let ExprKind::Name(w) = &e.kind {
            if let Some(&(_, v)) = choices.iter().find(|c| c.0 == w) {
                return Ok(v);
            }
        }
        Err(Diagnostic::at(
            e.span,
            format!("`{param}` must be one of {}", words.join(", ")),
            "not one of the choices",
        ))
    }

    fn geometry(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<ConvGeometry, Diagnostic> {
        Ok(ConvGeometry {
            out_channels: self.int(scope, args, "out_channels", None, 1)?,
            kernel: self.pair(scope, args, "kernel", None, 1)?,
            stride: self.pair(scope, args, "stride", Some([1, 1]), 1)?,
            pad: self.pair(scope, args, "pad", Some([0, 0]), 0)?,
            dilation: self.pair(scope, args, "dilation", Some([1, 1]), 1)?,
            groups: self.int(scope, args, "groups", Some(1), 1)?,
        })
    }

    fn pool(&mut self, scope: &mut Scope<'a>, args: &mut Args<'a>) -> Result<Pool, Diagnostic> {
        let kernel = self.pair(scope, args, "kernel", None, 1)?;
        Ok(Pool {
            kernel,
            stride: self.pair(scope, args, "stride", Some(kernel), 1)?,
            pad: self.pair(scope, args, "pad", Some([0, 0]), 0)?,
        })
    }

    /// Reads the arguments of op `kind` in its signature's order
    /// (`ir-spec/ops.md` lists each signature).
    fn build_op(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
        const BOOL: [(&str, bool); 2] = [("true", true), ("false", false)];
        const SCALE: [(&str, Scale); 2] = [("none", Scale::None), ("channel", Scale::Channel)];
        const PAD_VALUE: [(usize, PadValue); 2] = [(0, PadValue::Zero), (1, PadValue::One)];
        let op = match kind {
            OpKind::Conv2d => {
                let x = self.tensor(scope, args, "input")?;
                let geometry = self.geometry(scope, args)?;
                let bias = self.word(args, "bias", &BOOL, true)?;
                return Ok((Op::Conv2d(Conv2d { geometry, bias }), vec![x]));
            }
            OpKind::BConv2d => {
                let x = self.tensor(scope, args, "input")?;
                let geometry = self.geometry(scope, args)?;
                let pv = self.int(scope, args, "pad_value", Some(0), 0)?;
                let Some(&(_, pad_value)) = PAD_VALUE.iter().find(|p| p.0 == pv) else {
                    return Err(Diagnostic::at(
                        args.call_span,
                        format!("`pad_value` must be 0 or 1, found {pv}"),
                        "here",
                    ));
                };
                let scale = self.word(args, "scale", &SCALE, Scale::None)?;
                return Ok((
                    Op::BConv2d(BConv2d {
                        geometry,
                        pad_value,
                        scale,
                    }),
                    vec![x],
                ));
            }
            OpKind::Dense => {
                let x = self.tensor(scope, args, "input")?;
                let out_features = self.int(scope, args, "out_features", None, 1)?;
                let bias = self.word(args, "bias", &BOOL, true)?;
                return Ok((Op::Dense(Dense { out_features, bias }), vec![x]));
            }
            OpKind::BDense => {
                let x = self.tensor(scope, args, "input")?;
                let out_features = self.int(scope, args, "out_features", None, 1)?;
                let scale = self.word(args, "scale", &SCALE, Scale::None)?;
                return Ok((
                    Op::BDense(BDense {
                        out_features,
                        scale,
                    }),
                    vec![x],
                ));
            }
            OpKind::BatchNorm => {
                let x = self.tensor(scope, args, "input")?;
                let eps = self.float(scope, args, "eps", 1e-5)?;
                return Ok((Op::BatchNorm(BatchNorm { eps }), vec![x]));
            }
            OpKind::HardTanh => {
                let x = self.tensor(scope, args, "input")?;
                let min = self.float(scope, args, "min", -1.0)?;
                let max = self.float(scope, args, "max", 1.0)?;
                return Ok((Op::HardTanh(HardTanh { min, max }), vec![x]));
            }
            OpKind::MaxPool | OpKind::AvgPool => {
                let x = self.tensor(scope, args, "input")?;
                let pool = self.pool(scope, args)?;
                let op = if kind == OpKind::MaxPool {
                    Op::MaxPool(pool)
                } else {
                    Op::AvgPool(pool)
                };
                return Ok((op, vec![x]));
            }
            OpKind::Add | OpKind::Concat => {
                let mut operands = Vec::new();
                for (e, child) in args.rest() {
                    let v = self.eval(scope, e, &child, None)?;
                    operands.push((
                        self.expect_tensor(v, e.span, &format!("an operand of `{}`", kind.name()))?,
                        e.span,
                    ));
                }
                if !kind.arity().allows(operands.len()) {
                    return Err(Diagnostic::at(
                        args.call_span,
                        format!(
                            "`{}` takes {}, found {}",
                            kind.name(),
                            kind.arity(),
                            operands.len()
                        ),
                        "here",
                    ));
                }
                return Ok((
                    if kind == OpKind::Add {
                        Op::Add
                    } else {
                        Op::Concat
                    },
                    operands,
                ));
            }
            OpKind::Sign => Op::Sign,
            OpKind::Relu => Op::Relu,
            OpKind::PRelu => Op::PRelu,
            OpKind::GlobalAvgPool => Op::GlobalAvgPool,
            OpKind::Flatten => Op::Flatten,
            OpKind::Zero => Op::Zero,
            OpKind::Identity => Op::Identity,
            OpKind::Input | OpKind::Choose => {
                return Err(Diagnostic::at(
                    args.callee.span,
                    format!("`{}` is not called like an op", kind.name()),
                    "here",
                ));
            }
        };
        let x = self.tensor(scope, args, "input")?;
        Ok((op, vec![x]))
    }
}
