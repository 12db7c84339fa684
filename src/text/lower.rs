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

/// The arguments of one call, consumed parameter by parameter.
struct Args<'e> {
    callee: &'e Ident,
    positional: Vec<(&'e Expr, String)>,
    next: usize,
    keywords: Vec<(&'e Ident, &'e Expr, String, bool)>,
    /// Parameters asked for so far, for "did you mean".
    asked: Vec<&'e str>,
}

/// The candidate `word` was most likely meant to be: a close spelling, or else
/// a word that one of them shortens (`pad` for `padding`).
fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    closest(word, candidates.iter().copied()).or_else(|| {
        let shortens = |a: &str, b: &str| a.len() >= 3 && b.starts_with(a);
        candidates
            .iter()
            .copied()
            .find(|&c| shortens(c, word) || shortens(word, c))
    })
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

/// The names `expr` refers to, with where, in source order. A word given to an
/// op (`scale=channel`) is not a reference, even if a binding has that name.
fn referenced_names<'e>(expr: &'e Expr, names: &mut Vec<(&'e str, Span)>) {
    match &expr.kind {
        ExprKind::Name(n) => names.push((n, expr.span)),
        ExprKind::Literal(_) => {}
        ExprKind::Pair(a, b) => {
            referenced_names(a, names);
            referenced_names(b, names);
        }
        ExprKind::Call { callee, args } => {
            let op = OpKind::callable(&callee.name).is_some();
            for a in args {
                let word = match &a.value.kind {
                    ExprKind::Name(_)
                        if a.keyword
                            .as_ref()
                            .is_some_and(|k| TRAINING_WORD_KEYWORDS.contains(&k.name.as_str())) =>
                    {
                        true
                    }
                    ExprKind::Name(n) => {
                        BOOL.iter().any(|w| w.0 == n)
                            || SCALE.iter().any(|w| w.0 == n)
                            || OUTPUT.iter().any(|w| w.0 == n)
                            || WEIGHTS.iter().any(|w| w.0 == n)
                            || WEIGHT_KIND.iter().any(|w| w.0 == n)
                    }
                    _ => false,
                };
                if !(op && word) {
                    referenced_names(&a.value, names);
                }
            }
        }
        ExprKind::Choose(alts) => {
            for a in alts {
                referenced_names(a, names);
            }
        }
    }
}

/// The error for `name`, used at `used_at`, depending on itself through `path`.
fn cycle_error(used_at: Span, name: &str, path: &[&str]) -> Diagnostic {
    Diagnostic::at(
        used_at,
        format!("cycle: `{name}` depends on itself"),
        "used here before it has a value",
    )
    .with_note(cycle_note(path))
}

/// `the cycle: a -> b -> a`, eliding the middle of long cycles.
fn cycle_note(path: &[&str]) -> String {
    const SHOWN: usize = 8;
    if path.len() <= SHOWN {
        return format!("the cycle: {}", path.join(" -> "));
    }
    let (head, tail) = (&path[..SHOWN / 2], &path[path.len() - SHOWN / 2..]);
    format!(
        "the cycle: {} -> ({} more) -> {}",
        head.join(" -> "),
        path.len() - SHOWN,
        tail.join(" -> ")
    )
}

/// The order to evaluate `bindings` in (indices into it): each binding after
/// the bindings of the list it names, source order otherwise, or the error for
/// a cycle among them. This is the order on-demand evaluation would take,
/// found without recursion, so that evaluating in it recurses only as deep as
/// expressions nest, however long a chain of bindings the source writes
/// backwards.
fn evaluation_order(bindings: &[&ast::Binding]) -> Result<Vec<usize>, Diagnostic> {
    let index: HashMap<&str, usize> = bindings
        .iter()
        .enumerate()
        .map(|(k, b)| (b.name.name.as_str(), k))
        .collect();
    let deps: Vec<Vec<(usize, Span)>> = bindings
        .iter()
        .map(|b| {
            let mut names = Vec::new();
            referenced_names(&b.value, &mut names);
            names
                .iter()
                .filter_map(|&(n, span)| Some((*index.get(n)?, span)))
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; bindings.len()];
    let mut order = Vec::with_capacity(bindings.len());
    // An explicit depth-first stack: (binding, how many of its deps were visited).
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..bindings.len() {
        if mark[root] != Mark::New {
            continue;
        }
        mark[root] = Mark::Open;
        stack.push((root, 0));
        while let Some((node, visited)) = stack.last_mut() {
            let node = *node;
            let Some(&(dep, used_at)) = deps[node].get(*visited) else {
                mark[node] = Mark::Done;
                order.push(node);
                stack.pop();
                continue;
            };
            *visited += 1;
            match mark[dep] {
                Mark::New => {
                    mark[dep] = Mark::Open;
                    stack.push((dep, 0));
                }
                Mark::Open => {
                    let start = stack.iter().position(|s| s.0 == dep).unwrap_or(0);
                    let mut path: Vec<&str> = stack[start..]
                        .iter()
                        .map(|s| bindings[s.0].name.name.as_str())
                        .collect();
                    let name = bindings[dep].name.name.as_str();
                    path.push(name);
                    return Err(cycle_error(used_at, name, &path));
                }
                Mark::Done => {}
            }
        }
    }
    Ok(order)
}

/// The scope of one instance `name` of `cell`: its parameters bound to `params`,
/// its bindings declared.
fn cell_scope<'a>(
    cell: &'a ast::Cell,
    params: Vec<(&'a Ident, Value)>,
    name: &str,
) -> Result<Scope<'a>, Diagnostic> {
    let mut scope = Scope {
        prefix: format!("{name}."),
        slots: HashMap::new(),
        active: Vec::new(),
    };
    for (p, v) in params {
        let slot = Slot {
            binding: None,
            state: State::Done(v),
        };
        if scope.slots.insert(&p.name, slot).is_some() {
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
            let mut d = Diagnostic::at(
                b.name.span,
                format!(
                    "`{}` is a parameter of cell `{}` and cannot be rebound",
                    b.name.name, cell.name.name
                ),
                "rebinding a parameter",
            );
            if let Some(p) = cell.params.iter().find(|p| p.name == b.name.name) {
                d = d.with_secondary(p.span, "the parameter");
            }
            return Err(d.with_note("bind the new value to a new name"));
        }
        if let Some(first) = scope
            .slots
            .get(b.name.name.as_str())
            .and_then(|s| s.binding)
        {
            return Err(Diagnostic::at(
                b.name.span,
                format!("`{}` is defined twice", b.name.name),
                "second definition",
            )
            .with_secondary(first.name.span, "first definition"));
        }
        scope.slots.insert(
            &b.name.name,
            Slot {
                binding: Some(b),
                state: State::Pending,
            },
        );
    }
    Ok(scope)
}

/// The error for a cell call nested more than [`MAX_CELL_DEPTH`] deep.
fn cells_too_deep(callee: &Ident) -> Diagnostic {
    Diagnostic::at(
        callee.span,
        format!("cells nest more than {MAX_CELL_DEPTH} deep"),
        "here",
    )
}

/// The error for an argument of a cell call that no parameter takes, if any.
fn leftover_cell_argument(reader: &Args<'_>, cell: &ast::Cell) -> Option<Diagnostic> {
    if let Some((extra, _)) = reader.positional.get(reader.next) {
        return Some(
            Diagnostic::at(
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
            .with_secondary(cell.name.span, "cell defined here"),
        );
    }
    let k = reader.keywords.iter().find(|k| !k.3)?;
    let params: Vec<&str> = cell.params.iter().map(|p| p.name.as_str()).collect();
    let label = match suggest(&k.0.name, &params) {
        Some(s) => format!("did you mean `{s}`?"),
        None => "unknown parameter".into(),
    };
    Some(
        Diagnostic::at(
            k.0.span,
            format!("cell `{}` has no parameter `{}`", cell.name.name, k.0.name),
            label,
        )
        .with_secondary(cell.name.span, "cell defined here"),
    )
}

/// The error for a cell call that gives no argument for parameter `p`.
fn missing_cell_argument(reader: &Args<'_>, cell: &ast::Cell, p: &Ident) -> Diagnostic {
    // A misspelt keyword is the likelier mistake than a forgotten argument.
    if let Some(k) = reader.unused_keyword_like(&p.name) {
        return Diagnostic::at(
            k.span,
            format!("cell `{}` has no parameter `{}`", cell.name.name, k.name),
            format!("did you mean `{}`?", p.name),
        )
        .with_secondary(p.span, "parameter declared here");
    }
    Diagnostic::at(
        reader.callee.span,
        format!(
            "cell `{}` is missing its `{}` argument",
            cell.name.name, p.name
        ),
        format!("needs `{}`", p.name),
    )
    .with_secondary(p.span, "parameter declared here")
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
            // Only calls and `choose` make nodes; this name is never used.
            None => format!("{parent}.{}", exprs.len()),
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
    fn new(callee: &'e Ident, args: &'e [Arg], parent: &str) -> Result<Args<'e>, Diagnostic> {
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
            positional,
            next: 0,
            keywords,
            asked: Vec::new(),
        })
    }

    /// The argument for parameter `param`, positional first, then by keyword.
    fn take(&mut self, param: &'e str) -> Result<Option<(&'e Expr, String)>, Diagnostic> {
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
        // A misspelt keyword is the likelier mistake than a forgotten argument.
        if let Some(k) = self.unused_keyword_like(param) {
            return Diagnostic::at(
                k.span,
                format!("`{}` has no argument `{}`", self.callee.name, k.name),
                format!("did you mean `{param}`?"),
            );
        }
        Diagnostic::at(
            self.callee.span,
            format!("`{}` is missing its `{param}` argument", self.callee.name),
            format!("needs `{param}` ({what})"),
        )
    }

    /// An unused keyword that looks like a misspelling of `param`.
    fn unused_keyword_like(&self, param: &str) -> Option<&'e Ident> {
        self.keywords
            .iter()
            .find(|k| !k.3 && suggest(&k.0.name, &[param]).is_some())
            .map(|k| k.0)
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
                match suggest(&k.0.name, &self.asked) {
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

    /// A call of `cell`: its body evaluated under the prefix `name.`.
    fn instantiate(
        &mut self,
        caller: &mut Scope<'a>,
        cell: &'a ast::Cell,
        callee: &'a Ident,
        call_span: Span,
        args: &'a [Arg],
        name: &str,
    ) -> Result<Value, Diagnostic> {
        if self.cell_stack.iter().any(|c| c.0 == cell.name.name) {
            return Err(self.recursive_cell(cell, callee));
        }
        if self.cell_stack.len() >= MAX_CELL_DEPTH {
            return Err(cells_too_deep(callee));
        }
        let mut params = self.cell_arguments(caller, cell, callee, args, name)?;
        let split = self.partial_split(cell, &mut params, name, call_span)?;
        let mut scope = cell_scope(cell, params, name)?;
        self.cell_stack.push((&cell.name.name, call_span));
        let body: Vec<&ast::Binding> = cell.body.iter().collect();
        for k in evaluation_order(&body)? {
            let b = body[k];
            self.binding_value(&mut scope, &b.name.name, b.name.span)?;
        }
        let ret_name = child_names(name, &[&cell.ret]).remove(0);
        let value = self.eval(&mut scope, &cell.ret, &ret_name, None);
        self.cell_stack.pop();
        match split {
            Some(split) => self.partial_join(split, value?, name),
            None => value,
        }
    }

    #[cold]
    fn recursive_cell(&self, cell: &ast::Cell, callee: &Ident) -> Diagnostic {
        let chain: Vec<&str> = self.cell_stack.iter().map(|c| c.0).collect();
        Diagnostic::at(
            callee.span,
            format!("cell `{}` instantiates itself", cell.name.name),
            "recursive instantiation",
        )
        .with_note(format!(
            "the chain: {} -> {}",
            chain.join(" -> "),
            cell.name.name
        ))
    }

    /// The values of a cell call's arguments, evaluated in the caller's scope,
    /// paired with the cell's parameters.
    fn cell_arguments(
        &mut self,
        caller: &mut Scope<'a>,
        cell: &'a ast::Cell,
        callee: &'a Ident,
        args: &'a [Arg],
        name: &str,
    ) -> Result<Vec<(&'a Ident, Value)>, Diagnostic> {
        let mut reader = Args::new(callee, args, name)?;
        let mut params = Vec::new();
        for p in &cell.params {
            let arg = reader.take(&p.name)?;
            let Some((expr, child)) = arg else {
                return Err(missing_cell_argument(&reader, cell, p));
            };
            let v = self.eval(caller, expr, &child, None)?;
            params.push((p, v));
        }
        match leftover_cell_argument(&reader, cell) {
            Some(d) => Err(d),
            None => Ok(params),
        }
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
        // An op call or a choose makes a tensor; not evaluating it here keeps
        // the evaluator's recursion on the operands' path alone. A cell call
        // may return a number or pair (`kernel=k()`), so it is evaluated.
        let what = match &e.kind {
            ExprKind::Call { callee, .. } if !self.cells.contains_key(callee.name.as_str()) => {
                Some(format!("a call of `{}`", callee.name))
            }
            ExprKind::Choose(_) => Some("a `choose`".to_string()),
            _ => None,
        };
        if let Some(what) = what {
            return Err(Diagnostic::at(
                e.span,
                format!("`{param}` needs a number, found {what}"),
                "expected a number",
            ));
        }
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
            Value::Float(x) => Err(Diagnostic::at(
                span,
                format!("`{param}` is {x:?}, too large for an f32 (at most about 3.4e38)"),
                "out of range",
            )),
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

    /// `pad_value`: 0 or 1, default 0.
    fn pad_value(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<PadValue, Diagnostic> {
        match self.number(scope, args, "pad_value")? {
            None | Some((Value::Int(0), _)) => Ok(PadValue::Zero),
            Some((Value::Int(1), _)) => Ok(PadValue::One),
            Some((other, span)) => Err(Diagnostic::at(
                span,
                format!(
                    "`pad_value` must be 0 or 1, found {}",
                    other.describe(&self.graph)
                ),
                "expected 0 or 1",
            )
            .with_note(
                "what padded positions of a binary convolution hold: 0 adds nothing, 1 adds +1",
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
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let (found, label) = match &e.kind {
            ExprKind::Name(w) => {
                if let Some(&(_, v)) = choices.iter().find(|c| c.0 == w) {
                    return Ok(v);
                }
                let label = match suggest(w, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "not one of the choices".to_string(),
                };
                (format!(", found `{w}`"), label)
            }
            ExprKind::Literal(Literal::Int(v)) => {
                (format!(", found {v}"), "expected a word".into())
            }
            ExprKind::Literal(Literal::Float(v)) => {
                (format!(", found {v:?}"), "expected a word".into())
            }
            _ => (String::new(), "expected a word".into()),
        };
        Err(Diagnostic::at(
            e.span,
            format!("`{param}` must be one of {}{found}", words.join(", ")),
            label,
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
    /// (`ir-spec/ops.md` lists each signature): the tensor operands, then the
    /// attributes.
    fn build_op(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
        match kind {
            OpKind::Add | OpKind::Concat => self.variadic(scope, kind, args),
            OpKind::CrossEntropy => {
                let logits = self.tensor(scope, args, "input")?;
                let target = self.tensor(scope, args, "target")?;
                let smoothing = self.float(scope, args, "smoothing", 0.0)?;
                Ok((
                    Op::CrossEntropy(CrossEntropy { smoothing }),
                    vec![logits, target],
                ))
            }
            OpKind::RunningStat => {
                let (bn, span) = self.tensor(scope, args, "of")?;
                let Op::BatchNorm(_) = self.graph.node(bn).op else {
                    return Err(Diagnostic::at(
                        span,
                        format!(
                            "`running_stat` needs a batchnorm, found `{}`",
                            self.graph.node(bn).op.name()
                        ),
                        "expected a batchnorm node",
                    ));
                };
                let stat = self.word(args, "stat", &STATISTIC, Statistic::Mean)?;
                let momentum = self.float(scope, args, "momentum", 0.1)?;
                let x = self.graph.operands(bn)[0];
                Ok((
                    Op::RunningStat(RunningStat { stat, momentum }),
                    vec![(bn, span), (x, span)],
                ))
            }
            OpKind::Grad => self.grad(scope, args),
            OpKind::QuantizationLoss => {
                let (layer, span) = self.tensor(scope, args, "of")?;
                let of = self.graph.node(layer).op.clone();
                let weight = self.float(scope, args, "weight", 1.0)?;
                let Some(&x) = self.graph.operands(layer).first() else {
                    return Err(Diagnostic::at(
                        span,
                        format!(
                            "`quantization_loss` needs a binary layer, found `{}`",
                            of.name()
                        ),
                        "expected a layer with binary weights",
                    ));
                };
                Ok((
                    Op::QuantizationLoss(QuantizationLoss {
                        weight,
                        of: Box::new(of),
                    }),
                    vec![(layer, span), (x, span)],
                ))
            }
            OpKind::DistributionLoss => {
                let x = self.tensor(scope, args, "input")?;
                let weight = self.float(scope, args, "weight", 1.0)?;
                Ok((Op::DistributionLoss(DistributionLoss { weight }), vec![x]))
            }
            OpKind::Input | OpKind::Choose => Err(Diagnostic::at(
                args.callee.span,
                format!("`{}` is not called like an op", kind.name()),
                "here",
            )),
            _ => {
                let x = self.tensor(scope, args, "input")?;
                let op = self.attributes(scope, kind, args)?;
                Ok((op, vec![x]))
            }
        }
    }

    /// `grad(of, dy, wrt=...)`: the operands are the forward node, its own
    /// operands, and the upstream gradient (none for a loss).
    fn grad(
        &mut self,
        scope: &mut Scope<'a>,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
        let (of, span) = self.tensor(scope, args, "of")?;
        let forward = self.graph.node(of).op.clone();
        let mut operands = vec![(of, span)];
        operands.extend(self.graph.operands(of).into_iter().map(|o| (o, span)));
        if !forward.kind().is_loss() {
            operands.push(self.tensor(scope, args, "dy")?);
        }
        let Some((e, _)) = args.take("wrt")? else {
            return Err(args.missing("wrt", "an operand index or a parameter"));
        };
        let role = match &e.kind {
            ExprKind::Name(w) => ParamRole::ALL.into_iter().find(|r| r.name() == w),
            _ => None,
        };
        let wrt = match (&e.kind, role) {
            (ExprKind::Literal(Literal::Int(i)), _) if *i >= 0 => Wrt::Operand(*i as usize),
            (_, Some(role)) => Wrt::Param(role),
            _ => {
                return Err(Diagnostic::at(
                    e.span,
                    "`wrt` must be an operand index or one of `weight`, `bias`, `alpha`",
                    "expected an operand index or a parameter",
                ));
            }
        };
        Ok((
            Op::Grad(Grad {
                of: Box::new(forward),
                wrt,
            }),
            operands,
        ))
    }

    /// The operands of `add` or `concat`: every positional argument.
    fn variadic(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<(Op, Vec<(NodeId, Span)>), Diagnostic> {
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
                args.callee.span,
                format!(
                    "`{}` takes {}, found {}",
                    kind.name(),
                    kind.arity(),
                    operands.len()
                ),
                format!("needs {}", kind.arity()),
            ));
        }
        let op = if kind == OpKind::Add {
            Op::Add
        } else {
            Op::Concat
        };
        Ok((op, operands))
    }

    /// The op `kind` of a single-operand op, with its attributes read from `args`.
    fn attributes(
        &mut self,
        scope: &mut Scope<'a>,
        kind: OpKind,
        args: &mut Args<'a>,
    ) -> Result<Op, Diagnostic> {
        Ok(match kind {
            OpKind::Conv2d => Op::Conv2d(Conv2d {
                geometry: self.geometry(scope, args)?,
                bias: self.word(args, "bias", &BOOL, true)?,
                weights: self.word(args, "weights", &WEIGHT_KIND, WeightKind::Real)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::BConv2d => Op::BConv2d(BConv2d {
                geometry: self.geometry(scope, args)?,
                pad_value: self.pad_value(scope, args)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                output: self.word(args, "output", &OUTPUT, BinaryOutput::Dot)?,
                weights: self.word(args, "weights", &WEIGHTS, WeightForm::Latent)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::Dense => Op::Dense(Dense {
                out_features: self.int(scope, args, "out_features", None, 1)?,
                bias: self.word(args, "bias", &BOOL, true)?,
                weights: self.word(args, "weights", &WEIGHT_KIND, WeightKind::Real)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::BDense => Op::BDense(BDense {
                out_features: self.int(scope, args, "out_features", None, 1)?,
                scale: self.word(args, "scale", &SCALE, Scale::None)?,
                output: self.word(args, "output", &OUTPUT, BinaryOutput::Dot)?,
                weights: self.word(args, "weights", &WEIGHTS, WeightForm::Latent)?,
                projection: self.word(args, "projection", &BOOL, false)?,
            }),
            OpKind::BatchNorm => Op::BatchNorm(BatchNorm {
                eps: self.float(scope, args, "eps", 1e-5)?,
                stats: self.word(args, "stats", &STATS, Stats::Running)?,
            }),
            OpKind::HardTanh => Op::HardTanh(HardTanh {
                min: self.float(scope, args, "min", -1.0)?,
                max: self.float(scope, args, "max", 1.0)?,
            }),
            OpKind::SliceChannels => Op::SliceChannels(SliceChannels {
                start: self.int(scope, args, "start", None, 0)?,
                count: self.int(scope, args, "count", None, 1)?,
            }),
            OpKind::ShuffleChannels => Op::ShuffleChannels(ShuffleChannels {
                groups: self.int(scope, args, "groups", None, 1)?,
            }),
            OpKind::MaxPool => Op::MaxPool(self.pool(scope, args)?),
            OpKind::AvgPool => Op::AvgPool(self.pool(scope, args)?),
            OpKind::Sign => Op::Sign(Sign {
                grad: self.word(args, "grad", &SIGN_GRAD, SignGrad::Ste)?,
            }),
            OpKind::Relu => Op::Relu,
            OpKind::PRelu => Op::PRelu,
            OpKind::Shift => Op::Shift,
            OpKind::GlobalAvgPool => Op::GlobalAvgPool,
            OpKind::Flatten => Op::Flatten,
            OpKind::Zero => Op::Zero,
            OpKind::Identity => Op::Identity,
            OpKind::Threshold => Op::Threshold,
            OpKind::Affine => Op::Affine,
            OpKind::Add
            | OpKind::Concat
            | OpKind::Input
            | OpKind::Choose
            | OpKind::CrossEntropy
            | OpKind::RunningStat
            | OpKind::Grad
            | OpKind::QuantizationLoss
            | OpKind::DistributionLoss => {
                unreachable!("build_op handles `{kind}` itself")
            }
        })
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
